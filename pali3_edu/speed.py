"""Speed paths for GPU training, each one a switch that leaves the result (the loss) unchanged.

=======================  =======================================================================
setting                  what it does, and what it costs
=======================  =======================================================================
``compile``              ``torch.compile`` fuses the element-wise work around the matmuls into
                         fewer kernels. ``"blocks"`` compiles each transformer block on its own
                         (*regional* compilation: the blocks of a stack share one compiled graph,
                         so compiling takes seconds, not minutes); ``"model"`` compiles the whole
                         forward pass (more fusion, longer compile, graph breaks at the input
                         checks). Both compile *in place* (``module.compile()``), so parameter
                         names and checkpoints stay the same.
``checkpointing``        activation checkpointing: each transformer block keeps only its input for
                         the backward pass and recomputes the rest (``torch.utils.checkpoint``),
                         about a third more compute for a large cut in activation memory (a larger
                         batch, or 448 px on a 16 GB GPU).
``bucket``               pads prompt and answer lengths up to a multiple of ``bucket`` (e.g. 16).
                         Batches are padded to their longest example, so every batch has other
                         lengths and a compiled model would recompile for each; with buckets only a
                         few shapes occur. Padding is masked (``attention_mask`` 0) and never scored
                         (labels ``-100``), so the loss is the same.
``fused_adamw``          AdamW's update of all parameters in one fused kernel
                         (``torch.optim.AdamW(fused=True)``); chosen on CUDA by :func:`pick_fused_adamw`,
                         passed on by :func:`adamw_kwargs`. The training loop chooses the same way:
                         ``make_optimizer(..., fused=None)`` (``train(..., fused_adamw=None)``)
                         takes the fused kernel on CUDA, ``False`` turns it off; the benchmark too.
                         So every stage, and ``python -m pali3_edu.train``, gets it on a GPU
                         without a setting (``SpeedSettings.fused_adamw`` is not passed on).
``amp``                  :func:`pick_amp_dtype` picks the mixed-precision type a device supports:
                         bf16 on Ampere and newer (and CPUs), fp16 with loss scaling on older GPUs
                         such as the T4.
``attention``            ``"sdpa"`` (default) or ``"flex"`` for the T5 self-attention
                         (:func:`pali3_edu.encdec.set_attention`). SDPA gets T5's relative
                         position bias, padding and causal masks as one dense float mask
                         ``(batch, heads, queries, keys)``, which rules out the flash kernel and
                         costs memory; ``"flex"`` uses FlexAttention: the bias is a ``score_mod``
                         that looks it up by distance, padding and causality a ``block_mask``
                         whose empty blocks are skipped, in one kernel that ``torch.compile``
                         generates. Cross-attention (no bias; only a padding mask) and the ViT
                         (no mask at all: SDPA picks flash) use SDPA on both settings. GPU only
                         for training: on a CPU FlexAttention has no backward pass (it runs there
                         for inference, unfused). The first steps compile the kernel; with
                         ``bucket`` the lengths, hence the compiled shapes, repeat.
=======================  =======================================================================

Each path is tested on CPU against the plain one (same loss to a tolerance): compile with the
``"eager"``/``"aot_eager"`` backends (the real speed-up needs a GPU and ``"inductor"``),
checkpointing, bucketing, fused AdamW (PyTorch also has a CPU kernel), the dtype chooser; the
two attention paths give the same outputs and gradients (``tests/test_attention_paths.py``).

Where they plug in: :class:`SpeedSettings` changes a model after it is built
(:meth:`SpeedSettings.prepare_model`) and the batches of a data source
(:meth:`SpeedSettings.wrap_data`); :func:`use_speed_settings` applies both to the registered
training stages for the duration of a ``with`` block, which is how ``python -m pali3_edu.train
--compile --checkpointing --bucket 16 --attention flex`` uses them. None of them changes a
recipe's fingerprint: the trained model is the same recipe's, only reached faster.

>>> from pali3_edu.speed import bucket_length, pick_amp_dtype
>>> [bucket_length(n, 16, cap=24) for n in (3, 16, 17, 24)]
[16, 16, 24, 24]
>>> pick_amp_dtype("cuda", capability=(7, 5)), pick_amp_dtype("cuda", capability=(9, 0))
('fp16', 'bf16')
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from pali3_edu.tokens import IGNORE_INDEX, PAD_ID

CompileMode = Literal["blocks", "model"]
AttentionPath = Literal["sdpa", "flex"]

# ---------------------------------------------------------------------------------------------
# Mixed precision and the optimizer
# ---------------------------------------------------------------------------------------------


def pick_amp_dtype(device: torch.device | str, capability: tuple[int, int] | None = None) -> str | None:
    """The mixed-precision type for ``device``: ``"bf16"``, ``"fp16"`` or ``None`` (fp32).

    - CUDA with compute capability 8.0 or more (A100, L4, H100, RTX 30xx/40xx): ``"bf16"`` (no
      loss scaling needed: bf16 has fp32's exponent range);
    - older CUDA GPUs (T4 is 7.5, V100 7.0): ``"fp16"``, which needs loss scaling (the training
      loop's ``GradScaler`` does it);
    - CPU: ``"bf16"`` (autocast supports it; it pays off on CPUs with bf16 instructions);
    - anything else (e.g. ``mps``): ``None``.

    ``capability`` overrides what ``torch.cuda.get_device_capability`` reports (for tests).
    """
    device = torch.device(device)
    if device.type == "cuda":
        if capability is None:
            capability = torch.cuda.get_device_capability(device)
        return "bf16" if tuple(capability) >= (8, 0) else "fp16"
    if device.type == "cpu":
        return "bf16"
    return None


def pick_fused_adamw(device: torch.device | str) -> bool:
    """Whether to ask for the fused AdamW kernel: on CUDA yes (one kernel for every parameter
    instead of a few per tensor); elsewhere PyTorch's default (the ``foreach`` implementation)."""
    return torch.device(device).type == "cuda"


def adamw_kwargs(device: torch.device | str, fused: bool | None = None) -> dict[str, Any]:
    """Extra keyword arguments for ``torch.optim.AdamW`` on ``device``: ``{"fused": True}`` when
    fused is chosen (``fused=None``: :func:`pick_fused_adamw`), else ``{}``."""
    use = pick_fused_adamw(device) if fused is None else fused
    return {"fused": True} if use else {}


# ---------------------------------------------------------------------------------------------
# Transformer blocks: checkpointing and regional compilation
# ---------------------------------------------------------------------------------------------


def transformer_blocks(model: nn.Module) -> list[nn.Module]:
    """The transformer blocks of ``model``: the members of its ``nn.ModuleList`` s (the course
    keeps every stack's blocks in one: the ViT's ``encoder.blocks``, the encoder-decoder's
    ``encoder.layers`` and ``decoder.layers``), outermost lists only."""
    blocks: list[nn.Module] = []
    inside: set[int] = set()
    for module in model.modules():
        if id(module) in inside:
            continue
        if isinstance(module, nn.ModuleList):
            for block in module:
                blocks.append(block)
                inside.update(id(m) for m in block.modules())
    return blocks


def _needs_grad(block: nn.Module, args: tuple, kwargs: dict) -> bool:
    """Whether the backward pass goes through ``block`` (a frozen block whose input needs no
    gradient, like stage 1's ViT, stores no activations: nothing to checkpoint)."""
    tensors = [a for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor)]
    return any(t.requires_grad for t in tensors) or any(p.requires_grad for p in block.parameters())


def _checkpointed(block: nn.Module, forward: Any) -> Any:
    @functools.wraps(forward)
    def run(*args: Any, **kwargs: Any) -> Any:
        if block.training and torch.is_grad_enabled() and _needs_grad(block, args, kwargs):
            # non-reentrant: works with keyword arguments, DDP and torch.compile; the random state
            # is saved and restored, so dropout masks are the same when the block is recomputed
            return torch.utils.checkpoint.checkpoint(forward, *args, use_reentrant=False, **kwargs)
        return forward(*args, **kwargs)

    run.__pali3_checkpointed__ = True  # type: ignore[attr-defined]
    return run


def enable_checkpointing(model: nn.Module) -> int:
    """Recompute each transformer block's activations in the backward pass instead of storing
    them; returns the number of blocks. Only in training mode with gradients on (generation and
    evaluation run the plain blocks). The forward method is replaced on each block *instance*,
    so parameter names (and checkpoints) do not change. Calling it twice changes nothing."""
    blocks = transformer_blocks(model)
    if not blocks:
        raise ValueError(
            f"{type(model).__name__} has no transformer blocks (no nn.ModuleList): activation "
            "checkpointing has nothing to wrap.")
    for block in blocks:
        if not getattr(block.forward, "__pali3_checkpointed__", False):
            block.forward = _checkpointed(block, block.forward)
    return len(blocks)


def disable_checkpointing(model: nn.Module) -> None:
    """Undo :func:`enable_checkpointing`."""
    for block in transformer_blocks(model):
        if getattr(block.forward, "__pali3_checkpointed__", False):
            del block.forward  # the instance attribute; the class's forward shows through again


def compile_available() -> tuple[bool, str]:
    """``(True, "")`` if ``torch.compile`` works on this platform, else ``(False, why)``."""
    try:
        import torch._dynamo as dynamo
    except ImportError as err:  # pragma: no cover - very old or stripped builds
        return False, f"torch._dynamo cannot be imported ({err})"
    if not dynamo.is_dynamo_supported():
        return False, "torch.compile is not supported on this platform / Python version"
    return True, ""


def compile_model(model: nn.Module, mode: CompileMode = "blocks", backend: str = "inductor",
                  compile_mode: str | None = None) -> nn.Module:
    """Compile ``model`` in place and return it.

    ``mode="blocks"``: each transformer block (regional compilation); ``"model"``: the whole
    forward pass. ``backend``: ``"inductor"`` (the fast one: Triton kernels on a GPU, C++ on a
    CPU), ``"aot_eager"``/``"eager"`` (no code generation; for tests and debugging).
    ``compile_mode``: inductor's ``"default"``, ``"reduce-overhead"`` (CUDA graphs) or
    ``"max-autotune"``. Compilation itself happens at the first call.
    """
    ok, why = compile_available()
    if not ok:
        raise RuntimeError(f"torch.compile is unavailable: {why}. Run without --compile.")
    if mode not in ("blocks", "model"):
        raise ValueError(f"compile mode must be 'blocks' or 'model', got {mode!r}.")
    kwargs: dict[str, Any] = {"backend": backend}
    if compile_mode is not None:
        kwargs["mode"] = compile_mode
    if mode == "model":
        model.compile(**kwargs)
        return model
    blocks = transformer_blocks(model)
    if not blocks:
        raise ValueError(f"{type(model).__name__} has no transformer blocks: use mode='model'.")
    for block in blocks:
        block.compile(**kwargs)
    return model


# ---------------------------------------------------------------------------------------------
# Length bucketing
# ---------------------------------------------------------------------------------------------


def bucket_length(n: int, multiple: int, cap: int | None = None) -> int:
    """``n`` rounded up to a multiple of ``multiple``, but not above ``cap`` (the longest length
    the model accepts), and never below ``n`` (nothing is cut)."""
    if multiple < 1:
        raise ValueError(f"The bucket size must be a positive integer, got {multiple}.")
    target = -(-n // multiple) * multiple
    if cap is not None:
        target = min(target, cap)
    return max(n, target)


def _pad_to(x: torch.Tensor, length: int, value: int) -> torch.Tensor:
    return x if x.shape[1] >= length else F.pad(x, (0, length - x.shape[1]), value=value)


def bucket_batch(batch: Mapping[str, Any], multiple: int = 16,
                 caps: Mapping[str, int] | None = None) -> dict[str, Any]:
    """A batch whose text lengths are padded up to :func:`bucket_length` buckets.

    - ``input_ids`` ``(batch, S)`` **with** an ``attention_mask``: ids padded with the pad id,
      the mask with 0 (masked keys: the real tokens never see the padding);
    - ``input_ids`` without a mask (SigLIP's EOS-padded captions, whose text tower reads the last
      position) are left as they are: padding them would change the result;
    - ``labels`` ``(batch, T)`` padded with -100 (never scored; the decoder is causal, so the real
      positions never see the extra ones), ``decoder_input_ids`` (if present) with the pad id.

    ``caps``: the longest length per key (``{"input_ids": max_prompt_len, "labels":
    max_answer_len}``, see :func:`bucket_caps`). Other entries (pixels, task ids) pass through.
    """
    caps = dict(caps or {})
    out = dict(batch)
    ids, mask = batch.get("input_ids"), batch.get("attention_mask")
    if isinstance(ids, torch.Tensor) and isinstance(mask, torch.Tensor) and ids.ndim == 2 \
            and mask.shape == ids.shape:
        n = bucket_length(ids.shape[1], multiple, caps.get("input_ids"))
        out["input_ids"], out["attention_mask"] = _pad_to(ids, n, PAD_ID), _pad_to(mask, n, 0)
    labels = batch.get("labels")
    if isinstance(labels, torch.Tensor) and labels.ndim == 2:
        n = bucket_length(labels.shape[1], multiple, caps.get("labels"))
        out["labels"] = _pad_to(labels, n, IGNORE_INDEX)
        dec = batch.get("decoder_input_ids")
        if isinstance(dec, torch.Tensor) and dec.shape == labels.shape:
            out["decoder_input_ids"] = _pad_to(dec, n, PAD_ID)
    return out


def bucket_caps(model_config: Any) -> dict[str, int]:
    """The longest lengths a model accepts, for :func:`bucket_batch`: a PaLI-3 config gives
    ``max_prompt_len``/``max_answer_len``, an encoder-decoder config ``max_input_length``."""
    caps: dict[str, int] = {}
    if hasattr(model_config, "max_prompt_len"):
        caps["input_ids"] = int(model_config.max_prompt_len)
    elif hasattr(model_config, "max_input_length"):
        caps["input_ids"] = int(model_config.max_input_length)
    if hasattr(model_config, "max_answer_len"):
        caps["labels"] = int(model_config.max_answer_len)
    return caps


class BucketedData:
    """A data source whose ``get_batch(step)`` returns :func:`bucket_batch` of the original;
    every other attribute is the original's."""

    def __init__(self, data: Any, multiple: int, caps: Mapping[str, int] | None = None):
        self.data, self.multiple, self.caps = data, multiple, dict(caps or {})

    def get_batch(self, step: int) -> dict[str, Any]:
        return bucket_batch(self.data.get_batch(step), self.multiple, self.caps)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.__dict__["data"], name)


# ---------------------------------------------------------------------------------------------
# All of it together
# ---------------------------------------------------------------------------------------------


@dataclass
class SpeedSettings:
    """Which speed paths to use (all off by default; see the module docstring).

    - ``compile``: ``None`` (off), ``"blocks"`` or ``"model"`` (:func:`compile_model`), with
      ``compile_backend`` and inductor's ``compile_mode``;
    - ``checkpointing``: activation checkpointing of every transformer block;
    - ``bucket``: pad text lengths to multiples of this (``None``: off);
    - ``fused_adamw``: ``None`` chooses (:func:`pick_fused_adamw`); see :func:`adamw_kwargs`;
    - ``attention``: ``"sdpa"`` or ``"flex"`` for the T5 stacks
      (:func:`pali3_edu.encdec.set_attention`).
    """

    compile: CompileMode | None = None
    compile_backend: str = "inductor"
    compile_mode: str | None = None
    checkpointing: bool = False
    bucket: int | None = None
    fused_adamw: bool | None = None
    attention: AttentionPath = "sdpa"

    def __post_init__(self) -> None:
        if self.attention not in ("sdpa", "flex"):
            raise ValueError(f"SpeedSettings.attention must be 'sdpa' or 'flex', got {self.attention!r}.")
        if self.compile not in (None, "blocks", "model"):
            raise ValueError(f"SpeedSettings.compile must be None, 'blocks' or 'model', got {self.compile!r}.")
        if self.bucket is not None and (isinstance(self.bucket, bool) or not isinstance(self.bucket, int)
                                        or self.bucket < 1):
            raise ValueError(f"SpeedSettings.bucket must be None or a positive integer (e.g. 16), got {self.bucket!r}.")

    @property
    def active(self) -> bool:
        """Whether anything differs from the plain path (the optimizer choice aside)."""
        return (self.compile is not None or self.checkpointing or self.bucket is not None
                or self.attention != "sdpa")

    def describe(self) -> str:
        parts = []
        if self.compile:
            parts.append(f"compile={self.compile}/{self.compile_backend}")
        if self.checkpointing:
            parts.append("checkpointing")
        if self.bucket:
            parts.append(f"bucket={self.bucket}")
        if self.attention != "sdpa":
            parts.append(f"attention={self.attention}")
        return ", ".join(parts) or "plain"

    def prepare_model(self, model: nn.Module) -> nn.Module:
        """The attention path, checkpointing, then compilation, applied to ``model`` in place;
        returns it. (A model without T5 stacks, like SigLIP, keeps its attention: the ViT's needs
        no mask, so SDPA can use flash there already.)"""
        if self.attention != "sdpa":
            from pali3_edu.encdec import set_attention

            set_attention(model, self.attention)
        if self.checkpointing:
            enable_checkpointing(model)
        if self.compile is not None:
            compile_model(model, self.compile, self.compile_backend, self.compile_mode)
        return model

    def wrap_data(self, data: Any, caps: Mapping[str, int] | None = None) -> Any:
        """``data`` with bucketed batches (unchanged when ``bucket`` is ``None``)."""
        return data if self.bucket is None else BucketedData(data, self.bucket, caps)


def speed_stage(stage: Any, settings: SpeedSettings) -> Any:
    """A copy of a training :class:`~pali3_edu.recipes.base.Stage` whose models and data go
    through ``settings`` (the loss, the parameter groups and the stage's version stay the same)."""
    build_model, build_data = stage.build_model, stage.build_data

    def model(recipe: Any, tokenizer: Any) -> nn.Module:
        return settings.prepare_model(build_model(recipe, tokenizer))

    def data(recipe: Any, tokenizer: Any) -> Any:
        return settings.wrap_data(build_data(recipe, tokenizer), bucket_caps(recipe.model))

    return dataclasses.replace(stage, build_model=model, build_data=data)


@contextlib.contextmanager
def use_speed_settings(settings: SpeedSettings, stages: Sequence[str] | None = None) -> Iterator[None]:
    """Inside the block, the named stages (default: all registered ones) build their models and
    batches through ``settings``; on exit the original stages are registered again."""
    from pali3_edu.recipes import base

    if not settings.active:
        yield
        return
    names = list(stages) if stages is not None else sorted({r.split(":")[0] for r in base.list_recipes()})
    originals = {name: base.get_stage(name) for name in names}
    try:
        for name, stage in originals.items():
            base.register_stage(speed_stage(stage, settings))
        yield
    finally:
        for stage in originals.values():
            base.register_stage(stage)


__all__ = [
    "BucketedData", "SpeedSettings", "adamw_kwargs", "bucket_batch", "bucket_caps", "bucket_length",
    "compile_available", "compile_model", "disable_checkpointing", "enable_checkpointing",
    "pick_amp_dtype", "pick_fused_adamw", "speed_stage", "transformer_blocks", "use_speed_settings",
]
