"""Checkpoints shipped with the package (pali3_edu.shipped): export, load, and refusal of stale or
damaged files. On the micro SigLIP preset (seconds), in a private data folder and shipped folder."""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from pali3_edu import shipped
from pali3_edu.recipes import load_or_train
from pali3_edu.recipes.base import get_recipe
from pali3_edu.shipped import ShippedCheckpointError, export_run, load_shipped, read_shipped, shipped_path

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        data = tmp_path_factory.mktemp("data")
        mp.setenv("PALI3_EDU_DATA", str(data))
        folder = tmp_path_factory.mktemp("shipped")
        mp.setattr(shipped, "SHIPPED_DIR", folder)
        run = load_or_train("siglip", "micro", progress=False, device="cpu")
        path = export_run("siglip", "micro")
        yield run, path, data, folder


@pytest.fixture
def private(exported, monkeypatch):
    run, path, data, folder = exported
    monkeypatch.setenv("PALI3_EDU_DATA", str(data))
    monkeypatch.setattr(shipped, "SHIPPED_DIR", folder)
    return exported


def test_export_writes_half_precision_weights_and_the_recipe(private):
    run, path, _, folder = private
    assert path == shipped_path("siglip", "micro") and path.parent == folder
    tensors, meta = read_shipped(path)
    assert meta["fingerprint"] == get_recipe("siglip", "micro").fingerprint()
    assert json.loads(meta["identity"]) == json.loads(json.dumps(get_recipe("siglip", "micro").identity()))
    floats = [v for v in tensors.values() if v.is_floating_point()]
    assert floats and all(v.dtype == torch.float16 for v in floats)
    assert set(tensors) == set(run.model.state_dict())


