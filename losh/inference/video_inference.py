"""Whole-video inference: every frame of a video, one query per expression (paper 3.8).

The one implementation behind Refer-YouTube-VOS / Refer-DAVIS17 evaluation and `losh predict`:

    source = ArrayFrames(frames)                       # (T, h, w, 3) uint8 RGB at the model's input size
    with predict_video(model, source, ["a man riding a horse"], None, window=8,
                       output_size=(720, 1280)) as prediction:
        for t, masks in prediction.frame_masks():      # one bool (H, W) mask per expression
            ...

Windows (`video_windows`): MTTR's Refer-YouTube-VOS split of a video into clips: consecutive, non-overlapping
windows of `window` frames; a last window shorter than `window` is replaced by the video's last `window`
frames (it overlaps the one before; only its new frames are kept, each frame is predicted once), so the
model always sees full windows, as it was trained. A video of at most `window` frames is one pass over the
whole video, which is MTTR's own Refer-YouTube-VOS evaluation (it feeds each validation video whole).

Selection: the reference score of each query (the model's `frame_scores`: LoSh-M's softmax class 0 of
`pred_is_referred`, LoSh-S's sigmoid of `pred_logits`) is averaged over all
frames of the video; each expression keeps its best query, the same on every frame (MTTR's trajectory
score, paper 3.8). All expressions of a video share each window's backbone pass (`clip_index`); at most
`max_expressions_per_pass` texts go in one model call (beyond that the window's backbone runs once per
group of texts).

Memory: the selection needs every frame's scores before any mask is final, so each window's per-query
mask logits are kept as float16, (expressions, frames, queries, h, w) at the model's mask resolution (stride 4
for LoSh-M, the input's for LoSh-S): in memory, or in a
numpy memmap under `spill_dir` (automatically in a temporary directory when they would pass `SPILL_BYTES`).
Where every query's logits would pass `RECOMPUTE_BYTES` (a long video), the video runs twice: the first
pass for the scores only, the second keeping only each expression's chosen query.
Full-size masks are made one frame at a time (`query_masks`, MTTR's post-processing) when iterated.
"""
from __future__ import annotations

import os
import shutil
import tempfile
import weakref
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
import torch
import torch.nn.functional as F

from losh.data.dataset import normalise_frames
from losh.schemas.progress import progress_bar
from losh.training.device import AMP_CHOICES, autocast_for

SPILL_BYTES = 1 << 30          # mask logits above this go to a memmap in a temporary directory
RECOMPUTE_BYTES = 4 << 30      # every query's logits above this: two passes keep only the chosen query's
KEEP_CHOICES = ("auto", "all", "chosen")


# ------------------------------------------------------------------------------------------ frames

@runtime_checkable
class FrameSource(Protocol):
    """A video's frames, already resized to the model's input size."""

    def __len__(self) -> int:
        """The number of frames."""
        ...

    @property
    def size(self) -> tuple[int, int]:
        """(h, w) of every frame."""
        ...

    def read(self, indices: list[int]) -> np.ndarray:
        """(n, h, w, 3) uint8 RGB frames `indices` (ascending, consecutive in practice)."""
        ...


class ArrayFrames:
    """Frames held in memory: (T, h, w, 3) uint8 RGB."""

    def __init__(self, frames: np.ndarray) -> None:
        frames = np.asarray(frames)
        if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8 or not len(frames):
            raise ValueError(f"frames must be (T, h, w, 3) uint8 with T >= 1, got {frames.shape} {frames.dtype}")
        self.frames = frames

    def __len__(self) -> int:
        return len(self.frames)

    @property
    def size(self) -> tuple[int, int]:
        return int(self.frames.shape[1]), int(self.frames.shape[2])

    def read(self, indices: list[int]) -> np.ndarray:
        return self.frames[indices]


# ---------------------------------------------------------------------------------- post-processing

