"""The front end: architecture specs (MLP shorthand, spec files, PyTorch modules) traced into a weight space."""
