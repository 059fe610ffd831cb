"""One training loop for every lesson and every stage, on one process or many.

What one optimizer step does (``cfg.grad_accum`` micro-batches, ``W`` processes):

1. set each parameter group's learning rate: the schedule (:func:`lr_at`: linear warm-up, then
   cosine decay) times the group's ``lr_scale``;
2. for each micro-batch ``i``: ``batch = get_batch(step * grad_accum + i)`` is the *global*
   micro-batch; each process keeps its contiguous share of rows, runs ``loss_fn(model, batch)``
   and ``backward`` on the loss times the micro-batch's weight, so that the gradients add up to
   the gradient of the step's loss (below). Processes average their gradients only after the
   last micro-batch (:mod:`pali3_edu.distributed`);
3. clip the gradient norm to ``cfg.grad_clip``, check that the loss and the gradient norm are
   finite (the one point per step where the CPU waits for the GPU), then ``optimizer.step()``.

**Which mean.** A ``loss_fn`` returns a mean: over rows (a regression, SigLIP) or over tokens
(the answer tokens of PaLI-3, the targets of UL2). A mean over rows is the same whether it is
taken over the whole batch or over equal shares of it, so the loop simply weights each
micro-batch by ``1 / grad_accum`` and the processes average. A mean over tokens is not: with 300
answer tokens on one process and 100 on the other, the average of the two means weighs each of
the 100 tokens three times as much as one of the 300, and the gradient is not the one of one
process on the whole batch. A token-mean loss therefore also says how many tokens it averaged:
``loss_fn`` returns ``{"loss": local token mean, "tokens": number of tokens}``, and the loop
weights micro-batch ``i`` of process ``r`` by ``tokens[i, r] / N`` (``N``: the tokens of the whole
step, every micro-batch on every process). The step's loss is then the exact global token mean,
``sum of every token's loss / N``, and its gradient is the one a single process computes on the
same global batch. (How: the counts of the first micro-batch are summed over the processes
before its backward pass and set the weights' scale; the gradients are corrected by the exact
``N`` once the last micro-batch is counted. The correction is 1 when every micro-batch holds
the same number of tokens.) A ``loss_fn`` that returns no ``"tokens"`` is a mean over rows.

Losses stay on the device as tensors; they are reduced over processes (the token-mean loss as
the exact global mean, other logged values averaged) and copied to the :class:`History` only
every ``cfg.log_every`` steps; with token counts the history also holds ``tokens``, the number
of tokens of the step.

The optimizer is AdamW (:func:`make_optimizer`); on a GPU its fused kernel (one kernel for every
parameter, :func:`pali3_edu.speed.pick_fused_adamw`), elsewhere PyTorch's default; ``train(...,
fused_adamw=True/False)`` chooses. The choice changes how fast the update runs, not the update
(up to rounding), so it is not part of the configuration a resume checks.

Resuming is exact. ``get_batch`` depends only on its index, and the checkpoint
(:mod:`pali3_edu.checkpoint`) stores weights, optimizer state, step, history and random-number
generator states, so a run interrupted after step 17 and resumed ends with the same weights, bit
for bit, as one that never stopped. A resume with another configuration (``TrainConfig`` or the
caller's ``meta``) is refused, naming what changed.

>>> import torch
>>> from torch import nn
>>> def get_batch(i):  # the same batch for the same index, always
...     x = torch.randn(32, 3, generator=torch.Generator().manual_seed(i))
...     return {"x": x, "y": x.sum(1, keepdim=True)}
>>> def loss_fn(model, batch):
...     return ((model(batch["x"]) - batch["y"]) ** 2).mean()
>>> model = nn.Linear(3, 1)
>>> history = train(model, loss_fn, get_batch, TrainConfig(steps=60, lr=0.1, warmup_steps=5),
...                 device="cpu", progress=False)
>>> history.losses[-1] < 0.05 * history.losses[0]
True

Under ``torchrun --nproc_per_node=N`` the same call with ``TrainConfig(parallel="ddp")`` (or
``"fsdp"``) trains on N devices; rank 0 writes the checkpoints.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Iterable
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from pali3_edu.checkpoint import (
    CheckpointError,
    check_fits,
    check_writable,
    load_checkpoint,
    resolve_checkpoint,
    save_checkpoint,
)
from pali3_edu.distributed import (
    DistInfo,
    all_gather_object,
    all_reduce_max,
    all_reduce_mean,
    barrier,
    batch_rows,
    default_device,
    gradient_sync,
    setup_distributed,
    shard_batch,
    unwrap,
    wrap_model,
)

__all__ = [
    "CheckpointError", "History", "ParamGroup", "TrainConfig", "load_checkpoint", "lr_at",
    "make_optimizer", "save_checkpoint", "to_device", "train", "unwrap",
]

#: TrainConfig fields that cannot change the trained weights: a resume may change them.
RESUME_IGNORES = ("log_every", "checkpoint_every")


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
    grad_accum: int = 1  # micro-batches per optimizer step
    amp_dtype: Literal["bf16", "fp16"] | None = None
    log_every: int = 10
    checkpoint_every: int | None = None  # steps between checkpoints (None: only at the end)
    seed: int = 0
    parallel: Literal["none", "ddp", "fsdp"] = "none"  # data parallelism under torchrun

    def __post_init__(self) -> None:
        def need(ok: bool, msg: str) -> None:
            if not ok:
                raise ValueError(f"TrainConfig: {msg}")

        def is_int(x: Any) -> bool:
            return isinstance(x, int) and not isinstance(x, bool)

        need(is_int(self.steps) and self.steps >= 1, f"steps must be an integer >= 1, got {self.steps!r}.")
        need(is_int(self.grad_accum) and self.grad_accum >= 1,
             f"grad_accum must be an integer >= 1 (1 = no accumulation), got {self.grad_accum!r}.")
        need(is_int(self.log_every) and self.log_every >= 1,
             f"log_every must be an integer >= 1, got {self.log_every!r}.")
        need(isinstance(self.lr, (int, float)) and math.isfinite(self.lr) and self.lr > 0,
             f"lr must be a positive number, got {self.lr!r}.")
        need(self.amp_dtype in (None, "bf16", "fp16"),
             f"amp_dtype must be None, 'bf16' or 'fp16', got {self.amp_dtype!r} (use None for fp32).")
        need(is_int(self.warmup_steps) and self.warmup_steps >= 0,
             f"warmup_steps must be an integer >= 0, got {self.warmup_steps!r}.")
        need(self.schedule in ("cosine", "constant"),
             f"schedule must be 'cosine' or 'constant', got {self.schedule!r}.")
        need(0 <= self.min_lr_ratio <= 1, f"min_lr_ratio must be in [0, 1], got {self.min_lr_ratio!r}.")
        need(self.weight_decay >= 0, f"weight_decay must be >= 0, got {self.weight_decay!r}.")
        need(self.grad_clip is None or self.grad_clip > 0,
             f"grad_clip must be None (no clipping) or > 0, got {self.grad_clip!r}.")
        need(self.checkpoint_every is None or (is_int(self.checkpoint_every) and self.checkpoint_every >= 1),
             f"checkpoint_every must be None (only at the end) or an integer >= 1, got {self.checkpoint_every!r}.")
        need(self.parallel in ("none", "ddp", "fsdp"),
             f"parallel must be 'none', 'ddp' or 'fsdp', got {self.parallel!r}.")
        need(not (self.parallel == "fsdp" and self.amp_dtype == "fp16"),
             "amp_dtype='fp16' is not supported with parallel='fsdp'; use 'bf16'.")
        self.betas = tuple(self.betas)  # a list from JSON becomes the tuple it was


@dataclass
class ParamGroup:
    """Parameters trained with their own learning-rate scale (and weight decay).

    ``params``: a module, a parameter, or an iterable of them. The group's learning rate is the
    schedule's ``lr_at(step) * lr_scale``; ``weight_decay=None`` uses ``TrainConfig.weight_decay``
    (applied to matrices only, never to biases, norms and scalars). Parameters with
    ``requires_grad=False`` are left out (frozen).

    >>> groups = [ParamGroup(model.vision, lr_scale=0.1), ParamGroup(model.decoder)]  # doctest: +SKIP
    """

    params: Any
    lr_scale: float = 1.0
    weight_decay: float | None = None

    def parameters(self) -> list[nn.Parameter]:
        items = self.params
        if isinstance(items, (nn.Module, torch.Tensor)):
            items = [items]
        out: list[nn.Parameter] = []
        for item in items:
            if isinstance(item, nn.Module):
                out.extend(item.parameters())
            elif isinstance(item, torch.Tensor):
                out.append(item)
            else:
                raise TypeError(
                    f"ParamGroup takes modules and parameters, got a {type(item).__name__}."
                )
        return out


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


# ---------------------------------------------------------------------------------------------
# Parameter groups and the optimizer
# ---------------------------------------------------------------------------------------------


def _group_names(model: nn.Module, groups: list[ParamGroup] | None) -> list[tuple[list[str], ParamGroup]]:
    """Each group's trainable parameters as names in ``model`` (names survive FSDP sharding,
    which replaces the parameter objects)."""
    names = {id(p): n for n, p in model.named_parameters()}
    if groups is None:
        groups = [ParamGroup(model)]
    seen: dict[str, int] = {}
    out = []
    for gi, group in enumerate(groups):
        if not isinstance(group, ParamGroup):
            raise TypeError(f"param_groups takes ParamGroup objects, got a {type(group).__name__}.")
        chosen = []
        for p in group.parameters():
            if id(p) not in names:
                raise ValueError(f"param_groups[{gi}] holds a parameter of shape {tuple(p.shape)} "
                                 "that is not in the model being trained.")
            name = names[id(p)]
            if not p.requires_grad or name in chosen:
                continue
            if name in seen and seen[name] != gi:
                raise ValueError(f"Parameter {name!r} is in param_groups[{seen[name]}] and "
                                 f"param_groups[{gi}]; put each parameter in one group.")
            seen[name] = gi
            chosen.append(name)
        out.append((chosen, group))
    if not seen:
        raise ValueError("Nothing to train: no parameter with requires_grad=True in the chosen groups.")
    return out


def make_optimizer(model: nn.Module, cfg: TrainConfig, param_groups: list[ParamGroup] | None = None,
                   *, fused: bool | None = None,
                   _names: list[tuple[list[str], ParamGroup]] | None = None) -> torch.optim.Optimizer:
    """AdamW over ``param_groups`` (default: every parameter with ``requires_grad``).

    Each :class:`ParamGroup` becomes two optimizer groups: matrices with weight decay, the rest
    (biases, norms, scalars) without. Each carries its ``lr_scale``; the loop sets
    ``lr = lr_at(step) * lr_scale``.

    ``fused``: AdamW's fused kernel (``torch.optim.AdamW(fused=True)``: one kernel updates every
    parameter); ``None`` chooses it on CUDA (:func:`pali3_edu.speed.pick_fused_adamw`, decided by
    the device of the parameters), ``False`` keeps PyTorch's default implementation.
    """
    from pali3_edu.speed import adamw_kwargs

    named = _names if _names is not None else _group_names(unwrap(model), param_groups)
    params = dict(unwrap(model).named_parameters())
    groups = []
    for names, group in named:
        wd = cfg.weight_decay if group.weight_decay is None else group.weight_decay
        decay = [params[n] for n in names if params[n].ndim >= 2]
        no_decay = [params[n] for n in names if params[n].ndim < 2]
        for ps, w in ((decay, wd), (no_decay, 0.0)):
            if ps:
                groups.append({"params": ps, "weight_decay": w, "lr_scale": float(group.lr_scale),
                               "lr": cfg.lr * group.lr_scale})
    device = next(p for g in groups for p in g["params"]).device
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, **adamw_kwargs(device, fused))


# ---------------------------------------------------------------------------------------------
# Helpers of the loop
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


def _scalars(out: Any) -> dict[str, torch.Tensor]:
    """``loss_fn``'s result as ``{"loss": scalar tensor, other logged values...}``."""
    items = out if isinstance(out, dict) else {"loss": out}
    if "loss" not in items:
        raise ValueError(f"loss_fn returned a dict without 'loss' (keys: {sorted(items)}).")
    loss = items["loss"]
    if not isinstance(loss, torch.Tensor) or not loss.requires_grad:
        raise TypeError(
            "loss_fn must return the loss as a tensor that requires grad (computed from the "
            f"model's output), got {type(loss).__name__}"
            + ("" if not isinstance(loss, torch.Tensor) else " without grad")
            + ". Did it call .item() or run under torch.no_grad()?"
        )
    for k, v in items.items():
        if isinstance(v, torch.Tensor) and v.numel() != 1:
            raise ValueError(
                f"loss_fn returned {k!r} with shape {tuple(v.shape)}; return a scalar, e.g. "
                "loss.mean() (the loop averages over micro-batches and processes itself)."
            )
    if "tokens" in items:
        n = items["tokens"]
        if isinstance(n, bool) or not isinstance(n, (int, float, torch.Tensor)) or \
                (isinstance(n, (int, float)) and not (n >= 0 and math.isfinite(n))) or \
                (isinstance(n, torch.Tensor) and (n.is_complex() or n.dtype == torch.bool)):
            raise TypeError(
                f"loss_fn returned 'tokens'={n!r}: it must be the number of tokens the loss "
                "averaged over (an int >= 0 or a scalar tensor), e.g. (labels != -100).sum()."
            )
    return items


