"""Pointwise nonlinearities on weight-space features that commute with the group.

A group element multiplies each entry of a tensor by ``prod_a d_{s_a}[j_a] ** chi_a`` (and moves
it); a pointwise map ``phi`` applied to every entry (or every entry's channel vector) is
equivariant iff ``phi(m x) = m phi(x)`` for every multiplier ``m`` that can occur. Which ones
occur follows from the scaling kinds of the spaces on the tensor's scaled axes:

- only "none" / "positive": ``m > 0`` -> ReLU (positively homogeneous);
- only "none" / "sign": ``m = +-1`` -> tanh (odd);
- a "nonzero" space, or "sign" and "positive" together: any ``m != 0`` -> the gated map
  ``x * sigmoid(x^2 / mean_c(x^2) - 1)``, whose gate is invariant under ``x -> m x`` because
  the ratio is taken over the channel vector of the same entry (0 where that vector is 0).
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn

from nfn_runtime.layout import TensorLayout, WeightSpaceLayout
from nfn_runtime.weight_space import WeightSpace

__all__ = [
    "NONLINEARITY_KINDS",
    "EquivariantNonlinearity",
    "NonlinearityKind",
    "allowed_nonlinearities",
    "gated_nonlinearity",
]

NonlinearityKind = Literal["relu", "tanh", "gated", "identity"]
NONLINEARITY_KINDS: tuple[NonlinearityKind, ...] = ("relu", "tanh", "gated", "identity")

# Which scaling kinds each pointwise map tolerates on a tensor's scaled axes.
_TOLERATES: dict[NonlinearityKind, frozenset[str]] = {
    "relu": frozenset({"none", "positive"}),
    "tanh": frozenset({"none", "sign"}),
    "gated": frozenset({"none", "positive", "sign", "nonzero"}),
    "identity": frozenset({"none", "positive", "sign", "nonzero"}),
}


def gated_nonlinearity(x: Tensor, channel_dim: int = 1) -> Tensor:
    """``x * sigmoid(x^2 / mean_c(x^2) - 1)``, the mean taken over ``channel_dim``.

    Equivariant under ``x -> m x`` for any nonzero ``m`` shared by the channel vector; 0 where
    the whole channel vector is 0 (no division by zero, finite gradients).
    """
    square = x * x
    mean = square.mean(dim=channel_dim, keepdim=True)
    safe_mean = torch.where(mean > 0, mean, torch.ones_like(mean))
    return x * torch.sigmoid(square / safe_mean - 1)


def _scaling_by_space(layout: WeightSpaceLayout, tensor: TensorLayout) -> dict[str, str]:
    """Scaling kind of every space on a scaled axis (character != 0) of ``tensor``."""
    return {
        axis.space: layout.space(axis.space).scaling for axis in tensor.axes if axis.character != 0
    }


def allowed_nonlinearities(
    layout: WeightSpaceLayout, tensor: TensorLayout | str
) -> tuple[NonlinearityKind, ...]:
    """The pointwise nonlinearities that stay equivariant on ``tensor``."""
    spec = layout.tensor(tensor) if isinstance(tensor, str) else tensor
    kinds = set(_scaling_by_space(layout, spec).values())
    return tuple(name for name in NONLINEARITY_KINDS if kinds <= _TOLERATES[name])


def _auto_kind(layout: WeightSpaceLayout, tensor: TensorLayout) -> NonlinearityKind:
    allowed = allowed_nonlinearities(layout, tensor)
    for preferred in ("relu", "tanh"):
        if preferred in allowed:
            return preferred
    return "gated"


def _check_forced(layout: WeightSpaceLayout, tensor: TensorLayout, kind: NonlinearityKind) -> None:
    for space, scaling in _scaling_by_space(layout, tensor).items():
        if scaling not in _TOLERATES[kind]:
            allowed = allowed_nonlinearities(layout, tensor)
            raise ValueError(
                f"nonlinearity {kind!r} is not equivariant on tensor {tensor.name!r}: its space "
                f"{space!r} has scaling {scaling!r}; allowed on this tensor: {list(allowed)}"
            )


class EquivariantNonlinearity(nn.Module):
    """A pointwise nonlinearity per tensor, chosen so that the map stays equivariant.

    ``kind="auto"`` picks per tensor ReLU, tanh or the gated map (see the module docstring);
    ``"relu"``, ``"tanh"``, ``"gated"`` or ``"identity"`` force one map for every tensor and
    raise ``ValueError`` naming the tensor and space where the forced map is not equivariant.
    ``kinds`` maps tensor name to the map used.
    """

    def __init__(
        self, layout: WeightSpaceLayout, kind: NonlinearityKind | Literal["auto"] = "auto"
    ) -> None:
        super().__init__()
        if kind != "auto" and kind not in NONLINEARITY_KINDS:
            raise ValueError(
                f"unknown nonlinearity kind {kind!r}; valid: 'auto', {', '.join(NONLINEARITY_KINDS)}"
            )
        self.layout = layout
        self.kinds: dict[str, NonlinearityKind] = {}
        for tensor in layout.tensors:
            if kind == "auto":
                self.kinds[tensor.name] = _auto_kind(layout, tensor)
            else:
                _check_forced(layout, tensor, kind)
                self.kinds[tensor.name] = kind

    def forward(self, ws: WeightSpace) -> WeightSpace:
        """Apply each tensor's nonlinearity (channels are axis 1)."""

        def act(spec: TensorLayout, value: Tensor) -> Tensor:
            kind = self.kinds[spec.name]
            if kind == "relu":
                return torch.relu(value)
            if kind == "tanh":
                return torch.tanh(value)
            if kind == "gated":
                return gated_nonlinearity(value, channel_dim=1)
            return value

        return ws.map_layout(self.layout, act)

    def extra_repr(self) -> str:
        return ", ".join(f"{name}={kind}" for name, kind in self.kinds.items())
