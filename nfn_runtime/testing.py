"""Numerical checks for layers on weight spaces, usable on any user layer.

Modelled on e3nn's ``assert_equivariant``: a *layer* is any callable ``WeightSpace ->
WeightSpace`` (equivariant) or ``WeightSpace -> Tensor`` (invariant). Inputs are cast to the
requested dtype; an ``nn.Module`` is deep-copied and cast with ``.to(dtype)``, so the caller's
module is never modified. Errors are relative, measured per output tensor and maximised:

- equivariance: ``||g^{-1}.f(g.x) - f(x)|| / ||f(x)||`` (compared in the untransformed frame,
  which stays well conditioned under scales up to 1e4);
- invariance: ``||f(g.x) - f(x)|| / ||f(x)||``;
- sensitivity to a transform ``h`` outside the group: ``||f(h.x) - h.f(x)|| / ||f(x)||``.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import TypeVar

import torch
from torch import Tensor, nn

from nfn_runtime.group import apply_group_element, sample_group_element
from nfn_runtime.layout import WeightSpaceLayout
from nfn_runtime.weight_space import WeightSpace

__all__ = [
    "EquivariantLayer",
    "InvariantLayer",
    "assert_equivariant",
    "assert_invariant",
    "assert_sensitive",
    "default_tolerances",
    "equivariance_error",
    "invariance_error",
    "random_weight_space",
    "sensitivity_error",
]

EquivariantLayer = Callable[[WeightSpace], WeightSpace]
InvariantLayer = Callable[[WeightSpace], Tensor]
_Layer = TypeVar("_Layer", bound=Callable[[WeightSpace], object])

_TOLERANCES: dict[torch.dtype, tuple[float, float]] = {
    torch.float64: (1e-10, 1e-12),
    torch.float32: (1e-4, 1e-7),
    torch.float16: (1e-2, 1e-4),
    torch.bfloat16: (3e-2, 1e-3),
}


def default_tolerances(dtype: torch.dtype) -> tuple[float, float]:
    """``(rtol, atol)`` used by the assertions for ``dtype``: a check passes per tensor when
    ``||difference|| <= atol + rtol * ||f(x)||``."""
    if dtype not in _TOLERANCES:
        raise ValueError(f"no default tolerances for {dtype}; pass rtol and atol")
    return _TOLERANCES[dtype]


def random_weight_space(
    layout: WeightSpaceLayout,
    batch: int = 2,
    channels: int = 3,
    dtype: torch.dtype = torch.float64,
    generator: torch.Generator | None = None,
) -> WeightSpace:
    """Standard normal features of shape ``(batch, channels, *axis shape)`` for every tensor."""
    tensors = {
        spec.name: torch.randn(
            (batch, channels, *layout.shape(spec)), generator=generator, dtype=dtype
        )
        for spec in layout.tensors
    }
    return WeightSpace.from_named(layout, tensors)


def _channels(layer: object, channels: int | None) -> int:
    """The input channel count: as given, else the layer's ``in_channels``, else 3."""
    if channels is not None:
        return channels
    declared = getattr(layer, "in_channels", None)
    return declared if isinstance(declared, int) else 3


def _cast_layer(layer: _Layer, dtype: torch.dtype) -> _Layer:
    if isinstance(layer, nn.Module):
        return copy.deepcopy(layer).to(dtype)
    return layer


def _relative(
    difference: Tensor, reference: Tensor, rtol: float, atol: float
) -> tuple[float, bool]:
    """Relative error ``||difference|| / ||reference||`` and whether it is within tolerance."""
    diff = float(torch.linalg.vector_norm(difference.double()))
    ref = float(torch.linalg.vector_norm(reference.double()))
    relative = diff / ref if ref > 0 else (0.0 if diff == 0 else float("inf"))
    return relative, diff <= atol + rtol * ref


