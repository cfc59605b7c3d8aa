"""Real architectures from torchvision, traced as structures (no weights are downloaded).

torchvision's compiled operators may not load against the CPU torch wheel; the two operators its
import registers fake kernels for are declared first (by benchmarks/torchvision_models.py, test
and benchmark setup only, never in the library), and the tests skip where torchvision is not installed at all. Hand-written
equivalents of every family are tested in test_trace_reach.py either way.
"""

from __future__ import annotations

import importlib
import time

import pytest
import torch

from benchmarks.torchvision_models import torchvision_models
from derive.layers.kind import generated_class
from derive.layers.linear import budget_choice
from derive.pipeline import derive, verify
from derive.weightspace.model import Scaling
from nfn_runtime import equivariance_error, invariance_error, random_weight_space


def _scaling_counts(derivation) -> dict[str, int]:
    """How many hidden spaces allow each scaling."""
    counts: dict[str, int] = {}
    for space in derivation.space.spaces:
        if space.role == "hidden":
            counts[space.scaling.value] = counts.get(space.scaling.value, 0) + 1
    return counts


models = torchvision_models()
pytestmark = pytest.mark.skipif(models is None, reason="torchvision is not installed")

#: name -> (factory, input shape, expected hidden scalings {kind: count})
NETWORKS = {
    "resnet18": (lambda m: m.resnet18(), (3, 32, 32), {"positive": 12}),
    "vgg11": (lambda m: m.vgg11(), (3, 32, 32), {"positive": 10}),
    "vgg11_bn": (lambda m: m.vgg11_bn(), (3, 32, 32), {"positive": 10}),
    "alexnet": (lambda m: m.alexnet(), (3, 64, 64), {"positive": 7}),
    "squeezenet1_0": (lambda m: m.squeezenet1_0(), (3, 64, 64), {"positive": 25}),
    "densenet-small": (
        lambda m: m.DenseNet(growth_rate=4, block_config=(2, 2), num_init_features=8),
        (3, 32, 32),
        None,
    ),
    "googlenet": (
        lambda m: m.googlenet(aux_logits=False, init_weights=False),
        (3, 32, 32),
        {"positive": 57},
    ),
    "mobilenet_v2": (lambda m: m.mobilenet_v2(), (3, 32, 32), {"none": 18, "nonzero": 7}),
    "mobilenet_v3_small": (lambda m: m.mobilenet_v3_small(), (3, 32, 32), None),
    "efficientnet_b0": (lambda m: m.efficientnet_b0(), (3, 32, 32), {"none": 33, "nonzero": 7}),
    "convnext_tiny": (lambda m: m.convnext_tiny(), (3, 32, 32), {"none": 22}),
    "convnext-small": (
        lambda m: m.convnext.ConvNeXt(
            [m.convnext.CNBlockConfig(8, 16, 2), m.convnext.CNBlockConfig(16, None, 1)],
            num_classes=3,
        ),
        (3, 16, 16),
        {"none": 5},
    ),
    "regnet_y_400mf": (lambda m: m.regnet_y_400mf(), (3, 32, 32), {"positive": 552, "none": 531}),
    "resnext50_32x4d": (lambda m: m.resnext50_32x4d(), (3, 32, 32), {"positive": 1029}),
    "shufflenet_v2_x0_5": (lambda m: m.shufflenet_v2_x0_5(), (3, 32, 32), {"positive": 86}),
    "vit-small": (
        lambda m: m.VisionTransformer(
            image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=16, mlp_dim=32
        ),
        (3, 32, 32),
        {"none": 3, "nonzero": 8},  # the stream and two GELU spaces; per head q/k and v
    ),
    "shufflenet-small": (
        lambda m: m.ShuffleNetV2([2, 3, 2], [4, 8, 16, 32, 16], num_classes=3),
        (3, 32, 32),
        {"positive": 28},
    ),
}


@pytest.mark.parametrize("name", list(NETWORKS))
def test_torchvision_models_trace_and_keep_their_group(name):
    factory, shape, expected = NETWORKS[name]
    torch.manual_seed(0)
    model = factory(models).eval()
    start = time.perf_counter()
    derivation = derive(model, shape, name=name)
    assert derivation.basis.dim > 0
    elapsed = time.perf_counter() - start
    assert elapsed < 10, f"tracing and deriving the basis took {elapsed:.1f} s"
    counts = _scaling_counts(derivation)
    if expected is not None:
        assert counts == expected
    assert Scaling.POSITIVE.value in counts or "none" in counts


