"""``python -m pali3_edu.train`` (``pali3_edu.run.main``): every stage at the smoke preset, chained
and cached; overrides reaching the recipe; clear errors; two torchrun processes equal one.

All runs share one private data folder (``PALI3_EDU_DATA``) for the module: the smoke chain is
trained once (seconds) and the later tests start from its cache.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pali3_edu.recipes.base import get_recipe
from pali3_edu.recipes.scale import STAGE_ORDER
from pali3_edu.run import build_parser, main, parse_settings, parse_value, resolve_recipes, stage_overrides

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("data")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PALI3_EDU_DATA", str(folder))
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        yield folder
        torch.set_num_threads(threads)


def _main(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(argv))
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def smoke_chain(data):
    """``--recipe all --preset smoke`` once: its exit code and output."""
    return _main("--recipe", "all", "--preset", "smoke", "--quiet")


def _rows(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]


def _summary_lines(out: str) -> list[str]:
    return [line for line in out.splitlines() if line.startswith("[")]


def test_all_stages_train_chain_and_load_from_the_cache(data, smoke_chain):
    code, out, _ = smoke_chain
    assert code == 0, out
    lines = _summary_lines(out)
    assert [line.split("/")[0][1:] for line in lines] == list(STAGE_ORDER)
    assert all("] trained: " in line and "final loss" in line for line in lines), lines
    fingerprints = {}
    for stage, line in zip(STAGE_ORDER, lines):
        folder = data / "runs" / f"{stage}-smoke"
        recipe = get_recipe(stage, "smoke")
        assert (folder / "checkpoint").is_dir() and str(folder) in line
        resolved = json.loads((folder / "resolved_recipe.json").read_text())
        assert resolved["fingerprint"] == recipe.fingerprint()
        assert resolved["recipe"]["train"]["steps"] == recipe.train.steps
        assert resolved["run"]["processes"] == 1 and resolved["run"]["loaded_from_cache"] is False
        rows = _rows(folder)
        assert [r["step"] for r in rows] == list(range(recipe.train.steps))  # log_every=1
        assert f"final loss {rows[-1]['loss']:.4f}" in line
        fingerprints[stage] = resolved["fingerprint"]
        for role, up in resolved["upstream"].items():  # each stage started from the one before
            assert up["fingerprint"] == fingerprints[up["stage"]], (stage, role)
    assert json.loads((data / "runs" / "pali3-stage1-smoke" / "resolved_recipe.json").read_text()
                      )["upstream"].keys() == {"vision", "text"}

    before = {stage: (data / "runs" / f"{stage}-smoke" / "metrics.jsonl").read_text() for stage in STAGE_ORDER}
    code, out, _ = _main("--recipe", "all", "--preset", "smoke", "--quiet")
    assert code == 0
    lines = _summary_lines(out)
    assert len(lines) == 5 and all("loaded from cache" in line for line in lines), out
    for stage in STAGE_ORDER:
        assert (data / "runs" / f"{stage}-smoke" / "metrics.jsonl").read_text() == before[stage]


def test_overrides_reach_the_recipe_and_get_their_own_cache(data):
    code, out, err = _main("--recipe", "ul2", "--preset", "smoke", "--steps", "3", "--batch-size", "4",
                           "--lr", "0.002", "--set", "train.grad_accum=2", "--set", "data.chunk_len=16",
                           "--set", "betas=[0.9, 0.95]", "--quiet")
    assert code == 0, err
    expected = get_recipe("ul2", "smoke", **{"train.steps": 3, "data.batch_size": 4, "train.lr": 0.002,
                                              "train.grad_accum": 2, "data.chunk_len": 16,
                                              "train.betas": (0.9, 0.95)})
    folder = data / "runs" / f"ul2-smoke-{expected.fingerprint()[:8]}"
    assert str(folder) in out
    resolved = json.loads((folder / "resolved_recipe.json").read_text())
    assert resolved["fingerprint"] == expected.fingerprint()
    train = resolved["recipe"]["train"]
    assert (train["steps"], train["lr"], train["grad_accum"], train["betas"]) == (3, 0.002, 2, [0.9, 0.95])
    assert resolved["recipe"]["data"]["batch_size"] == 4 and resolved["recipe"]["data"]["chunk_len"] == 16
    assert len(_rows(folder)) == 3


def test_batch_size_finds_each_stage_setting_and_chains_follow_overrides():
    args = build_parser().parse_args(["--recipe", "all", "--preset", "smoke", "--batch-size", "2",
                                      "--set", "ul2:train.steps=3", "--set", "seed=4"])
    settings = parse_settings(args.settings, STAGE_ORDER)
    got = {stage: stage_overrides(stage, get_recipe(stage, "smoke"), args, settings, None) for stage in STAGE_ORDER}
    assert got["siglip"] == {"data.batch_size": 2, "train.seed": 4}
    assert got["ul2"] == {"data.batch_size": 2, "train.seed": 4, "train.steps": 3}
    assert got["pali3-stage1"] == {"data.mix.batch_size": 2, "train.seed": 4}
    recipes = resolve_recipes(STAGE_ORDER, "smoke", lambda stage, recipe: got[stage])
    names = {r.stage: r.preset for r in recipes}
    assert all(p.startswith("smoke-") for p in names.values())
    stage1, stage2 = recipes[2], recipes[3]
    assert stage1.upstream == {"vision": ("siglip", names["siglip"]), "text": ("ul2", names["ul2"])}
    assert stage2.upstream == {"previous": ("pali3-stage1", names["pali3-stage1"])}
    assert get_recipe("pali3-stage2", names["pali3-stage2"]).fingerprint() == stage2.fingerprint()
    # only one stage changed: the later ones are renamed too (they start from it), earlier ones not
    only_ul2 = resolve_recipes(STAGE_ORDER, "smoke", lambda s, r: {"train.steps": 3} if s == "ul2" else {})
    assert [r.preset == "smoke" for r in only_ul2] == [True, False, False, False, False]
    # a preset's own value, or a setting outside the fingerprint: the same run, the same cache
    same = resolve_recipes(["ul2"], "smoke", lambda s, r: {"train.steps": r.train.steps, "train.log_every": 2})
    assert same[0].preset == "smoke" and same[0].train.log_every == 2


def test_amp_flag_sets_the_recipe_precision():
    recipe = get_recipe("ul2", "smoke")
    for flag, expected in (("auto", "bf16"), ("fp16", "fp16"), ("none", None)):  # auto on a CPU: bf16
        args = build_parser().parse_args(["--recipe", "ul2", "--preset", "smoke", "--amp", flag])
        assert stage_overrides("ul2", recipe, args, {}, torch.device("cpu")) == {"train.amp_dtype": expected}


# ---------------------------------------------------------------------------------------------
# the presets (pali3_edu.recipes.scale)
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("preset", ["colab-t4", "l4-a100", "h100"])
def test_gpu_presets_chain_one_real_size(preset):
    import dataclasses

    from pali3_edu.config import get_config
    from pali3_edu.recipes import scale

    r = {stage: get_recipe(stage, preset) for stage in STAGE_ORDER}
    vit_b16, t5_base = get_config("vit", "B/16"), get_config("encdec", "t5-v1_1-base")
    assert r["siglip"].model.vision == vit_b16 and vit_b16.image_size == 224
    for field in ("d_model", "d_kv", "d_ff", "num_layers", "num_decoder_layers", "num_heads"):
        assert getattr(r["ul2"].model, field) == getattr(t5_base, field)
    # stage 1 loads SigLIP's ViT (without its head) and UL2's encoder-decoder: the shapes must match
    stage1 = r["pali3-stage1"]
    assert stage1.model.vision == dataclasses.replace(r["siglip"].model.vision, pool="none")
    assert stage1.model.text == r["ul2"].model
    assert stage1.upstream == {"vision": ("siglip", preset), "text": ("ul2", preset)}
    assert r["pali3-stage2"].upstream == {"previous": ("pali3-stage1", preset)}
    assert r["pali3-transfer"].upstream == {"previous": ("pali3-stage2", preset)}
    for stage in ("pali3-stage2", "pali3-transfer"):  # 448 px: 784 visual tokens + the prompt fit
        cfg = r[stage].model
        assert cfg.vision.image_size == 448 and cfg.vision.num_patches + cfg.max_prompt_len <= cfg.text.max_input_length
    amp = {"colab-t4": "fp16", "l4-a100": "bf16", "h100": "bf16"}[preset]
    assert {x.train.amp_dtype for x in r.values()} == {amp}
    assert scale.TIERS[preset].amp == amp
    assert r["pali3-stage1"].data.stage.freeze_vision and not r["pali3-stage2"].data.stage.freeze_vision


def test_smoke_presets_are_the_micro_sizes_chained():
    from pali3_edu.recipes import scale

    for stage in STAGE_ORDER:
        smoke, micro = get_recipe(stage, "smoke"), get_recipe(stage, "micro")
        assert smoke.model == micro.model and smoke.data == micro.data
        assert smoke.train.steps <= 8 and smoke.train.log_every == 1
        assert all(p == "smoke" for _, p in smoke.upstream.values())
    before = {stage: get_recipe(stage, "h100").fingerprint() for stage in ("siglip", "pali3-stage2")}
    scale.register()  # idempotent
    assert before == {stage: get_recipe(stage, "h100").fingerprint() for stage in before}


def test_set_values_are_read_as_json_then_literals_then_text():
    assert parse_value("3") == 3 and parse_value("1e-4") == 1e-4
    assert parse_value("null") is None and parse_value("None") is None and parse_value("true") is True
    assert parse_value('{"refer": 1}') == {"refer": 1} and parse_value("(0.9, 0.95)") == (0.9, 0.95)
    assert parse_value("ddp") == "ddp"


@pytest.mark.parametrize("argv, message", [
    (["--recipe", "nope", "--preset", "smoke"], "Unknown recipe 'nope'. Recipes: siglip, ul2, pali3-stage1"),
    (["--recipe", "ul2", "--preset", "nope"], "Stage 'ul2' has no preset 'nope'. Presets: "),
    (["--recipe", "all", "--preset", "nope"], "has no preset 'nope'"),
    (["--recipe", "ul2", "--preset", "smoke", "--set", "train.nope=1"], "no setting 'nope'"),
    (["--recipe", "ul2", "--preset", "smoke", "--set", "steps"], "write KEY=VALUE"),
    (["--recipe", "ul2", "--preset", "smoke", "--set", "siglip:train.steps=2"], "not one of the stages"),
    (["--recipe", "ul2", "--preset", "smoke", "--set", "nope=1"], "matches none"),
    (["--recipe", "all", "--preset", "smoke", "--run-dir", "x"], "PALI3_EDU_DATA"),
    (["--preset", "smoke"], "--recipe and --preset are required"),
])
def test_bad_command_lines_give_clear_errors(data, argv, message):
    code, out, err = _main(*argv)
    assert code == 2 and message in err, err
    assert "Traceback" not in err and not _summary_lines(out)


def test_argparse_errors_and_list(data):
    assert _main("--recipe", "ul2", "--preset", "smoke", "--steps", "0")[0] == 2
    code, out, _ = _main("--list")
    assert code == 0 and "smoke" in out and "h100" in out and "pali3-transfer" in out


def test_run_dir_keeps_a_stage_elsewhere_and_refuses_foreign_folders(data, tmp_path):
    code, out, err = _main("--recipe", "ul2", "--preset", "smoke", "--run-dir", str(tmp_path / "mine"), "--quiet")
    assert code == 0, err
    assert (tmp_path / "mine" / "checkpoint").is_dir() and (tmp_path / "mine" / "metrics.jsonl").exists()
    code, out, _ = _main("--recipe", "ul2", "--preset", "smoke", "--run-dir", str(tmp_path / "mine"), "--quiet")
    assert code == 0 and "loaded from cache" in out
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "thesis.txt").write_text("keep me")
    code, _, err = _main("--recipe", "ul2", "--preset", "smoke", "--run-dir", str(tmp_path / "notes"))
    assert code == 2 and "holds other files" in err
    assert (tmp_path / "notes" / "thesis.txt").read_text() == "keep me"


def test_retrain_trains_again(data, smoke_chain):
    code, out, _ = _main("--recipe", "siglip", "--preset", "smoke", "--retrain", "--quiet")
    assert code == 0 and "--retrain; training again" in out and "] trained: " in out


def test_speed_flags_train_the_same_recipe_to_the_same_losses(data, smoke_chain, tmp_path):
    """Compiled blocks (aot_eager: no code generation on CPU), activation checkpointing and length
    buckets on stage 1 (ViT frozen): the same recipe, the same losses as the plain chain's run."""
    code, out, err = _main("--recipe", "pali3-stage1", "--preset", "smoke", "--run-dir", str(tmp_path / "fast"),
                           "--compile", "--compile-backend", "aot_eager", "--checkpointing", "--bucket", "16",
                           "--quiet")
    assert code == 0, err
    assert "speed paths: compile=blocks/aot_eager, checkpointing, bucket=16" in out
    plain_folder = data / "runs" / "pali3-stage1-smoke"
    fast, plain = _rows(tmp_path / "fast"), _rows(plain_folder)
    assert [r["loss"] for r in fast] == pytest.approx([r["loss"] for r in plain], rel=1e-5)
    resolved = json.loads((tmp_path / "fast" / "resolved_recipe.json").read_text())
    assert resolved["fingerprint"] == json.loads((plain_folder / "resolved_recipe.json").read_text())["fingerprint"]
    assert resolved["run"]["speed"]["bucket"] == 16


