"""The `losh` command line: thin wrappers that parse, call `pipeline/` and `losh/`, and report.

One grammar for every command:
- inputs are named options: a raw data set is `--root`, a prepared one `--data`, a model `--checkpoint`;
- what a command makes is `--out`: a folder (synth, prepare-data, train, evaluate, predict), or the one file it
  writes (convert-checkpoint, config save, shorten); a folder or file it did not make is refused, one it made is
  replaced only with `--overwrite`;
- `--workers N`: processes that load or prepare data (0: this process); default 4, at most the CPU count;
- `--seed`: 42 unless the command says otherwise; `--device`: cpu, cuda, cuda:1 (default: CUDA when present);
- `--amp`: autocast on CUDA; train defaults to bf16 (MTTR and SgMg train with mixed precision), evaluate and
  predict to off (float32, as they score);
- `--set KEY=VALUE` (repeatable): a dotted config field, validated, e.g. `--set loss.fbc=0.0`.
Old spellings (a positional folder, `evaluate --out FILE.json`) still work for one release, hidden from --help.
"""
from __future__ import annotations

import csv
import json
import os
import sys
import warnings
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Annotated, Optional

import typer

from losh.schemas.locks import FolderBusy

app = typer.Typer(
    help="LoSh (CVPR 2024) toolkit for referring video object segmentation: "
         "synth -> prepare-data -> compute-flows -> train -> evaluate -> predict.",
    no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)


def fail(message: str, code: int = 1) -> None:
    """One-line reason on stderr, non-zero exit."""
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code)


def warn(message: str) -> None:
    typer.secho(f"warning: {message}", fg=typer.colors.YELLOW, err=True)


@contextmanager
def warnings_as_lines(category: type[Warning]):
    """Within the block, warnings of `category` print as one `warning: ...` line (no file and line number)."""
    previous = warnings.showwarning

    def show(message, cat, *args, **kwargs):
        if issubclass(cat, category):
            warn(str(message))
        else:
            previous(message, cat, *args, **kwargs)

    with warnings.catch_warnings():
        warnings.simplefilter("always", category)
        warnings.showwarning = show
        yield


def _show_version(value: bool) -> None:
    if value:
        from importlib.metadata import PackageNotFoundError, version
        try:
            typer.echo(f"losh {version('losh')}")
        except PackageNotFoundError:
            typer.echo("losh (not installed: run from a source checkout)")
        raise typer.Exit()


@app.callback()
def main(version: Annotated[bool, typer.Option("--version", callback=_show_version, is_eager=True,
                                               help="Print the version and exit.")] = False) -> None:
    """LoSh (CVPR 2024) toolkit for referring video object segmentation."""


DEFAULT_WORKERS = 4
WORKERS_HELP = "Processes that load or prepare data (0: in this process; default 4, at most the CPU count)."
TAGGER_HELP = ("Part-of-speech tagger: auto (the rule's own: NLTK's for first-verb, as the paper, with spaCy's where "
               "NLTK's data is missing; spaCy's for subject), spacy or nltk.")
SET_HELP = "KEY=VALUE: a config field by its dotted name, e.g. loss.fbc=0.0 (repeatable; validated)."
QUIET_HELP = "No progress bars (errors and the summary still print)."


def default_workers(workers: int | None) -> int:
    """--workers as given, else 4 capped at the CPU count (the one default of every command)."""
    return workers if workers is not None else min(DEFAULT_WORKERS, os.cpu_count() or 1)


def one_of(new: Path | None, old: Path | None, name: str) -> Path | None:
    """A value given by its new option or its old spelling (a positional argument), not both."""
    if new is not None and old is not None and new != old:
        fail(f"{name} given twice ({old} and {new}): give {name} only", 2)
    return new if new is not None else old


def config_with(spec: str, sets: list[str] | None = None, backbone_weights: Path | None = None,
                text_encoder: str | None = None, window: int | None = None):
    """A model config: a preset spec or JSON file, then the options that change it (validated as a whole)."""
    from losh.schemas.config import parse_assignments, with_overrides
    from losh.schemas.presets import resolve_config

    overrides = parse_assignments(sets or [])
    if backbone_weights is not None:
        overrides["backbone.weights"] = str(backbone_weights)
    if text_encoder is not None:
        overrides["text.encoder"] = str(text_encoder)
    if window is not None:
        overrides["window"] = window
    config = resolve_config(spec)
    return with_overrides(config, overrides) if overrides else config


@app.command()
def synth(
    out: Annotated[Optional[Path], typer.Option(help="Folder to write the data set into (in the --layout layout): "
                                                     "new or empty, or one this command wrote (--overwrite).")] = None,
    out_old: Annotated[Optional[Path], typer.Argument(hidden=True, metavar="OUT")] = None,
    videos: Annotated[Optional[int], typer.Option(min=3, help="Number of videos (refcoco: of images; default 12, "
                                                           "refcoco 40).")] = None,
    seed: Annotated[int, typer.Option(help="Random seed: the same seed writes the same data set.")] = 42,
    height: Annotated[int, typer.Option(min=32, help="Frame height of the clips.")] = 128,
    width: Annotated[int, typer.Option(min=32, help="Frame width of the clips.")] = 176,
    frames: Annotated[int, typer.Option(min=8, help="Frames per clip.")] = 24,
    annotated: Annotated[int, typer.Option(min=1, help="Annotated frames per video (a2d).")] = 3,
    layout: Annotated[str, typer.Option(help="On-disk layout: a2d, refer-youtube-vos (every 5th frame released, "
                                              "masks for train), refer-davis (the four expression sets), jhmdb "
                                              "(JHMDB-Sentences: PNG frames, one actor's puppet_mask.mat per video, "
                                              "the last video 2 masks short) or refcoco (still images in the refer "
                                              "toolkit's layout: refcoco/, refcoco+/, refcocog/ and COCO's "
                                              "train2014 folder).")] = "a2d",
    overwrite: Annotated[bool, typer.Option(help="Replace a set that `losh synth` wrote in OUT (never other "
                                                 "data).")] = False,
) -> None:
    """Write a small synthetic RVOS data set in a real data set's on-disk layout (A2D-Sentences by default)."""
    out = one_of(out, out_old, "--out")
    if out is None:
        fail("give the folder to write: --out RAW", 2)
    from losh.pipeline.synth import write_synthetic_a2d
    from losh.pipeline.synth_layouts import (
        write_synthetic_jhmdb,
        write_synthetic_refer_davis,
        write_synthetic_refer_youtube_vos,
    )
    from losh.pipeline.synth_refcoco import write_synthetic_refcoco

    if videos is None:
        videos = 40 if layout == "refcoco" else 12
    writers = {"a2d": lambda: write_synthetic_a2d(out, videos=videos, seed=seed, height=height, width=width,
                                                  frames=frames, annotated_per_video=annotated, overwrite=overwrite),
               "refer-youtube-vos": lambda: write_synthetic_refer_youtube_vos(out, videos=videos, seed=seed,
                                                                              height=height, width=width, frames=frames, overwrite=overwrite),
               "refer-davis": lambda: write_synthetic_refer_davis(out, videos=videos, seed=seed, height=height,
                                                                  width=width, frames=frames, overwrite=overwrite),
               "jhmdb": lambda: write_synthetic_jhmdb(out, videos=videos, seed=seed, height=height, width=width,
                                                      frames=frames, overwrite=overwrite),
               "refcoco": lambda: write_synthetic_refcoco(out, images=videos, seed=seed, height=height, width=width,
                                                          overwrite=overwrite)}
    if layout not in writers:
        fail(f"--layout must be one of {', '.join(writers)}", 2)
    from losh.schemas.folders import FolderNotEmpty
    try:
        summary = writers[layout]()
    except FolderNotEmpty as e:
        fail(str(e), 2)
    typer.echo(json.dumps(summary, indent=1))


