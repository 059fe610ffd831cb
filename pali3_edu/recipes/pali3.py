"""PaLI-3's training stages as recipes (lessons 09–11), on the same cache as SigLIP and UL2.

=====================  =========================================================  ===========
stage                  what happens                                               starts from
=====================  =========================================================  ===========
``pali3-stage1``       multimodal training on the task mixture, ViT **frozen**,   SigLIP, UL2
                       at the ViT's native resolution
``pali3-stage2``       resolution increase: the ViT's position grid is            stage 1
                       interpolated to a larger image, then the **whole** model
                       is fine-tuned for a short while
``pali3-transfer``     fine-tune on one task, ViT frozen again                    stage 2
                                                                                  (``long-cpu``:
                                                                                  stage 1)
=====================  =========================================================  ===========

This is the paper's recipe (Chen et al., 2023, §3): stage 0 trains the two halves alone (lessons 04
and 07), stage 1 trains them together on a mixture with the ViT frozen at 224 px, stage 2 raises
the resolution (812, then 1064 px) with nothing frozen, and transfer specialises the model on a
benchmark with the ViT frozen.

Choices for a 2-core CPU, each a recipe setting the lessons discuss:

- ``loc_levels``: boxes are quantised to this many levels per coordinate before they are written
  as ``<locNNNN>`` tokens (the tokenizer always has 1024; a tiny model learns 32 levels far faster).
- ``ordinal_loc_init``: the ``<loc>`` embeddings and output rows start as a smooth 1-D code of
  the bin (neighbouring bins similar), not as independent random vectors.
- ``PaLI3Config.visual_posemb``: a fixed 2-D sine-cosine position code added to the visual tokens
  (off in the paper's model).

>>> r = get_recipe("pali3-stage1", "micro")
>>> sorted(r.upstream)
['text', 'vision']
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from pali3_edu.pali3 import PaLI3, PaLI3Config
from pali3_edu.recipes.base import Recipe, Stage, TrainedRun, load_or_train, register_stage
from pali3_edu.recipes.base import get_recipe as _get_recipe
from pali3_edu.recipes.siglip import micro_siglip_config
from pali3_edu.tokens import IGNORE_INDEX
from pali3_edu.train import ParamGroup, TrainConfig

# ---------------------------------------------------------------------------------------------
# Settings
# ---------------------------------------------------------------------------------------------

DEFAULT_TASK_WEIGHTS = {"caption": 1.0, "vqa": 2.0, "ocr": 1.0, "detect": 1.0, "refer": 1.5}


@dataclass
class MultimodalSettings:
    """The data of a PaLI-3 stage: which scenes, which tasks, how boxes are written."""

    num_scenes: int = 4000
    task_weights: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_TASK_WEIGHTS))
    batch_size: int = 32
    loc_levels: int = 32  # quantise boxes to this many levels per coordinate
    word_prob: float = 0.3  # share of scenes with a written word (OCR examples)


@dataclass
class StageSettings:
    """How a stage starts and what it trains."""

    vision_init: str = "siglip"  # "siglip": the upstream SigLIP's ViT; "random": the paper's ablation
    text_init: str = "ul2"  # "ul2": the lesson-07 encoder-decoder; "random"
    freeze_vision: bool = True
    vision_lr_scale: float = 1.0  # when the ViT trains: its learning rate relative to the rest
    ordinal_loc_init: bool = True
    image_size: int | None = None  # stage 2: the new resolution
    # Start stage 1 from public checkpoints instead of the course's stage-0 runs: a local folder
    # or a Hub name (see pretrained_recipe and pali3_edu.convert.pretrained).
    vision_pretrained: str | None = None
    text_pretrained: str | None = None


@dataclass
class PaLI3Data:
    """A PaLI-3 stage's data and stage settings (``recipe.data``)."""

    mix: MultimodalSettings = field(default_factory=MultimodalSettings)
    stage: StageSettings = field(default_factory=StageSettings)


def _model_config(vision_preset: str, text_preset: str, visual_posemb: str = "sincos2d") -> PaLI3Config:
    from pali3_edu.recipes.siglip import get_recipe as siglip_recipe
    from pali3_edu.recipes.ul2 import get_recipe as ul2_recipe

    vision = dataclasses.replace(siglip_recipe(vision_preset).model.vision, pool="none")
    text = ul2_recipe(text_preset).model
    return PaLI3Config(vision=vision, text=text, max_prompt_len=24, max_answer_len=40,
                       visual_posemb=visual_posemb)


