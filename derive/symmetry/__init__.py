"""The symmetry group of a weight space: which spaces are permuted, and which scaling each allows."""