@pytest.mark.parametrize(
    "name",
    [
        "resnet18",
        "convnext-small",
        "shufflenet-small",
        "vit-small",
        # minutes on 2 cores (VGG-11-BN's 4096 x 25088 head alone takes most of it)
        *(
            pytest.param(name, marks=pytest.mark.slow)
            for name in (
                "vgg11_bn",
                "alexnet",
                "mobilenet_v2",
                "googlenet",
                "squeezenet1_0",
                "regnet_y_400mf",
                "resnext50_32x4d",
                "shufflenet_v2_x0_5",
                "vgg11",
                "densenet-small",
                "mobilenet_v3_small",
                "efficientnet_b0",
                "convnext_tiny",
            )
        ),
    ],
)
def test_torchvision_models_pass_the_network_group_check(name):
    factory, shape, _ = NETWORKS[name]
    torch.manual_seed(0)
    report = verify(derive(factory(models).eval(), shape, name=name), samples=1, only=["network"])
    assert report.ok, report.text()


@pytest.mark.slow
def test_vit_b_16_traces_with_its_heads_and_passes_the_network_group_check():
    """torchvision's ViT-B/16: 12 layers of 12 heads, each with its query/key and value
    spaces; the residual stream permuted (LayerNorm), the MLPs' GELU spaces permuted."""
    torch.manual_seed(0)
    derivation = derive(models.vit_b_16().eval(), (3, 224, 224), name="vit_b_16")
    assert _scaling_counts(derivation) == {"none": 13, "nonzero": 288}
    report = verify(derivation, samples=1, only=["network"])
    assert report.ok, report.text()


def test_resnet18_default_linear_layer_is_smaller_than_the_network():
    """At 8 -> 8 channels the default linear layer of ResNet-18 (1000-class head; dense:
    2.4 million coefficients per channel pair) has fewer parameters than ResNet-18 (11.7M)."""
    derivation = derive(models.resnet18().eval(), (3, 224, 224), name="resnet18")
    network = derivation.space.to_layout().num_params()
    choice = budget_choice(derivation, "default")
    assert choice.within and choice.dense_dim > 2_000_000 and choice.factored
    layer = generated_class(derivation, "linear")(8, 8)
    assert sum(p.numel() for p in layer.parameters()) < network


@pytest.mark.slow
def test_resnet18_default_linear_layer_runs_forward_and_backward():
    """One ResNet-18 weight space at 8 channels through the default linear layer and back
    (benchmarks/real_size.py measures its time and peak memory)."""
    derivation = derive(models.resnet18().eval(), (3, 224, 224), name="resnet18")
    layer = generated_class(derivation, "linear")(8, 8)
    layout = derivation.space.to_layout()
    x = random_weight_space(layout, 1, 8, torch.float32, torch.Generator().manual_seed(0))
    out = layer(x)
    loss = sum((t * t).mean() for t in out.tensors())
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in layer.parameters())


def _timm():
    """timm's model definitions (they import torchvision, declared above), or None."""
    if models is None:
        return None
    try:
        return importlib.import_module("timm")
    except ImportError:
        return None


timm = _timm()


def _mixer(**kwargs):
    mixer = importlib.import_module("timm.models.mlp_mixer")
    return mixer.MlpMixer(
        num_classes=3, img_size=32, patch_size=8, num_blocks=2, embed_dim=16, **kwargs
    )


def _resmlp():
    mixer = importlib.import_module("timm.models.mlp_mixer")
    return _mixer(mlp_ratio=4, block_layer=mixer.ResBlock, norm_layer=mixer.Affine)


def _vit(fused: bool = True):
    """timm's VisionTransformer, reduced; ``fused``: its attention calls
    F.scaled_dot_product_attention, else it is written out (q @ k.transpose, softmax, @ v)."""
    vit = importlib.import_module("timm.models.vision_transformer")
    model = vit.VisionTransformer(
        img_size=32, patch_size=8, embed_dim=24, depth=2, num_heads=3, num_classes=3
    )
    for block in model.blocks:
        block.attn.fused_attn = fused
    return model


