"""Exact canonicalization of scalings, used by generated invariant layers.

:func:`unit_channels` and ``abs`` canonicalize a whole tensor. An invariant layer only pools the
canonical tensor, so :func:`unit_channel_sum` and :func:`absolute_sum` compute the pooled sums
directly, with hand-written backward passes that allocate one input-sized tensor (the gradient)
where autograd through ``unit_channels(x).sum(dims)`` allocates four to six. The channel norms
are summed channel by channel, never through a squared copy of the input, and a sum over every
axis is one batched matrix-vector product, so ``unit_channel_sum`` then never builds the
normalized tensor either. Both are differentiable twice (their backward passes are plain tensor
operations) and trace under ``torch.compile(fullgraph=True)``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

__all__ = ["unit_channels", "unit_channel_sum", "absolute_sum"]


def unit_channels(x: Tensor) -> Tensor:
    """Divide every entry's channel vector (axis 1) by its Euclidean norm; zero vectors stay zero.

    For any positive ``d``, ``unit_channels(d * x) == unit_channels(x)`` exactly where the norm
    is nonzero (up to rounding), which removes a positive scaling shared by all channels.
    """
    norm = torch.linalg.vector_norm(x, dim=1, keepdim=True)
    safe = torch.where(norm > 0, norm, torch.ones_like(norm))
    return x / safe


def unit_channel_sum(x: Tensor, dims: tuple[int, ...]) -> Tensor:
    """``unit_channels(x).sum(dim=dims)`` with a backward pass that allocates only the gradient.

    ``dims`` are dimensions of ``x`` after the batch and channel dimensions (``>= 2``).
    """
    _check_dims(x, dims)
    result: Tensor = _UnitChannelSum.apply(x, tuple(sorted(dims)))  # type: ignore[no-untyped-call]
    return result


def absolute_sum(x: Tensor, dims: tuple[int, ...]) -> Tensor:
    """``x.abs().sum(dim=dims)`` with a backward pass that allocates only the gradient
    (``dims >= 2``)."""
    _check_dims(x, dims)
    result: Tensor = _AbsoluteSum.apply(x, tuple(sorted(dims)))  # type: ignore[no-untyped-call]
    return result


def _check_dims(x: Tensor, dims: tuple[int, ...]) -> None:
    if not dims or any(not 2 <= d < x.dim() for d in dims) or len(set(dims)) != len(dims):
        raise ValueError(f"dims must be distinct axes >= 2 of a {x.dim()}-d tensor, got {dims}")


def _channel_dot(a: Tensor, b: Tensor) -> Tensor:
    """``(a * b).sum(dim=1, keepdim=True)`` (``a`` may broadcast against ``b``), summed by
    halving in place: the products of half the channels are the only temporary, and there are
    ``2 + log2(channels)`` operations instead of one per channel."""
    channels = b.shape[1]
    half = (channels + 1) // 2
    total = a[:, :half] * b[:, :half]
    total[:, : channels - half].addcmul_(a[:, half:], b[:, half:])
    width = half
    while width > 1:
        half = (width + 1) // 2
        total[:, : width - half] += total[:, half:width]
        width = half
    return total[:, :1]


def _inverse_channel_norm(x: Tensor) -> Tensor:
    """``1 / ||x[:, :, entry]||`` per entry, ``(B, 1, *axes)``; 1 where the norm is zero."""
    squares = _channel_dot(x, x)
    return torch.where(squares > 0, squares, torch.ones_like(squares)).rsqrt()


def _expand_grad(grad: Tensor, x: Tensor, dims: tuple[int, ...]) -> Tensor:
    """The gradient of a sum over ``dims``, as a view broadcastable against ``x``."""
    shape = [1 if d in dims else x.shape[d] for d in range(x.dim())]
    shape[0], shape[1] = grad.shape[0], grad.shape[1]
    return grad.reshape(shape)


def _all_axes(x: Tensor, dims: tuple[int, ...]) -> bool:
    return dims == tuple(range(2, x.dim()))


class _UnitChannelSum(torch.autograd.Function):
    """``sum_dims x * r`` with ``r = 1 / ||x||_channels``; backward
    ``r (g - x r^2 sum_c g x)`` (the Jacobian of the normalization applied to ``g``)."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, dims: tuple[int, ...]) -> Tensor:
        inverse = _inverse_channel_norm(x)
        ctx.save_for_backward(x, inverse)
        ctx.dims = dims
        if _all_axes(x, dims):  # one batched matrix-vector product
            return torch.bmm(x.flatten(2), inverse.flatten(2).transpose(1, 2)).squeeze(-1)
        return (x * inverse).sum(dim=dims)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        x, inverse = ctx.saved_tensors
        if torch.is_grad_enabled():  # double backward: the inverse norm needs its graph
            inverse = _inverse_channel_norm(x)
        g = _expand_grad(grad, x, ctx.dims)
        if _all_axes(x, ctx.dims):  # sum_c g x, (B, 1, *axes)
            along = torch.bmm(grad.unsqueeze(1), x.flatten(2)).view_as(inverse)
        else:
            along = _channel_dot(g, x)
        out = x * (-(inverse**3) * along)
        out.addcmul_(g, inverse)
        return out, None


class _AbsoluteSum(torch.autograd.Function):
    """``sum_dims |x|``; backward ``sgn(x) g``, in the one tensor ``sgn(x)`` (autograd's
    ``abs`` allocates the signs and their product with ``g`` separately)."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, dims: tuple[int, ...]) -> Tensor:
        ctx.save_for_backward(x)
        ctx.dims = dims
        return x.abs().sum(dim=dims)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        (x,) = ctx.saved_tensors
        signs, g = torch.sgn(x), _expand_grad(grad, x, ctx.dims)
        # in place unless a graph of the backward pass is being recorded (double backward)
        return (signs * g if torch.is_grad_enabled() else signs.mul_(g)), None
