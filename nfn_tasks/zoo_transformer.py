"""A zoo of small transformer classifiers of the digits, all networks trained at once.

Every network is a :class:`DigitTransformer`: the 8x8 image cut into 2x2 patches (16 tokens) by
a linear patch embedding (a ``Conv2d`` with kernel and stride 2), a learned position
embedding, one pre-norm block (``LayerNorm``, ``nn.MultiheadAttention`` with 2 heads of
dimension 8 or the same attention written by hand, a residual; ``LayerNorm``, a ReLU MLP
16 -> 32 -> 16, a residual), mean pooling over the tokens and a linear head. Its derived group:
per head a query/key space and a value space (non-zero scaling and permutations), the MLP's
hidden space (positive scaling and permutations) and the residual stream (permutations only,
because of the LayerNorms; with ``norm="none"`` it gets non-zero scaling too).

As in :mod:`nfn_tasks.zoo_cnn`, each network draws its own Adam learning rate, decoupled
weight decay, initialization scale, training fraction and number of epochs. One training step
runs all still-training networks at once, each on its own batch of its own images, with
:func:`transformer_forward` (the module's function written with batched matmuls over the
stacked weights: ``torch.func.vmap`` of the module itself falls back to a per-network loop for
``nn.MultiheadAttention``'s fused kernels, about 0.3 s a step for 16 networks), one backward
pass of the summed losses (the networks share no parameter, so each gets its own gradient) and
a per-network AdamW update. The target is the network's accuracy on held-out digits.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import asdict

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nfn_tasks.data import IMAGE_SIDE, digits, stratified_split
from nfn_tasks.zoo import TransformerZooSettings, Zoo
from nfn_tasks.zoo_training import Hyperparameters, Schedule, adamw_step

__all__ = [
    "DigitTransformer",
    "TRANSFORMER_FACTORIES",
    "digit_transformer",
    "digit_transformer_handwritten",
    "digit_transformer_nonorm",
    "train_transformer_zoo",
    "transformer_forward",
    "transformer_hidden",
    "transformer_probe_keys",
    "transformer_accuracy",
]

CLASSES = 10

Params = dict[str, Tensor]


class DigitTransformer(nn.Module):
    """Patch embedding, position embedding, one (pre-norm) transformer block with a ReLU MLP,
    mean pooling over the tokens, a linear head; inputs ``(B, 1, 8, 8)``."""

    def __init__(
        self,
        patch: int = 2,
        dim: int = 16,
        heads: int = 2,
        hidden: int = 32,
        norm: str = "pre",
        attention: str = "mha",
    ) -> None:
        super().__init__()
        if norm not in ("pre", "none") or attention not in ("mha", "handwritten"):
            raise ValueError(f"bad norm {norm!r} or attention {attention!r}")
        if dim % heads:
            raise ValueError(f"dim {dim} is not divisible by {heads} heads")
        tokens = (IMAGE_SIDE // patch) ** 2
        self.heads, self.norm, self.attention = heads, norm, attention
        self.embed = nn.Conv2d(1, dim, patch, stride=patch)
        self.pos = nn.Parameter(torch.zeros(tokens, dim))
        self.ln1: nn.Module = nn.LayerNorm(dim) if norm == "pre" else nn.Identity()
        self.ln2: nn.Module = nn.LayerNorm(dim) if norm == "pre" else nn.Identity()
        if attention == "mha":
            self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        else:
            self.qkv = nn.Linear(dim, 3 * dim)
            self.proj = nn.Linear(dim, dim)
        self.fc = nn.Linear(dim, hidden)
        self.out = nn.Linear(hidden, dim)
        self.head = nn.Linear(dim, CLASSES)

    def _attend(self, x: Tensor) -> Tensor:
        if self.attention == "mha":
            out: Tensor = self.attn(x, x, x, need_weights=False)[0]
            return out
        B, T, C = x.shape
        qkv = self.qkv(x).reshape(B, T, 3, self.heads, C // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        weights = ((q @ k.transpose(-2, -1)) * (C // self.heads) ** -0.5).softmax(-1)
        merged: Tensor = self.proj((weights @ v).transpose(1, 2).reshape(B, T, C))
        return merged

    def forward(self, x: Tensor) -> Tensor:
        h = self.embed(x).flatten(2).transpose(1, 2) + self.pos  # (B, tokens, dim)
        h = h + self._attend(self.ln1(h))
        h = h + self.out(torch.relu(self.fc(self.ln2(h))))
        logits: Tensor = self.head(h.mean(1))
        return logits


def digit_transformer() -> DigitTransformer:
    """Pre-norm, ``nn.MultiheadAttention`` (the zoo's default architecture)."""
    return DigitTransformer()


def digit_transformer_handwritten() -> DigitTransformer:
    """Pre-norm, attention written by hand (timm's packed q, k, v)."""
    return DigitTransformer(attention="handwritten")


def digit_transformer_nonorm() -> DigitTransformer:
    """No LayerNorm, ``nn.MultiheadAttention``."""
    return DigitTransformer(norm="none")


#: (norm, attention) -> the zero-argument factory ``nfn_tasks.zoo_transformer:NAME``
TRANSFORMER_FACTORIES = {
    ("pre", "mha"): "digit_transformer",
    ("pre", "handwritten"): "digit_transformer_handwritten",
    ("none", "mha"): "digit_transformer_nonorm",
}


def _template(settings: TransformerZooSettings) -> DigitTransformer:
    return DigitTransformer(norm=settings.norm, attention=settings.attention)


def _init_params(
    template: nn.Module, count: int, scales: Tensor, generator: torch.Generator
) -> Params:
    """Per network: weights and biases ``U(-b, b)`` with ``b = scale / sqrt(fan_in)`` (PyTorch's
    Linear / Conv2d default bound; for the packed attention projection the fan-in of one
    row), the position embedding ``U(-b, b)`` with ``b = 0.1 * scale``; LayerNorms start at
    weight 1, bias 0."""
    params: Params = {}
    named = dict(template.named_parameters())
    for key, value in named.items():
        shape = tuple(value.shape)
        if key.startswith("ln"):
            params[key] = value.detach().expand(count, *shape).clone().float()
            continue
        if key == "pos":
            bound = 0.1 * scales.reshape(-1, 1, 1)
        else:
            weight_key = key.replace("bias", "weight") if key.endswith("bias") else key
            fan_in = math.prod(named[weight_key].shape[1:])
            bound = scales.reshape(-1, *([1] * len(shape))) / math.sqrt(fan_in)
        uniform = torch.rand((count, *shape), generator=generator) * 2 - 1
        params[key] = (uniform * bound).float()
    return params


def _keys(attention: str) -> dict[str, str]:
    """Role -> state-dict key of the attention projections (the packed q, k, v rows are ordered
    (q, k, v) x heads x head dimensions in both forms)."""
    if attention == "mha":
        return {
            "qkv.weight": "attn.in_proj_weight",
            "qkv.bias": "attn.in_proj_bias",
            "proj.weight": "attn.out_proj.weight",
            "proj.bias": "attn.out_proj.bias",
        }
    return {key: key for key in ("qkv.weight", "qkv.bias", "proj.weight", "proj.bias")}


def _linear(x: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
    """``x (N, ..., in) @ weight (N, out, in)^T + bias (N, out)`` per network."""
    shape = (bias.shape[0], *([1] * (x.dim() - 2)), bias.shape[1])
    return torch.einsum("n...i,noi->n...o", x, weight) + bias.reshape(shape)


def _layer_norm(x: Tensor, params: Params, key: str, norm: str) -> Tensor:
    if norm == "none":
        return x
    shape = (x.shape[0], *([1] * (x.dim() - 2)), x.shape[-1])
    normed = F.layer_norm(x, x.shape[-1:])
    return normed * params[f"{key}.weight"].reshape(shape) + params[f"{key}.bias"].reshape(shape)


def transformer_probe_keys(attention: str = "mha") -> list[str]:
    """The biases :func:`transformer_hidden` gives activations for, by state-dict key."""
    keys = _keys(attention)
    return ["embed.bias", keys["qkv.bias"], keys["proj.bias"], "fc.bias", "out.bias"]


def _transformer_pass(
    params: Params,
    images: Tensor,
    heads: int,
    norm: str,
    attention: str,
    record: dict[str, Tensor] | None = None,
) -> Tensor:
    """Logits ``(N, B, 10)``; with ``record``, also writes into it, per bias state-dict key of
    :func:`transformer_probe_keys`, the activations that move as that bias's entries, averaged
    over the tokens ``(N, B, width)``: the residual stream after the embedding
    (``embed.bias``), after the attention (its output bias) and after the MLP (``out.bias``);
    the queries, the keys and each head's attention output (the packed q, k, v bias: an output
    moves as its head's value bias, the softmax weights being invariant); the MLP's hidden
    activations (``fc.bias``)."""
    weight = params["embed.weight"]  # (N, dim, 1, p, p)
    count, dim, patch = weight.shape[0], weight.shape[1], weight.shape[-1]
    if images.dim() == 4:
        images = images.expand(count, *images.shape)
    side = IMAGE_SIDE // patch
    batch = images.shape[1]
    patches = images.reshape(count, batch, side, patch, side, patch).permute(0, 1, 2, 4, 3, 5)
    patches = patches.reshape(count, batch, side * side, patch * patch)
    h = _linear(patches, weight.reshape(count, dim, -1), params["embed.bias"])
    h = h + params["pos"].unsqueeze(1)
    keys = _keys(attention)
    seen: dict[str, Tensor] = {} if record is None else {"embed.bias": h}
    x = _layer_norm(h, params, "ln1", norm)
    qkv = _linear(x, params[keys["qkv.weight"]], params[keys["qkv.bias"]])
    tokens, head_dim = qkv.shape[2], dim // heads
    q, k, v = qkv.reshape(count, batch, tokens, 3, heads, head_dim).unbind(3)
    scores = torch.einsum("nbqhd,nbkhd->nbhqk", q, k) * head_dim**-0.5
    mixed = torch.einsum("nbhqk,nbkhd->nbqhd", scores.softmax(-1), v).reshape(h.shape)
    h = h + _linear(mixed, params[keys["proj.weight"]], params[keys["proj.bias"]])
    x = _layer_norm(h, params, "ln2", norm)
    hidden = torch.relu(_linear(x, params["fc.weight"], params["fc.bias"]))
    if record is not None:
        seen[keys["qkv.bias"]] = torch.cat([q.flatten(-2), k.flatten(-2), mixed], dim=-1)
        seen[keys["proj.bias"]] = h
        seen["fc.bias"] = hidden
    h = h + _linear(hidden, params["out.weight"], params["out.bias"])
    if record is not None:
        seen["out.bias"] = h
        record.update({key: value.mean(2) for key, value in seen.items()})
    return _linear(h.mean(2), params["head.weight"], params["head.bias"])


def transformer_forward(
    params: Params, images: Tensor, heads: int = 2, norm: str = "pre", attention: str = "mha"
) -> Tensor:
    """Logits ``(N, B, 10)`` of ``N`` stacked :class:`DigitTransformer` networks (``params``:
    their state dicts stacked) on ``images (N, B, 1, 8, 8)``, or ``(B, 1, 8, 8)`` shared by all;
    the same function as the module, with batched matmuls instead of one call per network."""
    return _transformer_pass(params, images, heads, norm, attention)


def transformer_hidden(
    params: Params, images: Tensor, heads: int = 2, norm: str = "pre", attention: str = "mha"
) -> dict[str, Tensor]:
    """Per bias state-dict key of :func:`transformer_probe_keys`, the activations of stacked
    networks at ``images (P, 1, 8, 8)`` that move as that bias's entries, averaged over the
    tokens, ``(N, P, width)`` (see :func:`_transformer_pass`)."""
    record: dict[str, Tensor] = {}
    _transformer_pass(params, images, heads, norm, attention, record)
    return record


def transformer_accuracy(
    params: Params, images: Tensor, labels: Tensor, norm: str = "pre", attention: str = "mha"
) -> Tensor:
    """``(N,)`` accuracies of stacked networks on ``images``."""
    correct = []
    count = next(iter(params.values())).shape[0]
    with torch.no_grad():
        for start in range(0, count, 64):
            chunk = {key: value[start : start + 64] for key, value in params.items()}
            logits = transformer_forward(chunk, images, norm=norm, attention=attention)
            correct.append((logits.argmax(-1) == labels).double().mean(-1))
    return torch.cat(correct)


def train_transformer_zoo(settings: TransformerZooSettings, progress: bool = False) -> Zoo:
    """Train the zoo described by ``settings`` (deterministic for a given thread count)."""
    generator = torch.Generator().manual_seed(settings.seed)
    template = _template(settings)
    images, labels = digits(torch.float32)
    pool, test = stratified_split(labels, settings.test_images, settings.seed)
    n = settings.networks
    hyper = Hyperparameters.draw(settings, n, generator)
    lr, weight_decay = hyper.lr, hyper.weight_decay
    batch = settings.batch_size
    schedule = Schedule.plan(pool, hyper, batch, generator)
    steps = schedule.steps
    params = _init_params(template, n, hyper.init_scale, generator)
    moments = {key: torch.zeros_like(value) for key, value in params.items()}
    squares = {key: torch.zeros_like(value) for key, value in params.items()}

    total = int(steps.max())
    iterator: Iterable[int] = range(1, total + 1)
    if progress:
        from tqdm.auto import tqdm

        iterator = tqdm(iterator, desc=f"transformer zoo ({n} networks)", unit="step")
    for step in iterator:
        active = (steps >= step).nonzero().flatten()
        index = schedule.batch(active, batch, generator)
        x, y = images[index], labels[index]
        current = {key: value[active].requires_grad_() for key, value in params.items()}
        logits = transformer_forward(current, x, norm=settings.norm, attention=settings.attention)
        # the networks share no parameter: the gradient of the summed losses is each one's own
        losses = F.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="none")
        grads = dict(
            zip(current, torch.autograd.grad(losses.sum() / batch, list(current.values())))
        )
        adamw_step(params, moments, squares, current, grads, active, lr, weight_decay, step)
    test_accuracy = transformer_accuracy(
        params, images[test], labels[test], settings.norm, settings.attention
    )
    train_accuracy = transformer_accuracy(
        params, images[pool], labels[pool], settings.norm, settings.attention
    )
    return Zoo(
        kind="transformer",
        architecture=settings.architecture,
        input_shape=settings.input_shape,
        activation="relu",
        params={key: value.contiguous() for key, value in params.items()},
        targets=test_accuracy.float(),
        groups=torch.arange(n),
        info={
            **schedule.info(hyper, pool),
            "steps": steps,
            "train_accuracy": train_accuracy.float(),
        },
        settings={"kind": "transformer", **asdict(settings)},
    )