#: name -> (factory, input shape, expected hidden scalings)
TIMM_NETWORKS = {
    "mixer-small": (_mixer, (3, 32, 32), {"none": 5}),
    "resmlp-small": (_resmlp, (3, 32, 32), {"none": 3}),
    "mixer_s16_224": (lambda: timm.create_model("mixer_s16_224"), (3, 224, 224), {"none": 17}),
    "resmlp_12_224": (lambda: timm.create_model("resmlp_12_224"), (3, 224, 224), {"none": 13}),
    "convnext_atto": (lambda: timm.create_model("convnext_atto"), (3, 32, 32), {"none": 16}),
    "efficientnet_b0": (
        lambda: timm.create_model("efficientnet_b0"),
        (3, 32, 32),
        {"none": 33, "nonzero": 7},
    ),
    "resnet18": (lambda: timm.create_model("resnet18"), (3, 32, 32), {"positive": 12}),
    # the stream and two GELU spaces; per head (3 per block) its q/k and v spaces
    "vit-small": (_vit, (3, 32, 32), {"none": 3, "nonzero": 12}),
    "vit-small-explicit": (lambda: _vit(fused=False), (3, 32, 32), {"none": 3, "nonzero": 12}),
    "deit_tiny_patch16_224": (
        lambda: timm.create_model("deit_tiny_patch16_224", pretrained=False),
        (3, 224, 224),
        {"none": 13, "nonzero": 72},  # 12 blocks of 3 heads
    ),
}


@pytest.mark.skipif(timm is None, reason="timm is not installed")
@pytest.mark.parametrize("name", list(TIMM_NETWORKS))
def test_timm_models_trace_and_keep_their_group(name):
    factory, shape, expected = TIMM_NETWORKS[name]
    torch.manual_seed(0)
    start = time.perf_counter()
    derivation = derive(factory().eval(), shape, name=name)
    assert derivation.basis.dim > 0
    elapsed = time.perf_counter() - start
    assert elapsed < 10, f"tracing and deriving the basis took {elapsed:.1f} s"
    counts = _scaling_counts(derivation)
    assert counts == expected


@pytest.mark.skipif(timm is None, reason="timm is not installed")
@pytest.mark.parametrize(
    "name",
    [
        "mixer-small",
        "resmlp-small",
        "vit-small",
        "vit-small-explicit",
        *(
            pytest.param(name, marks=pytest.mark.slow)
            # DeiT-tiny: 30 to 100 s on 2 cores
            for name in ("convnext_atto", "resnet18", "deit_tiny_patch16_224")
        ),
    ],
)
def test_timm_models_pass_the_network_group_check(name):
    factory, shape, _ = TIMM_NETWORKS[name]
    torch.manual_seed(0)
    report = verify(derive(factory().eval(), shape, name=name), samples=1, only=["network"])
    assert report.ok, report.text()


@pytest.mark.skipif(timm is None, reason="timm is not installed")
@pytest.mark.parametrize(
    "name", ["vit-small", pytest.param("deit_tiny_patch16_224", marks=pytest.mark.slow)]
)
def test_timm_transformer_layers_are_generated_and_exact(name):
    """The generated linear and invariant layers of a timm ViT weight space (DeiT-tiny at 224 x
    224: 5.7 million entries, 368 tensors) are exactly equivariant / invariant in float64 under
    a sampled element of the derived group (per-head nonzero factors and permutations)."""
    factory, shape, _ = TIMM_NETWORKS[name]
    torch.manual_seed(0)
    derivation = derive(factory().eval(), shape, name=name.replace("-", "_"))
    layout = derivation.space.to_layout()
    generator = torch.Generator().manual_seed(0)
    linear = generated_class(derivation, "linear")(1, 2).double()
    error = equivariance_error(
        linear, layout, n_samples=1, channels=1, dtype=torch.float64, generator=generator
    )
    assert error <= 1e-10
    invariant = generated_class(derivation, "invariant")(2, 3).double()
    error = invariance_error(
        invariant, layout, n_samples=1, channels=2, dtype=torch.float64, generator=generator
    )
    assert error <= 1e-10
