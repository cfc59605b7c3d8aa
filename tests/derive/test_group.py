"""The symmetry group per neuron space, read off the weight-space graph, and the graph itself."""

from __future__ import annotations

import itertools

import pytest

from derive.frontend.spec import mlp_spec
from derive.pipeline import derive, trace_spec
from derive.symmetry.group import derive_group
from derive.weightspace.graph import space_node, tensor_node, weight_space_graph
from derive.weightspace.model import NeuronSpace, Scaling

WIDTHS = (2, 3, 3, 2)


def spaces(
    widths=WIDTHS, activation="relu", permute="hidden", scaling="auto"
) -> tuple[NeuronSpace, ...]:
    return derive(mlp_spec(widths, activation, permute=permute, scaling=scaling)).space.spaces


def by_name(widths=WIDTHS, **kwargs) -> dict[str, NeuronSpace]:
    return {s.name: s for s in spaces(widths, **kwargs)}


# ---------------------------------------------------------------------------------------------
# Activation -> scaling of the hidden spaces
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("activation", "expected", "reason"),
    [
        ("relu", Scaling.POSITIVE, "positively homogeneous"),
        ("leaky_relu", Scaling.POSITIVE, "positively homogeneous"),
        ("tanh", Scaling.SIGN, "odd"),
        ("sin", Scaling.SIGN, "odd"),
        ("identity", Scaling.NONZERO, "linear"),
        ("gelu", Scaling.NONE, "neither odd nor homogeneous"),
        ("sigmoid", Scaling.NONE, "neither odd nor homogeneous"),
    ],
)
def test_activation_decides_hidden_scaling(activation, expected, reason):
    result = spaces(activation=activation)
    assert [s.name for s in result] == ["in", "h1", "h2", "out"]
    assert [s.size for s in result] == list(WIDTHS)
    for index, space in enumerate(result[1:-1], start=1):
        assert space.permuted is True
        assert space.scaling is expected
        assert not space.is_fixed
        assert activation in space.decided_by
        assert reason in space.decided_by
        assert f"Activation at '{2 * index - 1}'" in space.decided_by


@pytest.mark.parametrize("activation", ["relu", "tanh", "identity", "gelu"])
def test_hnp_input_and_output_are_fixed(activation):
    result = by_name(activation=activation)
    for name in ("in", "out"):
        space = result[name]
        assert space.permuted is False
        assert space.scaling is Scaling.NONE
        assert space.is_fixed
        assert "HNP" in space.decided_by
    assert "input" in result["in"].decided_by
    assert "output" in result["out"].decided_by


@pytest.mark.parametrize("activation", ["relu", "tanh", "identity", "gelu"])
def test_np_input_and_output_are_permuted_but_unscaled(activation):
    result = by_name(activation=activation, permute="all")
    for name in ("in", "out"):
        space = result[name]
        assert space.permuted is True
        assert space.scaling is Scaling.NONE
        assert not space.is_fixed
        assert "NP setting: permuted" in space.decided_by
    # hidden spaces are unchanged by the permute setting
    hnp = by_name(activation=activation)
    for name in ("h1", "h2"):
        assert result[name] == hnp[name]


@pytest.mark.parametrize("override", ["none", "sign", "positive", "nonzero"])
@pytest.mark.parametrize("permute", ["hidden", "all"])
@pytest.mark.parametrize("activation", ["relu", "tanh", "gelu"])
def test_scaling_override_applies_to_every_hidden_space_only(override, permute, activation):
    result = spaces((2, 3, 4, 3, 2), activation=activation, permute=permute, scaling=override)
    hidden, ends = result[1:-1], (result[0], result[-1])
    for space in hidden:
        assert space.permuted is True
        assert space.scaling is Scaling(override)
        assert "override" in space.decided_by and override in space.decided_by
    for space in ends:
        assert space.scaling is Scaling.NONE
        assert space.permuted is (permute == "all")