class _Worst:
    """The largest relative error seen, where it was, and whether every check passed."""

    def __init__(self, rtol: float = 0.0, atol: float = 0.0) -> None:
        self.rtol, self.atol = rtol, atol
        self.error, self.where, self.passed = 0.0, "", True

    def update(self, difference: Tensor, reference: Tensor, where: str) -> None:
        relative, ok = _relative(difference, reference, self.rtol, self.atol)
        self.passed = self.passed and ok
        if relative > self.error or not self.where:
            self.error, self.where = relative, where

    def compare(
        self,
        got: WeightSpace,
        want: WeightSpace,
        reference: WeightSpace,
        layout: WeightSpaceLayout,
        sample: int,
    ) -> None:
        """Per tensor of ``layout``: ``||got - want|| / ||reference||``."""
        got.validate(layout)
        for spec in layout.tensors:
            self.update(
                got.get(spec) - want.get(spec),
                reference.get(spec),
                f"tensor {spec.name!r}, sample {sample}",
            )


def _equivariance(
    layer: EquivariantLayer,
    layout: WeightSpaceLayout,
    worst: _Worst,
    n_samples: int,
    batch: int,
    channels: int | None,
    dtype: torch.dtype,
    generator: torch.Generator | None,
    scale_range: tuple[float, float],
    out_layout: WeightSpaceLayout | None,
) -> None:
    layer = _cast_layer(layer, dtype)
    target = out_layout or layout
    with torch.no_grad():
        for sample in range(n_samples):
            x = random_weight_space(layout, batch, _channels(layer, channels), dtype, generator)
            g = sample_group_element(layout, generator, scale_range, move_heads=sample == 0)
            y = layer(x)
            pulled_back = apply_group_element(
                layer(apply_group_element(x, layout, g)), target, g.inverse()
            )
            worst.compare(pulled_back, y, y, target, sample)


def equivariance_error(
    layer: EquivariantLayer,
    layout: WeightSpaceLayout,
    n_samples: int = 3,
    batch: int = 2,
    channels: int | None = None,
    dtype: torch.dtype = torch.float64,
    generator: torch.Generator | None = None,
    scale_range: tuple[float, float] = (1e-2, 1e2),
    out_layout: WeightSpaceLayout | None = None,
) -> float:
    """Max over samples and output tensors of ``||g^{-1}.f(g.x) - f(x)|| / ||f(x)||``.

    ``out_layout`` describes the output when its tensors differ from the input's (same space
    names); channel counts may differ freely.
    """
    worst = _Worst()
    _equivariance(
        layer, layout, worst, n_samples, batch, channels, dtype, generator, scale_range, out_layout
    )
    return worst.error


def _invariance(
    layer: InvariantLayer,
    layout: WeightSpaceLayout,
    worst: _Worst,
    n_samples: int,
    batch: int,
    channels: int | None,
    dtype: torch.dtype,
    generator: torch.Generator | None,
    scale_range: tuple[float, float],
) -> None:
    layer = _cast_layer(layer, dtype)
    with torch.no_grad():
        for sample in range(n_samples):
            x = random_weight_space(layout, batch, _channels(layer, channels), dtype, generator)
            g = sample_group_element(layout, generator, scale_range, move_heads=sample == 0)
            y = layer(x)
            worst.update(layer(apply_group_element(x, layout, g)) - y, y, f"sample {sample}")


def invariance_error(
    layer: InvariantLayer,
    layout: WeightSpaceLayout,
    n_samples: int = 3,
    batch: int = 2,
    channels: int | None = None,
    dtype: torch.dtype = torch.float64,
    generator: torch.Generator | None = None,
    scale_range: tuple[float, float] = (1e-2, 1e2),
) -> float:
    """Max over samples of ``||f(g.x) - f(x)|| / ||f(x)||`` for a layer returning a tensor."""
    worst = _Worst()
    _invariance(layer, layout, worst, n_samples, batch, channels, dtype, generator, scale_range)
    return worst.error


def _tolerances(dtype: torch.dtype, rtol: float | None, atol: float | None) -> tuple[float, float]:
    if rtol is not None and atol is not None:
        return rtol, atol
    default_rtol, default_atol = default_tolerances(dtype)
    return (default_rtol if rtol is None else rtol), (default_atol if atol is None else atol)


