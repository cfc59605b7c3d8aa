"""What each traced PyTorch operation does to the neuron spaces it touches.

Tables only: which modules, functions and methods are activations (and which activation),
which pass values through unchanged, which pool over spatial positions, which reshape, which
add (tie two spaces) and which scale by a constant. :mod:`derive.frontend.trace` applies them.
"""

from __future__ import annotations

import itertools
import operator
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from nfn_runtime.architectures import Activation

__all__ = [
    "ACTIVATION_MODULES",
    "ACTIVATION_FUNCTIONS",
    "ACTIVATION_METHODS",
    "PASSTHROUGH_MODULES",
    "PASSTHROUGH_FUNCTIONS",
    "PASSTHROUGH_METHODS",
    "POOL_MODULES",
    "POOL_FUNCTIONS",
    "SPATIAL_MODULES",
    "SPATIAL_FUNCTIONS",
    "REDUCE_FUNCTIONS",
    "REDUCE_METHODS",
    "RESHAPE_FUNCTIONS",
    "RESHAPE_METHODS",
    "ADD_FUNCTIONS",
    "ADD_METHODS",
    "SCALE_FUNCTIONS",
    "SCALE_METHODS",
    "DIVIDE_FUNCTIONS",
    "SOFTMAX_FUNCTIONS",
    "SOFTMAX_METHODS",
    "CONV_MODULES",
    "TRANSPOSED_CONV_MODULES",
    "CAT_FUNCTIONS",
    "CLAMP_FUNCTIONS",
    "CLAMP_METHODS",
    "ROUNDING_FUNCTIONS",
    "ROUNDING_METHODS",
    "clamp_activation",
    "is_product",
    "is_stochastic_depth",
    "rounds",
    "NORM_MODULES",
    "PERMUTE_FUNCTIONS",
    "PERMUTE_METHODS",
    "VIEW_METHODS",
    "VIEW_FUNCTIONS",
    "NORM_FUNCTIONS",
    "axis_order",
    "SPLIT_FUNCTIONS",
    "SPLIT_METHODS",
    "split_sizes",
    "is_view",
    "is_shape_query",
    "is_number",
    "reads_parameters",
    "module_activation",
    "function_activation",
    "target_name",
]

#: activation modules -> registry name (nn.Hardtanh is decided by its bounds, see below)
ACTIVATION_MODULES: dict[type[nn.Module], str] = {
    nn.ReLU: "relu",
    nn.LeakyReLU: "leaky_relu",
    nn.Tanh: "tanh",
    nn.Sigmoid: "sigmoid",
    nn.GELU: "gelu",
    nn.SiLU: "silu",
    nn.Softplus: "softplus",
    nn.ELU: "elu",
    nn.SELU: "selu",
    nn.CELU: "celu",
    nn.Mish: "mish",
    nn.ReLU6: "relu6",
    nn.Hardswish: "hardswish",
    nn.Hardsigmoid: "hardsigmoid",
    nn.Softsign: "softsign",
    nn.Tanhshrink: "tanhshrink",
    nn.Softshrink: "softshrink",
    nn.Hardshrink: "hardshrink",
    nn.LogSigmoid: "logsigmoid",
}

ACTIVATION_FUNCTIONS: dict[Callable[..., Any], str] = {
    F.relu: "relu",
    torch.relu: "relu",
    F.relu_: "relu",
    torch.relu_: "relu",
    F.leaky_relu: "leaky_relu",
    torch.tanh: "tanh",
    F.tanh: "tanh",
    torch.sigmoid: "sigmoid",
    F.sigmoid: "sigmoid",
    F.gelu: "gelu",
    F.silu: "silu",
    F.softplus: "softplus",
    F.elu: "elu",
    F.selu: "selu",
    torch.selu: "selu",
    F.celu: "celu",
    F.mish: "mish",
    F.relu6: "relu6",
    F.hardswish: "hardswish",
    F.hardsigmoid: "hardsigmoid",
    F.softsign: "softsign",
    F.tanhshrink: "tanhshrink",
    F.softshrink: "softshrink",
    F.hardshrink: "hardshrink",
    F.logsigmoid: "logsigmoid",
    torch.sin: "sin",
    torch.cos: "cos",
    torch.abs: "abs",
}