def test_mixed_activations_per_layer():
    result = spaces((2, 3, 4, 5, 6, 2), activation=["relu", "tanh", "identity", "gelu"])
    assert [s.scaling for s in result] == [
        Scaling.NONE,
        Scaling.POSITIVE,
        Scaling.SIGN,
        Scaling.NONZERO,
        Scaling.NONE,
        Scaling.NONE,
    ]
    assert [s.size for s in result] == [2, 3, 4, 5, 6, 2]
    assert "relu" in result[1].decided_by and "tanh" not in result[1].decided_by
    assert "tanh" in result[2].decided_by
    assert "identity" in result[3].decided_by
    assert "gelu" in result[4].decided_by


def test_aliases_reach_the_group():
    result = spaces(activation=["Linear", "swish"])
    assert result[1].scaling is Scaling.NONZERO and "identity" in result[1].decided_by
    assert result[2].scaling is Scaling.NONE and "silu" in result[2].decided_by


def test_no_hidden_layer():
    result = spaces((3, 2), activation="relu")
    assert [(s.name, s.size, s.permuted, s.scaling) for s in result] == [
        ("in", 3, False, Scaling.NONE),
        ("out", 2, False, Scaling.NONE),
    ]


def test_weight_space_name_and_tensors():
    derivation = derive(mlp_spec(WIDTHS, "tanh", name="net"))
    space = derivation.space
    assert space.name == "net"
    assert [t.name for t in space.tensors] == ["W1", "b1", "W2", "b2", "W3", "b3"]
    assert [space.shape(t) for t in space.tensors] == [(3, 2), (3,), (3, 3), (3,), (2, 3), (2,)]
    w2 = space.tensor("W2")
    assert [(a.space, a.character) for a in w2.axes] == [("h2", 1), ("h1", -1)]
    assert (w2.kind, w2.layer, w2.source_key, w2.source_shape) == ("weight", 2, "2.weight", (3, 3))
    b3 = space.tensor("b3")
    assert [(a.space, a.character) for a in b3.axes] == [("out", 1)]
    assert (b3.kind, b3.layer, b3.source_key) == ("bias", 3, "4.bias")
    assert space.is_fixed_axis(space.tensor("W1").axes[1])
    assert not space.is_fixed_axis(space.tensor("W1").axes[0])


# ---------------------------------------------------------------------------------------------
# The scaling lattice
# ---------------------------------------------------------------------------------------------

ALL = list(Scaling)
N, S, P, Z = Scaling.NONE, Scaling.SIGN, Scaling.POSITIVE, Scaling.NONZERO


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [
        (P, S, N),
        (S, P, N),
        (Z, N, N),
        (Z, S, S),
        (Z, P, P),
        (Z, Z, Z),
        (S, S, S),
        (P, P, P),
        (N, N, N),
        (N, S, N),
        (N, P, N),
    ],
    ids=lambda v: v.value if isinstance(v, Scaling) else None,
)
def test_meet_table(a, b, expected):
    assert a.meet(b) is expected


def _leq(a: Scaling, b: Scaling) -> bool:
    """The lattice order: a <= b when every scale of kind a is also of kind b."""
    return a.meet(b) is a


@pytest.mark.parametrize("x", ALL, ids=lambda v: v.value)
def test_nonzero_is_top_and_none_is_bottom(x):
    assert Z.meet(x) is x and x.meet(Z) is x
    assert N.meet(x) is N and x.meet(N) is N
    assert x.meet(x) is x


def test_meet_is_commutative_associative_and_greatest_lower_bound():
    for a, b in itertools.product(ALL, repeat=2):
        m = a.meet(b)
        assert m is b.meet(a)
        assert _leq(m, a) and _leq(m, b)
        for c in ALL:
            assert a.meet(b).meet(c) is a.meet(b.meet(c))
            if _leq(c, a) and _leq(c, b):
                assert _leq(c, m)


def test_meet_matches_the_flags():
    for a, b in itertools.product(ALL, repeat=2):
        m = a.meet(b)
        assert m.allows_sign() == (a.allows_sign() and b.allows_sign())
        assert m.allows_positive() == (a.allows_positive() and b.allows_positive())


@pytest.mark.parametrize("exponent", range(-4, 5))
def test_balances(exponent):
    assert Scaling.NONE.balances(exponent) is True
    assert Scaling.SIGN.balances(exponent) is (exponent % 2 == 0)
    assert Scaling.POSITIVE.balances(exponent) is (exponent == 0)
    assert Scaling.NONZERO.balances(exponent) is (exponent == 0)


