"""Numeric checks of a layer sized to the run's memory budget (``verify --memory``).

The equivariance, invariance and sensitivity checks (docs/math.md 6.2, 6.3) hold several
copies of the weight space at once: an input, a transformed input, outputs. On a full-size
network the usual setting (batch 2, 2 -> 3 channels, float64) needs tens of GB: VGG-11 has
133 million entries, 1.07 GB per float64 channel. The functions here compute the same errors
holding as few copies as they can (an input is drawn again from its generator state instead of
being kept), :func:`group_bytes` and :func:`sensitivity_bytes` estimate what a setting needs,
and :func:`choose_setting` picks the first setting that fits: the usual one, then batch 1, then
fewer channels. A check run on a smaller setting says so in its line; bounds never change.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from nfn_runtime import apply_group_element, random_weight_space, sample_group_element
from nfn_runtime.layout import WeightSpaceLayout
from nfn_runtime.weight_space import WeightSpace

__all__ = [
    "Setting",
    "FULL",
    "SETTINGS",
    "TRANSIENT",
    "TRANSIENT_INVARIANT",
    "group_bytes",
    "sensitivity_bytes",
    "agreement_bytes",
    "choose_setting",
    "with_channels",
    "group_error",
    "sensitivity_errors",
    "relative_error",
]


@dataclass(frozen=True)
class Setting:
    """How many weight spaces (``batch``) and channels a numeric check runs on."""

    batch: int
    c_in: int
    c_out: int

    def text(self) -> str:
        return f"batch {self.batch}, {self.c_in} -> {self.c_out} channels"


#: the usual setting of the layer checks (docs/math.md 6.2)
FULL = Setting(2, 2, 3)
#: settings tried in order when the usual one does not fit the memory budget
SETTINGS = (FULL, Setting(1, 2, 3), Setting(1, 1, 2), Setting(1, 1, 1))

#: what a layer's forward pass allocates besides its input and output, in copies of one
#: channel of the weight space per channel: per input and output channel for a layer returning
#: a weight space (measured on VGG-11 at 224 x 224: 0 for the generated linear layer at
#: 1 -> 1 channels in float64, 0.3 at 2 -> 3 in float32), per input channel for an invariant
#: layer, which canonicalizes every tensor first (measured: 2.4)
TRANSIENT = 0.5
TRANSIENT_INVARIANT = 3.0


def _forward(setting: Setting, invariant: bool) -> float:
    """A forward pass's transient allocations, in channels of the weight space."""
    if invariant:
        return TRANSIENT_INVARIANT * setting.c_in
    return TRANSIENT * (setting.c_in + setting.c_out)


def _unit(layout: WeightSpaceLayout, batch: int, dtype: torch.dtype) -> int:
    """Bytes of one channel of ``batch`` weight spaces."""
    return layout.num_params() * batch * torch.empty((), dtype=dtype).element_size()


def group_bytes(
    layout: WeightSpaceLayout, setting: Setting, dtype: torch.dtype, invariant: bool
) -> int:
    """What :func:`group_error` holds at its peak: the input, the pulled-back output and the
    output of the input (none for an invariant layer's vector), and the forward pass."""
    unit = _unit(layout, setting.batch, dtype)
    outputs = 0 if invariant else 2 * setting.c_out
    return int(unit * (setting.c_in + outputs + _forward(setting, invariant)))


def sensitivity_bytes(layout: WeightSpaceLayout, setting: Setting, invariant: bool) -> int:
    """What one sensitivity evaluation holds at its peak (float64): the input and its
    transform, the output of each and the transformed output, and the forward pass."""
    unit = _unit(layout, setting.batch, torch.float64)
    outputs = 0 if invariant else 3 * setting.c_out
    return int(unit * (2 * setting.c_in + outputs + _forward(setting, invariant)))


def agreement_bytes(layout: WeightSpaceLayout, setting: Setting) -> int:
    """What comparing a layer with its reference one output tensor at a time holds at its peak
    (float64): the layer's forward pass, then the input, the layer's output and the largest
    output tensor of the reference with two einsum results being added to it."""
    unit = _unit(layout, setting.batch, torch.float64)
    largest = max(math.prod(layout.shape(t)) for t in layout.tensors)
    forward = unit * (setting.c_in + setting.c_out + _forward(setting, False))
    tensor = 3 * largest * setting.batch * setting.c_out * 8
    return int(max(forward, unit * (setting.c_in + setting.c_out) + tensor))


