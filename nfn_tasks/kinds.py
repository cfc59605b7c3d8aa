"""The names of the model kinds and tasks (no torch import: the command line reads them)."""

from __future__ import annotations

__all__ = ["EQUIVARIANT_KINDS", "MODEL_KINDS", "TASK_NAMES"]

#: models built from generated layers
EQUIVARIANT_KINDS = ("hnp", "np", "monomial", "polynomial")
#: every model of the experiment: generated ones, then the baselines
MODEL_KINDS = (*EQUIVARIANT_KINDS, "statnn", "mlp", "nfn-hnp", "nfn-np")
#: the experiment's tasks: CNN zoos (one per activation), the INR zoo, the transformer zoo
TASK_NAMES = ("generalization-relu", "generalization-tanh", "inr", "generalization-transformer")