def test_the_shipped_model_equals_the_trained_one_up_to_float16(private):
    run, _, _, _ = private
    loaded = load_shipped("siglip", "micro", device="cpu")
    assert loaded.loaded and loaded.recipe.fingerprint() == run.recipe.fingerprint()
    assert loaded.history.losses == run.history.losses
    for k, v in run.model.state_dict().items():
        w = loaded.model.state_dict()[k]
        assert w.dtype == v.dtype
        assert torch.allclose(w, v.half().to(v.dtype)), k  # exactly the float16 rounding
    images = torch.rand(3, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        a, b = run.model.encode_image(images)[0], loaded.model.encode_image(images)[0]
    assert torch.allclose(a, b, atol=2e-2)


def test_load_or_train_uses_a_shipped_run_when_nothing_is_cached(private, tmp_path, monkeypatch):
    monkeypatch.setenv("PALI3_EDU_DATA", str(tmp_path))  # an empty data folder: no cached run
    run = load_or_train("siglip", "micro", progress=False, device="cpu")
    assert run.loaded and run.path == shipped_path("siglip", "micro")
    assert not (tmp_path / "runs" / "siglip-micro").exists()  # nothing was trained
    # retrain=True trains instead (the documented way to reproduce a shipped run)
    again = load_or_train("siglip", "micro", progress=False, device="cpu", retrain=True)
    assert not again.loaded and (tmp_path / "runs" / "siglip-micro" / "checkpoint").exists()


def _stale_copy(path: Path, folder: Path) -> None:
    tensors, meta = read_shipped(path)
    meta["fingerprint"] = "0" * 16
    folder.mkdir()
    save_file(tensors, str(folder / path.name), metadata=meta)


def test_a_stale_shipped_checkpoint_is_refused_with_what_changed(private, tmp_path, monkeypatch):
    _, path, _, folder = private
    recipe = get_recipe("siglip", "micro", **{"train.lr": 5e-4})
    with pytest.raises(ShippedCheckpointError, match=r"another recipe.*train\.lr.*python -m pali3_edu\.train"):
        load_shipped(recipe)
    # load_or_train refuses it too, instead of starting hours of training unannounced ...
    _stale_copy(path, tmp_path / "stale")
    monkeypatch.setattr(shipped, "SHIPPED_DIR", tmp_path / "stale")
    monkeypatch.setenv("PALI3_EDU_DATA", str(tmp_path / "data"))
    with pytest.raises(ShippedCheckpointError, match="trained from another recipe.*retrain=True"):
        load_or_train("siglip", "micro", progress=False, device="cpu")
    assert not (tmp_path / "data" / "runs" / "siglip-micro").exists()
    # ... and trains it when asked to
    run = load_or_train("siglip", "micro", progress=False, device="cpu", retrain=True)
    assert not run.loaded


def test_the_command_the_refusal_names_trains_the_stale_preset(private, tmp_path, monkeypatch, capsys):
    """The refusal says 'train it with python -m pali3_edu.train --recipe … --preset …'; that command
    must then train (not raise the same refusal), resuming an interrupted run of it."""
    from pali3_edu.run import main

    _, path, _, _ = private
    _stale_copy(path, tmp_path / "stale")
    monkeypatch.setattr(shipped, "SHIPPED_DIR", tmp_path / "stale")
    monkeypatch.setenv("PALI3_EDU_DATA", str(tmp_path / "data"))
    assert main(["--recipe", "siglip", "--preset", "micro", "--device", "cpu", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "trained from another recipe" in out and "here instead" in out
    record = json.loads((tmp_path / "data" / "runs" / "siglip-micro" / "resolved_recipe.json").read_text())
    assert record["run"]["loaded_from_cache"] is False
    # an interrupted run of it is resumed, not started again
    monkeypatch.setenv("PALI3_EDU_DATA", str(tmp_path / "data2"))
    first = load_or_train("siglip", "micro", progress=False, device="cpu", shipped=False, stop_after=3)
    assert main(["--recipe", "siglip", "--preset", "micro", "--device", "cpu", "--quiet"]) == 0
    run = load_or_train("siglip", "micro", progress=False, device="cpu", shipped=False)
    steps = get_recipe("siglip", "micro").train.steps
    assert run.loaded and run.history.resumed_from == steps
    logged = [row["step"] for row in run.history.rows]
    assert logged == sorted(set(logged))  # one history, not a second run started from step 0
    assert run.history.rows[0] == first.history.rows[0]


def test_retrain_on_the_command_line_never_loads_the_shipped_file(private, tmp_path, monkeypatch):
    from pali3_edu.run import main

    monkeypatch.setenv("PALI3_EDU_DATA", str(tmp_path))  # the shipped file is current
    assert main(["--recipe", "siglip", "--preset", "micro", "--device", "cpu", "--quiet", "--retrain"]) == 0
    record = json.loads((tmp_path / "runs" / "siglip-micro" / "resolved_recipe.json").read_text())
    assert record["run"]["loaded_from_cache"] is False
    assert (tmp_path / "runs" / "siglip-micro" / "checkpoint").exists()


@pytest.mark.parametrize("damage", ["truncated", "garbage", "wrong format", "missing tensor"])
def test_a_damaged_shipped_checkpoint_is_refused(private, tmp_path, monkeypatch, damage):
    _, path, _, _ = private
    monkeypatch.setattr(shipped, "SHIPPED_DIR", tmp_path)
    target = shipped_path("siglip", "micro")
    blob = path.read_bytes()
    if damage == "truncated":
        target.write_bytes(blob[: len(blob) // 2])
    elif damage == "garbage":
        target.write_bytes(b"\x80\x04import os; os.system('echo pwned')" + blob[:100])
    else:
        tensors, meta = read_shipped(path)
        if damage == "wrong format":
            meta["format"] = "something-else"
        else:
            tensors.pop(sorted(tensors)[0])
        save_file(tensors, str(target), metadata=meta)
    with pytest.raises(ShippedCheckpointError, match="damaged|not a pali3-edu|does not match"):
        load_shipped("siglip", "micro")


def test_export_refuses_a_missing_or_unfinished_run(private, tmp_path, monkeypatch):
    monkeypatch.setenv("PALI3_EDU_DATA", str(tmp_path))
    with pytest.raises(ShippedCheckpointError, match="train it first"):
        export_run("siglip", "micro", directory=tmp_path / "out")
    load_or_train("siglip", "micro", progress=False, device="cpu", retrain=True, stop_after=3)
    with pytest.raises(ShippedCheckpointError, match="step 3 of"):
        export_run("siglip", "micro", directory=tmp_path / "out")


def test_a_missing_shipped_checkpoint_says_how_to_train_it(tmp_path, monkeypatch):
    monkeypatch.setattr(shipped, "SHIPPED_DIR", tmp_path)
    with pytest.raises(ShippedCheckpointError, match="--recipe siglip --preset micro"):
        load_shipped("siglip", "micro")


def test_the_checkpoints_in_the_package_are_current():
    """Every shipped file matches its recipe in this checkout: a change to the code or settings
    that would make one stale fails here, not silently in a lesson."""
    package = Path(shipped.__file__).parent / "recorded" / "checkpoints"  # not a test's private folder
    names = shipped.shipped_runs(package)
    assert "siglip-long-cpu" in names
    for name in names:
        path = package / f"{name}.safetensors"
        _, meta = read_shipped(path, tensors=False)
        recipe = get_recipe(meta["stage"], meta["preset"])
        assert meta["fingerprint"] == recipe.fingerprint(), (
            f"{name} is stale: retrain it (python -m pali3_edu.train --recipe {meta['stage']} --preset "
            f"{meta['preset']}) and export it again (python -m pali3_edu.shipped export ...)")
        assert path.stat().st_size < 8 * 2**20  # small files only


def test_package_data_includes_every_recorded_file():
    """A plain (non-editable) install carries the shipped checkpoints and recorded tables."""
    import fnmatch

    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    root = Path(shipped.__file__).parent
    setuptools = tomllib.loads((root.parent / "pyproject.toml").read_text())["tool"]["setuptools"]
    patterns = setuptools["package-data"]["pali3_edu"]
    files = [p.relative_to(root).as_posix() for p in (root / "recorded").rglob("*") if p.is_file()]
    assert any(f.endswith(".safetensors") for f in files)
    missed = [f for f in files if not any(fnmatch.fnmatch(f, pat) for pat in patterns)]
    assert not missed, f"add these to [tool.setuptools.package-data] in pyproject.toml: {missed}"


def _is_long(preset: str) -> bool:
    """The presets trained for hours and shipped: ``long-cpu`` and ``xlong-cpu``."""
    return preset.endswith("long-cpu")


def _long_runs_the_lessons_load() -> set[tuple[str, str]]:
    """``(stage, preset)`` of every long run (``long-cpu``, ``xlong-cpu``) a lesson loads by name, e.g.
    ``load_or_train_siglip("long-cpu")`` or ``load_or_train_pali3("transfer", "long-cpu")`` in a
    notebook's code cells."""
    import re

    import nbformat

    found = set()
    for path in sorted((Path(shipped.__file__).parents[1] / "notebooks").glob("*.ipynb")):
        code = "\n".join(c.source for c in nbformat.read(path, 4).cells if c.cell_type == "code")
        found |= {("siglip", p) for p in re.findall(r'load_or_train_siglip\(\s*"([\w-]+)"', code)}
        found |= {(f"pali3-{s}", p) for s, p in re.findall(r'load_or_train_pali3\(\s*"(\w+)",\s*"([\w-]+)"', code)}
    return {(s, p) for s, p in found if _is_long(p)}


def test_the_lessons_never_have_to_train_a_long_run():
    """Every long run that a lesson loads (by name, or as the start of a recipe it trains,
    directly or through earlier stages) is shipped and current, so a fresh checkout runs the
    lessons in minutes."""
    package = Path(shipped.__file__).parent / "recorded" / "checkpoints"
    names = set(shipped.shipped_runs(package))
    direct = _long_runs_the_lessons_load()
    assert ("pali3-transfer", "long-cpu") in direct  # the scan finds lesson 11's specialist
    assert ("siglip", "xlong-cpu") in direct  # and lesson 04's longest SigLIP
    seen = set()
    todo = [("pali3-stage1", "tiny-cpu"), ("pali3-stage2", "tiny-cpu"), ("pali3-transfer", "tiny-cpu"), *direct]
    while todo:
        stage, preset = todo.pop()
        if (stage, preset) in seen:
            continue
        seen.add((stage, preset))
        todo += list(get_recipe(stage, preset).upstream.values())
    long_runs = {f"{s}-{p}" for s, p in seen if _is_long(p)}
    assert {"siglip-long-cpu", "pali3-stage1-long-cpu", "pali3-transfer-long-cpu"} <= long_runs
    assert long_runs <= names, f"lessons need long runs that are not shipped: {long_runs - names}"