def choose_setting(
    settings: Sequence[Setting], need: Callable[[Setting], int], fits: Callable[[int], bool]
) -> Setting | None:
    """The first of ``settings`` whose estimated ``need`` ``fits``; None if none does."""
    return next((s for s in settings if fits(need(s))), None)


def with_channels(layer: nn.Module, c_in: int, c_out: int) -> nn.Module:
    """``layer`` at ``c_in -> c_out`` channels, freshly initialized, in its dtype.

    A reference layer builds its variant with ``with_channels``; a generated layer's
    constructor takes ``(in_channels, out_channels)``."""
    if (getattr(layer, "in_channels", None), getattr(layer, "out_channels", None)) == (c_in, c_out):
        return layer
    build = getattr(layer, "with_channels", None)
    made: nn.Module = build(c_in, c_out) if callable(build) else type(layer)(c_in, c_out)
    dtype = next((p.dtype for p in layer.parameters()), torch.float32)
    return made.to(dtype)


def relative_error(
    got: WeightSpace | Tensor, want: WeightSpace | Tensor, scale: WeightSpace | Tensor | None = None
) -> float:
    """``max ||got - want|| / ||scale||`` over the output tensors (``scale`` defaults to
    ``want``; a layer returning one tensor compares that tensor)."""
    reference = want if scale is None else scale
    if isinstance(got, Tensor):
        triples: list[tuple[object, object, object]] = [(got, want, reference)]
    else:
        assert isinstance(want, WeightSpace) and isinstance(reference, WeightSpace)
        triples = list(zip(got.tensors(), want.tensors(), reference.tensors()))
    worst = 0.0
    for a, b, r in triples:
        assert isinstance(a, Tensor) and isinstance(b, Tensor) and isinstance(r, Tensor)
        difference = float(torch.linalg.vector_norm((a - b).double()))
        norm = float(torch.linalg.vector_norm(r.double()))
        error = difference / norm if norm > 0 else (0.0 if difference == 0 else float("inf"))
        worst = max(worst, error)
    return worst


def group_error(
    layer: Callable[[WeightSpace], WeightSpace | Tensor],
    layout: WeightSpaceLayout,
    samples: int,
    setting: Setting,
    dtype: torch.dtype,
    generator: torch.Generator,
    invariant: bool,
    scale_range: tuple[float, float] = (1e-2, 1e2),
) -> float:
    """Max over ``samples`` group elements of ``||g^-1 . f(g . x) - f(x)|| / ||f(x)||``
    (``||f(g . x) - f(x)|| / ||f(x)||`` when ``invariant``), per output tensor.

    The same draws as :func:`nfn_runtime.equivariance_error` (x, then g, per sample), so the
    errors are the same; but ``x`` is not kept while ``f(g . x)`` is computed: it is drawn
    again from the generator's state, which bounds the peak by :func:`group_bytes`."""
    worst = 0.0
    with torch.no_grad():
        for sample in range(samples):
            state = generator.get_state()
            x = random_weight_space(layout, setting.batch, setting.c_in, dtype, generator)
            g = sample_group_element(layout, generator, scale_range, move_heads=sample == 0)
            moved = apply_group_element(x, layout, g)
            del x
            out = layer(moved)
            del moved
            if isinstance(out, WeightSpace) and not invariant:
                out = apply_group_element(out, layout, g.inverse())
            after = generator.get_state()
            generator.set_state(state)
            x = random_weight_space(layout, setting.batch, setting.c_in, dtype, generator)
            generator.set_state(after)
            want = layer(x)
            del x
            worst = max(worst, relative_error(out, want))
            del out, want
    return worst


def sensitivity_errors(
    layer: Callable[[WeightSpace], WeightSpace | Tensor],
    layout: WeightSpaceLayout,
    transforms: Sequence[Callable[[WeightSpace], WeightSpace]],
    x: WeightSpace,
) -> list[float]:
    """``||f(h . x) - h . f(x)|| / ||f(x)||`` for each transform ``h`` (``||f(h . x) - f(x)||
    / ||f(x)||`` for a layer returning a tensor), as :func:`nfn_runtime.sensitivity_error`,
    on one input ``x``: ``f(x)`` is computed once for all transforms."""
    errors = []
    with torch.no_grad():
        y = layer(x)
        for transform in transforms:
            moved = layer(transform(x))
            want = transform(y) if isinstance(y, WeightSpace) else y
            errors.append(relative_error(moved, want, y))
            del moved, want
    return errors
