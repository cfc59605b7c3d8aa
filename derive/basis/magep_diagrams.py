"""MAGEP terms as index diagrams, to prove them and to compare them with the complete family.

Every MAGEP term is a sum of monomials with index identifications: a path product
``W_s ... W_{t+1}`` chains row and column indices, Psi glues the fixed input and output axes,
traces close a path on itself. Written as :class:`derive.basis.polynomial.PolyMap` diagrams they are
proved with symbolic scales (:func:`derive.basis.poly_formulas.verify_poly_map`) like every other term,
and :func:`diagram_signature` (canonical up to relabelling identical factors) tells which
complete degree-d terms the MAGEP family contains and which it lacks.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence
from math import prod

from derive.basis.magep import Chain, MagepTerm, chain_of
from derive.basis.polynomial import PolyBlock, PolyMap
from derive.weightspace.model import WeightSpaceSpec

__all__ = ["term_diagrams", "diagram_signature", "magep_coverage"]

Signature = tuple[tuple[str, tuple[int, ...], tuple[tuple[int, int], ...]], ...]


class _Builder:
    """Collects factor occurrences with one index label per axis, then groups labels."""

    def __init__(self, space: WeightSpaceSpec) -> None:
        self.space = space
        self.factors: list[str] = []
        self.labels: list[list[str]] = []
        self.fresh = itertools.count()

    def label(self) -> str:
        return f"i{next(self.fresh)}"

    def add(self, tensor: str, labels: Sequence[str]) -> None:
        self.factors.append(tensor)
        self.labels.append(list(labels))

    def path(self, chain: Chain, s: int, t: int, row: str, col: str) -> None:
        """``[W](s,t)[row, col] = W_s[row, a] W_{s-1}[a, b] ... W_{t+1}[., col]``."""
        current = row
        for k in range(s, t, -1):
            nxt = col if k == t + 1 else self.label()
            self.add(chain.weights[k - 1], (current, nxt))
            current = nxt

    def build(self, output: str, out_labels: Sequence[str]) -> PolyMap:
        """The diagram, factors sorted into tensor order."""
        order = {t.name: k for k, t in enumerate(self.space.tensors)}
        perm = sorted(range(len(self.factors)), key=lambda f: (order[self.factors[f]], f))
        factors = [self.factors[f] for f in perm]
        labels = [self.labels[f] for f in perm]
        groups: dict[str, tuple[str, list[int], list[tuple[int, int]]]] = {}
        out_fixed: list[int] = []
        in_fixed: list[tuple[int, int]] = []
        out_tensor = self.space.tensor(output)
        for p, (axis, label) in enumerate(zip(out_tensor.axes, out_labels)):
            if self.space.is_fixed_axis(axis):
                out_fixed.append(p)
            else:
                groups.setdefault(label, (axis.space, [], []))[1].append(p)
        for f, (name, factor_labels) in enumerate(zip(factors, labels)):
            for p, (axis, label) in enumerate(zip(self.space.tensor(name).axes, factor_labels)):
                if self.space.is_fixed_axis(axis):
                    in_fixed.append((f, p))
                else:
                    groups.setdefault(label, (axis.space, [], []))[2].append((f, p))
        blocks = tuple(
            sorted(
                (
                    PolyBlock(sp, tuple(outs), tuple(sorted(ins)))
                    for sp, outs, ins in groups.values()
                ),
                key=lambda b: (0 if b.outputs else 1, b.outputs, b.inputs),
            )
        )
        sizes = [self.space.shape(out_tensor)[p] for p in out_fixed]
        sizes += [self.space.shape(self.space.tensor(factors[f]))[p] for f, p in in_fixed]
        return PolyMap(
            output, tuple(factors), blocks, tuple(out_fixed), tuple(in_fixed), prod(sizes)
        )


def term_diagrams(space: WeightSpaceSpec, term: MagepTerm) -> list[PolyMap]:
    """The monomial diagram(s) of one MAGEP term (several for ``sum_t [Wb](i,t)``)."""
    chain = chain_of(space)
    L, i, t = chain.layers, term.i, term.t
    out_labels: list[str]
    diagrams = []
    sources = [t] if term.kind != "Wb" else [s for s in range(1, i) if i - s + 1 in term.degrees]
    for source in sources:
        b = _Builder(space)
        row, col = b.label(), b.label()
        x, y = b.label(), b.label()  # fixed input and output axes (glued by Psi)
        if term.kind in ("WW", "WW0"):
            b.path(chain, i, 0, row, x)
            end = col if term.kind == "WW" else b.label()
            b.path(chain, L, t, y, end)
            out_labels = [row, col] if term.kind == "WW" else [row]
        elif term.kind in ("bW", "bW0"):
            b.add(chain.biases[i - 1] or "", (row,))
            end = col if term.kind == "bW" else b.label()
            b.path(chain, L, t, y, end)
            out_labels = [row, col] if term.kind == "bW" else [row]
        elif term.kind == "W":
            b.path(chain, i, 0, row, x)
            out_labels = [row]
        elif term.kind == "Wb":
            middle = b.label()
            b.path(chain, i, source, row, middle)
            b.add(chain.biases[source - 1] or "", (middle,))
            out_labels = [row]
        elif term.kind == "trWW":
            closed = b.label()
            b.path(chain, t, 0, closed, x)
            b.path(chain, L, t, y, closed)
            out_labels = [b.label()]
        else:  # trbW
            closed = b.label()
            b.path(chain, L, t, y, closed)
            b.add(chain.biases[t - 1] or "", (closed,))
            out_labels = [b.label()]
        diagrams.append(b.build(term.output, out_labels))
    return diagrams


def diagram_signature(m: PolyMap) -> Signature:
    """A key equal for two diagrams iff they differ only by relabelling identical factors."""
    groups: dict[str, list[int]] = {}
    for f, name in enumerate(m.factors):
        groups.setdefault(name, []).append(f)
    best: Signature | None = None
    for choice in itertools.product(*(itertools.permutations(g) for g in groups.values())):
        relabel = {}
        for original, image in zip(groups.values(), choice):
            relabel.update(dict(zip(original, image)))
        key = tuple(
            sorted(
                (b.space, b.outputs, tuple(sorted((relabel[f], p) for f, p in b.inputs)))
                for b in m.blocks
            )
        )
        if best is None or key < best:
            best = key
    assert best is not None
    return best


def magep_coverage(
    space: WeightSpaceSpec, terms: Iterable[MagepTerm], complete: Iterable[PolyMap]
) -> tuple[list[PolyMap], list[PolyMap]]:
    """(complete terms some MAGEP term contains, complete terms no MAGEP term contains)."""
    magep = {
        (d.output, d.factors, diagram_signature(d))
        for term in terms
        for d in term_diagrams(space, term)
    }
    covered: list[PolyMap] = []
    lacking: list[PolyMap] = []
    for m in complete:
        (covered if (m.output, m.factors, diagram_signature(m)) in magep else lacking).append(m)
    return covered, lacking