ACTIVATION_METHODS: dict[str, str] = {
    "relu": "relu",
    "relu_": "relu",
    "tanh": "tanh",
    "tanh_": "tanh",
    "sigmoid": "sigmoid",
    "sigmoid_": "sigmoid",
    "sin": "sin",
    "sin_": "sin",
    "cos": "cos",
    "abs": "abs",
    "abs_": "abs",
}

#: concatenation (only along the channel axis: a direct sum of the parts' spaces)
CAT_FUNCTIONS: tuple[Callable[..., Any], ...] = (torch.cat, torch.concat, torch.concatenate)

#: clamping: relu for ``min=0`` alone, hardtanh for ``-a..a``, else permutations only
CLAMP_FUNCTIONS: tuple[Callable[..., Any], ...] = (torch.clamp, torch.clip, torch.clamp_min)
CLAMP_METHODS: frozenset[str] = frozenset(
    {"clamp", "clamp_", "clip", "clip_", "clamp_min", "clamp_min_"}
)

#: rounding (floor division, floor, round): elementwise but not linear, permutations only
ROUNDING_FUNCTIONS: tuple[Callable[..., Any], ...] = (
    operator.floordiv,
    operator.ifloordiv,
    torch.floor_divide,
    torch.floor,
    torch.ceil,
    torch.round,
    torch.trunc,
)
ROUNDING_METHODS: frozenset[str] = frozenset(
    {"floor", "ceil", "round", "trunc", "floor_divide", "__floordiv__"}
)

PASSTHROUGH_MODULES: tuple[type[nn.Module], ...] = (
    nn.Identity,
    nn.Dropout,
    nn.Dropout1d,
    nn.Dropout2d,
    nn.Dropout3d,
    nn.AlphaDropout,
    nn.FeatureAlphaDropout,
)
PASSTHROUGH_FUNCTIONS: tuple[Callable[..., Any], ...] = (
    F.dropout,
    F.dropout1d,
    F.dropout2d,
    F.dropout3d,
    F.alpha_dropout,
    F.feature_alpha_dropout,
    torch.clone,
)
PASSTHROUGH_METHODS: frozenset[str] = frozenset(
    {"contiguous", "clone", "float", "double", "to", "detach"}
)

#: pooling modules -> True when they take a maximum (which only positive scaling passes)
POOL_MODULES: dict[type[nn.Module], bool] = {
    nn.AdaptiveAvgPool1d: False,
    nn.AdaptiveAvgPool2d: False,
    nn.AdaptiveAvgPool3d: False,
    nn.AvgPool1d: False,
    nn.AvgPool2d: False,
    nn.AvgPool3d: False,
    nn.AdaptiveMaxPool1d: True,
    nn.AdaptiveMaxPool2d: True,
    nn.AdaptiveMaxPool3d: True,
    nn.MaxPool1d: True,
    nn.MaxPool2d: True,
    nn.MaxPool3d: True,
}
POOL_FUNCTIONS: dict[Callable[..., Any], bool] = {
    F.adaptive_avg_pool1d: False,
    F.adaptive_avg_pool2d: False,
    F.adaptive_avg_pool3d: False,
    F.avg_pool1d: False,
    F.avg_pool2d: False,
    F.avg_pool3d: False,
    F.adaptive_max_pool1d: True,
    F.adaptive_max_pool2d: True,
    F.adaptive_max_pool3d: True,
    F.max_pool1d: True,
    F.max_pool2d: True,
    F.max_pool3d: True,
}
#: per-channel linear maps of the spatial positions (resampling, padding): every scaling passes
SPATIAL_MODULES: tuple[type[nn.Module], ...] = (
    nn.Upsample,
    nn.UpsamplingNearest2d,
    nn.UpsamplingBilinear2d,
    nn.ZeroPad2d,
    nn.ReflectionPad1d,
    nn.ReflectionPad2d,
    nn.ReplicationPad1d,
    nn.ReplicationPad2d,
    nn.CircularPad1d,
    nn.CircularPad2d,
    nn.ConstantPad1d,
    nn.ConstantPad2d,
    nn.ConstantPad3d,
)
SPATIAL_FUNCTIONS: tuple[Callable[..., Any], ...] = (F.interpolate, F.pad)

