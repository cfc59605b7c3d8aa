"""The weight-space graph: neuron spaces and tensors as a networkx multigraph.

Nodes are ``("space", name)`` and ``("tensor", name)``. A tensor node has one edge per axis
to the space that axis indexes (key = axis position, attribute ``character``). Space nodes
record the operations that touch them (``activations``: the activations applied to the space;
``constraints``: the scaling other operations allow, with the reason; ``role``: input,
hidden, output or fixed; ``origin`` and ``ties``: where the space comes from), from which
:mod:`derive.symmetry.group` reads the symmetry. Tensor nodes of kind ``buffer`` (running statistics)
are acted on by the group but are not features of the weight space.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import networkx as nx

from derive.frontend.spec import MLPSpec

if TYPE_CHECKING:
    from derive.frontend.trace import TracedNetwork

__all__ = [
    "space_node",
    "tensor_node",
    "mlp_graph",
    "network_graph",
    "graph_spaces",
    "graph_tensors",
]


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
            constraints=[],
            order=index,
            origin="",
            ties=[],
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


def network_graph(traced: TracedNetwork, name: str, source: str) -> nx.MultiDiGraph:
    """The weight-space graph of a traced network (tied spaces merged into one node).

    Spaces are named ``in``, ``out`` and ``h1, h2, ...`` in the order the forward pass creates
    them; fixed axes ``k<n>`` (kernel offsets), ``p<n>`` (flattened positions) and ``x<n>``
    (spatial positions). Tensors are ``W<k>`` and ``b<k>`` for the k-th layer with parameters.
    """
    graph = nx.MultiDiGraph(name=name, source=source)
    roots = sorted({traced.root(key) for key in traced.spaces})
    names: dict[int, str] = {}
    hidden = 0
    for order, root in enumerate(roots):
        record = traced.spaces[root]
        if record.is_input:
            names[root], role = "in", "input"
        elif record.is_output:
            names[root], role = "out", "output"
        else:
            hidden += 1
            names[root], role = f"h{hidden}", "hidden"
        graph.add_node(
            space_node(names[root]),
            size=record.size,
            role=role,
            activations=list(record.activations),
            constraints=list(record.constraints),
            order=order,
            origin=record.origin,
            ties=list(record.ties),
        )
    for offset, (fixed, (size, what)) in enumerate(sorted(traced.fixed.items())):
        graph.add_node(
            space_node(fixed),
            size=size,
            role="fixed",
            activations=[],
            constraints=[],
            order=len(roots) + offset,
            origin=what,
            ties=[],
        )
    for order, param in enumerate(traced.params):
        if param.kind == "buffer":  # named by its state-dict key (unique, never a feature)
            tensor = param.source_key
        else:
            tensor = f"{'W' if param.kind == 'weight' else 'b'}{param.layer}"
        graph.add_node(
            tensor_node(tensor),
            kind=param.kind,
            layer=param.layer,
            order=order,
            source_key=param.source_key,
            source_shape=param.shape,
        )
        for position, (space, character) in enumerate(param.axes):
            target = space if isinstance(space, str) else names[traced.root(space)]
            graph.add_edge(
                tensor_node(tensor), space_node(target), key=position, character=character
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