def assert_equivariant(
    layer: EquivariantLayer,
    layout: WeightSpaceLayout,
    dtype: torch.dtype = torch.float64,
    rtol: float | None = None,
    atol: float | None = None,
    n_samples: int = 3,
    batch: int = 2,
    channels: int | None = None,
    generator: torch.Generator | None = None,
    scale_range: tuple[float, float] = (1e-2, 1e2),
    out_layout: WeightSpaceLayout | None = None,
) -> float:
    """Raise ``AssertionError`` unless ``layer`` is equivariant; return the relative error.

    Passes when every output tensor satisfies ``||g^{-1}.f(g.x) - f(x)|| <= atol + rtol *
    ||f(x)||``; defaults from :func:`default_tolerances` (1e-10 relative for float64).
    """
    rtol, atol = _tolerances(dtype, rtol, atol)
    worst = _Worst(rtol, atol)
    _equivariance(
        layer, layout, worst, n_samples, batch, channels, dtype, generator, scale_range, out_layout
    )
    if not worst.passed:
        raise AssertionError(
            f"layer is not equivariant in {dtype}: relative error {worst.error:.3e} "
            f"({worst.where}) exceeds rtol={rtol:g}, atol={atol:g}"
        )
    return worst.error


def assert_invariant(
    layer: InvariantLayer,
    layout: WeightSpaceLayout,
    dtype: torch.dtype = torch.float64,
    rtol: float | None = None,
    atol: float | None = None,
    n_samples: int = 3,
    batch: int = 2,
    channels: int | None = None,
    generator: torch.Generator | None = None,
    scale_range: tuple[float, float] = (1e-2, 1e2),
) -> float:
    """Raise ``AssertionError`` unless ``layer`` is invariant; return the relative error."""
    rtol, atol = _tolerances(dtype, rtol, atol)
    worst = _Worst(rtol, atol)
    _invariance(layer, layout, worst, n_samples, batch, channels, dtype, generator, scale_range)
    if not worst.passed:
        raise AssertionError(
            f"layer is not invariant in {dtype}: relative error {worst.error:.3e} "
            f"({worst.where}) exceeds rtol={rtol:g}, atol={atol:g}"
        )
    return worst.error


def sensitivity_error(
    layer: Callable[[WeightSpace], WeightSpace | Tensor],
    layout: WeightSpaceLayout,
    transform: Callable[[WeightSpace], WeightSpace],
    n_samples: int = 1,
    batch: int = 2,
    channels: int | None = None,
    dtype: torch.dtype = torch.float64,
    generator: torch.Generator | None = None,
) -> float:
    """How far ``layer`` is from commuting with ``transform`` (a map outside the group).

    ``||f(h.x) - h.f(x)|| / ||f(x)||`` maximised over samples and output tensors; for a layer
    returning a tensor, ``||f(h.x) - f(x)|| / ||f(x)||``. A correct, not over-constrained layer
    gives a clearly nonzero value. ``transform`` must accept any channel count.
    """
    layer = _cast_layer(layer, dtype)
    worst = _Worst()
    with torch.no_grad():
        for sample in range(n_samples):
            x = random_weight_space(layout, batch, _channels(layer, channels), dtype, generator)
            y = layer(x)
            moved = layer(transform(x))
            if isinstance(y, Tensor) and isinstance(moved, Tensor):
                worst.update(moved - y, y, f"sample {sample}")
            elif isinstance(y, WeightSpace) and isinstance(moved, WeightSpace):
                worst.compare(moved, transform(y), y, layout, sample)
            else:
                raise TypeError(
                    f"layer must return a WeightSpace or a Tensor, got {type(y).__name__}"
                )
    return worst.error


def assert_sensitive(
    layer: Callable[[WeightSpace], WeightSpace | Tensor],
    layout: WeightSpaceLayout,
    transform: Callable[[WeightSpace], WeightSpace],
    min_error: float = 1e-6,
    n_samples: int = 1,
    batch: int = 2,
    channels: int | None = None,
    dtype: torch.dtype = torch.float64,
    generator: torch.Generator | None = None,
) -> float:
    """Raise ``AssertionError`` if ``layer`` commutes with ``transform`` (error at most
    ``min_error``); return the error of :func:`sensitivity_error`."""
    error = sensitivity_error(
        layer, layout, transform, n_samples, batch, channels, dtype, generator
    )
    if not error > min_error:
        raise AssertionError(
            f"layer commutes with {transform!r} (relative error {error:.3e} <= {min_error:g}): "
            "it is equivariant under a transform outside the group, so it is over-constrained"
        )
    return error
