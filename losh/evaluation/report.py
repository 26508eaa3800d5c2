"""An evaluation as one HTML page to read (`losh evaluate --report`, `losh report EVAL`): the metrics beside the
paper's where it has them, precision@k and the IoU histogram, the 20 worst and 20 best samples as larger overlays,
every expression sorted by IoU with its overlay, and for whole-video sets J, F and J&F per video. It is made from the
evaluation folder alone (metrics.json, samples.jsonl and the pictures; `losh.evaluation.sample_log`), and holds
everything itself: it opens offline, anywhere."""
from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

from losh.evaluation.frame_metrics import PRECISION_THRESHOLDS
from losh.evaluation.paper_numbers import WHERE, paper_numbers
from losh.evaluation.report_plots import histogram, precision_plot
from losh.evaluation.sample_log import EXTREMES, read_samples
from losh.inference.html_page import figure, page, paragraph, picture, section, table
from losh.schemas.atomic import atomic_write_text

REPORT_FILE = "report.html"
FRAME_METRICS = (("overall_iou", "overall IoU"), ("mean_iou", "mean IoU"), ("map", "mAP"),
                 *((f"precision@{k}", f"precision@{k}") for k in PRECISION_THRESHOLDS),
                 ("j", "J"), ("f", "F"), ("jf", "J&F"))
VIDEO_METRICS = (("jf", "J&F"), ("j", "J"), ("f", "F"))


def percent(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}"


def write_report(folder: Path, out: Path | None = None, metrics: dict | None = None) -> Path:
    """The report of the evaluation in `folder` written to `out` (default folder/report.html); `metrics` default to
    folder/metrics.json. Returns the path written."""
    folder = Path(folder)
    if metrics is None:
        path = folder / "metrics.json"
        if not path.is_file():
            raise FileNotFoundError(f"{folder} holds no metrics.json: not an evaluation folder (losh evaluate --out)")
        metrics = json.loads(path.read_text(encoding="utf-8"))
    out = Path(out) if out is not None else folder / REPORT_FILE
    atomic_write_text(out, build_report(metrics, folder))
    return out


def build_report(metrics: dict, folder: Path) -> str:
    """The HTML text of the report of `metrics` with the per-sample results of `folder`."""
    folder = Path(folder)
    rows = read_samples(folder)
    video = "J&F" in metrics or any("j" in r for r in rows)
    title = f"{metrics.get('model', 'model')} on {metrics.get('dataset', 'data')} {metrics.get('split', '')}".strip()
    parts = [paragraph(_context(metrics, len(rows))), _metrics_section(metrics, video), _plots(metrics, rows, video)]
    if video:
        parts.append(_per_video(rows))
    parts += [_extremes(rows, folder), _every_expression(rows, folder, video)]
    return page(f"Evaluation: {title}", *parts)


def _context(metrics: dict, samples: int) -> str:
    fields = [("checkpoint", metrics.get("checkpoint")), ("data", metrics.get("data")), ("samples", samples),
              ("weights", metrics.get("weights")), ("resolution", metrics.get("resolution")),
              ("precision", metrics.get("precision")), ("short text", metrics.get("inference_short_text"))]
    return "; ".join(f"{name}: {value}" for name, value in fields if value is not None)


def _metrics_section(metrics: dict, video: bool) -> str:
    """The evaluation's metrics; beside them the paper's and the difference, where the paper has this model and
    data set."""
    paper = paper_numbers(metrics.get("dataset"), metrics.get("model"), metrics.get("backbone"))
    body = []
    for key, label in VIDEO_METRICS if video else FRAME_METRICS:
        value = metrics.get(key)
        if value is None and key not in paper:
            continue
        line = [label, percent(value)]
        if paper:
            theirs = paper.get(key)
            line += ["" if theirs is None else percent(theirs),
                     f"{100 * (value - theirs):+.1f}" if value is not None and theirs is not None else ""]
        body.append(line)
    if paper:
        headers = ("metric", "this evaluation", "paper", "difference")
        note = f"paper: LoSh (CVPR 2024), {metrics.get('model')} on {WHERE.get(metrics.get('dataset'), '')}"
    else:
        headers = ("metric", "this evaluation")
        note = f"the paper reports no numbers for {metrics.get('model')} on {metrics.get('dataset')}"
    return section("Metrics (%)", table(headers, body, numeric=(1, 2, 3)), paragraph(note))


