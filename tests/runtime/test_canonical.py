"""The fused canonical pooling of generated invariant layers: ``unit_channel_sum`` and
``absolute_sum`` equal their unfused definitions in value, gradient and second derivative,
zero channel vectors included."""

from __future__ import annotations

import pytest
import torch

from nfn_runtime import absolute_sum, unit_channel_sum, unit_channels

SHAPES = [
    ((2, 3, 4, 5), (2, 3)),  # a hidden weight pooled whole
    ((2, 3, 4, 5), (2,)),  # W1: rows pooled, the fixed input axis kept
    ((2, 3, 4, 5), (3,)),  # W_L: columns pooled
    ((2, 2, 3, 2, 2, 2), (2, 4, 5)),  # a conv weight: kernel axes pooled too
    ((3, 1, 5), (2,)),  # one channel
]


@pytest.mark.parametrize(("shape", "dims"), SHAPES, ids=str)
def test_unit_channel_sum_is_the_pooled_unit_channels(shape, dims):
    x = torch.randn(shape, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    x[0, :, 0] = 0  # zero channel vectors stay zero, with the gradient of unit_channels
    x.requires_grad_()
    want = unit_channels(x).sum(dim=dims)
    got = unit_channel_sum(x, dims)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    weights = torch.randn_like(want)
    (got_grad,) = torch.autograd.grad(got, x, weights)
    (want_grad,) = torch.autograd.grad(want, x, weights)
    torch.testing.assert_close(got_grad, want_grad, rtol=1e-12, atol=1e-12)
    y = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradgradcheck(lambda t: unit_channel_sum(t, dims), (y,))


@pytest.mark.parametrize(("shape", "dims"), SHAPES, ids=str)
def test_absolute_sum_is_the_pooled_absolute_value(shape, dims):
    y = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    torch.testing.assert_close(absolute_sum(y, dims), y.abs().sum(dim=dims))
    assert torch.autograd.gradcheck(lambda t: absolute_sum(t, dims), (y,))
    assert torch.autograd.gradgradcheck(lambda t: absolute_sum(t, dims), (y,))


@pytest.mark.parametrize("dims", [(), (1,), (4,), (2, 2)])
def test_bad_dims_are_refused(dims):
    with pytest.raises(ValueError, match="dims must be"):
        unit_channel_sum(torch.ones(2, 3, 4, 5), dims)
