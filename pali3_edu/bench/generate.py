"""KV-cache speed-up of decoding: ``python -m pali3_edu.bench generate [options]``.

For each preset and output length, the same greedy generation runs with and without the KV
cache, side by side in one process, and the table reports the ratio of the two times. EOS is
banned (``min_new_tokens = max_new_tokens``) so both runs produce exactly that many tokens, and
the outputs are checked to be identical.

Without the cache, step ``t`` re-runs the decoder over all ``t`` previous tokens (and re-projects
the encoder states for cross-attention), so the work grows quadratically with the output length;
with it, each step processes one token. The speed-up therefore grows with the length.
"""

from __future__ import annotations

import argparse

import torch

from pali3_edu.config import get_config
from pali3_edu.encdec import EncoderDecoder
from pali3_edu.generate import generate
from pali3_edu.profiling import time_call
from pali3_edu.utils import pick_device


def measure_speedup(
    model: EncoderDecoder, input_ids: torch.Tensor, new_tokens: int, repeats: int = 1
) -> dict[str, float]:
    """Times with and without the cache for one output length: ``{"cached_s", "uncached_s",
    "speedup"}`` (best of ``repeats``, via :func:`pali3_edu.profiling.time_call`). Raises if the
    two outputs differ (they must be token-for-token equal)."""

    def run(use_cache: bool) -> torch.Tensor:
        return generate(model, input_ids, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                        use_cache=use_cache)

    if not torch.equal(run(True), run(False)):  # also the warm-up (allocations, kernels)
        raise AssertionError("cached and uncached generation disagree")
    device = input_ids.device
    cached = time_call(lambda: run(True), device, repeats=repeats, warmup=0)
    uncached = time_call(lambda: run(False), device, repeats=repeats, warmup=0)
    return {"cached_s": cached, "uncached_s": uncached, "speedup": uncached / cached}


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(prog="python -m pali3_edu.bench generate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", nargs="+", default=["tiny-cpu", "small"])
    parser.add_argument("--new-tokens", nargs="+", type=int, default=[64, 256])
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--source-length", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=1, help="best of N timings")
    parser.add_argument("--device", default=None, help="cpu, cuda, mps (default: pick_device())")
    args = parser.parse_args(argv)

    device = pick_device(args.device)
    torch.manual_seed(0)
    rows = []
    print(f"KV-cache speed-up, greedy decoding, batch {args.batch}, source {args.source_length} "
          f"tokens, device {device}, {torch.get_num_threads()} CPU threads")
    print(f"{'preset':<10} {'new tokens':>10} {'no cache (s)':>13} {'cache (s)':>10} {'speed-up':>9}")
    for preset in args.presets:
        model = EncoderDecoder(get_config("encdec", preset)).to(device).eval()
        ids = torch.randint(2, model.cfg.vocab_size, (args.batch, args.source_length), device=device)
        for n in args.new_tokens:
            r = measure_speedup(model, ids, n, args.repeats)
            rows.append({"preset": preset, "new_tokens": n, **r})
            print(f"{preset:<10} {n:>10} {r['uncached_s']:>13.3f} {r['cached_s']:>10.3f} "
                  f"{r['speedup']:>8.1f}x", flush=True)
    return rows


if __name__ == "__main__":
    main()
