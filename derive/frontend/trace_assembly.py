"""The typed weight space of a finished walk: spaces named in creation order, and every
recorded parameter cut into one tensor per combination of the (possibly split) spaces of its
axes, each with its slice of the state-dict entry."""

from __future__ import annotations

import itertools
from dataclasses import dataclass

from derive.frontend.trace_state import WalkState, _ParamRecord
from derive.weightspace.model import (
    Axis,
    Head,
    HeadBlock,
    NeuronSpace,
    Role,
    TensorSpec,
    WeightSpaceSpec,
)
from nfn_runtime.layout import SourceSlice

__all__ = ["assemble"]


@dataclass(frozen=True)
class _Piece:
    """One tensor of a parameter: a whole space (and its neuron range) per neuron axis."""

    param: _ParamRecord
    leaves: tuple[int | None, ...]  # per axis: the whole space, None for fixed axes
    ranges: tuple[tuple[int, int] | None, ...]  # per axis: neurons lo:hi of the axis's space


def _pieces(state: WalkState, param: _ParamRecord) -> list[_Piece]:
    options: list[list[tuple[int | None, tuple[int, int] | None]]] = []
    for space, _ in param.axes:
        if isinstance(space, str):
            options.append([(None, None)])
            continue
        choices: list[tuple[int | None, tuple[int, int] | None]] = []
        start = 0
        for leaf in state.leaves(space):
            size = state.size_of(leaf)
            choices.append((leaf, (start, start + size)))
            start += size
        options.append(choices)
    return [
        _Piece(param, tuple(leaf for leaf, _ in combo), tuple(r for _, r in combo))
        for combo in itertools.product(*options)
    ]


def _source_slice(state: WalkState, piece: _Piece) -> SourceSlice | None:
    """The entries of the state-dict entry the piece holds, or None for all of them."""
    slices: list[tuple[int, int, int, int]] = []
    for (space, _), place, rng in zip(piece.param.axes, piece.param.places, piece.ranges):
        if place is None or rng is None:
            continue
        dim, start, unit, step = place
        lo, hi = rng
        if unit > 1:
            assert step == 1, "strided channels cannot have flattened positions behind them"
            piece_slice = (dim, start + lo * unit, start + hi * unit, 1)
        else:
            piece_slice = (dim, start + lo * step, start + (hi - 1) * step + 1, step)
        if piece_slice != (dim, 0, piece.param.shape[dim], 1):
            slices.append(piece_slice)
        assert isinstance(space, int)
    return tuple(sorted(slices)) or None


def _layers(pieces: list[list[_Piece]]) -> dict[tuple[int, int], int]:
    """Layer numbers ``(param index, piece index) -> layer``, in the order of the walk's
    layers: every weight piece starts a layer; a bias piece joins the first one of its walk
    layer whose spaces include its own (else starts one); a buffer piece does the same but
    never starts a layer (it keeps the last one). Without split spaces this is the walk's
    own numbering."""
    order = sorted(range(len(pieces)), key=lambda i: (pieces[i][0].param.layer, i))
    numbers: dict[tuple[int, int], int] = {}
    count = 0
    homes: dict[int, list[tuple[set[int], int, set[str]]]] = {}
    for index in order:
        for k, piece in enumerate(pieces[index]):
            param = piece.param
            leaves = {leaf for leaf in piece.leaves if leaf is not None}
            layer_homes = homes.setdefault(param.layer, [])
            home = next(
                (
                    entry
                    for entry in layer_homes
                    if leaves <= entry[0] and (param.kind == "buffer" or param.kind not in entry[2])
                ),
                None,
            )
            if param.kind == "weight" or (home is None and param.kind == "bias"):
                count += 1
                layer_homes.append((leaves, count, {param.kind}))
                numbers[index, k] = count
            elif home is not None:
                home[2].add(param.kind)
                numbers[index, k] = home[1]
            else:
                numbers[index, k] = max(count, 1)
    return numbers


def assemble(state: WalkState, name: str) -> WeightSpaceSpec:
    """The typed weight space of what the walk found (no group yet)."""
    records = state.spaces
    roots = sorted(
        {state.root_of(key) for key in records if not records[key].children},
        key=lambda key: records[key].order,
    )
    names: dict[int, str] = {
        root: fixed for root in roots if (fixed := records[root].fixed) is not None
    }
    spaces: list[NeuronSpace] = []
    hidden = 0
    for root in roots:
        if root in names:
            continue
        record = records[root]
        role: Role
        if record.is_input:
            names[root], role = "in", "input"
        elif record.is_output:
            names[root], role = "out", "output"
        else:
            hidden += 1
            names[root], role = f"h{hidden}", "hidden"
        spaces.append(
            NeuronSpace(
                names[root],
                record.size,
                role=role,
                origin=record.origin,
                ties=tuple(record.ties),
                activations=tuple(record.activations),
                constraints=tuple(record.constraints),
            )
        )
    for fixed, (size, what) in sorted(state.fixed.items()):
        kind: Role = "replicated" if fixed in state.replicated else "fixed"
        spaces.append(NeuronSpace(fixed, size, role=kind, origin=what))
    pieces = [_pieces(state, param) for param in state.params]
    layers = _layers(pieces)
    tensors: list[TensorSpec] = []
    buffers: list[TensorSpec] = []
    for index, param_pieces in enumerate(pieces):
        for k, piece in enumerate(param_pieces):
            param = piece.param
            axes = tuple(
                _axis(state, space if leaf is None else leaf, character, names)
                for (space, character), leaf in zip(param.axes, piece.leaves)
            )
            source_slice = _source_slice(state, piece)
            layer = layers[index, k]
            if param.kind == "buffer":  # named by its state-dict key (unique, never a feature)
                tensor_name = param.source_key + "".join(
                    f"[{a}:{b}]" if s == 1 else f"[{a}:{b}:{s}]"
                    for _, a, b, s in source_slice or ()
                )
            else:
                tensor_name = f"{'W' if param.kind == 'weight' else 'b'}{layer}"
            (buffers if param.kind == "buffer" else tensors).append(
                TensorSpec(
                    name=tensor_name,
                    kind=param.kind,
                    layer=layer,
                    axes=axes,
                    source_key=param.source_key,
                    source_shape=param.shape,
                    source_slice=source_slice,
                )
            )
    return WeightSpaceSpec(
        name=name,
        spaces=tuple(spaces),
        tensors=tuple(tensors),
        buffers=tuple(buffers),
        source=state.where,
        head_blocks=_head_blocks(state, names),
    )


def _head_blocks(state: WalkState, names: dict[int, str]) -> tuple[HeadBlock, ...]:
    """The attention heads the walk recorded, each key as the named spaces it ends up as."""

    def spaces(keys: tuple[int, ...]) -> tuple[str, ...]:
        found = [names[state.root_of(leaf)] for key in keys for leaf in state.leaves(key)]
        return tuple(dict.fromkeys(found))

    return tuple(
        HeadBlock(where, tuple(Head(spaces(qk), spaces(value)) for qk, value in heads))
        for where, heads in state.head_blocks
    )


def _axis(state: WalkState, space: int | str, character: int, names: dict[int, str]) -> Axis:
    if isinstance(space, str):
        return Axis(space, character)
    root, flipped = state.find(space)
    if state.spaces[root].fixed:
        return Axis(names[root], 0)
    return Axis(names[root], -character if flipped else character)