def query_masks(logits: torch.Tensor, padded: tuple[int, int], valid: tuple[int, int],
                size: tuple[int, int] | None = None) -> torch.Tensor:
    """(Q, h, w) stride-4 logits -> (Q, H, W) bool, as MTTR's post-processing: bilinear to the padded
    input size, threshold at 0.5, crop the padding, then (when `size` differs from the input's `valid`
    size) nearest-neighbour resize of the binary masks to `size`, the original video size."""
    up = F.interpolate(logits[None].float(), size=tuple(padded), mode="bilinear", align_corners=False)[0]
    masks = up[:, :valid[0], :valid[1]].sigmoid() > 0.5
    if size is not None and tuple(size) != tuple(valid):
        masks = F.interpolate(masks[None].float(), size=tuple(size), mode="nearest")[0] > 0.5
    return masks


# ----------------------------------------------------------------------------------------- windows

def video_windows(frames: int, window: int) -> list[tuple[int, int, int]]:
    """(start, end, keep_from) per model pass: frames [start, end) go in, the predictions of frames
    [keep_from, end) are kept. Consecutive windows of `window` frames; a short last one becomes the last
    `window` frames of the video (MTTR's split); a video of at most `window` frames is one window."""
    if window < 1 or frames < 1:
        raise ValueError(f"need window >= 1 and frames >= 1, got window={window}, frames={frames}")
    out = []
    for start in range(0, frames, window):
        end = min(start + window, frames)
        out.append((max(0, end - window), end, start))
    return out


# -------------------------------------------------------------------------------------- prediction

@dataclass(frozen=True)
class ExpressionScores:
    """An expression's reference scores averaged over all frames: of its chosen query, and of every query."""

    chosen: float
    queries: np.ndarray        # (Q,) float64


class VideoPrediction:
    """The predictions of `predict_video`. Masks are made on demand, a frame at a time; `close()` (or the
    `with` block) removes the spill file."""

    def __init__(self, expressions: list[str], logits: np.ndarray, query_scores: np.ndarray,
                 input_size: tuple[int, int], output_size: tuple[int, int], windows: list[tuple[int, int, int]],
                 spill_path: Path | None, spill_dir_owned: Path | None) -> None:
        self.expressions = expressions
        self._logits = logits                                   # (N, T, Q or 1, h/4, w/4) float16
        self.query_scores = query_scores                        # (N, Q) float64
        self.chosen_query = query_scores.argmax(axis=1)         # (N,)
        # where each expression's chosen query sits in the logits: all queries kept, or only the chosen one
        self._stored = self.chosen_query if logits.shape[2] == query_scores.shape[1] else np.zeros_like(self.chosen_query)
        self.scores = [ExpressionScores(float(s[q]), s) for s, q in zip(query_scores, self.chosen_query)]
        self.frames = int(logits.shape[1])
        self.input_size = tuple(input_size)
        self.output_size = tuple(output_size)
        self.windows = windows
        self.spill_path = spill_path
        self._cleanup = weakref.finalize(self, _remove_spill, spill_path, spill_dir_owned)

    def __len__(self) -> int:
        return len(self.expressions)

    def logits(self, expression: int, frame: int) -> np.ndarray:
        """The chosen query's stride-4 mask logits (h/4, w/4) float16 of one expression on one frame."""
        return np.asarray(self._store()[expression, frame, self._stored[expression]])

    def masks(self, expression: int, frames: Sequence[int] | None = None) -> Iterator[tuple[int, np.ndarray]]:
        """(frame index, bool (H, W) mask at `output_size`) of one expression, frame by frame."""
        if not 0 <= expression < len(self.expressions):
            raise IndexError(f"expression {expression} of {len(self.expressions)}")
        query = int(self._stored[expression])
        for t in range(self.frames) if frames is None else frames:
            logits = torch.from_numpy(np.asarray(self._store()[expression, t, query:query + 1]))
            yield t, self._post(logits)[0]

    def frame_masks(self, frames: Sequence[int] | None = None) -> Iterator[tuple[int, list[np.ndarray]]]:
        """(frame index, [bool (H, W) mask of each expression]) frame by frame."""
        rows = np.arange(len(self.expressions))
        for t in range(self.frames) if frames is None else frames:
            logits = torch.from_numpy(np.asarray(self._store()[rows, t, self._stored]))   # (N, h, w)
            yield t, list(self._post(logits))

    def _store(self) -> np.ndarray:
        if self._logits is None:
            raise RuntimeError("this VideoPrediction is closed")
        return self._logits

    def _post(self, logits: torch.Tensor) -> np.ndarray:
        return query_masks(logits, self.input_size, self.input_size, self.output_size).numpy()

    def close(self) -> None:
        """Drops the mask logits and removes the spill file (and the temporary directory made for it)."""
        self._logits = None
        self._cleanup()

    def __enter__(self) -> "VideoPrediction":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _remove_spill(path: Path | None, owned_dir: Path | None) -> None:
    if path is not None:
        path.unlink(missing_ok=True)
    if owned_dir is not None:
        shutil.rmtree(owned_dir, ignore_errors=True)


