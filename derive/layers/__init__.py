"""Layer kinds as plug-ins (:mod:`derive.layers.kind`). Importing this package registers every
kind, in the order below (the order of ``--layer`` choices and of ``verify``'s checks): a new
kind is a module here plus one registration line."""

from derive.layers import invariant, linear, polynomial, polynomial_invariant
from derive.layers.kind import LAYER_KINDS, LayerKind, LayerOptions, generate, layer_kind, register

register(linear.LINEAR)
register(invariant.INVARIANT)
register(polynomial.POLYNOMIAL)
register(polynomial_invariant.POLYNOMIAL_INVARIANT)

__all__ = ["LAYER_KINDS", "LayerKind", "LayerOptions", "generate", "layer_kind", "register"]
