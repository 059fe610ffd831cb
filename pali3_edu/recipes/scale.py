"""Presets for the GPU-scale run and for smoke tests, registered into every stage on import.

Each stage (``siglip``, ``ul2``, ``pali3-stage1``, ``pali3-stage2``, ``pali3-transfer``) gets the
same five presets, so ``python -m pali3_edu.train --recipe all --preset h100`` chains the whole
course at one size:

==============  =====================================================================================
preset          what it is for
==============  =====================================================================================
``smoke``       every stage on a CPU in seconds (the ``micro`` sizes, a handful of steps, a loss row
                per step). The tests and ``--recipe all --preset smoke`` use it to check that the
                chain runs end to end; it learns nothing.
``colab-t4``    one 16 GB T4 (Colab's free GPU): the real size below in **fp16** with loss scaling
                (a T4 has no bf16), small micro-batches with gradient accumulation, fewer steps,
                checkpoints every 100 steps so a disconnected session resumes.
``l4-a100``     one 24 GB L4, or an A100 (40/80 GB), in **bf16**: batch sizes sized for the L4's
                24 GB; an A100 runs the same recipe (and so the same trained model) faster.
``h100``        one 80 GB H100 in **bf16**: the largest batches and the most steps.
``8xh100``      one node of eight 80 GB H100s in **bf16**, sharded with FSDP2
                (``train.parallel="fsdp"``), at the **large** size below. Start it with
                ``torchrun --nproc_per_node 8 -m pali3_edu.train --recipe all --preset 8xh100``.
==============  =====================================================================================

The **base** size (the three single-GPU presets): a SigLIP **ViT-B/16 at 224 px**
(``get_config("vit", "B/16")``, 196 patch tokens) with a B-sized text tower for the contrastive
stage, and a **T5-v1.1-base**-sized encoder-decoder (``get_config("encdec", "t5-v1_1-base")``,
12+12 layers, ``d_model`` 768) for UL2; PaLI-3 joins the two (about 86 M + 200 M parameters with
the course's 1792-token vocabulary). The data is ShapesWorld rendered at 224 px (stage 2 and
transfer: 448 px, 784 patch tokens, which is why the encoder's ``max_input_length`` is raised to
1024).

The **large** size (``8xh100``): a SigLIP **ViT-L/16** (``get_config("vit", "L/16")``, 24 layers,
width 1024) with an L-sized text tower (24 layers, width 1024), and a **T5-v1.1-large**-sized
encoder-decoder (``get_config("encdec", "t5-v1_1-large")``, 24+24 layers, ``d_model`` 1024);
PaLI-3 joins them (about 300 M + 720 M parameters, 1.03 B in all), at the same resolutions.
:data:`MODEL_SIZES` holds both sizes and :attr:`Tier.size` picks one.

**Batch sizes are global.** ``data.batch_size`` (``data.mix.batch_size``) is the batch of the
whole step on every device together: under ``torchrun`` each process trains its contiguous share
of the rows (:mod:`pali3_edu.train`), so the batches of ``8xh100`` are 8 times a GPU's share and
must divide by 8 (:class:`Tier` checks it against ``Tier.gpus``). Per stage, global micro-batch
(x accumulation), and what one GPU trains of it:

==================  ===============  ===============  ====================================
stage               ``h100``         ``8xh100``       ``8xh100`` per GPU (micro-batch)
==================  ===============  ===============  ====================================
``siglip``          512              1024             128
``ul2``             256              512              64
``pali3-stage1``    128              256              32
``pali3-stage2``    32 (x 2)         64 (x 2)         8
``pali3-transfer``  64               128              16
==================  ===============  ===============  ====================================

The ``8xh100`` sizes are **starting points, not measured fits**: they were sized on paper (the
large model's activations are about 2.7 times the base model's per example, its weights,
gradients and AdamW state about 16 GB in fp32, a 1/8 shard of it on each GPU), never run on eight
H100s. The learning rates and step counts are the ``h100`` ones (twice the examples per step);
if the loss spikes, lower ``train.lr`` first.

**Streamed data.** The PaLI-3 stages of the GPU presets do not build a data set: their
``recipe.data`` is a :class:`StreamedPaLI3Data` (the ``mix`` and ``stage`` settings of every
PaLI-3 recipe plus ``stream``), and ``build_data`` hands it to :func:`build_streamed_data`, which
generates each batch from a million training scenes in DataLoader workers while the GPU trains
(:mod:`pali3_edu.data.streaming`; ``$PALI3_EDU_DATA_WORKERS`` sets the number of workers, which
never changes a batch). The transfer stage can run on a real data set instead:
``data.stream.source`` is ``"shapesworld"`` (the default, no download) or a key of
:data:`pali3_edu.data.hub.HUB_DATASETS` (``"refcoco"``, ``"vqav2"``, ``"textvqa"``,
``"coco_captions"``), streamed from the Hugging Face hub or read from a local copy
(``data.stream.hub_path``)::

    python -m pali3_edu.train --recipe pali3-transfer --preset h100 \
        --set pali3-transfer:data.stream.source=refcoco

or :func:`hub_transfer_recipe`. The ``smoke`` presets keep the lessons' cached data (a few dozen
scenes, built in a second).

Only the batch size, gradient accumulation, precision and step counts differ between the
single-GPU presets. They are **starting points, not measured fits**: the memory figures behind them are
estimates (about 0.1 GB of activations per example at 224 px in bf16, 0.7 GB at 448 px with
the whole model training). If a stage runs out of memory, halve ``data.batch_size`` and double
``train.grad_accum`` (``--set``), or add ``--checkpointing`` (:mod:`pali3_edu.speed`).
SigLIP is the exception: its loss compares the images and texts *of one micro-batch*, so
gradient accumulation does not give it a larger contrastive batch.

fp16 and T5: T5-style models are known to overflow fp16 (activations above 65504 in the
feed-forward). The residual stream stays fp32 here (weights are fp32 under autocast), and the
loss scaler skips steps whose gradients overflow, so training from scratch usually works; if
the loss turns inf, train that stage in fp32 (``--set train.amp_dtype=null``, about 4x slower on
a T4) or on a bf16 GPU.

SigLIP's contrastive stage still reads a cached data set (``Tier.scenes_224`` scenes at 224 px,
built once under ``data/shapesworld/`` and shared by every run that asks for the same one); UL2
reads only text.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

from pali3_edu.config import SigLIPConfig, TextConfig, get_config
from pali3_edu.pali3 import PaLI3Config
from pali3_edu.recipes import base
from pali3_edu.recipes.base import Recipe
from pali3_edu.train import TrainConfig

#: The stages in training order; each starts from the ones before it (``recipe.upstream``).
STAGE_ORDER = ("siglip", "ul2", "pali3-stage1", "pali3-stage2", "pali3-transfer")
SCALE_PRESETS = ("smoke", "colab-t4", "l4-a100", "h100", "8xh100")

# ---------------------------------------------------------------------------------------------
# smoke: the micro recipes, a few steps, one history row per step
# ---------------------------------------------------------------------------------------------

_SMOKE_STEPS = {"siglip": 6, "ul2": 8, "pali3-stage1": 4, "pali3-stage2": 2, "pali3-transfer": 2}


def _smoke(stage: str) -> Recipe:
    micro = base._STAGES[stage].presets["micro"]
    upstream = {role: (s, "smoke") for role, (s, _) in micro.upstream.items()}
    train = dataclasses.replace(micro.train, steps=_SMOKE_STEPS[stage],
                                warmup_steps=min(micro.train.warmup_steps, max(1, _SMOKE_STEPS[stage] // 2)),
                                log_every=1,
                                checkpoint_every=None)
    return dataclasses.replace(micro, preset="smoke", train=train, upstream=upstream)


# ---------------------------------------------------------------------------------------------
# The real size, shared by the GPU presets
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ModelSize:
    """One size of the GPU-scale model: the towers SigLIP and UL2 train and PaLI-3 joins.

    vit: a ViT variant of :func:`pali3_edu.config.vit_variant` (``"B/16"``), SigLIP's image tower.
    text_tower: SigLIP's text tower as ``(width, depth, mlp_dim, heads)``; its width is also the
        shared embedding's.
    encdec: a T5 v1.1 shape of :func:`pali3_edu.config.get_config` (``"t5-v1_1-base"``), UL2's
        encoder-decoder and PaLI-3's.
    """

    vit: str
    text_tower: tuple[int, int, int, int]
    encdec: str


#: The model sizes of the GPU presets (:attr:`Tier.size`).
MODEL_SIZES: dict[str, ModelSize] = {
    "base": ModelSize(vit="B/16", text_tower=(768, 12, 3072, 12), encdec="t5-v1_1-base"),
    "large": ModelSize(vit="L/16", text_tower=(1024, 24, 4096, 16), encdec="t5-v1_1-large"),
}


def _model_size(size: str) -> ModelSize:
    if size not in MODEL_SIZES:
        raise ValueError(f"Unknown model size {size!r}; sizes: {', '.join(MODEL_SIZES)}.")
    return MODEL_SIZES[size]


def siglip_config(size: str = "base") -> SigLIPConfig:
    """SigLIP of a :data:`MODEL_SIZES` size at 224 px: the ViT image tower and the text tower with
    the course vocabulary; captions up to 32 tokens."""
    s = _model_size(size)
    width, depth, mlp_dim, heads = s.text_tower
    return SigLIPConfig(
        vision=get_config("vit", s.vit),
        text=TextConfig(vocab_size=1792, max_len=32, width=width, depth=depth, mlp_dim=mlp_dim, heads=heads),
        embed_dim=width,
    )


def t5_config(size: str = "base") -> Any:
    """The T5 v1.1 shape of a :data:`MODEL_SIZES` size (vocabulary replaced by the tokenizer's when
    the model is built); inputs up to 1024 tokens so that 784 visual tokens (448 px) + the prompt
    fit."""
    return get_config("encdec", _model_size(size).encdec, max_input_length=1024)


def pali3_config(size: str = "base", image_size: int = 224) -> PaLI3Config:
    """PaLI-3 of the two towers of a size: the SigLIP image tower without its pooling head, the UL2
    encoder-decoder, and the course's sine-cosine code on the visual tokens."""
    vision = dataclasses.replace(siglip_config(size).vision, pool="none", image_size=image_size)
    return PaLI3Config(vision=vision, text=t5_config(size), max_prompt_len=24, max_answer_len=40,
                       visual_posemb="sincos2d")


