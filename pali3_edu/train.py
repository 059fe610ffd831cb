"""One small training loop for every lesson: warm-up + cosine schedule, gradient clipping and
accumulation, optional mixed precision, and checkpoints that resume without loss.

The loop asks for batches by step number (``get_batch(step)``). A batch that depends only on
its step makes training after a resume identical to training without interruption: the
checkpoint stores model, optimizer, schedule, step and history, and the next step asks for the
same batch it would have asked for anyway.

>>> history = train(model, loss_fn, get_batch, TrainConfig(steps=200), checkpoint="data/x.pt")
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Iterable
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from pali3_edu.utils import pick_device


class CheckpointError(RuntimeError):
    """A checkpoint file is missing, truncated or does not fit the model."""


@dataclass
class TrainConfig:
    steps: int = 500
    lr: float = 1e-3
    weight_decay: float = 0.01
    warmup_steps: int = 50
    schedule: Literal["cosine", "constant"] = "cosine"
    min_lr_ratio: float = 0.1  # cosine decays to lr * min_lr_ratio
    betas: tuple[float, float] = (0.9, 0.98)
    grad_clip: float | None = 1.0
    grad_accum: int = 1  # batches per optimizer step
    amp_dtype: Literal["bf16", "fp16"] | None = None
    log_every: int = 10
    checkpoint_every: int | None = None  # steps between checkpoints (None: only at the end)
    seed: int = 0


@dataclass
class History:
    """What happened during training: one row per logged step."""

    rows: list[dict[str, float]] = field(default_factory=list)
    seconds: float = 0.0
    resumed_from: int = 0

    def column(self, key: str) -> list[float]:
        return [r[key] for r in self.rows if key in r]

    @property
    def steps(self) -> list[float]:
        return self.column("step")

    @property
    def losses(self) -> list[float]:
        return self.column("loss")


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Learning rate at ``step`` (0-based): linear warm-up, then cosine or constant."""
    if cfg.warmup_steps and step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    if cfg.schedule == "constant":
        return cfg.lr
    progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    cosine = 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * cosine)


