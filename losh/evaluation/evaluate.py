"""`losh evaluate`: a checkpoint's metrics on a split of PREP (MTTR's A2D protocol + J/F), with
optional predicted-mask PNGs and side-by-side pictures."""
from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from losh.data.dataset import ClipDataset, RVOSDataset, collate_clips, normalise_frames
from losh.data.size_batches import size_grouped_batches
from losh.evaluation.frame_metrics import MetricAccumulator, mask_iou
from losh.evaluation.ground_truth import GroundTruth
from losh.evaluation.predictions import mask_path, write_mask, write_scores
from losh.evaluation.sample_log import SampleLog
from losh.inference.drawing import comparison_picture, save_picture
from losh.inference.short_text import tagger_short_texts
from losh.inference.video_inference import query_masks
from losh.models.registry import build_model
from losh.schemas.atomic import atomic_write_json
from losh.schemas.config import ModelConfig
from losh.schemas.prepared_reader import PreparedDataset, load_manifest
from losh.schemas.progress import progress_bar
from losh.schemas.safe_paths import join_ids
from losh.training.checkpoint import load_model
from losh.training.device import AMP_CHOICES, Dist, autocast_for, padding_mask_of, select_device, to_device


@torch.no_grad()
def evaluate_checkpoint(data: Path, checkpoint: Path, *, split: str | None = None, out: Path | None = None,
                        save_predictions: Path | None = None, visualize: int = 0, visualize_dir: Path | None = None,
                        batch_size: int = 2, num_workers: int = 0, device: str | None = None,
                        progress: bool = True, use_ema: bool = True, amp: str = "off",
                        resolution: str = "original", raw: Path | None = None, max_samples: int = 0,
                        inference_short_pathway: str | None = None, submission: Path | None = None,
                        text_encoder: str | None = None, samples_dir: Path | None = None) -> dict:
    """A checkpoint's metrics on `split` of `data` (default: the split the data set evaluates, e.g. A2D's
    test), in float32 unless `amp` is 'bf16' (MTTR evaluates in float32, whatever the training used),
    scored at the original video size unless `resolution` is 'prepared'. Whole-video splits
    (Refer-YouTube-VOS, Refer-DAVIS17) give J&F, and with `submission` the server's zip. `samples_dir`: where the
    per-sample results and their pictures go, for the report (`losh.evaluation.sample_log`)."""
    manifest = load_manifest(Path(data))
    split = split or manifest["eval_split"]
    if amp not in AMP_CHOICES:
        raise ValueError(f"amp must be one of {AMP_CHOICES}, got {amp!r}")
    dev = select_device(Dist(local_rank=int(os.environ.get("LOCAL_RANK", "0"))), device)   # one process
    model, ckpt = load_model(checkpoint, dev, use_ema=use_ema, inference_short_pathway=inference_short_pathway,
                             text_encoder=text_encoder)
    windows, notes = window_check(manifest, model.config, split)
    samples = SampleLog(samples_dir) if samples_dir is not None else None
    metrics = evaluate_model(model, data, split=split, save_predictions=save_predictions, visualize=visualize,
                             visualize_dir=visualize_dir or (Path(out).parent / "pictures" if out else Path("pictures")),
                             batch_size=batch_size, num_workers=num_workers, amp=amp, progress=progress,
                             resolution=resolution, raw=raw, max_samples=max_samples, submission=submission,
                             samples=samples)
    if samples is not None:
        samples.close()
    report = {**metrics, "split": split, "checkpoint": str(checkpoint), "data": str(data),
              "dataset": manifest["dataset"], "model": ckpt["model_config"]["name"],
              "backbone": ckpt["model_config"].get("backbone", {}).get("variant"),
              "weights": "ema" if use_ema and ckpt.get("model_ema") is not None else "trained",
              "amp": amp, "precision": "bfloat16" if amp == "bf16" and dev.type == "cuda" else "float32",
              "resolution": resolution, "batch_size": batch_size,
              "inference_short_pathway": model.config.inference_short_pathway, "window": windows,
              **({"warnings": notes} if notes else {})}
    if out is not None:
        atomic_write_json(Path(out), report)
    return report


EXPRESSIONS_PER_CLIP = 8


class WindowMismatch(UserWarning):
    """The data was prepared with another window than the checkpoint's model was trained on."""


def window_check(manifest: dict, config: ModelConfig, split: str) -> tuple[dict[str, int], list[str]]:
    """Both windows ({"data": prepared, "model": config.window}) and, where the split's samples are windows of another
    length than the model's, a note (also warned as WindowMismatch): the model then sees windows it never trained
    on, and its metrics are not those of its own protocol. Whole-video splits are cut into the model's windows."""
    windows = {"data": int(manifest["window"]), "model": int(config.window)}
    kind = manifest["splits"].get(split, {}).get("kind")
    if windows["data"] == windows["model"] or kind != "window":
        return windows, []
    note = (f"the data was prepared with --window {windows['data']} but the model was trained on windows of "
            f"{windows['model']} frames: it is scored on {windows['data']}-frame windows; prepare the data with "
            f"--window {windows['model']} to score it as trained")
    warnings.warn(note, WindowMismatch, stacklevel=2)
    return windows, [note]


