"""Layouts read a user's own state-dict keys: explicit renames and matching by order and shape."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from derive.frontend.spec import mlp_spec
from derive.pipeline import derive
from nfn_runtime import state_dicts_from_weight_space, weight_space_from_state_dicts


@pytest.fixture(scope="module")
def layout():
    return derive(mlp_spec((4, 5, 3), "relu")).space.to_layout()


class NamedMLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(4, 5)
        self.drop = nn.Dropout(0.1)
        self.fc2 = nn.Linear(5, 3)


def test_matched_to_named_layers_round_trips(layout):
    model = NamedMLP()
    matched = layout.matched_to(model.state_dict())
    assert [t.source_key for t in matched.tensors] == [
        "fc1.weight",
        "fc1.bias",
        "fc2.weight",
        "fc2.bias",
    ]
    ws = weight_space_from_state_dicts([model.state_dict()], matched)
    torch.testing.assert_close(ws.weights[0][0, 0], model.fc1.weight)
    (back,) = state_dicts_from_weight_space(ws, matched)
    assert list(back) == ["fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"]
    torch.testing.assert_close(back["fc2.bias"], model.fc2.bias)


def test_matched_to_sequential_with_dropout_shifts_indices(layout):
    model = nn.Sequential(nn.Linear(4, 5), nn.Dropout(), nn.ReLU(), nn.Linear(5, 3))
    matched = layout.matched_to(model.state_dict())
    assert [t.source_key for t in matched.tensors] == ["0.weight", "0.bias", "3.weight", "3.bias"]


def test_matched_to_keeps_keys_already_right(layout):
    model = nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 3))
    assert layout.matched_to(model.state_dict()) == layout


def test_matched_to_names_the_tensor_without_an_entry(layout):
    model = nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 2))
    with pytest.raises(ValueError, match=r"shape \(3, 5\) left for tensor 'W2'"):
        layout.matched_to(model.state_dict())


def test_with_source_keys_by_name_or_key(layout):
    renamed = layout.with_source_keys({"W1": "a.weight", "0.bias": "a.bias"})
    assert [t.source_key for t in renamed.tensors][:2] == ["a.weight", "a.bias"]
    assert renamed.tensor("W2").source_key == layout.tensor("W2").source_key
    with pytest.raises(ValueError, match="'nope'"):
        layout.with_source_keys({"nope": "x"})
