"""SigLIP under two processes (gloo on CPU) trains like one process on the same global batch: the
stage's loss (``contrastive_loss_fn``) scores every image against every text of the *global*
batch with ``distributed_sigmoid_loss`` (the texts travel round a ring of processes), so the
loss, the gradients and the weights equal those of one process that sees the whole batch.

Under DDP and under FSDP2; FSDP2 cannot shard the 0-d temperature and bias, which ``wrap_model``
leaves whole on every rank and whose gradients ``gradient_sync`` averages by hand: the state
dict keeps its shapes, and resuming an FSDP2 run is exact."""

import os

import pytest
import torch
import torch.distributed as dist
from gloo import join_group, spawn
from torch import nn

from pali3_edu.config import SigLIPConfig, TextConfig, ViTConfig
from pali3_edu.distributed import average_replicated_gradients, wrap_model
from pali3_edu.recipes.siglip import contrastive_loss_fn
from pali3_edu.siglip import SigLIP, sigmoid_loss
from pali3_edu.train import TrainConfig, load_checkpoint, train

WORLD = 2
ROWS = 8  # the global batch: 4 image-text pairs per process
BASE = {"steps": 6, "lr": 3e-3, "warmup_steps": 1, "log_every": 1}
SCENARIOS = {"ddp": {"parallel": "ddp"}, "ddp_accum2": {"parallel": "ddp", "grad_accum": 2},
             "fsdp": {"parallel": "fsdp"}, "fsdp_accum2": {"parallel": "fsdp", "grad_accum": 2}}
RESUMED = ("fsdp_accum2",)  # also stopped after 3 steps and resumed


def _model() -> SigLIP:
    torch.manual_seed(0)
    cfg = SigLIPConfig(vision=ViTConfig(image_size=16, patch_size=8, width=32, depth=1, mlp_dim=64, heads=2),
                       text=TextConfig(vocab_size=50, width=32, depth=1, mlp_dim=64, heads=2, max_len=6),
                       embed_dim=32)
    return SigLIP(cfg)