def siglip_b16() -> SigLIPConfig:
    """SigLIP B/16 at 224 px: the ViT-B/16 image tower and a B-sized text tower (12 layers, width
    768) with the course vocabulary; captions up to 32 tokens."""
    return siglip_config("base")


def t5_base() -> Any:
    """The T5-v1.1-base shape (vocabulary replaced by the tokenizer's when the model is built);
    inputs up to 1024 tokens so that 784 visual tokens (448 px) + the prompt fit."""
    return t5_config("base")


def pali3_base(image_size: int = 224) -> PaLI3Config:
    """PaLI-3 of the two base towers above (:func:`pali3_config` at the ``"base"`` size)."""
    return pali3_config("base", image_size)


@dataclasses.dataclass(frozen=True)
class Tier:
    """What differs between the GPU presets: precision, micro-batch sizes, accumulation, steps, and
    for several GPUs the model size, the number of GPUs and how they share the work.

    Batch sizes are global (the whole step on every GPU together) and must divide by ``gpus``;
    ``parallel`` is :attr:`pali3_edu.train.TrainConfig.parallel` (``"ddp"`` or ``"fsdp"`` when
    ``gpus > 1``). The defaults of ``size``, ``gpus`` and ``parallel`` are the single-GPU presets'.
    """

    amp: str
    siglip_batch: int
    ul2_batch: int
    stage1_batch: tuple[int, int]  # (micro-batch, accumulation)
    stage2_batch: tuple[int, int]
    transfer_batch: tuple[int, int]
    steps: dict[str, int]
    checkpoint_every: int
    scenes_224: int = 20_000  # SigLIP's cached data set
    stream_scenes: int = 1_000_000  # the PaLI-3 stages draw their streamed scenes from this many
    size: str = "base"  # a key of MODEL_SIZES
    gpus: int = 1  # torchrun --nproc_per_node
    parallel: str = "none"  # TrainConfig.parallel

    def __post_init__(self) -> None:
        _model_size(self.size)
        if self.gpus < 1:
            raise ValueError(f"Tier.gpus must be at least 1, got {self.gpus}.")
        if (self.gpus > 1) != (self.parallel != "none"):
            raise ValueError(f"Tier with gpus={self.gpus} and parallel={self.parallel!r}: several GPUs need "
                             "parallel='ddp' or 'fsdp', one GPU parallel='none'.")
        micro = {"siglip_batch": self.siglip_batch, "ul2_batch": self.ul2_batch,
                 "stage1_batch": self.stage1_batch[0], "stage2_batch": self.stage2_batch[0],
                 "transfer_batch": self.transfer_batch[0]}
        for name, batch in micro.items():
            if batch % self.gpus:
                raise ValueError(f"Tier.{name}: the global micro-batch {batch} does not divide by gpus={self.gpus}; "
                                 "every GPU trains an equal share of it. Use a multiple of the number of GPUs.")


