"""Probe features: the hidden activations of the weights' own network at fixed inputs.

For a network whose weight space is a chain of layers (an MLP or a SIREN: dense layers; a
small CNN: convolutions, each channel's activation averaged over the image), evaluating it at
``P`` fixed probe inputs gives, per hidden neuron space, a ``(B, n, P)`` tensor of
activations. A group element permutes a hidden space's neurons and multiplies neuron ``i`` by
``d_i`` (a sign for ``sin`` and ``tanh``, a positive number for ReLU); the activations of that
space move exactly as its bias does (``sin(-z) = -sin(z)``, ``relu(d z) = d relu(z)`` for
``d > 0``, and a spatial mean is linear). So a linear map over the probe axis without a
constant term, added to the space's bias channels, keeps an equivariant model equivariant
(graph metanetworks feed such "probe features" too: Kofinas et al. 2024, Lim et al. 2024).

Only hidden spaces get features: the network's outputs at the probes are not given, so a model
must learn to read them out of the hidden activations and the output layer's weights.

:class:`ChainProbes` computes the features from the (normalized) weight space inside a model's
forward pass, so a transformed network gets transformed features and the invariance tests
exercise them; the zoo that trained the networks supplies their forward pass
(:data:`HiddenActivations`, on the state-dict keys), so the features are the networks' real
activations.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from nfn_runtime import WeightSpace, WeightSpaceLayout

__all__ = ["HiddenActivations", "ChainProbes", "chain_layers"]

#: ``hidden(params, probes)``: stacked networks' parameters ``(B, *shape)`` by state-dict key,
#: probe inputs ``(P, ...)`` -> each hidden layer's activations ``(B, P, n)``, in layer order
HiddenActivations = Callable[[dict[str, Tensor], Tensor], list[Tensor]]


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


class ChainProbes(nn.Module):
    """Per hidden neuron space, the activations of the networks in a weight space at ``probes``
    (``(P, ...)`` inputs), each space divided by a fixed root mean square (set by
    :func:`nfn_tasks.models.calibrate` on the training networks; a positive scalar per space
    keeps the equivariance).

    ``scales`` undo the per-tensor normalization of the weight space (the network runs on its
    real weights); ``hidden`` is the networks' forward pass up to the hidden activations.
    """

    rms: Tensor
    probes: Tensor

    def __init__(
        self,
        layout: WeightSpaceLayout,
        hidden: HiddenActivations,
        probes: Tensor,
        scales: dict[str, float],
    ) -> None:
        super().__init__()
        self.layout = layout
        self.hidden = chain_layers(layout)[:-1]
        self.forward_hidden = hidden
        self.scales = dict(scales)
        self.register_buffer("probes", probes.clone())
        self.register_buffer("rms", torch.ones(len(self.hidden)))
        self.calibrating = False

    @property
    def count(self) -> int:
        """Probe inputs ``P``."""
        return int(self.probes.shape[0])

    @property
    def spaces(self) -> list[str]:
        """The hidden spaces, in layer order."""
        return [space for _, _, space in self.hidden]

    @property
    def biases(self) -> list[str]:
        """Each hidden space's bias tensor, in layer order."""
        return [bias for _, bias, _ in self.hidden]

    def forward(self, ws: WeightSpace) -> list[Tensor]:
        """``(B, n, P)`` activations per hidden space (of the first channel of ``ws``)."""
        named = ws.named(self.layout)
        params = {
            t.source_key: (named[t.name][:, 0] * self.scales.get(t.name, 1.0)).reshape(
                -1, *t.source_shape
            )
            for t in self.layout.tensors
            if t.kind != "buffer"
        }
        activations = self.forward_hidden(params, self.probes.to(ws.dtype))
        if len(activations) != len(self.hidden):
            raise ValueError(
                f"the forward pass gave {len(activations)} hidden activations for "
                f"{len(self.hidden)} hidden spaces"
            )
        features = []
        for index, h in enumerate(activations):
            value = h.transpose(1, 2)
            if self.calibrating:
                self.rms[index] = value.pow(2).mean().sqrt().clamp(min=1e-12)
            features.append(value / self.rms[index])
        return features
