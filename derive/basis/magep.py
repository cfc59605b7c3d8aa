"""The MAGEP-NFN polynomial terms (docs/math.md section 5) on chain weight spaces.

A chain is an MLP-like weight space: ``W_i`` with axes (s_i: +1, s_{i-1}: -1) and ``b_i`` with
axis (s_i: +1), i = 1..L, the input space s_0 and output space s_L fixed. Path products
``[W](s,t) = W_s ... W_{t+1}`` transform as ``g_s [W](s,t) g_t^-1``; because g_0 = g_L = I a
parameter Psi over the fixed axes glues them. The terms of the paper's layer, for every output
(degree-1 terms belong to the complete linear layer and are not repeated here):

- ``W'(i)`` from ``[WW](i,0)(L,i-1) = [W](i,0) Psi [W](L,i-1)`` (degree L+1) and
  ``[bW](i)(L,i-1) = b_i Psi' [W](L,i-1)`` (degree L-i+2);
- ``b'(i)`` from ``[W](i,0)`` (degree i), ``[WW](i,0)(L,0)`` (degree i+L),
  ``[bW](i)(L,0)`` (degree L+1) and ``sum_t [Wb](i,t)`` (degrees 2..i);
- ``b'(L)`` also from the invariants ``tr([W](s,0) Psi [W](L,s))`` (degree L) and
  ``Psi' [W](L,s) b_s`` (degree L-s+1), s = 1..L-1.

Each term is a *virtual tensor*: a per-channel product with axis labels, so the layer plan
treats it like an input tensor; :mod:`derive.plan.magep` builds those and the statements that
compute them through shared prefix and suffix products.

Normalization keeps every term's entries at unit variance for unit-variance inputs: each
contraction over a space of n neurons is divided by sqrt(n), Psi has variance 1/(n_0 n_L),
Psi' 1/n_L, sums of k path terms are divided by sqrt(k), traces by sqrt(n_s).
"""

from __future__ import annotations

from dataclasses import dataclass
from math import sqrt

from derive.errors import GenerationError
from derive.weightspace.model import Axis, WeightSpaceSpec

__all__ = [
    "Chain",
    "MagepTerm",
    "Psi",
    "chain_of",
    "magep_terms",
    "virtual_name",
    "is_foldable",
]


@dataclass(frozen=True)
class Chain:
    """An MLP-like weight space: ``weights[i-1] = W_i``, ``spaces[i] = s_i``."""

    weights: tuple[str, ...]
    biases: tuple[str | None, ...]
    spaces: tuple[str, ...]
    sizes: tuple[int, ...]

    @property
    def layers(self) -> int:
        return len(self.weights)


def chain_of(space: WeightSpaceSpec) -> Chain:
    """The chain structure of ``space``, or a GenerationError saying why it has none."""
    weights = sorted((t for t in space.tensors if t.kind == "weight"), key=lambda t: t.layer)
    if not weights:
        raise GenerationError("MAGEP terms need weight tensors; this weight space has none")
    spaces: list[str] = []
    for k, tensor in enumerate(weights):
        axes = tensor.axes
        if len(axes) != 2 or axes[0].character != 1 or axes[1].character != -1:
            raise GenerationError(
                f"MAGEP terms need matrix weights (rows +1, columns -1); {tensor.name} has "
                f"axes {[(a.space, a.character) for a in axes]} (use --family complete)"
            )
        if k == 0:
            spaces.append(axes[1].space)
        elif axes[1].space != spaces[-1]:
            raise GenerationError(
                f"MAGEP terms need a chain: {tensor.name} reads {axes[1].space}, "
                f"but the previous layer writes {spaces[-1]}"
            )
        spaces.append(axes[0].space)
    repeated = sorted({s for s in spaces if spaces.count(s) > 1})
    if repeated:
        raise GenerationError(
            f"MAGEP terms need a chain of distinct spaces, but {', '.join(repeated)} occurs more "
            "than once (tied by a residual connection); use --family complete"
        )
    biases: list[str | None] = []
    for k, tensor in enumerate(weights):
        bias = next(
            (t for t in space.tensors if t.kind == "bias" and t.layer == tensor.layer), None
        )
        if bias is not None and [a.space for a in bias.axes] != [spaces[k + 1]]:
            raise GenerationError(f"MAGEP terms need bias {bias.name} on space {spaces[k + 1]}")
        biases.append(bias.name if bias is not None else None)
    for end in (spaces[0], spaces[-1]):
        if not space.space(end).is_fixed:
            raise GenerationError(
                f"MAGEP terms glue paths through the fixed input and output spaces, but {end} is "
                "permuted (NP setting); use --permute hidden or --family complete"
            )
    return Chain(
        tuple(t.name for t in weights),
        tuple(biases),
        tuple(spaces),
        tuple(space.space(s).size for s in spaces),
    )


@dataclass(frozen=True)
class Psi:
    """A gluing parameter: ``shape`` after the leading ``in_channels`` axis, init std ``std``."""

    name: str
    shape: tuple[int, ...]
    std: float


