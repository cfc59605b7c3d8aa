"""The complete bases: equivariant linear maps, invariant functionals and polynomial terms (sympy)."""
