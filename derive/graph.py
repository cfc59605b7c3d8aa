"""The weight-space graph: neuron spaces and tensors as a networkx multigraph.

Nodes are ``("space", name)`` and ``("tensor", name)``. A tensor node has one edge per axis
to the space that axis indexes (key = axis position, attribute ``character``). Space nodes
record the operations that touch them (``activations``: the activation applied to the space,
``role``: input, hidden or output), from which :mod:`derive.group` reads the symmetry.
"""

from __future__ import annotations

import networkx as nx

from derive.spec import MLPSpec

__all__ = ["space_node", "tensor_node", "mlp_graph", "graph_spaces", "graph_tensors"]


def space_node(name: str) -> tuple[str, str]:
    return ("space", name)


def tensor_node(name: str) -> tuple[str, str]:
    return ("tensor", name)


def _space_name(index: int, num_layers: int) -> str:
    if index == 0:
        return "in"
    if index == num_layers:
        return "out"
    return f"h{index}"


def mlp_graph(spec: MLPSpec) -> nx.MultiDiGraph:
    """The weight-space graph of an MLP: ``W_i`` has axes (h_i: +1, h_{i-1}: -1), ``b_i`` (h_i: +1)."""
    graph = nx.MultiDiGraph(name=spec.name, source=spec.source)
    num_layers = spec.num_layers
    for index, width in enumerate(spec.widths):
        role = "input" if index == 0 else "output" if index == num_layers else "hidden"
        activations = []
        if role == "hidden":
            activations.append((spec.activations[index - 1], f"activation after layer {index}"))
        graph.add_node(
            space_node(_space_name(index, num_layers)),
            size=width,
            role=role,
            activations=activations,
            order=index,
        )
    order = 0
    for layer in range(1, num_layers + 1):
        rows = _space_name(layer, num_layers)
        cols = _space_name(layer - 1, num_layers)
        n_out, n_in = spec.widths[layer], spec.widths[layer - 1]
        module_index = 2 * (layer - 1)
        for kind, axes, shape in (
            ("weight", ((rows, 1), (cols, -1)), (n_out, n_in)),
            ("bias", ((rows, 1),), (n_out,)),
        ):
            name = f"{'W' if kind == 'weight' else 'b'}{layer}"
            graph.add_node(
                tensor_node(name),
                kind=kind,
                layer=layer,
                order=order,
                source_key=f"{module_index}.{kind}",
                source_shape=shape,
            )
            order += 1
            for position, (space, character) in enumerate(axes):
                graph.add_edge(
                    tensor_node(name), space_node(space), key=position, character=character
                )
    return graph


def graph_spaces(graph: nx.MultiDiGraph) -> list[str]:
    """Space names in their declared order."""
    nodes = [
        (data["order"], node[1]) for node, data in graph.nodes(data=True) if node[0] == "space"
    ]
    return [name for _, name in sorted(nodes)]


def graph_tensors(graph: nx.MultiDiGraph) -> list[str]:
    """Tensor names in their declared order."""
    nodes = [
        (data["order"], node[1]) for node, data in graph.nodes(data=True) if node[0] == "tensor"
    ]
    return [name for _, name in sorted(nodes)]
