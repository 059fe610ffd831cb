"""Train a stage (or the whole chain) from the command line: ``python -m pali3_edu.train``.

::

    python -m pali3_edu.train --recipe all --preset smoke                 # every stage, CPU, seconds
    python -m pali3_edu.train --recipe ul2 --preset h100 --steps 2000 --batch-size 128
    python -m pali3_edu.train --recipe pali3-stage1 --preset l4-a100 --set train.lr=5e-4 \\
        --set data.mix.loc_levels=128 --compile --bucket 16 --attention flex
    torchrun --nproc_per_node 2 -m pali3_edu.train --recipe ul2 --preset smoke --set train.parallel=ddp

``--recipe`` names a stage (``siglip``, ``ul2``, ``pali3-stage1``, ``pali3-stage2``,
``pali3-transfer``) or ``all``, which trains them in that order: each stage starts from the ones
before it (the recipes' ``upstream``), and stages that are already trained are loaded from the
cache. ``--preset`` names the sizes: ``smoke`` (CPU, seconds), ``colab-t4``, ``l4-a100``, ``h100``
(:mod:`pali3_edu.recipes.scale`), or the lessons' ``tiny-cpu``/``micro``. ``--list`` shows them all.

Changing settings: ``--steps``, ``--batch-size``, ``--lr``, and ``--set key=value`` for any dotted
recipe key (``train.grad_accum=4``, ``data.mix.batch_size=16``, ``model.text.dropout_rate=0.1``).
Values are read as JSON (``null``, ``true``, ``[0.9, 0.95]``), else as plain text (``ddp``). With
``--recipe all`` a setting applies to every stage; ``--set ul2:train.steps=100`` to one. A changed
recipe is a new run: it is cached under ``data/runs/<stage>-<preset>-<fingerprint>`` and, with
``all``, the later stages start from it.

Every stage prints one line (steps, final loss, seconds, where it is cached) and leaves a run
folder, by default the cache folder ``data/runs/<stage>-<preset>/``:

- ``checkpoint/``: the training loop's checkpoint (weights, optimizer, history; resumable);
- ``resolved_recipe.json``: the recipe as trained (every setting after overrides), its
  fingerprint, the upstream runs it started from, and how it was run (device, processes, speed);
- ``metrics.jsonl``: the training history, one JSON object per logged step.

Starting from public checkpoints: ``--init siglip=PATH_OR_HUB_ID t5=PATH_OR_HUB_ID`` starts PaLI-3
stage 1 from a public SigLIP and a T5 / Flan-T5 / UL2 (each a local folder or a Hugging Face Hub
name, see :func:`pali3_edu.recipes.pali3.pretrained_recipe`) instead of the course's own SigLIP
and UL2 runs: the model's sizes come from the checkpoints' configs and the vocabulary is T5's
plus the course's tokens. ``--recipe all --init ...`` then trains stage 1, stage 2 and transfer
(the ``siglip`` and ``ul2`` stages are skipped); stage 2 and transfer keep stage 1's model at
their own resolution (the preset's ratio to stage 1's, e.g. 224 → 448 px), and T5's vocabulary
may need longer texts (``--set model.max_prompt_len=64``)::

    python -m pali3_edu.train --recipe all --preset h100 \\
        --init siglip=google/siglip-base-patch16-224 t5=google/flan-t5-base

``--run-dir DIR`` puts one stage's run folder elsewhere (a Google Drive folder on Colab survives a
disconnect). Under ``torchrun`` every process trains its share of each batch and only rank 0
prints and writes; they train the model one process would train on the same global batch, up to
rounding: SigLIP's sigmoid loss scores every image against every text of the global batch, and
the token-mean losses of UL2 and PaLI-3 average over all of its tokens (:mod:`pali3_edu.train`).

Speed paths (:mod:`pali3_edu.speed`): ``--compile`` (each transformer block, or ``--compile
model``; ``--compile-backend``, ``--compile-mode``), ``--checkpointing`` (activation
checkpointing of every block), ``--bucket 16`` (pad prompt and answer lengths to multiples of 16
so compiled shapes repeat) and ``--attention sdpa|flex`` (the T5 self-attention with a dense bias
mask, the default, or through FlexAttention; flex trains on CUDA only). On CUDA the optimizer is
AdamW's fused kernel without a flag. They change how fast a recipe trains, not which recipe it
is. ``--init`` (above) is not a speed path: it changes where stage 1 starts, so it is another
recipe with its own cache folder.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import json
import shutil
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from pali3_edu.bench.__main__ import positive_float, positive_int  # argparse types shared with the benchmarks
from pali3_edu.recipes import scale  # noqa: F401  (registers the smoke and GPU presets)
from pali3_edu.recipes.base import (
    Recipe,
    TrainedRun,
    _jsonable,
    cached_state,
    checkpoint_dir,
    get_recipe,
    get_stage,
    list_recipes,
    load_or_train,
)
from pali3_edu.recipes.scale import STAGE_ORDER
from pali3_edu.shipped import ShippedCheckpointError
from pali3_edu.speed import SpeedSettings, pick_amp_dtype, use_speed_settings

RUN_FILES = ("resolved_recipe.json", "metrics.jsonl")
_DERIVED: set[tuple[str, str]] = set()  # (stage, preset) registered by resolve_recipes


class UsageError(ValueError):
    """A command line that cannot be run as given (the message says what to change)."""


# ---------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m pali3_edu.train",
        description="Train a course stage, or the whole chain (--recipe all), with a named preset.",
        epilog="Docs: pali3_edu/run.py. Examples: --recipe all --preset smoke; "
               "--recipe ul2 --preset h100 --set train.grad_accum=2",
    )
    p.add_argument("--recipe", help=f"a stage ({', '.join(STAGE_ORDER)}) or 'all'")
    p.add_argument("--preset", help="smoke, colab-t4, l4-a100, h100, 8xh100 (or the lessons' tiny-cpu, micro)")
    p.add_argument("--list", action="store_true", help="list every stage and its presets, then exit")
    p.add_argument("--steps", type=positive_int, help="optimizer steps (train.steps)")
    p.add_argument("--batch-size", type=positive_int, help="examples per micro-batch (the stage's batch_size)")
    p.add_argument("--lr", type=positive_float, help="peak learning rate (train.lr)")
    p.add_argument("--set", dest="settings", action="append", default=[], metavar="[STAGE:]KEY=VALUE",
                   help="any recipe setting by its dotted key, e.g. train.grad_accum=4; repeatable")
    p.add_argument("--amp", choices=("auto", "bf16", "fp16", "none"),
                   help="mixed precision (train.amp_dtype); auto: what the device supports")
    p.add_argument("--device", choices=("cpu", "cuda"), help="default: cuda if available")
    p.add_argument("--run-dir", help="this stage's run folder instead of data/runs/<stage>-<preset> "
                                     "(one stage only; a new, empty or earlier run folder)")
    p.add_argument("--init", nargs="+", metavar="TOWER=PATH_OR_HUB_ID",
                   help="start PaLI-3 stage 1 from public checkpoints: siglip=... t5=... (local folders or "
                        "Hub names); with --recipe all the siglip and ul2 stages are skipped")
    p.add_argument("--retrain", action="store_true", help="delete the cached run(s) first and train again")
    p.add_argument("--quiet", action="store_true", help="no progress bars (the summary lines stay)")
    speed = p.add_argument_group("speed paths (pali3_edu.speed; the recipe and its cache stay the same)")
    speed.add_argument("--compile", nargs="?", const="blocks", choices=("blocks", "model"),
                       help="torch.compile each transformer block (default) or the whole model")
    speed.add_argument("--compile-backend", default="inductor", help="torch.compile backend (default inductor)")
    speed.add_argument("--compile-mode", help="inductor mode: default, reduce-overhead, max-autotune")
    speed.add_argument("--checkpointing", action="store_true", help="activation checkpointing of every block")
    speed.add_argument("--bucket", type=positive_int, metavar="N",
                       help="pad prompt/answer lengths to multiples of N (e.g. 16) so compiled shapes repeat")
    speed.add_argument("--attention", choices=("sdpa", "flex"), default="sdpa",
                       help="T5 self-attention: sdpa (dense bias mask) or flex (FlexAttention; CUDA for training)")
    return p


def parse_value(text: str) -> Any:
    """A ``--set`` value: JSON (``3``, ``1e-4``, ``null``, ``true``, ``[0.9, 0.95]``,
    ``{"refer": 1}``), else a Python literal (``None``, ``(0.9, 0.95)``), else the text itself."""
    try:
        return json.loads(text)
    except ValueError:
        pass
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def parse_settings(items: Sequence[str], stages: Sequence[str]) -> dict[str | None, dict[str, Any]]:
    """``["train.lr=1e-3", "ul2:data.batch_size=8"]`` → ``{None: {"train.lr": 0.001},
    "ul2": {"data.batch_size": 8}}`` (``None``: every stage)."""
    out: dict[str | None, dict[str, Any]] = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise UsageError(f"--set {item!r}: write KEY=VALUE, e.g. --set train.lr=3e-4 "
                             "(or STAGE:KEY=VALUE with --recipe all).")
        stage: str | None = None
        if ":" in key:
            stage, key = key.split(":", 1)
            if stage not in stages:
                raise UsageError(f"--set {item!r}: {stage!r} is not one of the stages being trained "
                                 f"({', '.join(stages)}).")
        out.setdefault(stage, {})[key] = parse_value(value.strip())
    return out


def _field_path(obj: Any, name: str, prefix: str) -> list[str]:
    """Dotted paths of every dataclass field called ``name`` inside ``obj``."""
    if not dataclasses.is_dataclass(obj):
        return []
    found = []
    for f in dataclasses.fields(obj):
        path = f"{prefix}.{f.name}"
        if f.name == name:
            found.append(path)
        found += _field_path(getattr(obj, f.name), name, path)
    return found


def _coerce(recipe: Recipe, key: str, value: Any) -> Any:
    """Match a parsed value to the setting's current type where that is unambiguous: an int for a
    float setting becomes a float, a list for a tuple setting a tuple."""
    obj: Any = recipe
    for part in key.split("."):
        if not dataclasses.is_dataclass(obj) or not hasattr(obj, part):
            return value  # apply_overrides reports unknown keys with the list of settings
        obj = getattr(obj, part)
    if isinstance(obj, float) and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(obj, tuple) and isinstance(value, list):
        return tuple(value)
    return value


def stage_overrides(stage: str, recipe: Recipe, args: argparse.Namespace,
                    settings: dict[str | None, dict[str, Any]], device: torch.device | None) -> dict[str, Any]:
    """The dotted overrides of ``stage`` from the flags and ``--set``."""
    out: dict[str, Any] = {}
    if args.steps is not None:
        out["train.steps"] = args.steps
    if args.lr is not None:
        out["train.lr"] = args.lr
    if args.batch_size is not None:
        paths = _field_path(recipe.data, "batch_size", "data")
        if len(paths) != 1:
            raise UsageError(f"--batch-size: the {stage} recipe has {len(paths)} batch_size settings; "
                             "use --set with the full key.")
        out[paths[0]] = args.batch_size
    if args.amp is not None:
        if args.amp == "auto":
            out["train.amp_dtype"] = pick_amp_dtype(device or _default_device())
        else:
            out["train.amp_dtype"] = None if args.amp == "none" else args.amp
    for key, value in {**settings.get(None, {}), **settings.get(stage, {})}.items():
        key = key if "." in key else _short_key(recipe, key)
        out[key] = _coerce(recipe, key, value)
    return out


def _short_key(recipe: Recipe, key: str) -> str:
    """``steps`` → ``train.steps`` when exactly one of train/data/model has it."""
    owners = [p for p in ("train", "data", "model")
              if dataclasses.is_dataclass(getattr(recipe, p)) and hasattr(getattr(recipe, p), key)]
    if len(owners) != 1:
        where = "none" if not owners else " and ".join(owners)
        raise UsageError(f"--set {key}=...: {key!r} matches {where} of the {recipe.stage} recipe's "
                         f"train/data/model settings; write it as 'train.{key}', 'data.{key}' or 'model.{key}'.")
    return f"{owners[0]}.{key}"


def _default_device() -> torch.device:
    from pali3_edu.distributed import default_device, dist_info

    return default_device(dist_info())


# ---------------------------------------------------------------------------------------------
# Which recipes to train
# ---------------------------------------------------------------------------------------------


def stages_of(name: str, init: dict[str, str] | None = None) -> list[str]:
    """``"all"`` → the stages in training order; a stage name → ``[name]``. With ``init`` (public
    checkpoints, :func:`parse_init`), ``"all"`` leaves out ``siglip`` and ``ul2``: PaLI-3 starts
    from the checkpoints instead."""
    if name == "all":
        return [s for s in STAGE_ORDER if not init or s.startswith("pali3-")]
    known = sorted({r.split(":")[0] for r in list_recipes()})
    if name not in known:
        raise UsageError(f"Unknown recipe {name!r}. Recipes: {', '.join(STAGE_ORDER)}, all "
                         f"(registered stages: {', '.join(known)}).")
    if init and not name.startswith("pali3-"):
        raise UsageError(f"--init starts PaLI-3 from public checkpoints; the {name} stage trains from scratch. "
                         "Use --recipe pali3-stage1 (or all, which then skips siglip and ul2), or leave out --init.")
    return [name]


INIT_TOWERS = ("siglip", "t5")


def parse_init(items: Sequence[str] | None) -> dict[str, str] | None:
    """``["siglip=google/siglip-base-patch16-224", "t5=./flan-t5"]`` → ``{"siglip": ..., "t5": ...}``
    (``None`` without ``--init``). A value that names an existing local folder becomes its absolute
    path (so later runs from another folder find it); anything else is a Hub name."""
    if not items:
        return None
    out: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or key not in INIT_TOWERS or not value:
            raise UsageError(f"--init {item!r}: write siglip=PATH_OR_HUB_ID t5=PATH_OR_HUB_ID, e.g. --init "
                             "siglip=google/siglip-base-patch16-224 t5=google/flan-t5-base.")
        if key in out:
            raise UsageError(f"--init names {key} twice ({out[key]!r} and {value!r}); give it once.")
        local = Path(value).expanduser()
        out[key] = str(local.resolve()) if local.exists() else value
    missing = [t for t in INIT_TOWERS if t not in out]
    if missing:
        raise UsageError(f"--init needs both towers: add {' '.join(f'{t}=...' for t in missing)} "
                         "(a SigLIP for the image tower and a T5 / Flan-T5 / UL2 for the encoder-decoder).")
    return out


def _init_recipe(stage: str, preset: str, init: dict[str, str], previous: Recipe | None) -> Recipe:
    """The recipe a stage starts from under ``--init``: stage 1 from the public checkpoints
    (:func:`~pali3_edu.recipes.pali3.pretrained_recipe`); stage 2 and transfer with the model of
    the stage before them (``previous``, as resolved) at their own resolution: the preset's ratio
    of theirs to stage 1's, times the resolution stage 1 actually trains at."""
    from pali3_edu.recipes.pali3 import pretrained_recipe

    if stage == "pali3-stage1":
        try:
            return pretrained_recipe(init["siglip"], init["t5"], preset)
        except (OSError, ValueError) as err:  # a missing folder, no internet, not a SigLIP / T5
            raise UsageError(f"--init: {err}") from None
    own = get_recipe(stage, preset)
    if previous is None:
        raise UsageError(f"--init with {stage}: the chain from pali3-stage1 is needed (internal error).")
    prev = previous.model
    ratio = own.model.vision.image_size / get_recipe(previous.stage, preset).model.vision.image_size
    patch = prev.vision.patch_size
    size = max(patch, round(prev.vision.image_size * ratio / patch) * patch)
    model = dataclasses.replace(prev, vision=dataclasses.replace(prev.vision, image_size=size))
    return dataclasses.replace(own, model=model)