@torch.no_grad()
def predict_video(model: torch.nn.Module, source: FrameSource, long_texts: list[str],
                  short_texts: list[str] | None, *, window: int, output_size: tuple[int, int] | None = None,
                  amp: str = "off", progress: bool = False, spill_dir: Path | None = None,
                  max_expressions_per_pass: int = 8, keep: str = "auto") -> VideoPrediction:
    """Masks of every frame of `source` for each of `long_texts`.

    `short_texts`: one per long text; needed when the model runs the short text through its encoder at
    inference (`config.inference_uses_short_text`; the tagger's short text, see
    `losh.pipeline.shorten.Shortener`), ignored otherwise. `window`: frames per model pass (module docstring:
    MTTR's split; the last window is completed backwards to `window` frames). `output_size`: (H, W) of the
    masks, the original video size (default: the input size). `amp`: 'off' (float32) or 'bf16' (CUDA).
    `spill_dir`: keep the mask logits in a memmap there (otherwise in memory, or in a temporary directory
    beyond `SPILL_BYTES`); the results are the same. `keep`: "all" keeps every query's logits while the
    video runs (one pass); "chosen" runs the video twice, the first pass for the scores only, the second
    keeping only each expression's chosen query (twice the compute, 1/Q of the storage: what a long video
    needs); "auto": "chosen" when every query's logits would pass `RECOMPUTE_BYTES`. The model runs on its
    own device, in eval mode.
    """
    if amp not in AMP_CHOICES:
        raise ValueError(f"amp must be one of {AMP_CHOICES}, got {amp!r}")
    if keep not in KEEP_CHOICES:
        raise ValueError(f"keep must be one of {KEEP_CHOICES}, got {keep!r}")
    if not long_texts:
        raise ValueError("no expressions")
    if max_expressions_per_pass < 1:
        raise ValueError(f"max_expressions_per_pass must be >= 1, got {max_expressions_per_pass}")
    config = getattr(model, "config", None)
    if getattr(config, "inference_uses_short_text", False):
        if short_texts is None:
            raise ValueError("this model runs the short text through the encoder at inference "
                             "(inference_short_pathway = 'encoder'): pass short_texts (e.g. the tagger's, "
                             "losh.pipeline.shorten.Shortener), or use a config with inference_short_pathway = 'none'")
    else:
        short_texts = None
    if short_texts is not None and len(short_texts) != len(long_texts):
        raise ValueError(f"{len(long_texts)} long texts but {len(short_texts)} short texts")
    total = len(source)
    height, width = (int(v) for v in source.size)
    output_size = (height, width) if output_size is None else tuple(int(v) for v in output_size)
    windows = video_windows(total, window)
    device = _device_of(model)
    was_training = model.training
    model.eval()
    n = len(long_texts)
    store = spill_path = owned_dir = None

    def allocate(shape: tuple[int, ...]) -> np.ndarray:
        nonlocal spill_dir, spill_path, owned_dir
        if spill_dir is None and int(np.prod(shape)) * 2 > SPILL_BYTES:
            spill_dir = owned_dir = Path(tempfile.mkdtemp(prefix="losh-video-"))
        if spill_dir is None:
            return np.empty(shape, dtype=np.float16)
        Path(spill_dir).mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix="mask-logits-", suffix=".npy", dir=spill_dir)
        spill_path = Path(name)
        os.close(fd)
        return np.lib.format.open_memmap(spill_path, mode="w+", dtype=np.float16, shape=shape)

    score_sums: np.ndarray | None = None
    mask_size: tuple[int, int] | None = None
    chosen: np.ndarray | None = None        # the second pass of "chosen": each expression's query
    try:
        for pass_ in (1, 2):
            for group, keep_from, stop, probs, masks in _window_outputs(
                    model, source, long_texts, short_texts, windows, (height, width), device, amp,
                    max_expressions_per_pass, progress, chosen):
                if pass_ == 1:
                    if score_sums is None:
                        queries, mask_size = masks.shape[2], tuple(masks.shape[-2:])
                        score_sums = np.zeros((n, queries), dtype=np.float64)
                        every_query = n * total * queries * int(np.prod(mask_size)) * 2
                        if keep == "all" or (keep == "auto" and every_query <= RECOMPUTE_BYTES):
                            store = allocate((n, total, queries, *mask_size))
                    score_sums[group.start:group.stop] += probs.sum(1).double().cpu().numpy()
                if store is not None:
                    store[group.start:group.stop, keep_from:stop] = masks
            if store is not None:
                break                          # every query was kept, or this was the second pass
            chosen = (score_sums / total).argmax(axis=1)
            store = allocate((n, total, 1, *mask_size))
    except BaseException:
        _remove_spill(spill_path, owned_dir)
        raise
    finally:
        model.train(was_training)
    if isinstance(store, np.memmap):
        store.flush()
    return VideoPrediction(list(long_texts), store, score_sums / total, (height, width), output_size, windows,
                           spill_path, owned_dir)