TIERS: dict[str, Tier] = {
    # T4, 16 GB, fp16 (65 TFLOP/s peak): everything smaller and shorter; resumable every 100 steps
    "colab-t4": Tier("fp16", siglip_batch=64, ul2_batch=64, stage1_batch=(32, 2), stage2_batch=(4, 8),
                     transfer_batch=(8, 4),
                     steps={"siglip": 1500, "ul2": 2000, "pali3-stage1": 1500, "pali3-stage2": 300,
                            "pali3-transfer": 300},
                     checkpoint_every=100, scenes_224=10_000),
    # L4, 24 GB (or A100), bf16
    "l4-a100": Tier("bf16", siglip_batch=128, ul2_batch=128, stage1_batch=(64, 1), stage2_batch=(8, 4),
                    transfer_batch=(16, 2),
                    steps={"siglip": 3000, "ul2": 3000, "pali3-stage1": 2000, "pali3-stage2": 500,
                           "pali3-transfer": 500},
                    checkpoint_every=250),
    # H100, 80 GB, bf16
    "h100": Tier("bf16", siglip_batch=512, ul2_batch=256, stage1_batch=(128, 1), stage2_batch=(32, 2),
                 transfer_batch=(64, 1),
                 steps={"siglip": 3000, "ul2": 4000, "pali3-stage1": 3000, "pali3-stage2": 600,
                        "pali3-transfer": 600},
                 checkpoint_every=250),
    # one node of 8 H100s, 80 GB each, bf16, FSDP2, the large model: global batches, 1/8 per GPU
    # (sized on paper, not measured: see the module docstring)
    "8xh100": Tier("bf16", siglip_batch=1024, ul2_batch=512, stage1_batch=(256, 1), stage2_batch=(64, 2),
                   transfer_batch=(128, 1),
                   steps={"siglip": 3000, "ul2": 4000, "pali3-stage1": 3000, "pali3-stage2": 600,
                          "pali3-transfer": 600},
                   checkpoint_every=250, size="large", gpus=8, parallel="fsdp"),
}


