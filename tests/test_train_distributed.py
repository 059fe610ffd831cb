"""``train`` under two processes (gloo on CPU) equals ``train`` in one process on the same global
batch: DDP, DDP with gradient accumulation, FSDP2 with parameter groups, and resuming each; for a
mean over rows and for a token-mean loss whose ranks hold very different numbers of tokens
(``tokens_*``: the loop weighs each rank's mean by its count, see ``pali3_edu.train``)."""

import os

import pytest
import torch
import torch.distributed as dist
from gloo import join_group, spawn
from test_train import token_batch, token_loss
from torch import nn

from pali3_edu.train import ParamGroup, TrainConfig, load_checkpoint, train

WORLD = 2
BASE = {"steps": 12, "lr": 0.05, "warmup_steps": 3, "log_every": 1}


def _batch(i: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(i)
    x = torch.randn(8, 4, generator=g)  # the GLOBAL micro-batch: 4 rows per rank
    return {"x": x, "y": x @ torch.tensor([[1.0], [-2.0], [0.5], [3.0]]) + 0.1 * torch.randn(8, 1, generator=g)}


SEEN: list[torch.Tensor] = []  # the rows each call of the loss saw (a test records them)


def _loss(model: nn.Module, batch) -> torch.Tensor:
    SEEN.append(batch["x"].detach().clone())
    return ((model(batch["x"]) - batch["y"]) ** 2).mean()


def _token_loss(model: nn.Module, batch) -> dict[str, torch.Tensor]:
    SEEN.append(batch["x"].detach().clone())
    return token_loss(model, batch)


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Linear(16, 1))


def _groups(model: nn.Module) -> list[ParamGroup]:
    return [ParamGroup(model[0], lr_scale=0.5), ParamGroup(model[2], weight_decay=0.0)]


SCENARIOS = {
    "ddp": {"cfg": {"parallel": "ddp"}, "groups": False},
    "ddp_accum2": {"cfg": {"parallel": "ddp", "grad_accum": 2}, "groups": False},
    "fsdp_accum2_groups": {"cfg": {"parallel": "fsdp", "grad_accum": 2}, "groups": True},
    # rank 0 holds 16-24 tokens of the even micro-batches, rank 1 only 4-8
    "tokens_ddp": {"cfg": {"parallel": "ddp"}, "groups": False, "tokens": True},
    "tokens_ddp_accum2": {"cfg": {"parallel": "ddp", "grad_accum": 2}, "groups": False, "tokens": True},
    "tokens_fsdp_accum2_groups": {"cfg": {"parallel": "fsdp", "grad_accum": 2}, "groups": True, "tokens": True},
}


def _data(name: str):
    """The scenario's loss and batches."""
    return (_token_loss, token_batch) if SCENARIOS[name].get("tokens") else (_loss, _batch)


def _run(name: str, folder: str, parallel: bool, stop_after: int | None = None, resume: bool = False):
    spec = SCENARIOS[name]
    cfg = dict(BASE, **spec["cfg"])
    if not parallel:
        cfg["parallel"] = "none"
    model = _model()
    loss, batches = _data(name)
    history = train(model, loss, batches, TrainConfig(**cfg), checkpoint=os.path.join(folder, name),
                    device="cpu", progress=False, stop_after=stop_after,
                    param_groups=_groups(model) if spec["groups"] else None)
    return history


def _nan_batch(i: int) -> dict[str, torch.Tensor]:
    batch = _batch(i)
    if i >= 4:
        batch["x"][-1] = float("nan")  # one bad row, in rank 1's half only
    return batch


def _nan_run(folder: str) -> str:
    """Both ranks must stop at the same step (no hang), without writing a checkpoint."""
    cfg = TrainConfig(**dict(BASE, parallel="ddp", checkpoint_every=2))
    try:
        train(_model(), _loss, _nan_batch, cfg, checkpoint=os.path.join(folder, "nan"), device="cpu",
              progress=False)
    except FloatingPointError as err:
        return str(err)
    return "no error"


