"""Full vs chunked sigmoid loss: peak memory and time of forward + backward, side by side.

``python -m pali3_edu.bench siglip [--batch 256 1024 4096] [--dim 256] [--chunks 8] [--device cpu]``

Peak memory: on CUDA ``torch.cuda.max_memory_allocated`` (exact); on CPU the running total of the
allocations and frees that ``torch.profiler`` records per op, in the order the ops ran
(:func:`memory_trace`): memory allocated *inside* the measured call, above what already existed.
Speed-ups are ratios measured in the same run, never against numbers from another machine.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F

from pali3_edu.siglip import chunked_sigmoid_loss, sigmoid_loss

LossFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def make_inputs(batch: int, dim: int, device: str | torch.device = "cpu", seed: int = 0):
    """Random unit embeddings ``(batch, dim)`` ×2 and ``t' = log 10``, ``b = −10``, all requiring grad."""
    g = torch.Generator().manual_seed(seed)
    x = F.normalize(torch.randn(batch, dim, generator=g), dim=-1).to(device).requires_grad_()
    y = F.normalize(torch.randn(batch, dim, generator=g), dim=-1).to(device).requires_grad_()
    t_prime = torch.tensor(2.302585, device=device, requires_grad=True)
    bias = torch.tensor(-10.0, device=device, requires_grad=True)
    return x, y, t_prime, bias


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


def memory_trace(fn: Callable[[], object]) -> tuple[list[float], list[int]]:
    """Run ``fn()`` under the CPU profiler; return (op start times in µs, bytes allocated so far).

    The curve is the running sum of each op's own allocations minus frees, ops sorted by start
    time: a faithful picture of the tensors created and released by the call on CPU.
    """
    from torch.profiler import ProfilerActivity, profile

    with _quiet_stderr(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = sorted(prof.events(), key=lambda e: e.time_range.start)
    t0 = events[0].time_range.start if events else 0
    times, totals, current = [], [], 0
    for e in events:
        current += e.self_cpu_memory_usage
        times.append(float(e.time_range.start - t0))
        totals.append(current)
    return times, totals


def peak_memory(fn: Callable[[], object], device: str | torch.device = "cpu") -> int:
    """Peak bytes allocated while ``fn()`` runs (above what was allocated before)."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        fn()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - before
    return max(memory_trace(fn)[1], default=0)


def time_call(fn: Callable[[], object], device: str | torch.device = "cpu", repeats: int = 3) -> float:
    """Best-of-``repeats`` wall time in seconds (one warm-up call first)."""
    sync = torch.cuda.synchronize if torch.device(device).type == "cuda" else (lambda: None)
    fn()
    sync()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync()
        best = min(best, time.perf_counter() - start)
    return best


def fwd_bwd(loss_fn: LossFn, inputs) -> Callable[[], None]:
    def step() -> None:
        for t in inputs:
            t.grad = None
        loss_fn(*inputs).backward()

    return step


def compare(batches: list[int], dim: int = 256, chunks: int = 8, device: str = "cpu",
            timing: bool = True) -> list[dict]:
    """One row per batch size: peak MiB (and ms unless ``timing=False``) of the full and the chunked
    loss, forward + backward, and their ratios."""
    rows = []
    chunked: LossFn = lambda *a: chunked_sigmoid_loss(*a, chunks=chunks)  # noqa: E731
    for b in batches:
        inputs = make_inputs(b, dim, device)
        row: dict = {"batch": b}
        for name, fn in (("full", sigmoid_loss), ("chunked", chunked)):
            step = fwd_bwd(fn, inputs)
            row[f"{name}_mib"] = peak_memory(step, device) / 2**20
            if timing:
                row[f"{name}_ms"] = time_call(step, device) * 1e3
        row["memory_ratio"] = row["full_mib"] / max(row["chunked_mib"], 1e-9)
        if timing:
            row["time_ratio"] = row["chunked_ms"] / row["full_ms"]
        rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m pali3_edu.bench siglip", description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, nargs="+", default=[256, 1024, 4096])
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--chunks", type=int, default=8)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    print(f"sigmoid loss, forward + backward, dim {args.dim}, {args.chunks} chunks, device {args.device}")
    print(f"{'batch':>6} {'full MiB':>9} {'chunked MiB':>12} {'mem full/chunked':>17} "
          f"{'full ms':>8} {'chunked ms':>11} {'time chunked/full':>18}")
    for r in compare(args.batch, args.dim, args.chunks, args.device):
        print(f"{r['batch']:>6} {r['full_mib']:>9.1f} {r['chunked_mib']:>12.1f} {r['memory_ratio']:>16.1f}x "
              f"{r['full_ms']:>8.1f} {r['chunked_ms']:>11.1f} {r['time_ratio']:>17.2f}x")


if __name__ == "__main__":
    main()
