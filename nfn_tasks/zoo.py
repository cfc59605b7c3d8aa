"""Model zoos: many small networks trained on the digits, their weights and a target each.

- CNN zoos (:class:`CNNZooSettings`): ``nfn_runtime.architectures.SmallCNN`` (three 3x3 conv
  layers, global average pooling, a linear head) with ReLU or tanh, each network trained with
  its own learning rate, weight decay, initialization scale, training fraction, epochs and
  dropout; the target is its test accuracy on held-out digits.
- The transformer zoo (:class:`TransformerZooSettings`): ``nfn_tasks.zoo_transformer``'s
  one-block transformer on 2x2 patches of the digits, hyperparameters drawn per network as
  for the CNNs; the target is its test accuracy.
- The INR zoo (:class:`INRZooSettings`): a SIREN fit to every digit image (for several seeds);
  the target is the digit.

:func:`nfn_tasks.zoo_build.build_zoo` trains the networks of a zoo together (``torch.func.vmap`` / batched matmuls)
and caches the result on disk under a SHA-256 hash of the settings and the zoo format version,
so the same settings load the same bytes.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import io
import json
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

__all__ = [
    "ZOO_FORMAT",
    "Zoo",
    "CNNZooSettings",
    "INRZooSettings",
    "TransformerZooSettings",
    "ZooSettings",
    "default_cache_dir",
    "settings_hash",
    "save_zoo",
    "load_zoo",
]

#: bump when the generation code changes what a given setting produces (invalidates caches)
ZOO_FORMAT = 1


@dataclass(frozen=True)
class CNNZooSettings:
    """A zoo of small CNNs on the digits; hyperparameters are drawn per network from the ranges
    (log-uniform for learning rate, weight decay and initialization scale, else uniform)."""

    activation: str = "relu"  # "relu" or "tanh"
    networks: int = 500
    seed: int = 0
    test_images: float = 0.3  # fraction of the digits held out to measure test accuracy
    batch_size: int = 32
    lr: tuple[float, float] = (5e-4, 5e-2)  # Adam learning rate
    weight_decay: tuple[float, float] = (1e-6, 1e-1)  # decoupled (AdamW) weight decay
    init_scale: tuple[float, float] = (0.2, 3.0)  # multiplies PyTorch's default init bounds
    train_fraction: tuple[float, float] = (0.02, 1.0)  # of the training images
    epochs: tuple[int, int] = (1, 15)
    dropout: tuple[float, float] = (0.0, 0.6)  # before the head

    kind = "cnn"

    @property
    def architecture(self) -> str:
        factory = "small_cnn" if self.activation == "relu" else f"small_cnn_{self.activation}"
        return f"nfn_runtime.architectures:{factory}"

    @property
    def input_shape(self) -> tuple[int, ...]:
        return (1, 8, 8)

    @property
    def name(self) -> str:
        return f"cnn-{self.activation}"

    def validate(self) -> None:
        if self.activation not in ("relu", "tanh"):
            raise ValueError(f"CNN zoo activation must be relu or tanh, got {self.activation!r}")
        if self.networks < 2:
            raise ValueError(f"a zoo needs at least 2 networks, got {self.networks}")
        if not 1 <= self.epochs[0] <= self.epochs[1]:
            raise ValueError(f"bad epochs range {self.epochs}")

    @classmethod
    def small(cls, activation: str = "relu") -> CNNZooSettings:
        """The quick default setting: 200 networks, up to 8 epochs."""
        return cls(activation=activation, networks=200, epochs=(1, 8))

    @classmethod
    def tiny(cls, activation: str = "relu") -> CNNZooSettings:
        """For tests: 24 networks, one or two epochs on a few images."""
        return cls(activation=activation, networks=24, epochs=(1, 2), train_fraction=(0.02, 0.1))


@dataclass(frozen=True)
class INRZooSettings:
    """SIRENs (``nfn_runtime.architectures.siren``: 2 -> 32 -> 32 -> 1, omega 30) fit to the
    digit images with Adam on the full pixel grid, every fit from its own random
    initialization (as in the MNIST INR data sets of the NFN literature); ``shared_init``
    gives the fits of one seed a common initialization instead (neurons then stay aligned
    across fits, which a flat MLP exploits)."""

    images: int = 0  # 0: all 1797 digits; else the first n of a seeded stratified order
    seeds: int = 4  # fits per image
    shared_init: bool = False  # fits of one seed share the initialization (else one per fit)
    steps: int = 300
    lr: float = 1e-3
    seed: int = 0

    kind = "inr"

    @property
    def architecture(self) -> str:
        return "nfn_runtime.architectures:siren"

    @property
    def input_shape(self) -> tuple[int, ...]:
        return (2,)

    @property
    def name(self) -> str:
        return "inr"

    def validate(self) -> None:
        if self.images < 0 or self.images == 1:
            raise ValueError(f"images must be 0 (all) or at least 2, got {self.images}")
        if self.seeds < 1 or self.steps < 1:
            raise ValueError("seeds and steps must be positive")

    @classmethod
    def small(cls) -> INRZooSettings:
        """The quick default setting: 600 images, two fits each."""
        return cls(images=600, seeds=2, steps=200)

    @classmethod
    def tiny(cls) -> INRZooSettings:
        """For tests: 30 images, two fits each, a few steps."""
        return cls(images=30, seeds=2, steps=20)


@dataclass(frozen=True)
class TransformerZooSettings:
    """A zoo of one-block transformers on the digits (``nfn_tasks.zoo_transformer``);
    hyperparameters are drawn per network as for :class:`CNNZooSettings` (no dropout)."""

    norm: str = "pre"  # "pre" (LayerNorm before attention and MLP) or "none"
    attention: str = "mha"  # "mha" (nn.MultiheadAttention) or "handwritten"
    networks: int = 500
    seed: int = 0
    test_images: float = 0.3
    batch_size: int = 32
    lr: tuple[float, float] = (1e-3, 5e-2)  # Adam learning rate
    weight_decay: tuple[float, float] = (1e-6, 1e-1)  # decoupled (AdamW) weight decay
    init_scale: tuple[float, float] = (0.2, 3.0)  # multiplies the initialization bounds
    train_fraction: tuple[float, float] = (0.02, 1.0)  # of the training images
    epochs: tuple[int, int] = (1, 15)

    kind = "transformer"

    @property
    def architecture(self) -> str:
        from nfn_tasks.zoo_transformer import TRANSFORMER_FACTORIES

        return f"nfn_tasks.zoo_transformer:{TRANSFORMER_FACTORIES[(self.norm, self.attention)]}"

    @property
    def input_shape(self) -> tuple[int, ...]:
        return (1, 8, 8)

    @property
    def name(self) -> str:
        if (self.norm, self.attention) == ("pre", "mha"):
            return "transformer"
        return f"transformer-{self.norm}-{self.attention}"

    def validate(self) -> None:
        from nfn_tasks.zoo_transformer import TRANSFORMER_FACTORIES

        if (self.norm, self.attention) not in TRANSFORMER_FACTORIES:
            valid = ", ".join(f"{n}/{a}" for n, a in TRANSFORMER_FACTORIES)
            raise ValueError(
                f"no transformer with norm {self.norm!r} and attention {self.attention!r} "
                f"(valid norm/attention: {valid})"
            )
        if self.networks < 2:
            raise ValueError(f"a zoo needs at least 2 networks, got {self.networks}")
        if not 1 <= self.epochs[0] <= self.epochs[1]:
            raise ValueError(f"bad epochs range {self.epochs}")

    @classmethod
    def small(cls) -> TransformerZooSettings:
        """The quick default setting: 200 networks, up to 12 epochs."""
        return cls(networks=200, epochs=(1, 12))

    @classmethod
    def tiny(cls) -> TransformerZooSettings:
        """For tests: 16 networks, two to four epochs on a tenth to 40% of the images."""
        return cls(networks=16, epochs=(2, 4), train_fraction=(0.1, 0.4))


ZooSettings = CNNZooSettings | INRZooSettings | TransformerZooSettings


@dataclass
class Zoo:
    """Networks of one architecture: ``params[key]`` is ``(N, *shape)`` for every state-dict
    entry; ``targets`` (test accuracy, or the digit) and ``groups`` (networks of one group,
    e.g. fits of one image, always fall on the same side of a split) are ``(N,)``; ``info``
    holds per-network records (hyperparameters, train accuracy, fit error, ...)."""

    kind: str  # "cnn", "transformer" or "inr"
    architecture: str  # "package.module:factory"
    input_shape: tuple[int, ...]
    activation: str
    params: dict[str, Tensor]
    targets: Tensor
    groups: Tensor
    info: dict[str, Tensor] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.targets.shape[0])

    def state_dict(self, index: int) -> dict[str, Tensor]:
        return {key: value[index].clone() for key, value in self.params.items()}

    def network(self, index: int = 0) -> nn.Module:
        """Network ``index`` as a fresh module of the zoo's architecture."""
        module_name, _, attribute = self.architecture.partition(":")
        factory = getattr(importlib.import_module(module_name), attribute)
        network: nn.Module = factory()
        network.load_state_dict(self.state_dict(index))
        return network.eval()

    def subset(self, index: Tensor) -> Zoo:
        """The networks ``index`` (positions), in that order."""
        return dataclasses.replace(
            self,
            params={key: value[index] for key, value in self.params.items()},
            targets=self.targets[index],
            groups=self.groups[index],
            info={key: value[index] for key, value in self.info.items()},
        )

    def split(self, test_fraction: float, seed: int) -> tuple[Tensor, Tensor]:
        """``(rest, test)`` positions: a seeded ``test_fraction`` of the groups is held out."""
        if not 0 < test_fraction < 1:
            raise ValueError(f"test fraction must be in (0, 1), got {test_fraction}")
        groups = torch.unique(self.groups, sorted=True)
        generator = torch.Generator().manual_seed(seed)
        shuffled = groups[torch.randperm(len(groups), generator=generator)]
        count = min(max(1, round(test_fraction * len(groups))), len(groups) - 1)
        held_out = torch.isin(self.groups, shuffled[:count])
        positions = torch.arange(len(self))
        return positions[~held_out], positions[held_out]