def _worker(rank, world, port, folder):
    join_group(rank, world, port)
    try:
        out = {}
        for name in SCENARIOS:
            SEEN.clear()
            full = _run(name, folder, parallel=True)
            _run(name, os.path.join(folder, "part"), parallel=True, stop_after=5)
            seen = list(SEEN[:2])
            resumed = _run(name, os.path.join(folder, "part"), parallel=True)
            out[name] = {"losses": full.losses, "resumed_losses": resumed.losses,
                             "resumed_from": resumed.resumed_from, "seen": seen}
        out["nan"] = _nan_run(folder)
        torch.save(out, os.path.join(folder, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    folder = str(tmp_path_factory.mktemp("dist"))
    spawn(_worker, WORLD, folder, timeout=240)
    ranks = [torch.load(os.path.join(folder, f"rank{r}.pt"), weights_only=True) for r in range(WORLD)]
    return folder, ranks


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_two_processes_equal_one(runs, name, tmp_path):
    folder, ranks = runs
    single = _run(name, str(tmp_path), parallel=False)
    ref = load_checkpoint(tmp_path / name)["model"]
    got = load_checkpoint(os.path.join(folder, name))  # written by rank 0 (FSDP: gathered)
    assert got["step"] == BASE["steps"] and got["world_size"] == WORLD
    for rank in ranks:  # logged losses are reduced over the ranks: the global-batch loss
        assert rank[name]["losses"] == pytest.approx(single.losses, rel=1e-6, abs=1e-6)
    assert len(single.losses) == BASE["steps"]
    assert single.losses[-1] < 0.5 * single.losses[0]  # it trained: the comparison means something
    accum = SCENARIOS[name]["cfg"].get("grad_accum", 1)
    _, batches = _data(name)
    for r, rank in enumerate(ranks):  # rank r trained on its contiguous half of each micro-batch
        for i, rows in enumerate(rank[name]["seen"]):
            assert rows.shape[0] == 8 // WORLD
            assert torch.equal(rows, batches(i)["x"][r * 4:(r + 1) * 4]), (r, i, accum)
    if SCENARIOS[name].get("tokens"):  # the ranks' counts differ: a mean of their means would not do
        counts = [int(batches(0)["mask"][r * 4:(r + 1) * 4].sum()) for r in range(WORLD)]
        assert counts[0] >= 2 * counts[1], counts
    assert set(got["model"]) == set(ref)
    for k in ref:
        torch.testing.assert_close(got["model"][k], ref[k], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_resume_under_two_processes(runs, name):
    folder, ranks = runs
    full = load_checkpoint(os.path.join(folder, name))["model"]
    resumed = load_checkpoint(os.path.join(folder, "part", name))["model"]
    for rank in ranks:
        assert rank[name]["resumed_from"] == 5
        assert rank[name]["resumed_losses"] == pytest.approx(rank[name]["losses"], rel=1e-6, abs=1e-6)
    for k in full:
        torch.testing.assert_close(resumed[k], full[k], rtol=1e-6, atol=1e-6)


def test_uneven_global_batch_is_refused():
    from pali3_edu.distributed import shard_batch

    with pytest.raises(ValueError, match="divisible by 2"):
        shard_batch({"x": torch.zeros(5, 3)}, 0, 2)
    rows = shard_batch({"x": torch.arange(6)}, 1, 2)["x"]
    assert rows.tolist() == [3, 4, 5]  # rank 1: the second contiguous half


def test_parallel_without_process_group_trains_as_one(capsys):
    model = _model()
    h = train(model, _loss, _batch, TrainConfig(**dict(BASE, steps=3, parallel="ddp")),
              device="cpu", progress=False)
    assert len(h.losses) == 3
    assert "trains as parallel='none'" in capsys.readouterr().out


def test_non_finite_on_one_rank_stops_every_rank(runs):
    folder, ranks = runs
    for rank in ranks:
        assert "Not finite at step 4" in rank["nan"]
    assert load_checkpoint(os.path.join(folder, "nan"))["step"] == 4  # the last good one


TORCHRUN_SCRIPT = """
import sys
sys.path.insert(0, {tests!r})
import torch
torch.set_num_threads(1)
from test_train_distributed import _run
_run("ddp_accum2", {folder!r}, parallel=True)
import torch.distributed as dist
rank = dist.get_rank()
with open(r"{folder}" + f".rank{{rank}}", "w") as f:
    print(f"world {{dist.get_world_size()}} rank {{rank}}", file=f)
"""


def test_torchrun_environment(tmp_path):
    """Started by torchrun, ``train`` reads RANK/WORLD_SIZE/LOCAL_RANK and joins the group itself."""
    import subprocess
    import sys
    from pathlib import Path

    script = tmp_path / "job.py"
    script.write_text(TORCHRUN_SCRIPT.format(tests=str(Path(__file__).parent), folder=str(tmp_path / "tr")))
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(script)],
        capture_output=True, text=True, timeout=300, check=False,
        env={**os.environ, "OMP_NUM_THREADS": "1", "PALI3_DEVICE": "cpu"},
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    # each rank writes its own line to its own file (two processes' prints can interleave on stdout)
    seen = [(tmp_path / f"tr.rank{r}").read_text().strip() for r in (0, 1)]
    assert seen == ["world 2 rank 0", "world 2 rank 1"]
    single = _run("ddp_accum2", str(tmp_path / "one"), parallel=False)
    got = load_checkpoint(tmp_path / "tr" / "ddp_accum2")
    ref = load_checkpoint(tmp_path / "one" / "ddp_accum2")
    assert got["world_size"] == 2
    losses = [row["loss"] for row in got["history"]["rows"]]
    assert losses == pytest.approx(single.losses, rel=1e-6, abs=1e-6)
    for k, v in ref["model"].items():
        torch.testing.assert_close(got["model"][k], v, rtol=1e-6, atol=1e-6)
