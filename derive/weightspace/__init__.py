"""The typed weight-space model every stage reads (spaces, axes, tensors, buffers), and its networkx view."""