def test_balances_agrees_with_sample_scales():
    samples = {N: [1.0], S: [1.0, -1.0], P: [0.5, 2.0, 3.0], Z: [-2.0, -0.5, 0.5, 3.0]}
    for kind, scales in samples.items():
        for exponent in range(-3, 4):
            expected = all(abs(d**exponent - 1.0) < 1e-12 for d in scales)
            assert kind.balances(exponent) is expected, (kind, exponent)


def test_scaling_is_a_string_enum():
    assert [s.value for s in Scaling] == ["none", "sign", "positive", "nonzero"]
    assert Scaling("sign") is Scaling.SIGN
    assert Scaling.SIGN == "sign"


# ---------------------------------------------------------------------------------------------
# The weight-space graph
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("widths", [(2, 3, 3, 2), (4, 5), (3, 1, 2, 6, 2)], ids=str)
def test_mlp_spaces_have_widths_roles_and_activations(widths):
    # an MLP spec goes through the tracer like any module: spaces in creation order
    spec = mlp_spec(widths, "tanh", name="g")
    space = trace_spec(spec)
    L = len(widths) - 1
    assert [s.name for s in space.spaces] == ["in", *[f"h{i}" for i in range(1, L)], "out"]
    for index, (s, width) in enumerate(zip(space.spaces, widths)):
        assert s.size == width
        role = "input" if index == 0 else "output" if index == L else "hidden"
        assert s.role == role
        if role == "hidden":
            assert s.activations == (("tanh", f"Activation at '{2 * index - 1}'"),)
        else:
            assert s.activations == ()
    assert space.name == "g"
    assert space.setting == ""  # the group is decided by the next stage
    assert derive_group(space).setting == "permute hidden; scaling auto"


@pytest.mark.parametrize("widths", [(2, 3, 3, 2), (4, 5), (3, 1, 2, 6, 2)], ids=str)
def test_graph_view_tensor_edges(widths):
    space = trace_spec(mlp_spec(widths))
    graph = weight_space_graph(space)
    L = len(widths) - 1
    names = ["in", *[f"h{i}" for i in range(1, L)], "out"]
    assert [t.name for t in space.tensors] == [
        n for layer in range(1, L + 1) for n in (f"W{layer}", f"b{layer}")
    ]
    for layer in range(1, L + 1):
        rows, cols = names[layer], names[layer - 1]
        weight = tensor_node(f"W{layer}")
        edges = sorted(
            (key, target, attrs["character"])
            for _, target, key, attrs in graph.out_edges(weight, keys=True, data=True)
        )
        assert edges == [(0, space_node(rows), 1), (1, space_node(cols), -1)]
        assert graph.nodes[weight]["kind"] == "weight"
        assert graph.nodes[weight]["layer"] == layer
        assert graph.nodes[weight]["source_key"] == f"{2 * (layer - 1)}.weight"
        assert space.tensor(f"W{layer}").source_shape == (widths[layer], widths[layer - 1])
        bias = tensor_node(f"b{layer}")
        edges = [
            (key, target, attrs["character"])
            for _, target, key, attrs in graph.out_edges(bias, keys=True, data=True)
        ]
        assert edges == [(0, space_node(rows), 1)]
        assert graph.nodes[bias]["kind"] == "bias"
        assert space.tensor(f"b{layer}").source_shape == (widths[layer],)
    # tensors only point at spaces, spaces point at nothing
    for node in graph.nodes:
        if node[0] == "space":
            assert graph.out_degree(node) == 0
            assert graph.nodes[node]["size"] == space.space(node[1]).size
        else:
            assert graph.in_degree(node) == 0
    assert graph.number_of_edges() == 3 * L
    assert graph.number_of_nodes() == (L + 1) + 2 * L


def test_graph_square_weight_has_two_edges_to_distinct_spaces():
    # widths equal everywhere: the two axes of W2 still go to different spaces, one edge each
    graph = weight_space_graph(trace_spec(mlp_spec((3, 3, 3, 3))))
    targets = [t for _, t in graph.out_edges(tensor_node("W2"))]
    assert sorted(targets) == sorted([space_node("h1"), space_node("h2")])
