"""Derive complete equivariant layers for neural functional networks."""

__version__ = "0.1.0"
