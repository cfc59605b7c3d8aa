"""Numeric completeness checks (docs/math.md section 6), independent of the symbolic engine.

For a small weight space, the group acts on each tensor by explicit matrices. The space of
equivariant maps ``T <- S`` is the null space of ``L rho_S(h) - rho_T(h) L`` stacked over
generators ``h``: a transposition and an n-cycle per permuted space, a sign flip per neuron
on sign spaces, and the Lie-algebra generators (diagonal matrices of characters) per neuron
on positively scaled spaces. Its dimension must equal the symbolic count; the Jacobians of a
generated layer over random parameters must span it.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from derive.weightspace.model import TensorSpec, WeightSpaceSpec
from nfn_runtime.weight_space import WeightSpace

__all__ = [
    "Generator",
    "generators",
    "tensor_action",
    "equivariant_dimension",
    "block_constraint",
    "layer_jacobians",
    "BlockCheck",
    "completeness_report",
]


@dataclass(frozen=True)
class Generator:
    """One group generator: per space a permutation and a scale; ``lie`` marks an algebra element."""

    space: str
    permutation: tuple[int, ...] | None = None
    scale: tuple[float, ...] | None = None  # group element (sign flips)
    lie: tuple[float, ...] | None = None  # infinitesimal scaling direction


def generators(space: WeightSpaceSpec) -> list[Generator]:
    """Generators of the group (finite part) and of its Lie algebra (continuous scalings)."""
    gens: list[Generator] = []
    for s in space.spaces:
        n = s.size
        if s.permuted and n >= 2:
            gens.append(Generator(s.name, permutation=(1, 0, *range(2, n))))
            if n >= 3:
                gens.append(Generator(s.name, permutation=(*range(1, n), 0)))
        for j in range(n):
            if s.scaling.allows_sign():
                gens.append(
                    Generator(s.name, scale=tuple(-1.0 if k == j else 1.0 for k in range(n)))
                )
            if s.scaling.allows_positive():
                gens.append(Generator(s.name, lie=tuple(1.0 if k == j else 0.0 for k in range(n))))
    return gens


def tensor_action(space: WeightSpaceSpec, tensor: TensorSpec, gen: Generator) -> Tensor:
    """The matrix by which ``gen`` acts on the flattened entries of ``tensor`` (float64)."""
    shape = space.shape(tensor)
    size = 1
    for n in shape:
        size *= n
    index = torch.arange(size).reshape(shape)
    if gen.permutation is not None:
        perm = torch.tensor(gen.permutation)
        moved = index
        for axis, ax in enumerate(tensor.axes):
            if ax.space == gen.space:
                # new[j] = old[pi^-1(j)]: gather the source index along this axis
                inverse = torch.argsort(perm)
                moved = moved.index_select(axis, inverse)
        matrix = torch.zeros(size, size, dtype=torch.float64)
        matrix[torch.arange(size), moved.reshape(-1)] = 1.0
        return matrix
    diag = (
        torch.ones(shape, dtype=torch.float64)
        if gen.scale is not None
        else torch.zeros(shape, dtype=torch.float64)
    )
    for axis, ax in enumerate(tensor.axes):
        if ax.space != gen.space or ax.character == 0:
            continue
        view = [1] * len(shape)
        view[axis] = shape[axis]
        if gen.scale is not None:
            factor = torch.tensor(gen.scale, dtype=torch.float64).reshape(view) ** ax.character
            diag = diag * factor
        else:
            assert gen.lie is not None
            diag = diag + ax.character * torch.tensor(gen.lie, dtype=torch.float64).reshape(view)
    return torch.diag(diag.reshape(-1))


def block_constraint(
    space: WeightSpaceSpec,
    output: TensorSpec | None,
    input: TensorSpec | None,
    gens: list[Generator],
) -> Tensor:
    """Stacked ``(rho_S^T kron I - I kron rho_T) vec(L) = 0`` rows for the block ``output <- input``.

    ``None`` stands for the trivial one-dimensional representation (constants, invariants).
    """
    rows = []
    for gen in gens:
        rho_t = tensor_action(space, output, gen) if output is not None else _trivial(gen)
        rho_s = tensor_action(space, input, gen) if input is not None else _trivial(gen)
        eye_t = torch.eye(rho_t.shape[0], dtype=torch.float64)
        eye_s = torch.eye(rho_s.shape[0], dtype=torch.float64)
        rows.append(torch.kron(rho_s.T.contiguous(), eye_t) - torch.kron(eye_s, rho_t))
    return torch.cat(rows, dim=0)


def _trivial(gen: Generator) -> Tensor:
    value = 0.0 if gen.lie is not None else 1.0
    return torch.full((1, 1), value, dtype=torch.float64)


def _rank(matrix: Tensor) -> int:
    if matrix.numel() == 0:
        return 0
    return int(torch.linalg.matrix_rank(matrix, hermitian=False, rtol=1e-9).item())


def equivariant_dimension(
    space: WeightSpaceSpec, output: TensorSpec | None, input: TensorSpec | None
) -> int:
    """Dimension of the null space of the block's constraints."""
    gens = generators(space)
    n_t = _numel(space, output)
    n_s = _numel(space, input)
    if not gens:
        return n_t * n_s
    return n_t * n_s - _rank(block_constraint(space, output, input, gens))


