"""Data parallelism for the training loop: one process per device, each on its share of the batch.

``torchrun --nproc_per_node=N script.py`` starts N copies of the same script. Each copy reads
who it is from the environment (``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``) and joins a *process
group* so the copies can exchange tensors. :func:`pali3_edu.train.train` then

- gives every rank a contiguous slice of the global batch (:func:`shard_batch`),
- wraps the model so gradients are averaged over ranks after ``backward``: ``"ddp"``
  (:class:`~torch.nn.parallel.DistributedDataParallel`, every rank holds all weights) or
  ``"fsdp"`` (FSDP2 :func:`~torch.distributed.fsdp.fully_shard`, every rank holds a shard of
  each weight, gathered just in time for the forward and backward pass),
- skips that averaging on all but the last micro-batch of an accumulated step
  (:func:`gradient_sync`), since only the sum of all micro-batches is needed.

The result is the model one process would train on the whole batch, only faster:

- a loss that is a mean over rows (a regression, one number per example): every rank holds the
  same number of rows, so the average of the ranks' gradients is the gradient of the mean over
  the whole batch;
- a loss that is a mean over tokens (UL2's targets, PaLI-3's answer tokens): ranks hold
  different numbers of tokens, and the average of their means would weigh a token on a rank
  with few tokens more than one on a rank with many. Such a ``loss_fn`` returns its token count
  too, and :func:`pali3_edu.train.train` weights each rank's (and micro-batch's) mean by its
  share of the step's tokens before this averaging, so the step's loss is the mean over every
  token of the global batch;
- SigLIP's sigmoid loss pairs every image with every text, also those of other ranks: the
  SigLIP stage's loss scores each rank's images against every text of the *global* batch
  (:func:`pali3_edu.siglip.distributed_sigmoid_loss`), not only against its own share.

Under ``"fsdp"`` the 0-d parameters (SigLIP's temperature and bias) cannot be sharded: they stay
whole on every rank, and :func:`gradient_sync` averages their gradients itself.

With one process (``WORLD_SIZE`` unset) everything here is a no-op.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.distributed as dist
from torch import nn

Parallel = Literal["none", "ddp", "fsdp"]


@dataclass(frozen=True)
class DistInfo:
    """Who this process is: ``rank`` (0..world_size-1), ``local_rank`` (device index on this
    machine) and ``world_size`` (number of processes)."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        """Rank 0 writes checkpoints, prints and shows the progress bar."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def dist_info() -> DistInfo:
    """Rank, local rank and world size: from the process group if one is running, else from
    the ``torchrun`` environment variables, else a single process."""
    if dist.is_available() and dist.is_initialized():
        local = int(os.environ.get("LOCAL_RANK", dist.get_rank()))
        return DistInfo(dist.get_rank(), local, dist.get_world_size())
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    return DistInfo(rank, int(os.environ.get("LOCAL_RANK", rank)), world)


def setup_distributed(device: torch.device | str | None = None) -> DistInfo:
    """Join the process group when started by ``torchrun`` with more than one process (``nccl``
    on CUDA, ``gloo`` on CPU) unless it is already initialised. Returns :func:`dist_info`."""
    info = dist_info()
    if info.world_size > 1 and not dist.is_initialized():
        use_cuda = torch.cuda.is_available() and (device is None or torch.device(device).type == "cuda")
        if use_cuda:
            torch.cuda.set_device(info.local_rank)
        dist.init_process_group("nccl" if use_cuda else "gloo")
        info = dist_info()
    return info


def default_device(info: DistInfo) -> torch.device:
    """``cuda:<local rank>`` under ``torchrun`` on a GPU machine, else :func:`pick_device`."""
    from pali3_edu.utils import pick_device

    device = pick_device()
    if device.type == "cuda" and info.distributed:
        return torch.device("cuda", info.local_rank)
    return device


