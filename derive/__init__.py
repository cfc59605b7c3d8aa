"""Derive complete equivariant layers for neural functional networks."""
