"""One way to describe, cache and reload every training stage of the course.

A :class:`Recipe` is everything that decides the outcome of a training run:

- ``model``: the model's config dataclass (e.g. :class:`~pali3_edu.config.SigLIPConfig`);
- ``data``: the stage's own data settings (a small dataclass defined by the stage module);
- ``train``: the optimisation settings, a :class:`~pali3_edu.train.TrainConfig`.

Its :meth:`Recipe.fingerprint` hashes all of that **plus** the versions of everything else that
changes the result: the ShapesWorld generator, the tokenizer (its trained model bytes), the
stage's own code version, and the fingerprints of the stages it starts from. A cached model is
reused only when the fingerprints match; otherwise :func:`load_or_train` says what changed and
trains again. Nothing stale is ever reused silently.

A stage (SigLIP, UL2, PaLI-3 stage 1, ...) registers a :class:`Stage`: how to build the model, the
batches and the loss from a recipe, and which parameters to train. :func:`load_or_train` does the
rest for every stage alike::

    run = load_or_train("siglip", "tiny-cpu")      # trains once, then loads from data/runs/
    run.model, run.tokenizer, run.history, run.loaded

Cache layout: ``data/runs/<stage>-<preset>/checkpoint/`` is the training loop's checkpoint
directory (weights in safetensors, optimiser state, step, history, and the recipe in its metadata).
A finished run is one whose checkpoint step equals ``recipe.train.steps``; an unfinished one is
resumed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pali3_edu.train import CheckpointError, History, TrainConfig, config_changes, load_checkpoint, train
from pali3_edu.utils import data_dir, pick_device

#: TrainConfig fields that cannot change the trained weights (left out of the fingerprint).
_NOT_IN_FINGERPRINT = ("log_every", "checkpoint_every")


def _jsonable(obj: Any) -> Any:
    """Dataclasses, tuples and paths → plain JSON types (dicts keep their key order sorted)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: _jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in sorted(obj.items())}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    return obj


def describe_changes(old: dict[str, Any], new: dict[str, Any], limit: int = 8) -> str:
    """``"train.lr: 0.001 -> 0.002, data.batch_size: 64 -> 32"`` for two nested dicts (the same
    key-by-key diff the training loop gives when it refuses a resume)."""
    changes = config_changes(old, new)
    more = f" (+{len(changes) - limit} more)" if len(changes) > limit else ""
    return ", ".join(changes[:limit]) + more if changes else "nothing"


