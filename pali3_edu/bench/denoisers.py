"""UL2 span-corruption throughput against the training step it has to feed.

``python -m pali3_edu.bench denoisers [--batch 32] [--length 96] [--seconds 3]``

Builds UL2 batches (mixture of the seven paper denoisers) from random token chunks and times
them, then times optimizer steps of the ``tiny-cpu`` encoder-decoder on the same batches. The
data pipeline never starves training when its examples/s is well above the model's.
"""

from __future__ import annotations

import argparse
import time

import torch

from pali3_edu.bench.__main__ import positive_float, positive_int
from pali3_edu.config import get_config
from pali3_edu.tokens import EOS_ID, MODE_TOKENS, NUM_SENTINELS, PAD_ID
from pali3_edu.ul2 import UL2Mixture, ul2_batch


class _Ids:
    """The special ids of the course tokenizer's layout, without training a SentencePiece model.

    The top of a ``vocab_size`` vocabulary holds the mode tokens ``[NLU] [NLG] [S2S]`` (in that
    order), then the sentinels ``<extra_id_99>`` … ``<extra_id_0>`` (``<extra_id_0>`` highest).
    """

    def __init__(self, vocab_size: int) -> None:
        self.vocab_size, self.pad_id, self.eos_id = vocab_size, PAD_ID, EOS_ID
        self.modes = tuple(MODE_TOKENS.values())
        self.mode_start = vocab_size - NUM_SENTINELS - len(self.modes)

    def sentinel_id(self, i: int) -> int:
        if not 0 <= i < NUM_SENTINELS:
            raise ValueError(f"sentinel {i} out of range: there are {NUM_SENTINELS}")
        return self.vocab_size - 1 - i

    def mode_id(self, mode: str) -> int:
        return self.mode_start + self.modes.index(mode)


def _rate(fn, seconds: float) -> tuple[float, int]:
    """Calls per second of ``fn`` over about ``seconds`` (after one warm-up call)."""
    fn()
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds or n < 3:
        fn()
        n += 1
    return n / (time.perf_counter() - t0), n


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m pali3_edu.bench denoisers",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=positive_int, default=32)
    parser.add_argument("--length", type=positive_int, default=96, help="raw tokens per example")
    parser.add_argument("--seconds", type=positive_float, default=3.0,
                        help="time per measurement")
    parser.add_argument("--preset", default="tiny-cpu", help="encdec preset for the model step")
    args = parser.parse_args(argv)
    if args.length < 2:
        parser.error("--length must be at least 2 (span corruption hides some tokens, keeps some)")

    from pali3_edu.encdec import EncoderDecoder  # imported late: the data part does not need it

    try:
        cfg = get_config("encdec", args.preset)
    except ValueError as e:
        parser.error(str(e))
    ids = _Ids(cfg.vocab_size)
    g = torch.Generator().manual_seed(0)
    mixture = UL2Mixture()
    chunks = torch.randint(3, ids.mode_start, (args.batch, args.length), generator=g)
    max_in, max_out = args.length + 2, args.length + 1

    def make_batch() -> dict[str, torch.Tensor]:
        return ul2_batch(list(chunks), mixture, ids, g, max_in, max_out)

    data_rate, _ = _rate(make_batch, args.seconds)

    model = EncoderDecoder(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    batch = make_batch()
    batch.pop("denoiser")

    def step() -> None:
        loss = model(**batch).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    step_rate, n_steps = _rate(step, args.seconds)
    ex_data, ex_model = data_rate * args.batch, step_rate * args.batch
    print(f"UL2 denoisers: batch {args.batch} × {args.length} raw tokens, mixture "
          f"{ {k: round(v, 2) for k, v in mixture.kind_shares().items()} }, "
          f"{torch.get_num_threads()} threads")
    print(f"{'':<34}{'batches/s':>12}{'examples/s':>12}")
    print(f"{'ul2_batch (data pipeline)':<34}{data_rate:>12.1f}{ex_data:>12.0f}")
    print(f"{'train step ' + args.preset + ' encdec':<34}{step_rate:>12.1f}{ex_model:>12.0f}")
    verdict = "never starves training" if ex_data > 2 * ex_model else "may starve training"
    print(f"data / model = {ex_data / ex_model:.1f}×  → the pipeline {verdict} "
          f"(single process, no workers)")


if __name__ == "__main__":
    main()