def _batch(i: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(i)
    return {"pixel_values": torch.rand(ROWS, 3, 16, 16, generator=g) * 2 - 1,
            "input_ids": torch.randint(0, 50, (ROWS, 6), generator=g)}


def _run(name: str, folder: str, parallel: bool, stop_after: int | None = None):
    cfg = dict(BASE, **SCENARIOS[name])
    if not parallel:
        cfg["parallel"] = "none"
    model = _model()
    return train(model, contrastive_loss_fn("sigmoid"), _batch, TrainConfig(**cfg),
                 checkpoint=os.path.join(folder, name), device="cpu", progress=False, stop_after=stop_after)


class _Scalars(nn.Module):
    """Two 0-d parameters: ``a`` gets a gradient on rank 0 only, ``b`` on no rank."""

    def __init__(self):
        super().__init__()
        self.a = nn.Parameter(torch.tensor(1.0))
        self.b = nn.Parameter(torch.tensor(2.0))
        self.linear = nn.Linear(2, 2)


def _replicated_checks(rank: int) -> dict:
    """What FSDP2 makes of SigLIP's parameters, and the hand-made average of whole ones."""
    model = wrap_model(_model(), "fsdp", torch.device("cpu"))
    kinds = {n: (type(p).__name__, tuple(p.shape)) for n, p in model.named_parameters()}
    scalars = wrap_model(_Scalars(), "fsdp", torch.device("cpu"))
    if rank == 0:
        (scalars.a * 3.0).backward()
    average_replicated_gradients(scalars)
    return {"kinds": kinds, "a_grad": scalars.a.grad, "b_grad_is_none": scalars.b.grad is None}


def _worker(rank, world, port, folder):
    join_group(rank, world, port)
    try:
        out = {name: _run(name, folder, parallel=True).rows for name in SCENARIOS}
        for name in RESUMED:
            _run(name, os.path.join(folder, "part"), parallel=True, stop_after=3)
            resumed = _run(name, os.path.join(folder, "part"), parallel=True)
            out[f"{name}_resumed"] = {"rows": resumed.rows, "from": resumed.resumed_from}
        out["replicated"] = _replicated_checks(rank)
        # the loss function alone: this rank's gradient share of the global loss
        model = _model()
        batch = {k: v[rank * ROWS // world:(rank + 1) * ROWS // world] for k, v in _batch(0).items()}
        loss = contrastive_loss_fn("sigmoid")(model, batch)["loss"]
        loss.backward()
        out["loss_fn"] = {"loss": loss.detach(), "grads": {n: p.grad for n, p in model.named_parameters()}}
        torch.save(out, os.path.join(folder, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    folder = str(tmp_path_factory.mktemp("siglip_dist"))
    spawn(_worker, WORLD, folder, timeout=240)
    return folder, [torch.load(os.path.join(folder, f"rank{r}.pt"), weights_only=True) for r in range(WORLD)]


def test_loss_fn_scores_the_global_batch(runs):
    """Each process's loss is the one-process loss of the global batch; DDP averages the
    processes' gradients, and that average is the one-process gradient."""
    _, ranks = runs
    model = _model()
    out = model(_batch(0)["pixel_values"], _batch(0)["input_ids"])
    ref = sigmoid_loss(out.image_emb, out.text_emb, model.t_prime, model.bias)
    ref.backward()
    # a process that scored only its own 4 pairs would get another number
    local = sigmoid_loss(out.image_emb[:4], out.text_emb[:4], model.t_prime, model.bias)
    assert abs(local.item() - ref.item()) > 1e-3
    for rank in ranks:
        torch.testing.assert_close(rank["loss_fn"]["loss"], ref.detach(), rtol=1e-6, atol=1e-6)
    for name, p in model.named_parameters():
        mean = sum(rank["loss_fn"]["grads"][name] for rank in ranks) / WORLD
        torch.testing.assert_close(mean, p.grad, rtol=1e-5, atol=1e-6, msg=lambda m, name=name: f"{name}: {m}")


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_two_processes_train_like_one(runs, name, tmp_path):
    folder, ranks = runs
    single = _run(name, str(tmp_path), parallel=False)
    for rank in ranks:
        assert [r["loss"] for r in rank[name]] == pytest.approx(single.losses, rel=1e-6, abs=1e-6)
        assert [r["t"] for r in rank[name]] == pytest.approx(single.column("t"), rel=1e-6)
    assert single.losses[-1] < single.losses[0]  # it trained
    got = load_checkpoint(os.path.join(folder, name))
    ref = load_checkpoint(tmp_path / name)
    assert got["world_size"] == WORLD
    # the same keys and shapes (0-d t_prime and bias) as one process writes, hence as pretrained loads
    assert {k: v.shape for k, v in got["model"].items()} == {k: v.shape for k, v in ref["model"].items()}
    assert got["model"]["t_prime"].shape == got["model"]["bias"].shape == torch.Size([])
    # the key biases cannot change attention (a softmax ignores a shift shared by every key): their
    # gradient is zero up to rounding, and AdamW's normalisation turns rounding noise into full
    # steps, so they differ between any two runs that sum in another order. The same happens, far
    # less, to any weight whose gradient is near zero in one element: the weights are compared to 1 %
    # of one AdamW step (lr), not to float rounding (seen: 3.8e-6 in a key weight on an AMD EPYC CPU);
    # a process that trained on other data or skipped a sync is off by whole steps
    step = BASE["lr"]
    bad = [k for k, v in ref["model"].items() if not k.endswith("attn.k.bias")
           and not torch.allclose(got["model"][k], v, rtol=1e-5, atol=0.01 * step)]
    assert not bad, {k: (got["model"][k] - ref["model"][k]).abs().max().item() for k in bad}


def test_fsdp_leaves_the_scalars_whole(runs):
    """FSDP2 shards every parameter but the 0-d ``t_prime`` and ``bias``, which stay plain 0-d
    tensors on every rank."""
    _, ranks = runs
    names = {n: tuple(p.shape) for n, p in _model().named_parameters()}
    for rank in ranks:
        kinds = rank["replicated"]["kinds"]
        assert {n: shape for n, (_, shape) in kinds.items()} == names  # names and global shapes unchanged
        assert kinds["t_prime"] == kinds["bias"] == ("Parameter", ())
        assert all(kind == "DTensor" for n, (kind, _) in kinds.items() if n not in ("t_prime", "bias"))


def test_average_replicated_gradients(runs):
    """A whole parameter's gradient is averaged over the ranks (a rank without one counts as zero);
    one that has no gradient on any rank keeps None (AdamW then leaves it alone)."""
    _, ranks = runs
    for rank in ranks:
        torch.testing.assert_close(rank["replicated"]["a_grad"], torch.tensor(1.5))  # (3 + 0) / 2
        assert rank["replicated"]["b_grad_is_none"]


@pytest.mark.parametrize("name", RESUMED)
def test_fsdp_resume_is_exact(runs, name):
    folder, ranks = runs
    for rank in ranks:
        assert rank[f"{name}_resumed"]["from"] == 3
        assert [r["loss"] for r in rank[f"{name}_resumed"]["rows"]] == \
            pytest.approx([r["loss"] for r in rank[name]], rel=1e-6, abs=1e-6)
    full = load_checkpoint(os.path.join(folder, name))["model"]
    resumed = load_checkpoint(os.path.join(folder, "part", name))["model"]
    assert resumed.keys() == full.keys()
    for k in full:
        torch.testing.assert_close(resumed[k], full[k], rtol=1e-6, atol=1e-6, msg=lambda m, k=k: f"{k}: {m}")
