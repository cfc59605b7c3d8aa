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
    "null_dimension",
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
    A generator acting on neither tensor gives zero rows (``I - I``, or ``0 - 0`` for a Lie
    generator) and is left out; a block with no generator acting on it gets no rows.
    """
    touched = {
        axis.space for tensor in (output, input) if tensor is not None for axis in tensor.axes
    }
    rows = []
    for gen in gens:
        if gen.space not in touched:
            continue
        rho_t = tensor_action(space, output, gen) if output is not None else _trivial(gen)
        rho_s = tensor_action(space, input, gen) if input is not None else _trivial(gen)
        eye_t = torch.eye(rho_t.shape[0], dtype=torch.float64)
        eye_s = torch.eye(rho_s.shape[0], dtype=torch.float64)
        rows.append(torch.kron(rho_s.T.contiguous(), eye_t) - torch.kron(eye_s, rho_t))
    if not rows:
        size = _numel(space, output) * _numel(space, input)
        return torch.zeros(0, size, dtype=torch.float64)
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
    """Null-space dimension (and Jacobian span, when given) for every block ``T <- S``.

    Where no generator acts on both ``T`` and ``S`` (their spaces meet nowhere the group acts),
    the group is a product of a part acting on ``T`` and a part acting on ``S``, and the
    equivariant maps are exactly ``T^G (x) (S*)^G``: the null dimension is the product of the
    dimensions of the blocks ``T <- 1`` and ``1 <- S``, whose constraints are far smaller (on a
    network with many tensors most blocks are of this kind). The Jacobians' residual is
    ``max ||rho_T(h) L - L rho_S(h)||`` over the generators, by matrix products per generator."""
    gens = generators(space)
    acting = {gen.space for gen in gens}
    alone: dict[tuple[str, bool], int] = {}  # (tensor, as output) -> dim of T <- 1 or 1 <- S

    def single(tensor: TensorSpec, output: bool) -> int:
        key = (tensor.name, output)
        if key not in alone:
            alone[key] = (
                null_dimension(space, tensor, None, gens)
                if output
                else null_dimension(space, None, tensor, gens)
            )
        return alone[key]

    checks = []
    for t_out, t_in in itertools.product(space.tensors, space.tensors):
        key = f"{t_out.name}<-{t_in.name}"
        shared = _spaces(t_out) & _spaces(t_in) & acting
        n = _numel(space, t_out) * _numel(space, t_in)
        if not gens:
            null = n
        elif shared:
            null = null_dimension(space, t_out, t_in, gens)
        else:
            null = single(t_out, True) * single(t_in, False)
        span = residual = None
        if jacobians is not None:
            stacked = jacobians[(t_out.name, t_in.name)]
            span = _rank(stacked)
            residual = _residual(space, t_out, t_in, gens, stacked)
        checks.append(BlockCheck(key, symbolic_counts.get(key, 0), null, span, residual))
    return checks


def _action(space: WeightSpaceSpec, tensor: TensorSpec | None, gen: Generator) -> Tensor:
    return tensor_action(space, tensor, gen) if tensor is not None else _trivial(gen)


def null_dimension(
    space: WeightSpaceSpec,
    output: TensorSpec | None,
    input: TensorSpec | None,
    gens: list[Generator],
) -> int:
    """The null dimension of :func:`block_constraint`, computed in two steps.

    Sign flips and Lie generators act by diagonal matrices, so their rows are diagonal too: a
    coordinate of ``vec(L)`` with a nonzero entry in any of them is zero in every solution
    (the entries are small integers, exactly representable: the test is exact). What is left
    are the coordinates where every diagonal row vanishes, and the permutation generators'
    rows restricted to them, whose rank is taken as before. The result equals
    :func:`equivariant_dimension`; on a block with many scaled neurons most coordinates go in
    the first step, and the rank is of a much narrower matrix."""
    touched = {
        axis.space for tensor in (output, input) if tensor is not None for axis in tensor.axes
    }
    n = _numel(space, output) * _numel(space, input)
    free = torch.ones(n, dtype=torch.bool)
    permutations = []
    for gen in gens:
        if gen.space not in touched:
            continue  # zero rows
        if gen.permutation is not None:
            permutations.append(gen)
            continue
        rho_t, rho_s = _action(space, output, gen), _action(space, input, gen)
        ones_t = torch.ones(rho_t.shape[0], dtype=torch.float64)
        ones_s = torch.ones(rho_s.shape[0], dtype=torch.float64)
        diagonal = torch.kron(rho_s.diagonal(), ones_t) - torch.kron(ones_s, rho_t.diagonal())
        free &= diagonal.abs() < 0.5
    kept = int(free.sum())
    if not permutations or kept == 0:
        return kept
    rows = []
    for gen in permutations:
        rho_t, rho_s = _action(space, output, gen), _action(space, input, gen)
        eye_t = torch.eye(rho_t.shape[0], dtype=torch.float64)
        eye_s = torch.eye(rho_s.shape[0], dtype=torch.float64)
        block = torch.kron(rho_s.T.contiguous(), eye_t) - torch.kron(eye_s, rho_t)
        rows.append(block[:, free])
    return kept - _rank(torch.cat(rows, dim=0))


def _spaces(tensor: TensorSpec) -> set[str]:
    return {axis.space for axis in tensor.axes}


def _residual(
    space: WeightSpaceSpec,
    output: TensorSpec,
    input: TensorSpec,
    gens: list[Generator],
    stacked: Tensor,
) -> float:
    """``max ||rho_T(h) L - L rho_S(h)|| / max |L|`` over generators ``h`` acting on the block
    and the stacked column-major ``vec(L)`` rows (the block constraint applied to them)."""
    if not stacked.numel():
        return 0.0
    touched = _spaces(output) | _spaces(input)
    n_t, n_s = _numel(space, output), _numel(space, input)
    maps = stacked.reshape(-1, n_s, n_t).transpose(1, 2)  # column-major vec -> (|T|, |S|)
    scale = max(float(stacked.abs().max()), 1e-300)
    worst = 0.0
    for gen in gens:
        if gen.space not in touched:
            continue
        rho_t = tensor_action(space, output, gen)
        rho_s = tensor_action(space, input, gen)
        worst = max(worst, float((rho_t @ maps - maps @ rho_s).abs().max()))
    return worst / scale
