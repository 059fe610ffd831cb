"""The shared training loop: schedule, exact resume, parameter groups, token-mean losses under
gradient accumulation, fused AdamW, refusals with clear errors."""

import json
import math

import pytest
import torch
from torch import nn

from pali3_edu.train import (
    CheckpointError,
    ParamGroup,
    TrainConfig,
    load_checkpoint,
    lr_at,
    save_checkpoint,
    train,
    unwrap,
)


def _batch(step: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(step)
    x = torch.randn(16, 4, generator=g)
    return {"x": x, "y": x @ torch.tensor([[1.0], [-2.0], [0.5], [3.0]])}


def _loss(model: nn.Module, batch) -> torch.Tensor:
    return ((model(batch["x"]) - batch["y"]) ** 2).mean()


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1))


def _dropout_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.Dropout(0.2), nn.Tanh(), nn.Linear(8, 1))


CFG = TrainConfig(steps=40, lr=0.02, warmup_steps=5, log_every=1)


def test_loss_falls():
    history = train(_model(), _loss, _batch, CFG, progress=False)
    assert history.losses[-1] < 0.3 * history.losses[0]


def test_resume_equals_uninterrupted(tmp_path):
    cfg = TrainConfig(steps=40, lr=0.02, warmup_steps=5, log_every=1, grad_accum=2)
    full = _dropout_model()
    h_full = train(full, _loss, _batch, cfg, checkpoint=tmp_path / "full.pt", progress=False)

    part = _dropout_model()
    train(part, _loss, _batch, cfg, checkpoint=tmp_path / "part.pt", progress=False, stop_after=17)
    state = load_checkpoint(tmp_path / "part.pt")
    assert state["step"] == 17 and state["data_position"] == 34
    fresh = _dropout_model()  # a new process: new model object, same checkpoint folder
    torch.manual_seed(123)  # whatever the random state, the checkpoint's is restored
    h_part = train(fresh, _loss, _batch, cfg, checkpoint=tmp_path / "part.pt", progress=False)

    assert h_part.resumed_from == 17
    for a, b in zip(full.parameters(), fresh.parameters()):
        assert torch.equal(a, b)  # bit-identical, dropout masks included
    assert h_part.losses == h_full.losses
    assert h_part.rows == h_full.rows


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


# ---------------------------------------------------------------------------------------------
# Non-finite values: no update, no checkpoint
# ---------------------------------------------------------------------------------------------


def _nan_from(first_bad: int):
    def get_batch(i):
        batch = _batch(i)
        if i >= first_bad:
            batch["x"] = batch["x"] * float("nan")
        return batch

    return get_batch


def test_nan_keeps_previous_checkpoint_and_weights(tmp_path):
    ckpt = tmp_path / "c"
    cfg = TrainConfig(steps=20, lr=0.02, warmup_steps=2, log_every=1, checkpoint_every=5)
    model = _model()
    snapshot = {}

    def loss(model, batch):  # remembers the weights before step 7's update would happen
        if torch.isnan(batch["x"]).any():
            snapshot.update({k: v.clone() for k, v in model.state_dict().items()})
        return _loss(model, batch)

    with pytest.raises(FloatingPointError, match="step 7.*learning rate") as err:
        train(model, loss, _nan_from(7), cfg, checkpoint=ckpt, progress=False)
    assert "no checkpoint was written" in str(err.value)
    for k, v in model.state_dict().items():
        assert torch.equal(v, snapshot[k])  # the optimizer did not step
    manifest = json.loads((ckpt / "meta.json").read_text())
    assert manifest["step"] == 5  # the last good one, not a checkpoint after the NaN
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c"]


def test_nan_right_after_resume_blames_the_checkpoint(tmp_path):
    ckpt = tmp_path / "c"
    train(_model(), _loss, _batch, CFG, checkpoint=ckpt, progress=False, stop_after=5)
    with pytest.raises(FloatingPointError, match="may be bad"):
        train(_model(), _loss, _nan_from(5), CFG, checkpoint=ckpt, progress=False)


class _InfGrad(torch.autograd.Function):
    """Forward: 0 (the loss stays finite). Backward: an infinite gradient."""

    @staticmethod
    def forward(ctx, x):
        ctx.shape = x.shape
        return x.sum() * 0

    @staticmethod
    def backward(ctx, g):
        return torch.full(ctx.shape, float("inf"))


def test_infinite_gradient_is_caught():
    model = _model()
    before = [p.clone() for p in model.parameters()]

    def loss(model, batch):
        return _loss(model, batch) + _InfGrad.apply(model[0].weight)

    with pytest.raises(FloatingPointError, match="gradient norm inf"):
        train(model, loss, _batch, TrainConfig(steps=2, grad_clip=None), progress=False)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