# ---------------------------------------------------------------------------------------------
# Streamed data for the PaLI-3 stages
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass
class StreamSettings:
    """Where a streamed PaLI-3 stage gets its batches (``recipe.data.stream``).

    source: ``"shapesworld"`` (training scenes generated on the fly, from ``mix.num_scenes``
        seeds, with ``mix.task_weights`` and ``mix.word_prob``) or a key of
        :data:`pali3_edu.data.hub.HUB_DATASETS` (one task, ``hub_task``; ``mix.num_scenes``,
        ``task_weights`` and ``word_prob`` do not apply). Either way ``mix.batch_size`` is the
        batch and ``mix.loc_levels`` quantises the boxes.
    hub_split: the hub split to train on (``None``: ``HUB_TRAIN_SPLITS[source]``).
    hub_path: a local folder with the data set's parquet files in the hub's layout, read instead
        of downloading (``None``: stream from the hub, which needs internet).
    hub_task: the task (``None``: ``HUB_TASKS[source]``: caption, vqa, vqa, refer).
    shuffle_buffer: hub rows are shuffled through a buffer of this many.
    """

    source: str = "shapesworld"
    hub_split: str | None = None
    hub_path: str | None = None
    hub_task: str | None = None
    shuffle_buffer: int = 10_000


@dataclasses.dataclass
class StreamedPaLI3Data:
    """The data of a streamed PaLI-3 stage: the ``mix`` (``MultimodalSettings``) and ``stage``
    (``StageSettings``) of :class:`pali3_edu.recipes.pali3.PaLI3Data`, plus ``stream``
    (:class:`StreamSettings`). ``build_data`` streams every recipe whose data has ``stream``."""

    mix: Any
    stage: Any
    stream: StreamSettings = dataclasses.field(default_factory=StreamSettings)


