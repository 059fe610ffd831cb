"""``python -m pali3_edu.bench train``: course PaLI-3 vs the transformers assembly, FLOPs formula.

No timing is asserted (speed is the benchmark's output, not a test); the tests check that it runs
at the smoke preset, prints its ratio line last, that both models have the same shapes, and that
the FLOPs formula agrees with ``FlopCounterMode``.
"""

from __future__ import annotations

import re

import pytest
import torch
import transformers  # noqa: F401  (the comparison must fail, not skip, without transformers)

from pali3_edu.bench import train as bench
from pali3_edu.bench.__main__ import main as bench_main
from pali3_edu.pali3 import PaLI3
from pali3_edu.recipes import scale  # noqa: F401
from pali3_edu.recipes.base import get_recipe

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def test_bench_runs_at_smoke_and_ends_with_the_ratio(capsys):
    bench_main(["train", "--preset", "smoke", "--steps", "2", "--device", "cpu", "--batch-size", "4"])
    lines = capsys.readouterr().out.strip().splitlines()
    assert re.fullmatch(r"ratio course/transformers \(steps/s\): \d+\.\d\d", lines[-1]), lines[-1]
    table = "\n".join(lines)
    assert "course" in table and "transformers" in table and "images/s" in table
    assert "FlopCounterMode" in table and "CPU profiler" in table
    assert "no peak FLOP/s for cpu" in table  # MFU: not on CPU, and it says so


@pytest.mark.parametrize("stage", ["pali3-stage1", "pali3-stage2"])  # ViT frozen / ViT trained
def test_flops_formula_agrees_with_the_counter(stage):
    recipe = get_recipe(stage, "smoke")
    cfg = recipe.model
    shape = bench.StepShape(batch=2, prompt=10, answer=7, train_vision=not recipe.data.stage.freeze_vision)
    assert shape.train_vision == (stage == "pali3-stage2")
    batch = bench.make_batch(cfg, shape, torch.device("cpu"))
    course, hf = bench.build_models(cfg)
    counted = {}
    for name, model in (("course", course), ("transformers", hf)):
        side = bench.make_contender(name, model, batch, torch.device("cpu"), None, shape.train_vision)
        counted[name] = bench.counted_flops(side.loss_only)
    formula = bench.step_flops(cfg, shape)
    assert formula["total"] == pytest.approx(counted["course"], rel=0.02)
    assert formula["total"] >= counted["course"]  # the documented gaps only over-count
    assert counted["transformers"] == pytest.approx(counted["course"], rel=1e-3)  # the same model
    # the frozen ViT costs one forward pass; trained, three
    trained = bench.step_flops(cfg, bench.StepShape(2, 10, 7, True))["vit"]
    frozen = bench.step_flops(cfg, bench.StepShape(2, 10, 7, False))["vit"]
    assert trained == pytest.approx(3 * frozen)


def test_the_two_models_have_the_same_parameters():
    cfg = get_recipe("pali3-stage1", "smoke").model
    course, hf = bench.build_models(cfg)
    assert isinstance(course, PaLI3)
    assert bench.count_params(course) == bench.count_params(hf)
    assert hf.t5.lm_head.weight is not hf.t5.shared.weight  # untied, as the course model


def test_peak_tflops(monkeypatch):
    assert bench.peak_tflops(torch.device("cpu"))[0] is None
    assert bench.peak_tflops(torch.device("cpu"), 100.0) == (100.0, "--peak-tflops")
    for name, value in (("NVIDIA H100 80GB HBM3", 989.0), ("NVIDIA H100 PCIe", 756.0),
                        ("NVIDIA A100-SXM4-40GB", 312.0), ("NVIDIA L4", 121.0), ("Tesla T4", 65.0)):
        monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None, n=name: n)
        assert bench.peak_tflops(torch.device("cuda"))[0] == value, name
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Some GPU")
    peak, why = bench.peak_tflops(torch.device("cuda"))
    assert peak is None and "--peak-tflops" in why


def test_bench_refuses_a_stage_without_a_pali3_model(capsys):
    with pytest.raises(SystemExit):
        bench_main(["train", "--stage", "ul2", "--steps", "1"])
    assert "PaLI-3 stage" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        bench_main(["train", "--steps", "0"])
