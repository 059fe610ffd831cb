"""PaLI-3's ablation at course scale: stage 1 with a SigLIP-pretrained ViT vs a random one, several seeds.

The paper's central claim is that a contrastively pretrained image encoder makes a better
vision-language model. At course scale the test is: the same stage-1 recipe and budget, the ViT
frozen in both arms, and only its initialisation changed (``data.stage.vision_init``:
``"siglip"``, the ViT of stage 1's upstream SigLIP run, or ``"random"``). One run per arm cannot
separate a small gap from seed noise, so each arm is trained with several seeds (``train.seed``: the projector's
initialisation and the order of the batches) and scored on held-out ``val`` scenes.

Running it trains ``len(variants) × len(seeds)`` stage-1 models (about 25 minutes on a 2-core CPU
with the default settings), so the result table is cached as JSON, named by a hash of the
settings and of every arm's recipe fingerprint:

- ``data/results/<name>.json``, written by a run on this machine;
- ``pali3_edu/recorded/<name>.json``, a recorded run shipped with the package (lesson 09 reads it).

A recorded table is used only when its hash matches the current recipes; any change to them (or to
the code versions they depend on) gives another hash and the ablation runs again. To run it::

    python -m pali3_edu.ablation                 # the default settings; prints the summary
    python -m pali3_edu.ablation --record        # ... and copy the table to pali3_edu/recorded/
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import platform
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from pali3_edu.utils import data_dir

#: The scores kept per run: (label, task, metric) of :func:`pali3_edu.evaluate.evaluate`'s report.
METRICS: tuple[tuple[str, str, str], ...] = (
    ("VQA accuracy", "vqa", "accuracy"),
    ("VQA colour questions", "vqa", "accuracy/color"),
    ("VQA shape questions", "vqa", "accuracy/shape"),
    ("caption CIDEr-D", "caption", "cider_d"),
    ("refer mean IoU", "refer", "mean_iou"),
    ("detect F1", "detect", "f1"),
    ("OCR exact match", "ocr", "exact_match"),
)


@dataclass(frozen=True)
class AblationSettings:
    """Which arms, seeds and budget (the same for every arm)."""

    variants: tuple[str, ...] = ("siglip", "random")
    seeds: tuple[int, ...] = (0, 1, 2)
    steps: int = 750
    warmup_steps: int = 50
    eval_scenes: int = 200
    preset: str = "tiny-cpu"

    def __post_init__(self) -> None:
        if not self.variants or not self.seeds:
            raise ValueError("an ablation needs at least one variant and one seed")
        for v in self.variants:
            if v not in ("siglip", "random"):
                raise ValueError(f"vision_init variant must be 'siglip' or 'random', got {v!r}")
        for name in ("steps", "eval_scenes"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if not 0 <= self.warmup_steps < self.steps:
            raise ValueError(f"warmup_steps must be in 0..steps-1, got {self.warmup_steps}")

    def overrides(self, variant: str, seed: int) -> dict[str, Any]:
        """The recipe overrides of one arm and seed."""
        return {"data.stage.vision_init": variant, "train.seed": seed, "train.steps": self.steps,
                "train.warmup_steps": self.warmup_steps}


def _recipes(settings: AblationSettings) -> dict[tuple[str, int], Any]:
    from pali3_edu.recipes.pali3 import get_recipe

    return {(v, s): get_recipe("pali3-stage1", settings.preset, **settings.overrides(v, s))
            for v in settings.variants for s in settings.seeds}


def ablation_key(settings: AblationSettings) -> str:
    """Hash of the settings and of every arm's recipe fingerprint (upstream runs and code versions
    included): a table is reused only for exactly these runs."""
    identity = {"settings": dataclasses.asdict(settings),
                "fingerprints": {f"{v}-{s}": r.fingerprint() for (v, s), r in _recipes(settings).items()}}
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:12]


def result_name(settings: AblationSettings) -> str:
    return f"pali3-vision-ablation-{ablation_key(settings)}.json"


def recorded_dir() -> Path:
    """``pali3_edu/recorded/``: result tables shipped with the package (tracked by git)."""
    return Path(__file__).parent / "recorded"


def _read(path: Path) -> dict[str, Any] | None:
    try:
        table = json.loads(path.read_text())
        if not isinstance(table.get("rows"), list):
            raise ValueError("no rows")
        return table
    except (OSError, ValueError, AttributeError) as e:
        print(f"{path} is damaged ({e}); not using it.")
        return None


def vision_init_ablation(settings: AblationSettings | None = None, *, rerun: bool = False,
                         device: Any = None) -> dict[str, Any]:
    """The ablation's table: ``{"rows": [...], "settings", "machine", "date", "source"}``.

    Each row holds ``variant``, ``seed``, ``steps``, ``seconds`` (of training) and the scores of
    :data:`METRICS` under their ``"task/metric"`` keys. ``source`` says where the table came from:
    ``"recorded"`` (shipped), ``"cache"`` (an earlier run here) or ``"run"`` (just computed).
    ``rerun=True`` trains every arm again (their checkpoints are cached under ``data/runs``).
    """
    from pali3_edu.evaluate import evaluate
    from pali3_edu.recipes.pali3 import load_or_train_pali3

    settings = settings or AblationSettings()
    name = result_name(settings)
    cached = data_dir("results") / name
    if not rerun:
        for path, source in ((cached, "cache"), (recorded_dir() / name, "recorded")):
            if path.exists() and (table := _read(path)) is not None:
                return {**table, "source": source}
    rows = []
    for (variant, seed), recipe in _recipes(settings).items():
        run = load_or_train_pali3("stage1", settings.preset, device=device, **settings.overrides(variant, seed))
        report = evaluate(run.model, "val", n=settings.eval_scenes, word_prob=recipe.data.mix.word_prob)
        # a metric can be missing (e.g. no shape question among a few scenes): kept as None
        scores = {f"{task}/{metric}": report.scores[task].get(metric) for _, task, metric in METRICS}
        rows.append({"variant": variant, "seed": seed, "steps": settings.steps,
                     "seconds": round(run.history.seconds, 1), **scores})
        print(f"{variant:>7} seed {seed}: " + ", ".join(f"{k} {v}" if v is None else f"{k} {v:.3f}"
                                                      for k, v in scores.items()), flush=True)
    table = {"rows": rows, "settings": dataclasses.asdict(settings),
             "machine": f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}",
             "date": time.strftime("%Y-%m-%d")}
    tmp = cached.with_name(cached.name + ".tmp")
    tmp.write_text(json.dumps(table, indent=1))
    tmp.replace(cached)
    return {**table, "source": "run"}


def summarize(rows: Sequence[dict[str, Any]]) -> dict[str, dict[str, tuple[float, float]]]:
    """``{"task/metric": {variant: (mean, standard deviation over seeds)}}`` (missing scores,
    ``None``, are left out; a metric no run has is left out of the result)."""
    out: dict[str, dict[str, tuple[float, float]]] = {}
    for _, task, metric in METRICS:
        key = f"{task}/{metric}"
        for variant in dict.fromkeys(r["variant"] for r in rows):
            found = [r[key] for r in rows if r["variant"] == variant and r.get(key) is not None]
            if not found:
                continue
            values = torch.tensor(found, dtype=torch.float64)
            std = float(values.std()) if len(values) > 1 else 0.0
            out.setdefault(key, {})[variant] = (float(values.mean()), std)
    return out


def verdict(a: tuple[float, float], b: tuple[float, float]) -> str:
    """``"ahead"``, ``"behind"`` or ``"within seed noise"`` for arm ``a`` vs arm ``b`` (each a
    (mean, std) pair): a gap counts only when it exceeds the two standard deviations together.

    >>> verdict((0.60, 0.01), (0.50, 0.02)), verdict((0.52, 0.03), (0.50, 0.02))
    ('ahead', 'within seed noise')
    """
    gap, noise = a[0] - b[0], a[1] + b[1]
    if abs(gap) <= noise:
        return "within seed noise"
    return "ahead" if gap > 0 else "behind"


def summary_lines(table: dict[str, Any]) -> list[str]:
    """The table as printable lines: each metric's mean ± std per arm, and the verdict of SigLIP
    vs random."""
    stats = summarize(table["rows"])
    variants = list(dict.fromkeys(r["variant"] for r in table["rows"]))
    seeds = sorted({r["seed"] for r in table["rows"]})
    lines = [f"{'':<22}" + "".join(f"{v + ' ViT':>18}" for v in variants) + "   SigLIP vs random",
             f"({len(seeds)} seeds each, {table['rows'][0]['steps']} steps, "
             f"{table['settings']['eval_scenes']} val scenes per task)"]
    for label, task, metric in METRICS:
        s = stats.get(f"{task}/{metric}", {})
        if set(s) != set(variants):
            continue
        cells = "".join(f"{s[v][0]:>11.3f} ± {s[v][1]:.3f}" for v in variants)
        call = verdict(s["siglip"], s["random"]) if {"siglip", "random"} <= set(s) else ""
        lines.append(f"{label:<22}{cells}   {call}")
    return lines


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m pali3_edu.ablation", description=__doc__.split("\n")[0])
    p.add_argument("--seeds", type=int, nargs="+", help="seeds per arm (default 0 1 2)")
    p.add_argument("--steps", type=int, help="training steps per run (default 750)")
    p.add_argument("--rerun", action="store_true", help="train again even when a table exists")
    p.add_argument("--record", action="store_true", help="copy the table to pali3_edu/recorded/ (to ship it)")
    args = p.parse_args(argv)
    changes: dict[str, Any] = {}
    if args.seeds:
        changes["seeds"] = tuple(args.seeds)
    if args.steps:
        changes["steps"] = args.steps
    settings = dataclasses.replace(AblationSettings(), **changes)
    table = vision_init_ablation(settings, rerun=args.rerun)
    print("\n".join(summary_lines(table)))
    if args.record:
        recorded_dir().mkdir(parents=True, exist_ok=True)
        src = data_dir("results") / result_name(settings)
        if table["source"] == "recorded":
            print(f"the table already comes from {recorded_dir()}")
        else:
            shutil.copyfile(src, recorded_dir() / src.name)
            print(f"recorded as {recorded_dir() / src.name}")


if __name__ == "__main__":
    main()