def _fit_input_length(recipe: Recipe) -> Recipe:
    """A PaLI-3 recipe whose encoder accepts every visual token plus the longest prompt (T5's
    relative positions have no fixed length; ``max_input_length`` is only the check)."""
    cfg = recipe.model
    if not hasattr(cfg, "max_prompt_len"):
        return recipe
    need = cfg.vision.num_patches + cfg.max_prompt_len
    if cfg.text.max_input_length >= need:
        return recipe
    text = dataclasses.replace(cfg.text, max_input_length=need)
    return dataclasses.replace(recipe, model=dataclasses.replace(cfg, text=text))


def resolve_recipes(stages: Sequence[str], preset: str, overrides_of,
                    init: dict[str, str] | None = None) -> list[Recipe]:
    """The recipe of each stage with its overrides. A changed recipe is registered as a preset of
    its own, ``<preset>-<fingerprint[:8]>``, and the later stages of the chain start from it
    (their ``upstream`` is renamed), so ``--recipe all --steps 5`` chains the 5-step runs.
    Overrides that leave the fingerprint as it is (a preset's own values, ``log_every``) keep the
    preset's name and cache. ``init`` (:func:`parse_init`): PaLI-3 starts from public
    checkpoints (:func:`_init_recipe`); ``stages`` must then run from ``pali3-stage1`` on."""
    for stage in stages:
        spec = get_stage(stage)
        if preset not in spec.presets:
            raise UsageError(f"Stage {stage!r} has no preset {preset!r}. Presets: "
                             f"{', '.join(_named_presets(stage))} (--list shows every stage).")
    renamed: dict[tuple[str, str], str] = {}
    out: list[Recipe] = []
    for stage in stages:
        registered = get_recipe(stage, preset)
        recipe = _init_recipe(stage, preset, init, out[-1] if out else None) if init else registered
        overrides = overrides_of(stage, recipe)
        upstream = {role: (s, renamed.get((s, p), p)) for role, (s, p) in recipe.upstream.items()}
        try:
            changed = recipe.replace(**overrides) if overrides else recipe
        except (ValueError, TypeError) as err:
            raise UsageError(f"{stage}: {err}") from None
        if init:
            changed = _fit_input_length(changed)
        if upstream != recipe.upstream:
            changed = dataclasses.replace(changed, upstream=upstream)
        if changed is not registered and changed.fingerprint() != registered.fingerprint():
            name = f"{preset}-{changed.fingerprint()[:8]}"
            changed = dataclasses.replace(changed, preset=name)
            get_stage(stage).presets[name] = changed  # so that get_recipe(stage, name) finds it
            _DERIVED.add((stage, name))
            renamed[(stage, preset)] = name
        out.append(changed)
    return out


