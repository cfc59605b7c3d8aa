"""The ``WeightSpace`` container: batched features over a network's weights and biases."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from nfn_runtime.layout import TensorLayout, WeightSpaceLayout

__all__ = ["WeightSpace"]


@dataclass(frozen=True, eq=False)
class WeightSpace:
    """Features over a weight space, in the layout of the ``nfn`` package.

    ``weights[i]`` and ``biases[i]`` belong to the ``i + 1``-th layer with parameters, each of
    shape ``(B, C, *axes)`` with the axis shape its layout gives: ``(n_out, n_in, *kernel)`` for
    linear and conv weights, ``(n_out, n_channel, n_positions)`` for a linear layer after
    ``flatten``, ``(n,)`` for a normalization's scale; biases ``(n_out,)``. A layer without a bias
    holds ``None``.
    """

    weights: tuple[Tensor, ...]
    biases: tuple[Tensor | None, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "weights", tuple(self.weights))
        object.__setattr__(self, "biases", tuple(self.biases))
        if len(self.weights) != len(self.biases):
            raise ValueError(
                f"WeightSpace needs one bias entry per weight (use None for no bias): "
                f"got {len(self.weights)} weights and {len(self.biases)} biases"
            )

    def __len__(self) -> int:
        return len(self.weights)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor | None]]:
        return iter(zip(self.weights, self.biases))

    @property
    def batch_size(self) -> int:
        return int(self.weights[0].shape[0])

    @property
    def channels(self) -> int:
        return int(self.weights[0].shape[1])

    @property
    def dtype(self) -> torch.dtype:
        return self.weights[0].dtype

    @property
    def device(self) -> torch.device:
        return self.weights[0].device

    def tensors(self) -> tuple[Tensor, ...]:
        """All present tensors, in the order W1, b1, W2, b2, ..."""
        out: list[Tensor] = []
        for weight, bias in self:
            out.append(weight)
            if bias is not None:
                out.append(bias)
        return tuple(out)

    def get(self, tensor: TensorLayout) -> Tensor:
        """The tensor that ``tensor`` (a layout entry) describes."""
        slot = self.weights if tensor.kind == "weight" else self.biases
        value = slot[tensor.layer - 1]
        if value is None:
            raise KeyError(f"weight space has no tensor {tensor.name!r}")
        return value

    @classmethod
    def from_named(cls, layout: WeightSpaceLayout, tensors: dict[str, Tensor]) -> WeightSpace:
        """Build from a ``{tensor name: tensor}`` mapping that follows ``layout``."""
        num_layers = layout.num_layers
        weights: list[Tensor | None] = [None] * num_layers
        biases: list[Tensor | None] = [None] * num_layers
        for spec in layout.tensors:
            slot = weights if spec.kind == "weight" else biases
            slot[spec.layer - 1] = tensors[spec.name]
        if any(w is None for w in weights):
            raise ValueError("every layer needs a weight tensor")
        return cls(tuple(w for w in weights if w is not None), tuple(biases))

    def named(self, layout: WeightSpaceLayout) -> dict[str, Tensor]:
        """The tensors as a ``{tensor name: tensor}`` mapping."""
        return {spec.name: self.get(spec) for spec in layout.tensors}

    def validate(self, layout: WeightSpaceLayout) -> None:
        """Raise ``ValueError`` unless this weight space holds exactly the tensors of ``layout``.

        Checks the number of layers, which layers have a bias, and every tensor's axis shape
        (the batch and channel axes in front are free).
        """
        if len(self) != layout.num_layers:
            raise ValueError(f"weight space has {len(self)} layers, layout has {layout.num_layers}")
        for layer, (bias, expected) in enumerate(zip(self.biases, layout.has_bias), start=1):
            if (bias is not None) != expected:
                have = "has" if bias is not None else "has no"
                want = "one" if expected else "none"
                raise ValueError(f"layer {layer} {have} bias, but the layout lists {want}")
        for spec in layout.tensors:
            value = self.get(spec)
            expected_shape = layout.shape(spec)
            if value.dim() != 2 + len(expected_shape) or tuple(value.shape[2:]) != expected_shape:
                raise ValueError(
                    f"tensor {spec.name!r}: expected shape (B, C, *{expected_shape}), "
                    f"got {tuple(value.shape)}"
                )

    def map_layout(
        self, layout: WeightSpaceLayout, fn: Callable[[TensorLayout, Tensor], Tensor]
    ) -> WeightSpace:
        """Apply ``fn(tensor_layout, tensor)`` to every tensor that ``layout`` lists.

        The weight space is validated against ``layout`` first.
        """
        self.validate(layout)
        return WeightSpace.from_named(
            layout, {spec.name: fn(spec, self.get(spec)) for spec in layout.tensors}
        )

    def map(self, fn: Callable[[Tensor], Tensor]) -> WeightSpace:
        """Apply ``fn`` to every tensor."""
        return WeightSpace(
            tuple(fn(w) for w in self.weights),
            tuple(None if b is None else fn(b) for b in self.biases),
        )

    def zip_map(self, other: WeightSpace, fn: Callable[[Tensor, Tensor], Tensor]) -> WeightSpace:
        """Combine two weight spaces tensor by tensor."""
        biases: list[Tensor | None] = []
        for b1, b2 in zip(self.biases, other.biases):
            if (b1 is None) != (b2 is None):
                raise ValueError("weight spaces disagree on which layers have biases")
            biases.append(None if b1 is None or b2 is None else fn(b1, b2))
        return WeightSpace(
            tuple(fn(w1, w2) for w1, w2 in zip(self.weights, other.weights)), tuple(biases)
        )

    def __add__(self, other: WeightSpace) -> WeightSpace:
        return self.zip_map(other, torch.add)

    def __sub__(self, other: WeightSpace) -> WeightSpace:
        return self.zip_map(other, torch.sub)

    def __mul__(self, other: WeightSpace | float) -> WeightSpace:
        if isinstance(other, WeightSpace):
            return self.zip_map(other, torch.mul)
        return self.map(lambda t: t * other)

    __rmul__ = __mul__

    def detach(self) -> WeightSpace:
        return self.map(lambda t: t.detach())

    def to(self, *args: Any, **kwargs: Any) -> WeightSpace:
        """Move or cast every tensor, as ``Tensor.to``."""
        return self.map(lambda t: t.to(*args, **kwargs))

    def flatten(self) -> Tensor:
        """All entries as one ``(B, C, N)`` tensor (order: W1, b1, W2, b2, ...)."""
        return torch.cat([t.flatten(start_dim=2) for t in self.tensors()], dim=2)

    def unflatten_like(self, flat: Tensor) -> WeightSpace:
        """Inverse of :meth:`flatten`, using this weight space's shapes (channels may differ)."""
        out_weights: list[Tensor] = []
        out_biases: list[Tensor | None] = []
        offset = 0
        lead = flat.shape[:2]

        def take(like: Tensor) -> Tensor:
            nonlocal offset
            count = like[0, 0].numel()
            piece = flat[:, :, offset : offset + count].reshape(*lead, *like.shape[2:])
            offset += count
            return piece

        for weight, bias in self:
            out_weights.append(take(weight))
            out_biases.append(None if bias is None else take(bias))
        if offset != flat.shape[2]:
            raise ValueError(f"flat tensor has {flat.shape[2]} entries, weight space has {offset}")
        return WeightSpace(tuple(out_weights), tuple(out_biases))

    def __repr__(self) -> str:
        shapes = ", ".join(
            f"W{i + 1}{tuple(w.shape)}" + ("" if b is None else f" b{i + 1}{tuple(b.shape)}")
            for i, (w, b) in enumerate(self)
        )
        return f"WeightSpace({shapes})"
