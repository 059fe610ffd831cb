"""Stage 0 for the image tower: contrastive SigLIP pretraining on ShapesWorld (lesson 04).

The pieces, in the order the lesson uses them:

1. **Data** — :class:`CaptionPairs` holds every training image (as uint8) and every caption
   phrasing (tokenised once, padded with a "sticky" EOS). ``pairs.get_batch(step)`` draws
   ``batch_size`` *different* scenes and one random phrasing of each; it is a pure function of
   ``(seed, step)``, so a resumed run sees exactly the batches an uninterrupted one would.
2. **Loss** — :func:`contrastive_loss_fn` (``"sigmoid"``: SigLIP, ``"softmax"``: CLIP) plugs the
   model into :func:`pali3_edu.train.train`.
3. **Evaluation** — :class:`EvalSet` (held-out scenes with their canonical captions),
   :func:`retrieval_metrics` (image→text and text→image recall@k) and
   :func:`zero_shot_metrics` (shape and colour classification from text prompts).
4. **The stage** — named :class:`~pali3_edu.recipes.base.Recipe` presets (``tiny-cpu``,
   ``long-cpu``, ``micro``, ``small``) and :func:`load_or_train_siglip`, which returns the trained model of a
   preset from the cache under ``data/runs/`` or trains it (later lessons start from it).
5. **Batch-size sweep** — :func:`batch_size_sweep`, sigmoid vs softmax at several batch sizes and
   seeds, all runs the same number of steps, with its results cached as JSON.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor

from pali3_edu.config import SigLIPConfig, TextConfig, ViTConfig, get_config
from pali3_edu.metrics import recall_at_k, zero_shot_accuracy
from pali3_edu.recipes.base import (
    Recipe,
    Stage,
    TrainedRun,
    _jsonable,
    load_or_train,
    register_stage,
)
from pali3_edu.recipes.base import get_recipe as _get_recipe
from pali3_edu.siglip import SigLIP
from pali3_edu.train import History, TrainConfig, train, unwrap
from pali3_edu.utils import data_dir

LossKind = Literal["sigmoid", "softmax"]

# ---------------------------------------------------------------------------------------------
# Images and captions as tensors
# ---------------------------------------------------------------------------------------------


def images_to_uint8(images: Sequence[Any], image_size: int) -> Tensor:
    """PIL images → ``(N, 3, image_size, image_size)`` uint8 (4× smaller than float pixels).

    Resizing goes through :func:`pali3_edu.data.collate.images_to_batch`; ``uint8_to_pixels``
    turns the result back into the model's [-1, 1] range without loss.
    """
    from pali3_edu.data.collate import images_to_batch

    chunks = []
    for start in range(0, len(images), 512):  # bounded float memory for big data sets
        x = images_to_batch(list(images[start : start + 512]), image_size)
        chunks.append(((x + 1) * 127.5).round_().clamp_(0, 255).to(torch.uint8))
    return torch.cat(chunks)


def uint8_to_pixels(x: Tensor) -> Tensor:
    """``(..., 3, H, W)`` uint8 → float32 in [-1, 1] (``pixel / 127.5 − 1``, as SigLIP expects)."""
    return x.float() / 127.5 - 1.0


def tokenize_captions(tokenizer: Any, texts: Sequence[str], max_len: int) -> Tensor:
    """Captions → ``(N, max_len)`` ids padded with EOS ("sticky EOS": the last token is always EOS,
    which is the one the text tower pools). Longer captions are cut, keeping EOS last."""
    enc = tokenizer.batch_encode(
        list(texts), max_length=max_len, padding="max_length", pad_id=tokenizer.eos_id
    )
    return enc["input_ids"]


class CaptionPairs:
    """Training pairs: every scene's image and *all* its caption phrasings.

    - ``images``: ``(scenes, 3, H, W)`` uint8
    - ``caption_ids``: ``(phrasings, max_len)`` token ids; scene ``i`` owns the rows
      ``first[i] .. first[i] + count[i] − 1`` (its phrasings, canonical caption first)

    ``get_batch(step)`` returns ``{"pixel_values": (B, 3, H, W) float, "input_ids": (B, max_len)}``.
    """

    def __init__(
        self,
        images: Tensor,
        captions: Sequence[Sequence[str]],
        tokenizer: Any,
        max_len: int,
        batch_size: int,
        seed: int = 0,
    ):
        if images.dtype != torch.uint8 or images.ndim != 4:
            raise ValueError(f"images must be (N, 3, H, W) uint8, got {images.dtype} {tuple(images.shape)}")
        if len(captions) != images.shape[0]:
            raise ValueError(f"{images.shape[0]} images but {len(captions)} caption lists")
        if not 1 <= batch_size <= images.shape[0]:
            raise ValueError(f"batch_size must be in 1..{images.shape[0]} (the number of scenes), got {batch_size}")
        self.images, self.batch_size, self.seed = images, batch_size, seed
        self.captions = [list(c) for c in captions]
        flat = [text for phrasings in self.captions for text in phrasings]
        self.caption_ids = tokenize_captions(tokenizer, flat, max_len)
        self.count = torch.tensor([len(c) for c in self.captions])
        self.first = torch.cumsum(self.count, 0) - self.count

    def __len__(self) -> int:
        return self.images.shape[0]

    def sample(self, step: int) -> tuple[Tensor, Tensor]:
        """Scene indices ``(B,)`` (all different) and caption rows ``(B,)`` for ``step``."""
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + step)
        scenes = torch.randperm(len(self), generator=g)[: self.batch_size]
        # one phrasing per scene, uniformly among that scene's phrasings
        pick = (torch.rand(self.batch_size, generator=g) * self.count[scenes]).long()
        return scenes, self.first[scenes] + pick

    def get_batch(self, step: int) -> dict[str, Tensor]:
        scenes, rows = self.sample(step)
        return {"pixel_values": uint8_to_pixels(self.images[scenes]), "input_ids": self.caption_ids[rows]}

    def texts(self, step: int) -> list[str]:
        """The caption strings of ``get_batch(step)`` (for display)."""
        scenes, rows = self.sample(step)
        return [self.captions[s][r - self.first[s]] for s, r in zip(scenes.tolist(), rows.tolist())]


def load_caption_pairs(
    tokenizer: Any,
    cfg: SigLIPConfig,
    num_scenes: int,
    batch_size: int,
    seed: int = 0,
    split: str = "train",
    single_object_scenes: int = 0,
) -> CaptionPairs:
    """ShapesWorld ``split`` (cached under ``data/``) as :class:`CaptionPairs` for ``cfg``'s sizes.

    ``num_scenes`` scenes of 1–3 objects, plus ``single_object_scenes`` scenes with exactly one
    object (those force the model to tell shapes apart: colour alone no longer identifies the
    caption of a lone "small red ..." object).
    """
    from pali3_edu.data.shapesworld import load_shapesworld

    size = max(32, cfg.vision.image_size)
    parts = [load_shapesworld(split, num_scenes, image_size=size)]
    if single_object_scenes:
        parts.append(load_shapesworld(split, single_object_scenes, image_size=size, min_objects=1, max_objects=1))
    images = torch.cat([images_to_uint8(ds["image"], cfg.vision.image_size) for ds in parts])
    captions = [c for ds in parts for c in ds["captions"]]
    return CaptionPairs(images, captions, tokenizer, cfg.text.max_len, batch_size, seed)


# ---------------------------------------------------------------------------------------------
# Loss for the training loop
# ---------------------------------------------------------------------------------------------


def contrastive_loss_fn(kind: LossKind = "sigmoid") -> Callable[[SigLIP, dict], dict[str, Tensor]]:
    """``loss_fn(model, batch)`` for :func:`pali3_edu.train.train`: the loss, plus ``t`` and ``b``
    so the training history shows how the temperature and bias move.

    Under several processes (``torchrun``, DDP) each holds its share of the batch, and the
    sigmoid loss uses :func:`pali3_edu.siglip.distributed_sigmoid_loss`: every image is scored
    against every text of the *global* batch (the text embeddings travel round a ring of
    processes), as one process would score them, and the loss is the global batch's. That
    function's backward pass gives each process its share of the gradient, whose *sum* over the
    processes is the global gradient; DDP averages, so the gradient (not the value) is scaled by
    the number of processes. The softmax (CLIP) loss stays per process."""
    import torch.distributed as dist

    from pali3_edu.siglip import distributed_sigmoid_loss

    if kind not in ("sigmoid", "softmax"):
        raise ValueError(f"kind must be 'sigmoid' or 'softmax', got {kind!r}")

    def loss_fn(model: SigLIP, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        inner = unwrap(model)  # under DDP the parameters live on the wrapped module
        world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
        if kind == "sigmoid" and world > 1:
            out = model(batch["pixel_values"], batch["input_ids"], loss="none")  # through DDP's forward
            loss = distributed_sigmoid_loss(out.image_emb, out.text_emb, inner.t_prime, inner.bias)
            loss = loss.detach() + world * (loss - loss.detach())  # value: the loss; gradient: world x share
        else:
            loss = model(batch["pixel_values"], batch["input_ids"], loss=kind).loss  # through DDP's forward
        return {"loss": loss, "t": inner.t_prime.detach().exp(), "b": inner.bias.detach()}

    return loss_fn


# ---------------------------------------------------------------------------------------------
# Evaluation
# ---------------------------------------------------------------------------------------------


@torch.no_grad()
def embed_images(model: SigLIP, pixel_values: Tensor, batch_size: int = 256) -> Tensor:
    """``(N, 3, H, W)`` float or uint8 → L2-normalised image embeddings ``(N, D)`` (eval mode)."""
    model.eval()
    device = next(model.parameters()).device
    out = []
    for chunk in pixel_values.split(batch_size):
        if chunk.dtype == torch.uint8:
            chunk = uint8_to_pixels(chunk)
        out.append(torch.nn.functional.normalize(model.encode_image(chunk.to(device))[1], dim=-1).cpu())
    return torch.cat(out)


@torch.no_grad()
def embed_texts(model: SigLIP, input_ids: Tensor, batch_size: int = 512) -> Tensor:
    """``(N, seq)`` EOS-padded ids → L2-normalised text embeddings ``(N, D)`` (eval mode)."""
    model.eval()
    device = next(model.parameters()).device
    out = [torch.nn.functional.normalize(model.encode_text(c.to(device)), dim=-1).cpu()
           for c in input_ids.split(batch_size)]
    return torch.cat(out)


@dataclass
class EvalSet:
    """Held-out scenes: images (uint8), canonical captions and their token ids, object lists."""

    images: Tensor  # (N, 3, H, W) uint8
    captions: list[str]
    input_ids: Tensor  # (N, max_len)
    objects: list[list[dict]]
    split: str = "val"

    def __len__(self) -> int:
        return len(self.captions)

    @property
    def same_caption(self) -> Tensor:
        """``(N, N)`` bool: caption j is *correct* for image i when it is word for word image i's
        caption (two single-object scenes "a large red circle" are indistinguishable by text)."""
        ids = {c: k for k, c in enumerate(dict.fromkeys(self.captions))}
        key = torch.tensor([ids[c] for c in self.captions])
        return key[:, None] == key[None, :]


def load_eval_set(
    tokenizer: Any,
    cfg: SigLIPConfig,
    split: str = "val",
    num_scenes: int = 500,
    single_object: bool = False,
) -> EvalSet:
    """``num_scenes`` ShapesWorld scenes of ``split`` (val, test, compositional), cached under ``data/``.

    ``single_object=True`` gives scenes with exactly one shape (for zero-shot classification,
    where the label must be unambiguous).
    """
    from pali3_edu.data.shapesworld import load_shapesworld

    kwargs = dict(min_objects=1, max_objects=1) if single_object else {}
    ds = load_shapesworld(split, num_scenes, image_size=max(32, cfg.vision.image_size), **kwargs)
    captions = list(ds["caption"])
    return EvalSet(
        images=images_to_uint8(ds["image"], cfg.vision.image_size),
        captions=captions,
        input_ids=tokenize_captions(tokenizer, captions, cfg.text.max_len),
        objects=list(ds["objects"]),
        split=split,
    )


def similarity_matrix(model: SigLIP, data: EvalSet) -> Tensor:
    """Cosine similarities ``(images, captions)`` of an :class:`EvalSet`."""
    return embed_images(model, data.images) @ embed_texts(model, data.input_ids).T


def retrieval_metrics(model: SigLIP, data: EvalSet, ks: Sequence[int] = (1, 5)) -> dict[str, float]:
    """Image→text (``i2t_r@k``) and text→image (``t2i_r@k``) recall over ``data``.

    Every image is a query against all captions of the set (and vice versa); identical captions
    count as correct for each other (see :attr:`EvalSet.same_caption`).
    """
    sim = similarity_matrix(model, data)
    relevant = data.same_caption
    out = {}
    for k in ks:
        out[f"i2t_r@{k}"] = recall_at_k(sim, relevant, k)
        out[f"t2i_r@{k}"] = recall_at_k(sim.T, relevant.T, k)
    return out


def class_prompts(attribute: Literal["shape", "color"],
                  style: Literal["ensemble", "short"] = "ensemble") -> dict[str, list[str]]:
    """Text prompts per class, written in the style of the training captions.

    - ``"ensemble"``: every single-object caption the class could have, e.g. for *circle*
      "a small red circle", "a large red circle", … (12 prompts). Their embeddings are averaged
      into one class embedding (CLIP's "prompt ensembling").
    - ``"short"``: one generic prompt, "a circle" / "a red shape". Never seen in training.
    """
    from pali3_edu.data.shapesworld import COLORS, SHAPES, SIZES

    if attribute not in ("shape", "color"):
        raise ValueError(f"attribute must be 'shape' or 'color', got {attribute!r}")
    classes = SHAPES if attribute == "shape" else COLORS
    if style == "short":
        return {c: [f"a {c}" if attribute == "shape" else f"a {c} shape"] for c in classes}
    if style != "ensemble":
        raise ValueError(f"style must be 'ensemble' or 'short', got {style!r}")
    if attribute == "shape":
        return {s: [f"a {z} {c} {s}" for z in SIZES for c in COLORS] for s in classes}
    return {c: [f"a {z} {c} {s}" for z in SIZES for s in SHAPES] for c in classes}


def prompt_embeddings(model: SigLIP, tokenizer: Any, prompts: dict[str, list[str]]) -> Tensor:
    """Every prompt's L2-normalised embedding, ``(classes, prompts, D)`` (equal prompt counts)."""
    counts = {len(texts) for texts in prompts.values()}
    if len(counts) != 1:
        raise ValueError(f"every class needs the same number of prompts, got counts {sorted(counts)}")
    max_len = model.cfg.text.max_len
    return torch.stack([embed_texts(model, tokenize_captions(tokenizer, texts, max_len)) for texts in prompts.values()])


def zero_shot_metrics(
    model: SigLIP,
    tokenizer: Any,
    data: EvalSet,
    style: Literal["ensemble", "short"] = "ensemble",
    aggregate: Literal["max", "mean"] = "max",
) -> dict[str, float]:
    """Zero-shot ``shape_acc`` and ``color_acc`` on single-object scenes (the label is that object's).

    ``aggregate="max"`` scores a class by its best-matching prompt; ``"mean"`` averages its prompt
    embeddings first (CLIP's prompt ensembling). See :func:`pali3_edu.metrics.zero_shot_predict`.
    """
    if any(len(objs) != 1 for objs in data.objects):
        raise ValueError("zero_shot_metrics needs single-object scenes: load_eval_set(..., single_object=True)")
    image_emb = embed_images(model, data.images)
    out = {}
    for attribute in ("shape", "color"):
        prompts = class_prompts(attribute, style)
        names = list(prompts)
        labels = [names.index(objs[0][attribute]) for objs in data.objects]
        out[f"{attribute}_acc"] = zero_shot_accuracy(
            image_emb, prompt_embeddings(model, tokenizer, prompts), labels, aggregate
        )
    return out


# ---------------------------------------------------------------------------------------------
# The stage: recipes and load_or_train_siglip
# ---------------------------------------------------------------------------------------------


@dataclass
class SigLIPData:
    """The data and the objective of a SigLIP run."""

    num_scenes: int = 4000  # training scenes of 1–3 objects
    single_object_scenes: int = 0  # extra scenes with one object (they force shapes apart)
    batch_size: int = 64
    loss: LossKind = "sigmoid"  # "softmax": the CLIP loss, for comparison


def micro_siglip_config(image_size: int = 32) -> SigLIPConfig:
    """A very small SigLIP (2+1 layers, width 64) for tests and the batch-size sweep."""
    return SigLIPConfig(
        vision=ViTConfig(image_size=image_size, patch_size=8, width=64, depth=2, mlp_dim=128, heads=2),
        text=TextConfig(width=64, depth=1, mlp_dim=128, heads=2, max_len=24),
        embed_dim=64,
    )


def _recipe(preset: str, model: SigLIPConfig, data: SigLIPData, **train: Any) -> Recipe:
    train = {"log_every": 10, "checkpoint_every": 100, **train}
    return Recipe("siglip", preset, model, data, TrainConfig(**train))


PRESETS: dict[str, Recipe] = {
    # lesson 04 on a 2-core CPU (about 3 minutes)
    "tiny-cpu": _recipe("tiny-cpu", get_config("siglip", "tiny-cpu"), SigLIPData(),
                        steps=450, lr=1e-3, warmup_steps=45),
    # the tiny-cpu model trained about 13x longer, on more scenes with extra single-object ones
    # (about 25 minutes on a quiet 2-core CPU: `python -m pali3_edu.train --recipe siglip --preset long-cpu`)
    "long-cpu": _recipe("long-cpu", get_config("siglip", "tiny-cpu"),
                        SigLIPData(num_scenes=12000, single_object_scenes=6000),
                        steps=6000, lr=1e-3, warmup_steps=300, checkpoint_every=200),
    # the same model again, about 2.3x longer than long-cpu on 2.5x the scenes, for zero-shot shape
    # (47 minutes on a quiet 2-core CPU: `python -m pali3_edu.train --recipe siglip --preset xlong-cpu`)
    "xlong-cpu": _recipe("xlong-cpu", get_config("siglip", "tiny-cpu"),
                         SigLIPData(num_scenes=30000, single_object_scenes=15000),
                         steps=14000, lr=1e-3, warmup_steps=300, checkpoint_every=200),
    # tests: seconds
    "micro": _recipe("micro", micro_siglip_config(32), SigLIPData(num_scenes=64, batch_size=16),
                     steps=20, lr=1e-3, warmup_steps=2),
    # a GPU run of the same world at the "small" size
    "small": _recipe("small", get_config("siglip", "small"),
                     SigLIPData(num_scenes=20000, batch_size=256),
                     steps=4000, lr=5e-4, warmup_steps=200, amp_dtype="bf16"),
}


def _check_tokenizer(tokenizer: Any, cfg: SigLIPConfig) -> None:
    if tokenizer.padded_vocab_size > cfg.text.vocab_size:
        raise ValueError(
            f"The tokenizer has {tokenizer.padded_vocab_size} ids but the text tower only "
            f"{cfg.text.vocab_size} embeddings: build the model with TextConfig(vocab_size="
            f"{tokenizer.padded_vocab_size})."
        )


def build_model(recipe: Recipe, tokenizer: Any) -> SigLIP:
    """A fresh SigLIP of the recipe's size, seeded with the recipe's seed."""
    _check_tokenizer(tokenizer, recipe.model)
    torch.manual_seed(recipe.train.seed)
    return SigLIP(recipe.model)


def build_data(recipe: Recipe, tokenizer: Any) -> CaptionPairs:
    d: SigLIPData = recipe.data
    return load_caption_pairs(tokenizer, recipe.model, d.num_scenes, d.batch_size, recipe.train.seed,
                              single_object_scenes=d.single_object_scenes)


STAGE = register_stage(Stage(
    name="siglip", presets=PRESETS, build_model=build_model, build_data=build_data,
    loss_fn=lambda recipe: contrastive_loss_fn(recipe.data.loss),
))


def get_recipe(preset: str = "tiny-cpu", **overrides: Any) -> Recipe:
    """A copy of a SigLIP recipe (``tiny-cpu``, ``long-cpu``, ``micro``, ``small``) with ``overrides``."""
    return _get_recipe("siglip", preset, **overrides)


def load_or_train_siglip(preset: str = "tiny-cpu", **kwargs: Any) -> TrainedRun:
    """The pretrained SigLIP of a preset: ``run.model``, ``run.tokenizer``, ``run.history``,
    ``run.loaded`` (see :func:`pali3_edu.recipes.load_or_train`)."""
    return load_or_train("siglip", preset, **kwargs)


def train_siglip(recipe: Recipe, pairs: CaptionPairs | None = None, tokenizer: Any = None, *,
                 device: torch.device | str | None = None, progress: bool = False) -> tuple[SigLIP, History]:
    """Train a fresh model of ``recipe`` without any cache (the sweep and the tests use it)."""
    from pali3_edu.tokenizer import course_tokenizer

    tokenizer = tokenizer or course_tokenizer()
    model = build_model(recipe, tokenizer)
    pairs = pairs if pairs is not None else build_data(recipe, tokenizer)
    history = train(model, contrastive_loss_fn(recipe.data.loss), pairs.get_batch, recipe.train,
                    device=device or "cpu", progress=progress)
    return model, history


# ---------------------------------------------------------------------------------------------
# Sigmoid vs softmax over batch sizes
# ---------------------------------------------------------------------------------------------


@dataclass
class SweepSettings:
    """The batch-size sweep: every (loss, batch size, seed) run trains the same micro SigLIP for
    the same number of **steps** (so a batch of 128 sees 16× the examples of a batch of 8: the
    question is which loss makes better use of a batch of a given size), with a few seeds to show
    the spread. ``base`` is the recipe every run starts from."""

    batch_sizes: tuple[int, ...] = (8, 16, 32, 64)
    losses: tuple[str, ...] = ("sigmoid", "softmax")
    seeds: tuple[int, ...] = (0, 1, 2)
    steps: int = 200
    eval_scenes: int = 300
    base: Recipe = field(default_factory=lambda: get_recipe(
        "micro", **{"data.num_scenes": 2000, "train.lr": 2e-3, "train.warmup_steps": 30}))


def batch_size_sweep(
    settings: SweepSettings | None = None,
    *,
    cache: bool = True,
    progress: bool = True,
) -> list[dict[str, Any]]:
    """Train one micro SigLIP per (loss, batch size, seed) and measure held-out image→text R@1.

    Returns rows ``{loss, batch_size, seed, steps, final_loss, i2t_r@1, t2i_r@1, seconds}``. The
    table is cached in ``data/results/siglip-batch-sweep-<hash>.json`` (hash of the settings and
    of the versions the recipe depends on); it is recomputed when missing.
    """
    from pali3_edu.tokenizer import course_tokenizer

    settings = settings or SweepSettings()
    identity = {"settings": _jsonable(settings), "versions": settings.base.versions()}
    key = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:12]
    path = data_dir("results") / f"siglip-batch-sweep-{key}.json"
    if cache and path.exists():
        try:
            return json.loads(path.read_text())["rows"]
        except (ValueError, KeyError):
            print(f"{path.name} is damaged: running the sweep again.")

    tokenizer = course_tokenizer()
    base = settings.base
    pairs = load_caption_pairs(tokenizer, base.model, base.data.num_scenes, max(settings.batch_sizes))
    val = load_eval_set(tokenizer, base.model, "val", settings.eval_scenes)
    runs = [(loss, b, seed) for loss in settings.losses for b in settings.batch_sizes for seed in settings.seeds]
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(runs), desc="sweep", leave=False)
    rows = []
    for loss, b, seed in runs:
        recipe = base.replace(**{"data.loss": loss, "data.batch_size": b, "train.steps": settings.steps,
                                 "train.seed": seed})
        pairs.batch_size, pairs.seed = b, seed
        t0 = time.perf_counter()
        model, history = train_siglip(recipe, pairs, tokenizer, device="cpu")
        metrics = retrieval_metrics(model, val, ks=(1,))
        rows.append(dict(loss=loss, batch_size=b, seed=seed, steps=settings.steps,
                         final_loss=history.losses[-1], **metrics,
                         seconds=round(time.perf_counter() - t0, 2)))
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    if cache:
        atomic_write_text(path, json.dumps({"identity": identity, "rows": rows}, indent=1))
    return rows


def summarize_sweep(rows: list[dict[str, Any]], metric: str = "i2t_r@1") -> dict[tuple[str, int], tuple[float, float]]:
    """``{(loss, batch_size): (mean, standard deviation over seeds)}`` of ``metric``."""
    groups: dict[tuple[str, int], list[float]] = {}
    for r in rows:
        groups.setdefault((r["loss"], r["batch_size"]), []).append(r[metric])
    out = {}
    for k, v in groups.items():
        t = torch.tensor(v, dtype=torch.float64)
        out[k] = (float(t.mean()), float(t.std()) if len(v) > 1 else 0.0)
    return out


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file, so a crash never leaves half a file."""
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


__all__ = [
    "CaptionPairs", "EvalSet", "PRESETS", "SigLIPData", "SweepSettings", "batch_size_sweep",
    "class_prompts", "prompt_embeddings", "contrastive_loss_fn", "embed_images", "embed_texts",
    "get_recipe", "images_to_uint8", "load_caption_pairs", "load_eval_set", "load_or_train_siglip",
    "micro_siglip_config", "retrieval_metrics", "similarity_matrix", "summarize_sweep",
    "tokenize_captions", "train_siglip", "uint8_to_pixels", "zero_shot_metrics",
]
