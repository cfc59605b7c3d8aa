"""Moving weights between ``state_dict``s, :class:`WeightSpace` and the ``nfn`` package.

A layout's :class:`~nfn_runtime.layout.TensorLayout` names the ``state_dict`` entry it reads
(``source_key``) and that entry's shape (``source_shape``). The axis shape may be a reshape of
it with the same element order, e.g. a linear layer after ``flatten`` of a conv output:
``source_shape (n_out, c*h*w)`` against axes ``(out, c, h*w)``.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from nfn_runtime.layout import TensorLayout, WeightSpaceLayout
from nfn_runtime.weight_space import WeightSpace

if TYPE_CHECKING:
    from nfn.common import WeightSpaceFeatures

__all__ = [
    "read_source",
    "write_sources",
    "from_nfn",
    "state_dicts_from_weight_space",
    "to_nfn",
    "weight_space_from_state_dicts",
]

_NFN_MISSING = "{what} needs the `nfn` package (pip install nfn==0.1.2)"


def _source_key(spec: TensorLayout) -> str:
    """The state-dict key of ``spec``; the tensor name when the layout gives none."""
    return spec.source_key or spec.name


def _source_shape(layout: WeightSpaceLayout, spec: TensorLayout) -> tuple[int, ...]:
    """The state-dict shape of ``spec``'s entry (the whole entry for a part of one); the axis
    shape when the layout gives none."""
    axis_shape = layout.shape(spec)
    if not spec.source_shape:
        return axis_shape
    if math.prod(spec.part_shape()) != math.prod(axis_shape):
        raise ValueError(
            f"layout error: tensor {spec.name!r} has source_shape {spec.part_shape()} but axis "
            f"shape {axis_shape}; they must have the same number of entries"
        )
    return tuple(spec.source_shape)


def read_source(layout: WeightSpaceLayout, spec: TensorLayout, value: Tensor) -> Tensor:
    """``spec``'s entries taken from its state-dict entry ``value`` (its slice of it, for a
    part), in axis shape."""
    if spec.source_slice is not None:
        value = value[(slice(None),) * (value.dim() - len(spec.source_shape)) + spec.source_index()]
    return value.reshape(layout.shape(spec))


def write_sources(
    layout: WeightSpaceLayout, specs: Sequence[TensorLayout], values: Mapping[str, Tensor]
) -> dict[str, Tensor]:
    """State-dict entries from tensors in axis shape (``values`` by tensor name, with any
    leading batch dimensions, kept): the parts of one entry are written into it at their
    slices (autograd flows through)."""
    out: dict[str, Tensor] = {}
    parts: dict[str, list[tuple[TensorLayout, Tensor]]] = {}
    for spec in specs:
        key = _source_key(spec)
        value = values[spec.name]
        lead = value.shape[: value.dim() - len(layout.shape(spec))]
        if spec.source_slice is None:
            out[key] = value.reshape(*lead, *_source_shape(layout, spec))
            continue
        parts.setdefault(key, []).append((spec, value.reshape(*lead, *spec.part_shape())))
    for key, pieces in parts.items():
        first, sample = pieces[0]
        covered = sum(math.prod(piece.part_shape()) for piece, _ in pieces)
        if covered != math.prod(first.source_shape):
            raise ValueError(
                f"layout error: the parts of {key!r} cover {covered} of its "
                f"{math.prod(first.source_shape)} entries"
            )
        lead = sample.shape[: sample.dim() - len(first.source_shape)]
        whole = sample.new_zeros((*lead, *first.source_shape))
        for piece, value in pieces:
            # in place on a fresh tensor: autograd flows
            whole[(slice(None),) * len(lead) + piece.source_index()] = value
        out[key] = whole
    return out


def weight_space_from_state_dicts(
    state_dicts: Sequence[Mapping[str, Tensor]] | Mapping[str, Tensor],
    layout: WeightSpaceLayout,
    dtype: torch.dtype | None = None,
) -> WeightSpace:
    """Stack networks' ``state_dict``s into a :class:`WeightSpace` with ``B = len(state_dicts)``
    and ``C = 1``.

    Entries are matched by ``source_key`` and reshaped from ``source_shape`` to the axis
    shape; keys the layout does not name are ignored. A single state dict is accepted too
    (``B = 1``). ``dtype`` casts every tensor; by default the state dict's dtype is kept.
    """
    if isinstance(state_dicts, Mapping):
        state_dicts = [state_dicts]
    if len(state_dicts) == 0:
        raise ValueError("need at least one state dict")
    missing: list[str] = []
    wrong_shape: list[str] = []
    for index, state_dict in enumerate(state_dicts):
        for spec in layout.tensors:
            key = _source_key(spec)
            if key not in state_dict:
                missing.append(f"{key!r} (tensor {spec.name!r}) in state dict {index}")
                continue
            shape = tuple(state_dict[key].shape)
            expected = _source_shape(layout, spec)
            if shape != expected:
                wrong_shape.append(
                    f"{key!r} (tensor {spec.name!r}) in state dict {index}: "
                    f"expected {expected}, got {shape}"
                )
    if missing or wrong_shape:
        lines = [f"missing key {entry}" for entry in missing]
        lines += [f"wrong shape for {entry}" for entry in wrong_shape]
        available = sorted(state_dicts[0].keys())
        raise ValueError(
            "state dicts do not match the layout:\n  "
            + "\n  ".join(lines)
            + f"\navailable keys (state dict 0): {available}"
        )
    tensors: dict[str, Tensor] = {}
    for spec in layout.tensors:
        key = _source_key(spec)
        stacked = torch.stack([read_source(layout, spec, sd[key]) for sd in state_dicts])
        tensors[spec.name] = (
            stacked.unsqueeze(1) if dtype is None else stacked.unsqueeze(1).to(dtype)
        )
    return WeightSpace.from_named(layout, tensors)


def state_dicts_from_weight_space(
    ws: WeightSpace, layout: WeightSpaceLayout, channel: int | None = None
) -> list[OrderedDict[str, Tensor]]:
    """One ``state_dict`` per batch entry, keys in layout order, tensors in ``source_shape``.

    ``ws`` must have one channel unless ``channel`` selects one. The tensors are copies (they
    keep the autograd graph), ready for ``load_state_dict`` or ``torch.func.functional_call``.
    """
    ws.validate(layout)
    if channel is None:
        if ws.channels != 1:
            raise ValueError(
                f"weight space has {ws.channels} channels; pass channel=... to select one"
            )
        channel = 0
    if not -ws.channels <= channel < ws.channels:
        raise ValueError(f"channel {channel} out of range for {ws.channels} channels")
    state_dicts: list[OrderedDict[str, Tensor]] = []
    values = {spec.name: ws.get(spec) for spec in layout.tensors}
    for batch in range(ws.batch_size):
        entries = write_sources(
            layout,
            layout.tensors,
            {name: value[batch, channel].clone() for name, value in values.items()},
        )
        state_dicts.append(OrderedDict(entries))
    return state_dicts


def to_nfn(ws: WeightSpace) -> WeightSpaceFeatures:
    """The same tensors as an ``nfn.common.WeightSpaceFeatures`` (every layer needs a bias)."""
    try:
        from nfn.common import WeightSpaceFeatures
    except ImportError as error:
        raise ImportError(_NFN_MISSING.format(what="to_nfn")) from error
    missing = [str(layer) for layer, bias in enumerate(ws.biases, start=1) if bias is None]
    if missing:
        raise ValueError(
            f"nfn's WeightSpaceFeatures needs a bias in every layer, but layer(s) "
            f"{', '.join(missing)} have none; add zero biases to use nfn layers"
        )
    return WeightSpaceFeatures(tuple(ws.weights), tuple(ws.biases))


def from_nfn(wsfeat: Any) -> WeightSpace:
    """A :class:`WeightSpace` holding the tensors of an ``nfn.common.WeightSpaceFeatures``."""
    try:
        from nfn.common import WeightSpaceFeatures
    except ImportError as error:
        raise ImportError(_NFN_MISSING.format(what="from_nfn")) from error
    if not isinstance(wsfeat, WeightSpaceFeatures):
        raise TypeError(f"expected nfn.common.WeightSpaceFeatures, got {type(wsfeat).__name__}")
    return WeightSpace(tuple(wsfeat.weights), tuple(wsfeat.biases))
