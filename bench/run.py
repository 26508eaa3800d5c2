"""`make bench [BENCH="name ..."]`: run the benchmarks; each prints one JSON object per line.

    python -m bench.run                                  # all of them, in BENCHMARKS order
    python -m bench.run flops "loader_scale 200 --sizes 20,40"

A benchmark is a module `bench/<name>.py` with a `main(argv)` that prints its JSON lines; an item with
spaces is a benchmark's command line (its name, then its own arguments).

Each benchmark runs in a process of its own: its threads, caches, imported modules, environment changes and
child processes end with it, so no benchmark's figures depend on which ran before it (one that counts its
DataLoader workers must not count another's leftovers). A failing benchmark is reported and the others still
run; the exit status is 1 when any failed. The runner's own line, `bench_run`, says which ran, their exit
codes and seconds.
"""
from __future__ import annotations

import json
import shlex
import subprocess
import sys
import time

BENCHMARKS = ["prepare_storage", "shorten_agreement", "flops", "flows", "train_step", "host_syncs", "loader_scale",
              "video_inference", "predict"]


def parse(items: list[str]) -> list[list[str]]:
    """Command lines [name, *args] from the runner's arguments (all benchmarks when none)."""
    commands = [shlex.split(item) for item in items] or [[name] for name in BENCHMARKS]
    unknown = [c[0] for c in commands if not c or c[0] not in BENCHMARKS]
    if unknown:
        raise ValueError(f"unknown benchmark(s) {unknown}; choose from {BENCHMARKS}")
    return commands


def run_one(command: list[str]) -> tuple[int, float]:
    """One benchmark in its own Python process (stdout and stderr pass through): (exit code, seconds)."""
    code = f"import sys; from bench.{command[0]} import main; sys.exit(main(sys.argv[1:]) or 0)"
    start = time.perf_counter()
    returncode = subprocess.run([sys.executable, "-c", code, *command[1:]]).returncode
    return returncode, time.perf_counter() - start


def main(argv: list[str]) -> int:
    try:
        commands = parse(argv)
    except ValueError as error:
        print(error, file=sys.stderr)
        return 2
    results = []
    for command in commands:
        sys.stdout.flush()
        returncode, seconds = run_one(command)
        if returncode:
            print(f"benchmark {command[0]} failed (exit {returncode}); going on", file=sys.stderr)
        results.append({"benchmark": " ".join(command), "exit": returncode, "seconds": round(seconds, 1)})
    failed = [r["benchmark"] for r in results if r["exit"]]
    print(json.dumps({"bench": "bench_run", "value": len(results) - len(failed), "unit": "benchmarks passed",
                      "target": len(results), "failed": failed, "runs": results,
                      "seconds": round(sum(r["seconds"] for r in results), 1)}), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