def shard_batch(batch: Any, rank: int, world_size: int) -> Any:
    """Rows ``rank*B/W .. (rank+1)*B/W`` of every tensor in ``batch`` (dim 0 is the batch).

    ``batch`` is a tensor or a dict/list/tuple of them; non-tensors are passed through.
    """
    if world_size == 1:
        return batch
    if isinstance(batch, torch.Tensor):
        rows = batch.shape[0]
        if rows % world_size:
            raise ValueError(
                f"The global batch has {rows} rows, which {world_size} processes cannot share "
                f"equally. Use a batch size divisible by {world_size}."
            )
        share = rows // world_size
        return batch[rank * share:(rank + 1) * share]
    if isinstance(batch, dict):
        return {k: shard_batch(v, rank, world_size) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(shard_batch(v, rank, world_size) for v in batch)
    return batch


def batch_rows(batch: Any) -> int | None:
    """Number of rows (dim 0) of the first tensor found in ``batch`` (None if it holds none)."""
    if isinstance(batch, torch.Tensor):
        return batch.shape[0] if batch.ndim else None
    values = batch.values() if isinstance(batch, dict) else batch if isinstance(batch, (list, tuple)) else ()
    for v in values:
        rows = batch_rows(v)
        if rows is not None:
            return rows
    return None


def wrap_model(model: nn.Module, parallel: Parallel, device: torch.device) -> nn.Module:
    """``model`` ready for data parallelism (already on ``device``).

    ``"ddp"`` returns a :class:`~torch.nn.parallel.DistributedDataParallel` around it;
    ``"fsdp"`` shards each child (or each module of ``model.fsdp_units()`` when the model
    defines it, e.g. the transformer blocks) and then the root with FSDP2, and returns
    ``model`` itself. ``"none"`` returns ``model``.

    Under ``"fsdp"`` the 0-d parameters (a scalar has no dimension to cut into shards, and
    ``fully_shard`` refuses it; SigLIP's ``t_prime`` and ``bias`` are two) are left out of the
    sharding (``ignored_params``): every rank keeps the whole value, as a plain tensor, and
    FSDP does not average their gradients. :func:`gradient_sync` does, when it syncs
    (:func:`average_replicated_gradients`); a loop that calls ``backward`` without it calls
    that function itself. Parameter names, shapes and the state dict stay the same.
    """
    if parallel == "none":
        return model
    if not (dist.is_available() and dist.is_initialized()):
        raise RuntimeError(
            f"parallel={parallel!r} needs a process group: start the script with "
            "`torchrun --nproc_per_node=N script.py` (or use parallel='none')."
        )
    if parallel == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        ids = [device.index] if device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=ids)
    if parallel == "fsdp":
        from torch.distributed.fsdp import fully_shard

        # 0-d parameters (SigLIP's temperature t' and bias b) have no dim 0 to shard, and
        # fully_shard refuses them: they stay whole on every rank (see average_replicated_gradients)
        replicated = {p for p in model.parameters() if p.ndim == 0}
        units = list(model.fsdp_units()) if hasattr(model, "fsdp_units") else list(model.children())
        for unit in units:
            if any(p.numel() and p not in replicated for p in unit.parameters()):
                fully_shard(unit, ignored_params=replicated)
        fully_shard(model, ignored_params=replicated)
        return model
    raise ValueError(f"parallel must be 'none', 'ddp' or 'fsdp', got {parallel!r}")


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside a DDP wrapper (FSDP2 shards the module in place, so it is itself).

    Loss functions receive the wrapped model; call ``unwrap(model).config`` to read attributes.
    """
    from torch.nn.parallel import DistributedDataParallel

    return model.module if isinstance(model, DistributedDataParallel) else model


@contextmanager
def gradient_sync(model: nn.Module, parallel: Parallel, enabled: bool) -> Iterator[None]:
    """Inside this block, ``backward`` averages gradients over ranks only if ``enabled``.

    The loop disables it on all but the last micro-batch of an accumulated step: gradients of
    the earlier micro-batches just add up locally, and one exchange at the end carries them all.
    Under ``"fsdp"`` a synced block ends by averaging the gradients of the parameters FSDP left
    whole (:func:`average_replicated_gradients`), so that every gradient is averaged.
    """
    if parallel == "ddp" and not enabled:
        with model.no_sync():
            yield
    elif parallel == "fsdp":
        model.set_requires_gradient_sync(enabled)
        yield  # (an exception inside the block ends it here, on this rank alone: no exchange)
        if enabled:
            average_replicated_gradients(model)
    else:
        with nullcontext():
            yield


def average_replicated_gradients(model: nn.Module) -> None:
    """Average over ranks the gradients of the parameters an FSDP2 model holds whole (not
    sharded: the 0-d ones :func:`wrap_model` leaves out), as FSDP averages the sharded ones.

    One ``all_reduce`` carries them all, with a flag per parameter: a parameter that has no
    gradient on some ranks counts as zero there, one that has none on any rank keeps ``None``.
    Every rank must call it at the same point (after the same ``backward``). The host waits
    for the device only when a gradient is missing. Nothing with one process or a model
    without such parameters.
    """
    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return
    from torch.distributed.tensor import DTensor

    params = [p for p in model.parameters() if p.requires_grad and not isinstance(p, DTensor)]
    if not params:
        return
    device = params[0].device
    dtype = functools.reduce(torch.promote_types, [p.dtype for p in params], torch.float32)
    grads = [p.grad.detach().reshape(-1).to(device, dtype) if p.grad is not None
             else torch.zeros(p.numel(), device=device, dtype=dtype) for p in params]
    flags = [torch.full((1,), float(p.grad is not None), device=device, dtype=dtype) for p in params]
    flat = torch.cat([*grads, *flags])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    flat /= dist.get_world_size()
    missing = any(p.grad is None for p in params)
    had = (flat[-len(params):] > 0).tolist() if missing else [True] * len(params)
    start = 0
    for p, has_grad in zip(params, had):
        mean = flat[start:start + p.numel()].reshape(p.shape)
        start += p.numel()
        if p.grad is not None:
            p.grad.copy_(mean)
        elif has_grad:
            p.grad = mean.to(p.dtype).clone()


def all_reduce_mean(t: torch.Tensor) -> torch.Tensor:
    """Mean of ``t`` over all ranks (``t`` itself with one process)."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        t = t.clone()
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        t /= dist.get_world_size()
    return t


def all_reduce_max(t: torch.Tensor) -> torch.Tensor:
    """Max of ``t`` over all ranks (``t`` itself with one process)."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        t = t.clone()
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return t


def barrier() -> None:
    """Wait for every rank (nothing with one process)."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """``obj`` from rank ``src`` on every rank (``obj`` itself with one process)."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        box = [obj]
        dist.broadcast_object_list(box, src=src)
        return box[0]
    return obj


def all_gather_object(obj: Any) -> list[Any]:
    """``[obj of rank 0, obj of rank 1, ...]`` (``[obj]`` with one process)."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        out: list[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(out, obj)
        return out
    return [obj]
