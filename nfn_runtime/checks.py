"""Input validation for generated layers: shapes checked against the layout, tensors unpacked."""

from __future__ import annotations

from torch import Tensor

from nfn_runtime.layout import WeightSpaceLayout
from nfn_runtime.weight_space import WeightSpace

__all__ = ["unpack_weight_space"]


def unpack_weight_space(
    ws: WeightSpace, layout: WeightSpaceLayout, channels: int
) -> tuple[Tensor, ...]:
    """The tensors of ``ws`` in layout order, after checking every shape.

    Raises ValueError naming the first tensor whose shape does not match
    ``(batch, channels, *layout shape)``.
    """
    if not isinstance(ws, WeightSpace):
        raise TypeError(f"expected an nfn_runtime.WeightSpace, got {type(ws).__name__}")
    if len(ws) != layout.num_layers:
        raise ValueError(f"expected {layout.num_layers} layers, got {len(ws)}")
    batch = ws.weights[0].shape[0]
    tensors = []
    for spec in layout.tensors:
        slot = ws.weights if spec.kind == "weight" else ws.biases
        tensor = slot[spec.layer - 1]
        expected = (batch, channels, *layout.shape(spec))
        if tensor is None:
            raise ValueError(f"tensor {spec.name} is missing (expected shape {expected})")
        if tuple(tensor.shape) != expected:
            raise ValueError(
                f"tensor {spec.name} has shape {tuple(tensor.shape)}, expected {expected} "
                "(batch, channels, *axes)"
            )
        tensors.append(tensor)
    return tuple(tensors)
