"""Runtime support for neural functional networks: weight-space layouts and features, the
symmetry group acting on them, converters to and from ``state_dict``s and the ``nfn`` package,
equivariant pointwise nonlinearities, and numerical equivariance checks.

Imports torch only; generated layers depend on this package and nothing else of the project.
"""

from nfn_runtime.canonical import absolute_sum, unit_channel_sum, unit_channels
from nfn_runtime.checks import unpack_weight_space
from nfn_runtime.convert import (
    from_nfn,
    state_dicts_from_weight_space,
    to_nfn,
    weight_space_from_state_dicts,
)
from nfn_runtime.group import (
    GroupElement,
    apply_group_element,
    head_relabelling,
    identity_element,
    inverse_permutation,
    sample_group_element,
)
from nfn_runtime.layout import (
    SCALING_KINDS,
    AxisLayout,
    HeadsLayout,
    ScalingKind,
    SpaceLayout,
    TensorLayout,
    WeightSpaceLayout,
)
from nfn_runtime.network import (
    network_symmetry_error,
    transform_buffers,
    transform_network_state,
)
from nfn_runtime.nonlinearity import (
    NONLINEARITY_KINDS,
    EquivariantNonlinearity,
    NonlinearityKind,
    allowed_nonlinearities,
    gated_nonlinearity,
)
from nfn_runtime.outside import (
    OUTSIDE_GROUP_KINDS,
    AxisTransform,
    OutsideGroupTransform,
    apply_axis_transform,
    outside_group_kinds,
    sample_outside_group,
)
from nfn_runtime.testing import (
    EquivariantLayer,
    InvariantLayer,
    assert_equivariant,
    assert_invariant,
    assert_sensitive,
    default_tolerances,
    equivariance_error,
    invariance_error,
    random_weight_space,
    sensitivity_error,
)
from nfn_runtime.tying import TiedCell, tied_cell_index, tied_index, tied_rows
from nfn_runtime.weight_space import WeightSpace

__all__ = [
    "absolute_sum",
    "unit_channel_sum",
    "unit_channels",
    "unpack_weight_space",
    "NONLINEARITY_KINDS",
    "OUTSIDE_GROUP_KINDS",
    "SCALING_KINDS",
    "AxisLayout",
    "AxisTransform",
    "EquivariantLayer",
    "EquivariantNonlinearity",
    "GroupElement",
    "HeadsLayout",
    "InvariantLayer",
    "NonlinearityKind",
    "OutsideGroupTransform",
    "ScalingKind",
    "SpaceLayout",
    "TensorLayout",
    "WeightSpace",
    "WeightSpaceLayout",
    "allowed_nonlinearities",
    "apply_axis_transform",
    "apply_group_element",
    "assert_equivariant",
    "assert_invariant",
    "assert_sensitive",
    "default_tolerances",
    "equivariance_error",
    "from_nfn",
    "gated_nonlinearity",
    "head_relabelling",
    "identity_element",
    "invariance_error",
    "inverse_permutation",
    "network_symmetry_error",
    "outside_group_kinds",
    "random_weight_space",
    "sample_group_element",
    "sample_outside_group",
    "sensitivity_error",
    "state_dicts_from_weight_space",
    "to_nfn",
    "transform_buffers",
    "TiedCell",
    "tied_cell_index",
    "tied_index",
    "tied_rows",
    "transform_network_state",
    "weight_space_from_state_dicts",
]