# ---------------------------------------------------------------------------------------------
# Running a stage and writing its records
# ---------------------------------------------------------------------------------------------


@dataclass
class StageResult:
    """What one stage of a run did (what its summary line says)."""

    stage: str
    preset: str
    steps: int
    final_loss: float | None
    train_seconds: float
    wall_seconds: float
    loaded: bool
    folder: Path

    def line(self) -> str:
        how = "loaded from cache" if self.loaded else "trained"
        loss = f"final loss {self.final_loss:.4f}" if self.final_loss is not None else "no loss logged"
        return (f"[{self.stage}/{self.preset}] {how}: {self.steps} steps, {loss}, "
                f"{self.train_seconds:.1f} s training ({self.wall_seconds:.1f} s wall) -> {self.folder}")


def _is_run_folder(folder: Path) -> bool:
    allowed = set(RUN_FILES) | {"checkpoint", "checkpoint.prev", "checkpoint.lock"}
    return all(p.name in allowed or p.name.startswith("checkpoint") for p in folder.iterdir())


def _cache_name(args: argparse.Namespace) -> str | None:
    if not args.run_dir:
        return None
    folder = Path(args.run_dir).expanduser().resolve()
    if folder.exists() and (not folder.is_dir() or not _is_run_folder(folder)):
        raise UsageError(f"--run-dir {folder} holds other files: name a new or empty folder, or one "
                         "an earlier run wrote (its checkpoint would be replaced when the recipe changed).")
    return str(folder)  # absolute: data/runs / "/abs/path" is the path itself