def _numel(space: WeightSpaceSpec, tensor: TensorSpec | None) -> int:
    if tensor is None:
        return 1
    size = 1
    for n in space.shape(tensor):
        size *= n
    return size


def layer_jacobians(
    space: WeightSpaceSpec,
    layer: Callable[[WeightSpace], WeightSpace],
    draws: int,
    randomize: Callable[[], None],
) -> dict[tuple[str, str], Tensor]:
    """Per block ``(T, S)``, the stacked vec'd Jacobians of ``layer`` over ``draws`` parameter draws.

    ``layer`` maps one channel to one channel in float64; ``randomize`` redraws its parameters.
    The affine part is removed by subtracting the layer's value at zero.
    """
    layout = space.to_layout()
    tensors = space.tensors
    sizes = [_numel(space, t) for t in tensors]
    total = sum(sizes)
    out: dict[tuple[str, str], list[Tensor]] = {}
    for _ in range(draws):
        randomize()
        basis_inputs = torch.eye(total, dtype=torch.float64)
        batch = torch.cat([basis_inputs, torch.zeros(1, total, dtype=torch.float64)], dim=0)
        named = {}
        offset = 0
        for t, n in zip(tensors, sizes):
            named[t.name] = batch[:, offset : offset + n].reshape(
                batch.shape[0], 1, *space.shape(t)
            )
            offset += n
        with torch.no_grad():
            result = layer(WeightSpace.from_named(layout, named)).named(layout)
        for t_out in tensors:
            values = result[t_out.name].reshape(batch.shape[0], -1)
            matrix = (values[:-1] - values[-1:]).T  # (|T|, total)
            offset = 0
            for t_in, n in zip(tensors, sizes):
                block = matrix[:, offset : offset + n]
                out.setdefault((t_out.name, t_in.name), []).append(
                    block.T.reshape(-1)
                )  # column-major vec
                offset += n
    return {key: torch.stack(vectors) for key, vectors in out.items()}


@dataclass(frozen=True)
class BlockCheck:
    """Numeric facts about one block, beside the symbolic count."""

    key: str
    symbolic: int
    null_space: int
    jacobian_span: int | None
    residual: float | None

    @property
    def ok(self) -> bool:
        spans = self.jacobian_span is None or self.jacobian_span == self.symbolic
        inside = self.residual is None or self.residual < 1e-8
        return self.symbolic == self.null_space and spans and inside


def completeness_report(
    space: WeightSpaceSpec,
    symbolic_counts: dict[str, int],
    jacobians: dict[tuple[str, str], Tensor] | None = None,
) -> list[BlockCheck]:
    """Null-space dimension (and Jacobian span, when given) for every block ``T <- S``."""
    gens = generators(space)
    checks = []
    for t_out, t_in in itertools.product(space.tensors, space.tensors):
        key = f"{t_out.name}<-{t_in.name}"
        constraint = block_constraint(space, t_out, t_in, gens) if gens else None
        n = _numel(space, t_out) * _numel(space, t_in)
        null = n - (_rank(constraint) if constraint is not None else 0)
        span = residual = None
        if jacobians is not None:
            stacked = jacobians[(t_out.name, t_in.name)]
            span = _rank(stacked)
            if constraint is not None:
                scale = max(float(stacked.abs().max()), 1e-300)
                residual = float((constraint @ stacked.T).abs().max()) / scale
            else:
                residual = 0.0
        checks.append(BlockCheck(key, symbolic_counts.get(key, 0), null, span, residual))
    return checks