# ---------------------------------------------------------------------------------------------
# A resume must continue the same run
# ---------------------------------------------------------------------------------------------


def test_resume_with_changed_config_or_meta_is_refused(tmp_path):
    ckpt = tmp_path / "c"
    meta = {"recipe": {"data": {"size": 1}, "name": "x"}}
    train(_model(), _loss, _batch, CFG, checkpoint=ckpt, progress=False, stop_after=3, meta=meta)
    with pytest.raises(CheckpointError, match=r"lr: 0\.02 -> 0\.01.*Delete the folder"):
        train(_model(), _loss, _batch, TrainConfig(**{**CFG.__dict__, "lr": 0.01}), checkpoint=ckpt,
              progress=False, meta=meta)
    with pytest.raises(CheckpointError, match=r"meta\.recipe\.data\.size: 1 -> 2"):
        train(_model(), _loss, _batch, CFG, checkpoint=ckpt, progress=False,
              meta={"recipe": {"data": {"size": 2}, "name": "x"}})
    with pytest.raises(CheckpointError, match=r"meta: None -> |meta\.recipe"):
        train(_model(), _loss, _batch, CFG, checkpoint=ckpt, progress=False)
    # logging and checkpoint frequency cannot change the weights: allowed
    h = train(_model(), _loss, _batch, TrainConfig(**{**CFG.__dict__, "log_every": 7, "checkpoint_every": 9}),
              checkpoint=ckpt, progress=False, meta=meta)
    assert h.resumed_from == 3


def test_resume_into_another_model_names_the_keys(tmp_path):
    ckpt = tmp_path / "c"
    train(_model(), _loss, _batch, CFG, checkpoint=ckpt, progress=False, stop_after=3)
    other = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1), nn.Identity())
    other.add_module("4", nn.Linear(1, 1))
    with pytest.raises(CheckpointError, match=r"missing: 4\.weight, 4\.bias"):
        train(other, _loss, _batch, CFG, checkpoint=ckpt, progress=False)


# ---------------------------------------------------------------------------------------------
# Bad input, clear errors
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("field, value, hint", [
    ("steps", 0, "steps must be an integer >= 1"),
    ("grad_accum", 0, "grad_accum must be an integer >= 1"),
    ("log_every", 0, "log_every must be an integer >= 1"),
    ("amp_dtype", "fp32", "use None for fp32"),
    ("lr", 0.0, "lr must be a positive number"),
    ("lr", -1e-3, "lr must be a positive number"),
    ("parallel", "tp", "parallel must be"),
])
def test_bad_config_values(field, value, hint):
    with pytest.raises(ValueError, match=hint):
        TrainConfig(**{field: value})


def test_non_scalar_loss_is_refused():
    def loss(model, batch):
        return (model(batch["x"]) - batch["y"]) ** 2  # forgot .mean()

    with pytest.raises(ValueError, match=r"return a scalar, e\.g\. loss\.mean\(\)"):
        train(_model(), loss, _batch, CFG, progress=False)


def test_empty_batch_is_refused():
    def get_batch(i):
        return {"x": torch.zeros(0, 4), "y": torch.zeros(0, 1)}

    with pytest.raises(ValueError, match="empty batch"):
        train(_model(), _loss, get_batch, CFG, progress=False)


# ---------------------------------------------------------------------------------------------
# Parameter groups
# ---------------------------------------------------------------------------------------------


def test_param_groups_get_their_own_lr(tmp_path):
    model = _model()
    first, last = model[0].weight.clone(), model[2].weight.clone()
    groups = [ParamGroup(model[0], lr_scale=0.0, weight_decay=0.5), ParamGroup(model[2], lr_scale=0.5)]
    cfg = TrainConfig(steps=6, lr=0.02, warmup_steps=0, schedule="constant")
    train(model, _loss, _batch, cfg, checkpoint=tmp_path / "c", param_groups=groups, progress=False)
    assert torch.equal(model[0].weight, first)  # lr 0 (even with weight decay): unchanged
    assert not torch.equal(model[2].weight, last)
    saved = load_checkpoint(tmp_path / "c")["optimizer"]["param_groups"]
    got = {name: (g["lr"], g["weight_decay"]) for g in saved for name in g["params"]}
    assert got == {"0.weight": (0.0, 0.5), "0.bias": (0.0, 0.0),  # decay only on matrices
                   "2.weight": (0.01, 0.01), "2.bias": (0.01, 0.0)}


