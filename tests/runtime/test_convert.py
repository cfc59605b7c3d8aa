"""Converters between state dicts, WeightSpace and nfn's WeightSpaceFeatures."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from nfn_runtime import (
    WeightSpace,
    from_nfn,
    random_weight_space,
    state_dicts_from_weight_space,
    to_nfn,
    weight_space_from_state_dicts,
)


def test_mlp_state_dict_round_trip(zoo: Any) -> None:
    widths, activations = (3, 5, 4, 2), ["relu", "tanh"]
    torch.manual_seed(0)
    models = [zoo.mlp_network(widths, activations) for _ in range(3)]
    layout = zoo.mlp(widths, activations)
    ws = weight_space_from_state_dicts([m.state_dict() for m in models], layout)
    assert (ws.batch_size, ws.channels) == (3, 1)
    assert [tuple(w.shape) for w in ws.weights] == [(3, 1, 5, 3), (3, 1, 4, 5), (3, 1, 2, 4)]
    torch.testing.assert_close(ws.weights[1][2, 0], models[2][2].weight.detach(), rtol=0, atol=0)
    back = state_dicts_from_weight_space(ws, layout)
    for model, state_dict in zip(models, back):
        assert list(state_dict) == [
            "0.weight",
            "0.bias",
            "2.weight",
            "2.bias",
            "4.weight",
            "4.bias",
        ]
        for key, value in model.state_dict().items():
            assert torch.equal(state_dict[key], value)


def test_flatten_transition_reshapes_in_source_order(zoo: Any) -> None:
    torch.manual_seed(0)
    model, layout = zoo.conv_network(), zoo.conv()
    ws = weight_space_from_state_dicts(model.state_dict(), layout)
    linear = model[5].weight.detach()
    assert tuple(ws.weights[2].shape) == (1, 1, 2, 4, 16)
    # entry (o, c, p) is the weight of flattened input feature c * 16 + p
    assert ws.weights[2][0, 0, 1, 3, 5] == linear[1, 3 * 16 + 5]
    assert tuple(ws.weights[0].shape) == (1, 1, 3, 2, 3, 3)
    (back,) = state_dicts_from_weight_space(ws, layout)
    assert back["5.weight"].shape == (2, 64)
    for key, value in model.state_dict().items():
        assert torch.equal(back[key], value)


def test_single_state_dict_and_dtype(zoo: Any) -> None:
    layout = zoo.mlp((3, 4, 2), ["relu"])
    model = zoo.mlp_network((3, 4, 2), ["relu"]).float()
    ws = weight_space_from_state_dicts(model.state_dict(), layout, dtype=torch.float64)
    assert ws.batch_size == 1 and ws.dtype == torch.float64
    assert weight_space_from_state_dicts(model.state_dict(), layout).dtype == torch.float32


def test_missing_keys_and_wrong_shapes_are_named(zoo: Any) -> None:
    layout = zoo.mlp((3, 4, 2), ["relu"])
    state = dict(zoo.mlp_network((3, 4, 2), ["relu"]).state_dict())
    del state["2.bias"]
    state["0.weight"] = torch.zeros(4, 5)
    with pytest.raises(ValueError) as info:
        weight_space_from_state_dicts([state], layout)
    message = str(info.value)
    assert "missing key '2.bias' (tensor 'b2') in state dict 0" in message
    assert (
        "wrong shape for '0.weight' (tensor 'W1') in state dict 0: expected (4, 3), got (4, 5)"
        in message
    )


def test_channel_selection(zoo: Any) -> None:
    layout = zoo.mlp((3, 4, 2), ["relu"])
    ws = random_weight_space(layout, batch=2, channels=3)
    with pytest.raises(ValueError, match="3 channels; pass channel="):
        state_dicts_from_weight_space(ws, layout)
    state_dicts = state_dicts_from_weight_space(ws, layout, channel=2)
    assert len(state_dicts) == 2
    assert torch.equal(state_dicts[1]["2.bias"], ws.biases[1][1, 2])  # type: ignore[index]


def test_nfn_round_trip(zoo: Any) -> None:
    from nfn.common import WeightSpaceFeatures

    layout = zoo.mlp((3, 4, 4, 2), ["relu", "relu"])
    ws = random_weight_space(layout, batch=2, channels=3)
    features = to_nfn(ws)
    assert isinstance(features, WeightSpaceFeatures)
    assert len(features) == 3
    back = from_nfn(features)
    assert isinstance(back, WeightSpace)
    for x, y in zip(ws.tensors(), back.tensors()):
        assert x is y


def test_nfn_layers_run_on_converted_features(zoo: Any) -> None:
    from nfn.common import network_spec_from_wsfeat
    from nfn.layers import HNPLinear

    layout = zoo.mlp((3, 4, 4, 2), ["relu", "relu"])
    ws = random_weight_space(layout, batch=2, channels=1, dtype=torch.float32)
    features = to_nfn(ws)
    layer = HNPLinear(network_spec_from_wsfeat(features), in_channels=1, out_channels=2)
    out = from_nfn(layer(features))
    assert out.channels == 2 and out.batch_size == 2


def test_to_nfn_needs_biases(zoo: Any) -> None:
    layout = zoo.mlp((3, 4, 2), ["relu"], bias=[True, False])
    with pytest.raises(ValueError, match=r"layer\(s\) 2 have none"):
        to_nfn(random_weight_space(layout))
    with pytest.raises(TypeError, match="WeightSpaceFeatures"):
        from_nfn((1, 2))
