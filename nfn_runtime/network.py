"""The group acting on a real network: its parameters, its buffers, its inputs and outputs.

The ground truth for a derived group (docs/math.md section 2): for every group element ``g``,
``f(pi_in x; g.theta) = pi_out f(x; theta)``, where ``pi_in`` and ``pi_out`` permute the input
and output spaces (the identity in the HNP setting, where those spaces are fixed). Buffers
that the layout lists (BatchNorm running statistics) are transformed with the parameters.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping

import torch
from torch import Tensor, nn

from nfn_runtime.convert import (
    read_source,
    write_sources,
)
from nfn_runtime.group import (
    GroupElement,
    _transform_axis,
    apply_group_element,
    inverse_permutation,
    sample_group_element,
    tensor_moves,
)
from nfn_runtime.layout import WeightSpaceLayout
from nfn_runtime.weight_space import WeightSpace

__all__ = ["network_symmetry_error", "transform_buffers", "transform_network_state"]


def transform_buffers(
    state: Mapping[str, Tensor], layout: WeightSpaceLayout, g: GroupElement
) -> dict[str, Tensor]:
    """``g`` applied to the buffers the layout lists (keys of ``state``; others are left out)."""
    moved: dict[str, Tensor] = {}
    moves = tensor_moves(layout, g)
    for spec in layout.buffers:
        value = read_source(layout, spec, state[spec.source_key or spec.name]).unsqueeze(0)
        for index, axis in enumerate(spec.axes):
            factor = None if axis.character == 0 else g.factor(axis.space, axis.character)
            value = _transform_axis(value, 1 + index, g.permutations[axis.space], factor)
        moved[moves.get(spec.name, spec.name)] = value[0]
    return write_sources(layout, layout.buffers, moved)


def transform_network_state(
    state: Mapping[str, Tensor],
    layout: WeightSpaceLayout,
    transform: GroupElement | Callable[[WeightSpace], WeightSpace],
) -> dict[str, Tensor]:
    """A copy of a network's ``state_dict`` with ``transform`` applied to its weight space.

    A group element also acts on the layout's buffers; any other transform (e.g. one outside
    the group) acts on the parameters only. Keys the layout does not name are kept. Entries the
    transform leaves alone are shared with ``state``, not copied (on a large network each copy
    of the parameters costs a pass over memory).
    """
    theta = WeightSpace.from_named(
        layout,
        {
            spec.name: read_source(layout, spec, state[spec.source_key or spec.name])[None, None]
            for spec in layout.tensors
        },
    )
    if isinstance(transform, GroupElement):
        moved = apply_group_element(theta, layout, transform)
    else:
        moved = transform(theta)
    moved.validate(layout)
    new_state = dict(state)
    values = {spec.name: moved.get(spec)[0, 0] for spec in layout.tensors}
    new_state.update(write_sources(layout, layout.tensors, values))
    if isinstance(transform, GroupElement):
        new_state.update(transform_buffers(state, layout, transform))
    return new_state


def _permute_channels(value: Tensor, size: int, perm: Tensor) -> Tensor:
    """Move entries of the channel axis (axis 1, possibly flattened with positions behind it)."""
    batch = value.shape[0]
    blocks = value.reshape(batch, size, -1)
    return blocks.index_select(1, inverse_permutation(perm)).reshape(value.shape)


def network_symmetry_error(
    model: nn.Module,
    layout: WeightSpaceLayout,
    inputs: Tensor,
    g: GroupElement | Callable[[WeightSpace], WeightSpace] | None = None,
    generator: torch.Generator | None = None,
    scale_range: tuple[float, float] = (1e-2, 1e2),
    input_space: str = "in",
    output_space: str = "out",
    per_sample: bool = False,
    reference: Tensor | None = None,
    move_heads: bool = False,
) -> float:
    """``||pi_out^-1 f(pi_in x; g.theta) - f(x; theta)|| / ||f(x; theta)||`` on ``model``.

    ``g`` is a group element, any transform ``WeightSpace -> WeightSpace`` (e.g. one outside
    the group, which should change the outputs) or ``None`` to sample one. When the layout
    permutes ``input_space`` and ``output_space`` (the NP setting), the inputs are permuted
    along their channel axis and the outputs permuted back. The model runs in eval mode
    through ``torch.func.functional_call``; it is left unchanged (its mode is restored). With
    ``per_sample``, the largest relative change over the inputs, one by one (for inputs of
    very different magnitudes). ``reference`` is ``f(x; theta)`` when the caller has it already
    (a check applying many transforms to one network computes it once). ``move_heads``: a
    sampled element relabels the heads of every attention the layout lists (not the identity).
    """
    state = {key: value.detach() for key, value in model.state_dict().items()}
    if g is None:
        g = sample_group_element(layout, generator, scale_range, move_heads=move_heads)
    new_state = transform_network_state(state, layout, g)
    names = {space.name for space in layout.spaces}
    moved_inputs = inputs
    if isinstance(g, GroupElement) and input_space in names:
        size = layout.space(input_space).size
        moved_inputs = _permute_channels(inputs, size, g.permutations[input_space])
    training = model.training
    model.eval()
    try:
        with torch.no_grad():
            if reference is None:
                reference = model(inputs)
            output = torch.func.functional_call(model, new_state, (moved_inputs,))
    finally:
        model.train(training)
    if isinstance(g, GroupElement) and output_space in names:
        size = layout.space(output_space).size
        perm = g.permutations[output_space]
        output = _permute_channels(output, size, inverse_permutation(perm))
    if per_sample:  # the largest relative change of one input: small inputs count as much
        return max(
            _relative(float((o - r).norm()), float(r.norm())) for o, r in zip(output, reference)
        )
    return _relative(float((output - reference).norm()), float(reference.norm()))


def _relative(difference: float, scale: float) -> float:
    return difference / scale if scale > 0 else (0.0 if difference == 0 else math.inf)