def _prepare_folder(recipe: Recipe, cache_name: str | None, retrain: bool, info: Any) -> None:
    """Rank 0 removes a cached run that --retrain asks to replace or that belongs to another
    recipe, before the other processes look at it (they would all delete it at once)."""
    from pali3_edu.distributed import barrier

    path = checkpoint_dir(recipe, cache_name)
    if info.is_main and path.exists():
        state, why = (None, "--retrain") if retrain else cached_state(recipe, path)
        if state is None:
            print(f"{path.parent}: {why}; training again.")
            for name in ("checkpoint", "checkpoint.prev", *RUN_FILES):
                target = path.parent / name
                if target.is_dir():
                    shutil.rmtree(target)
                elif target.exists():
                    target.unlink()
    if info.distributed:
        barrier()


def write_records(folder: Path, recipe: Recipe, run: TrainedRun, extra: dict[str, Any]) -> None:
    """``resolved_recipe.json`` and ``metrics.jsonl`` next to the checkpoint (written atomically)."""
    from pali3_edu.cache import atomic_write_text

    resolved = {
        "stage": recipe.stage,
        "preset": recipe.preset,
        "fingerprint": recipe.fingerprint(),
        "recipe": _jsonable(recipe),
        "versions": recipe.versions(),
        "upstream": {role: {"stage": s, "preset": p, "fingerprint": get_recipe(s, p).fingerprint()}
                     for role, (s, p) in sorted(recipe.upstream.items())},
        "run": extra,
    }
    atomic_write_text(folder / "resolved_recipe.json", json.dumps(resolved, indent=1) + "\n")
    rows = "".join(json.dumps(row) + "\n" for row in run.history.rows)
    atomic_write_text(folder / "metrics.jsonl", rows)