def make_optimizer(params: Iterable[nn.Parameter], cfg: TrainConfig) -> torch.optim.Optimizer:
    """AdamW; weight decay only on matrices (not on norms, biases, scalars)."""
    params = [p for p in params if p.requires_grad]
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    groups = [
        {"params": decay, "weight_decay": cfg.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas)


# ---------------------------------------------------------------------------------------------
# Checkpoints
# ---------------------------------------------------------------------------------------------


def save_checkpoint(path: str | Path, model: nn.Module, **extra: Any) -> Path:
    """Write ``{"model": state_dict, **extra}`` atomically (a crash never leaves half a file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save({"model": model.state_dict(), **extra}, tmp)
    os.replace(tmp, path)
    return path


def load_checkpoint(path: str | Path, model: nn.Module | None = None) -> dict[str, Any]:
    """Read a checkpoint (and load its weights into ``model`` if given), with errors that say
    what to do."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"No checkpoint at {path}. Train the model first (or fix the path).")
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # truncated zip, random bytes, pickle errors ...
        raise CheckpointError(
            f"Checkpoint {path} is corrupt or incomplete ({type(err).__name__}: {err}). "
            "Delete the file and run the training cell again."
        ) from err
    if not isinstance(state, dict) or "model" not in state:
        raise CheckpointError(
            f"{path} is not a pali3-edu checkpoint (no 'model' entry). Delete it and retrain."
        )
    if model is not None:
        try:
            model.load_state_dict(state["model"])
        except RuntimeError as err:
            raise CheckpointError(
                f"Checkpoint {path} does not fit this model (was it trained with another config "
                f"preset?). Delete it or build the model with the checkpoint's config.\n{err}"
            ) from err
    return state


# ---------------------------------------------------------------------------------------------
# The loop
# ---------------------------------------------------------------------------------------------


def to_device(batch: Any, device: torch.device) -> Any:
    """Move tensors inside dicts/lists/tuples to ``device``."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(to_device(v, device) for v in batch)
    return batch


def _autocast(device: torch.device, amp_dtype: str | None):
    if amp_dtype is None:
        return nullcontext()
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[amp_dtype]
    return torch.autocast(device_type=device.type, dtype=dtype)


LossFn = Callable[[nn.Module, Any], "torch.Tensor | dict[str, torch.Tensor]"]


def train(
    model: nn.Module,
    loss_fn: LossFn,
    get_batch: Callable[[int], Any],
    cfg: TrainConfig,
    *,
    checkpoint: str | Path | None = None,
    device: torch.device | str | None = None,
    params: Iterable[nn.Parameter] | None = None,
    progress: bool = True,
    stop_after: int | None = None,
) -> History:
    """Train ``model`` for ``cfg.steps`` optimizer steps and return the :class:`History`.

    - ``loss_fn(model, batch)`` returns the scalar loss, or a dict with ``"loss"`` and other
      scalars to log (e.g. per-denoiser losses).
    - ``get_batch(step)`` returns the batch for ``step`` (called ``grad_accum`` times per step
      with ``step * grad_accum + i``).
    - ``checkpoint``: if the file exists, training resumes from it; it is written every
      ``cfg.checkpoint_every`` steps and at the end.
    - ``params``: what to train (default: every parameter with ``requires_grad``); lets a lesson
      freeze a tower.
    - ``stop_after``: stop (and checkpoint) after this many steps in this call, as if the
      process were interrupted; the lessons use it to demonstrate resuming.
    """
    device = torch.device(device) if device is not None else pick_device()
    model.to(device)
    torch.manual_seed(cfg.seed)
    opt = make_optimizer(params if params is not None else model.parameters(), cfg)
    history = History()
    start = 0
    if checkpoint is not None and Path(checkpoint).exists():
        state = load_checkpoint(checkpoint, model)
        if "optimizer" in state:
            opt.load_state_dict(state["optimizer"])
        start = int(state.get("step", 0))
        history = History(**state.get("history", {}))
        history.resumed_from = start
        if "rng" in state:
            torch.set_rng_state(state["rng"])
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.amp_dtype == "fp16")

    def _save(step: int) -> None:
        if checkpoint is not None:
            save_checkpoint(
                checkpoint, model, optimizer=opt.state_dict(), step=step,
                history=asdict(history), train_config=asdict(cfg), rng=torch.get_rng_state(),
            )

    end = cfg.steps if stop_after is None else min(cfg.steps, start + stop_after)
    bar = None
    if progress and end > start:
        from tqdm.auto import tqdm

        # mininterval + refresh=False below: a fast loop must not flood a notebook with
        # thousands of widget updates (nbval and browsers choke on them)
        bar = tqdm(total=cfg.steps, initial=start, desc="train", leave=False, mininterval=0.5)
    t0 = time.perf_counter()
    model.train()
    for step in range(start, end):
        lr = lr_at(step, cfg)
        for group in opt.param_groups:
            group["lr"] = lr
        logs: dict[str, float] = {}
        for micro in range(cfg.grad_accum):
            batch = to_device(get_batch(step * cfg.grad_accum + micro), device)
            with _autocast(device, cfg.amp_dtype):
                out = loss_fn(model, batch)
            loss = out["loss"] if isinstance(out, dict) else out
            if not torch.isfinite(loss):
                raise FloatingPointError(
                    f"Loss is {loss.item()} at step {step}. Lower the learning rate or check "
                    "the inputs (fp16 without loss scaling overflows T5-style models)."
                )
            scaler.scale(loss / cfg.grad_accum).backward()
            items = out.items() if isinstance(out, dict) else [("loss", out)]
            for k, v in items:
                v = float(v.detach()) if isinstance(v, torch.Tensor) else float(v)
                logs[k] = logs.get(k, 0.0) + v / cfg.grad_accum
        if cfg.grad_clip is not None:
            scaler.unscale_(opt)
            logs["grad_norm"] = float(
                torch.nn.utils.clip_grad_norm_(
                    [p for g in opt.param_groups for p in g["params"]], cfg.grad_clip
                )
            )
        scaler.step(opt)
        scaler.update()
        opt.zero_grad(set_to_none=True)
        if step % cfg.log_every == 0 or step == cfg.steps - 1:
            history.rows.append({"step": float(step), "lr": lr, **logs})
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{logs['loss']:.3f}", refresh=False)
        if cfg.checkpoint_every and (step + 1) % cfg.checkpoint_every == 0:
            _save(step + 1)
    if bar is not None:
        bar.close()
    history.seconds += time.perf_counter() - t0
    if end > start:
        _save(end)
    model.eval()
    return history
