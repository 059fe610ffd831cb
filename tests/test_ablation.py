"""The SigLIP-vs-random ViT ablation (pali3_edu.ablation) on the micro preset, in a private data folder."""

import json

import pytest

from pali3_edu import ablation
from pali3_edu.ablation import AblationSettings, summarize, summary_lines, verdict, vision_init_ablation

MICRO = AblationSettings(seeds=(0, 1), steps=3, warmup_steps=1, eval_scenes=4, preset="micro")


@pytest.fixture(scope="module")
def table(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        folder = tmp_path_factory.mktemp("data")
        mp.setenv("PALI3_EDU_DATA", str(folder))
        mp.setattr(ablation, "recorded_dir", lambda: folder / "recorded")
        yield vision_init_ablation(MICRO), folder


def test_every_arm_and_seed_is_trained_and_scored(table):
    table, _ = table
    assert table["source"] == "run"
    assert [(r["variant"], r["seed"]) for r in table["rows"]] == [
        ("siglip", 0), ("siglip", 1), ("random", 0), ("random", 1)]
    assert all(r["steps"] == 3 for r in table["rows"])
    assert all(0.0 <= r["vqa/accuracy"] <= 1.0 for r in table["rows"])


def test_seeds_and_arms_train_different_models(table):
    from pali3_edu.recipes.pali3 import get_recipe

    fingerprints = {get_recipe("pali3-stage1", "micro", **MICRO.overrides(v, s)).fingerprint()
                    for v in MICRO.variants for s in MICRO.seeds}
    assert len(fingerprints) == 4


def test_the_table_is_reused_only_for_the_same_settings(table, monkeypatch):
    table, folder = table
    monkeypatch.setenv("PALI3_EDU_DATA", str(folder))
    monkeypatch.setattr(ablation, "recorded_dir", lambda: folder / "recorded")
    again = vision_init_ablation(MICRO)
    assert again["source"] == "cache" and again["rows"] == table["rows"]
    # a shipped (recorded) table is found when there is no local one
    cached = folder / "results" / ablation.result_name(MICRO)
    (folder / "recorded").mkdir()
    (folder / "recorded" / cached.name).write_text(cached.read_text())
    cached.unlink()
    assert vision_init_ablation(MICRO)["source"] == "recorded"
    # another budget is another key: the recorded table does not answer for it
    assert ablation.result_name(MICRO) != ablation.result_name(AblationSettings(seeds=(0, 1), steps=4,
                                                                                warmup_steps=1, preset="micro"))


def test_a_damaged_table_is_not_used(table, monkeypatch, capsys):
    _, folder = table
    monkeypatch.setenv("PALI3_EDU_DATA", str(folder))
    monkeypatch.setattr(ablation, "recorded_dir", lambda: folder / "nothing")
    path = folder / "results" / ablation.result_name(MICRO)
    path.write_text('{"rows": "oops"')
    fresh = vision_init_ablation(MICRO)  # every arm is cached under data/runs: no retraining
    assert "damaged" in capsys.readouterr().out and fresh["source"] == "run"
    assert json.loads(path.read_text())["rows"] == fresh["rows"]


def test_summary_and_verdicts():
    rows = [{"variant": v, "seed": s, "steps": 5, **{f"{t}/{m}": x for _, t, m in ablation.METRICS}}
            for v, s, x in (("siglip", 0, 0.6), ("siglip", 1, 0.62), ("random", 0, 0.4), ("random", 1, 0.41))]
    stats = summarize(rows)
    mean, std = stats["vqa/accuracy"]["siglip"]
    assert mean == pytest.approx(0.61) and std == pytest.approx(0.0141421, rel=1e-4)
    assert verdict(stats["vqa/accuracy"]["siglip"], stats["vqa/accuracy"]["random"]) == "ahead"
    assert verdict((0.5, 0.1), (0.6, 0.05)) == "within seed noise"
    assert verdict((0.3, 0.01), (0.6, 0.05)) == "behind"
    lines = summary_lines({"rows": rows, "settings": {"eval_scenes": 7}})
    assert "2 seeds each, 5 steps, 7 val scenes" in lines[1] and lines[2].endswith("ahead")


@pytest.mark.parametrize("kwargs, message", [
    ({"variants": ()}, "at least one variant"), ({"variants": ("imagenet",)}, "'siglip' or 'random'"),
    ({"steps": 0}, "steps must be a positive int"), ({"warmup_steps": 750}, "warmup_steps must be in"),
])
def test_bad_settings(kwargs, message):
    with pytest.raises(ValueError, match=message):
        AblationSettings(**kwargs)
