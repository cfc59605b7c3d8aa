"""Generated layers of every kind under ``torch.compile(fullgraph=True)`` on CPU: no graph
break, and the same outputs and input gradients as the eager module.

``fullgraph=True`` makes dynamo raise on any graph break whatever the backend, so the fast tier
compiles every (kind, network) pair with the ``aot_eager`` backend (dynamo's graph capture and
the autograd trace, without inductor's code generation: a few seconds per module) and one small
module with inductor, the default backend; the slow tier compiles every pair with inductor
(20-60 s per module here).
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

from derive.cli.regenerate import GENERATED_DIR
from derive.frontend.spec import load_spec, mlp_spec
from derive.layers.kind import LAYER_KINDS, LayerOptions, generated_class
from derive.pipeline import Derivation, derive
from nfn_runtime import WeightSpace, random_weight_space

NETWORKS = ("mlp-relu", "mlp-tanh", "cnn")
KINDS = tuple(LAYER_KINDS)


@cache
def _derivation(network: str) -> Derivation:
    if network == "cnn":  # three conv layers, global pooling, a linear head
        return derive(load_spec(Path(GENERATED_DIR) / "specs" / "small_cnn.yaml"))
    activation = network.removeprefix("mlp-")
    return derive(mlp_spec((3, 4, 4, 2), activation, name="small"))


@cache
def _layer_class(network: str, kind: str) -> type[nn.Module]:
    """MAGEP polynomial terms need a chain of matrix weights: conv networks get the complete
    family (degree 2) instead."""
    derivation = _derivation(network)
    magep = LAYER_KINDS[kind].applies(derivation) is None
    options = LayerOptions() if magep else LayerOptions(family="complete", degree=2)
    return generated_class(derivation, kind, options)


def _outputs_and_gradients(layer: nn.Module, x: WeightSpace) -> tuple[Tensor, ...]:
    out = layer(x)
    outputs = (out,) if isinstance(out, Tensor) else out.tensors()
    weights = [torch.linspace(-1, 1, o.numel(), dtype=o.dtype).view_as(o) for o in outputs]
    gradients = torch.autograd.grad(outputs, x.tensors(), weights)
    return (*outputs, *gradients)


def _check_compiled(network: str, kind: str, backend: str) -> None:
    torch.manual_seed(0)
    layer = _layer_class(network, kind)(2, 3)
    layout = _derivation(network).space.to_layout()
    x = random_weight_space(layout, 3, 2, torch.float32, torch.Generator().manual_seed(1))
    x = x.map(lambda t: t.requires_grad_())
    torch._dynamo.reset()
    compiled = torch.compile(layer, fullgraph=True, backend=backend)
    for got, want in zip(_outputs_and_gradients(compiled, x), _outputs_and_gradients(layer, x)):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("network", NETWORKS)
def test_compiles_without_graph_breaks(network, kind):
    _check_compiled(network, kind, "aot_eager")


def test_small_layer_compiles_with_inductor():
    _check_compiled("mlp-relu", "invariant", "inductor")


@pytest.mark.slow
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("network", NETWORKS)
def test_compiles_with_inductor(network, kind):
    _check_compiled(network, kind, "inductor")
