"""Every model kind learns (its loss drops on a fixed batch), the training loop reports sane
metrics and checkpoints, the metrics themselves are right."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from nfn_tasks.kinds import MODEL_KINDS
from nfn_tasks.models import ModelConfig, build_model, calibrate, count_parameters
from nfn_tasks.train import TrainConfig, kendall_tau, task_data, task_loss, train_model

MODEL = ModelConfig(channels=4, layers=2, invariant_dim=8, head_hidden=16)
CONFIG = TrainConfig(epochs=2, batch_size=8, lr=3e-3)


@pytest.mark.parametrize("kind", MODEL_KINDS)
@pytest.mark.parametrize("name", ["generalization-relu", "inr"])
def test_loss_drops(zoos, name, kind) -> None:
    task = "inr" if name == "inr" else "generalization"
    data = task_data(zoos[name], task, CONFIG)
    batch = data.weights.map(lambda t: t.index_select(0, data.train[:16]))
    targets = data.targets[data.train[:16]]
    torch.manual_seed(0)
    model = build_model(kind, data.zoo.architecture, data.zoo.input_shape, batch, data.outputs,
                        MODEL)  # fmt: skip
    calibrate(model, batch)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(30):
        loss = task_loss(task, model(batch), targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    # the binary cross-entropy against accuracies cannot go below their entropy: measure the
    # drop of the excess loss over that floor
    floor = float(task_loss(task, torch.logit(targets.double(), eps=1e-9).unsqueeze(1), targets)) if (
        task == "generalization"
    ) else 0.0  # fmt: skip
    assert losses[-1] - floor < 0.8 * (losses[0] - floor), (floor, losses)
    assert count_parameters(model) > 0


def test_train_model_end_to_end(zoos, tmp_path: Path) -> None:
    data = task_data(zoos["inr"], "inr", CONFIG)
    checkpoint = tmp_path / "model.pt"
    result = train_model("monomial", data, CONFIG, MODEL, checkpoint=checkpoint)
    assert 0.0 <= result.test_metric <= 1.0
    assert 1 <= result.best_epoch <= CONFIG.epochs and len(result.history) == CONFIG.epochs
    assert result.parameters == count_parameters(result.model)
    saved = torch.load(checkpoint, weights_only=True)
    assert saved["kind"] == "monomial" and saved["epoch"] == result.best_epoch
    for key, value in result.model.state_dict().items():
        assert torch.equal(saved["state_dict"][key], value)
    summary = result.summary()
    assert summary["kind"] == "monomial" and summary["task"] == "inr"


def test_splits_are_disjoint(zoos) -> None:
    data = task_data(zoos["inr"], "inr", CONFIG)
    parts = [set(data.zoo.groups[index].tolist()) for index in (data.train, data.val, data.test)]
    assert not parts[0] & parts[1] and not parts[0] & parts[2] and not parts[1] & parts[2]
    assert sum(len(index) for index in (data.train, data.val, data.test)) == len(data.zoo)


def test_weights_are_normalized_per_tensor(zoos) -> None:
    data = task_data(zoos["generalization-relu"], "generalization", CONFIG)
    for name, value in data.weights.named(data.layout).items():
        rms = value.index_select(0, data.train).double().pow(2).mean().sqrt()
        assert float(rms) == pytest.approx(1.0, rel=1e-4), name
        raw = data.zoo.params[data.layout.tensor(name).source_key]
        assert torch.allclose(value.flatten(1) * data.scales[name], raw.flatten(1), rtol=1e-5)


def test_task_checks(zoos) -> None:
    with pytest.raises(ValueError, match="needs a cnn or transformer zoo"):
        task_data(zoos["inr"], "generalization", CONFIG)
    with pytest.raises(ValueError, match="unknown task"):
        task_data(zoos["inr"], "segmentation", CONFIG)


def test_kendall_tau() -> None:
    x = torch.tensor([0.1, 0.4, 0.3, 0.9])
    assert kendall_tau(x, x) == pytest.approx(1.0)
    assert kendall_tau(x, -x) == pytest.approx(-1.0)
    assert kendall_tau(x, torch.tensor([0.1, 0.3, 0.4, 0.9])) == pytest.approx(2 / 3)
    assert kendall_tau(x, torch.zeros(4)) == 0.0


def test_initialization_does_not_depend_on_the_layer_cache(zoos) -> None:
    """Deriving a model's layers (which traces, and so builds, the architecture) must not
    consume the random state its initialization is drawn from."""
    from nfn_tasks.models import _derivation, generated_layers

    data = task_data(zoos["generalization-relu"], "generalization", CONFIG)
    batch = data.weights.map(lambda t: t[:2])

    def fresh() -> torch.Tensor:
        torch.manual_seed(0)
        model = build_model("monomial", data.zoo.architecture, data.zoo.input_shape, batch,
                            data.outputs, MODEL)  # fmt: skip
        return torch.cat([p.detach().flatten() for p in model.parameters()])

    _derivation.cache_clear()
    generated_layers.cache_clear()
    first = fresh()  # derives inside build_model
    assert torch.equal(first, fresh())  # cached
