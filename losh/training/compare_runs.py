"""`losh runs compare`: training runs side by side, from what each run folder keeps (metrics.jsonl, config.json,
train.json): steps, epochs and wall time, the last and the best validation metrics, and only the settings that
differ between the runs (dotted names: loss.lsi, train.lr), so that the one change behind a difference shows."""
from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from losh.schemas.atomic import atomic_write_text

SCORES = ("mean_iou", "overall_iou", "map", "jf")   # what metrics.jsonl's validation lines hold
FORMATS = (".md", ".csv", ".json")


@dataclass
class RunSummary:
    """What one run folder says of itself."""

    path: Path
    steps: int = 0
    epochs: int = 0
    wall_s: float = 0.0
    validations: int = 0
    final: dict[str, float | None] = field(default_factory=dict)
    best: dict[str, tuple[float, int]] = field(default_factory=dict)     # metric -> (value, epoch)
    settings: dict[str, Any] = field(default_factory=dict)              # dotted name -> value


def read_run(run: Path) -> RunSummary:
    """A run folder's summary; a folder without metrics.jsonl is not a run."""
    run = Path(run)
    log = run / "metrics.jsonl"
    if not log.is_file():
        raise FileNotFoundError(f"{run} is not a training run: it has no metrics.jsonl (losh train --out RUN)")
    summary = RunSummary(run)
    segment_s = 0.0      # time_s restarts with each process: the wall time is the sum of the processes'
    for line in log.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        entry = json.loads(line)
        if "resume" in entry:
            summary.wall_s += segment_s
            segment_s = 0.0
            continue
        segment_s = max(segment_s, float(entry.get("time_s", 0.0)))
        summary.steps = max(summary.steps, int(entry.get("step", 0)))
        if "epoch_end" in entry:
            summary.epochs = max(summary.epochs, int(entry["epoch_end"]))
        if "eval" in entry:
            _add_validation(summary, entry["eval"])
    summary.wall_s += segment_s
    for name, prefix in (("config.json", ""), ("train.json", "train.")):
        path = run / name
        if path.is_file():
            summary.settings.update(flatten(json.loads(path.read_text(encoding="utf-8")), prefix))
    return summary


def _add_validation(summary: RunSummary, scores: dict) -> None:
    summary.validations += 1
    summary.final = {k: scores.get(k) for k in SCORES}
    for key in SCORES:
        value = scores.get(key)
        if value is not None and (key not in summary.best or value > summary.best[key][0]):
            summary.best[key] = (float(value), int(scores.get("epoch", 0)))


def flatten(values: dict, prefix: str = "") -> dict[str, Any]:
    """{"loss": {"lsi": 5}} -> {"loss.lsi": 5}; the file's schema and version are left out."""
    out: dict[str, Any] = {}
    for key, value in values.items():
        if key in ("schema", "version"):
            continue
        if isinstance(value, dict):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def compare_runs(runs: list[Path]) -> dict:
    """{"runs": [names], "rows": [{"what": label, "values": [one per run]}]}: steps, epochs, wall time, the final
    and best validation metrics (fractions), then each setting that differs between the runs."""
    summaries = [read_run(r) for r in runs]
    names = [s.path.name for s in summaries]
    if len(set(names)) < len(names):        # two runs of one name in other folders: their paths
        names = [str(s.path) for s in summaries]
    rows: list[dict] = [{"what": "steps", "values": [s.steps for s in summaries]},
                        {"what": "epochs", "values": [s.epochs for s in summaries]},
                        {"what": "wall time (s)", "values": [round(s.wall_s, 1) for s in summaries]},
                        {"what": "validations", "values": [s.validations for s in summaries]}]
    for key in SCORES:
        if any(s.final.get(key) is not None for s in summaries):
            rows.append({"what": f"final {key}", "values": [s.final.get(key) for s in summaries]})
    for key in SCORES:
        if any(key in s.best for s in summaries):
            rows.append({"what": f"best {key}", "values": [s.best[key][0] if key in s.best else None
                                                            for s in summaries]})
            rows.append({"what": f"best {key} epoch", "values": [s.best[key][1] if key in s.best else None
                                                                  for s in summaries]})
    keys = sorted({k for s in summaries for k in s.settings})
    for key in keys:
        values = [s.settings.get(key) for s in summaries]
        if len({json.dumps(v, sort_keys=True) for v in values}) > 1:
            rows.append({"what": key, "values": values})
    return {"runs": names, "rows": rows}


def _cell(what: str, value: Any) -> str:
    """Metrics in percent, everything else as written."""
    if value is None:
        return "-"
    if (what.startswith("final ") or what.startswith("best ")) and not what.endswith("epoch"):
        return f"{100 * value:.2f}"
    if isinstance(value, (list, tuple, dict)):
        return json.dumps(value)
    return str(value)


def format_text(table: dict) -> str:
    """Aligned columns: one row per quantity, one column per run (metrics in percent)."""
    header = ["", *table["runs"]]
    body = [[row["what"], *(_cell(row["what"], v) for v in row["values"])] for row in table["rows"]]
    widths = [max(len(r[i]) for r in [header, *body]) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))).rstrip()
             for r in [header, *body]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def format_markdown(table: dict) -> str:
    header = ["", *table["runs"]]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join([row["what"], *(_cell(row["what"], v) for v in row["values"])]) + " |"
              for row in table["rows"]]
    return "\n".join(lines) + "\n"


def format_csv(table: dict) -> str:
    """Raw values (metrics as fractions), one row per quantity."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["what", *table["runs"]])
    for row in table["rows"]:
        writer.writerow([row["what"], *("" if v is None else json.dumps(v) if isinstance(v, (list, dict)) else v
                                         for v in row["values"])])
    return buffer.getvalue()


def write_table(table: dict, out: Path) -> None:
    """The table as `out`'s suffix says: .md, .csv or .json."""
    out = Path(out)
    writers = {".md": format_markdown, ".csv": format_csv, ".json": lambda t: json.dumps(t, indent=1) + "\n"}
    if out.suffix not in writers:
        raise ValueError(f"--out must end in one of {', '.join(FORMATS)}, got {out.name}")
    atomic_write_text(out, writers[out.suffix](table))