def _recipe(stage: str, preset: str, model: PaLI3Config, data: PaLI3Data, upstream: dict, **train: Any) -> Recipe:
    train = {"log_every": 10, "checkpoint_every": 100, "weight_decay": 0.01, **train}
    return Recipe(stage, preset, model, data, TrainConfig(**train), upstream)


def _presets(stage: str) -> dict[str, Recipe]:
    from pali3_edu.recipes.scale import StreamedPaLI3Data  # the long-cpu presets stream their scenes

    tiny = _model_config("tiny-cpu", "tiny-cpu")
    micro = _model_config("micro", "micro")
    micro = dataclasses.replace(micro, vision=dataclasses.replace(micro.vision, image_size=32))
    assert micro_siglip_config(32).vision.width == micro.vision.width
    if stage == "pali3-stage1":
        up = lambda p: {"vision": ("siglip", p), "text": ("ul2", p)}  # noqa: E731
        LONG_SIGLIP = {"vision": ("siglip", "long-cpu"), "text": ("ul2", "tiny-cpu")}  # noqa: N806
        return {
            # the ViT of SigLIP's long-cpu run (lesson 04 shows it; shipped, see pali3_edu.shipped):
            # its patch tokens tell shapes apart, those of the 450-step tiny-cpu run hardly
            "tiny-cpu": _recipe(stage, "tiny-cpu", tiny, PaLI3Data(), LONG_SIGLIP,
                                steps=1500, lr=2e-3, warmup_steps=100),
            "micro": _recipe(stage, "micro", micro,
                             PaLI3Data(MultimodalSettings(num_scenes=64, batch_size=8)), up("micro"),
                             steps=8, lr=2e-3, warmup_steps=2),
            # hours on a 2-core CPU, shipped with the package (see pali3_edu.shipped): the same
            # model on the long-cpu SigLIP, with a fresh scene for every example
            "long-cpu": _recipe(stage, "long-cpu", tiny,
                                StreamedPaLI3Data(MultimodalSettings(num_scenes=1_000_000), StageSettings()),
                                LONG_SIGLIP, steps=20000, lr=2e-3, warmup_steps=300, checkpoint_every=200),
        }
    if stage == "pali3-stage2":
        def stage2(base: PaLI3Config, size: int) -> PaLI3Config:
            return dataclasses.replace(base, vision=dataclasses.replace(base.vision, image_size=size))

        settings = StageSettings(freeze_vision=False, vision_lr_scale=0.3, ordinal_loc_init=False)
        return {
            "tiny-cpu": _recipe(stage, "tiny-cpu", stage2(tiny, 128),
                                PaLI3Data(MultimodalSettings(num_scenes=2000),
                                          dataclasses.replace(settings, image_size=128)),
                                {"previous": ("pali3-stage1", "tiny-cpu")}, steps=150, lr=5e-4, warmup_steps=15),
            "micro": _recipe(stage, "micro", stage2(micro, 64),
                             PaLI3Data(MultimodalSettings(num_scenes=32, batch_size=4),
                                       dataclasses.replace(settings, image_size=64)),
                             {"previous": ("pali3-stage1", "micro")}, steps=4, lr=5e-4, warmup_steps=1),
        }
    if stage == "pali3-transfer":
        settings = StageSettings(freeze_vision=True, ordinal_loc_init=False)
        refer = {"refer": 1.0}
        big = _model_config("tiny-cpu", "tiny-cpu")
        big = dataclasses.replace(big, vision=dataclasses.replace(big.vision, image_size=128))
        return {
            # shipped with the package (see pali3_edu.shipped), about 15 minutes on a 2-core CPU:
            # the long-cpu stage-1 model made a referring-expression specialist at its own 64 px
            # (stage 2 left out), on streamed scenes, so the long mixture run is the generalist
            "long-cpu": _recipe(stage, "long-cpu", tiny,
                                StreamedPaLI3Data(MultimodalSettings(num_scenes=1_000_000, task_weights=refer),
                                                  settings),
                                {"previous": ("pali3-stage1", "long-cpu")}, steps=4000, lr=1e-3, warmup_steps=50,
                                checkpoint_every=200),
            "tiny-cpu": _recipe(stage, "tiny-cpu", big,
                                PaLI3Data(MultimodalSettings(num_scenes=2000, task_weights=refer), settings),
                                {"previous": ("pali3-stage2", "tiny-cpu")}, steps=150, lr=5e-4, warmup_steps=15),
            "micro": _recipe(stage, "micro",
                             dataclasses.replace(micro, vision=dataclasses.replace(micro.vision, image_size=64)),
                             PaLI3Data(MultimodalSettings(num_scenes=32, batch_size=4, task_weights=refer), settings),
                             {"previous": ("pali3-stage2", "micro")}, steps=4, lr=5e-4, warmup_steps=1),
        }
    raise ValueError(stage)