def _plots(metrics: dict, rows: list[dict], video: bool) -> str:
    try:
        import matplotlib  # noqa: F401
    except ImportError:        # a machine without it still gets the report, without its two plots
        return section("Plots", paragraph("the plots need matplotlib, which is not installed (pip install matplotlib)"))
    images = []
    bars = None if video else precision_plot(metrics)
    if bars is not None:
        images.append(figure(picture(bars, "image/png", "precision at k"), "precision@k: the share of samples whose "
                                                                            "IoU is above k"))
    label = "J" if video else "IoU"
    images.append(figure(picture(histogram([r["iou"] for r in rows], label), "image/png", f"{label} histogram"),
                         f"{label} of each {'expression' if video else 'sample'}"))
    return section("Plots", '<div class="gallery">', *images, "</div>")


def _per_video(rows: list[dict]) -> str:
    """J, F and J&F of each video: the means over its expressions, worst first."""
    by_video: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        by_video[r["video_id"]].append(r)
    lines = []
    for video_id, group in by_video.items():
        j = sum(r.get("j", r["iou"]) for r in group) / len(group)
        f = sum(r.get("f", r["iou"]) for r in group) / len(group)
        lines.append((video_id, len(group), j, f, (j + f) / 2))
    lines.sort(key=lambda line: (line[4], line[0]))
    rows = [(video_id, n, percent(j), percent(f), percent(jf)) for video_id, n, j, f, jf in lines]
    return section("J, F and J&F per video (%)",
                   table(("video", "expressions", "J", "F", "J&F"), rows, numeric=(1, 2, 3, 4)))


def _ranked(rows: list[dict]) -> list[dict]:
    return sorted(rows, key=lambda r: (r["iou"], r["sample_id"]))


def _extremes(rows: list[dict], folder: Path) -> str:
    """The worst and the best (20 each; with fewer than 40 samples, the lower and the upper half)."""
    ranked = _ranked(rows)
    worst = ranked[:min(EXTREMES, (len(ranked) + 1) // 2)]
    best = ranked[len(worst):][::-1][:EXTREMES]
    return "".join(section(f"{name} {len(chosen)}", '<div class="gallery">',
                           *(figure(_image(folder, r.get("overlay") or r["thumbnail"], r["sample_id"]), _caption(r))
                             for r in chosen), "</div>")
                   for name, chosen in (("Worst", worst), ("Best", best)))


def _caption(row: dict) -> str:
    name = "J" if "j" in row else "IoU"
    return (f"{name} {percent(row['iou'])}% | {row['long']} | short: {row['short']} | video {row['video_id']}, "
            f"frame {row['frame']}")


def _every_expression(rows: list[dict], folder: Path, video: bool) -> str:
    header = ("#", "J (%)" if video else "IoU (%)", "long expression", "short expression", "video", "frame", "overlay")
    lines = [(k + 1, percent(r["iou"]), r["long"], r["short"], r["video_id"], r["frame"],
              _image(folder, r["thumbnail"], r["sample_id"]))
             for k, r in enumerate(_ranked(rows))]
    return section(f"Every expression by {'J' if video else 'IoU'} ({len(rows)})", table(header, lines, numeric=(0, 1)))


def _image(folder: Path, relative: str, alt: str):
    path = (folder / relative).resolve()
    if not path.is_relative_to(folder.resolve()):      # samples.jsonl names pictures of its own folder only
        raise ValueError(f"{folder}: samples.jsonl names a picture outside the evaluation folder: {relative!r}")
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: the evaluation folder is incomplete (evaluate it again)")
    return picture(path.read_bytes(), "image/jpeg", alt)