def test_frozen_modules_are_not_in_the_optimizer(tmp_path):
    model = _model()
    model[0].requires_grad_(False)
    frozen = model[0].weight.clone()
    train(model, _loss, _batch, CFG, checkpoint=tmp_path / "c", progress=False,
          param_groups=[ParamGroup([model[0], model[2]])])
    assert torch.equal(model[0].weight, frozen)
    saved = load_checkpoint(tmp_path / "c")["optimizer"]
    names = [n for g in saved["param_groups"] for n in g["params"]]
    assert sorted(names) == ["2.bias", "2.weight"]
    assert sorted(saved["state"]) == ["2.bias", "2.weight"]


def test_parameter_in_two_groups_is_refused():
    model = _model()
    with pytest.raises(ValueError, match="one group"):
        train(model, _loss, _batch, CFG, progress=False,
              param_groups=[ParamGroup(model), ParamGroup(model[2])])


def test_logged_extras_summary_line_and_unwrap(capsys):
    def loss(model, batch):
        assert unwrap(model) is model  # one process: nothing wrapped
        value = _loss(model, batch)
        return {"loss": value, "half": value.detach() / 2}

    h = train(_model(), loss, _batch, TrainConfig(steps=5, log_every=2), progress=True)
    assert h.steps == [0.0, 2.0, 4.0]
    assert h.column("half") == pytest.approx([x / 2 for x in h.losses])
    assert all(r["grad_norm"] > 0 for r in h.rows)
    out = capsys.readouterr().out
    assert f"train: 5/5 steps, loss {h.losses[-1]:.3f}" in out


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_mixed_precision_trains_and_resumes_exactly(tmp_path, amp):
    def loss(model, batch):
        return ((model(batch["x"]).float() - batch["y"]) ** 2).mean()

    cfg = TrainConfig(steps=20, lr=0.02, warmup_steps=2, log_every=1, amp_dtype=amp)
    full = _model()
    h_full = train(full, loss, _batch, cfg, checkpoint=tmp_path / "full", device="cpu", progress=False)
    assert h_full.losses[-1] < 0.5 * h_full.losses[0]
    part = _model()
    train(part, loss, _batch, cfg, checkpoint=tmp_path / "part", device="cpu", progress=False, stop_after=7)
    h_part = train(_model(), loss, _batch, cfg, checkpoint=tmp_path / "part", device="cpu", progress=False)
    assert h_part.losses == h_full.losses
    resumed = load_checkpoint(tmp_path / "part")["model"]
    for k, v in full.state_dict().items():
        assert torch.equal(v, resumed[k])


# ---------------------------------------------------------------------------------------------
# Token-mean losses: the step's loss is the mean over every token of the step
# ---------------------------------------------------------------------------------------------

TOKENS = 6  # positions per row; a mask says how many of them count


def token_batch(i: int, rows: int = 8) -> dict[str, torch.Tensor]:
    """Micro-batch ``i`` of a per-token regression with padding: ``x`` ``(rows, 6, 4)``, ``mask``
    ``(rows, 6)``. Even ``i``: the first half of the rows is long (4-6 tokens) and the second half
    short (1-2), so two processes hold very different counts; odd ``i``: one token per row, so
    micro-batches differ too (the even ones hold at least 20 tokens, the odd ones 8)."""
    g = torch.Generator().manual_seed(1000 + i)
    x = torch.randn(rows, TOKENS, 4, generator=g)
    y = x @ torch.tensor([[1.0], [-2.0], [0.5], [3.0]]) + 0.1 * torch.randn(rows, TOKENS, 1, generator=g)
    half = rows // 2
    if i % 2 == 0:
        lengths = torch.cat([torch.randint(4, TOKENS + 1, (half,), generator=g),
                             torch.randint(1, 3, (rows - half,), generator=g)])
    else:
        lengths = torch.ones(rows, dtype=torch.long)
    mask = torch.arange(TOKENS)[None] < lengths[:, None]
    return {"x": x, "y": y, "mask": mask}


def token_loss(model: nn.Module, batch) -> dict[str, torch.Tensor]:
    """The mean squared error over the tokens the mask keeps, and how many there were."""
    se = ((model(batch["x"]) - batch["y"]) ** 2).squeeze(-1)
    mask = batch["mask"]
    return {"loss": (se * mask).sum() / mask.sum().clamp_min(1), "tokens": mask.sum()}


def _two_micro_batches_as_one(step: int) -> dict[str, torch.Tensor]:
    a, b = token_batch(2 * step), token_batch(2 * step + 1)
    return {k: torch.cat([a[k], b[k]]) for k in a}