@app.command()
def shorten(
    texts: Annotated[Optional[list[str]], typer.Argument(help="Long expressions to shorten.")] = None,
    csv_in: Annotated[Optional[Path], typer.Option("--csv", help="CSV file with expressions.")] = None,
    column: Annotated[str, typer.Option(help="Column of --csv holding the long expressions.")] = "query",
    out: Annotated[Optional[Path], typer.Option(help="Output CSV: every input column plus `short`.")] = None,
    tagger: Annotated[str, typer.Option(help=TAGGER_HELP)] = "auto",
    rule: Annotated[str, typer.Option(help="first-verb (the paper's rule) or subject (default).")] = "subject",
) -> None:
    """Show the short (subject-centric) expression of long expressions."""
    from losh.pipeline.shorten import RULES, TAGGERS, Shortener, TaggerUnavailable, resolve_tagger

    if tagger not in ("auto", *TAGGERS):
        fail(f"--tagger must be one of auto, {', '.join(TAGGERS)}", 2)
    if rule not in RULES:
        fail(f"--rule must be one of {', '.join(RULES)}", 2)
    if not texts and csv_in is None:
        fail("give expressions as arguments or --csv FILE", 2)
    try:
        tagger, note = resolve_tagger(tagger, rule)
        if note:
            warn(note)
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
    root: Annotated[Path, typer.Option("--root", help="Raw data set root, in the layout the data set ships.")],
    out: Annotated[Path, typer.Option("--out", help="Prepared data set folder (PREP).")],
    dataset: Annotated[str, typer.Option(help="a2d (A2D-Sentences), jhmdb (JHMDB-Sentences), refer-youtube-vos, "
                                              "refer-davis, or the still-image sets refcoco, refcoco+, refcocog "
                                              "(the refer toolkit's data root).")] = "a2d",
    short_text: Annotated[str, typer.Option(help="machine (tagger) or manual (A2D's short_query column).")] = "machine",
    tagger: Annotated[str, typer.Option(help=TAGGER_HELP)] = "auto",
    rule: Annotated[str, typer.Option(help="Short-text rule: subject or first-verb.")] = "subject",
    window: Annotated[Optional[int], typer.Option(min=1, help="Frames a sample's window holds (default: the data "
                                                          "set's, MTTR's: a2d 8, refer-youtube-vos/davis 12; "
                                                          "refcoco* 1: training makes the clips).")] = None,
    short_side: Annotated[Optional[int], typer.Option(min=16, help="Short side of stored frames (a2d 320, "
                                                                "refer-* 360).")] = None,
    max_long_side: Annotated[Optional[int], typer.Option(min=16, help="Cap on the long side of stored frames "
                                                                   "(a2d 576, refer-* 640).")] = None,
    codec: Annotated[str, typer.Option(help="Frame storage: jpeg or png.")] = "jpeg",
    jpeg_quality: Annotated[int, typer.Option(min=10, max=100)] = 90,
    decoder: Annotated[str, typer.Option(help="Video decoder (a2d): pyav (MTTR's torchvision read_video frame "
                                              "indexing) or opencv.")] = "pyav",
    holdout_videos: Annotated[int, typer.Option(min=0, help="refer-youtube-vos: train videos held out with their "
                                                         "masks (split holdout) for local J&F.")] = 0,
    seed: Annotated[int, typer.Option(help="refer-youtube-vos: seed of the held-out videos; jhmdb: seed of the 3 "
                                           "frames a video with --samples-metadata seed.")] = 42,
    samples_metadata: Annotated[str, typer.Option(
        help="jhmdb: the frames scored: mttr (MTTR's published protocol, shipped with the toolkit), a file in its "
             "format, or seed (3 frames a video drawn with --seed).")] = "mttr",
    split: Annotated[str, typer.Option(help="refer-davis: the DAVIS split to prepare (val or train).")] = "val",
    split_by: Annotated[Optional[str], typer.Option(help="refcoco*: the refs file refs(SPLIT_BY).p: refcoco unc "
                                                         "(default) or google, refcoco+ unc, refcocog umd (default) "
                                                         "or google.")] = None,
    images: Annotated[Optional[Path], typer.Option(
        help="refcoco, refcoco+, refcocog: the COCO train2014 images folder (default "
             "ROOT/images/mscoco/images/train2014).")] = None,
    workers: Annotated[Optional[int], typer.Option(min=0, help=WORKERS_HELP, envvar="LOSH_WORKERS")] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace a set prepared in OUT with other settings, and its flows "
                                                 "(never other data).")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", help=QUIET_HELP)] = False,
) -> None:
    """Raw data set -> prepared data set: short expressions, merged masks, manifest, HDF5 shards."""
    workers = max(default_workers(workers), 1)   # 0 and 1 both mean: this process
    from losh.pipeline.datasets import DATASETS
    from losh.pipeline.datasets.base import DatasetRootError
    from losh.pipeline.prepare import prepare_dataset, settings_for
    from losh.pipeline.shorten import TaggerUnavailable

    if dataset not in DATASETS:
        fail(f"--dataset must be one of {', '.join(DATASETS)}, got {dataset!r}", 2)
    if holdout_videos and dataset != "refer-youtube-vos":
        fail("--holdout-videos is for --dataset refer-youtube-vos", 2)
    from losh.pipeline.datasets import STILL_IMAGE_DATASETS
    if (split_by is not None or images is not None) and dataset not in STILL_IMAGE_DATASETS:
        fail(f"--split-by and --images are for --dataset {', '.join(STILL_IMAGE_DATASETS)}", 2)
    settings = settings_for(dataset, window=window, short_side=short_side, max_long_side=max_long_side, codec=codec,
                            jpeg_quality=jpeg_quality, decoder=decoder)
    if samples_metadata != "mttr" and dataset != "jhmdb":
        fail("--samples-metadata is for --dataset jhmdb", 2)
    from losh.pipeline.datasets.jhmdb import MTTR_PROTOCOL
    protocol = {"mttr": MTTR_PROTOCOL, "seed": None}.get(samples_metadata, Path(samples_metadata))
    options = {"refer-youtube-vos": {"holdout_videos": holdout_videos, "seed": seed}, "refer-davis": {"split": split},
               "jhmdb": {"samples_metadata": protocol, "seed": seed},
               **{name: {"split_by": split_by, "images": images} for name in STILL_IMAGE_DATASETS}}.get(dataset, {})
    try:
        manifest = prepare_dataset(dataset, root, out, short_source=short_text, tagger=tagger, rule=rule,
                                   settings=settings, workers=workers, overwrite=overwrite, progress=not quiet,
                                   **options)
    except (DatasetRootError, TaggerUnavailable, ValueError, FolderBusy) as e:
        fail(str(e))
    if manifest["short_text"].get("note"):
        warn(manifest["short_text"]["note"])
    c = manifest["counts"]
    per_split = ", ".join(f"{info['samples']} {name} ({info['kind']}{'' if info['masks'] else ', no masks'})"
                          for name, info in manifest["splits"].items())
    source = (f"{c['videos']} referred objects in {c['images']} still images" if dataset in STILL_IMAGE_DATASETS
              else f"{c['videos']} videos, {c['annotated_frames']} annotated frames")
    typer.echo(f"prepared {c['samples']} samples ({per_split}) from {source}; {c['merged_short_masks']} samples with "
               f"a merged short mask; {c['samples_empty_mask']} with an empty mask; evaluated split: "
               f"{manifest['eval_split']}")
    if dataset == "a2d":
        typer.echo(f"{c['samples_window_past_end']} samples with the annotated frame past the decoded end (kept, "
                   f"as MTTR); {c['videos_frame_count_mismatch']} videos whose decoded length differs from "
                   f"videoset.csv; {c['videos_missed_skipped']} missed videos skipped")
    typer.echo(f"{c['broken']} problems reported (see {out / 'report.json'})")


