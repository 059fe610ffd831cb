"""Run a benchmark: ``python -m pali3_edu.bench <name> [options]``.

Benchmarks print a small table and report speed-ups as ratios measured side by side in one run.
``python -m pali3_edu.bench --list`` names them; ``python -m pali3_edu.bench <name> --help`` lists
a benchmark's options. Counts and sizes (``--batch``, ``--dim``, …) must be positive integers:
``--batch 0`` is a usage error, not a table of meaningless ratios.
"""

from __future__ import annotations

import argparse
import importlib
import sys

BENCHMARKS = {
    "data": ("pali3_edu.bench.data", "ShapesWorld generation speed (scenes/s)"),
    "denoisers": ("pali3_edu.bench.denoisers", "UL2 span-corruption throughput"),
    "siglip": ("pali3_edu.bench.siglip", "sigmoid loss: full vs chunked peak memory and time"),
    "generate": ("pali3_edu.bench.generate", "KV-cache speed-up of decoding"),
    "train": ("pali3_edu.bench.train", "PaLI-3 training step: course vs transformers, MFU"),
}

# Integer options of the benchmarks that do not check them themselves, and their ``nargs``.
# They are checked here, before the benchmark starts (``data`` and ``denoisers`` use
# ``positive_int`` in their own parsers).
_COUNT_OPTIONS: dict[str, dict[str, str | None]] = {
    "siglip": {"--batch": "+", "--dim": None, "--chunks": None},
    "generate": {"--new-tokens": "+", "--batch": None, "--source-length": None, "--repeats": None},
}


def positive_int(text: str) -> int:
    """argparse ``type``: an integer ≥ 1 (a count or a size), else a usage error."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer (1 or more), got {value}")
    return value


def positive_float(text: str) -> float:
    """argparse ``type``: a finite number > 0 (a duration), else a usage error."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not 0.0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def probability(text: str) -> float:
    """argparse ``type``: a number in [0, 1], else a usage error."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], got {text!r}") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, got {text}")
    return value


def check_counts(name: str, argv: list[str]) -> None:
    """Exit with an argparse usage error if a count option of benchmark ``name`` is not ≥ 1."""
    options = _COUNT_OPTIONS.get(name)
    if not options:
        return
    parser = argparse.ArgumentParser(
        prog=f"python -m pali3_edu.bench {name}",
        usage=f"%(prog)s [options]   (python -m pali3_edu.bench {name} --help lists them)",
        add_help=False,
    )
    for option, nargs in options.items():
        parser.add_argument(option, type=positive_int, nargs=nargs)
    parser.parse_known_args(argv)  # only checks: the benchmark parses its options itself


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help", "--list"):
        print(__doc__)
        for name, (_, what) in BENCHMARKS.items():
            print(f"  {name:<10} {what}")
        return
    name, rest = argv[0], argv[1:]
    if name not in BENCHMARKS:
        raise SystemExit(f"Unknown benchmark {name!r}. Choose one of: {', '.join(BENCHMARKS)}")
    check_counts(name, rest)
    importlib.import_module(BENCHMARKS[name][0]).main(rest)


if __name__ == "__main__":
    main()