def test_token_mean_with_grad_accum_equals_one_batch():
    """grad_accum=2 over micro-batches with unequal token counts trains exactly like grad_accum=1
    on the two of them as one batch: each micro-batch weighs its tokens, not its mean."""
    cfg = dict(steps=20, lr=0.1, warmup_steps=2, log_every=1)
    one, two = _model(), _model()
    h_one = train(one, token_loss, _two_micro_batches_as_one, TrainConfig(**cfg), progress=False)
    h_two = train(two, token_loss, token_batch, TrainConfig(**cfg, grad_accum=2), progress=False)
    counts = [(int(token_batch(2 * s)["mask"].sum()), int(token_batch(2 * s + 1)["mask"].sum())) for s in range(20)]
    assert all(a >= 2 * b for a, b in counts)  # the micro-batches really are unequal
    assert h_two.losses == pytest.approx(h_one.losses, rel=1e-6, abs=1e-7)
    assert h_two.column("tokens") == h_one.column("tokens") == [float(a + b) for a, b in counts]
    for a, b in zip(one.parameters(), two.parameters()):
        torch.testing.assert_close(b, a, rtol=1e-6, atol=1e-6)
    assert h_one.losses[-1] < 0.5 * h_one.losses[0]  # it trained: the comparison means something
    # the mean of the two micro-batch means is another number: the test can tell them apart
    with torch.no_grad():
        model = _model()
        means = [float(token_loss(model, token_batch(i))["loss"]) for i in (0, 1)]
        exact = float(token_loss(model, _two_micro_batches_as_one(0))["loss"])
    assert abs(sum(means) / 2 - exact) > 1e-2 * exact
    assert h_one.losses[0] == pytest.approx(exact, rel=1e-6)


def test_token_mean_in_one_batch_is_bit_identical_to_the_plain_loss():
    """One process, no accumulation: reporting the count changes nothing (the lessons' runs)."""
    def plain(model, batch):
        return token_loss(model, batch)["loss"]

    cfg = TrainConfig(steps=6, lr=0.05, warmup_steps=2, log_every=1)
    a, b = _model(), _model()
    h_plain = train(a, plain, token_batch, cfg, progress=False)
    h_tokens = train(b, token_loss, token_batch, cfg, progress=False)
    assert h_tokens.losses == h_plain.losses
    for p, q in zip(a.parameters(), b.parameters()):
        assert torch.equal(p, q)


def test_bad_token_counts_are_refused():
    def negative(model, batch):
        return {"loss": token_loss(model, batch)["loss"], "tokens": -3}

    with pytest.raises(TypeError, match=r"number of tokens the loss averaged over"):
        train(_model(), negative, token_batch, CFG, progress=False)

    calls = []

    def sometimes(model, batch):  # the count with the first micro-batch only
        calls.append(1)
        out = token_loss(model, batch)
        return out if len(calls) == 1 else {"loss": out["loss"]}

    with pytest.raises(ValueError, match="'tokens' for some micro-batches and not for others"):
        train(_model(), sometimes, token_batch, TrainConfig(steps=2, grad_accum=2), progress=False)


# ---------------------------------------------------------------------------------------------
# Fused AdamW
# ---------------------------------------------------------------------------------------------


def test_make_optimizer_fused_choice():
    from pali3_edu.train import make_optimizer

    model = _model()
    assert make_optimizer(model, CFG, fused=True).defaults["fused"] is True
    assert not make_optimizer(model, CFG, fused=False).defaults["fused"]
    assert not make_optimizer(model, CFG).defaults["fused"]  # auto: fused on CUDA only, this is a CPU


def test_fused_adamw_trains_like_the_default(tmp_path, monkeypatch):
    """PyTorch's CPU kernel of fused AdamW: the same weights (to rounding) after a few steps, and
    train() really builds the fused optimizer; resuming a fused run is exact."""
    import pali3_edu.train as train_module

    built = []
    make = train_module.make_optimizer

    def spy(*args, **kwargs):
        opt = make(*args, **kwargs)
        built.append(opt.defaults["fused"])
        return opt

    monkeypatch.setattr(train_module, "make_optimizer", spy)
    cfg = TrainConfig(steps=8, lr=0.02, warmup_steps=2, log_every=1)
    plain, fused = _model(), _model()
    h_plain = train(plain, _loss, _batch, cfg, progress=False, fused_adamw=False)
    h_fused = train(fused, _loss, _batch, cfg, checkpoint=tmp_path / "full", progress=False, fused_adamw=True)
    assert [bool(b) for b in built] == [False, True]
    assert h_fused.losses == pytest.approx(h_plain.losses, rel=1e-5)
    for a, b in zip(plain.parameters(), fused.parameters()):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)
    assert not torch.equal(plain[0].weight, _model()[0].weight)  # it moved
    train(_model(), _loss, _batch, cfg, checkpoint=tmp_path / "part", progress=False, fused_adamw=True, stop_after=3)
    resumed = _model()
    train(resumed, _loss, _batch, cfg, checkpoint=tmp_path / "part", progress=False, fused_adamw=True)
    for a, b in zip(fused.parameters(), resumed.parameters()):
        assert torch.equal(a, b)
