"""One PaLI-3 training step: the course model against the same model built from ``transformers`` parts.

``python -m pali3_edu.bench train [--preset smoke] [--stage pali3-stage1] [--steps 5] [--device cpu]``

Both sides train the same shapes, taken from a recipe (``--preset``, ``--stage``):

- **course**: :class:`pali3_edu.pali3.PaLI3` (ViT → linear projector → UL2 encoder-decoder);
- **transformers**: ``SiglipVisionModel`` (no pooling head) → ``nn.Linear`` →
  ``T5ForConditionalGeneration`` fed ``inputs_embeds`` = [visual tokens ; embedded prompt], both built
  from configs mapped from the course's (:func:`hf_configs`), random weights, nothing downloaded.

A step is forward + backward + AdamW (fused on CUDA), with the recipe's frozen parts frozen on
both sides (stage 1 and transfer freeze the ViT). Steps alternate course, transformers, course,
... in one process, so both see the same machine state; the median step time of each is
reported. Columns:

- ``images/s`` = batch / step time; ``tokens/s`` = batch · (visual + prompt + answer tokens) /
  step time (every position the encoder-decoder processes);
- ``peak MiB``: CUDA: ``torch.cuda.max_memory_allocated`` during one step, above what was allocated
  before it. CPU: the peak of the CPU profiler's allocation record (``pali3_edu.profiling``), which
  sees every tensor PyTorch allocates (``tracemalloc`` would not: tensors are not Python
  objects; the process RSS would mix in the other model and the allocator's cache);
- ``MFU`` (model FLOPs utilisation) = model FLOPs per step / step time / the device's peak FLOP/s.

**The FLOPs formula** (:func:`step_flops`), per example, with ``P`` visual tokens, ``S`` prompt and
``T`` answer tokens, ``E = P + S`` encoder positions, ``N`` the weights a token passes through
(matmul weights: patch embedding, attention and MLP projections, the projector, the LM head;
embedding tables and norms do no multiply-adds)::

    forward  = 2 · N_tokenwise · tokens   + attention: 4 · queries · keys · width per layer
    training = 3 × forward for trained parts (backward ≈ 2 × forward), 1 × for frozen parts

Token counts: the ViT's weights see ``P`` tokens, the encoder's ``E``, the decoder's ``T``
except its cross-attention keys/values (computed from the ``E`` encoder states) and the LM head
(``T``). This is the usual ``6 · N_trained · tokens + 2 · N_frozen · tokens`` plus the attention
terms (PaLM's MFU, appendix B). It is checked against ``torch.utils.flop_counter.FlopCounterMode``
on one real step (attention through the math kernel, which the counter can see). Known gaps:

1. the first trained layer needs no gradient for its input: after a frozen ViT that is the
   projector (the formula counts ``2 · width · d_model · P`` per example too many), with the
   ViT training it is the patch embedding (``2 · 3 · patch² · width · P``);
2. the decoder's causal self-attention is counted in full (the kernels compute it in full too,
   and so does the counter);
3. element-wise work (norms, softmax, GELU, the loss, AdamW) is in neither.

Measured on CPU: the formula is 0.2 % above the counter at the ``smoke`` preset and 0.1 % above
it at the ``h100`` shapes (stage 1: 202.6 vs 202.4 GFLOP per example; stage 2 at 448 px: 1059.1
vs 1058.2), gap 1 being almost all of it. The transformers assembly counts the same FLOPs.

Peak FLOP/s per device (dense bf16/fp16 tensor cores) come from :data:`PEAK_TFLOPS` by the CUDA
device name, or from ``--peak-tflops``. On a CPU there is no such table: MFU is not reported.
The LAST line is the speed ratio ``course/transformers`` in steps per second (> 1: the course
model is faster).

Speed paths (:mod:`pali3_edu.speed`): ``--compile``, ``--checkpointing`` apply to both models;
``--attention flex`` switches the course model's T5 self-attention to FlexAttention (relative
position bias as a ``score_mod``, masks as a ``block_mask``; CUDA only, as FlexAttention has no
backward pass on CPU), while the transformers T5 keeps its own attention.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from pali3_edu.pali3 import PaLI3, PaLI3Config
from pali3_edu.profiling import peak_memory, synchronize
from pali3_edu.speed import SpeedSettings, adamw_kwargs, pick_amp_dtype

#: Dense bf16/fp16 tensor-core peak, TFLOP/s, by a substring of ``torch.cuda.get_device_name``
#: (first match wins: "H100 PCIe" before "H100").
PEAK_TFLOPS: list[tuple[str, float]] = [
    ("H100 PCIe", 756.0), ("H100", 989.0), ("H200", 989.0), ("A100", 312.0), ("L4", 121.0),
    ("A10G", 125.0), ("T4", 65.0), ("V100", 125.0),
]


# ---------------------------------------------------------------------------------------------
# The transformers assembly
# ---------------------------------------------------------------------------------------------


def hf_configs(cfg: PaLI3Config) -> tuple[Any, Any]:
    """``(SiglipVisionConfig, T5Config)`` of the same shapes as a course :class:`PaLI3Config`."""
    from transformers import SiglipVisionConfig, T5Config

    v, t = cfg.vision, cfg.text
    if v.posemb != "learn":
        raise ValueError("The transformers SigLIP has a learned position embedding; the course config "
                         f"uses posemb={v.posemb!r}.")
    vision = SiglipVisionConfig(
        hidden_size=v.width, intermediate_size=v.mlp_dim, num_hidden_layers=v.depth,
        num_attention_heads=v.heads, num_channels=v.channels, image_size=v.image_size,
        patch_size=v.patch_size, hidden_act="gelu_pytorch_tanh", layer_norm_eps=v.layer_norm_eps,
        attention_dropout=v.dropout, vision_use_head=False,
    )
    text = T5Config(
        vocab_size=t.vocab_size, d_model=t.d_model, d_kv=t.d_kv, d_ff=t.d_ff, num_layers=t.num_layers,
        num_decoder_layers=t.num_decoder_layers, num_heads=t.num_heads,
        relative_attention_num_buckets=t.relative_attention_num_buckets,
        relative_attention_max_distance=t.relative_attention_max_distance, dropout_rate=t.dropout_rate,
        layer_norm_epsilon=t.layer_norm_eps, feed_forward_proj=t.feed_forward_proj,
        tie_word_embeddings=t.tie_word_embeddings, pad_token_id=t.pad_token_id,
        eos_token_id=t.eos_token_id, decoder_start_token_id=t.decoder_start_token_id,
    )
    return vision, text


class HFPaLI3(nn.Module):
    """PaLI-3 from ``transformers`` parts: SigLIP vision tower → linear projector → T5 fed
    ``inputs_embeds`` (the visual tokens in front of the embedded prompt). Same call as
    :class:`~pali3_edu.pali3.PaLI3`; returns the transformers output (``.loss``, ``.logits``)."""

    def __init__(self, cfg: PaLI3Config):
        super().__init__()
        from transformers import SiglipVisionModel, T5ForConditionalGeneration

        vision_cfg, text_cfg = hf_configs(cfg)
        self.cfg = cfg
        self.vision = SiglipVisionModel(vision_cfg)
        self.projector = nn.Linear(cfg.vision.width, cfg.text.d_model)
        self.t5 = T5ForConditionalGeneration(text_cfg)
        if not cfg.text.tie_word_embeddings and self.t5.lm_head.weight is self.t5.shared.weight:
            # transformers 5 keeps the head tied in memory even when the config says untied
            self.t5.lm_head.weight = nn.Parameter(self.t5.shared.weight.detach().clone())

    def forward(self, pixel_values: torch.Tensor, input_ids: torch.Tensor,
                attention_mask: torch.Tensor | None = None, labels: torch.Tensor | None = None) -> Any:
        visual = self.projector(self.vision(pixel_values=pixel_values).last_hidden_state)
        text = self.t5.get_input_embeddings()(input_ids)
        embeds = torch.cat([visual.to(text.dtype), text], dim=1)
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        keep = torch.cat([torch.ones(visual.shape[:2], dtype=attention_mask.dtype, device=visual.device),
                          attention_mask], dim=1)
        return self.t5(inputs_embeds=embeds, attention_mask=keep, labels=labels)


# ---------------------------------------------------------------------------------------------
# FLOPs
# ---------------------------------------------------------------------------------------------


@dataclass
class StepShape:
    """What one step processes: ``batch`` examples of ``prompt`` + ``answer`` tokens, and whether
    the ViT trains."""

    batch: int
    prompt: int
    answer: int
    train_vision: bool


def step_flops(cfg: PaLI3Config, shape: StepShape) -> dict[str, float]:
    """Model FLOPs of one training step by the formula in the module docstring, per part, and
    ``"total"``."""
    v, t = cfg.vision, cfg.text
    p, s, a = v.num_patches, shape.prompt, shape.answer
    e = p + s
    inner = t.num_heads * t.d_kv
    ff = (3 if t.feed_forward_proj.startswith("gated") else 2) * t.d_model * t.d_ff
    # forward FLOPs per example
    vit_weights = v.channels * v.patch_size**2 * v.width + v.depth * (4 * v.width**2 + 2 * v.width * v.mlp_dim)
    vit = 2 * vit_weights * p + v.depth * 4 * p * p * v.width
    projector = 2 * v.width * t.d_model * p
    encoder = t.num_layers * (2 * (4 * t.d_model * inner + ff) * e + 4 * e * e * inner)
    decoder = t.num_decoder_layers * (
        2 * (4 * t.d_model * inner + 2 * t.d_model * inner + ff) * a  # self q,k,v,o + cross q,o + MLP
        + 2 * (2 * t.d_model * inner) * e  # cross-attention keys and values of the encoder states
        + 4 * a * a * inner + 4 * a * e * inner)  # self- and cross-attention scores and sums
    head = 2 * t.d_model * t.vocab_size * a
    out = {
        "vit": vit * (3 if shape.train_vision else 1),
        "projector": 3 * projector, "encoder": 3 * encoder, "decoder": 3 * decoder, "lm_head": 3 * head,
    }
    out = {k: float(val * shape.batch) for k, val in out.items()}
    out["total"] = sum(out.values())
    return out


def counted_flops(step: Callable[[], Any]) -> int:
    """FLOPs of ``step()`` (a forward + backward) as ``FlopCounterMode`` counts them, with
    attention through the math kernel (the counter does not see the fused CPU kernel)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        step()
    return int(counter.get_total_flops())


