"""NFN models built from generated layers, and the baselines they are compared with.

Every model maps a :class:`~nfn_runtime.WeightSpace` with one channel (a batch of networks) to
``(B, outputs)``. Kinds:

- ``hnp`` / ``np``: permutation-only equivariant layers (hidden neurons permuted; NP: input and
  output neurons too), ReLU between layers, the exactly invariant layer, an MLP head;
- ``monomial``: the same with the group the zoo's activation allows (positive scaling for ReLU,
  sign flips for tanh and sin), with nonlinearities that commute with it;
- ``polynomial``: as ``monomial`` with a polynomial first layer: the MAGEP family where the
  weight space is an MLP-like chain (SIRENs), else the complete degree-2 family (conv kernels);
- ``statnn``: mean, variance and five quantiles of every tensor, then an MLP (Unterthiner et
  al.); ``mlp``: an MLP on the flattened weights;
- ``nfn-hnp`` / ``nfn-np``: the ``nfn`` package's ``HNPLinear`` / ``NPLinear`` layers with
  ReLU, its pooling layer and the same head (the external peer).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from typing import Any, Literal

import torch
from torch import Tensor, nn

from derive.basis.magep import chain_of
from derive.errors import GenerationError
from derive.frontend.torch_spec import torch_spec
from derive.pipeline import Derivation, derive, generate
from derive.verify.checklist import layer_class, load_generated
from nfn_runtime import EquivariantNonlinearity, WeightSpace, WeightSpaceLayout, to_nfn
from nfn_tasks.kinds import EQUIVARIANT_KINDS, MODEL_KINDS

__all__ = [
    "MODEL_KINDS",
    "EQUIVARIANT_KINDS",
    "ModelConfig",
    "GeneratedLayers",
    "generated_layers",
    "weight_space_layout",
    "build_model",
    "unavailable_reason",
    "calibrate",
    "count_parameters",
]


@dataclass(frozen=True)
class ModelConfig:
    """Sizes shared by every model kind (so that comparisons are like for like)."""

    channels: int = 16  # channels of the equivariant (or nfn) layers
    layers: int = 2  # equivariant layers
    invariant_dim: int = 32  # output of the invariant / pooling stage
    head_hidden: int = 64  # hidden width of the MLP head (and of the baselines' MLPs)
    polynomial_degree: int = 2  # degree bound of complete-family polynomial layers


@dataclass(frozen=True)
class GeneratedLayers:
    """The generated layer classes for one architecture and group."""

    layout: WeightSpaceLayout
    linear: type[nn.Module]
    invariant: type[nn.Module]
    polynomial: type[nn.Module] | None
    family: str  # polynomial family used ("magep", "complete" or "")


def _group_options(kind: str) -> tuple[str, str]:
    """(permute, scaling) of an equivariant model kind."""
    if kind == "hnp":
        return "hidden", "none"
    if kind == "np":
        return "all", "none"
    return "hidden", "auto"


@cache
def _derivation(architecture: str, input_shape: tuple[int, ...], kind: str) -> Derivation:
    permute, scaling = _group_options(kind)
    return derive(torch_spec(architecture, input_shape, permute, scaling, name="zoo"))


def weight_space_layout(
    architecture: str, input_shape: tuple[int, ...], kind: str = "hnp"
) -> WeightSpaceLayout:
    """The layout of an architecture's weight space under the group of ``kind`` (derived
    without generating any layer code; the tensors are the same for every kind)."""
    return _derivation(architecture, tuple(input_shape), kind).space.to_layout()


@cache
def generated_layers(
    architecture: str, input_shape: tuple[int, ...], kind: str, degree: int = 2
) -> GeneratedLayers:
    """Derive, generate and load the layers of ``kind`` for an architecture (cached)."""
    derivation = _derivation(architecture, tuple(input_shape), kind)

    def load(layer: str, **options: Any) -> type[nn.Module]:
        source = generate(derivation, layer, **options)
        return layer_class(load_generated(source, f"nfn_tasks_{kind}_{layer}".replace("-", "_")))

    polynomial = None
    family = ""
    options: dict[str, Any] = {}
    if kind == "polynomial":
        try:
            chain_of(derivation.space)
            family, options = "magep", {"family": "magep"}
        except GenerationError:
            family, options = "complete", {"family": "complete", "degree": degree}
        polynomial = load("polynomial", **options)
    return GeneratedLayers(
        derivation.space.to_layout(), load("linear"), load("invariant"), polynomial, family
    )


class Standardize(nn.Module):
    """``(x - mean) / std`` per feature, with ``mean`` and ``std`` fixed by :func:`calibrate` on
    the training networks (features that barely vary get a floor on ``std`` of 1e-3 times the
    features' root mean square). The head's input is invariant, so this keeps the model
    exactly invariant; it lets the head see the small variations between networks that share
    most of their weights."""

    mean: Tensor
    std: Tensor

    def __init__(self, features: int) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(features))
        self.register_buffer("std", torch.ones(features))
        self.calibrating = False

    def forward(self, x: Tensor) -> Tensor:
        if self.calibrating:
            floor = 1e-3 * x.pow(2).mean().sqrt().clamp(min=1e-12)
            self.mean.copy_(x.mean(0))
            self.std.copy_(torch.maximum(x.std(0, correction=0), floor))
        return (x - self.mean) / self.std


@torch.no_grad()
def calibrate(model: nn.Module, ws: WeightSpace) -> None:
    """Fix every :class:`Standardize` of ``model`` from one pass over ``ws`` (eval mode)."""
    layers = [m for m in model.modules() if isinstance(m, Standardize)]
    training = model.training
    model.eval()
    for layer in layers:
        layer.calibrating = True
    try:
        model(ws)
    finally:
        for layer in layers:
            layer.calibrating = False
        model.train(training)


def _head(inputs: int, hidden: int, outputs: int) -> nn.Sequential:
    return nn.Sequential(
        Standardize(inputs),
        nn.Linear(inputs, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
        nn.Linear(hidden, outputs),
    )  # fmt: skip


class EquivariantNFN(nn.Module):
    """Equivariant layers with equivariant nonlinearities, the invariant layer, an MLP head."""

    def __init__(
        self, layers: GeneratedLayers, config: ModelConfig, outputs: int, permutation_only: bool
    ) -> None:
        super().__init__()
        self.layout = layers.layout
        channels = config.channels
        blocks: list[nn.Module] = []
        for index in range(config.layers):
            c_in = 1 if index == 0 else channels
            cls = (
                layers.polynomial if index == 0 and layers.polynomial is not None else layers.linear
            )
            blocks.append(cls(c_in, channels))
        self.blocks = nn.ModuleList(blocks)
        kind: Literal["relu", "auto"] = "relu" if permutation_only else "auto"
        self.activations = nn.ModuleList(EquivariantNonlinearity(self.layout, kind) for _ in blocks)
        self.invariant = layers.invariant(channels, config.invariant_dim)
        self.head = _head(config.invariant_dim, config.head_hidden, outputs)

    def forward(self, ws: WeightSpace) -> Tensor:
        for block, activation in zip(self.blocks, self.activations):
            ws = activation(block(ws))
        out: Tensor = self.head(self.invariant(ws))
        return out


class StatNN(nn.Module):
    """Per tensor: mean, variance and the 0, 25, 50, 75, 100% quantiles; then an MLP."""

    QUANTILES = (0.0, 0.25, 0.5, 0.75, 1.0)

    def __init__(self, layout: WeightSpaceLayout, config: ModelConfig, outputs: int) -> None:
        super().__init__()
        self.layout = layout
        features = 7 * len(layout.tensors)
        self.head = _head(features, config.head_hidden, outputs)

    def forward(self, ws: WeightSpace) -> Tensor:
        stats = []
        for tensor in ws.tensors():
            flat = tensor[:, 0].flatten(1)
            q = torch.tensor(self.QUANTILES, dtype=flat.dtype, device=flat.device)
            stats += [flat.mean(1, keepdim=True), flat.var(1, correction=0, keepdim=True)]
            stats.append(torch.quantile(flat, q, dim=1).T)
        out: Tensor = self.head(torch.cat(stats, dim=1))
        return out


class FlatMLP(nn.Module):
    """An MLP on all weights flattened into one vector (no symmetry at all)."""

    def __init__(self, layout: WeightSpaceLayout, config: ModelConfig, outputs: int) -> None:
        super().__init__()
        self.layout = layout
        self.head = _head(layout.num_params(), 2 * config.head_hidden, outputs)

    def forward(self, ws: WeightSpace) -> Tensor:
        out: Tensor = self.head(ws.flatten()[:, 0])
        return out


class NFNPackageModel(nn.Module):
    """The ``nfn`` package's equivariant layers (``HNPLinear`` or ``NPLinear``), ReLU, its
    pooling layer, and the same MLP head as the generated models."""

    def __init__(
        self, layout: WeightSpaceLayout, example: WeightSpace, config: ModelConfig, outputs: int,
        setting: str,
    ) -> None:  # fmt: skip
        super().__init__()
        from nfn.common import network_spec_from_wsfeat
        from nfn.layers import HNPLinear, HNPPool, NPLinear, NPPool, TupleOp

        self.layout = layout
        spec = network_spec_from_wsfeat(to_nfn(example))
        linear, pool = (HNPLinear, HNPPool) if setting == "hnp" else (NPLinear, NPPool)
        layers: list[nn.Module] = []
        for index in range(config.layers):
            layers.append(linear(spec, 1 if index == 0 else config.channels, config.channels))
            layers.append(TupleOp(nn.ReLU()))
        self.layers = nn.Sequential(*layers)
        self.pool = pool(spec)
        pooled = config.channels * pool.get_num_outs(spec)
        self.project = nn.Linear(pooled, config.invariant_dim)
        self.head = _head(config.invariant_dim, config.head_hidden, outputs)

    def forward(self, ws: WeightSpace) -> Tensor:
        features = self.pool(self.layers(to_nfn(ws))).flatten(1)
        out: Tensor = self.head(self.project(features))
        return out


def build_model(
    kind: str,
    architecture: str,
    input_shape: tuple[int, ...],
    example: WeightSpace,
    outputs: int,
    config: ModelConfig | None = None,
) -> nn.Module:
    """A fresh model of ``kind`` for networks of ``architecture`` (``example``: a batch of them,
    used by the ``nfn`` package to read the shapes)."""
    config = config or ModelConfig()
    if kind in EQUIVARIANT_KINDS:
        layers = generated_layers(architecture, tuple(input_shape), kind, config.polynomial_degree)
        return EquivariantNFN(layers, config, outputs, permutation_only=kind in ("hnp", "np"))
    layout = weight_space_layout(architecture, tuple(input_shape))
    if kind == "statnn":
        return StatNN(layout, config, outputs)
    if kind == "mlp":
        return FlatMLP(layout, config, outputs)
    if kind in ("nfn-hnp", "nfn-np"):
        return NFNPackageModel(layout, example, config, outputs, kind.removeprefix("nfn-"))
    raise ValueError(f"unknown model kind {kind!r} (valid: {', '.join(MODEL_KINDS)})")


def _nfn_chain_problem(layout: WeightSpaceLayout) -> str | None:
    """Why the ``nfn`` package cannot read ``layout`` (it takes a chain of layers, each a
    weight ``(out, in, *kernel)`` and a bias ``(out,)``, the input of layer i the output of
    layer i - 1: an MLP or a CNN), or None."""
    previous = "in"
    for layer in range(1, layout.num_layers + 1):
        tensors = [t for t in layout.tensors if t.layer == layer]
        weights = [t for t in tensors if t.kind == "weight"]
        biases = [t for t in tensors if t.kind == "bias"]
        if len(weights) != 1 or len(biases) != 1 or len(tensors) != 2:
            keys = ", ".join(dict.fromkeys(t.source_key or t.name for t in tensors))
            return (
                f"layer {layer} ({keys}) has {len(weights)} weight(s) and {len(biases)} "
                "bias(es), not one each"
            )
        spaces = [axis.space for axis in weights[0].axes[:2]]
        if len(spaces) < 2 or spaces[1] != previous:
            return f"layer {layer} does not read the output of layer {layer - 1}"
        previous = spaces[0]
    return None


def unavailable_reason(
    kind: str, architecture: str, input_shape: tuple[int, ...], config: ModelConfig | None = None
) -> str | None:
    """Why a model of ``kind`` cannot be built for ``architecture`` (the generator refuses its
    layers, or the ``nfn`` package cannot read its weight space), or None when it can."""
    config = config or ModelConfig()
    if kind in EQUIVARIANT_KINDS:
        try:
            generated_layers(architecture, tuple(input_shape), kind, config.polynomial_degree)
        except GenerationError as error:
            if kind != "polynomial":
                return str(error)
            return (
                f"not an MLP-like chain (the MAGEP family), and the complete degree-"
                f"{config.polynomial_degree} family is too large: {error}"
            )
        return None
    if kind in ("nfn-hnp", "nfn-np"):
        problem = _nfn_chain_problem(weight_space_layout(architecture, tuple(input_shape)))
        if problem is not None:
            return (
                f"the nfn package's layers take MLP and CNN weight spaces (a chain of "
                f"weight/bias layers); this one is not: {problem}"
            )
    return None


def count_parameters(model: nn.Module) -> int:
    """Trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
