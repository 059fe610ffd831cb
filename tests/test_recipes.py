"""The recipe layer: fingerprints, overrides and the ``load_or_train`` cache (every stage alike).

The cache tests use the ``micro`` UL2 recipe (seconds) in a private data folder.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from pali3_edu import recipes
from pali3_edu.recipes import base, get_recipe, load_or_train


@pytest.fixture()
def data_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("PALI3_EDU_DATA", str(tmp_path))
    return tmp_path


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def _tiny(**overrides):
    return get_recipe("ul2", "micro", **{"steps": 4, "warmup_steps": 1, "checkpoint_every": 2, **overrides})


def _same_weights(a, b) -> bool:
    return all(torch.equal(x.detach().cpu(), y.detach().cpu()) for x, y in zip(a.parameters(), b.parameters()))


# ---------------------------------------------------------------------------------------------
# Recipes and fingerprints
# ---------------------------------------------------------------------------------------------


def test_every_stage_has_its_presets():
    names = recipes.list_recipes()
    for stage in ("siglip", "ul2"):
        for preset in ("tiny-cpu", "micro"):
            assert f"{stage}:{preset}" in names
    with pytest.raises(ValueError, match="Stages"):
        get_recipe("nope")
    with pytest.raises(ValueError, match="Presets"):
        get_recipe("ul2", "nope")


def test_overrides_reach_the_nested_settings():
    r = get_recipe("ul2", "micro", steps=7, **{"data.batch_size": 3, "model.d_ff": 96})
    assert (r.train.steps, r.data.batch_size, r.model.d_ff) == (7, 3, 96)
    assert get_recipe("ul2", "micro").train.steps != 7  # presets are never modified
    with pytest.raises(ValueError, match="no setting 'nope'"):
        get_recipe("ul2", "micro", **{"data.nope": 1})
    with pytest.raises(ValueError, match="matches none"):
        get_recipe("ul2", "micro", nope=1)


def test_fingerprint_covers_every_setting():
    base_fp = _tiny().fingerprint()
    assert _tiny().fingerprint() == base_fp
    for change in ({"lr": 0.02}, {"seed": 1}, {"data.chunk_len": 16}, {"model.d_ff": 96},
                   {"data.mixture_weights": (1.0,) * 7}):
        assert _tiny(**change).fingerprint() != base_fp, change
    # settings that cannot change the weights do not change it
    assert _tiny(log_every=3, checkpoint_every=1).fingerprint() == base_fp


def test_fingerprint_covers_generator_and_tokenizer_versions(monkeypatch):
    from pali3_edu.data import shapesworld

    before = _tiny().fingerprint()
    monkeypatch.setattr(shapesworld, "GENERATOR_VERSION", "999")
    assert _tiny().fingerprint() != before
    monkeypatch.undo()
    assert _tiny().fingerprint() == before
    # another tokenizer with the same vocabulary size still changes the fingerprint
    monkeypatch.setattr(base, "tokenizer_fingerprint", lambda: "another-tokenizer")
    assert _tiny().fingerprint() != before


def test_fingerprint_covers_the_stage_code_version(monkeypatch):
    before = _tiny().fingerprint()
    stage = base.get_stage("ul2")
    monkeypatch.setattr(stage, "version", stage.version + "-changed")
    assert _tiny().fingerprint() != before


def test_describe_changes_names_each_key():
    text = base.describe_changes({"a": {"b": 1, "c": 2}}, {"a": {"b": 1, "c": 3}, "d": 4})
    assert "a.c: 2 -> 3" in text and "d: '<absent>' -> 4" in text and "a.b" not in text


# ---------------------------------------------------------------------------------------------
# load_or_train: the cache
# ---------------------------------------------------------------------------------------------


def test_trains_once_then_loads(data_folder):
    first = load_or_train(_tiny(), progress=False, device="cpu")
    assert not first.loaded and first.path.is_dir()
    assert str(first.path).startswith(str(data_folder))
    again = load_or_train(_tiny(), progress=False, device="cpu")
    assert again.loaded and _same_weights(first.model, again.model)
    assert again.history.losses == first.history.losses
    model, tokenizer, history = again  # unpacks like the lessons use it
    assert model is again.model and tokenizer is again.tokenizer


def test_a_changed_recipe_is_retrained_never_reused(data_folder, capsys):
    old = load_or_train(_tiny(), progress=False, device="cpu")
    changed = _tiny(lr=0.02)  # same stage and preset name: same cache folder
    new = load_or_train(changed, progress=False, device="cpu")
    out = capsys.readouterr().out
    assert not new.loaded
    assert "another recipe" in out and "train.lr: 0.01 -> 0.02" in out
    assert not _same_weights(old.model, new.model)
    # and the new run is what the cache holds now
    assert load_or_train(changed, progress=False, device="cpu").loaded


def test_another_tokenizer_invalidates_the_cache(data_folder, monkeypatch, capsys):
    load_or_train(_tiny(), progress=False, device="cpu")
    monkeypatch.setattr(base, "tokenizer_fingerprint", lambda: "another-tokenizer")
    run = load_or_train(_tiny(), progress=False, device="cpu")
    assert not run.loaded and "versions.tokenizer" in capsys.readouterr().out


def test_a_damaged_cache_is_rebuilt(data_folder, capsys):
    first = load_or_train(_tiny(), progress=False, device="cpu")
    folder = first.path.parent
    for f in folder.rglob("*"):
        if f.is_file():
            f.write_bytes(b"garbage" * 3)
    run = load_or_train(_tiny(), progress=False, device="cpu")
    assert not run.loaded and "damaged" in capsys.readouterr().out
    assert _same_weights(first.model, run.model)  # deterministic: the same model again


def test_an_interrupted_run_resumes_to_the_same_model(data_folder):
    full = load_or_train(_tiny(), progress=False, device="cpu", cache_name="full")
    part = load_or_train(_tiny(), progress=False, device="cpu", stop_after=2, cache_name="part")
    assert not part.loaded and len(part.history.losses) >= 1
    rest = load_or_train(_tiny(), progress=False, device="cpu", cache_name="part")
    assert not rest.loaded and rest.history.resumed_from == 2
    assert _same_weights(full.model, rest.model)


def test_overrides_are_cached_apart_from_the_preset(data_folder):
    a = load_or_train("ul2", "micro", progress=False, device="cpu", steps=2, warmup_steps=1)
    b = load_or_train("ul2", "micro", progress=False, device="cpu", steps=3, warmup_steps=1)
    assert a.path != b.path and not b.loaded
    assert load_or_train("ul2", "micro", progress=False, device="cpu", steps=2, warmup_steps=1).loaded


def test_recipe_is_a_plain_dataclass_of_settings():
    r = _tiny()
    d = r.to_dict()
    assert d["stage"] == "ul2" and d["train"]["steps"] == 4
    assert "log_every" not in d["train"]
    assert dataclasses.replace(r, preset="other").fingerprint() == r.fingerprint()
