"""LoSh (CVPR 2024) for referring video object segmentation: models, training, evaluation and inference.

    import losh
    losh.prepare("a2d", "/data/a2d", "/data/a2d_prep")                         # raw -> prepared (as prepare-data)
    metrics = losh.evaluate("/data/a2d_prep", "runs/losh_m/checkpoints/best.pt")  # as `losh evaluate`
    report = losh.predict_video("ckpt.pt", "my_video.mp4", ["a man riding a horse"], "pred/")
    model = losh.load_model("ckpt.pt", device="cuda")   # a trained or converted checkpoint, for model.infer

    losh/models/       LoSh-M (on MTTR), LoSh-S (on SgMg), the parts they share, the registry
    losh/data/         the prepared shards as PyTorch data
    losh/training/     the training loop, optimiser, EMA, checkpoints (and published files), devices
    losh/evaluation/   metrics and evaluators (A2D protocol, J&F, the Refer-YouTube-VOS submission)
    losh/inference/    whole-video inference and `losh predict`

docs/architecture.md is the map.
"""
from __future__ import annotations

from pathlib import Path

__all__ = ["evaluate", "load_model", "predict_video", "prepare"]

# In a source checkout the toolkit's other packages sit beside this folder (cli/, pipeline/, schemas/); an
# installed wheel holds them inside it. Either way they import as losh.cli, losh.pipeline and losh.schemas, and
# `losh` is the only top-level name the toolkit takes.
_CHECKOUT = Path(__file__).resolve().parent.parent
if (_CHECKOUT / "schemas" / "__init__.py").is_file() and str(_CHECKOUT) not in __path__:
    __path__.append(str(_CHECKOUT))


def load_model(path: str | Path, device: str = "cpu", *, use_ema: bool = True):
    """The model of a losh checkpoint (trained here, or a published file converted by `losh convert-checkpoint`)
    in eval mode on `device`, ready for `model.infer(frames, texts, annotated_index=...)`; its weight average
    when the run kept one, unless `use_ema` is False. `model.config` is its config. The file is read as data only
    (a file that would run code is refused, naming what it holds)."""
    import torch

    from losh.training.checkpoint import load_model as load_checkpoint_model  # `import losh` stays light
    return load_checkpoint_model(Path(path), torch.device(device), use_ema=use_ema)[0]


def prepare(dataset: str, root: str | Path, out: str | Path, *, short_text: str = "machine", workers: int | None = None,
            progress: bool = True, **options) -> dict:
    """A raw data set (`dataset`: a2d, jhmdb, refer-youtube-vos, refer-davis, refcoco, refcoco+, refcocog; `root` in
    the layout it ships) as a prepared one in `out`, as `losh prepare-data` does; `options` as its flags (window,
    short_side, ..., and the reader's: split_by, images, ...). Returns the manifest."""
    from losh.pipeline.prepare import prepare_dataset, settings_for

    setting_names = ("window", "short_side", "max_long_side", "codec", "jpeg_quality", "decoder")
    settings = settings_for(dataset, **{k: options.pop(k, None) for k in setting_names})
    return prepare_dataset(dataset, Path(root), Path(out), short_source=short_text, settings=settings,
                           workers=workers, progress=progress, **options)


def evaluate(data: str | Path, checkpoint: str | Path, *, split: str | None = None, out: str | Path | None = None,
             device: str | None = None, progress: bool = True, **options) -> dict:
    """A checkpoint's metrics on a prepared data set's split (default: the one the data set is scored on), as
    `losh evaluate` computes them; `out`: a metrics JSON file to write. Returns the metrics."""
    from losh.evaluation.evaluate import evaluate_checkpoint

    return evaluate_checkpoint(Path(data), Path(checkpoint), split=split, out=Path(out) if out else None,
                               device=device, progress=progress, **options)


def predict_video(checkpoint: str | Path, video: str | Path, texts: list[str], out: str | Path, *,
                  device: str | None = None, overwrite: bool = False, progress: bool = True, **options) -> dict:
    """Masks of every frame of a video (file or frame folder) for each expression, written to `out` with an
    overlay video, as `losh predict`. Returns what out/predictions.json holds."""
    from losh.inference.predict import predict

    return predict(Path(checkpoint), Path(video), list(texts), Path(out), device=device, overwrite=overwrite,
                   progress=progress, **options)
