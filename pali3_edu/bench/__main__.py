"""Run a benchmark: ``python -m pali3_edu.bench <name> [options]``.

Benchmarks print a small table and report speed-ups as ratios measured side by side in one run.
``python -m pali3_edu.bench --list`` names them.
"""

from __future__ import annotations

import importlib
import sys

BENCHMARKS = {
    "data": ("pali3_edu.bench.data", "ShapesWorld generation speed (scenes/s)"),
    "denoisers": ("pali3_edu.bench.denoisers", "UL2 span-corruption throughput"),
    "siglip": ("pali3_edu.bench.siglip", "sigmoid loss: full vs chunked peak memory and time"),
    "generate": ("pali3_edu.bench.generate", "KV-cache speed-up of decoding"),
}


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help", "--list"):
        print(__doc__)
        for name, (_, what) in BENCHMARKS.items():
            print(f"  {name:<10} {what}")
        return
    name, rest = argv[0], argv[1:]
    if name not in BENCHMARKS:
        raise SystemExit(f"Unknown benchmark {name!r}. Choose one of: {', '.join(BENCHMARKS)}")
    importlib.import_module(BENCHMARKS[name][0]).main(rest)


if __name__ == "__main__":
    main()
