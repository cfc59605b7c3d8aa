"""The names of the model kinds and tasks (no torch import: the command line reads them)."""

from __future__ import annotations

__all__ = ["CANONICAL_KINDS", "EQUIVARIANT_KINDS", "EXPERIMENT_KINDS", "MODEL_KINDS", "TASK_NAMES"]

#: models built from generated layers
EQUIVARIANT_KINDS = ("hnp", "np", "monomial", "polynomial")
#: every model of the experiment: generated ones, then the baselines
EXPERIMENT_KINDS = (*EQUIVARIANT_KINDS, "statnn", "mlp", "nfn-hnp", "nfn-np")
#: permutation-invariant models on the canonical point of each network's scaling orbit
#: (``nfn_runtime.canonical_scales``), invariant under the whole derived group; measured by
#: ``benchmarks/canonical_tried.py``, not part of the experiment's default list
CANONICAL_KINDS = ("canon-hnp", "canon-statnn")
#: every model kind ``train`` and ``experiment --models`` accept
MODEL_KINDS = (*EXPERIMENT_KINDS, *CANONICAL_KINDS)
#: the experiment's tasks: CNN zoos (one per activation), the INR zoo, the transformer zoo
TASK_NAMES = ("generalization-relu", "generalization-tanh", "inr", "generalization-transformer")
