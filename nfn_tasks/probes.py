"""Probe features: the hidden activations of the weights' own network at fixed inputs.

Evaluating the networks of a zoo at ``P`` fixed probe inputs gives, per hidden neuron space, a
``(B, n, P)`` tensor of activations (an MLP or a SIREN: each hidden layer's activations; a small
CNN: each channel's activation averaged over the image; a transformer: the residual stream,
the queries, keys and per-head attention outputs, and the MLP's hidden layer, each averaged
over the tokens). A group element permutes a hidden space's neurons and multiplies neuron ``i``
by ``d_i`` (a sign for ``sin`` and ``tanh``, a positive number for ReLU, any non-zero number
for a query/key or value dimension); the activations move exactly as the bias that produced
them (``sin(-z) = -sin(z)``, ``relu(d z) = d relu(z)`` for ``d > 0``, ``W x + b`` is linear,
softmax weights are invariant, a mean over positions or tokens is linear). So a linear map
over the probe axis without a constant term, added to that bias's channels, keeps an
equivariant model equivariant (graph metanetworks feed such "probe features" too: Kofinas et
al. 2024, Lim et al. 2024). Under a relabelling of attention heads the features of head ``h``
move to head ``h'`` with its biases, so corresponding biases of the heads share their map.

The network's outputs at the probes are not given: a model must learn to read them out of the
hidden activations and the output layer's weights.

:class:`ProbeFeatures` computes the features from the (normalized) weight space inside a
model's forward pass, so a transformed network gets transformed features and the invariance
tests exercise them; the zoo that trained the networks supplies their forward pass
(:data:`HiddenActivations`, on the state-dict keys), so the features are the networks' real
activations.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from nfn_runtime import TensorLayout, WeightSpace, WeightSpaceLayout
from nfn_runtime.convert import write_sources

__all__ = [
    "HiddenActivations",
    "ProbeFeatures",
    "chain_biases",
    "chain_layers",
    "state_dict_batch",
]

#: ``hidden(params, probes)``: stacked networks' parameters ``(B, *shape)`` by state-dict key,
#: probe inputs ``(P, ...)`` -> per bias state-dict key, the activations ``(B, P, width)`` that
#: move as that bias's entries (``width`` its length)
HiddenActivations = Callable[[dict[str, Tensor], Tensor], dict[str, Tensor]]


def chain_layers(layout: WeightSpaceLayout) -> list[tuple[str, str, str]]:
    """``(weight, bias, output space)`` per layer of a chain of layers (each one weight
    ``(out, in, *kernel)`` and one bias ``(out,)``, reading the previous layer's output), in
    order; a ValueError naming the layer when ``layout`` is not such a chain."""
    layers: list[tuple[str, str, str]] = []
    previous: str | None = None
    for layer in range(1, layout.num_layers + 1):
        tensors = [t for t in layout.tensors if t.layer == layer]
        weights = [
            t for t in tensors
            if t.kind == "weight" and len(t.axes) >= 2 and all(a.character == 0 for a in t.axes[2:])
        ]  # fmt: skip
        biases = [t for t in tensors if t.kind == "bias" and len(t.axes) == 1]
        if len(weights) != 1 or len(biases) != 1 or len(tensors) != 2:
            raise ValueError(f"layer {layer} is not one weight (out, in, *kernel) and one bias")
        weight, bias = weights[0], biases[0]
        if previous is not None and weight.axes[1].space != previous:
            raise ValueError(f"layer {layer} does not read the output of layer {layer - 1}")
        previous = weight.axes[0].space
        writers = [index + 1 for index, (_, _, space) in enumerate(layers) if space == previous]
        if writers:
            raise ValueError(
                f"layer {layer} writes space {previous!r} as layer {writers[0]} does (a residual "
                "stream, not a chain)"
            )
        layers.append((weight.name, bias.name, previous))
    if len(layers) < 2:
        raise ValueError("a chain needs at least one hidden layer")
    return layers


def chain_biases(layout: WeightSpaceLayout) -> list[str]:
    """The state-dict keys of a chain's hidden biases, in layer order (:func:`chain_layers`)."""
    return [layout.tensor(bias).source_key for _, bias, _ in chain_layers(layout)[:-1]]


def state_dict_batch(
    ws: WeightSpace, layout: WeightSpaceLayout, scales: dict[str, float]
) -> dict[str, Tensor]:
    """The networks of ``ws`` (first channel) as one stacked state dict ``(B, *shape)`` per
    key, each tensor multiplied back by its normalization scale; the parts of a state-dict
    entry (a packed attention projection) put back together."""
    named = ws.named(layout)
    real = {t.name: named[t.name][:, 0] * scales.get(t.name, 1.0) for t in layout.tensors}
    return write_sources(layout, layout.tensors, real)


def _tie_groups(layout: WeightSpaceLayout, targets: Sequence[TensorLayout]) -> list[int]:
    """Per target, the index of its group: entry ``k`` of every head of an attention is one
    group (its features move between the heads), every other target its own."""
    keys = [layout.head_entry(t.name) or t.name for t in targets]
    order = list(dict.fromkeys(keys))
    return [order.index(key) for key in keys]


class ProbeFeatures(nn.Module):
    """The activations of the networks in a weight space at ``probes`` (``(P, ...)`` inputs),
    one ``(B, n, P)`` tensor per bias of ``keys`` (in the layout's order; a state-dict entry
    cut into parts, such as a packed attention bias, gives one per part), each divided by a
    fixed root mean square per tie group (set by :func:`nfn_tasks.models.calibrate` on the
    training networks; a positive scalar per group keeps the equivariance).

    ``scales`` undo the per-tensor normalization of the weight space (the network runs on its
    real weights); ``hidden`` is the networks' forward pass up to the hidden activations.
    """

    rms: Tensor
    probes: Tensor

    def __init__(
        self,
        layout: WeightSpaceLayout,
        keys: Sequence[str],
        hidden: HiddenActivations,
        probes: Tensor,
        scales: dict[str, float],
    ) -> None:
        super().__init__()
        self.layout = layout
        self.targets = [t for t in layout.tensors if t.kind == "bias" and t.source_key in keys]
        missing = set(keys) - {t.source_key for t in self.targets}
        if missing:
            raise ValueError(f"no bias of the weight space has the key(s) {sorted(missing)}")
        self.keys = tuple(keys)
        self.ties = _tie_groups(layout, self.targets)
        self.forward_hidden = hidden
        self.scales = dict(scales)
        self.register_buffer("probes", probes.clone())
        self.register_buffer("rms", torch.ones(max(self.ties) + 1))
        self.calibrating = False

    @property
    def count(self) -> int:
        """Probe inputs ``P``."""
        return int(self.probes.shape[0])

    @property
    def groups(self) -> int:
        """Tie groups (targets that share a map: corresponding biases of the heads)."""
        return int(self.rms.numel())

    @property
    def spaces(self) -> list[str]:
        """Each target's space, in order."""
        return [t.axes[0].space for t in self.targets]

    @property
    def biases(self) -> list[str]:
        """The target bias tensors, in order."""
        return [t.name for t in self.targets]

    def forward(self, ws: WeightSpace) -> list[Tensor]:
        """``(B, n, P)`` activations per target (of the first channel of ``ws``)."""
        params = state_dict_batch(ws, self.layout, self.scales)
        activations = self.forward_hidden(params, self.probes.to(ws.dtype))
        features = [activations[t.source_key][..., t.source_index()[0]] for t in self.targets]
        if self.calibrating:
            for group in range(self.groups):
                members = [f for f, g in zip(features, self.ties) if g == group]
                mean_square = torch.stack([f.pow(2).mean() for f in members]).mean()
                self.rms[group] = mean_square.sqrt().clamp(min=1e-12)
        return [f.transpose(1, 2) / self.rms[g] for f, g in zip(features, self.ties)]
