"""Agreement of the short-expression rules with human short expressions, and their speed.

    python -m bench.shorten_agreement [--csv PATH] [--timing-size 6000]

For each rule with the spaCy tagger (and the NLTK tagger when its data is installed) prints
one JSON line ``{"bench": "shorten_agreement_<rule>_<tagger>", "value": fraction, ...}``:
the fraction of the CSV's expressions whose predicted short expression equals the human one
(`short_query`) after `normalise`; then ``shorten_seconds_<rule>_<tagger>``: the seconds to
shorten `--timing-size` expressions (the CSV's list repeated) in one `shorten_many` call.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from pathlib import Path

from losh.pipeline.shorten import RULES, TAGGERS, Shortener, TaggerUnavailable, agreement

# The shared data sit next to the repository: ../shared/data relative to its root.
DEFAULT_CSV = Path(__file__).resolve().parents[2] / "shared" / "data" / "a2d_expressions_dev.csv"


def read_expressions(path: Path) -> tuple[list[str], list[str]]:
    """(long expressions, human short expressions) of a CSV with query and short_query."""
    with path.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    missing = {"query", "short_query"} - set(rows[0] if rows else ())
    if missing:
        raise ValueError(f"{path}: no rows or missing column(s) {', '.join(sorted(missing))}")
    return [row["query"] for row in rows], [row["short_query"] for row in rows]


def run(csv_path: Path, timing_size: int) -> list[dict]:
    queries, reference = read_expressions(csv_path)
    repeated = (queries * (timing_size // len(queries) + 1))[:timing_size]
    results = []
    for tagger in TAGGERS:
        for rule in RULES:
            started = time.perf_counter()
            try:
                shortener = Shortener(tagger, rule)
            except TaggerUnavailable as error:
                print(f"skipping tagger {tagger}: {error}", file=sys.stderr)
                break
            load_seconds = time.perf_counter() - started
            started = time.perf_counter()
            predicted = shortener.shorten_many(queries)
            seconds = time.perf_counter() - started
            results.append({
                "bench": f"shorten_agreement_{rule.replace('-', '_')}_{tagger}",
                "value": agreement(predicted, reference),
                "unit": "fraction",
                "target": None,
                "n": len(queries),
                "seconds": round(seconds, 3),
                "load_seconds": round(load_seconds, 3),
                "csv": str(csv_path),
            })
            started = time.perf_counter()
            shortener.shorten_many(repeated)
            seconds = time.perf_counter() - started
            results.append({
                "bench": f"shorten_seconds_{rule.replace('-', '_')}_{tagger}",
                "value": round(seconds, 3),
                "unit": "s",
                "target": None,
                "n": len(repeated),
                "expressions_per_second": round(len(repeated) / seconds),
            })
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--csv", type=Path, default=DEFAULT_CSV, help="CSV with query,short_query")
    parser.add_argument("--timing-size", type=int, default=6000, help="expressions to time")
    args = parser.parse_args(argv)
    if not args.csv.is_file():
        print(f"shorten_agreement: no CSV at {args.csv} (pass --csv PATH)", file=sys.stderr)
        return 2
    for result in run(args.csv, args.timing_size):
        print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
