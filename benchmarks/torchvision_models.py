"""torchvision's model definitions as ``--torch`` factories (structure only, no weights).

torchvision's compiled operators may not load against the CPU torch wheel; its import then
fails until the two operators it registers fake kernels for are declared. This module declares
them (as ``tests/derive/test_real_models.py`` and ``benchmarks/derive_time.py`` do) and exposes
zero-argument factories, so that the command line can trace torchvision's networks::

    nfn-derive verify --torch benchmarks.torchvision_models:vgg11 --input-shape 3,224,224

(run from the checkout's root, where ``benchmarks`` is importable). The declaration stays out
of the library on purpose: it is a work-around for one install, not a feature.
"""

from __future__ import annotations

import importlib
import sys
from types import ModuleType

import torch
from torch import nn

__all__ = ["torchvision_models", "vgg11", "vgg11_bn", "alexnet", "resnet18", "resnet50"]

_LIBRARIES: list[torch.library.Library] = []


def torchvision_models() -> ModuleType | None:
    """``torchvision.models``, declaring the compiled operators its import needs when they do
    not load against this torch build; None without torchvision."""
    try:
        importlib.import_module("torchvision")
    except ImportError:
        return None
    except RuntimeError:  # compiled operators missing for this torch build: declare them
        library = torch.library.Library("torchvision", "DEF")
        for op in ("nms", "qnms"):
            library.define(f"{op}(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        _LIBRARIES.append(library)  # keep the declarations alive
        for name in [m for m in list(sys.modules) if m.startswith("torchvision")]:
            del sys.modules[name]
        try:
            importlib.import_module("torchvision")
        except (ImportError, RuntimeError):
            return None
    return importlib.import_module("torchvision.models")


def _build(name: str) -> nn.Module:
    """torchvision's ``name`` model, freshly initialized (seed 0), in eval mode."""
    models = torchvision_models()
    if models is None:
        raise ImportError("torchvision is not installed (or does not import)")
    torch.manual_seed(0)
    model: nn.Module = getattr(models, name)()
    return model.eval()


def vgg11() -> nn.Module:
    """VGG-11 (133 million parameters; its head reads 512 x 7 x 7 at 224 x 224 inputs)."""
    return _build("vgg11")


def vgg11_bn() -> nn.Module:
    """VGG-11 with BatchNorm."""
    return _build("vgg11_bn")


def alexnet() -> nn.Module:
    """AlexNet (61 million parameters)."""
    return _build("alexnet")


def resnet18() -> nn.Module:
    """ResNet-18 (11.7 million parameters)."""
    return _build("resnet18")


def resnet50() -> nn.Module:
    """ResNet-50 (25.6 million parameters)."""
    return _build("resnet50")