def peak_tflops(device: torch.device, override: float | None = None) -> tuple[float | None, str]:
    """``(peak TFLOP/s, where it came from)``; ``(None, why)`` when unknown (CPU, unlisted GPU)."""
    if override is not None:
        return override, "--peak-tflops"
    if device.type != "cuda":
        return None, f"no peak FLOP/s for {device.type} (MFU is reported for CUDA GPUs only)"
    name = torch.cuda.get_device_name(device)
    for key, value in PEAK_TFLOPS:
        if key in name:
            return value, f"{name} ({key}: {value:g} TFLOP/s dense bf16/fp16)"
    return None, f"{name} is not in the table: pass --peak-tflops"


# ---------------------------------------------------------------------------------------------
# The benchmark
# ---------------------------------------------------------------------------------------------


def make_batch(cfg: PaLI3Config, shape: StepShape, device: torch.device, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random pixels in [-1, 1], prompt ids, a full prompt mask and answer labels."""
    g = torch.Generator().manual_seed(seed)
    size = cfg.vision.image_size
    batch = {
        "pixel_values": torch.rand(shape.batch, 3, size, size, generator=g) * 2 - 1,
        "input_ids": torch.randint(3, cfg.text.vocab_size, (shape.batch, shape.prompt), generator=g),
        "attention_mask": torch.ones(shape.batch, shape.prompt, dtype=torch.long),
        "labels": torch.randint(3, cfg.text.vocab_size, (shape.batch, shape.answer), generator=g),
    }
    return {k: x.to(device) for k, x in batch.items()}


@dataclass
class Contender:
    """One side of the comparison: its model, optimizer and one training step."""

    name: str
    model: nn.Module
    step: Callable[[], float]
    loss_only: Callable[[], Any]  # forward + backward without the optimizer (FLOP counting)


def _freeze_vision(model: nn.Module) -> None:
    vision = model.vit if isinstance(model, PaLI3) else model.vision
    vision.requires_grad_(False)


def make_contender(name: str, model: nn.Module, batch: dict[str, torch.Tensor], device: torch.device,
                   amp: str | None, train_vision: bool) -> Contender:
    model.to(device).train()
    if not train_vision:
        _freeze_vision(model)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4, **adamw_kwargs(device))
    scaler = torch.amp.GradScaler(device.type, enabled=amp == "fp16")
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(amp or "")

    def forward_backward() -> torch.Tensor:
        ctx = torch.autocast(device.type, dtype=dtype) if dtype is not None else nullcontext()
        with ctx:
            loss = model(batch["pixel_values"], batch["input_ids"], batch["attention_mask"],
                         labels=batch["labels"]).loss
        scaler.scale(loss).backward()
        return loss

    def step() -> float:
        opt.zero_grad(set_to_none=True)
        loss = forward_backward()
        scaler.step(opt)
        scaler.update()
        synchronize(device)
        return loss

    def loss_only() -> None:
        opt.zero_grad(set_to_none=True)
        forward_backward()

    return Contender(name, model, step, loss_only)


def build_models(cfg: PaLI3Config, seed: int = 0) -> tuple[PaLI3, HFPaLI3]:
    torch.manual_seed(seed)
    course = PaLI3(cfg)
    torch.manual_seed(seed)
    hf = HFPaLI3(cfg)
    return course, hf


def count_params(model: nn.Module) -> tuple[int, int]:
    """``(all, trainable)`` parameter counts."""
    return (sum(p.numel() for p in model.parameters()),
            sum(p.numel() for p in model.parameters() if p.requires_grad))


def run(preset: str = "smoke", stage: str = "pali3-stage1", steps: int = 5, device: str | None = None,
        batch_size: int | None = None, prompt_len: int | None = None, answer_len: int | None = None,
        amp: str | None = "auto", peak: float | None = None, speed: SpeedSettings | None = None,
        print_fn: Callable[[str], None] = print) -> dict[str, Any]:
    """Run the benchmark and print its table; returns the figures (``ratio``: course/transformers
    steps per second; ``formula_flops``/``counted_flops`` of one course step)."""
    from pali3_edu.recipes import scale  # noqa: F401  (registers the presets)
    from pali3_edu.recipes.base import get_recipe

    recipe = get_recipe(stage, preset)
    cfg: PaLI3Config = recipe.model
    if not isinstance(cfg, PaLI3Config):
        raise ValueError(f"--stage must be a PaLI-3 stage (pali3-stage1, pali3-stage2, pali3-transfer), got {stage!r}.")
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if speed is not None and speed.attention == "flex" and dev.type == "cpu":
        raise ValueError("--attention flex needs a CUDA GPU: FlexAttention has no backward pass on CPU "
                         "(train on CPU with --attention sdpa).")
    if amp == "auto":
        amp = pick_amp_dtype(dev) if dev.type == "cuda" else None  # CPU: fp32 (bf16 autocast is slow on most CPUs)
    train_vision = not recipe.data.stage.freeze_vision
    batch_size = batch_size or recipe.data.mix.batch_size
    shape = StepShape(batch_size, prompt_len or cfg.max_prompt_len, answer_len or cfg.max_answer_len, train_vision)
    batch = make_batch(cfg, shape, dev)
    course, hf = build_models(cfg)
    if speed is not None:
        speed.prepare_model(course)
        speed.prepare_model(hf)
    sides = [make_contender("course", course, batch, dev, amp, train_vision),
             make_contender("transformers", hf, batch, dev, amp, train_vision)]
    (n_course, t_course), (n_hf, t_hf) = count_params(course), count_params(hf)
    if (n_course, t_course) != (n_hf, t_hf):
        raise RuntimeError(f"The two models differ in size: course {n_course:,} parameters ({t_course:,} "
                           f"trained), transformers {n_hf:,} ({t_hf:,}); hf_configs is out of date.")

    tokens = shape.batch * (cfg.vision.num_patches + shape.prompt + shape.answer)
    formula = step_flops(cfg, shape)
    print_fn(f"PaLI-3 training step, {stage}/{preset}: ViT {cfg.vision.width}x{cfg.vision.depth} at "
             f"{cfg.vision.image_size} px ({cfg.vision.num_patches} patches, "
             f"{'trained' if train_vision else 'frozen'}), encoder-decoder d_model {cfg.text.d_model}, "
             f"{cfg.text.num_layers}+{cfg.text.num_decoder_layers} layers")
    print_fn(f"batch {shape.batch}, prompt {shape.prompt}, answer {shape.answer} tokens; {n_course / 1e6:.2f} M "
             f"parameters ({t_course / 1e6:.2f} M trained); device {dev}, amp {amp or 'fp32'}, "
             f"{speed.describe() if speed else 'plain'}; transformers attention: "
             f"{hf.t5.config._attn_implementation}")

    # FLOPs: the formula and the counter, one course step (and the transformers one, for reference)
    counted = {s.name: counted_flops(s.loss_only) for s in sides}
    gap = (formula["total"] - counted["course"]) / counted["course"]
    print_fn(f"FLOPs per step: formula {formula['total'] / 1e9:.3f} G, FlopCounterMode course "
             f"{counted['course'] / 1e9:.3f} G (formula {gap:+.1%}), "
             f"transformers {counted['transformers'] / 1e9:.3f} G")

    # peak memory of one step each
    memory = {}
    for s in sides:
        s.step()  # warm-up (allocator, kernels, optimizer state)
        memory[s.name] = peak_memory(s.step, dev) / 2**20
    mem_how = "torch.cuda.max_memory_allocated" if dev.type == "cuda" else "CPU profiler allocation record"

    # interleaved timing: A B A B ...
    times: dict[str, list[float]] = {s.name: [] for s in sides}
    for _ in range(steps):
        for s in sides:
            synchronize(dev)
            t0 = time.perf_counter()
            s.step()
            times[s.name].append(time.perf_counter() - t0)
    peak_value, peak_note = peak_tflops(dev, peak)
    print_fn(f"{'model':<13} {'step ms':>9} {'images/s':>9} {'tokens/s':>10} {'peak MiB':>9} {'MFU':>7}")
    rows = {}
    for s in sides:
        t = statistics.median(times[s.name])
        mfu = formula["total"] / t / (peak_value * 1e12) if peak_value else None
        rows[s.name] = {"step_s": t, "images_s": shape.batch / t, "tokens_s": tokens / t,
                        "peak_mib": memory[s.name], "mfu": mfu}
        print_fn(f"{s.name:<13} {t * 1e3:>9.1f} {shape.batch / t:>9.1f} {tokens / t:>10.0f} "
                 f"{memory[s.name]:>9.1f} {f'{mfu:.1%}' if mfu is not None else 'n/a':>7}")
    print_fn(f"(median of {steps} interleaved steps; peak memory: {mem_how}; MFU: {peak_note})")
    ratio = rows["transformers"]["step_s"] / rows["course"]["step_s"]
    print_fn(f"ratio course/transformers (steps/s): {ratio:.2f}")
    return {"ratio": ratio, "rows": rows, "formula_flops": formula, "counted_flops": counted, "amp": amp}


def main(argv: list[str] | None = None) -> None:
    from pali3_edu.bench.__main__ import positive_float, positive_int

    parser = argparse.ArgumentParser(prog="python -m pali3_edu.bench train", description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="smoke", help="recipe preset: smoke, colab-t4, l4-a100, h100, 8xh100, ...")
    parser.add_argument("--stage", default="pali3-stage1",
                        help="pali3-stage1 (ViT frozen), pali3-stage2, pali3-transfer")
    parser.add_argument("--steps", type=positive_int, default=5, help="timed steps per model")
    parser.add_argument("--device", choices=("cpu", "cuda"), help="default: cuda if available")
    parser.add_argument("--batch-size", type=positive_int, help="default: the recipe's")
    parser.add_argument("--prompt-len", type=positive_int, help="default: the model's max_prompt_len")
    parser.add_argument("--answer-len", type=positive_int, help="default: the model's max_answer_len")
    parser.add_argument("--amp", choices=("auto", "bf16", "fp16", "none"), default="auto",
                        help="auto: bf16/fp16 on CUDA as the GPU supports, fp32 on CPU")
    parser.add_argument("--peak-tflops", type=positive_float, help="the device's peak TFLOP/s (for MFU)")
    parser.add_argument("--compile", nargs="?", const="blocks", choices=("blocks", "model"),
                        help="torch.compile both models (pali3_edu.speed)")
    parser.add_argument("--compile-backend", default="inductor")
    parser.add_argument("--checkpointing", action="store_true", help="activation checkpointing in both models")
    parser.add_argument("--attention", choices=("sdpa", "flex"), default="sdpa",
                        help="the course T5's self-attention: sdpa (dense bias mask) or flex (FlexAttention, CUDA)")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda, but PyTorch sees no CUDA GPU")
    speed = SpeedSettings(compile=args.compile, compile_backend=args.compile_backend,
                          checkpointing=args.checkpointing, attention=args.attention)
    try:
        run(args.preset, args.stage, args.steps, args.device, args.batch_size, args.prompt_len,
            args.answer_len, None if args.amp == "none" else args.amp, args.peak_tflops,
            speed if speed.active else None)
    except ValueError as err:
        parser.error(str(err))


if __name__ == "__main__":
    main()