def _count(value: Any, device: torch.device) -> torch.Tensor:
    """A token count as a float32 scalar on ``device`` (counts are exact in float32 up to 2**24)."""
    if isinstance(value, torch.Tensor):
        return value.detach().reshape(()).to(device=device, dtype=torch.float32)
    return torch.tensor(float(value), device=device)


def _all_reduce_sum(t: torch.Tensor, distributed: bool) -> torch.Tensor:
    """Sum of ``t`` over all processes (``t`` itself with one process)."""
    if distributed:
        import torch.distributed as dist

        t = t.clone()
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def _log_dtype(device: torch.device) -> torch.dtype:
    """float64 for the logged token-weighted sums (``(loss * n) / n`` gives back ``loss`` exactly),
    float32 where the device has no float64 (Apple's MPS)."""
    return torch.float32 if device.type == "mps" else torch.float64


def _reduce_logs(sums: dict[str, torch.Tensor], grad_norm: torch.Tensor, device: torch.device,
                 distributed: bool, tokens: torch.Tensor | None = None) -> dict[str, float]:
    """The logged values averaged over processes. A value that only some processes report (e.g.
    the loss of one UL2 denoiser kind that happens to be absent from one rank's rows) is averaged
    over the processes that have it.

    ``tokens``: this process's token count of the step, for a token-mean loss; ``sums["loss"]``
    then holds this process's sum of ``loss * tokens`` over its micro-batches, and the logged
    loss is the global token mean (both summed over the processes, then divided), logged with
    the global count as ``tokens``."""
    keys = sorted({k for ks in all_gather_object(sorted(sums)) for k in ks}) if distributed else list(sums)
    out: dict[str, float] = {}
    if tokens is not None:
        weighted = torch.stack([sums["loss"].to(device), tokens.to(device, sums["loss"].dtype)])
        total_loss, total_tokens = _all_reduce_sum(weighted, distributed).tolist()
        out = {"loss": total_loss / total_tokens if total_tokens else float("nan"), "tokens": total_tokens}
        keys = [k for k in keys if k != "loss"]
    values = torch.stack([sums[k].float().to(device) if k in sums else torch.zeros((), device=device)
                          for k in keys] + [grad_norm.float().to(device)])
    present = torch.tensor([float(k in sums) for k in keys] + [1.0], device=device)
    if distributed:
        values, present = all_reduce_mean(values), all_reduce_mean(present)
    out.update(zip([*keys, "grad_norm"], (values / present.clamp_min(1e-12)).tolist()))
    return out


