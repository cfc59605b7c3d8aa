"""A size budget for the maps over large fixed axes: dense, or factored at low rank.

The complete basis is dense over fixed axes: a map from a tensor with fixed indices ``u`` to
one with fixed indices ``x`` carries a parameter per ``(x, u)`` pair and channel pair. On an
ImageNet head (1000 classes) or a 784-pixel input that is a 1000 x 1000 or 784 x 784 block per
channel pair, and a layer far larger than the network it reads.

Each channel-mixing matmul of the plan (:class:`derive.plan.linear.MixOp`) multiplies its
features by a weight of ``out_factor * c_out`` rows and ``in_factor * c_in`` columns, and every
entry of that weight is a free coefficient of the basis: rows and columns index output and
input channels with fixed indices, on which the group acts trivially. Any restriction of the
weight is therefore still exactly equivariant. The budget keeps a matmul dense, or replaces its
weight by a product ``up @ down`` of rank ``r * max(c_in, c_out)``: per channel pair
``r * (out_factor + in_factor)`` coefficients instead of ``out_factor * in_factor``.

The rule, for a budget ``D`` (largest dimension per channel pair):

- matmuls of at most :data:`DENSE_UP_TO` coefficients per channel pair stay dense (they are
  the maps over kernel windows and small heads, cheap at any channel count);
- every larger matmul is factored at one common rank ``r``, the largest with a total at most
  ``D``, but never below :data:`MIN_RANK`; a matmul is factored only where that saves
  coefficients;
- the default ``D`` is the network's parameter count divided by 64, so that a layer at 8 -> 8
  channels has about as many parameters as the network it reads.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Literal

from derive.errors import GenerationError, SpecError
from derive.plan.linear import LinearPlan, MixOp
from derive.plan.tying import plan_tying

__all__ = [
    "Budget",
    "BudgetChoice",
    "OpChoice",
    "DENSE_UP_TO",
    "MIN_RANK",
    "REFERENCE_CHANNELS",
    "parse_budget",
    "default_dim",
    "choose_budget",
    "apply_budget",
    "layer_parameters",
]

#: what a budget may be: a dimension per channel pair, the default rule, or the complete basis
Budget = int | Literal["default", "dense"]

#: a matmul with at most this many coefficients per channel pair always stays dense
DENSE_UP_TO = 16384

#: a factored matmul has at least this rank per channel (times max(c_in, c_out))
MIN_RANK = 8

#: the default budget makes a layer at this many channels in and out about the network's size
REFERENCE_CHANNELS = 8


def parse_budget(text: str, where: str = "--budget") -> Budget:
    """``dense``, ``default`` or a positive integer (``_`` separators allowed)."""
    value = text.strip().lower()
    if value in ("dense", "default"):
        return "dense" if value == "dense" else "default"
    try:
        number = int(value.replace("_", ""))
    except ValueError:
        number = 0
    if number < 1:
        raise SpecError(
            f"budget must be a positive integer, 'dense' or 'default', got {text!r}", where
        )
    return number


def default_dim(network_params: int) -> int:
    """The default budget: the network's parameters per channel pair at 8 -> 8 channels."""
    return max(1, network_params // REFERENCE_CHANNELS**2)


@dataclass(frozen=True)
class OpChoice:
    """One matmul's choice: its dense dimension per channel pair and its rank (0: dense)."""

    name: str
    out_factor: int
    in_factor: int
    rank: int
    writes: tuple[str, ...] = ()  # the output tensors of its terms
    reads: tuple[str, ...] = ()  # the input tensors of its features

    @property
    def dense_dim(self) -> int:
        return self.out_factor * self.in_factor

    @property
    def kept_dim(self) -> int:
        """Coefficients per channel pair (at equal input and output channels)."""
        return self.rank * (self.out_factor + self.in_factor) if self.rank else self.dense_dim


@dataclass(frozen=True)
class BudgetChoice:
    """What a budget kept: per matmul, dense or its rank; the budget asked for and why."""

    budget: Budget
    max_dim: int | None  # None: dense (no budget)
    ops: tuple[OpChoice, ...]

    @property
    def dense_dim(self) -> int:
        return sum(op.dense_dim for op in self.ops)

    @property
    def kept_dim(self) -> int:
        return sum(op.kept_dim for op in self.ops)

    @property
    def factored(self) -> tuple[OpChoice, ...]:
        return tuple(op for op in self.ops if op.rank)

    @property
    def within(self) -> bool:
        """Whether the kept dimension is at most the budget (the floor may exceed it)."""
        return self.max_dim is None or self.kept_dim <= self.max_dim

    def lines(self) -> list[str]:
        """A short report: the budget, the dimension before and after, each factored matmul."""
        if self.max_dim is None:
            return [f"budget: dense (the complete basis, dimension {self.dense_dim:,})"]
        source = "default: network parameters / 64" if self.budget == "default" else "--budget"
        head = (
            f"budget: {self.max_dim:,} per channel pair ({source}); dimension "
            f"{self.dense_dim:,} -> {self.kept_dim:,}"
        )
        if not self.factored:
            return [head + " (every matmul dense)"]
        lines = [head]
        if not self.within:
            lines.append(
                f"  the floor (matmuls up to {DENSE_UP_TO} dense, rank at least {MIN_RANK}) is "
                f"above the budget: {self.kept_dim:,}"
            )
        for op in self.factored:
            lines.append(
                f"  {op.name}: {op.out_factor} x {op.in_factor} = {op.dense_dim:,} dense -> "
                f"rank {op.rank} x max(c_in, c_out): {op.kept_dim:,}"
            )
            if op.writes:
                lines.append(f"    writes {_names(op.writes)}; reads {_names(op.reads)}")
        dense = len(self.ops) - len(self.factored)
        lines.append(f"  {dense} other matmuls dense")
        return lines


def _names(names: Sequence[str], shown: int = 6) -> str:
    more = f" and {len(names) - shown} more" if len(names) > shown else ""
    return ", ".join(names[:shown]) + more


def _cost(ops: Sequence[MixOp], rank: int) -> int:
    return sum(
        min(op.out_factor * op.in_factor, rank * (op.out_factor + op.in_factor))
        if op.out_factor * op.in_factor > DENSE_UP_TO
        else op.out_factor * op.in_factor
        for op in ops
    )


def _saves(op: MixOp, rank: int) -> bool:
    dense = op.out_factor * op.in_factor
    return dense > DENSE_UP_TO and rank * (op.out_factor + op.in_factor) < dense


def choose_budget(plan: LinearPlan, budget: Budget, network_params: int) -> BudgetChoice:
    """The rank of every matmul of ``plan`` under ``budget`` (see the module docstring).

    An explicit budget below the floor of the rule raises a :class:`GenerationError` naming
    the smallest dimension it can reach; the default budget takes the floor instead.
    """
    ops = plan.ops
    sources = {f.name: f.source for f in plan.features}

    def choice(op: MixOp, rank: int) -> OpChoice:
        writes = tuple(dict.fromkeys(t.placement.output for t in op.terms))
        reads = tuple(dict.fromkeys(sources[f] for f in op.features))
        return OpChoice(op.name, op.out_factor, op.in_factor, rank, writes, reads)

    if budget == "dense":
        return BudgetChoice(budget, None, tuple(choice(o, 0) for o in ops))
    max_dim = default_dim(network_params) if budget == "default" else budget
    dense_total = sum(o.out_factor * o.in_factor for o in ops)
    rank = 0
    if dense_total > max_dim:
        top = max((o.out_factor * o.in_factor for o in ops), default=1)
        if _cost(ops, MIN_RANK) > max_dim:
            if budget != "default":
                raise GenerationError(
                    f"budget {max_dim:,} per channel pair is below the smallest layer this "
                    f"weight space allows ({_cost(ops, MIN_RANK):,}: matmuls up to "
                    f"{DENSE_UP_TO} dense, rank at least {MIN_RANK}); raise --budget"
                )
            rank = MIN_RANK
        else:
            low, high = MIN_RANK, top  # _cost(low) <= max_dim; find the largest such rank
            while low < high:
                middle = (low + high + 1) // 2
                if _cost(ops, middle) <= max_dim:
                    low = middle
                else:
                    high = middle - 1
            rank = low
    choices = tuple(choice(o, rank if _saves(o, rank) else 0) for o in ops)
    return BudgetChoice(budget, max_dim, choices)


def apply_budget(plan: LinearPlan, choice: BudgetChoice) -> LinearPlan:
    """``plan`` with the ranks of ``choice`` on its matmuls."""
    ranks = {op.name: op.rank for op in choice.ops}
    if not any(ranks.values()):
        return plan
    return replace(plan, ops=tuple(replace(op, rank=ranks[op.name]) for op in plan.ops))


def layer_parameters(plan: LinearPlan, c_in: int, c_out: int) -> int:
    """The parameters of the module generated from ``plan`` at ``c_in -> c_out`` channels:
    per matmul its dense weight or its two factors, and its bias (tied across heads: the flat
    parameters, :mod:`derive.plan.tying`)."""
    width = max(c_in, c_out)
    tying = plan_tying(plan) if any(op.tied for op in plan.ops) else None
    if tying is not None:
        factors = tying.rank * width * (tying.up * c_out + tying.down * c_in)
        return tying.weight * c_in * c_out + tying.bias * c_out + factors
    total = 0
    for op in plan.ops:
        rows, columns = op.out_factor * c_out, op.in_factor * c_in
        total += op.rank * width * (rows + columns) if op.rank else rows * columns
        total += rows if op.has_bias else 0
    return total