def run_stage(recipe: Recipe, args: argparse.Namespace, cache_name: str | None,
              speed: SpeedSettings, info: Any) -> StageResult:
    """Train (or load) one recipe, write its records on rank 0, return its summary."""
    _prepare_folder(recipe, cache_name, args.retrain, info)
    t0 = time.perf_counter()
    kwargs = {"device": args.device, "progress": info.is_main and not args.quiet, "cache_name": cache_name}
    try:
        run = load_or_train(recipe, shipped=not args.retrain, **kwargs)
    except ShippedCheckpointError as err:  # a stale shipped file: this command is how to replace it
        if info.is_main:
            print(f"{err}\nTraining {recipe.stage}/{recipe.preset} here instead.")
        run = load_or_train(recipe, shipped=False, **kwargs)
    wall = time.perf_counter() - t0
    folder = run.path.parent
    losses = run.history.losses
    result = StageResult(recipe.stage, recipe.preset, recipe.train.steps, losses[-1] if losses else None,
                         run.history.seconds, wall, run.loaded, folder)
    if info.is_main:
        device = next(run.model.parameters()).device
        write_records(folder, recipe, run, {
            "device": str(device), "processes": info.world_size, "speed": dataclasses.asdict(speed),
            "loaded_from_cache": run.loaded, "train_seconds": run.history.seconds,
            "torch": torch.__version__, "command": _COMMAND or " ".join(sys.argv),
        })
    return result