def settings_hash(settings: ZooSettings) -> str:
    """SHA-256 of the zoo kind, its settings and :data:`ZOO_FORMAT`."""
    payload = {"kind": settings.kind, "format": ZOO_FORMAT, "settings": asdict(settings)}
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def default_cache_dir() -> Path:
    """``$NFN_ZOO_CACHE`` or ``~/.cache/nfn-derive/zoos``."""
    env = os.environ.get("NFN_ZOO_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "nfn-derive" / "zoos"


def _payload(zoo: Zoo) -> dict[str, Any]:
    return {
        "format": ZOO_FORMAT,
        "kind": zoo.kind,
        "architecture": zoo.architecture,
        "input_shape": list(zoo.input_shape),
        "activation": zoo.activation,
        "params": {key: zoo.params[key].contiguous() for key in sorted(zoo.params)},
        "targets": zoo.targets.contiguous(),
        "groups": zoo.groups.contiguous(),
        "info": {key: zoo.info[key].contiguous() for key in sorted(zoo.info)},
        "settings": json.dumps(zoo.settings, sort_keys=True),
    }


def zoo_bytes(zoo: Zoo) -> bytes:
    """The zoo serialized (deterministic: equal zoos give equal bytes)."""
    buffer = io.BytesIO()
    torch.save(_payload(zoo), buffer)
    return buffer.getvalue()


def save_zoo(zoo: Zoo, path: Path) -> None:
    """Write ``zoo`` to ``path`` atomically (a temporary file renamed into place)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data = zoo_bytes(zoo)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as stream:
            stream.write(data)
        os.chmod(temporary, 0o644)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def load_zoo(path: Path) -> Zoo:
    payload = torch.load(path, weights_only=True)
    if payload.get("format") != ZOO_FORMAT:
        raise ValueError(f"{path}: zoo format {payload.get('format')}, expected {ZOO_FORMAT}")
    return Zoo(
        kind=payload["kind"],
        architecture=payload["architecture"],
        input_shape=tuple(payload["input_shape"]),
        activation=payload["activation"],
        params=dict(payload["params"]),
        targets=payload["targets"],
        groups=payload["groups"],
        info=dict(payload["info"]),
        settings=json.loads(payload["settings"]),
    )
