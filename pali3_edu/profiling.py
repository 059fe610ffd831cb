"""Measure what a piece of code costs: wall time and peak memory, on CPU or on a GPU.

Every helper takes a function of no arguments (wrap your call in a ``lambda`` or use
:func:`forward_backward`) and runs it for you::

    from pali3_edu.profiling import forward_backward, memory_trace, peak_memory, time_call

    step = forward_backward(sigmoid_loss, x, y, t_prime, bias)   # one forward + backward
    seconds = time_call(step)                                    # best of 3, after a warm-up
    peak = peak_memory(step)                                     # bytes allocated at the peak
    trace = memory_trace(step)                                   # CPU: the whole curve, op by op
    plt.plot([b / 2**20 for b in trace.allocated_bytes])

Rules the helpers follow, so that two measurements can be compared:

- **Same run, same machine.** Compare timings taken side by side in one process; a number
  typed into a text from another machine (or another load) says little.
- **GPU work is asynchronous.** On CUDA the helpers call ``torch.cuda.synchronize`` before
  reading the clock or the memory counters; on CPU there is nothing to wait for.
- **Peak memory is relative.** :func:`peak_memory` reports what the call allocated on top of
  what already existed. On CUDA it reads ``torch.cuda.max_memory_allocated``; on CPU it replays
  the allocations and frees that ``torch.profiler`` recorded (:func:`memory_trace`).
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch

__all__ = ["MemoryTrace", "forward_backward", "memory_trace", "peak_memory", "synchronize", "time_call"]


def synchronize(device: str | torch.device = "cpu") -> None:
    """Wait until the work queued on ``device`` has finished (a no-op on CPU)."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def time_call(
    fn: Callable[[], object], device: str | torch.device = "cpu", repeats: int = 3, warmup: int = 1
) -> float:
    """Best wall time of ``repeats`` calls of ``fn()``, in seconds, after ``warmup`` untimed calls.

    The best (not the mean) is the least disturbed by other work on the machine; the warm-up
    calls pay for one-off costs (memory allocation, kernel selection).
    """
    if repeats < 1 or warmup < 0:
        raise ValueError(f"Need repeats >= 1 and warmup >= 0, got repeats={repeats}, warmup={warmup}.")
    for _ in range(warmup):
        fn()
    synchronize(device)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        synchronize(device)
        best = min(best, time.perf_counter() - start)
    return best


@dataclass
class MemoryTrace:
    """The CPU memory curve of one call (see :func:`memory_trace`).

    - ``times_us``: start time of each recorded op, in µs from the first one;
    - ``allocated_bytes``: bytes allocated by the call so far, after that op (the running sum
      of each op's own allocations minus its frees).
    """

    times_us: list[float]
    allocated_bytes: list[int]

    @property
    def peak_bytes(self) -> int:
        """The highest point of the curve (0 for a call that allocated nothing)."""
        return max(self.allocated_bytes, default=0)


@contextlib.contextmanager
def _quiet_stderr() -> Iterator[None]:
    """Silence C++-level stderr (the profiler backend prints start/stop lines) for a moment."""
    fd = 2  # the process's stderr, where C++ writes (also under Jupyter, which only wraps sys.stderr)
    sys.stderr.flush()
    try:
        saved = os.dup(fd)
    except OSError:  # no stderr at all: nothing to silence
        yield
        return
    with open(os.devnull, "w") as devnull:
        os.dup2(devnull.fileno(), fd)
        try:
            yield
        finally:
            os.dup2(saved, fd)
            os.close(saved)


def memory_trace(fn: Callable[[], object]) -> MemoryTrace:
    """Run ``fn()`` under the CPU profiler and return its memory curve, op by op.

    Each op's own allocations minus frees are summed in the order the ops *finish* (an op's
    frees are recorded at its end; ordering by start time would count some frees before the
    allocations they undo and dip below zero): the tensors the call created and released on CPU.
    """
    from torch.profiler import ProfilerActivity, profile

    with _quiet_stderr(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = sorted(prof.events(), key=lambda e: e.time_range.end)
    t0 = min((e.time_range.start for e in events), default=0)
    times, totals, current = [], [], 0
    for e in events:
        current += e.self_cpu_memory_usage
        times.append(float(e.time_range.end - t0))
        totals.append(current)
    return MemoryTrace(times_us=times, allocated_bytes=totals)


def peak_memory(fn: Callable[[], object], device: str | torch.device = "cpu") -> int:
    """Peak bytes allocated while ``fn()`` runs, above what was allocated before it started.

    CUDA: ``torch.cuda.max_memory_allocated`` (exact). CPU: the peak of :func:`memory_trace`.
    """
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        fn()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - before
    if device.type != "cpu":
        raise ValueError(f"peak_memory measures 'cpu' or 'cuda' devices, got {device.type!r}.")
    return memory_trace(fn).peak_bytes


def forward_backward(loss_fn: Callable[..., torch.Tensor], *inputs: torch.Tensor) -> Callable[[], None]:
    """A function of no arguments that runs ``loss_fn(*inputs).backward()`` once.

    The gradients of ``inputs`` are reset to ``None`` first, so every call does the same work
    (nothing accumulates). Inputs that should receive gradients need ``requires_grad=True``.
    """
    tensors: Sequence[torch.Tensor] = inputs

    def step() -> None:
        for t in tensors:
            t.grad = None
        loss_fn(*tensors).backward()

    return step
