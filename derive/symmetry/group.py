"""The symmetry group of a weight space, read off the weight-space graph.

Per neuron space: is it permuted, and which diagonal scaling does every operation touching it
allow? Hidden spaces are permuted; input and output spaces only in the NP setting
(``permute="all"``) and never scaled. A space touched by several activations keeps only what
all of them allow (:meth:`Scaling.meet`). ``decided_by`` records the reason, for ``inspect``.
"""

from __future__ import annotations

import networkx as nx

from derive.symmetry.activations import ACTIVATION_REASON, scaling_of
from derive.weightspace.graph import graph_spaces, graph_tensors, space_node, tensor_node
from derive.weightspace.model import Axis, NeuronSpace, Scaling, TensorSpec, WeightSpaceSpec

__all__ = ["derive_spaces", "weight_space_from_graph"]


def _hidden_symmetry(
    activations: list[tuple[str, str]], constraints: list[tuple[Scaling, str]], override: str
) -> tuple[Scaling, str]:
    if override != "auto":
        return Scaling(override), f"--scaling {override} (override)"
    scaling = Scaling.NONZERO
    reasons = []
    for activation, origin in activations:
        allowed = scaling_of(activation)
        scaling = scaling.meet(allowed)
        reasons.append(f"{activation} ({ACTIVATION_REASON[allowed]}) at {origin}")
    for allowed, why in constraints:
        scaling = scaling.meet(allowed)
        reasons.append(f"{allowed.value} scaling only: {why}")
    if not reasons:
        return scaling, "no activation (linear)"
    return scaling, "; ".join(reasons)


def _origin(data: dict[str, object]) -> str:
    """Where a space comes from, and which spaces are tied into it."""
    origin = str(data.get("origin", ""))
    ties = list(data.get("ties", []))  # type: ignore[call-overload]
    if ties:
        origin += "; tied with " + ", ".join(str(t) for t in ties)
    return origin


def derive_spaces(graph: nx.MultiDiGraph, permute: str, scaling: str) -> tuple[NeuronSpace, ...]:
    """Each space of ``graph`` with the permutation and scaling the architecture allows."""
    spaces = []
    for name in graph_spaces(graph):
        data = graph.nodes[space_node(name)]
        role = data["role"]
        origin = _origin(data)
        if role == "fixed":
            spaces.append(NeuronSpace(name, data["size"], False, Scaling.NONE, f"fixed: {origin}"))
        elif role == "hidden":
            kind, reason = _hidden_symmetry(
                data["activations"], data.get("constraints", []), scaling
            )
            where = f" ({origin})" if origin else ""
            spaces.append(
                NeuronSpace(name, data["size"], True, kind, f"hidden space{where}; {reason}")
            )
        else:
            permuted = permute == "all"
            setting = "NP setting: permuted" if permuted else "HNP setting: fixed"
            where = f"; {origin}" if origin else ""
            spaces.append(
                NeuronSpace(
                    name, data["size"], permuted, Scaling.NONE, f"{role} space ({setting}){where}"
                )
            )
    return tuple(spaces)


def weight_space_from_graph(
    graph: nx.MultiDiGraph, permute: str = "hidden", scaling: str = "auto"
) -> WeightSpaceSpec:
    """The typed weight space with its group, from the graph and the symmetry options."""
    spaces = derive_spaces(graph, permute, scaling)
    tensors: list[TensorSpec] = []
    buffers: list[TensorSpec] = []
    for name in graph_tensors(graph):
        node = tensor_node(name)
        data = graph.nodes[node]
        edges = sorted(
            (key, target[1], attrs["character"])
            for _, target, key, attrs in graph.out_edges(node, keys=True, data=True)
        )
        axes = tuple(Axis(space, character) for _, space, character in edges)
        (buffers if data["kind"] == "buffer" else tensors).append(
            TensorSpec(
                name=name,
                kind=data["kind"],
                layer=data["layer"],
                axes=axes,
                source_key=data.get("source_key", ""),
                source_shape=tuple(data.get("source_shape", ())),
            )
        )
    return WeightSpaceSpec(
        name=graph.graph.get("name", "weights"),
        spaces=spaces,
        tensors=tuple(tensors),
        buffers=tuple(buffers),
    )
