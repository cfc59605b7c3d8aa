"""Grouped convolutions, channel splits and channel shuffles (ResNeXt, RegNet, ShuffleNet v2,
written by hand): the spaces a group or a split reads are split into parts, parameters
become one tensor per part with its state-dict slice, and the group derived is the product
of the parts' groups. That is a subgroup of the exact group of a grouped convolution (which
also permutes whole groups); the dimensions of both are counted here by orbits."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from derive.errors import SpecError
from derive.pipeline import derive, verify
from derive.weightspace.model import Scaling, WeightSpaceSpec
from nfn_runtime import state_dicts_from_weight_space, weight_space_from_state_dicts


class GroupedBlock(nn.Module):
    """ResNeXt's bottleneck without the shortcut: 1x1, grouped 3x3 (BN, ReLU), 1x1."""

    def __init__(self, width: int = 4, groups: int = 2, bias: bool = False) -> None:
        super().__init__()
        self.a = nn.Conv2d(1, width, 1, bias=bias)
        self.bn_a = nn.BatchNorm2d(width)
        self.b = nn.Conv2d(width, width, 3, padding=1, groups=groups, bias=bias)
        self.bn_b = nn.BatchNorm2d(width)
        self.c = nn.Conv2d(width, 2, 1)

    def forward(self, x):
        y = F.relu(self.bn_a(self.a(x)))
        y = F.relu(self.bn_b(self.b(y)))
        return self.c(y).mean((2, 3))


class SEGrouped(nn.Module):
    """RegNet-Y's block: grouped conv, then squeeze-excite, on a residual."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, 4, 1)
        self.a = nn.Conv2d(4, 4, 1)
        self.b = nn.Conv2d(4, 4, 3, padding=1, groups=2)
        self.se1 = nn.Conv2d(4, 2, 1)
        self.se2 = nn.Conv2d(2, 4, 1)
        self.c = nn.Conv2d(4, 4, 1)
        self.head = nn.Linear(4, 2)

    def forward(self, x):
        x = F.relu(self.stem(x))
        y = F.relu(self.b(F.relu(self.a(x))))
        gate = torch.sigmoid(self.se2(F.relu(self.se1(y.mean((2, 3), keepdim=True)))))
        x = F.relu(x + self.c(y * gate))
        return self.head(x.mean((2, 3)))


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    batch, channels, height, width = x.shape
    x = x.view(batch, groups, channels // groups, height, width)
    return torch.transpose(x, 1, 2).contiguous().view(batch, channels, height, width)


class ShuffleUnit(nn.Module):
    """ShuffleNet v2's stride-1 unit twice: chunk, a branch on one half, concatenation,
    channel shuffle (so the second unit's chunk mixes both halves of the first)."""

    def __init__(self, width: int = 8) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, width, 1)
        half = width // 2
        self.branches = nn.ModuleList(
            nn.Sequential(
                nn.Conv2d(half, half, 1, bias=False),
                nn.BatchNorm2d(half),
                nn.ReLU(),
                nn.Conv2d(half, half, 3, padding=1, groups=half, bias=False),
                nn.BatchNorm2d(half),
                nn.Conv2d(half, half, 1, bias=False),
                nn.BatchNorm2d(half),
                nn.ReLU(),
            )
            for _ in range(2)
        )
        self.head = nn.Linear(width, 2)

    def forward(self, x):
        x = F.relu(self.stem(x))
        for branch in self.branches:
            x1, x2 = x.chunk(2, dim=1)
            x = channel_shuffle(torch.cat((x1, branch(x2)), dim=1), 2)
        return self.head(x.mean((2, 3)))


def _sources(space: WeightSpaceSpec, key: str):
    return [t for t in (*space.tensors, *space.buffers) if t.source_key == key]


