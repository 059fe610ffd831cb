"""Checkpoint folders: atomic writes that survive a kill, corruption detected, nothing unpickled."""

import hashlib
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from torch import nn

from pali3_edu.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from pali3_edu.train import TrainConfig, train

TESTS = Path(__file__).resolve().parent
CFG = TrainConfig(steps=12, lr=0.02, warmup_steps=2, log_every=1, checkpoint_every=3)


def _batch(step: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(step)
    x = torch.randn(16, 4, generator=g)
    return {"x": x, "y": x @ torch.tensor([[1.0], [-2.0], [0.5], [3.0]])}


def _loss(model: nn.Module, batch) -> torch.Tensor:
    return ((model(batch["x"]) - batch["y"]) ** 2).mean()


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1))


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _rewrite_manifest(folder: Path) -> None:
    """Make the manifest agree with the files again (an attacker who edits both)."""
    manifest = json.loads((folder / "meta.json").read_text())
    for name, entry in manifest["files"].items():
        entry.update(sha256=_sha(folder / name), bytes=(folder / name).stat().st_size)
    (folder / "meta.json").write_text(json.dumps(manifest))


# ---------------------------------------------------------------------------------------------
# Killed while writing
# ---------------------------------------------------------------------------------------------

KILLED_RUN = textwrap.dedent("""
    import os, signal, sys
    sys.path.insert(0, {tests!r})
    import safetensors.torch
    from test_checkpoint import CFG, _batch, _loss, _model
    from pali3_edu.train import train

    where, calls = {where!r}, []
    real_save, real_replace = safetensors.torch.save_file, os.replace

    def save_file(tensors, filename, metadata=None):
        calls.append(filename)
        if where == "weights" and len(calls) == 2:  # the second checkpoint, half written
            open(filename, "wb").write(b"half a file")
            os.kill(os.getpid(), signal.SIGKILL)
        return real_save(tensors, filename, metadata=metadata)

    def replace(src, dst):
        # between moving the old checkpoint aside and moving the new one in
        if where == "swap" and ".tmp-" in str(src) and len(calls) == 2:
            os.kill(os.getpid(), signal.SIGKILL)
        return real_replace(src, dst)

    safetensors.torch.save_file = save_file
    os.replace = replace
    train(_model(), _loss, _batch, CFG, checkpoint={ckpt!r}, device="cpu", progress=False)
    print("not killed")
""")


@pytest.mark.parametrize("where", ["weights", "swap"])
def test_killed_during_save_resumes_from_last_good(tmp_path, where, capsys):
    ckpt = tmp_path / "run" / "ckpt"
    script = KILLED_RUN.format(tests=str(TESTS), where=where, ckpt=str(ckpt))
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, check=False,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == -9, proc.stdout + proc.stderr  # SIGKILL, mid-save
    leftovers = sorted(p.name for p in ckpt.parent.iterdir())
    assert any(".tmp-" in name for name in leftovers), leftovers  # the half-written new checkpoint
    if where == "swap":
        assert not ckpt.exists() and ckpt.with_name("ckpt.prev").exists()

    assert load_checkpoint(ckpt)["step"] == 3  # the first checkpoint, intact
    model = _model()
    h = train(model, _loss, _batch, CFG, checkpoint=ckpt, device="cpu", progress=False)
    assert h.resumed_from == 3
    if where == "swap":
        assert "previous good checkpoint" in capsys.readouterr().out

    ref = _model()
    h_ref = train(ref, _loss, _batch, CFG, checkpoint=tmp_path / "ref", device="cpu", progress=False)
    for a, b in zip(ref.parameters(), model.parameters()):
        assert torch.equal(a, b)
    assert h.losses == h_ref.losses
    assert sorted(p.name for p in ckpt.parent.iterdir()) == ["ckpt"]  # leftovers cleaned up


# ---------------------------------------------------------------------------------------------
# Damage is detected
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["model.safetensors", "state.pt", "meta.json"])
def test_truncated_or_missing_file_is_detected(tmp_path, name):
    path = save_checkpoint(tmp_path / "c", _model(), step=3)
    f = path / name
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="corrupt|incomplete") as err:
        load_checkpoint(path)
    assert "Delete the folder" in str(err.value)
    f.unlink()
    with pytest.raises(CheckpointError, match="incomplete|missing"):
        load_checkpoint(path)


def test_flipped_byte_is_detected_by_sha256(tmp_path):
    path = save_checkpoint(tmp_path / "c", _model(), step=3)
    f = path / "model.safetensors"
    data = bytearray(f.read_bytes())
    data[-3] ^= 0xFF  # same size, one weight changed
    f.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="sha256"):
        load_checkpoint(path)