#: reductions over spatial dims -> True when they take a maximum
REDUCE_FUNCTIONS: dict[Callable[..., Any], bool] = {
    torch.mean: False,
    torch.sum: False,
    torch.amax: True,
}
REDUCE_METHODS: dict[str, bool] = {"mean": False, "sum": False, "amax": True}

RESHAPE_FUNCTIONS: tuple[Callable[..., Any], ...] = (
    torch.flatten,
    torch.reshape,
    torch.squeeze,
    torch.unsqueeze,
)
RESHAPE_METHODS: frozenset[str] = frozenset({"flatten", "view", "reshape", "squeeze", "unsqueeze"})

#: reorderings of the axes (the channel axis is followed through them)
PERMUTE_FUNCTIONS: tuple[Callable[..., Any], ...] = (
    torch.permute,
    torch.transpose,
    torch.swapaxes,
    torch.swapdims,
)
PERMUTE_METHODS: frozenset[str] = frozenset({"permute", "transpose", "swapaxes", "swapdims"})

#: splits of one tensor into several (along the channel axis: parts of the channel spaces)
SPLIT_FUNCTIONS: tuple[Callable[..., Any], ...] = (torch.chunk, torch.split, torch.tensor_split)
SPLIT_METHODS: frozenset[str] = frozenset({"chunk", "split", "tensor_split"})

#: what may be done to a parameter before it meets the activations (reshaping it to broadcast)
VIEW_METHODS: frozenset[str] = frozenset(
    {"view", "reshape", "unsqueeze", "squeeze", "expand", "expand_as", "to", "type_as"}
)
VIEW_FUNCTIONS: tuple[Callable[..., Any], ...] = (
    torch.reshape,
    torch.unsqueeze,
    torch.squeeze,
    operator.getitem,
)

#: normalizations written as function calls on a module's own parameters (timm's norm layers,
#: torchvision's LayerNorm2d): the module owning the parameters decides the rule
NORM_FUNCTIONS: dict[Callable[..., Any], str] = {
    F.batch_norm: "batch_norm",
    F.layer_norm: "layer_norm",
}

ADD_FUNCTIONS: dict[Callable[..., Any], int] = {
    operator.add: 1,
    operator.iadd: 1,
    torch.add: 1,
    operator.sub: -1,
    operator.isub: -1,
    torch.sub: -1,
}
ADD_METHODS: dict[str, int] = {"add": 1, "add_": 1, "sub": -1, "sub_": -1}

#: multiplication or division by a constant number: linear, so every scaling passes
SCALE_FUNCTIONS: tuple[Callable[..., Any], ...] = (
    operator.mul,
    operator.imul,
    operator.truediv,
    operator.itruediv,
    operator.neg,
    torch.mul,
    torch.div,
    torch.neg,
)
SCALE_METHODS: frozenset[str] = frozenset({"mul", "mul_", "div", "div_", "neg"})
#: of the scalings above, those that divide (the activation must be the numerator)
DIVIDE_FUNCTIONS: tuple[Callable[..., Any], ...] = (
    operator.truediv,
    operator.itruediv,
    torch.div,
)

