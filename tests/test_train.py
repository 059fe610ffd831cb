"""The shared training loop: schedule, resume without loss, clear checkpoint errors."""

import math

import pytest
import torch
from torch import nn

from pali3_edu.train import CheckpointError, TrainConfig, load_checkpoint, lr_at, save_checkpoint, train


def _batch(step: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(step)
    x = torch.randn(16, 4, generator=g)
    return {"x": x, "y": x @ torch.tensor([[1.0], [-2.0], [0.5], [3.0]])}


def _loss(model: nn.Module, batch) -> torch.Tensor:
    return ((model(batch["x"]) - batch["y"]) ** 2).mean()


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1))


CFG = TrainConfig(steps=40, lr=0.02, warmup_steps=5, log_every=1)


def test_loss_falls():
    history = train(_model(), _loss, _batch, CFG, progress=False)
    assert history.losses[-1] < 0.3 * history.losses[0]


def test_resume_equals_uninterrupted(tmp_path):
    full = _model()
    h_full = train(full, _loss, _batch, CFG, checkpoint=tmp_path / "full.pt", progress=False)

    part = _model()
    train(part, _loss, _batch, CFG, checkpoint=tmp_path / "part.pt", progress=False, stop_after=17)
    assert load_checkpoint(tmp_path / "part.pt")["step"] == 17
    fresh = _model()  # a new process: new model object, same checkpoint file
    h_part = train(fresh, _loss, _batch, CFG, checkpoint=tmp_path / "part.pt", progress=False)

    assert h_part.resumed_from == 17
    for a, b in zip(full.parameters(), fresh.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert h_part.losses == pytest.approx(h_full.losses)


def test_finished_checkpoint_does_not_retrain(tmp_path):
    m = _model()
    train(m, _loss, _batch, CFG, checkpoint=tmp_path / "c.pt", progress=False)
    before = [p.clone() for p in m.parameters()]
    train(m, _loss, _batch, CFG, checkpoint=tmp_path / "c.pt", progress=False)
    for a, b in zip(before, m.parameters()):
        assert torch.equal(a, b)


def test_schedule_warmup_then_cosine():
    cfg = TrainConfig(steps=100, lr=1.0, warmup_steps=10, min_lr_ratio=0.1)
    assert lr_at(0, cfg) == pytest.approx(0.1)
    assert lr_at(9, cfg) == pytest.approx(1.0)
    assert lr_at(10, cfg) == pytest.approx(1.0)
    assert lr_at(55, cfg) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert lr_at(100, cfg) == pytest.approx(0.1)


def test_frozen_params_stay_put():
    m = _model()
    frozen = m[0].weight.clone()
    train(m, _loss, _batch, TrainConfig(steps=5), params=m[2].parameters(), progress=False)
    assert torch.equal(frozen, m[0].weight)


def test_corrupt_checkpoint_gives_clear_error(tmp_path):
    path = tmp_path / "bad"
    save_checkpoint(path, _model(), step=3)
    weights = path / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:50])  # truncated, as after a crash mid-copy
    with pytest.raises(CheckpointError, match="corrupt or incomplete"):
        load_checkpoint(path)
    with pytest.raises(CheckpointError, match="No checkpoint"):
        load_checkpoint(tmp_path / "missing")
    other = tmp_path / "other"
    save_checkpoint(other, nn.Linear(3, 3))
    with pytest.raises(CheckpointError, match="does not fit"):
        load_checkpoint(other, _model())


def test_nan_loss_is_reported():
    def bad_loss(model, batch):
        return _loss(model, batch) * float("nan")

    with pytest.raises(FloatingPointError, match="learning rate"):
        train(_model(), bad_loss, _batch, TrainConfig(steps=2), progress=False)