@torch.no_grad()
def evaluate_model(model: torch.nn.Module, data: Path, *, split: str = "test", save_predictions: Path | None = None,
                   visualize: int = 0, visualize_dir: Path = Path("pictures"), batch_size: int = 2,
                   num_workers: int = 0, amp: str = "off", progress: bool = True, resolution: str = "original",
                   raw: Path | None = None, max_samples: int = 0, submission: Path | None = None,
                   require_tagger: bool = True, samples: SampleLog | None = None) -> dict:
    """MTTR's protocol: per sample, all queries' masks of the annotated frame with their mean reference
    scores (mAP), the best-scoring one for IoU, precision@k, J and F, at the original video size (or the
    prepared one). Batches hold clips of one frame size: nothing is padded, so the metrics do not depend
    on `batch_size` or `num_workers`. NaN metrics become None. `require_tagger`: see `inference_short_texts`.
    `samples`: receives each sample's IoU and overlay (the caller closes it)."""
    model.eval()
    if load_manifest(Path(data))["splits"].get(split, {}).get("kind") == "video":
        from losh.evaluation.evaluate_videos import evaluate_videos
        videos = PreparedDataset(data, split)
        shorts, source = inference_short_texts(videos, model.config, require_tagger)
        return {**evaluate_videos(model, videos, split=split, inference_shorts=shorts, submission=submission,
                                  amp=amp, progress=progress, max_samples=max_samples, samples=samples),
                "inference_short_text": source}
    if submission is not None:
        raise ValueError(f"--submission is for whole-video splits (Refer-YouTube-VOS valid); {split} is not one")
    dev = next(model.parameters()).device
    # batches of clips: the expressions of one annotated frame share one backbone pass (same results)
    dataset = ClipDataset(data, split, max_expressions=EXPRESSIONS_PER_CLIP, max_samples=max_samples)
    truth = GroundTruth(dataset.data, resolution, raw)
    batches = size_grouped_batches([dataset.data.records[g[0]].size for g in dataset.groups], batch_size)
    loader = DataLoader(dataset, batch_sampler=batches, collate_fn=collate_clips, num_workers=num_workers,
                        pin_memory=dev.type == "cuda")
    inference_shorts, short_text_source = inference_short_texts(dataset.data, model.config, require_tagger)
    acc = MetricAccumulator()
    scores_out: dict[str, float] = {}
    pictures_left = visualize
    records = {r.sample_id: r for r in dataset.data.records}
    for batch in progress_bar(loader, desc=f"evaluate {split}", unit="batch", disable=not progress):
        batch = to_device(batch, dev)
        frames = normalise_frames(batch["frames"], batch["valid_size"])
        padded = tuple(frames.shape[-2:])
        padding = padding_mask_of(batch["valid_size"], padded, dev)
        annotated = int(batch["annotated_index"][0])
        shorts = ([inference_shorts[s] for s in batch["sample_id"]] if inference_shorts is not None
                  else batch["short_text"])
        with autocast_for(dev, amp):
            result = model.infer(frames, batch["long_text"], shorts, annotated_index=annotated,
                                 padding_mask=padding, upsample=False, clip_index=batch["clip_index"])
        position = result["frame_indices"].index(annotated)
        for b, sample_id in enumerate(batch["sample_id"]):
            record = records[sample_id]
            clip = int(batch["clip_index"][b])
            valid = tuple(int(v) for v in batch["valid_size"][clip])
            logits = result["pred_masks"][b, position]
            masks = query_masks(logits, padded, valid, truth.size(record)).cpu().numpy()
            scores = result["scores"][b].float().cpu().numpy()
            gt = truth.long_mask(record, batch["long_mask"][b, 0, :valid[0], :valid[1]].cpu().numpy())
            iou = acc.add(gt, masks, scores)
            best = int(np.argmax(scores))
            scores_out[sample_id] = float(scores[best])
            if save_predictions is not None:
                write_mask(mask_path(save_predictions, record), masks[best])
            pred_long = None
            if samples is not None:
                pred_long = query_masks(logits[best:best + 1], padded, valid)[0].cpu().numpy()   # at the frame size
                frame = batch["frames"][clip, annotated, :, :valid[0], :valid[1]].permute(1, 2, 0).cpu().numpy()
                samples.add({"sample_id": sample_id, "video_id": record.video_id, "frame": record.frame,
                             "long": record.long, "short": shorts[b], "iou": iou, "score": float(scores[best])},
                            frame, batch["long_mask"][b, 0, :valid[0], :valid[1]].cpu().numpy(), pred_long)
            if pictures_left > 0:
                pictures_left -= 1
                if pred_long is None:
                    pred_long = query_masks(logits[best:best + 1], padded, valid)[0].cpu().numpy()
                _picture(model, batch, b, clip, annotated, padded, valid, best, pred_long, iou, dev, amp,
                         join_ids(visualize_dir, f"{sample_id}.png"))
    if save_predictions is not None:
        write_scores(Path(save_predictions), split, scores_out, resolution)
    return {**{k: (None if isinstance(v, float) and np.isnan(v) else v) for k, v in acc.result().items()},
            "samples": len(dataset.data.records), "inference_short_text": short_text_source}


