"""The networkx view of a weight space, for graph algorithms and for users who want a graph.

Nodes are ``("space", name)`` and ``("tensor", name)``. A tensor node has one edge per axis to
the space that axis indexes (key = axis position, attribute ``character``). Space nodes carry
``size``, ``role``, ``permuted`` and ``scaling``; tensor nodes ``kind``, ``layer`` and
``source_key`` (buffers are ``kind="buffer"``). The view is derived from the typed model
(:class:`~derive.weightspace.model.WeightSpaceSpec`) and never read back.
"""

from __future__ import annotations

import networkx as nx

from derive.weightspace.model import WeightSpaceSpec

__all__ = ["space_node", "tensor_node", "weight_space_graph"]


def space_node(name: str) -> tuple[str, str]:
    return ("space", name)


def tensor_node(name: str) -> tuple[str, str]:
    return ("tensor", name)


def weight_space_graph(space: WeightSpaceSpec) -> nx.MultiDiGraph:
    """Spaces and tensors (buffers included) as a bipartite multigraph."""
    graph = nx.MultiDiGraph(name=space.name, source=space.source)
    for s in space.spaces:
        graph.add_node(
            space_node(s.name),
            size=s.size,
            role=s.role,
            permuted=s.permuted,
            scaling=s.scaling.value,
        )
    for t in (*space.tensors, *space.buffers):
        graph.add_node(tensor_node(t.name), kind=t.kind, layer=t.layer, source_key=t.source_key)
        for position, axis in enumerate(t.axes):
            graph.add_edge(
                tensor_node(t.name),
                space_node(axis.space),
                key=position,
                character=axis.character,
            )
    return graph
