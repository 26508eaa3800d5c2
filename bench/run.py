"""`make bench [BENCH=name]`: run the benchmarks; each prints one JSON object per line.

A benchmark is a module `bench/<name>.py` with a `main()` that prints its JSON lines.
"""
from __future__ import annotations

import importlib
import sys

BENCHMARKS = ["prepare_storage", "shorten_agreement", "flops", "flows", "train_step", "loader_scale", "video_inference", "predict"]


def main(argv: list[str]) -> int:
    names = argv or BENCHMARKS
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        print(f"unknown benchmark(s) {unknown}; choose from {BENCHMARKS}", file=sys.stderr)
        return 2
    for name in names:
        module = importlib.import_module(f"bench.{name}")
        module.main([])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
