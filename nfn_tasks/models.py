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
  ReLU, its pooling layer and the same head (the external peer);
- ``canon-hnp`` / ``canon-statnn``: ``hnp`` / ``statnn`` (the heads' corresponding tensors
  pooled together) on the canonical point of each network's orbit under the scalings
  (:mod:`nfn_runtime.canonical_scales`): exactly invariant under the whole derived group.

With probe features (:mod:`nfn_tasks.probes`: the INR task, the CNN and transformer zoos),
every model that can take them does: the equivariant ones (generated and ``nfn-hnp``) add a
linear map of each probed bias's activations to that bias's channels after their first layer,
``statnn`` appends the same seven statistics of each probed bias's activations, ``mlp``
appends them flattened. ``np`` and ``nfn-np`` do not: their group also permutes the input
neurons, which moves the activations at fixed probe inputs in a way no permutation of the
features follows.
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
from nfn_runtime.canonical_scales import canonical_order, canonical_scales
from nfn_tasks.kinds import CANONICAL_KINDS, EQUIVARIANT_KINDS, MODEL_KINDS
from nfn_tasks.probes import ProbeFeatures

__all__ = [
    "MODEL_KINDS",
    "CANONICAL_KINDS",
    "PROBELESS_KINDS",
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


#: kinds whose group also permutes the input neurons, so probe features cannot feed them
PROBELESS_KINDS = ("np", "nfn-np")


@dataclass(frozen=True)
class ModelConfig:
    """Sizes shared by every model kind (so that comparisons are like for like)."""

    channels: int = 16  # channels of the equivariant (or nfn) layers
    layers: int = 2  # equivariant layers
    invariant_dim: int = 32  # output of the invariant / pooling stage
    head_hidden: int = 64  # hidden width of the MLP head (and of the baselines' MLPs)
    polynomial_degree: int = 2  # degree bound of complete-family polynomial layers
    probe_grid: int = 0  # side of the grid of probe inputs on the INR task (0: no probes)
    probe_images: int = 0  # probe digits per class on the CNN and transformer zoos (0: none)


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
    # tracing builds the architecture, which draws its initialization from the global random
    # state: keep that state untouched, so a model's initialization depends on its seed only
    # and not on whether its layers were derived before (cached) or inside build_model
    with torch.random.fork_rng():
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
    layers: list[Standardize | ProbeFeatures] = [
        m for m in model.modules() if isinstance(m, (Standardize, ProbeFeatures))
    ]
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


class ProbeInput(nn.Module):
    """Each probe target's features mapped over the probe axis (no constant term) to
    ``channels``, shaped like its bias: ``(B, channels, n)`` per target; corresponding biases of
    the heads of an attention share one map (so relabelling the heads commutes with it)."""

    def __init__(self, probes: ProbeFeatures, channels: int) -> None:
        super().__init__()
        self.probes = probes
        self.maps = nn.ModuleList(
            nn.Linear(probes.count, channels, bias=False) for _ in range(probes.groups)
        )

    def forward(self, ws: WeightSpace) -> list[Tensor]:
        features = self.probes(ws)
        return [self.maps[g](f).transpose(1, 2) for g, f in zip(self.probes.ties, features)]


class EquivariantNFN(nn.Module):
    """Equivariant layers with equivariant nonlinearities, the invariant layer, an MLP head
    (with ``probes``, their features are added to the hidden biases after the first layer)."""

    def __init__(
        self,
        layers: GeneratedLayers,
        config: ModelConfig,
        outputs: int,
        permutation_only: bool,
        probes: ProbeFeatures | None = None,
    ) -> None:
        super().__init__()
        self.layout = layers.layout
        self.probe_input = ProbeInput(probes, config.channels) if probes is not None else None
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
        probe = self.probe_input(ws) if self.probe_input is not None else None
        for index, (block, activation) in enumerate(zip(self.blocks, self.activations)):
            ws = block(ws)
            if index == 0 and probe is not None:
                ws = self._add_to_biases(ws, probe)
            ws = activation(ws)
        out: Tensor = self.head(self.invariant(ws))
        return out

    def _add_to_biases(self, ws: WeightSpace, probe: list[Tensor]) -> WeightSpace:
        assert self.probe_input is not None
        named = ws.named(self.layout)
        for bias, value in zip(self.probe_input.probes.biases, probe):
            named[bias] = named[bias] + value
        return WeightSpace.from_named(self.layout, named)


def _flat_probes(probes: ProbeFeatures | None, ws: WeightSpace) -> list[Tensor]:
    """Each hidden space's probe features flattened to ``(B, n * P)`` (none without probes)."""
    return [] if probes is None else [f.flatten(1) for f in probes(ws)]


class StatNN(nn.Module):
    """Per tensor (and per probed bias's features): mean, variance and the 0, 25, 50, 75, 100%
    quantiles; then an MLP. With ``merge_heads``, the corresponding tensors (and probe
    features) of the heads of an attention form one set, so that relabelling the heads leaves
    the statistics unchanged."""

    QUANTILES = (0.0, 0.25, 0.5, 0.75, 1.0)

    def __init__(
        self,
        layout: WeightSpaceLayout,
        config: ModelConfig,
        outputs: int,
        probes: ProbeFeatures | None = None,
        merge_heads: bool = False,
    ) -> None:
        super().__init__()
        self.layout = layout
        self.probes = probes
        self.sets = _statistic_sets(layout, probes, merge_heads)
        self.head = _head(7 * len(self.sets), config.head_hidden, outputs)

    def forward(self, ws: WeightSpace) -> Tensor:
        values = [tensor[:, 0].flatten(1) for tensor in ws.tensors()]
        values += _flat_probes(self.probes, ws)
        if len(values) != sum(map(len, self.sets)):
            raise ValueError(f"{len(values)} tensors and probe features, expected the layout's")
        stats = []
        for members in self.sets:
            flat = values[members[0]] if len(members) == 1 else torch.cat(
                [values[i] for i in members], dim=1
            )  # fmt: skip
            q = torch.tensor(self.QUANTILES, dtype=flat.dtype, device=flat.device)
            stats += [flat.mean(1, keepdim=True), flat.var(1, correction=0, keepdim=True)]
            stats.append(torch.quantile(flat, q, dim=1).T)
        out: Tensor = self.head(torch.cat(stats, dim=1))
        return out


def _statistic_sets(
    layout: WeightSpaceLayout, probes: ProbeFeatures | None, merge_heads: bool
) -> list[list[int]]:
    """The sets StatNN summarizes, as indices into its values (the tensors in the order of
    ``WeightSpace.tensors``, then the probe features): one each, or with ``merge_heads`` entry
    ``k`` of every head of an attention together (and the probe features of one tie group)."""
    tensors = sorted(  # W1, b1, W2, b2, ... as WeightSpace.tensors gives them
        layout.tensors, key=lambda t: (t.layer, t.kind != "weight")
    )
    keys: list[object] = [
        (merge_heads and layout.head_entry(t.name)) or ("tensor", t.name) for t in tensors
    ]
    if probes is not None:
        keys += [("probe", g if merge_heads else i) for i, g in enumerate(probes.ties)]
    order = list(dict.fromkeys(keys))
    return [[i for i, key in enumerate(keys) if key == wanted] for wanted in order]


class FlatMLP(nn.Module):
    """An MLP on all weights flattened into one vector (no symmetry at all), and on the probe
    features flattened."""

    def __init__(
        self,
        layout: WeightSpaceLayout,
        config: ModelConfig,
        outputs: int,
        probes: ProbeFeatures | None = None,
    ) -> None:
        super().__init__()
        self.layout = layout
        self.probes = probes
        inputs = layout.num_params()
        if probes is not None:
            inputs += probes.count * sum(layout.space(s).size for s in probes.spaces)
        self.head = _head(inputs, 2 * config.head_hidden, outputs)

    def forward(self, ws: WeightSpace) -> Tensor:
        parts = [ws.flatten()[:, 0], *_flat_probes(self.probes, ws)]
        out: Tensor = self.head(torch.cat(parts, dim=1))
        return out


class NFNPackageModel(nn.Module):
    """The ``nfn`` package's equivariant layers (``HNPLinear`` or ``NPLinear``), ReLU, its
    pooling layer, and the same MLP head as the generated models."""

    def __init__(
        self, layout: WeightSpaceLayout, example: WeightSpace, config: ModelConfig, outputs: int,
        setting: str, probes: ProbeFeatures | None = None,
    ) -> None:  # fmt: skip
        super().__init__()
        from nfn.common import network_spec_from_wsfeat
        from nfn.layers import HNPLinear, HNPPool, NPLinear, NPPool, TupleOp

        self.layout = layout
        spec = network_spec_from_wsfeat(to_nfn(example))
        linear, pool = (HNPLinear, HNPPool) if setting == "hnp" else (NPLinear, NPPool)
        self.first = linear(spec, 1, config.channels)
        self.probe_input = ProbeInput(probes, config.channels) if probes is not None else None
        layers: list[nn.Module] = [TupleOp(nn.ReLU())]
        for _ in range(1, config.layers):
            layers.append(linear(spec, config.channels, config.channels))
            layers.append(TupleOp(nn.ReLU()))
        self.layers = nn.Sequential(*layers)
        self.pool = pool(spec)
        pooled = config.channels * pool.get_num_outs(spec)
        self.project = nn.Linear(pooled, config.invariant_dim)
        self.head = _head(config.invariant_dim, config.head_hidden, outputs)

    def forward(self, ws: WeightSpace) -> Tensor:
        from nfn.common import WeightSpaceFeatures

        hidden = self.first(to_nfn(ws))
        if self.probe_input is not None:
            biases = list(hidden.biases)
            targets = self.probe_input.probes.targets
            for target, value in zip(targets, self.probe_input(ws)):
                biases[target.layer - 1] = biases[target.layer - 1] + value
            hidden = WeightSpaceFeatures(hidden.weights, biases)
        features = self.pool(self.layers(hidden)).flatten(1)
        out: Tensor = self.head(self.project(features))
        return out


class Canonicalized(nn.Module):
    """``base`` on the canonical point of each network's orbit under the scalings
    (:func:`nfn_runtime.canonical_scales.canonical_scales`): with a permutation-invariant
    ``base`` (``hnp``, ``statnn``), exactly invariant under the whole derived group. Probe
    features inside ``base`` run the canonical network, which computes the same function, so
    they are the canonical network's activations."""

    def __init__(self, layout: WeightSpaceLayout, base: nn.Module) -> None:
        super().__init__()
        canonical_order(layout)  # a ValueError now, naming the spaces, if there is no order
        self.layout = layout
        self.base = base

    def forward(self, ws: WeightSpace) -> Tensor:
        out: Tensor = self.base(canonical_scales(ws, self.layout)[0])
        return out


def build_model(
    kind: str,
    architecture: str,
    input_shape: tuple[int, ...],
    example: WeightSpace,
    outputs: int,
    config: ModelConfig | None = None,
    probes: ProbeFeatures | None = None,
) -> nn.Module:
    """A fresh model of ``kind`` for networks of ``architecture`` (``example``: a batch of them,
    used by the ``nfn`` package to read the shapes), fed ``probes`` where the kind takes them
    (every kind but ``np`` and ``nfn-np``; see the module docstring)."""
    config = config or ModelConfig()
    if kind in CANONICAL_KINDS:
        layout = weight_space_layout(architecture, input_shape, "monomial")
        base: nn.Module
        if kind == "canon-statnn":  # heads merged: relabelling them is in the group
            base = StatNN(layout, config, outputs, probes, merge_heads=True)
        else:
            base = build_model(kind.removeprefix("canon-"), architecture, input_shape, example,
                               outputs, config, probes)  # fmt: skip
        return Canonicalized(layout, base)
    if kind in PROBELESS_KINDS:
        probes = None
    if kind in EQUIVARIANT_KINDS:
        layers = generated_layers(architecture, tuple(input_shape), kind, config.polynomial_degree)
        return EquivariantNFN(
            layers, config, outputs, permutation_only=kind in ("hnp", "np"), probes=probes
        )
    layout = weight_space_layout(architecture, tuple(input_shape))
    if kind == "statnn":
        return StatNN(layout, config, outputs, probes)
    if kind == "mlp":
        return FlatMLP(layout, config, outputs, probes)
    if kind in ("nfn-hnp", "nfn-np"):
        setting = kind.removeprefix("nfn-")
        return NFNPackageModel(layout, example, config, outputs, setting, probes)
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
    layers, the ``nfn`` package cannot read its weight space, or the scalings have no
    canonical point), or None when it can."""
    config = config or ModelConfig()
    if kind in CANONICAL_KINDS:
        try:
            canonical_order(weight_space_layout(architecture, tuple(input_shape), "monomial"))
        except ValueError as error:
            return f"no canonical point of the scalings: {error}"
        return unavailable_reason(kind.removeprefix("canon-"), architecture, input_shape, config)
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
