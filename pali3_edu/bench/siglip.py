"""Full vs chunked sigmoid loss: peak memory and time of forward + backward, side by side.

``python -m pali3_edu.bench siglip [--batch 256 1024 4096] [--dim 256] [--chunks 8] [--device cpu]``

Time and peak memory come from :mod:`pali3_edu.profiling` (CUDA memory counters on a GPU, the
CPU profiler's allocation record on CPU). Speed-ups are ratios measured in the same run, never
against numbers from another machine.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import torch
import torch.nn.functional as F

from pali3_edu.profiling import forward_backward, peak_memory, time_call
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
            step = forward_backward(fn, *inputs)
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