# ---------------------------------------------------------------------------------------------
# torchrun: two processes (gloo on CPU) train the same model as one
# ---------------------------------------------------------------------------------------------


def _torchrun(data: Path, *argv: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PALI3_EDU_DATA": str(data), "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    env.pop("CUDA_VISIBLE_DEVICES", None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "pali3_edu.train", *argv, "--device", "cpu", "--quiet"]
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=240)


def test_torchrun_ddp_equals_one_process(data, smoke_chain, tmp_path):
    """Stage 1 trains on the task mixture, whose answers have very different lengths (a VQA word,
    a detection's four <loc> tokens per object...), so the two processes hold different numbers
    of answer tokens; with gradient accumulation the micro-batches differ too. The loop weighs
    each one by its tokens: two processes train the model one process trains."""
    args = ["--recipe", "pali3-stage1", "--preset", "smoke", "--steps", "4", "--set", "train.parallel=ddp",
            "--set", "train.grad_accum=2"]
    proc = _torchrun(data, *args, "--run-dir", str(tmp_path / "ddp"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("] trained: ") == 1  # only rank 0 prints
    code, _, err = _main(*args, "--run-dir", str(tmp_path / "one"), "--device", "cpu", "--quiet")
    assert code == 0, err
    ddp, one = _rows(tmp_path / "ddp"), _rows(tmp_path / "one")
    assert len(ddp) == len(one) == 4
    assert [r["loss"] for r in ddp] == pytest.approx([r["loss"] for r in one], rel=1e-5)
    assert [r["tokens"] for r in ddp] == [r["tokens"] for r in one]  # answer tokens of each step
    assert ddp[-1]["loss"] != pytest.approx(ddp[0]["loss"], rel=1e-3)  # it trained
    resolved = json.loads((tmp_path / "ddp" / "resolved_recipe.json").read_text())
    assert resolved["run"]["processes"] == 2 and resolved["recipe"]["train"]["parallel"] == "ddp"


def test_torchrun_ul2(data, smoke_chain, tmp_path):
    """UL2 under DDP: the loss is the mean over every target token of the global batch, as one
    process computes it; the ranks log different denoiser kinds (each averaged over the ranks
    that have it)."""
    args = ["--recipe", "ul2", "--preset", "smoke", "--set", "train.parallel=ddp"]
    proc = _torchrun(data, *args, "--run-dir", str(tmp_path / "ddp"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    code, _, err = _main(*args, "--run-dir", str(tmp_path / "one"), "--device", "cpu", "--quiet")
    assert code == 0, err
    ddp, one = _rows(tmp_path / "ddp"), _rows(tmp_path / "one")
    assert len(ddp) == len(one) == get_recipe("ul2", "smoke").train.steps
    assert [r["loss"] for r in ddp] == pytest.approx([r["loss"] for r in one], rel=1e-5)
    assert [r["tokens"] for r in ddp] == [r["tokens"] for r in one]
