"""ShapesWorld generation speed: ``python -m pali3_edu.bench data [--size 64] [--num 2000]``.

Prints scenes per second, on one core, for: the scene alone (layout + texts), scene + render,
scene + render + masks, and full materialisation into a ``datasets.Dataset`` (PNG encoding
included, no cache). Imports are warmed up before timing.
"""

from __future__ import annotations

import argparse
import time

from pali3_edu.bench.__main__ import positive_int, probability
from pali3_edu.data.shapesworld import (
    ShapesWorldConfig,
    build_dataset,
    generate_scene,
    render,
    render_masks,
    text_corpus,
)


def _rate(fn, n: int, repeats: int = 3) -> float:
    """Best of ``repeats`` runs (other processes on the machine only ever slow a run down)."""
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn(n)
        best = min(best, time.perf_counter() - t0)
    return n / best


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m pali3_edu.bench data", description=__doc__)
    parser.add_argument("--size", type=positive_int, default=64,
                        help="image size in pixels (32..448)")
    parser.add_argument("--num", type=positive_int, default=2000, help="scenes per measurement")
    parser.add_argument("--max-objects", type=positive_int, default=3)
    parser.add_argument("--word-prob", type=probability, default=0.3)
    args = parser.parse_args([] if argv is None else argv)
    try:
        cfg = ShapesWorldConfig(image_size=args.size, max_objects=args.max_objects,
                                word_prob=args.word_prob)
    except ValueError as e:  # e.g. an image size outside 32..448
        parser.error(str(e))
    build_dataset("train", 8, cfg)  # warm up imports (datasets, pyarrow) and font caches

    rows = [
        ("scene (layout + texts)", _rate(lambda n: [generate_scene(s, cfg) for s in range(n)], args.num)),
        ("scene + render", _rate(lambda n: [render(generate_scene(s, cfg)) for s in range(n)], args.num)),
        ("scene + render + masks", _rate(
            lambda n: [render_masks(generate_scene(s, cfg)) for s in range(n)], args.num)),
        ("full datasets.Dataset", _rate(lambda n: build_dataset("train", n, cfg), args.num)),
        ("text_corpus (no images)", _rate(lambda n: text_corpus(n), args.num)),
    ]
    print(f"ShapesWorld @ {args.size} px, 1..{args.max_objects} objects, word_prob={args.word_prob}, "
          f"{args.num} scenes per row, one core")
    print(f"{'what':<26}{'scenes/s':>12}")
    for name, rate in rows:
        print(f"{name:<26}{rate:>12,.0f}")


if __name__ == "__main__":
    main()