def test_damaged_checkpoint_falls_back_to_prev(tmp_path, capsys):
    path = tmp_path / "c"
    save_checkpoint(path, _model(), step=3)
    os.replace(path, tmp_path / "c.prev")
    save_checkpoint(tmp_path / "tmp", nn.Linear(1, 1), step=6)
    os.replace(tmp_path / "tmp", path)
    (path / "state.pt").write_bytes(b"garbage")
    state = load_checkpoint(path, _model())
    assert state["step"] == 3 and state["path"].endswith("c.prev")
    assert "previous good checkpoint" in capsys.readouterr().out


class _Payload:
    """Unpickling this object would create ``marker`` (a stand-in for arbitrary code)."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_planted_pickle_is_never_executed(tmp_path):
    marker = tmp_path / "pwned"
    path = save_checkpoint(tmp_path / "c", _model(), step=3)
    torch.save({"step": 3, "evil": _Payload(marker)}, path / "state.pt")
    _rewrite_manifest(path)  # the manifest agrees: only weights_only loading stands in the way
    with pytest.raises(CheckpointError, match="not unpickled"):
        load_checkpoint(path)
    with pytest.raises(CheckpointError):
        train(_model(), _loss, _batch, CFG, checkpoint=path, device="cpu", progress=False)

    legacy = tmp_path / "old.pt"  # a single-file checkpoint of the old format
    torch.save({"model": _model().state_dict(), "evil": _Payload(marker)}, legacy)
    with pytest.raises(CheckpointError, match="older version.*Delete it"):
        load_checkpoint(legacy)
    with pytest.raises(CheckpointError, match="older version"):
        train(_model(), _loss, _batch, CFG, checkpoint=legacy, device="cpu", progress=False)
    assert not marker.exists()


# ---------------------------------------------------------------------------------------------
# Weights that do not fit
# ---------------------------------------------------------------------------------------------


def test_weights_subset_names_the_keys(tmp_path):
    path = save_checkpoint(tmp_path / "c", nn.Sequential(nn.Linear(4, 8)), step=1)
    with pytest.raises(CheckpointError, match=r"does not fit.*missing: 2\.weight, 2\.bias"):
        load_checkpoint(path, _model())
    wide = save_checkpoint(tmp_path / "w", nn.Sequential(nn.Linear(4, 9), nn.Tanh(), nn.Linear(9, 1)))
    with pytest.raises(CheckpointError, match=r"shapes differ: 0\.weight: checkpoint \(9, 4\) vs model \(8, 4\)"):
        load_checkpoint(wide, _model())
    extra = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1), nn.Linear(1, 1))
    with pytest.raises(CheckpointError, match=r"unexpected: 3\.bias, 3\.weight"):
        load_checkpoint(save_checkpoint(tmp_path / "e", extra), _model())


def test_non_finite_weights_are_refused(tmp_path):
    model = _model()
    with torch.no_grad():
        model[0].weight[0, 0] = float("nan")
    path = save_checkpoint(tmp_path / "c", model, step=1)
    with pytest.raises(CheckpointError, match="NaN/inf"):
        load_checkpoint(path, _model())


def test_tied_weights_round_trip(tmp_path):
    class Tied(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(10, 4)
            self.head = nn.Linear(4, 10, bias=False)
            self.head.weight = self.embed.weight

    torch.manual_seed(1)
    a, b = Tied(), Tied()
    load_checkpoint(save_checkpoint(tmp_path / "t", a, step=0), b)
    assert torch.equal(a.embed.weight, b.embed.weight)
    assert b.head.weight is b.embed.weight  # still tied after loading


def test_checkpoint_path_under_a_file_names_pali3_edu_data(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("a file, so no folder can be created below it")
    calls = []

    def get_batch(i):
        calls.append(i)
        return _batch(i)

    with pytest.raises(CheckpointError, match="PALI3_EDU_DATA") as err:
        train(_model(), _loss, get_batch, CFG, checkpoint=blocker / "ckpt", device="cpu", progress=False)
    assert str(blocker) in str(err.value)
    assert calls == []  # refused before any training


def test_state_that_could_not_be_loaded_safely_is_refused_at_save(tmp_path):
    with pytest.raises(TypeError, match="asdict"):
        save_checkpoint(tmp_path / "c", _model(), config=TrainConfig())
    assert not (tmp_path / "c").exists()
