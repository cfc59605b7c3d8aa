"""The pipeline in one place: spec -> weight space -> group -> basis -> plan -> template ->
module -> verification.

>>> derivation = derive(mlp_spec((2, 3, 2), "relu"))   # front end, then the group
>>> derivation.basis                                     # the complete basis (lazy)
>>> derivation.linear_plan                               # the layer plan (lazy)
>>> source = generate(derivation, "linear")               # template -> module source

Every intermediate is a value that prints as a short summary. The layer kinds come from the
registry in :mod:`derive.layers`; ``verify`` (:mod:`derive.verify.runner`) runs every kind's
checks.
"""

from __future__ import annotations

from derive.derivation import Derivation, derive, proxy_derivation, space_sizes, trace_spec
from derive.frontend.options import ArchitectureSpec
from derive.layers import LAYER_KINDS, LayerOptions, generate

__all__ = [
    "Derivation",
    "derive",
    "generate",
    "trace_spec",
    "proxy_derivation",
    "space_sizes",
    "LAYER_KINDS",
    "LayerOptions",
    "spec_command",
]


def spec_command(spec: ArchitectureSpec) -> str:
    """The options that reproduce ``spec`` (used in generated headers)."""
    return spec.options()