def _window_outputs(model, source: FrameSource, long_texts: list[str], short_texts: list[str] | None,
                    windows: list[tuple[int, int, int]], size: tuple[int, int], device: torch.device, amp: str,
                    per_pass: int, progress: bool, chosen: np.ndarray | None):
    """Per window and group of expressions: (group, keep_from, stop, reference probabilities (g, kept, Q),
    float16 mask logits (g, kept, Q, h/4, w/4), or only the `chosen` query's (g, kept, 1, h/4, w/4))."""
    height, width = size
    n = len(long_texts)
    groups = [range(i, min(i + per_pass, n)) for i in range(0, n, per_pass)]
    reader = ThreadPoolExecutor(max_workers=1)   # reads (decodes) the next window while the model runs
    try:
        pending = reader.submit(source.read, list(range(*windows[0][:2])))
        bar = progress_bar(windows, desc="video", unit="window", disable=not progress)
        for w, (start, stop, keep_from) in enumerate(bar):
            clip = pending.result()
            if w + 1 < len(windows):
                pending = reader.submit(source.read, list(range(*windows[w + 1][:2])))
            if clip.shape != (stop - start, height, width, 3) or clip.dtype != np.uint8:
                raise ValueError(f"frames {start}..{stop - 1}: expected ({stop - start}, {height}, {width}, 3) "
                                 f"uint8, got {clip.shape} {clip.dtype}")
            frames = torch.from_numpy(np.ascontiguousarray(clip)).to(device).permute(0, 3, 1, 2)[None]
            frames = normalise_frames(frames)                                    # (1, t, 3, h, w)
            keep = slice(keep_from - start, stop - start)
            for group in groups:
                texts = [long_texts[i] for i in group]
                shorts = None if short_texts is None else [short_texts[i] for i in group]
                with autocast_for(device, amp):
                    out = model.infer(frames, texts, shorts, annotated_index=None, upsample=False,
                                      clip_index=torch.zeros(len(texts), dtype=torch.long, device=device))
                if list(out["frame_indices"]) != list(range(stop - start)):
                    raise RuntimeError(f"the model decoded frames {out['frame_indices']}, not the whole window")
                probs = out["frame_scores"][:, keep].float()                          # (g, kept, Q)
                masks = out["pred_masks"][:, keep]
                if chosen is not None:
                    index = torch.as_tensor(chosen[group.start:group.stop], device=masks.device)
                    masks = masks[torch.arange(len(texts), device=masks.device), :, index][:, :, None]
                yield group, keep_from, stop, probs, masks.to(torch.float16).cpu().numpy()
    finally:
        reader.shutdown(wait=True)


def _device_of(model: torch.nn.Module) -> torch.device:
    parameter = next(model.parameters(), None)
    return parameter.device if parameter is not None else torch.device("cpu")