SOFTMAX_FUNCTIONS: tuple[Callable[..., Any], ...] = (
    F.softmax,
    F.log_softmax,
    torch.softmax,
    torch.log_softmax,
)
SOFTMAX_METHODS: frozenset[str] = frozenset({"softmax", "log_softmax"})
SOFTMAX_MODULES: tuple[type[nn.Module], ...] = (nn.Softmax, nn.LogSoftmax)

CONV_MODULES: dict[type[nn.Module], int] = {nn.Conv1d: 1, nn.Conv2d: 2, nn.Conv3d: 3}
#: transposed convolutions: weight (in, out / groups, *kernel)
TRANSPOSED_CONV_MODULES: dict[type[nn.Module], int] = {
    nn.ConvTranspose1d: 1,
    nn.ConvTranspose2d: 2,
    nn.ConvTranspose3d: 3,
}
NORM_MODULES: tuple[type[nn.Module], ...] = (
    nn.BatchNorm1d,
    nn.BatchNorm2d,
    nn.BatchNorm3d,
    nn.LayerNorm,
)


def pad_value(target: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> float:
    """The constant a padding call or module writes (0 for reflect/replicate/circular)."""
    if isinstance(target, (nn.ConstantPad1d, nn.ConstantPad2d, nn.ConstantPad3d)):
        return float(target.value)
    if target is F.pad:
        mode = kwargs.get("mode", args[2] if len(args) > 2 else "constant")
        value = kwargs.get("value", args[3] if len(args) > 3 else None)
        return float(value or 0.0) if mode == "constant" else 0.0
    return 0.0


def clamp_activation(target: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
    """The activation a clamp call computes: ``relu`` (``min=0``), ``hardtanh`` (``-a..a``)
    or ``hardtanh_asymmetric`` (any other bounds: permutations only)."""
    name = target if isinstance(target, str) else getattr(target, "__name__", "")
    low = kwargs.get("min", args[1] if len(args) > 1 else None)
    high = kwargs.get("max", args[2] if len(args) > 2 else None)
    if name.startswith("clamp_min"):
        low, high = kwargs.get("min", args[1] if len(args) > 1 else None), None
    if low == 0 and high is None:
        return "relu"
    if low is not None and high is not None and low == -high:
        return "hardtanh"
    return "hardtanh_asymmetric"


def is_stochastic_depth(target: Any) -> bool:
    """torchvision's ``stochastic_depth`` (the identity in eval mode, how NFNs read networks)."""
    return getattr(target, "__name__", "") == "stochastic_depth" and str(
        getattr(target, "__module__", "")
    ).startswith("torchvision")


def is_product(node: Any) -> bool:
    """Whether an fx node multiplies (``*``, ``torch.mul``, ``Tensor.mul``)."""
    if node.op == "call_method":
        return node.target in ("mul", "mul_")
    return node.op == "call_function" and node.target in (operator.mul, operator.imul, torch.mul)


def axis_order(target: Any, args: tuple[Any, ...], kwargs: dict[str, Any], rank: int) -> list[int]:
    """The new order of the axes of a permute or transpose call on a tensor of ``rank`` axes."""
    name = target if isinstance(target, str) else getattr(target, "__name__", "")
    if name == "permute":
        dims = kwargs.get("dims", args[1:] if len(args) > 2 else args[1] if len(args) > 1 else ())
        order = [int(d) % rank for d in dims]
    else:
        a = kwargs.get("dim0", args[1] if len(args) > 1 else 0)
        b = kwargs.get("dim1", args[2] if len(args) > 2 else 1)
        order = list(range(rank))
        order[int(a) % rank], order[int(b) % rank] = order[int(b) % rank], order[int(a) % rank]
    return order


def is_view(node: Any) -> bool:
    """Whether an fx node reshapes its first argument (how a parameter is made to broadcast)."""
    if node.op == "call_method":
        return node.target in VIEW_METHODS
    return node.op == "call_function" and node.target in VIEW_FUNCTIONS


def reads_parameters(node: Any) -> bool:
    """Whether an fx node may read a parameter together with activations: products, sums,
    concatenations (a class token), ``addcmul`` and functional norms (their rules check the
    shapes)."""
    if is_product(node):
        return True
    if node.op == "call_method":
        return node.target in ADD_METHODS
    return node.op == "call_function" and (
        node.target in ADD_FUNCTIONS
        or node.target in NORM_FUNCTIONS
        or node.target in CAT_FUNCTIONS
        or node.target is torch.addcmul
    )


def split_sizes(
    target: Any, args: tuple[Any, ...], kwargs: dict[str, Any], length: int
) -> tuple[list[int], int]:
    """The piece sizes and the dim of a ``chunk``, ``split`` or ``tensor_split`` call on an
    axis of ``length`` entries."""
    name = target if isinstance(target, str) else getattr(target, "__name__", "")
    how: Any = args[1] if len(args) > 1 else None
    for key in ("chunks", "split_size_or_sections", "split_size", "sections", "indices"):
        how = kwargs.get(key, how)
    dim = int(kwargs.get("dim", args[2] if len(args) > 2 else 0))
    if name == "chunk":
        each = -(-length // int(how))
        sizes = [each] * (length // each) + ([length % each] if length % each else [])
    elif name == "tensor_split" and isinstance(how, int):
        base, extra = divmod(length, how)
        sizes = [base + 1] * extra + [base] * (how - extra)
    elif name == "tensor_split":
        bounds = [0, *(int(i) for i in how), length]
        sizes = [b - a for a, b in itertools.pairwise(bounds)]
    elif isinstance(how, int):
        sizes = [how] * (length // how) + ([length % how] if length % how else [])
    else:
        sizes = [int(n) for n in how]
    return sizes, dim


def is_shape_query(node: Any) -> bool:
    """Whether an fx node only asks for a shape (``x.size()``, ``x.dim()``, ``x.ndim``)."""
    if node.op == "call_method":
        return node.target in ("size", "dim")
    return node.op == "call_function" and node.target is getattr


def is_number(node: Any) -> bool:
    """Whether an fx node computes a number at run time (a scale from ``x.size(-1)``)."""
    return node.meta.get("type") in (int, float) and "tensor_meta" not in node.meta


def rounds(target: Any, kwargs: dict[str, Any]) -> bool:
    """Whether a call rounds its result (floor division, ``div(..., rounding_mode=...)``)."""
    return target in ROUNDING_FUNCTIONS or kwargs.get("rounding_mode") is not None


def module_activation(module: nn.Module) -> str | None:
    """The registry name of an activation module, or None if it is not one."""
    if isinstance(module, Activation):
        return module.name
    if isinstance(module, nn.Hardtanh) and not isinstance(module, nn.ReLU6):
        return "hardtanh" if module.min_val == -module.max_val else "hardtanh_asymmetric"
    return ACTIVATION_MODULES.get(type(module))


def function_activation(target: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> str | None:
    """The registry name of an activation function call, or None if it is not one."""
    if target is F.hardtanh:
        low = kwargs.get("min_val", args[1] if len(args) > 1 else -1.0)
        high = kwargs.get("max_val", args[2] if len(args) > 2 else 1.0)
        return "hardtanh" if low == -high else "hardtanh_asymmetric"
    try:
        return ACTIVATION_FUNCTIONS.get(target)
    except TypeError:  # unhashable target
        return None


def target_name(target: Any) -> str:
    """A readable name for an fx call target: ``torch.flatten``, ``operator.add``, ``F.relu``."""
    if isinstance(target, str):
        return f"Tensor.{target}"
    module = getattr(target, "__module__", None) or ""
    name = getattr(target, "__name__", repr(target))
    if module.startswith("torch.nn.functional"):
        return f"F.{name}"
    if module in ("_operator", "operator"):
        return f"operator.{name}"
    if module.startswith("torch") or module == "":
        return f"torch.{name}"
    return f"{module}.{name}"