def inference_short_texts(data, config: ModelConfig, require_tagger: bool = True
                          ) -> tuple[dict[str, str] | None, str | None]:
    """The short texts inference runs through the encoder ({sample_id: text}, or None to use the prepared
    ones) and where they come from. At inference only the long expression is given (paper 3.8): its short
    text is the machine short text the model was trained with (rule and tagger in its config). Data prepared with
    that machine short text already holds it; other data (manual short text, which a test set would not have, or
    another rule's) gets it here. Where the tagger is not installed: an error naming it, or with `require_tagger`
    False (validation during training) the prepared short texts, said in the source."""
    if not config.inference_uses_short_text:
        return None, None
    info = data.manifest["short_text"]
    if info["source"] == "machine" and (info.get("tagger"), info.get("rule")) == \
            (config.short_text_tagger, config.short_text_rule):
        return None, f"machine ({info['tagger']}/{info['rule']}, prepared)"
    from losh.pipeline.shorten import TaggerUnavailable

    try:
        shorts, tagger = tagger_short_texts([r.long for r in data.records], config)
    except TaggerUnavailable as error:
        if require_tagger:
            raise TaggerUnavailable(f"this model runs the short text through its encoder at inference, and the "
                                    f"tagger that derives it from the long text is missing: {error}") from error
        return None, (f"{info['source']} (prepared: the tagger is not installed, "
                      f"{config.short_text_tagger}/{config.short_text_rule} would be used)")
    return {r.sample_id: short for r, short in zip(data.records, shorts)}, f"machine ({tagger}, from the long " \
                                                                           f"expressions)"


def _picture(model, batch, b, clip, annotated, padded, valid, best, pred_long, iou, dev, amp, path: Path) -> None:
    """GT and prediction, long and (when the model has one) short, for sample b (of clip `clip`) of the batch."""
    frames = normalise_frames(batch["frames"][clip:clip + 1], batch["valid_size"][clip:clip + 1])
    padding = padding_mask_of(batch["valid_size"][clip:clip + 1], padded, dev)
    pred_short = gt_short = None
    if model.config.use_short_text:
        with autocast_for(dev, amp):
            out = model(frames, batch["long_text"][b:b + 1], batch["short_text"][b:b + 1], annotated_index=annotated,
                        padding_mask=padding)
        if "short" in out:
            position = out["frame_indices"].index(annotated)
            pred_short = query_masks(out["short"]["pred_masks"][0, position, best:best + 1], padded, valid)[0]
            pred_short = pred_short.cpu().numpy()
            gt_short = batch["short_mask"][b, 0, :valid[0], :valid[1]].cpu().numpy()
    frame = batch["frames"][clip, annotated, :, :valid[0], :valid[1]].permute(1, 2, 0).cpu().numpy()
    gt_long = batch["long_mask"][b, 0, :valid[0], :valid[1]].cpu().numpy()
    picture = comparison_picture(frame, batch["long_text"][b], batch["short_text"][b], gt_long, pred_long,
                                 gt_short, pred_short, iou)
    save_picture(path, picture)


def untrained_model_mean_iou(data: Path, config: ModelConfig, seed: int = 42, split: str = "test") -> float:
    """Mean IoU of the model as initialised (its tokenizer fitted as training would): the floor that
    training must rise above."""
    torch.manual_seed(seed)
    model = build_model(config)
    if model.text_encoder.trained_tokenizer:
        records = PreparedDataset(data).records
        # fitted as training would (on the train texts); a set that is only scored (JHMDB) on its own texts
        train_records = [r for r in records if r.split == "train"] or records
        model.text_encoder.fit_tokenizer(sorted({t for r in train_records for t in (r.long, r.short)}))
    return evaluate_model(model, data, split=split, progress=False)["mean_iou"]


def trivial_baselines(data: Path, split: str = "test", resolution: str = "original",
                      raw: Path | None = None) -> dict[str, float]:
    """Mean IoU of the empty mask and of the full frame: what a model must clearly beat."""
    dataset = RVOSDataset(data, split)
    truth = GroundTruth(dataset.data, resolution, raw)
    empty, full = [], []
    for record in dataset.data.records:
        gt = truth.long_mask(record, dataset.data.read(record).long_mask)
        empty.append(mask_iou(np.zeros_like(gt), gt))
        full.append(mask_iou(np.ones_like(gt), gt))
    return {"empty_mask_mean_iou": float(np.mean(empty)), "full_frame_mean_iou": float(np.mean(full))}