def _named_presets(stage: str) -> list[str]:
    """The presets a stage was registered with (not the changed recipes of this process)."""
    return sorted(p for p in get_stage(stage).presets if (stage, p) not in _DERIVED)


def list_presets() -> str:
    """A table of every stage and its presets (``--list``)."""
    lines = ["stage            presets"]
    order = {stage: i for i, stage in enumerate(STAGE_ORDER)}
    for stage in sorted({r.split(":")[0] for r in list_recipes()}, key=lambda s: (order.get(s, len(order)), s)):
        lines.append(f"{stage:<16} {', '.join(_named_presets(stage))}")
    return "\n".join(lines)


_COMMAND: str | None = None  # the command line being run, as a learner would type it


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line ``argv`` (default: ``sys.argv[1:]``); returns the exit status
    (0 done, 2 a usage error, which is printed with what to change)."""
    global _COMMAND
    _COMMAND = " ".join(["python -m pali3_edu.train", *(sys.argv[1:] if argv is None else list(argv))])
    parser = build_parser()
    try:
        args = parser.parse_args(None if argv is None else list(argv))
    except SystemExit as exc:  # --help, or a malformed flag (argparse printed why)
        return int(exc.code or 0)
    if args.list:
        print(list_presets())
        return 0
    try:
        if not args.recipe or not args.preset:
            raise UsageError("--recipe and --preset are required, e.g. --recipe all --preset smoke "
                             "(--list shows every stage and preset).")
        return _run(args)
    except UsageError as err:
        print(f"{parser.prog}: error: {err}", file=sys.stderr)
        return 2


def _run(args: argparse.Namespace) -> int:
    from pali3_edu.distributed import setup_distributed

    if args.device == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda, but PyTorch sees no CUDA GPU: use --device cpu (or install "
                         "a CUDA build of PyTorch).")
    init = parse_init(args.init)
    stages = stages_of(args.recipe, init)
    if len(stages) > 1 and args.run_dir:
        raise UsageError("--run-dir names one stage's folder. To keep every stage of --recipe all "
                         "elsewhere, point PALI3_EDU_DATA at that place (the whole cache moves).")
    # --init with a later stage alone: its recipe follows the chain from stage 1 (which its
    # training loads, or trains first, as it would without --init)
    chain = list(STAGE_ORDER[STAGE_ORDER.index("pali3-stage1"):STAGE_ORDER.index(stages[-1]) + 1]) \
        if init else stages
    settings = parse_settings(args.settings, chain)
    speed = SpeedSettings(compile=args.compile, compile_backend=args.compile_backend,
                          compile_mode=args.compile_mode, checkpointing=args.checkpointing,
                          bucket=args.bucket, attention=args.attention)
    cache_name = _cache_name(args)
    info = setup_distributed(args.device)  # joins the process group under torchrun
    device = torch.device(args.device) if args.device else None
    recipes = resolve_recipes(chain, args.preset,
                              lambda stage, recipe: stage_overrides(stage, recipe, args, settings, device), init)
    recipes = [r for r in recipes if r.stage in stages]
    if info.is_main and init:
        print(f"--init: pali3-stage1 starts from siglip={init['siglip']} t5={init['t5']} "
              "(the siglip and ul2 stages are not used)")
    if info.is_main and speed.active:
        print(f"speed paths: {speed.describe()}")
    results = []
    with use_speed_settings(speed):
        for recipe in recipes:
            result = run_stage(recipe, args, cache_name, speed, info)
            results.append(result)
            if info.is_main:
                print(result.line(), flush=True)
    if info.is_main and len(results) > 1:
        trained = sum(r.train_seconds for r in results if not r.loaded)
        print(f"done: {len(results)} stages ({sum(not r.loaded for r in results)} trained, "
              f"{trained:.1f} s training)")
    return 0


__all__ = ["StageResult", "UsageError", "build_parser", "main", "parse_init", "parse_settings", "parse_value",
           "resolve_recipes", "stages_of", "write_records"]


if __name__ == "__main__":
    raise SystemExit(main())