# ---------------------------------------------------------------------------------------------
# Model building and initialisation
# ---------------------------------------------------------------------------------------------


def ordinal_codes(n: int, dim: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """``(n, dim)`` vectors for the ordered bins ``0 .. n-1``: sine-cosine features of the bin
    (as a 1-D position code) mixed by a random orthogonal matrix, so that neighbouring bins get
    similar vectors and a dot product can peak at any bin (a straight line through two random
    vectors could only peak at its ends). Scaled to unit variance per entry, like T5's N(0, 1)
    embeddings."""
    pos = torch.linspace(0, 1, n, dtype=torch.float64)[:, None]
    freqs = torch.arange(1, dim // 2 + 1, dtype=torch.float64)[None] * math.pi / 2
    codes = torch.cat([torch.sin(pos * freqs), torch.cos(pos * freqs)], dim=1)
    if codes.shape[1] < dim:
        codes = torch.cat([codes, torch.zeros(n, dim - codes.shape[1], dtype=torch.float64)], dim=1)
    q, _ = torch.linalg.qr(torch.randn(dim, dim, generator=generator, dtype=torch.float64))
    codes = codes @ q
    return (codes / codes.std()).float()


@torch.no_grad()
def init_loc_embeddings(model: PaLI3, tokenizer: Any, seed: int = 0) -> None:
    """Give the ``<loc>`` tokens ordinal embeddings (input and output rows)."""
    ids = torch.tensor(list(tokenizer.loc_ids))
    g = torch.Generator().manual_seed(seed)
    emb = model.encdec.embed_tokens.weight
    emb[ids] = ordinal_codes(len(ids), emb.shape[1], g).to(emb)
    if model.encdec.lm_head is not None:
        head = model.encdec.lm_head.weight
        head[ids] = ordinal_codes(len(ids), head.shape[1], g).to(head)


def build_model(recipe: Recipe, tokenizer: Any) -> PaLI3:
    """A fresh PaLI-3 of the recipe's size (weights from upstream come in :func:`init`)."""
    torch.manual_seed(recipe.train.seed)
    cfg: PaLI3Config = recipe.model
    cfg = dataclasses.replace(cfg, text=dataclasses.replace(cfg.text, vocab_size=tokenizer.padded_vocab_size))
    model = PaLI3(cfg)
    model.tokenizer = tokenizer
    return model


def _vit_state(siglip: nn.Module) -> dict[str, torch.Tensor]:
    """The SigLIP image tower's weights without its pooling head (PaLI-3 uses the patch tokens)."""
    return {k: v for k, v in siglip.vision.state_dict().items() if not k.startswith("head.")}


def init(model: PaLI3, recipe: Recipe, *, progress: bool = True) -> None:
    """Load the upstream weights into a fresh model: SigLIP's ViT and UL2's encoder-decoder
    (stage 1), or the previous stage's whole model at a new resolution (stage 2, transfer)."""
    d: PaLI3Data = recipe.data
    if d.stage.vision_pretrained or d.stage.text_pretrained:
        from pali3_edu.convert.pretrained import init_pali3_from_pretrained

        if not (d.stage.vision_pretrained and d.stage.text_pretrained):
            raise ValueError("Pass both vision_pretrained and text_pretrained (a public SigLIP and a T5/UL2), "
                             "e.g. with pali3_edu.recipes.pali3.pretrained_recipe(siglip, t5).")
        init_pali3_from_pretrained(model, siglip=d.stage.vision_pretrained, t5=d.stage.text_pretrained,
                                   tokenizer=model.tokenizer, seed=recipe.train.seed)
        if d.stage.ordinal_loc_init:
            init_loc_embeddings(model, model.tokenizer, recipe.train.seed)
        return
    if "previous" in recipe.upstream:
        stage, preset = recipe.upstream["previous"]
        prev = load_or_train(stage, preset, progress=progress, device="cpu").model
        if prev.image_size != model.image_size:
            prev.set_image_size(model.image_size)  # interpolate the ViT's position grid
        model.load_state_dict(prev.state_dict())
        return
    if d.stage.vision_init == "siglip":
        stage, preset = recipe.upstream["vision"]
        siglip = load_or_train(stage, preset, progress=progress, device="cpu").model
        model.vit.load_state_dict(_vit_state(siglip))
    if d.stage.text_init == "ul2":
        stage, preset = recipe.upstream["text"]
        model.encdec.load_state_dict(load_or_train(stage, preset, progress=progress, device="cpu").model.state_dict())
    if d.stage.ordinal_loc_init:
        init_loc_embeddings(model, model.tokenizer, recipe.train.seed)


def stage_tokenizer(recipe: Recipe) -> Any:
    """The course tokenizer, or — when stage 1 starts from a public T5/UL2 checkpoint — that
    checkpoint's SentencePiece vocabulary with the course's ``<loc>``/``<seg>``/mode tokens added
    after it (:func:`pali3_edu.convert.t5_tokenizer.load_t5_tokenizer`). Later stages use the
    tokenizer of the stage they start from."""
    from pali3_edu.tokenizer import course_tokenizer

    seen = set()
    r = recipe
    while "previous" in r.upstream and r.stage not in seen:
        seen.add(r.stage)
        r = _get_recipe(*r.upstream["previous"])
    t5 = r.data.stage.text_pretrained
    if t5:
        from pali3_edu.convert.t5_tokenizer import load_t5_tokenizer

        return load_t5_tokenizer(t5)
    return course_tokenizer()


def pretrained_recipe(siglip: str, t5: str, preset: str = "tiny-cpu", *, max_prompt_len: int | None = None,
                      max_answer_len: int | None = None, **overrides: Any) -> Recipe:
    """A stage-1 recipe that starts from public checkpoints (a SigLIP and a T5 / Flan-T5 / UL2,
    each a local folder or a Hub name): the model's sizes are read from their configs, the
    tokenizer is T5's plus the course's tokens, and the course's stage-0 runs are not needed.
    T5's vocabulary splits the course's words differently: raise ``max_prompt_len`` /
    ``max_answer_len`` if the data check says a text is too long.

        recipe = pretrained_recipe("google/siglip-base-patch16-224", "google/flan-t5-base", "h100")
        run = load_or_train(recipe)
    """
    from pali3_edu.convert.pretrained import pali3_config_from_pretrained
    from pali3_edu.convert.t5_tokenizer import load_t5_tokenizer

    base = _get_recipe("pali3-stage1", preset)
    model = pali3_config_from_pretrained(siglip, t5, tokenizer=load_t5_tokenizer(t5),
                                         max_prompt_len=max_prompt_len or base.model.max_prompt_len,
                                         max_answer_len=max_answer_len or base.model.max_answer_len,
                                         visual_posemb=base.model.visual_posemb)
    stage = dataclasses.replace(base.data.stage, vision_pretrained=str(siglip), text_pretrained=str(t5))
    recipe = dataclasses.replace(base, model=model, upstream={},
                                 data=dataclasses.replace(base.data, stage=stage))
    return recipe.replace(**overrides) if overrides else recipe


def param_groups(model: PaLI3, recipe: Recipe) -> list[ParamGroup]:
    """Stage 1 and transfer: the ViT frozen (left out of the optimiser). Stage 2: everything
    trains, the ViT at ``vision_lr_scale`` times the learning rate."""
    s: StageSettings = recipe.data.stage
    model.vit.requires_grad_(not s.freeze_vision)
    groups = [ParamGroup([model.projector, model.encdec])]
    if not s.freeze_vision:
        groups.append(ParamGroup(model.vit, lr_scale=s.vision_lr_scale))
    return groups


# ---------------------------------------------------------------------------------------------
# Data and loss
# ---------------------------------------------------------------------------------------------


def quantize_box(box: list[float], levels: int) -> list[float]:
    """Snap each coordinate of a box to one of ``levels`` evenly spaced values in [0, 1]."""
    return [round(v * (levels - 1)) / (levels - 1) for v in box]


def quantize_records(records: list[dict], levels: int) -> list[dict]:
    """Records whose object boxes are quantised (:func:`quantize_box`); 1024 leaves them as they are."""
    if levels >= 1024:
        return records
    out = []
    for r in records:
        r = dict(r)
        r["objects"] = [dict(o, box=quantize_box(o["box"], levels)) for o in r["objects"]]
        out.append(r)
    return out


def build_data(recipe: Recipe, tokenizer: Any):
    """The stage's batches: ShapesWorld train scenes at the model's resolution, examples made on
    the fly from the task mixture (see :mod:`pali3_edu.data.multimodal`). A recipe whose data has
    a ``stream`` setting (the GPU presets, :mod:`pali3_edu.recipes.scale`) streams its batches
    instead of caching ``num_scenes`` scenes."""
    # --- streamed data hook: pali3_edu.recipes.scale.build_streamed_data builds these batches ---
    if getattr(recipe.data, "stream", None) is not None:
        from pali3_edu.recipes.scale import build_streamed_data

        return build_streamed_data(recipe, tokenizer)
    # --- end of the streamed data hook ---
    from pali3_edu.data.multimodal import MultimodalData
    from pali3_edu.data.shapesworld import load_shapesworld
    from pali3_edu.recipes.siglip import images_to_uint8

    m: MultimodalSettings = recipe.data.mix
    cfg: PaLI3Config = recipe.model
    size = cfg.vision.image_size
    ds = load_shapesworld("train", m.num_scenes, image_size=size, word_prob=m.word_prob)
    images = images_to_uint8(ds["image"], size)
    records = quantize_records(ds.remove_columns("image").to_list(), m.loc_levels)
    return MultimodalData(images, records, tokenizer, m.task_weights, m.batch_size,
                          cfg.max_prompt_len, cfg.max_answer_len, seed=recipe.train.seed)


def loss_fn(recipe: Recipe, *, count_tokens: bool = False):
    """``loss_fn(model, batch)``: the answer-token cross-entropy (the model's own loss, a mean over
    the answer tokens). ``count_tokens=True`` (what the training stages use) returns
    ``{"loss": ..., "tokens": number of answer tokens}`` instead, so that the training loop takes
    the mean over every answer token of a step, however they are split over processes and
    micro-batches (:mod:`pali3_edu.train`). Every answer ends with EOS: never zero tokens."""

    def fn(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor | dict[str, torch.Tensor]:
        out = model(batch["pixel_values"], batch["input_ids"], batch["attention_mask"], labels=batch["labels"])
        if count_tokens:
            return {"loss": out.loss, "tokens": (batch["labels"] != IGNORE_INDEX).sum()}
        return out.loss

    return fn


for _name in ("pali3-stage1", "pali3-stage2", "pali3-transfer"):
    register_stage(Stage(
        name=_name, presets=_presets(_name), build_model=build_model, build_data=build_data,
        loss_fn=lambda recipe: loss_fn(recipe, count_tokens=True), param_groups=param_groups, init=init,
        tokenizer=stage_tokenizer,
    ))

STAGES = ("pali3-stage1", "pali3-stage2", "pali3-transfer")


def get_recipe(stage: str = "pali3-stage1", preset: str = "tiny-cpu", **overrides: Any) -> Recipe:
    """A copy of a PaLI-3 stage's recipe with ``overrides``."""
    return _get_recipe(stage, preset, **overrides)


def load_or_train_pali3(stage: str = "stage1", preset: str = "tiny-cpu", **kwargs: Any) -> TrainedRun:
    """A trained PaLI-3 stage from the cache under ``data/runs/``, trained when missing or stale:
    ``stage`` is ``"stage1"``, ``"stage2"`` or ``"transfer"``. ``run.model.predict(images,
    prompts)`` answers; ``run.tokenizer``, ``run.history``, ``run.loaded`` as for every stage."""
    name = stage if stage.startswith("pali3-") else f"pali3-{stage}"
    if name not in STAGES:
        raise ValueError(f"Unknown PaLI-3 stage {stage!r}: use 'stage1', 'stage2' or 'transfer'.")
    run = load_or_train(name, preset, **kwargs)
    run.model.tokenizer = run.tokenizer
    return run


__all__ = [
    "DEFAULT_TASK_WEIGHTS", "IGNORE_INDEX", "MultimodalSettings", "PaLI3Data", "STAGES", "StageSettings",
    "build_data", "build_model", "get_recipe", "init", "init_loc_embeddings", "load_or_train_pali3",
    "ordinal_codes", "param_groups", "pretrained_recipe", "quantize_box", "quantize_records", "stage_tokenizer",
]