def torch_load_config(checkpoint: Path) -> dict:
    from losh.training.checkpoint import load_checkpoint
    return load_checkpoint(checkpoint)["model_config"]


@app.command("compute-flows")
def compute_flows(
    data: Annotated[Optional[Path], typer.Option(help="Prepared data set (PREP); flows go to PREP/flows.")] = None,
    prep: Annotated[Optional[Path], typer.Argument(hidden=True, metavar="PREP")] = None,
    split: Annotated[str, typer.Option(help="Annotated frames of which samples get flows: train (L_fbc is a "
                                            "training loss), test or all; splits an earlier run with the same "
                                            "parameters covered stay covered.")] = "train",
    workers: Annotated[Optional[int], typer.Option(min=0, help="Local Dask worker processes computing flows (0: in "
                                                   "this process, without Dask; default 4, at most the CPU "
                                                   "count).", envvar="LOSH_WORKERS")] = None,
    scheduler: Annotated[Optional[str], typer.Option(help="Running Dask scheduler tcp://HOST:PORT whose workers see "
                                                     "PREP at the same path (then --workers is ignored).",
                                                     envvar="LOSH_DASK_SCHEDULER")] = None,
    offsets: Annotated[str, typer.Option(help="Frame offsets t of the flows k -> k+t, comma-separated.")] = "-2,-1,1,2",
    pyr_scale: Annotated[float, typer.Option(help="Farneback pyramid scale.")] = 0.5,
    levels: Annotated[int, typer.Option(min=1, help="Farneback pyramid levels.")] = 3,
    winsize: Annotated[int, typer.Option(min=1, help="Farneback averaging window.")] = 15,
    iterations: Annotated[int, typer.Option(min=1, help="Farneback iterations per level.")] = 3,
    poly_n: Annotated[int, typer.Option(help="Farneback polynomial neighbourhood (5 or 7).")] = 5,
    poly_sigma: Annotated[float, typer.Option(help="Farneback polynomial Gaussian sigma.")] = 1.2,
    stride: Annotated[int, typer.Option(min=1, help="Store flows at 1/stride of the frame resolution (4: the "
                                                    "backbone's stride-4 features; 1: frame resolution).")] = 4,
    dtype: Annotated[str, typer.Option(help="Storage dtype: float16 or float32.")] = "float16",
    quant_step: Annotated[float, typer.Option(min=0, help="Round stored vectors to multiples of this many grid "
                                                          "pixels, for compression (0: no rounding).")] = 1 / 64,
    compression: Annotated[str, typer.Option(help="none, lzf, gzip-N, shuffle+lzf or shuffle+gzip-N.")] = "shuffle+gzip-4",
    verify: Annotated[bool, typer.Option("--verify", help="Only check the stored flows (with the parameters the "
                                                         "index records; the parameter options are ignored).")] = False,
    verify_samples: Annotated[int, typer.Option(min=0, help="Annotated frames --verify recomputes.")] = 8,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
    quiet: Annotated[bool, typer.Option("--quiet", help=QUIET_HELP)] = False,
) -> None:
    """Farneback flows of the annotated frames of a split into HDF5 shards, in parallel with Dask."""
    progress = progress and not quiet
    prep = one_of(data, prep, "--data")
    if prep is None:
        fail("give the prepared data set: --data PREP", 2)
    workers = default_workers(workers) if scheduler is None else workers
    from losh.pipeline.flow_verify import verify_flows
    from losh.pipeline.flows import FlowComputeError, nothing_to_compute, parse_split
    from losh.pipeline.flows import compute_flows as run_compute_flows
    from losh.schemas.flows import FarnebackParams, FlowParams
    from losh.schemas.prepared import SchemaError
    from losh.schemas.prepared_reader import PreparedDataMissing, load_manifest

    if verify:
        report = verify_flows(prep, samples=verify_samples)
        for problem in report.problems[:20]:
            typer.echo(f"  {problem}", err=True)
        if not report.ok:
            fail(f"flows of {prep} failed verification: {len(report.problems)} problems "
                 f"({report.shards} shards, {report.frames} annotated frames checked)")
        typer.echo(f"flows of {prep} verified: {report.shards} shards, {report.frames} annotated frames, "
                   f"{report.recomputed} recomputed (max difference {report.max_error:.2g} grid pixels)")
        return
    try:
        manifest = load_manifest(prep)
        note = nothing_to_compute(manifest)
        if note:   # still images
            typer.echo(note)
            return
        parse_split(split, manifest)
    except ValueError as e:
        fail(f"--{e}", 2)
    except (PreparedDataMissing, SchemaError) as e:
        fail(str(e))
    try:
        params = FlowParams(offsets=tuple(int(o) for o in offsets.split(",")),
                            farneback=FarnebackParams(pyr_scale, levels, winsize, iterations, poly_n, poly_sigma),
                            stride=stride, dtype=dtype, compression=compression,
                            quant_step=quant_step or None).validate()
    except ValueError as e:
        fail(f"invalid flow parameters: {e}", 2)
    try:
        run = run_compute_flows(prep, params, split=split, workers=workers, scheduler=scheduler, progress=progress)
    except (PreparedDataMissing, SchemaError, FlowComputeError, ValueError, OSError, FolderBusy) as e:
        fail(str(e))
    c = run.index["counts"]
    typer.echo(f"flows of the {'+'.join(run.splits)} split: {c['annotated_frames']} annotated frames in {c['videos']} "
               f"videos ({c['flows']} flows, "
               f"{c['invalid_flows']} clamped at a video end): {len(run.computed)} videos computed, "
               f"{len(run.resumed)} kept; {c['bytes'] / max(c['annotated_frames'], 1) / 1024:.1f} KiB per annotated "
               f"frame; index {Path(prep) / 'flows' / 'index.json'}")