def test_grouped_convolution_splits_its_input_and_output_into_groups():
    derivation = derive(GroupedBlock(), (1, 4, 4))
    space = derivation.space
    grouped = _sources(space, "b.weight")
    # (the rows carry no output scaling: the BatchNorm after the conv takes it)
    assert [[(a.space, a.character) for a in t.axes[:2]] for t in grouped] == [
        [("h3", 0), ("h1", -1)],
        [("h4", 0), ("h2", -1)],
    ]
    assert [t.source_slice for t in grouped] == [((0, 0, 2, 1),), ((0, 2, 4, 1),)]
    # the layer before is cut at the group bound: one tensor per group, its rows sliced
    assert [t.source_slice for t in _sources(space, "a.weight")] == [
        ((0, 0, 2, 1),),
        ((0, 2, 4, 1),),
    ]
    assert [t.source_slice for t in _sources(space, "bn_a.running_var")] == [
        ((0, 0, 2, 1),),
        ((0, 2, 4, 1),),
    ]
    hidden = [s for s in space.spaces if s.role == "hidden"]
    assert [s.size for s in hidden] == [2, 2, 2, 2]
    assert all(s.scaling is Scaling.POSITIVE for s in hidden)  # BN -> ReLU keeps them
    assert "group 0 of 2" in space.space("h1").origin
    report = verify(derivation, samples=2, only=["network", "linear", "invariant"])
    assert report.ok, report.text()


def test_parts_round_trip_through_the_state_dict():
    for model, shape in ((GroupedBlock(bias=True), (1, 4, 4)), (ShuffleUnit(), (1, 3, 3))):
        layout = derive(model, shape).space.to_layout()
        state = model.state_dict()
        ws = weight_space_from_state_dicts([state], layout)
        (back,) = state_dicts_from_weight_space(ws, layout)
        for key, value in back.items():
            torch.testing.assert_close(value, state[key])


def test_squeeze_excite_gate_splits_its_expansion_to_match_the_groups():
    derivation = derive(SEGrouped(), (1, 4, 4))
    space = derivation.space
    expand = _sources(space, "se2.weight")
    assert len(expand) == 2 and [t.source_slice for t in expand] == [
        ((0, 0, 2, 1),),
        ((0, 2, 4, 1),),
    ]
    report = verify(derivation, samples=2, only=["network", "linear"])
    assert report.ok, report.text()


def test_channel_shuffle_interleaves_the_parts():
    derivation = derive(ShuffleUnit(), (1, 3, 3))
    space = derivation.space
    # the second unit's branch reads the odd channels of the first shuffle's output
    first = _sources(space, "branches.1.0.weight")
    assert all(t.source_slice is None or t.source_slice[0][0] == 1 for t in first)
    head = _sources(space, "head.weight")
    columns = sorted(
        c for t in head for c in range(*t.source_slice[0][1:]) if t.source_slice is not None
    )
    assert columns == list(range(8))  # every column once, read with strides
    assert max(t.source_slice[0][3] for t in head) > 1
    report = verify(derivation, samples=2, only=["network", "linear", "invariant"])
    assert report.ok, report.text()


@pytest.mark.parametrize(
    ("forward", "message"),
    [
        (lambda m, x: m.fc(torch.cat(m.conv(x).chunk(2, dim=2), dim=2).mean((2, 3))), "dim 2"),
        (
            lambda m, x: m.fc2(m.conv(x).view(x.shape[0], 2, 2, 4, 4).mean(1).mean((2, 3))),
            "only a channel shuffle",
        ),
        (
            lambda m, x: m.fc3(channel_shuffle(m.conv(x), 2).flatten(1)),
            "after a channel shuffle",
        ),
        (lambda m, x: m.fc(m.conv(x).unsqueeze(2).mean((2, 3, 4))), None),
    ],
    ids=[
        "chunk-positions",
        "view-then-mean",
        "flatten-after-shuffle",
        "unsqueeze-is-not-a-shuffle",
    ],
)
def test_split_errors_name_the_operation(forward, message):
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(1, 4, 1)
            self.fc = nn.Linear(4, 2)
            self.fc2 = nn.Linear(2, 2)
            self.fc3 = nn.Linear(64, 2)

        def forward(self, x):
            return forward(self, x)

    if message is None:
        net = Net()
        del net.fc2, net.fc3  # unused here
        derive(net, (1, 4, 4))
        return
    with pytest.raises(SpecError) as info:
        derive(Net(), (1, 4, 4))
    assert message in str(info.value), str(info.value)


# -- the subgroup and the exact group of a grouped convolution, by orbit counting ----------


def _entries(space: WeightSpaceSpec) -> list[tuple[str, tuple[int, ...]]]:
    return [
        (t.name, index)
        for t in space.tensors
        for index in itertools.product(*(range(space.space(a.space).size) for a in t.axes))
    ]


