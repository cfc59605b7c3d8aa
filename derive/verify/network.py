"""The group check on the real network (``nfn-derive verify``, every architecture).

The derived group must be a symmetry of the network itself: group elements applied to the
network's parameters (and running statistics) leave its outputs on random inputs unchanged
in float64, while transformations outside the group (a sign flip on a ReLU space, a scale on
a tanh space, decoupled permutations, permutations of fixed axes) change them. The first
half catches a group that is too large (it contains elements that are no symmetry); the second
one a group that is too small (docs/math.md section 6.5).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from functools import partial

import torch
from torch import Tensor, nn

from derive.derivation import Derivation
from derive.verify.checklist import VerifyReport
from nfn_runtime import OUTSIDE_GROUP_KINDS, network_symmetry_error, sample_outside_group
from nfn_runtime.layout import WeightSpaceLayout
from nfn_runtime.outside import OutsideGroupTransform

__all__ = ["network_checks", "NETWORK_TOLERANCE", "MIN_OUTSIDE_CHANGE"]

#: float64 bound on the relative output change under group elements
NETWORK_TOLERANCE = 1e-10
#: a transformation outside the group must change the outputs by more than this (relative)
MIN_OUTSIDE_CHANGE = 1e-6
#: per kind of outside transformation, at most this many spaces (a random sample) are tried:
#: every one costs a pass over the whole network (RegNet-Y has a thousand spaces)
MAX_OUTSIDE_SPACES = 16


def _randomize_constants(model: nn.Module, generator: torch.Generator) -> None:
    """Give random values to parameters whose entries are all equal (zero-initialized heads,
    layer scales of 1e-6, unit norm weights): a constant tensor hides what happens on its axes,
    and a tiny layer scale hides the branch behind it."""
    with torch.no_grad():
        for parameter in model.parameters():
            flat = parameter.reshape(-1)
            if flat.numel() < 2 or not bool((flat == flat[0]).all()):
                continue
            noise = torch.randn(parameter.shape, generator=generator, dtype=parameter.dtype)
            if parameter.dim() >= 2:
                parameter.copy_(noise / parameter[0].numel() ** 0.5)
            else:
                parameter.copy_(0.5 + 0.5 * noise)


def _test_network(module: nn.Module, seed: int, input_shape: tuple[int, ...]) -> nn.Module:
    """A float64 copy in eval mode with random values in its constant parameters, whose
    BatchNorm running statistics are those of its own activations (one pass over random
    inputs), then perturbed, so that the action on them is exercised while signals still reach
    the output (statistics far from the activations' would drown them in constants)."""
    model = copy.deepcopy(module).double()
    generator = torch.Generator().manual_seed(seed)
    _randomize_constants(model, generator)
    norms = [
        sub
        for sub in model.modules()
        if isinstance(sub, nn.modules.batchnorm._BatchNorm) and sub.track_running_stats
    ]
    with torch.no_grad():
        if norms:
            momenta = [sub.momentum for sub in norms]
            for sub in norms:
                sub.reset_running_stats()
                sub.momentum = None  # a plain average over the calibration pass
            model.train()
            with torch.random.fork_rng():  # dropout during the pass, without touching the caller
                torch.manual_seed(seed)
                model(torch.randn((16, *input_shape), generator=generator, dtype=torch.float64))
            for sub, momentum in zip(norms, momenta):
                sub.momentum = momentum
        for sub in norms:
            assert sub.running_mean is not None and sub.running_var is not None
            spread = sub.running_var.sqrt()
            noise = torch.randn(sub.running_mean.shape, generator=generator, dtype=torch.float64)
            sub.running_mean.add_(0.1 * spread * noise)
            factor = torch.rand(sub.running_var.shape, generator=generator, dtype=torch.float64)
            sub.running_var.mul_(0.8 + 0.4 * factor).clamp_(min=1e-3)
    return model.eval()


#: transforms that are symmetries of the network when --scaling chose fewer scalings than it has
_SCALE_KINDS = frozenset({"negative_scale", "scale_on_sign_space", "positive_scale"})


def _outside(
    layout: WeightSpaceLayout, kind: str, generator: torch.Generator, space: str
) -> OutsideGroupTransform | None:
    """An outside transformation of ``kind`` on ``space``, or None where it does not apply."""
    try:
        return sample_outside_group(layout, kind, generator, space=space)
    except ValueError:
        return None


def network_checks(derivation: Derivation, report: VerifyReport, samples: int, seed: int) -> None:
    """Add the network group checks to ``report``: the group applied to the real network's
    own parameters must not change its outputs, and transforms outside it must."""
    spec = derivation.spec
    model = _test_network(spec.build(), seed, tuple(spec.input_shape))
    layout = derivation.space.to_layout()
    generator = torch.Generator().manual_seed(seed)
    # inputs at four magnitudes, so that saturating activations (relu6, clamps) leave their
    # linear range and a scaling they do not allow shows in the outputs
    magnitudes = torch.tensor([0.1, 1.0, 10.0, 100.0], dtype=torch.float64)
    inputs = torch.randn((4, *spec.input_shape), generator=generator, dtype=torch.float64)
    inputs = inputs * magnitudes.view(4, *([1] * len(spec.input_shape)))
    with torch.no_grad():
        outputs = model(inputs)  # f(x; theta), computed once for every transformation
    run = _Run(model, layout, inputs, outputs, generator)
    report.run("network group check", partial(_group_check, run, report, samples))
    report.run("network outside group", partial(_outside_check, run, report, spec.scaling))


@dataclass(frozen=True)
class _Run:
    """The float64 network, its layout, the inputs and their outputs, shared by both checks."""

    model: nn.Module
    layout: WeightSpaceLayout
    inputs: Tensor
    outputs: Tensor
    generator: torch.Generator

    def change(
        self, transform: OutsideGroupTransform | None = None, move_heads: bool = False
    ) -> float:
        """The largest relative output change over the inputs under ``transform`` (None: a
        sampled group element; ``move_heads``: one that relabels attention heads)."""
        return network_symmetry_error(
            self.model,
            self.layout,
            self.inputs,
            transform,
            generator=self.generator,
            per_sample=True,
            reference=self.outputs,
            move_heads=move_heads,
        )


def _group_check(run: _Run, report: VerifyReport, samples: int) -> None:
    """Sampled group elements leave the outputs unchanged; where the group permutes attention
    heads as wholes, the first one relabels them."""
    heads = bool(run.layout.heads)
    worst = max(run.change(move_heads=heads and k == 0) for k in range(samples))
    moved = (
        f" (the first relabelling the heads of {len(run.layout.heads)} attention(s))"
        if heads
        else ""
    )
    report.add(
        "network group check",
        worst <= NETWORK_TOLERANCE,
        f"max relative output change {worst:.2e} over {samples} group elements{moved} applied "
        f"to the network's own parameters (float64, bound {NETWORK_TOLERANCE:g})",
    )


def _outside_check(run: _Run, report: VerifyReport, scaling: str) -> None:
    """Every transformation outside the group that applies changes the outputs."""
    layout, generator = run.layout, run.generator
    changes: list[tuple[str, str, float]] = []
    sampled = False
    for kind in OUTSIDE_GROUP_KINDS:
        # every space on small networks; else the first MAX_OUTSIDE_SPACES where the kind
        # applies, in a random order
        count = len(layout.spaces)
        order: list[int] = (
            list(range(count))
            if count <= MAX_OUTSIDE_SPACES
            else torch.randperm(count, generator=generator).tolist()
        )
        transforms: list[OutsideGroupTransform] = []
        for index in order:
            transform = _outside(layout, kind, generator, layout.spaces[index].name)
            if transform is None:
                continue
            if len(transforms) == MAX_OUTSIDE_SPACES:
                sampled = True
                break
            transforms.append(transform)
        for transform in transforms:
            changes.append((kind, transform.space, run.change(transform)))
    if not changes:
        report.add("network outside group", True, "no transformation outside the group applies")
        return
    unchanged = [(k, s, c) for k, s, c in changes if not c > MIN_OUTSIDE_CHANGE]
    # --scaling other than auto chooses a subgroup on purpose: scalings the network allows
    # beyond it are expected, and said, not failed
    chosen = scaling != "auto"
    expected = [(k, s, c) for k, s, c in unchanged if chosen and k in _SCALE_KINDS]
    unexpected = [entry for entry in unchanged if entry not in expected]
    smallest = min(c for _, _, c in changes)
    kinds = ", ".join(sorted({k for k, _, _ in changes}))
    if unexpected:
        detail = "outputs unchanged (the group may be too small) under " + ", ".join(
            f"{k} on {s} ({c:.1e})" for k, s, c in unexpected[:3]
        )
    elif expected:
        spaces = ", ".join(sorted({s for _, s, _ in expected}))
        detail = (
            f"{len(changes) - len(expected)} of {len(changes)} transformations change the "
            f"outputs; scalings of {spaces} do not: symmetries of the network outside the "
            f"subgroup chosen by --scaling {scaling}"
        )
    else:
        detail = (
            f"all {len(changes)} transformations outside the group change the outputs "
            f"(smallest relative change {smallest:.2e}; kinds {kinds}"
            + (f"; at most {MAX_OUTSIDE_SPACES} random spaces per kind" if sampled else "")
            + ")"
        )
    report.add("network outside group", not unexpected, detail)