@app.command()
def train(
    data: Annotated[str, typer.Option("--data", help="Prepared data set (PREP), with flows when L_fbc is on; or "
                                                     "several, comma-separated, trained on as one mixture "
                                                     "(refcoco,refcoco+,refcocog: SgMg's pre-training; the first "
                                                     "validates).")],
    out: Annotated[Path, typer.Option("--out", help="Run folder: checkpoints, metrics.jsonl, config.")],
    config: Annotated[Optional[str], typer.Option(
        help="Preset (losh-m, mttr, tiny, losh-s, sgmg, tiny-s), preset:ablation (losh-m:wo-fbc) or a JSON config "
             "file (`losh config save`). Default: losh-m; with --resume, the run's own config.json.")] = None,
    set_: Annotated[Optional[list[str]], typer.Option("--set", help=SET_HELP)] = None,
    backbone_weights: Annotated[Optional[Path], typer.Option(
        help="Local Kinetics-400 Video Swin file (torchvision's swin3d_t-7615ae03.pth or the official "
             "swin_tiny_patch244_window877_kinetics400_1k.pth; -b for Swin-B): the config's backbone.weights.")] = None,
    text_encoder: Annotated[Optional[str], typer.Option(
        help="Local RoBERTa folder (or a name in the Hugging Face cache): the config's text.encoder.")] = None,
    window: Annotated[Optional[int], typer.Option(min=1, help="Frames per sample, the config's `window` "
                                                           "(must equal the prepared data's: 8 for A2D, 12 for "
                                                           "Refer-YouTube-VOS).")] = None,
    epochs: Annotated[Optional[int], typer.Option(min=1, help="Epochs (default 70, MTTR on A2D).")] = None,
    batch_size: Annotated[Optional[int], typer.Option(min=1, help="Batch per process (default 3); clips with "
                                                                   "--expressions-per-clip above 1.")] = None,
    expressions_per_clip: Annotated[Optional[int], typer.Option(
        min=1, help="Group up to K expressions of the same clip in one item: the backbone runs once for all of "
                    "them (default 1: one expression per sample, as MTTR).")] = None,
    lr: Annotated[Optional[float], typer.Option(help="Learning rate (default 1e-4).")] = None,
    backbone_lr: Annotated[Optional[float], typer.Option(help="Backbone learning rate (default 1e-5).")] = None,
    text_encoder_lr: Annotated[Optional[float], typer.Option(
        help="Text encoder learning rate when it is trained, not frozen (default 5e-5).")] = None,
    lr_milestones: Annotated[Optional[str], typer.Option(help="Comma-separated epochs where lr x lr-gamma.")] = None,
    lr_warmup_steps: Annotated[Optional[int], typer.Option(
        min=0, help="Raise the lr linearly over the first N optimiser steps (default 0: off, as MTTR).")] = None,
    amp: Annotated[Optional[str], typer.Option(help="bf16 (default), fp16 or off; CUDA only.")] = None,
    workers: Annotated[Optional[int], typer.Option(min=0, help=WORKERS_HELP, envvar="LOSH_WORKERS")] = None,
    seed: Annotated[Optional[int], typer.Option(help="Random seed (default 42).")] = None,
    max_steps: Annotated[Optional[int], typer.Option(min=0, help="Stop after this many steps (smoke runs).")] = None,
    checkpoint_every: Annotated[Optional[int], typer.Option(min=0, help="Also checkpoint every N steps.")] = None,
    ema_decay: Annotated[Optional[float], typer.Option(
        help="Also keep an exponential moving average of the weights with this decay (e.g. 0.999), which "
             "evaluate uses; default 0: off, as MTTR.")] = None,
    eval_every: Annotated[Optional[int], typer.Option(
        min=0, help="Evaluate every N epochs (and after the last) on --eval-split, log the metrics and keep "
                    "RUN/checkpoints/best.pt (default 0: never).")] = None,
    eval_split: Annotated[Optional[str], typer.Option(help="Split evaluated during training (default: test, or the "
                                                           "data set's own, e.g. holdout).")] = None,
    eval_samples: Annotated[Optional[int], typer.Option(
        min=0, help="Evaluate a fixed subset of this many samples, spread over the split (default 0: all).")] = None,
    best_metric: Annotated[Optional[str], typer.Option(
        help="Metric best.pt maximises: mean_iou (default), overall_iou, map, jf, j or f.")] = None,
    settings_file: Annotated[Optional[Path], typer.Option("--settings", help="JSON training settings file.")] = None,
    resume: Annotated[bool, typer.Option(help="Continue the run in --out from its last checkpoint, with its own "
                                              "settings; options may change only epochs, max steps, the eval "
                                              "cadence, checkpoint/log cadence and workers.")] = False,
    init_from: Annotated[Optional[Path], typer.Option(
        help="Start a new run from this checkpoint's weights (a losh checkpoint, or a published file after "
             "convert-checkpoint): new optimiser and schedule; loaded / new / ignored tensors listed in "
             "RUN/init-from.json.")] = None,
    init_parts: Annotated[Optional[str], typer.Option(
        help="With --init-from: only these parts, comma-separated prefixes of the model's names (e.g. "
             "backbone,text_encoder,text_proj); default: every tensor the model has.")] = None,
    device: Annotated[Optional[str], typer.Option(help="Force a device (cpu, cuda:0).")] = None,
    log: Annotated[Optional[str], typer.Option(
        help="tensorboard (default): also RUN/tensorboard event files (every loss term, lr per group, gradient "
             "norm, clips/s, data wait, validation metrics and overlays); none: metrics.jsonl only.")] = None,
    log_images_every: Annotated[Optional[int], typer.Option(
        min=0, help="TensorBoard overlays of a fixed few validation expressions every N validations (default 1; "
                    "0: none).")] = None,
    log_every: Annotated[Optional[int], typer.Option(
        min=1, help="Log the losses every N steps (metrics.jsonl, TensorBoard; default 10).")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", help=QUIET_HELP)] = False,
    trust_checkpoint: Annotated[bool, typer.Option(
        "--trust-checkpoint", help="Load checkpoint and weights files whole, code included: only for files you "
                                   "trust (by default a file holding more than tensors and plain values is "
                                   "refused, naming what it holds).")] = False,
) -> None:
    """Train LoSh-M or LoSh-S (or their MTTR/SgMg baselines, or an ablation) on CUDA, CPU fallback; torchrun for
    many GPUs."""
    from dataclasses import replace

    from losh.data.mixture import parse_data_list
    from losh.errors import AssetMissing
    from losh.schemas.config import ConfigError
    from losh.schemas.prepared import SchemaError
    from losh.schemas.prepared_reader import PreparedDataMissing
    from losh.schemas.train import TrainConfigError, TrainSettings

    try:
        data_sets = [Path(p) for p in parse_data_list(data)]
    except ValueError as e:
        fail(str(e), 2)
    data = data_sets[0] if len(data_sets) == 1 else data_sets
    from losh.training.loop import NonFiniteLoss, RunExists, run_settings
    from losh.training.loop import train as run_training

    try:
        checkpoint = out / "checkpoints" / "last.pt"
        if config is None:   # resuming: the run's own config; else the paper's LoSh-M
            config = str(out / "config.json") if resume and (out / "config.json").is_file() else "losh-m"
        model_config = config_with(config, set_, backbone_weights, text_encoder, window)
        # resuming: the run's own settings are the base, so that only what is given here changes
        from losh.schemas.torch_files import trusting_files
        with trusting_files(trust_checkpoint):
            settings = run_settings(out) if resume and checkpoint.exists() else TrainSettings()
        if settings_file is not None:
            try:
                settings = TrainSettings.from_dict(json.loads(settings_file.read_text(encoding="utf-8")))
            except (json.JSONDecodeError, UnicodeDecodeError) as error:
                raise ValueError(f"{settings_file}: not a JSON settings file ({error})") from None
        overrides = {"epochs": epochs, "batch_size": batch_size, "expressions_per_clip": expressions_per_clip,
                     "lr": lr, "backbone_lr": backbone_lr, "lr_warmup_steps": lr_warmup_steps,
                     "text_encoder_lr": text_encoder_lr, "amp": amp, "num_workers": workers,
                     "seed": seed, "max_steps": max_steps, "checkpoint_every_steps": checkpoint_every,
                     "ema_decay": ema_decay, "eval_every": eval_every, "eval_split": eval_split,
                     "eval_samples": eval_samples, "best_metric": best_metric, "log": log,
                     "log_images_every": log_images_every, "log_every_steps": log_every,
                     "lr_milestones": tuple(int(m) for m in lr_milestones.split(",") if m) if lr_milestones else None}
        settings = replace(settings, **{k: v for k, v in overrides.items() if v is not None}).validate()
        with trusting_files(trust_checkpoint):
            if init_parts and init_from is None:
                raise ValueError("--init-parts chooses what --init-from loads: give --init-from too")
            summary = run_training(data, model_config, out, settings, resume=resume, device=device,
                                   init_from=init_from, progress=not quiet,
                                   init_parts=tuple(p for p in (init_parts or "").split(",") if p.strip()))
    except NonFiniteLoss as e:
        fail(str(e), 3)
    except (ConfigError, TrainConfigError, SchemaError, PreparedDataMissing, RunExists, FileNotFoundError, FolderBusy,
            AssetMissing, ValueError) as e:
        fail(str(e))
    if int(os.environ.get("RANK", "0")) != 0:   # under torchrun, rank 0 reports for all
        return
    losses = ", ".join(f"{k}={v:.4f}" for k, v in summary["last_losses"].items() if k in
                       ("loss", "loss_dice_long", "loss_lsi", "loss_fbc"))
    if not losses:   # resumed a run that was already complete
        typer.echo(f"nothing to train: the run is complete ({summary['steps']} steps, {summary['epochs']} epochs); "
                   f"checkpoint {summary['checkpoint']}")
        return
    group = f" (process group {summary['process_group']})" if summary.get("process_group") else ""
    typer.echo(f"trained {summary['steps']} steps ({summary['epochs']} epochs) on {summary['device']}{group} in "
               f"{summary['seconds']} s; last {losses}; checkpoint {summary['checkpoint']}")
    if summary.get("best"):
        b = summary["best"]
        typer.echo(f"best {b['metric']} {100 * b['value']:.2f}% at epoch {b['epoch']}: "
                   f"{Path(summary['checkpoint']).with_name('best.pt')}")


@app.command("convert-checkpoint")
def convert_checkpoint(
    source: Annotated[Path, typer.Argument(help="The published file (MTTR's .pth.tar, SgMg's .pth).")],
    out: Annotated[Path, typer.Option(help="The losh checkpoint to write (a .pt file).")],
    source_format: Annotated[str, typer.Option("--from", help="Whose file it is: mttr, sgmg, or losh-official "
                                                              "(the official LoSh code's, MTTR's names).")],
    trained_on: Annotated[Optional[str], typer.Option(
        help="The data set the weights were trained on (a2d, refer-youtube-vos; SgMg also refcoco): sets the "
             "window and the frame size `losh predict` resizes to.")] = None,
    config: Annotated[Optional[str], typer.Option(
        help="Preset or JSON config the tensors' dims are read onto (default: mttr, sgmg or losh-m:official); "
             "the attention heads, which no tensor shape holds, come from it.")] = None,
    window: Annotated[Optional[int], typer.Option(
        min=1, help="Frames per window, where the publisher's differs from --trained-on's (MTTR's A2D files: 8 "
                    "or 10).")] = None,
    text_encoder: Annotated[Optional[str], typer.Option(
        help="Local roberta-base folder (default: the Hugging Face cache): its tokenizer and config.")] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace OUT if it exists.")] = False,
    trust_checkpoint: Annotated[bool, typer.Option(
        "--trust-checkpoint", help="Load the file whole, code included: only for a file you trust (by default "
                                   "a file holding more than tensors, plain values and SgMg's argparse options "
                                   "is refused, naming what it holds).")] = False,
) -> None:
    """A published MTTR, SgMg or official LoSh file as a losh checkpoint: every tensor mapped (or dropped on a
    named list), the config read from the tensors' shapes; evaluate, predict and train --init-from read it."""
    from losh.errors import AssetMissing
    from losh.schemas.torch_files import trusting_files
    from losh.training.convert import convert_checkpoint as run_conversion

    try:
        with trusting_files(trust_checkpoint):
            report = run_conversion(source_format, source, out, config=config, trained_on=trained_on,
                                    window=window, overwrite=overwrite, text_encoder=text_encoder)
    except (FileNotFoundError, FileExistsError, AssetMissing, ValueError) as e:
        fail(str(e))
    for line in report.lines():
        typer.echo(line)
    typer.echo(f"wrote {out}")


@app.command()
def evaluate(
    data: Annotated[Path, typer.Option("--data", help="Prepared data set (PREP).")],
    checkpoint: Annotated[Optional[Path], typer.Option(help="Checkpoint to evaluate (RUN/checkpoints/last.pt).")] = None,
    predictions: Annotated[Optional[Path], typer.Option(help="Score a predictions folder instead of a model.")] = None,
    split: Annotated[Optional[str], typer.Option(help="Split to score (default: the data set's: a2d test, "
                                                     "refer-youtube-vos holdout (else valid), refer-davis val).")] = None,
    out: Annotated[Optional[Path], typer.Option(
        help="Evaluation folder: metrics.json, and the submission zip, pictures and predicted masks when made.")] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace an evaluation folder this command wrote.")] = False,
    submission: Annotated[Optional[Path], typer.Option(help="Whole-video splits: the Refer-YouTube-VOS server's zip "
                                                            "(Annotations/<video>/<exp>/<frame>.png); default "
                                                            "OUT/submission.zip where the split's masks are not "
                                                            "public.")] = None,
    save_predictions: Annotated[Optional[Path], typer.Option(help="Write predicted masks (PNG) here.")] = None,
    visualize: Annotated[int, typer.Option(min=0, help="Write this many GT-vs-prediction pictures.")] = 0,
    visualize_dir: Annotated[Optional[Path], typer.Option(help="Folder of the pictures (default OUT/pictures).")] = None,
    batch_size: Annotated[int, typer.Option(min=1, help="Clips per batch (a clip's expressions, up to 8, share "
                                                         "one backbone pass; a batch holds clips of one frame "
                                                         "size, so the metrics do not depend on it).")] = 2,
    workers: Annotated[Optional[int], typer.Option(min=0, help=WORKERS_HELP, envvar="LOSH_WORKERS")] = None,
    amp: Annotated[str, typer.Option(help="off: float32, as MTTR evaluates (default, whatever the training "
                                          "used); bf16: autocast on CUDA.")] = "off",
    resolution: Annotated[str, typer.Option(help="original: score at the video's original size, as MTTR; "
                                                 "prepared: at the prepared frame size.")] = "original",
    raw: Annotated[Optional[Path], typer.Option(help="Raw data set root, for original-size masks of samples "
                                                     "prepared at another size (default: the manifest's source).")] = None,
    inference_short_pathway: Annotated[Optional[str], typer.Option(
        help="encoder: the short text runs through the encoder, feeding the long pathway's cross-attention "
             "(the paper presets' default); none: the long pathway alone. Default: the checkpoint's config.")] = None,
    baselines: Annotated[bool, typer.Option(help="Also report the mean IoU of trivial baselines (empty mask, "
                                                 "full frame, the untrained model of the checkpoint's config).")] = False,
    ema: Annotated[bool, typer.Option(help="Evaluate the checkpoint's weight average when it has one "
                                           "(train --ema-decay); --no-ema: the trained weights.")] = True,
    text_encoder: Annotated[Optional[str], typer.Option(
        help="Local RoBERTa folder, where the checkpoint's text.encoder path is not on this machine.")] = None,
    device: Annotated[Optional[str], typer.Option(help="Force a device (cpu, cuda:0).")] = None,
    report_file: Annotated[Optional[Path], typer.Option(
        "--report", help="The HTML report to write (one self-contained file: metrics beside the paper's, plots, "
                         "the worst and best samples, every expression's overlay); default OUT/report.html when "
                         "--out is a folder.")] = None,
    no_report: Annotated[bool, typer.Option("--no-report", help="No report, and no per-sample results and "
                                                               "pictures in OUT.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", help=QUIET_HELP)] = False,
    trust_checkpoint: Annotated[bool, typer.Option(
        "--trust-checkpoint", help="Load checkpoint and weights files whole, code included: only for files you "
                                   "trust (by default a file holding more than tensors and plain values is "
                                   "refused, naming what it holds).")] = False,
) -> None:
    """Metrics of a checkpoint (or of a predictions folder) on a split: OUT/metrics.json, the per-sample results
    (OUT/samples.jsonl) and the HTML report, the submission zip of a split whose masks are private, optional
    pictures."""
    from losh.errors import AssetMissing
    from losh.evaluation.frame_metrics import METRIC_KEYS, format_table
    from losh.schemas.prepared import SchemaError
    from losh.schemas.prepared_reader import PreparedDataMissing, load_manifest

    if (checkpoint is None) == (predictions is None):
        fail("give exactly one of --checkpoint and --predictions", 2)
    if report_file is not None and (no_report or predictions is not None):
        fail("--report is made of a model's evaluation: give --checkpoint, without --no-report", 2)
    workers = default_workers(workers)
    out_is_folder = out is not None and out.suffix != ".json"
    folder, out = evaluation_outputs(out, overwrite)
    if report_file is None and out_is_folder and predictions is None and not no_report:
        from losh.evaluation.report import REPORT_FILE
        report_file = folder / REPORT_FILE
    if report_file is not None and report_file.exists() and not overwrite and \
            not (out_is_folder and report_file.parent == folder):
        fail(f"{report_file} exists: pass --overwrite to replace it", 2)
    try:
        manifest = load_manifest(data)
    except (PreparedDataMissing, SchemaError) as e:
        fail(str(e))
    split_info = manifest["splits"].get(split or manifest["eval_split"], {})
    if split_info.get("kind") == "video" and not split_info.get("masks", True) and submission is None:
        if folder is None:   # refused before the inference: its masks would be scored nowhere
            fail("this split's masks are scored by the Refer-YouTube-VOS server: give --out EVAL, where the "
                 "submission zip is written (or --submission FILE.zip)", 2)
        submission = folder / "submission.zip"
    if visualize and visualize_dir is None:
        visualize_dir = (folder or Path(".")) / "pictures"
    if amp not in ("off", "bf16"):
        fail(f"--amp must be off or bf16, got {amp!r}", 2)
    if resolution not in ("original", "prepared"):
        fail(f"--resolution must be original or prepared, got {resolution!r}", 2)
    stack = ExitStack()
    samples_dir = None
    if report_file is not None:   # the per-sample results: in the evaluation folder, else only for the report
        import tempfile
        samples_dir = folder if out_is_folder else Path(stack.enter_context(tempfile.TemporaryDirectory()))
    try:
        if predictions is not None:
            from losh.evaluation.predictions import score_predictions
            from losh.schemas.atomic import atomic_write_json
            from losh.schemas.prepared_reader import load_manifest
            split = split or load_manifest(data)["eval_split"]
            metrics, missing = score_predictions(data, predictions, split, resolution=resolution, raw=raw,
                                                 progress=not quiet)
            report = {**metrics, "split": split, "predictions": str(predictions), "missing_predictions": len(missing)}
            if missing:
                typer.secho(f"warning: {len(missing)} samples have no prediction (scored as empty masks), "
                            f"e.g. {missing[:3]}", fg=typer.colors.YELLOW, err=True)
            if out is not None:
                atomic_write_json(out, report)
        else:
            from losh.evaluation.evaluate import WindowMismatch, evaluate_checkpoint
            from losh.schemas.torch_files import trusting_files
            stack.enter_context(trusting_files(trust_checkpoint))
            stack.enter_context(warnings_as_lines(WindowMismatch))
            report = evaluate_checkpoint(data, checkpoint, split=split, out=out, save_predictions=save_predictions,
                                         visualize=visualize, visualize_dir=visualize_dir, batch_size=batch_size,
                                         num_workers=workers, device=device, use_ema=ema, amp=amp,
                                         resolution=resolution, raw=raw,
                                         inference_short_pathway=inference_short_pathway, submission=submission,
                                         text_encoder=text_encoder, samples_dir=samples_dir, progress=not quiet)
            split = report["split"]
            if baselines:
                from losh.evaluation.evaluate import trivial_baselines, untrained_model_mean_iou
                from losh.schemas.atomic import atomic_write_json
                from losh.schemas.config import ModelConfig
                config = ModelConfig.from_dict(torch_load_config(checkpoint))
                report["baselines"] = {**trivial_baselines(data, split, resolution=resolution, raw=raw),
                                       "untrained_model_mean_iou": untrained_model_mean_iou(data, config, split=split)}
                if out is not None:
                    atomic_write_json(out, report)
            if report_file is not None:
                from losh.evaluation.report import write_report
                write_report(samples_dir, report_file, metrics=report)
    except (SchemaError, PreparedDataMissing, FileNotFoundError, AssetMissing, ValueError) as e:
        fail(str(e))
    finally:
        stack.close()
    if "J&F" in report:   # a whole-video split
        typer.echo(format_video_metrics(report))
    elif "overall_iou" in report or "map_single_mask" in report:
        typer.echo(format_table({k: report[k] for k in (*METRIC_KEYS, "map_single_mask") if k in report}))
    if report.get("expressions_without_masks"):
        typer.echo(f"{report['expressions_without_masks']} expressions have no public masks (scored by the server)")
    if report.get("submission"):
        typer.echo(f"submission written to {report['submission']}")
    for name, value in report.get("baselines", {}).items():
        typer.echo(f"baseline {name.replace('_mean_iou', '')}: mean IoU {100 * value:.2f}%")
    if report.get("weights") == "ema":
        typer.echo("weights: the checkpoint's moving average (--no-ema for the trained weights)")
    if out is not None:
        typer.echo(f"metrics written to {out}")
    if visualize and checkpoint is not None:
        typer.echo(f"pictures in {visualize_dir}")
    if report_file is not None:
        typer.echo(f"report: {report_file}")


# what `evaluate --out EVAL` writes before metrics.json, its last file
EVALUATION_PARTS = {"samples.jsonl", "thumbnails", "overlays", "pictures", "submission.zip"}


def evaluation_outputs(out: Path | None, overwrite: bool) -> tuple[Path | None, Path | None]:
    """(the evaluation folder, its metrics file) of `evaluate --out`. A folder it did not write is refused; the
    old spelling, `--out FILE.json`, names the metrics file itself."""
    if out is None:
        return None, None
    if out.suffix == ".json":
        return out.parent, out
    metrics = out / "metrics.json"
    if out.exists() and any(out.iterdir()):
        if not metrics.is_file():
            if {p.name for p in out.iterdir()} <= EVALUATION_PARTS:   # an evaluation stopped before its metrics
                return out, metrics
            fail(f"{out} holds files this command did not write: choose another --out", 2)
        if not overwrite:
            fail(f"{out} holds an evaluation: pass --overwrite to replace it, or choose another --out", 2)
    return out, metrics


@app.command()
def predict(
    checkpoint: Annotated[Path, typer.Option(help="Checkpoint (RUN/checkpoints/last.pt or best.pt).")],
    video: Annotated[Path, typer.Option(help="Video file (.mp4, .avi, ...) or a folder of frames (.jpg/.jpeg/.png, "
                                             "sorted naturally: 2.png before 10.png).")],
    out: Annotated[Path, typer.Option(help="Output folder: <expression-slug>/<frame:05d>.png, predictions.json, "
                                           "overlay.mp4, overlay.gif (written atomically).")],
    text: Annotated[Optional[list[str]], typer.Option("--text", help="A referring expression; repeat for more "
                                                                     "(each gets its masks and colour).")] = None,
    fps: Annotated[Optional[float], typer.Option(help="Sample the video at this many frames per second (by "
                                                      "timestamps; default: every frame).")] = None,
    no_video: Annotated[bool, typer.Option("--no-video", help="Skip the overlay video (MP4, H.264) and its GIF "
                                                             "preview: masks and predictions.json only.")] = False,
    overwrite: Annotated[bool, typer.Option(help="Replace a non-empty --out.")] = False,
    short_side: Annotated[Optional[int], typer.Option(min=16, help="Resize frames to this short side (default: as "
                                                                "the checkpoint's training data, else 320).")] = None,
    max_long_side: Annotated[Optional[int], typer.Option(min=16, help="Cap on the resized long side (default: as "
                                                                   "the checkpoint's training data, else 576).")] = None,
    amp: Annotated[str, typer.Option(help="off: float32 (default); bf16: autocast on CUDA.")] = "off",
    ema: Annotated[bool, typer.Option(help="Use the checkpoint's weight average when it has one.")] = True,
    inference_short_pathway: Annotated[Optional[str], typer.Option(
        help="encoder or none (default: the checkpoint's config).")] = None,
    text_encoder: Annotated[Optional[str], typer.Option(
        help="Local RoBERTa folder, where the checkpoint's text.encoder path is not on this machine.")] = None,
    device: Annotated[Optional[str], typer.Option(help="Force a device (cpu, cuda:0); default: CUDA when "
                                                       "available.")] = None,
    spill_dir: Annotated[Optional[Path], typer.Option(
        help="Folder for the per-query mask logits kept until every frame is scored (float16, on disk beyond "
             "1 GiB; default: the system's temporary folder).")] = None,
    progress: Annotated[bool, typer.Option(help="Show progress bars.")] = True,
    quiet: Annotated[bool, typer.Option("--quiet", help=QUIET_HELP)] = False,
    trust_checkpoint: Annotated[bool, typer.Option(
        "--trust-checkpoint", help="Load checkpoint and weights files whole, code included: only for files you "
                                   "trust (by default a file holding more than tensors and plain values is "
                                   "refused, naming what it holds).")] = False,
) -> None:
    """Masks of every frame of a video for each expression, with an overlay video (paper 3.8 inference)."""
    from losh.errors import AssetMissing
    from losh.inference.predict import PredictError, PredictUsageError
    from losh.inference.predict import predict as run_predict

    if not text:
        fail("give at least one expression: --text \"the man in red\"", 2)
    from losh.schemas.torch_files import trusting_files

    try:
        with trusting_files(trust_checkpoint):
            report = run_predict(checkpoint, video, text, out, fps=fps, device=device, overlay=not no_video,
                                 overwrite=overwrite, short_side=short_side, max_long_side=max_long_side, amp=amp,
                                 use_ema=ema, inference_short_pathway=inference_short_pathway,
                                 progress=progress and not quiet,
                                 spill_dir=spill_dir, text_encoder=text_encoder)
    except PredictUsageError as e:
        fail(str(e), 2)
    except (PredictError, AssetMissing, FileNotFoundError, ValueError, OSError) as e:
        fail(str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__)
    t = report["timings"]
    typer.echo(f"{report['frames']} frames ({report['size'][0]}x{report['size'][1]}, model input "
               f"{report['input_size'][0]}x{report['input_size'][1]}) x {len(report['expressions'])} expressions in "
               f"{t['total_s']:.1f} s ({t['frames_per_s']:.1f} frames/s) on {report['device']}")
    for e in report["expressions"]:
        typer.echo(f"  {e['text']!r}: query {e['query']}, score {e['score']:.3f} -> {out / e['masks']}/")
    if report["overlay"]:
        typer.echo(f"overlay: {out / report['overlay']['video']} ({report['overlay']['codec']}), preview "
                   f"{out / report['overlay']['preview']}")
    typer.echo(f"predictions: {out / 'predictions.json'}")


@app.command("report")
def report_command(
    evaluation: Annotated[Path, typer.Argument(help="An evaluation folder (losh evaluate --out EVAL): its "
                                                    "metrics.json, samples.jsonl and pictures.")],
    out: Annotated[Optional[Path], typer.Option(help="The HTML file to write (default EVAL/report.html).")] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace OUT if it exists.")] = False,
) -> None:
    """The HTML report of a saved evaluation: one self-contained file (metrics beside the paper's, precision@k and
    the IoU histogram, the 20 worst and best samples, every expression with its overlay, J&F per video)."""
    from losh.evaluation.report import REPORT_FILE, write_report

    target = out if out is not None else evaluation / REPORT_FILE
    if target.exists() and not overwrite:
        fail(f"{target} exists: pass --overwrite to replace it", 2)
    try:
        written = write_report(evaluation, target)
    except (FileNotFoundError, ValueError, json.JSONDecodeError) as e:
        fail(str(e))
    typer.echo(f"report: {written}")


runs_app = typer.Typer(help="Look at training runs side by side.", no_args_is_help=True)
app.add_typer(runs_app, name="runs")


@runs_app.command("compare")
def runs_compare(
    runs: Annotated[list[Path], typer.Argument(help="Run folders (losh train --out RUN).")],
    out: Annotated[Optional[Path], typer.Option(help="Also write the table to this file: .md, .csv or "
                                                     ".json.")] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace OUT if it exists.")] = False,
) -> None:
    """Steps, epochs, wall time, the final and best validation metrics (percent) of each run, and the settings
    that differ between them (dotted names; train.* for the training settings)."""
    from losh.training.compare_runs import FORMATS, compare_runs, format_text, write_table

    if out is not None and out.suffix not in FORMATS:
        fail(f"--out must end in one of {', '.join(FORMATS)}", 2)
    if out is not None and out.exists() and not overwrite:
        fail(f"{out} exists: pass --overwrite to replace it", 2)
    try:
        table = compare_runs(runs)
    except (FileNotFoundError, ValueError, json.JSONDecodeError) as e:
        fail(str(e))
    typer.echo(format_text(table))
    if out is not None:
        write_table(table, out)
        typer.echo(f"written to {out}")


config_app = typer.Typer(help="See a model config, or write one to a file that --config takes.",
                         no_args_is_help=True)
app.add_typer(config_app, name="config")


@config_app.command("show")
def config_show(
    spec: Annotated[str, typer.Argument(help="Preset (losh-m, losh-s, ...), preset:ablation or a JSON config file.")],
    set_: Annotated[Optional[list[str]], typer.Option("--set", help=SET_HELP)] = None,
) -> None:
    """Print a config as JSON, with --set changes applied."""
    from losh.schemas.config import ConfigError
    try:
        typer.echo(json.dumps(config_with(spec, set_).to_dict(), indent=1))
    except (ConfigError, OSError) as e:
        fail(str(e))


@config_app.command("save")
def config_save(
    spec: Annotated[str, typer.Argument(help="Preset (losh-m, losh-s, ...), preset:ablation or a JSON config file.")],
    out: Annotated[Path, typer.Option(help="The JSON file to write.")],
    set_: Annotated[Optional[list[str]], typer.Option("--set", help=SET_HELP)] = None,
    backbone_weights: Annotated[Optional[Path], typer.Option(help="Local Kinetics-400 Video Swin file: "
                                                                  "backbone.weights.")] = None,
    text_encoder: Annotated[Optional[str], typer.Option(help="Local RoBERTa folder: text.encoder.")] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace OUT if it exists.")] = False,
) -> None:
    """Write a config as JSON (what `losh train --config FILE` reads), with the changes given."""
    from losh.schemas.config import ConfigError, save_config
    if out.exists() and not overwrite:
        fail(f"{out} exists: pass --overwrite to replace it", 2)
    try:
        config = config_with(spec, set_, backbone_weights, text_encoder)
    except (ConfigError, OSError) as e:
        fail(str(e))
    save_config(config, out)
    typer.echo(f"wrote {out} ({config.name})")


def format_video_metrics(report: dict) -> str:
    """J, F and J&F (percent), per expression set and their mean where there are sets."""
    lines = [f"{'':34s}{'J':>8s}{'F':>8s}{'J&F':>8s}{'count':>8s}"]

    def row(name: str, m: dict, count_key: str = "expressions") -> str:
        return f"{name:34s}{100 * m['J']:8.2f}{100 * m['F']:8.2f}{100 * m['J&F']:8.2f}{m.get(count_key, ''):>8}"

    if "davis_unsupervised" in report:
        for name, m in report["davis_unsupervised"].get("subsets", {}).items():
            lines.append(row(f"DAVIS-unsup. {name}", m))
        lines.append(row("DAVIS-unsup. mean of sets", report["davis_unsupervised"]))
    lines.append(row("per expression", report["per_expression"]))
    return "\n".join(lines)


if __name__ == "__main__":
    app()