def _space_moves(space: WeightSpaceSpec) -> list[dict[str, list[int]]]:
    """Generators of the permutations of every hidden space (a transposition and a cycle)."""
    moves = []
    for s in space.spaces:
        if s.role == "hidden" and s.size > 1:
            moves.append({s.name: [1, 0, *range(2, s.size)]})
            moves.append({s.name: [*range(1, s.size), 0]})
    return moves


def _orbit_count(space: WeightSpaceSpec, generators) -> int:
    """Orbits of the group generated by ``generators`` on pairs of weight-space entries:
    the dimension of its equivariant linear maps of the weight space (permutations only)."""
    entries = _entries(space)
    position = {entry: i for i, entry in enumerate(entries)}
    images = [[position[g(entry)] for entry in entries] for g in generators]
    n = len(entries)
    parent = list(range(n * n))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for image in images:
        for i in range(n):
            for j in range(n):
                a, b = find(i * n + j), find(image[i] * n + image[j])
                if a != b:
                    parent[a] = b
    return len({find(i) for i in range(n * n)})


def _apply_space_move(space: WeightSpaceSpec, move: dict[str, list[int]]):
    def g(entry):
        name, index = entry
        axes = space.tensor(name).axes
        return name, tuple(move[a.space][i] if a.space in move else i for a, i in zip(axes, index))

    return g


def _block_swap(space: WeightSpaceSpec, grouped_key: str, i: int, j: int):
    """Swap whole groups i and j of a grouped convolution: their input and output spaces
    (and every tensor on them) trade places."""
    pieces = [t for t in space.tensors if t.source_key == grouped_key]
    rename: dict[str, str] = {}
    for a, b in ((pieces[i], pieces[j]), (pieces[j], pieces[i])):
        for axis_a, axis_b in zip(a.axes[:2], b.axes[:2]):
            rename[axis_a.space] = axis_b.space
    by_shape = {(t.source_key, tuple(a.space for a in t.axes)): t.name for t in space.tensors}

    def g(entry):
        name, index = entry
        t = space.tensor(name)
        spaces = tuple(rename.get(a.space, a.space) for a in t.axes)
        return by_shape[t.source_key, spaces], index

    return g


def grouped_dimensions(groups: int, per_group: int) -> tuple[int, int, int]:
    """(engine basis, product subgroup by orbits, exact wreath product by orbits) for a
    1x1 -> grouped 1x1 -> 1x1 network on one position, permutations only."""
    width = groups * per_group
    model = nn.Sequential(
        nn.Conv2d(1, width, 1),
        nn.Tanh(),
        nn.Conv2d(width, width, 1, groups=groups),
        nn.Tanh(),
        nn.Conv2d(width, 1, 1),
    )
    derivation = derive(model, (1, 1, 1), scaling="none")
    space = derivation.space
    moves = [_apply_space_move(space, m) for m in _space_moves(space)]
    swaps = [_block_swap(space, "2.weight", 0, k) for k in range(1, groups)]
    linear = derivation.basis.dim
    return linear, _orbit_count(space, moves), _orbit_count(space, moves + swaps)


@pytest.mark.parametrize(("groups", "per_group"), [(2, 2), (2, 3)])
def test_subgroup_basis_matches_orbits_and_exceeds_the_exact_group(groups, per_group):
    engine, subgroup, exact = grouped_dimensions(groups, per_group)
    assert engine == subgroup
    assert subgroup > exact


def test_orbit_count_matches_the_engine_without_groups():
    model = nn.Sequential(nn.Linear(1, 3), nn.Tanh(), nn.Linear(3, 1))
    derivation = derive(model, (1,), scaling="none")
    moves = [_apply_space_move(derivation.space, m) for m in _space_moves(derivation.space)]
    linear = derivation.basis.dim
    assert linear == _orbit_count(derivation.space, moves)


def test_splitting_the_input_channels_is_refused():
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Conv2d(4, 2, 1)
            self.b = nn.Conv2d(4, 2, 1)
            self.head = nn.Linear(4, 2)

        def forward(self, x):
            return self.head((x + torch.cat([self.a(x), self.b(x)], 1)).mean((2, 3)))

    with pytest.raises(SpecError, match="splits the network input's channels into parts"):
        derive(Net(), (4, 3, 3))