@dataclass
class Recipe:
    """Everything that decides a training run of one stage (see the module docstring).

    ``upstream`` names the recipes this stage starts from (e.g. PaLI-3 stage 1 starts from the
    SigLIP and the UL2 runs) as ``{role: (stage, preset)}``; their fingerprints are part of this
    one's, so retraining an earlier stage invalidates every later one.
    """

    stage: str
    preset: str
    model: Any
    data: Any
    train: TrainConfig = field(default_factory=TrainConfig)
    upstream: dict[str, tuple[str, str]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The recipe as JSON-able data (what the checkpoint stores)."""
        d = _jsonable(self)
        d["train"] = {k: v for k, v in d["train"].items() if k not in _NOT_IN_FINGERPRINT}
        return d

    def versions(self) -> dict[str, Any]:
        """Versions of what else changes the result: data generator, tokenizer, stage code,
        and the upstream recipes' fingerprints."""
        from pali3_edu.data.shapesworld import shapesworld_fingerprint

        spec = get_stage(self.stage)
        tok = spec.tokenizer(self).fingerprint if spec.tokenizer is not None else tokenizer_fingerprint()
        out: dict[str, Any] = {
            "shapesworld": shapesworld_fingerprint(),
            "stage_code": spec.version,
            "tokenizer": tok,
        }
        for role, (stage, preset) in sorted(self.upstream.items()):
            out[f"upstream.{role}"] = get_recipe(stage, preset).fingerprint()
        return out

    def identity(self) -> dict[str, Any]:
        """Recipe + versions: the dict that :meth:`fingerprint` hashes."""
        d = self.to_dict()
        d.pop("preset")  # a name, not a setting: two presets with equal settings share a model
        return {"recipe": d, "versions": self.versions()}

    def fingerprint(self) -> str:
        """A short hash of :meth:`identity`: equal fingerprints ⇔ the same trained model."""
        blob = json.dumps(self.identity(), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    def replace(self, **overrides: Any) -> Recipe:
        """A copy with fields changed. Keys may be top-level (``train=...``) or dotted into the
        nested settings: ``recipe.replace(**{"train.steps": 100, "data.batch_size": 32})``;
        a plain name that exists in exactly one of ``train``/``data``/``model`` also works
        (``steps=100``)."""
        return apply_overrides(self, overrides)


def apply_overrides(recipe: Recipe, overrides: dict[str, Any]) -> Recipe:
    top = {k: v for k, v in overrides.items() if k in {f.name for f in dataclasses.fields(Recipe)}}
    out = dataclasses.replace(recipe, **top)
    for key, value in overrides.items():
        if key in top:
            continue
        if "." in key:
            part, name = key.split(".", 1)
        else:
            owners = [p for p in ("train", "data", "model")
                      if dataclasses.is_dataclass(getattr(out, p)) and
                      name_in(getattr(out, p), key)]
            if len(owners) != 1:
                where = "none" if not owners else " and ".join(owners)
                raise ValueError(
                    f"Override {key!r} matches {where} of the recipe's train/data/model settings: "
                    f"write it as 'train.{key}', 'data.{key}' or 'model.{key}'.")
            part, name = owners[0], key
        out = dataclasses.replace(out, **{part: _replace_path(getattr(out, part), name, value, part)})
    return out


def name_in(obj: Any, name: str) -> bool:
    return name in {f.name for f in dataclasses.fields(obj)}


def _replace_path(obj: Any, path: str, value: Any, where: str) -> Any:
    head, _, rest = path.partition(".")
    if not dataclasses.is_dataclass(obj) or not name_in(obj, head):
        fields = sorted(f.name for f in dataclasses.fields(obj)) if dataclasses.is_dataclass(obj) else []
        raise ValueError(f"The recipe's {where} has no setting {head!r}. Settings: {', '.join(fields)}")
    if rest:
        value = _replace_path(getattr(obj, head), rest, value, f"{where}.{head}")
    return dataclasses.replace(obj, **{head: value})


def tokenizer_fingerprint() -> str:
    """The fingerprint of the course tokenizer (trained once and cached under ``data/``)."""
    from pali3_edu.tokenizer import course_tokenizer

    tok = course_tokenizer()
    fp = getattr(tok, "fingerprint", None)
    if fp is None:  # older tokenizer objects: hash the layout that ids depend on
        fp = hashlib.sha256(repr((tok.vocab_size, tok.padded_vocab_size)).encode()).hexdigest()[:16]
    return str(fp)


# ---------------------------------------------------------------------------------------------
# Stages
# ---------------------------------------------------------------------------------------------

LossFn = Callable[[nn.Module, Any], Any]


@dataclass
class Stage:
    """How one training stage turns a :class:`Recipe` into a run.

    - ``presets``: named recipes (``"tiny-cpu"`` for the lessons, ``"micro"`` for tests, GPU sizes);
    - ``build_model(recipe, tokenizer)`` → a fresh, seeded model;
    - ``build_data(recipe, tokenizer)`` → an object with ``get_batch(step)``;
    - ``loss_fn(recipe)`` → ``loss_fn(model, batch)`` for :func:`pali3_edu.train.train`;
    - ``param_groups(model, recipe)`` → what to train (``None``: every parameter that requires
      grad); stages that freeze a tower or use per-tower learning rates say it here;
    - ``init(model, recipe)`` → load upstream weights into a fresh model (optional);
    - ``tokenizer(recipe)`` → the tokenizer (default: the course tokenizer; a stage that starts
      from a public T5 checkpoint uses that checkpoint's vocabulary plus the course's tokens);
    - ``version``: bump when the stage's code changes its results (part of the fingerprint).
    """

    name: str
    presets: dict[str, Recipe]
    build_model: Callable[[Recipe, Any], nn.Module]
    build_data: Callable[[Recipe, Any], Any]
    loss_fn: Callable[[Recipe], LossFn]
    param_groups: Callable[[nn.Module, Recipe], Any] | None = None
    init: Callable[..., None] | None = None  # init(model, recipe, progress=...)
    tokenizer: Callable[[Recipe], Any] | None = None
    version: str = "1"


_STAGES: dict[str, Stage] = {}


def register_stage(stage: Stage) -> Stage:
    _STAGES[stage.name] = stage
    return stage


def _load_stage_modules() -> None:
    # importing a stage module registers it
    from pali3_edu.recipes import pali3, scale, siglip, ul2  # noqa: F401

    scale.register()  # the smoke and GPU presets of every stage


def get_stage(name: str) -> Stage:
    _load_stage_modules()
    if name not in _STAGES:
        raise ValueError(f"Unknown stage {name!r}. Stages: {', '.join(sorted(_STAGES))}")
    return _STAGES[name]


def list_recipes() -> list[str]:
    """Every ``stage:preset`` that :func:`get_recipe` knows."""
    _load_stage_modules()
    return sorted(f"{s}:{p}" for s, spec in _STAGES.items() for p in spec.presets)


def get_recipe(stage: str, preset: str = "tiny-cpu", **overrides: Any) -> Recipe:
    """A fresh copy of a named recipe with ``overrides`` applied (see :meth:`Recipe.replace`)."""
    spec = get_stage(stage)
    if preset not in spec.presets:
        raise ValueError(f"Stage {stage!r} has no preset {preset!r}. Presets: {', '.join(sorted(spec.presets))}")
    recipe = dataclasses.replace(spec.presets[preset], stage=stage, preset=preset)
    return apply_overrides(recipe, overrides) if overrides else recipe


# ---------------------------------------------------------------------------------------------
# The cache: load_or_train
# ---------------------------------------------------------------------------------------------


@dataclass
class TrainedRun:
    """What :func:`load_or_train` returns."""

    model: nn.Module
    tokenizer: Any
    history: History
    recipe: Recipe
    loaded: bool  # True: read from the cache; False: trained in this call
    path: Path  # the checkpoint directory

    def __iter__(self):  # ``model, tokenizer, history = run`` reads naturally in a lesson
        return iter((self.model, self.tokenizer, self.history))


def run_dir(recipe: Recipe, name: str | None = None) -> Path:
    """``data/runs/<stage>-<preset>`` (or ``data/runs/<name>``)."""
    return data_dir("runs") / (name or f"{recipe.stage}-{recipe.preset}")


def checkpoint_dir(recipe: Recipe, name: str | None = None) -> Path:
    return run_dir(recipe, name) / "checkpoint"


def _meta(recipe: Recipe) -> dict[str, Any]:
    return {"identity": recipe.identity(), "fingerprint": recipe.fingerprint()}


def cached_state(recipe: Recipe, path: Path) -> tuple[dict[str, Any] | None, str]:
    """``(state, why)``: the checkpoint's state if ``path`` holds a run of ``recipe`` (finished
    or not), else ``None`` and the reason (missing, damaged, another recipe)."""
    if not path.exists():
        return None, "no cached run"
    try:
        state = load_checkpoint(path)
    except CheckpointError as err:
        return None, f"the cached checkpoint is damaged ({err})"
    meta = state.get("meta") or {}
    if meta.get("fingerprint") != recipe.fingerprint():
        old = meta.get("identity") or {}
        return None, f"the cache holds another recipe (changed: {describe_changes(old, recipe.identity())})"
    return state, "ok"


def recipe_tokenizer(recipe: Recipe) -> Any:
    """The tokenizer a recipe's stage uses: the stage's own (``Stage.tokenizer``) or the course's."""
    from pali3_edu.tokenizer import course_tokenizer

    spec = get_stage(recipe.stage)
    return spec.tokenizer(recipe) if spec.tokenizer is not None else course_tokenizer()


def load_or_train(
    stage: str | Recipe,
    preset: str = "tiny-cpu",
    *,
    retrain: bool = False,
    device: torch.device | str | None = None,
    progress: bool = True,
    stop_after: int | None = None,
    cache_name: str | None = None,
    shipped: bool = True,
    **overrides: Any,
) -> TrainedRun:
    """The trained model of a recipe, from the cache under ``data/runs/`` or trained now.

    ``stage`` is a stage name (with ``preset`` and ``overrides``) or a :class:`Recipe`. A cached
    run is used only when its fingerprint equals the recipe's; a damaged cache or one from another
    recipe is reported (what changed) and trained again; an interrupted run resumes.
    ``stop_after`` stops after that many steps as if interrupted (the lessons show resuming).
    ``retrain=True`` deletes the cache first. Runs with ``overrides`` are cached separately.
    A preset with a checkpoint shipped in the package (:mod:`pali3_edu.shipped`, the ``long-cpu``
    runs) is loaded from it when ``data/runs/`` has no run of it and the fingerprints match; a
    stale or damaged shipped file raises :class:`~pali3_edu.shipped.ShippedCheckpointError` (what
    changed, how to train it); ``retrain=True`` or ``shipped=False`` trains it here instead
    (``shipped=False`` resumes an interrupted run in ``data/runs/``, ``retrain`` starts afresh).
    """
    if isinstance(stage, Recipe):
        recipe = apply_overrides(stage, overrides) if overrides else stage
    else:
        recipe = get_recipe(stage, preset, **overrides)
    if cache_name is None and overrides:
        cache_name = f"{recipe.stage}-{recipe.preset}-{recipe.fingerprint()[:8]}"
    spec = get_stage(recipe.stage)
    tokenizer = recipe_tokenizer(recipe)
    path = checkpoint_dir(recipe, cache_name)
    if retrain and path.parent.exists():
        shutil.rmtree(path.parent)

    state, why = cached_state(recipe, path)
    if state is None and path.exists():
        print(f"{path.parent.name}: {why}; training again.")
        shutil.rmtree(path.parent)
    if state is not None and int(state.get("step", 0)) >= recipe.train.steps:
        model = spec.build_model(recipe, tokenizer)
        load_checkpoint(path, model)
        dev = torch.device(device) if device is not None else pick_device()
        history = History(**state.get("history", {}))
        history.resumed_from = int(state["step"])
        return TrainedRun(model.to(dev).eval(), tokenizer, history, recipe, True, path)

    if state is None and shipped and not retrain and cache_name is None and stop_after is None:
        shipped = _shipped_run(recipe, device, tokenizer)
        if shipped is not None:
            return shipped

    model = spec.build_model(recipe, tokenizer)
    if spec.init is not None and state is None:
        spec.init(model, recipe, progress=progress)
    data = spec.build_data(recipe, tokenizer)
    groups = spec.param_groups(model, recipe) if spec.param_groups is not None else None
    history = train(model, spec.loss_fn(recipe), data.get_batch, recipe.train, checkpoint=path,
                    device=device, param_groups=groups, progress=progress, stop_after=stop_after,
                    meta=_meta(recipe))
    return TrainedRun(model.eval(), tokenizer, history, recipe, False, path)


def _shipped_run(recipe: Recipe, device: torch.device | str | None, tokenizer: Any) -> TrainedRun | None:
    """The checkpoint shipped with the package for this preset (:mod:`pali3_edu.shipped`), or
    ``None`` when the preset has none. A shipped file that is stale or damaged is *refused* with
    :class:`~pali3_edu.shipped.ShippedCheckpointError` rather than silently replaced by a training
    run: shipped presets take hours of CPU, more than a lesson cell should start unannounced."""
    from pali3_edu.shipped import load_shipped, shipped_path

    if not shipped_path(recipe.stage, recipe.preset).exists():
        return None
    return load_shipped(recipe, device=device, tokenizer=tokenizer)


def trainable(modules: Iterable[nn.Module]) -> list[nn.Parameter]:
    """The parameters of ``modules`` that require gradients."""
    return [p for m in modules for p in m.parameters() if p.requires_grad]
