"""Checkpoints that ship with the course: runs too long for a lesson, trained once and saved small.

A lesson trains its own short run in minutes. Some results need hours of CPU (the ``long-cpu``
presets: SigLIP trained 13× longer, PaLI-3 stage 1 on a fresh scene for every example, and that
stage 1 transferred to referring expressions; and ``xlong-cpu``, SigLIP trained 31× longer). Those
runs are trained once with the course's own command and saved here as a safetensors file with
the weights in float16 (half the size; the weights are cast back to float32 when loaded):

    python -m pali3_edu.train --recipe siglip --preset long-cpu        # reproduce (25 min on CPU)
    python -m pali3_edu.shipped export siglip long-cpu                 # write pali3_edu/recorded/checkpoints/

The file's metadata holds the recipe's fingerprint (its settings and the versions of the data
generator, tokenizer, stage code and upstream runs) and the training history. A shipped
checkpoint is used only while its fingerprint equals the recipe's: after a change to the code or
the settings it is *refused* with the reason, never used silently. Loading reads tensors and
JSON only (safetensors runs no code).

:func:`load_shipped` returns a shipped run or raises :class:`ShippedCheckpointError` (what is
wrong and how to retrain); :func:`pali3_edu.recipes.load_or_train` uses it when there is no run in
``data/runs/``, and passes the refusal on rather than starting hours of training unannounced.

>>> sorted(shipped_runs())  # doctest: +SKIP
['pali3-stage1-long-cpu', 'pali3-transfer-long-cpu', 'siglip-long-cpu', 'siglip-xlong-cpu']
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

FORMAT = "pali3-edu-shipped/1"
SHIPPED_DIR = Path(__file__).resolve().parent / "recorded" / "checkpoints"


class ShippedCheckpointError(RuntimeError):
    """A shipped checkpoint is missing, damaged, or belongs to another recipe."""


def shipped_path(stage: str, preset: str, directory: Path | str | None = None) -> Path:
    """``pali3_edu/recorded/checkpoints/<stage>-<preset>.safetensors``."""
    return Path(directory or SHIPPED_DIR) / f"{stage}-{preset}.safetensors"


def shipped_runs(directory: Path | str | None = None) -> list[str]:
    """The ``<stage>-<preset>`` names of the shipped checkpoints."""
    d = Path(directory or SHIPPED_DIR)
    return sorted(p.name.removesuffix(".safetensors") for p in d.glob("*.safetensors")) if d.exists() else []


def _retrain_hint(stage: str, preset: str) -> str:
    return (f"Train it yourself with `python -m pali3_edu.train --recipe {stage} --preset {preset}` "
            f"(it is then read from data/runs/; hours on a CPU), or pass retrain=True to load_or_train.")


def export_run(stage: str, preset: str, directory: Path | str | None = None,
               dtype: torch.dtype = torch.float16) -> Path:
    """Write the finished run of ``stage``/``preset`` from ``data/runs/`` as a shipped checkpoint:
    floating-point weights in ``dtype``, the fingerprint, recipe identity and history in the
    metadata. Refuses a run that is missing or unfinished (it never trains)."""
    from pali3_edu.recipes.base import cached_state, checkpoint_dir, get_recipe, get_stage, recipe_tokenizer
    from pali3_edu.train import load_checkpoint

    recipe = get_recipe(stage, preset)
    path = checkpoint_dir(recipe)
    state, why = cached_state(recipe, path)
    if state is None or int(state.get("step", 0)) < recipe.train.steps:
        step = 0 if state is None else int(state.get("step", 0))
        raise ShippedCheckpointError(
            f"No finished {stage}/{preset} run in {path} ({why if state is None else f'step {step}'} of "
            f"{recipe.train.steps}): train it first with `python -m pali3_edu.train --recipe {stage} "
            f"--preset {preset}`.")
    model = get_stage(stage).build_model(recipe, recipe_tokenizer(recipe))
    load_checkpoint(path, model)
    tensors = {k: (v.to(dtype) if v.is_floating_point() else v).contiguous()
               for k, v in model.state_dict().items()}
    meta = {
        "format": FORMAT,
        "stage": stage,
        "preset": preset,
        "fingerprint": recipe.fingerprint(),
        "identity": json.dumps(recipe.identity(), sort_keys=True),
        "history": json.dumps(state.get("history", {})),
        "dtype": str(dtype).removeprefix("torch."),
    }
    out = shipped_path(stage, preset, directory)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out), metadata=meta)
    return out


def read_shipped(path: Path | str, *, tensors: bool = True) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """``(tensors, metadata)`` of a shipped file; :class:`ShippedCheckpointError` if it is damaged.
    ``tensors=False`` reads only the metadata (the tensor dict is then empty)."""
    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = dict(f.metadata() or {})
            weights = {k: f.get_tensor(k) for k in f.keys()} if tensors else {}
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        raise ShippedCheckpointError(f"{path} is damaged ({err}).") from err
    if meta.get("format") != FORMAT:
        raise ShippedCheckpointError(f"{path} is not a pali3-edu shipped checkpoint (format "
                                     f"{meta.get('format')!r}, expected {FORMAT!r}).")
    return weights, meta


def load_shipped(stage: str | Any, preset: str = "long-cpu", *, device: torch.device | str | None = None,
                 directory: Path | str | None = None, tokenizer: Any = None) -> Any:
    """The shipped run of a recipe as a :class:`~pali3_edu.recipes.base.TrainedRun` (``loaded=True``,
    weights in float32, the recorded history). ``stage`` is a stage name (with ``preset``) or a
    :class:`~pali3_edu.recipes.base.Recipe`. Raises :class:`ShippedCheckpointError` when there is
    none, it is damaged, or it was trained from another recipe or code version (the message says
    what changed and how to retrain). Never trains. ``tokenizer``: the recipe's tokenizer if the
    caller already has it (default: :func:`~pali3_edu.recipes.base.recipe_tokenizer`)."""
    from pali3_edu.recipes.base import (
        Recipe,
        TrainedRun,
        describe_changes,
        get_recipe,
        get_stage,
        recipe_tokenizer,
    )
    from pali3_edu.train import History
    from pali3_edu.utils import pick_device

    recipe = stage if isinstance(stage, Recipe) else get_recipe(stage, preset)
    path = shipped_path(recipe.stage, recipe.preset, directory)
    if not path.exists():
        raise ShippedCheckpointError(f"No shipped checkpoint for {recipe.stage}/{recipe.preset} "
                                     f"({path} is missing). {_retrain_hint(recipe.stage, recipe.preset)}")
    tensors, meta = read_shipped(path)
    if meta.get("fingerprint") != recipe.fingerprint():
        try:
            old = json.loads(meta.get("identity", "{}"))
        except json.JSONDecodeError:
            old = {}
        raise ShippedCheckpointError(
            f"The shipped {recipe.stage}/{recipe.preset} checkpoint was trained from another recipe or code "
            f"version (changed: {describe_changes(old, recipe.identity())}), so it is not used. "
            f"{_retrain_hint(recipe.stage, recipe.preset)}")
    tokenizer = tokenizer if tokenizer is not None else recipe_tokenizer(recipe)
    model = get_stage(recipe.stage).build_model(recipe, tokenizer)
    own = model.state_dict()
    if set(own) != set(tensors) or any(own[k].shape != tensors[k].shape for k in own):
        raise ShippedCheckpointError(f"{path} does not match the model of {recipe.stage}/{recipe.preset} "
                                     "(different tensors or shapes): it is damaged or from another version.")
    model.load_state_dict({k: v.to(own[k].dtype) for k, v in tensors.items()})
    try:
        history = History(**json.loads(meta.get("history", "{}")))
    except (json.JSONDecodeError, TypeError) as err:
        raise ShippedCheckpointError(f"{path} has a damaged training history ({err}).") from err
    history.resumed_from = recipe.train.steps
    dev = torch.device(device) if device is not None else pick_device()
    return TrainedRun(model.to(dev).eval(), tokenizer, history, recipe, True, path)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m pali3_edu.shipped", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    e = sub.add_parser("export", help="write a finished run from data/runs/ as a shipped checkpoint")
    e.add_argument("stage")
    e.add_argument("preset")
    sub.add_parser("list", help="list the shipped checkpoints and whether each is current")
    args = p.parse_args(argv)
    if args.command == "export":
        out = export_run(args.stage, args.preset)
        print(f"wrote {out} ({out.stat().st_size / 2**20:.1f} MiB)")
        return
    from pali3_edu.recipes.base import get_recipe

    for name in shipped_runs():
        _, meta = read_shipped(SHIPPED_DIR / f"{name}.safetensors", tensors=False)
        recipe = get_recipe(meta["stage"], meta["preset"])
        ok = "current" if meta["fingerprint"] == recipe.fingerprint() else "stale (refused)"
        print(f"{name}: {ok}")


if __name__ == "__main__":
    main()