def build_streamed_data(recipe: Recipe, tokenizer: Any, *, num_workers: int | None = None) -> Any:
    """The batches of a streamed PaLI-3 recipe: a :class:`~pali3_edu.data.streaming.StreamLoader`
    over ShapesWorld train scenes (:class:`~pali3_edu.data.streaming.ShapesWorldStream`) or over a
    hub data set (:class:`~pali3_edu.data.hub.HubStream`), at the model's resolution, boxes
    quantised to ``mix.loc_levels``. ``get_batch(step)`` gives ``pixel_values`` ``(B, 3, H, W)``,
    ``input_ids``/``attention_mask`` ``(B, S)``, ``labels`` ``(B, T)`` and ``task`` ``(B,)``.
    ``num_workers=None``: :func:`~pali3_edu.data.streaming.default_num_workers`."""
    from pali3_edu.data.hub import HUB_DATASETS, HUB_TASKS, HUB_TRAIN_SPLITS, HubStream, load_hub
    from pali3_edu.data.streaming import ShapesWorldStream, StreamLoader
    from pali3_edu.recipes.pali3 import quantize_records

    m, st, cfg = recipe.data.mix, recipe.data.stream, recipe.model
    record_fn = functools.partial(quantize_records, levels=m.loc_levels)
    size = cfg.vision.image_size
    if st.source == "shapesworld":
        stream = ShapesWorldStream(tokenizer, m.task_weights, m.batch_size, cfg.max_prompt_len, cfg.max_answer_len,
                                   size, recipe.train.seed, num_scenes=m.num_scenes, word_prob=m.word_prob,
                                   record_fn=record_fn)
    elif st.source in HUB_DATASETS:
        records = load_hub(st.source, st.hub_split or HUB_TRAIN_SPLITS[st.source], streaming=True,
                           path=st.hub_path)
        stream = HubStream(records, tokenizer, st.hub_task or HUB_TASKS[st.source], m.batch_size,
                           cfg.max_prompt_len, cfg.max_answer_len, size, recipe.train.seed,
                           shuffle_buffer=st.shuffle_buffer, record_fn=record_fn)
    else:
        raise ValueError(f"data.stream.source={st.source!r}: use 'shapesworld' or one of the hub data sets "
                         f"{', '.join(HUB_DATASETS)}.")
    return StreamLoader(stream, num_workers)


def hub_transfer_recipe(preset: str, source: str, *, split: str | None = None, path: str | None = None,
                        task: str | None = None, **overrides: Any) -> Recipe:
    """The ``pali3-transfer`` recipe of a GPU preset, trained on a hub data set (``source``, a key
    of :data:`~pali3_edu.data.hub.HUB_DATASETS`) instead of ShapesWorld; ``path`` reads a local
    copy in the hub's layout. ``overrides`` as for ``get_recipe``.

        recipe = hub_transfer_recipe("h100", "refcoco")      # RefCOCO's val split, streamed
        run = load_or_train(recipe)
    """
    from pali3_edu.data.hub import HUB_DATASETS

    if source not in HUB_DATASETS:
        raise ValueError(f"Unknown hub data set {source!r}; choose one of {', '.join(HUB_DATASETS)}.")
    recipe = base.get_recipe("pali3-transfer", preset)
    if not isinstance(recipe.data, StreamedPaLI3Data):
        raise ValueError(f"The {preset!r} transfer recipe does not stream its data; use a GPU preset "
                         f"({', '.join(TIERS)}).")
    stream = StreamSettings(source=source, hub_split=split, hub_path=None if path is None else str(path),
                            hub_task=task, shuffle_buffer=recipe.data.stream.shuffle_buffer)
    recipe = dataclasses.replace(recipe, data=dataclasses.replace(recipe.data, stream=stream))
    return recipe.replace(**overrides) if overrides else recipe


def _train(tier: Tier, stage: str, **kwargs: Any) -> TrainConfig:
    return TrainConfig(steps=tier.steps[stage], amp_dtype=tier.amp, log_every=10,
                       checkpoint_every=tier.checkpoint_every, parallel=tier.parallel, **kwargs)