def _scale_gradients(params: list[nn.Parameter], factor: torch.Tensor) -> None:
    """Multiply every gradient by ``factor`` (a scalar tensor; no wait for the device). Works on
    FSDP's sharded gradients too, as ``clip_grad_norm_`` does."""
    grads = [p.grad for p in params if p.grad is not None]
    if grads:
        torch._foreach_mul_(grads, factor.to(grads[0].device))


def _jsonable(obj: Any) -> Any:
    return json.loads(json.dumps(obj))


def _flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(d, dict) and d:
        out: dict[str, Any] = {}
        for k, v in d.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: d}


def config_changes(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """``["lr: 0.001 -> 0.002", "meta.data.batch: 64 -> 32"]`` for two nested dicts."""
    a, b = _flatten(_jsonable(old)), _flatten(_jsonable(new))
    missing = "<absent>"
    return [f"{k}: {a.get(k, missing)!r} -> {b.get(k, missing)!r}"
            for k in sorted(set(a) | set(b)) if a.get(k, missing) != b.get(k, missing)]


def _resume_identity(cfg_dict: dict[str, Any], meta: Any) -> dict[str, Any]:
    cfg_dict = {k: v for k, v in cfg_dict.items() if k not in RESUME_IGNORES}
    return {**cfg_dict, "meta": meta}


def _probe_device(device: torch.device | str | None, info: DistInfo) -> torch.device:
    if device is None:
        return default_device(info)
    device = torch.device(device)
    if device.type == "cuda" and device.index is None and info.distributed:
        device = torch.device("cuda", info.local_rank)
    return device


def _rng_state(device: torch.device) -> dict[str, torch.Tensor]:
    state = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict[str, torch.Tensor], device: torch.device) -> None:
    torch.set_rng_state(state["cpu"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def _group_signature(param_groups: list[dict[str, Any]]) -> list[tuple]:
    return [(float(g.get("lr_scale", 1.0)), float(g["weight_decay"]), len(g["params"])) for g in param_groups]


LossFn = Callable[[nn.Module, Any], "torch.Tensor | dict[str, torch.Tensor]"]


# ---------------------------------------------------------------------------------------------
# The loop
# ---------------------------------------------------------------------------------------------


def train(
    model: nn.Module,
    loss_fn: LossFn,
    get_batch: Callable[[int], Any],
    cfg: TrainConfig,
    *,
    checkpoint: str | Path | None = None,
    device: torch.device | str | None = None,
    param_groups: list[ParamGroup] | None = None,
    params: Iterable[nn.Parameter] | None = None,
    progress: bool = True,
    stop_after: int | None = None,
    meta: dict[str, Any] | None = None,
    fused_adamw: bool | None = None,
) -> History:
    """Train ``model`` for ``cfg.steps`` optimizer steps and return the :class:`History`.

    - ``loss_fn(model, batch)`` returns the scalar loss, or a dict with ``"loss"`` and other
      scalars to log (e.g. per-denoiser losses). A token-mean loss adds ``"tokens"``, the number
      of tokens its ``"loss"`` averaged over (an int or a scalar tensor); the loop then weights
      it so that the step's loss is the mean over every token of the global batch (module
      docstring). With zero tokens its ``"loss"`` must still be finite (``sum / max(n, 1)``).
      Under ``ddp`` it receives the wrapped model: read attributes through :func:`unwrap`
      (``unwrap(model).config``).
    - ``get_batch(i)`` returns micro-batch ``i`` (``i = step * grad_accum + micro``) of the
      *global* batch: a tensor or a dict/tuple of tensors with the batch on dim 0. With ``W``
      processes, rank ``r`` trains on rows ``r*B/W .. (r+1)*B/W``.
    - ``checkpoint``: a folder (:mod:`pali3_edu.checkpoint`). If it exists, training resumes from
      it (refused if ``cfg`` or ``meta`` changed); it is written every ``cfg.checkpoint_every``
      steps and at the end, by rank 0.
    - ``param_groups``: what to train and how (:class:`ParamGroup`); default: every parameter
      with ``requires_grad``. ``params`` (deprecated) is one group of those parameters.
    - ``stop_after``: stop (and checkpoint) after this many steps in this call, as if the
      process were interrupted; the lessons use it to demonstrate resuming.
    - ``meta``: JSON-able description of the run (e.g. the recipe), stored in the checkpoint.
    - ``progress``: a progress bar and a one-line summary at the end (rank 0).
    - ``fused_adamw``: AdamW's fused kernel (:func:`make_optimizer`); ``None``: on CUDA only.

    Raises ``FloatingPointError`` (before updating the weights, without writing a checkpoint)
    when the loss or the gradient norm is NaN/inf.
    """
    if not isinstance(cfg, TrainConfig):
        raise TypeError(f"cfg must be a TrainConfig, got {type(cfg).__name__}.")
    if params is not None:
        if param_groups is not None:
            raise ValueError("Pass either param_groups or params (deprecated), not both.")
        param_groups = [ParamGroup(list(params))]
    if stop_after is not None and stop_after < 0:
        raise ValueError(f"stop_after must be None or >= 0, got {stop_after}.")
    if meta is not None:
        try:
            json.dumps(meta)
        except (TypeError, ValueError) as err:
            raise TypeError(f"meta must be JSON-able (dicts, lists, strings, numbers): {err}") from err

    info = setup_distributed(device)
    if cfg.parallel == "none" and info.distributed:
        raise ValueError(
            f"{info.world_size} processes are running but cfg.parallel='none': set "
            "TrainConfig(parallel='ddp') (or 'fsdp'), or start a single process."
        )
    if cfg.parallel != "none" and not info.distributed:
        print(f"train: parallel={cfg.parallel!r} with one process trains as parallel='none'.")
    parallel = cfg.parallel if info.distributed else "none"
    device = _probe_device(device, info)
    model.to(device)
    ckpt = Path(checkpoint) if checkpoint is not None else None
    if ckpt is not None:
        check_writable(ckpt)

    # ---- resume: weights go into the plain model before it is wrapped / sharded
    state: dict[str, Any] | None = None
    history = History()
    start = 0
    if ckpt is not None and (ckpt.exists() or ckpt.with_name(ckpt.name + ".prev").exists()):
        folder = resolve_checkpoint(ckpt)
        state = load_checkpoint(folder)
        changes = config_changes(
            _resume_identity(state.get("train_config") or {}, state.get("meta")),
            _resume_identity(asdict(cfg), meta),
        )
        if changes:
            raise CheckpointError(
                f"Checkpoint {folder} was written by a run with another configuration; resuming "
                f"would mix two runs. Changed: {', '.join(changes)}. Delete the folder {ckpt} to "
                "train from scratch, or use the checkpoint's settings."
            )
        check_fits(state["model"], unwrap(model), folder)
        unwrap(model).load_state_dict(state["model"])
        start = int(state.get("step", 0))
        history = History(**state.get("history", {}))
        history.resumed_from = start

    names = _group_names(unwrap(model), param_groups)
    wrapped = wrap_model(model, parallel, device)
    opt = make_optimizer(wrapped, cfg, fused=fused_adamw, _names=names)
    trainable = [p for g in opt.param_groups for p in g["params"]]
    torch.manual_seed(cfg.seed + info.rank)
    if state is not None:
        _load_optimizer(wrapped, opt, state, folder)
        rng = state.get("rng") or []
        if len(rng) == info.world_size:
            _set_rng_state(rng[info.rank], device)
        elif info.is_main:
            print(f"train: the checkpoint holds random states of {len(rng)} processes, this run has "
                  f"{info.world_size}; dropout masks after the resume differ from an uninterrupted run.")
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.amp_dtype == "fp16")
    if state is not None and state.get("grad_scaler"):
        scaler.load_state_dict(state["grad_scaler"])  # fp16: the loss scale it had reached

    def save(step: int) -> None:
        if ckpt is None:
            return
        weights, optim = _full_state(wrapped, opt, parallel)
        rng = all_gather_object(_rng_state(device)) if info.distributed else [_rng_state(device)]
        if info.is_main:
            save_checkpoint(
                ckpt, weights, optimizer=optim, step=step, data_position=step * cfg.grad_accum,
                history=asdict(history), train_config=asdict(cfg), meta=meta, rng=rng,
                world_size=info.world_size, grad_scaler=scaler.state_dict(),
            )
        barrier()

    end = cfg.steps if stop_after is None else min(cfg.steps, start + stop_after)
    bar = None
    if progress and info.is_main and end > start:
        from tqdm.auto import tqdm

        # mininterval + refresh=False below: a fast loop must not flood a notebook with
        # thousands of widget updates (nbval and browsers choke on them)
        bar = tqdm(total=cfg.steps, initial=start, desc="train", leave=False, mininterval=0.5)
    t0 = time.perf_counter()
    wrapped.train()
    accum = cfg.grad_accum
    try:
        for step in range(start, end):
            lr = lr_at(step, cfg)
            for group in opt.param_groups:
                group["lr"] = lr * group["lr_scale"]
            sums: dict[str, torch.Tensor] = {}
            tokens: torch.Tensor | None = None  # token-mean loss: this process's tokens of the step
            first: torch.Tensor | None = None  # the first micro-batch's tokens on all processes
            for micro in range(accum):
                batch = get_batch(step * accum + micro)
                rows = batch_rows(batch)
                if rows == 0:
                    raise ValueError(
                        f"get_batch({step * accum + micro}) returned an empty batch (0 rows); the "
                        "loss of nothing is NaN. Check the data source / batch size."
                    )
                batch = to_device(shard_batch(batch, info.rank, info.world_size), device)
                with gradient_sync(wrapped, parallel, enabled=micro == accum - 1):
                    with _autocast(device, cfg.amp_dtype):
                        out = _scalars(loss_fn(wrapped, batch))
                    if micro > 0 and ("tokens" in out) != (tokens is not None):
                        raise ValueError(
                            "loss_fn returned 'tokens' for some micro-batches and not for others; "
                            "a token-mean loss returns its count every time (see pali3_edu.train)."
                        )
                    if "tokens" in out:  # weight tokens / (tokens of the step), see the module docstring
                        count = _count(out["tokens"], device)
                        if first is None:  # the scale of the weights, the same on every process
                            first = _all_reduce_sum(count, info.distributed).clamp_min(1)
                        weight = count * info.world_size / (first * accum)
                        scaler.scale(out["loss"] * weight).backward()
                        tokens = count if tokens is None else tokens + count
                    else:
                        scaler.scale(out["loss"] / accum).backward()
                for k, v in out.items():
                    if hasattr(v, "full_tensor"):  # FSDP: a value read from a sharded parameter
                        v = v.full_tensor()
                    v = v.detach().float().reshape(()) if isinstance(v, torch.Tensor) else torch.tensor(float(v))
                    if k == "tokens":
                        continue
                    if k == "loss" and tokens is not None:  # summed; divided by all the tokens when logged
                        v = v.to(device, _log_dtype(device)) * count.to(_log_dtype(device))
                        sums[k] = sums[k] + v if k in sums else v
                    else:
                        sums[k] = sums[k] + v / accum if k in sums else v / accum
            scaler.unscale_(opt)  # no-op without fp16
            if tokens is not None and accum > 1:
                # the weights divided by accum times the first micro-batch's tokens: now by all of them
                _scale_gradients(trainable, first * accum / _all_reduce_sum(tokens, info.distributed))
            grad_norm = torch.nn.utils.clip_grad_norm_(
                trainable, cfg.grad_clip if cfg.grad_clip is not None else float("inf"))
            if hasattr(grad_norm, "full_tensor"):  # FSDP: a DTensor, replicated on every rank
                grad_norm = grad_norm.full_tensor()
            finite = torch.isfinite(sums["loss"])
            if cfg.amp_dtype != "fp16":  # fp16: the GradScaler skips steps with inf gradients
                finite = finite & torch.isfinite(grad_norm)
            if info.distributed:
                finite = all_reduce_max((~finite).float().to(device)) == 0
            if not bool(finite):  # the one host sync of the step
                loss = sums["loss"] if tokens is None else sums["loss"] / tokens.clamp_min(1)
                raise _non_finite(step, start, state, ckpt, loss, grad_norm, cfg)
            scaler.step(opt)
            scaler.update()
            opt.zero_grad(set_to_none=True)
            last = step == cfg.steps - 1
            if step % cfg.log_every == 0 or last:
                logged = _reduce_logs(sums, grad_norm, device, info.distributed, tokens)
                history.rows.append({"step": float(step), "lr": lr, **logged})
                if bar is not None:
                    bar.set_postfix(loss=f"{logged['loss']:.3f}", refresh=False)
            if bar is not None:
                bar.update(1)
            if cfg.checkpoint_every and (step + 1) % cfg.checkpoint_every == 0 and step + 1 < end:
                history.seconds += time.perf_counter() - t0
                t0 = time.perf_counter()
                save(step + 1)
    finally:
        if bar is not None:
            bar.close()
    history.seconds += time.perf_counter() - t0
    if end > start:
        save(end)
    wrapped.eval()
    if progress and info.is_main:
        print(_summary(history, start, end, cfg.steps))
    return history


def _summary(history: History, start: int, end: int, total: int) -> str:
    loss = f", loss {history.losses[-1]:.3f}" if history.losses else ""
    if end == start:
        return f"train: {end}/{total} steps (already trained; loaded from the checkpoint){loss}"
    stopped = " (stopped early; run again to resume)" if end < total else ""
    resumed = f", resumed at {start}" if start else ""
    return f"train: {end}/{total} steps{stopped}{resumed}{loss}, {history.seconds:.0f} s"


def _non_finite(step: int, start: int, state: Any, ckpt: Path | None, loss: torch.Tensor,
                grad_norm: torch.Tensor, cfg: TrainConfig) -> FloatingPointError:
    values = f"loss {float(loss):.4g}, gradient norm {float(grad_norm):.4g}"
    kept = (f" Nothing was updated and no checkpoint was written; the last good one at {ckpt} is kept."
            if ckpt is not None else " Nothing was updated.")
    if state is not None and step == start:
        return FloatingPointError(
            f"Not finite at step {step}, the first step after resuming ({values}). The checkpoint "
            f"at {state.get('path', ckpt)} may be bad: delete it and train again."
        )
    hint = (" amp_dtype='fp16' overflows T5-style models: use 'bf16' or None (fp32)."
            if cfg.amp_dtype == "fp16" else " In fp16 (amp_dtype='fp16') T5-style models overflow; use 'bf16'.")
    return FloatingPointError(
        f"Not finite at step {step} ({values}).{kept} Lower the learning rate (cfg.lr={cfg.lr:g}) "
        f"or check the inputs for NaN/inf.{hint}"
    )


def _full_state(model: nn.Module, opt: torch.optim.Optimizer, parallel: str) -> tuple[dict, dict]:
    """Full (unsharded) weights and optimizer state on CPU, keyed by parameter name; under FSDP
    every rank takes part in gathering them and rank 0 gets them."""
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_model_state_dict,
        get_optimizer_state_dict,
    )

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    if parallel == "fsdp":
        weights = get_model_state_dict(model, options=options)
    else:
        weights = unwrap(model).state_dict()
    optim = get_optimizer_state_dict(model, opt, options=options)
    return weights, optim


def _load_optimizer(model: nn.Module, opt: torch.optim.Optimizer, state: dict[str, Any], folder: Path) -> None:
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        set_optimizer_state_dict,
    )

    saved = state.get("optimizer")
    if not isinstance(saved, dict) or "param_groups" not in saved:
        raise CheckpointError(f"Checkpoint {folder} has no optimizer state. Delete the folder and train again.")
    old, new = _group_signature(saved["param_groups"]), _group_signature(opt.param_groups)
    if old != new:
        raise CheckpointError(
            f"Checkpoint {folder} was trained with other parameter groups (lr_scale, weight decay, "
            f"count): {old} -> {new}. Use the same param_groups, or delete the folder and train again."
        )
    try:
        set_optimizer_state_dict(model, opt, saved, options=StateDictOptions(full_state_dict=True))
    except (KeyError, ValueError, RuntimeError) as err:
        raise CheckpointError(
            f"The optimizer state in {folder} does not fit the parameters being trained ({err}). "
            "Train the same parameters, or delete the folder and train again."
        ) from err


if __name__ == "__main__":  # python -m pali3_edu.train --recipe ... (see pali3_edu.run)
    from pali3_edu.run import main
    raise SystemExit(main())
