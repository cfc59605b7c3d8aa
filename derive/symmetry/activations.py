"""Which scaling each activation allows on the neuron space it acts on (docs/math.md section 2)."""

from __future__ import annotations

from derive.weightspace.model import Scaling

__all__ = ["ACTIVATION_SCALING", "ACTIVATION_REASON", "scaling_of", "known_activations"]

#: activation name -> the diagonal scalings that pass through it
ACTIVATION_SCALING: dict[str, Scaling] = {
    # positively homogeneous: act(d * x) = d * act(x) for d > 0
    "relu": Scaling.POSITIVE,
    "leaky_relu": Scaling.POSITIVE,
    "prelu": Scaling.POSITIVE,
    "abs": Scaling.POSITIVE,  # |d x| = d |x| for d > 0; a sign flip is lost (|-x| = |x|)
    # odd: act(-x) = -act(x)
    "tanh": Scaling.SIGN,
    "sin": Scaling.SIGN,
    "softsign": Scaling.SIGN,
    "hardtanh": Scaling.SIGN,
    "tanhshrink": Scaling.SIGN,
    "softshrink": Scaling.SIGN,
    "hardshrink": Scaling.SIGN,
    # no activation: every invertible diagonal map passes through
    "identity": Scaling.NONZERO,
    # neither: permutations only
    "gelu": Scaling.NONE,
    "sigmoid": Scaling.NONE,
    "silu": Scaling.NONE,
    "softplus": Scaling.NONE,
    "elu": Scaling.NONE,
    "selu": Scaling.NONE,
    "celu": Scaling.NONE,
    "mish": Scaling.NONE,
    "relu6": Scaling.NONE,
    "hardswish": Scaling.NONE,
    "hardsigmoid": Scaling.NONE,
    "logsigmoid": Scaling.NONE,
    "cos": Scaling.NONE,
    "hardtanh_asymmetric": Scaling.NONE,
}

ACTIVATION_REASON: dict[Scaling, str] = {
    Scaling.POSITIVE: "positively homogeneous",
    Scaling.SIGN: "odd",
    Scaling.NONZERO: "linear",
    Scaling.NONE: "neither odd nor homogeneous",
}

_ALIASES = {"linear": "identity", "none": "identity", "swish": "silu", "leakyrelu": "leaky_relu"}


def known_activations() -> tuple[str, ...]:
    return tuple(ACTIVATION_SCALING)


def canonical_activation(name: str) -> str | None:
    """The registry name for ``name`` (case and aliases folded), or None if unknown."""
    key = name.strip().lower().replace("-", "_")
    key = _ALIASES.get(key, key)
    return key if key in ACTIVATION_SCALING else None


def scaling_of(activation: str) -> Scaling:
    """The scaling ``activation`` allows; raises KeyError for an unknown name."""
    key = canonical_activation(activation)
    if key is None:
        raise KeyError(activation)
    return ACTIVATION_SCALING[key]