def _gpu(preset: str, stage: str) -> Recipe:
    # the stages' settings classes, imported here: this module may be imported while a stage
    # module is still being imported (base._load_stage_modules)
    from pali3_edu.recipes.pali3 import MultimodalSettings, StageSettings
    from pali3_edu.recipes.siglip import SigLIPData
    from pali3_edu.recipes.ul2 import UL2DataSettings

    tier = TIERS[preset]
    up = lambda **roles: {role: (s, preset) for role, s in roles.items()}  # noqa: E731
    if stage == "siglip":
        return Recipe(stage, preset, siglip_config(tier.size),
                      SigLIPData(num_scenes=tier.scenes_224, batch_size=tier.siglip_batch),
                      _train(tier, stage, lr=5e-4, warmup_steps=300, weight_decay=1e-4))
    if stage == "ul2":
        return Recipe(stage, preset, t5_config(tier.size),
                      UL2DataSettings(train_scenes=20_000, val_scenes=500, chunk_len=128,
                                      batch_size=tier.ul2_batch),
                      _train(tier, stage, lr=1e-3, warmup_steps=300, weight_decay=0.01))
    # PaLI-3: boxes at 64 levels per coordinate (3.5 px at 224 px; raise data.mix.loc_levels for finer)
    if stage == "pali3-stage1":
        batch, accum = tier.stage1_batch
        mix = MultimodalSettings(num_scenes=tier.stream_scenes, batch_size=batch, loc_levels=64)
        return Recipe(stage, preset, pali3_config(tier.size, 224), StreamedPaLI3Data(mix, StageSettings()),
                      _train(tier, stage, lr=1e-3, warmup_steps=200, weight_decay=0.01, grad_accum=accum),
                      up(vision="siglip", text="ul2"))
    if stage == "pali3-stage2":
        batch, accum = tier.stage2_batch
        mix = MultimodalSettings(num_scenes=tier.stream_scenes, batch_size=batch, loc_levels=64)
        settings = StageSettings(freeze_vision=False, vision_lr_scale=0.3, ordinal_loc_init=False,
                                 image_size=448)
        return Recipe(stage, preset, pali3_config(tier.size, 448), StreamedPaLI3Data(mix, settings),
                      _train(tier, stage, lr=2e-4, warmup_steps=50, weight_decay=0.01, grad_accum=accum),
                      up(previous="pali3-stage1"))
    if stage == "pali3-transfer":
        batch, accum = tier.transfer_batch
        mix = MultimodalSettings(num_scenes=tier.stream_scenes, batch_size=batch, loc_levels=64,
                                 task_weights={"refer": 1.0})
        settings = StageSettings(freeze_vision=True, ordinal_loc_init=False)
        return Recipe(stage, preset, pali3_config(tier.size, 448), StreamedPaLI3Data(mix, settings),
                      _train(tier, stage, lr=2e-4, warmup_steps=50, weight_decay=0.01, grad_accum=accum),
                      up(previous="pali3-stage2"))
    raise ValueError(f"Unknown stage {stage!r}; stages: {', '.join(STAGE_ORDER)}")


def scale_recipe(stage: str, preset: str) -> Recipe:
    """The recipe of one of :data:`SCALE_PRESETS` for ``stage`` (also reachable through
    ``get_recipe(stage, preset)`` once this module is imported)."""
    if preset == "smoke":
        return _smoke(stage)
    if preset not in TIERS:
        raise ValueError(f"Unknown scale preset {preset!r}; presets: {', '.join(SCALE_PRESETS)}")
    return _gpu(preset, stage)


_REGISTERING = False


def register() -> None:
    """Add the presets to every registered stage. Idempotent, and stages that are not registered
    yet are skipped, so ``base._load_stage_modules`` may call it each time (after importing the
    stage modules); importing this module calls it once."""
    global _REGISTERING
    if _REGISTERING:  # building a recipe looks stages up, which may call register() again
        return
    _REGISTERING = True
    try:
        for stage in STAGE_ORDER:
            spec = base._STAGES.get(stage)
            if spec is None:
                continue
            for preset in SCALE_PRESETS:
                if preset not in spec.presets:
                    spec.presets[preset] = scale_recipe(stage, preset)
    finally:
        _REGISTERING = False


base._load_stage_modules()  # the stages first (when base does not import this module itself)
register()

__all__ = ["MODEL_SIZES", "SCALE_PRESETS", "STAGE_ORDER", "TIERS", "ModelSize", "StreamSettings",
           "StreamedPaLI3Data", "Tier", "build_streamed_data", "hub_transfer_recipe", "pali3_base", "pali3_config",
           "register", "scale_recipe", "siglip_b16", "siglip_config", "t5_base", "t5_config"]