@dataclass(frozen=True)
class MagepTerm:
    """One MAGEP term written to ``output``, held in the variable ``var``.

    ``i`` is the output layer and ``t`` the layer index the term's suffix path starts from
    (``[W](L,t)``); ``axes`` label the virtual tensor so the plan can read it like an input;
    ``degrees`` lists the degrees of its monomials (several for the sum of ``[Wb]`` paths).
    """

    var: str
    kind: str  # WW, bW, W, WW0, bW0, Wb, trWW, trbW
    output: str
    i: int
    t: int
    formula: str
    axes: tuple[Axis, ...]
    degrees: tuple[int, ...]
    psi: tuple[Psi, ...] = ()

    @property
    def degree(self) -> int:
        return max(self.degrees)


def magep_terms(
    space: WeightSpaceSpec, max_degree: int | None = None, outputs: set[str] | None = None
) -> list[MagepTerm]:
    """Every MAGEP term of degree 2..``max_degree`` (all if None), in output order, restricted
    to the terms written to ``outputs`` when given."""
    chain = chain_of(space)
    L = chain.layers
    limit = max_degree if max_degree is not None else 10**9
    n0, nL = chain.sizes[0], chain.sizes[-1]
    sp = chain.spaces
    terms: list[MagepTerm] = []

    def psi_ww(name: str) -> tuple[Psi, ...]:
        return (Psi(name, (n0, nL), 1 / sqrt(n0 * nL)),)

    def psi_bw(name: str) -> tuple[Psi, ...]:
        return (Psi(name, (1, nL), 1 / sqrt(nL)),)

    def add(
        var: str,
        kind: str,
        output: str,
        i: int,
        t: int,
        formula: str,
        axes: tuple[Axis, ...],
        degrees: tuple[int, ...],
        psi: tuple[Psi, ...] = (),
    ) -> None:
        if degrees and max(degrees) <= limit and (outputs is None or output in outputs):
            terms.append(MagepTerm(var, kind, output, i, t, formula, axes, degrees, psi))

    for i in range(1, L + 1):
        weight, bias = chain.weights[i - 1], chain.biases[i - 1]
        w_axes = (Axis(sp[i], 1), Axis(sp[i - 1], -1))
        wv = weight.lower()
        add(
            f"ww_{wv}",
            "WW",
            weight,
            i,
            i - 1,
            f"[WW]({i},0)({L},{i - 1}) = [W]({i},0) Psi [W]({L},{i - 1})",
            w_axes,
            (L + 1,),
            psi_ww(f"psi_ww_{wv}"),
        )
        if bias is not None:
            add(
                f"bw_{wv}",
                "bW",
                weight,
                i,
                i - 1,
                f"[bW]({i})({L},{i - 1}) = b{i} Psi' [W]({L},{i - 1})",
                w_axes,
                (L - i + 2,),
                psi_bw(f"psi_bw_{wv}"),
            )
        if bias is None:
            continue
        bv = bias.lower()
        p_axes = (Axis(sp[i], 1), Axis(sp[0], -1))
        if i >= 2:
            add(f"path_{bv}", "W", bias, i, 0, f"[W]({i},0)", p_axes, (i,))
        add(
            f"ww0_{bv}",
            "WW0",
            bias,
            i,
            0,
            f"[WW]({i},0)({L},0) = [W]({i},0) Psi [W]({L},0)",
            p_axes,
            (i + L,),
            psi_ww(f"psi_ww0_{bv}"),
        )
        add(
            f"bw0_{bv}",
            "bW0",
            bias,
            i,
            0,
            f"[bW]({i})({L},0) = b{i} Psi' [W]({L},0)",
            p_axes,
            (L + 1,),
            psi_bw(f"psi_bw0_{bv}"),
        )
        degrees = tuple(
            i - t + 1 for t in range(1, i) if chain.biases[t - 1] and i - t + 1 <= limit
        )
        add(
            f"wb_{bv}",
            "Wb",
            bias,
            i,
            0,
            f"sum_t [Wb]({i},t) = sum_t [W]({i},t) b_t",
            (Axis(sp[i], 1),),
            degrees,
        )
    last = chain.biases[-1]
    if last is not None:
        for s in range(1, L):
            add(
                f"tr_ww_{s}",
                "trWW",
                last,
                L,
                s,
                f"tr([W]({s},0) Psi [W]({L},{s}))",
                (),
                (L,),
                psi_ww(f"psi_tr_ww_{s}"),
            )
            if chain.biases[s - 1] is not None:
                add(
                    f"tr_bw_{s}",
                    "trbW",
                    last,
                    L,
                    s,
                    f"Psi' [W]({L},{s}) b{s}",
                    (),
                    (L - s + 1,),
                    psi_bw(f"psi_tr_bw_{s}"),
                )
    return terms


def is_foldable(space: WeightSpaceSpec, chain: Chain, term: MagepTerm) -> bool:
    """A glued term ending on the fixed input axis, with rows on a neuron space, whose rank per
    channel (n_L, or 1 for a bias outer product) is below n_0 (see :mod:`derive.plan.fold`)."""
    if term.kind not in ("WW", "WW0", "bW", "bW0") or term.t != 0:
        return False
    rank = chain.sizes[-1] if term.kind.startswith("WW") else 1
    return not space.space(chain.spaces[term.i]).is_fixed and rank < chain.sizes[0]


def virtual_name(term: MagepTerm) -> str:
    """The virtual tensor's name in the extended weight space."""
    return term.var.upper()
