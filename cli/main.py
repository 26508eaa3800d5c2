"""The `losh` command line: thin wrappers that parse, call `pipeline/` and `losh/`, and report."""
from __future__ import annotations

import csv
import json
import os
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

app = typer.Typer(
    help="LoSh (CVPR 2024) toolkit for referring video object segmentation: "
         "synth -> prepare-data -> compute-flows -> train -> evaluate.",
    no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)


def fail(message: str, code: int = 1) -> None:
    """One-line reason on stderr, non-zero exit."""
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code)


@app.command()
def synth(
    out: Annotated[Path, typer.Argument(help="Folder to write the A2D-Sentences-layout data set into.")],
    videos: Annotated[int, typer.Option(min=3, help="Number of videos.")] = 12,
    seed: Annotated[int, typer.Option(help="Random seed: the same seed writes the same data set.")] = 0,
    height: Annotated[int, typer.Option(min=32, help="Frame height of the clips.")] = 128,
    width: Annotated[int, typer.Option(min=32, help="Frame width of the clips.")] = 176,
    frames: Annotated[int, typer.Option(min=8, help="Frames per clip.")] = 24,
    annotated: Annotated[int, typer.Option(min=1, help="Annotated frames per video.")] = 3,
) -> None:
    """Write a small synthetic RVOS data set in the A2D-Sentences on-disk layout."""
    from pipeline.synth import write_synthetic_a2d

    summary = write_synthetic_a2d(out, videos=videos, seed=seed, height=height, width=width, frames=frames,
                                  annotated_per_video=annotated)
    typer.echo(json.dumps(summary, indent=1))


@app.command()
def shorten(
    texts: Annotated[Optional[list[str]], typer.Argument(help="Long expressions to shorten.")] = None,
    csv_in: Annotated[Optional[Path], typer.Option("--csv", help="CSV file with expressions.")] = None,
    column: Annotated[str, typer.Option(help="Column of --csv holding the long expressions.")] = "query",
    out: Annotated[Optional[Path], typer.Option(help="Output CSV: every input column plus `short`.")] = None,
    tagger: Annotated[str, typer.Option(help="Part-of-speech tagger: spacy or nltk.")] = "spacy",
    rule: Annotated[str, typer.Option(help="first-verb (the paper's rule) or subject (default).")] = "subject",
) -> None:
    """Show the short (subject-centric) expression of long expressions."""
    from pipeline.shorten import RULES, TAGGERS, Shortener, TaggerUnavailable

    if tagger not in TAGGERS:
        fail(f"--tagger must be one of {', '.join(TAGGERS)}", 2)
    if rule not in RULES:
        fail(f"--rule must be one of {', '.join(RULES)}", 2)
    if not texts and csv_in is None:
        fail("give expressions as arguments or --csv FILE", 2)
    try:
        shortener = Shortener(tagger=tagger, rule=rule)
        if texts:
            for text, short in zip(texts, shortener.shorten_many(texts)):
                typer.echo(short)
        if csv_in is not None:
            if not csv_in.is_file():
                fail(f"no such CSV file: {csv_in}")
            with open(csv_in, newline="", encoding="utf-8") as f:
                reader = csv.DictReader(f)
                rows = list(reader)
                fields = list(reader.fieldnames or [])
            if column not in fields:
                fail(f"{csv_in} has no column {column!r} (columns: {', '.join(fields)})")
            shorts = shortener.shorten_many([r[column] or "" for r in rows])
            target = open(out, "w", newline="", encoding="utf-8") if out else sys.stdout
            try:
                writer = csv.DictWriter(target, fieldnames=fields + ["short"])
                writer.writeheader()
                for row, short in zip(rows, shorts):
                    writer.writerow({**row, "short": short})
            finally:
                if out:
                    target.close()
            if out:
                typer.echo(f"wrote {len(rows)} rows to {out}", err=True)
    except TaggerUnavailable as e:
        fail(str(e))


@app.command("prepare-data")
def prepare_data(
    root: Annotated[Path, typer.Option("--root", help="Raw data set root (A2D-Sentences layout).")],
    out: Annotated[Path, typer.Option("--out", help="Prepared data set folder (PREP).")],
    dataset: Annotated[str, typer.Option(help="Data set format; a2d reads A2D-Sentences.")] = "a2d",
    short_text: Annotated[str, typer.Option(help="machine (tagger) or manual (the short_query column).")] = "machine",
    tagger: Annotated[str, typer.Option(help="Tagger for machine short text: spacy or nltk.")] = "spacy",
    rule: Annotated[str, typer.Option(help="Short-text rule: subject or first-verb.")] = "subject",
    window: Annotated[int, typer.Option(min=1, help="Frames around each annotated frame (w).")] = 8,
    short_side: Annotated[int, typer.Option(min=16, help="Short side of stored frames.")] = 320,
    max_long_side: Annotated[int, typer.Option(min=16, help="Cap on the long side of stored frames.")] = 576,
    codec: Annotated[str, typer.Option(help="Frame storage: jpeg or png.")] = "jpeg",
    jpeg_quality: Annotated[int, typer.Option(min=10, max=100)] = 90,
    workers: Annotated[Optional[int], typer.Option(min=1, help="Parallel processes (default: all cores).",
                                                   envvar="LOSH_WORKERS")] = None,
) -> None:
    """Raw data set -> prepared data set: short expressions, merged masks, manifest, HDF5 shards."""
    from pipeline.a2d import DatasetRootError
    from pipeline.prepare import PrepareSettings, prepare_a2d
    from pipeline.shorten import TaggerUnavailable

    if dataset != "a2d":
        fail(f"dataset {dataset!r} is not supported yet (supported: a2d)", 2)
    settings = PrepareSettings(window=window, short_side=short_side, max_long_side=max_long_side, codec=codec,
                               jpeg_quality=jpeg_quality)
    try:
        manifest = prepare_a2d(root, out, short_source=short_text, tagger=tagger, rule=rule, settings=settings,
                               workers=workers)
    except (DatasetRootError, TaggerUnavailable, ValueError) as e:
        fail(str(e))
    c = manifest["counts"]
    typer.echo(f"prepared {c['samples']} samples ({c['samples_train']} train, {c['samples_test']} test) from "
               f"{c['videos']} videos, {c['annotated_frames']} annotated frames; "
               f"{c['merged_short_masks']} samples with a merged short mask; "
               f"{c['videos_missed_skipped']} missed videos skipped; {c['broken']} problems reported "
               f"(see {out / 'report.json'})")


def _not_yet(command: str, issue: str) -> None:
    fail(f"`losh {command}` is not available in this version yet ({issue}); nothing was done", 2)


@app.command("compute-flows", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def compute_flows(ctx: typer.Context) -> None:
    """Farneback flows of every annotated frame into HDF5 shards, in parallel with Dask."""
    _not_yet("compute-flows", "issue 3")


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def train(ctx: typer.Context) -> None:
    """Train LoSh-M (or the MTTR baseline, or an ablation) on CUDA, CPU fallback."""
    _not_yet("train", "issue 5")


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def evaluate(ctx: typer.Context) -> None:
    """Metrics of a checkpoint on a split; JSON out; optional overlay pictures."""
    _not_yet("evaluate", "issue 5")


if __name__ == "__main__":
    app()
