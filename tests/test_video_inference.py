"""Whole-video inference: windows, one query per expression over the whole video, streamed masks, spill."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from losh.data.dataset import IMAGENET_MEAN, IMAGENET_STD
from losh.inference.video_inference import ArrayFrames, FrameSource, predict_video, query_masks, video_windows
from losh.models.registry import build_model
from losh.schemas.presets import get_config

H, W = 32, 64                 # input size (stride-4 logits 8 x 16)
OUT = (48, 96)                # the "original" video size
LONG = ["the red circle moving to the left", "a small blue square", "the green triangle jumping"]
SHORT = ["the red circle", "a small blue square", "the green triangle"]


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_model(get_config("tiny")).eval()


@pytest.fixture(scope="module")
def video() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (10, H, W, 3), dtype=np.uint8)


def test_windows_follow_mttr_split():
    assert video_windows(10, 4) == [(0, 4, 0), (4, 8, 4), (6, 10, 8)]   # last: the last 4 frames, 2 new
    assert video_windows(8, 4) == [(0, 4, 0), (4, 8, 4)]
    assert video_windows(3, 8) == [(0, 3, 0)]                             # shorter than a window: whole
    assert video_windows(1, 1) == [(0, 1, 0)]
    for frames, window in ((10, 4), (17, 8), (5, 5), (2, 8)):
        kept = [t for _, stop, keep in video_windows(frames, window) for t in range(keep, stop)]
        assert kept == list(range(frames))                                # every frame predicted once
        assert all(stop - start == min(window, frames) for start, stop, _ in video_windows(frames, window))
    with pytest.raises(ValueError):
        video_windows(0, 4)


def test_shapes_counts_and_one_mask_per_frame_per_expression(model, video):
    source = ArrayFrames(video)
    assert isinstance(source, FrameSource) and len(source) == 10 and source.size == (H, W)
    with predict_video(model, source, LONG[:2], SHORT[:2], window=4, output_size=OUT) as p:
        q = model.config.transformer.num_queries
        assert p.frames == 10 and p.expressions == LONG[:2] and len(p) == 2
        assert p.chosen_query.shape == (2,) and p.query_scores.shape == (2, q)
        for e, s in enumerate(p.scores):
            assert s.queries.shape == (q,) and 0 < s.chosen <= 1
            assert s.chosen == pytest.approx(s.queries.max()) and p.chosen_query[e] == s.queries.argmax()
        seen = []
        for t, masks in p.frame_masks():
            seen.append(t)
            assert len(masks) == 2 and all(m.shape == OUT and m.dtype == bool for m in masks)
        assert seen == list(range(10))
        per_expression = list(p.masks(1))
        assert [t for t, _ in per_expression] == list(range(10))
        frame_3 = dict(p.frame_masks([3]))[3]
        assert np.array_equal(per_expression[3][1], frame_3[1])
    default = predict_video(model, source, LONG[:1], SHORT[:1], window=4)
    assert next(default.masks(0))[1].shape == (H, W)                      # default: the input size


def test_one_window_matches_the_models_own_inference(model, video):
    """A video within one window: the scores, the chosen query and the masks of `model.infer` +
    `query_masks` (the mask logits kept as float16)."""
    source = ArrayFrames(video[:6])
    p = predict_video(model, source, LONG[:2], SHORT[:2], window=8, output_size=OUT)
    frames = torch.from_numpy(video[:6]).permute(0, 3, 1, 2)[None].float() / 255
    frames = (frames - torch.tensor(IMAGENET_MEAN).view(1, 1, 3, 1, 1)) / torch.tensor(IMAGENET_STD).view(1, 1, 3, 1, 1)
    ref = model.infer(frames, LONG[:2], SHORT[:2], annotated_index=None, upsample=False,
                      clip_index=torch.zeros(2, dtype=torch.long))
    np.testing.assert_allclose(p.query_scores, ref["scores"].numpy(), rtol=1e-5, atol=1e-6)
    assert p.chosen_query.tolist() == ref["best_query"].tolist()
    for e in range(2):
        for t, mask in p.masks(e):
            logits = ref["pred_masks"][e, t, ref["best_query"][e]].half()[None]
            assert np.array_equal(mask, query_masks(logits, (H, W), (H, W), OUT)[0].numpy())


def test_spill_equals_in_memory_and_close_removes_the_file(model, video, tmp_path):
    source = ArrayFrames(video)
    memory = predict_video(model, source, LONG[:2], SHORT[:2], window=4, output_size=OUT)
    spilled = predict_video(model, source, LONG[:2], SHORT[:2], window=4, output_size=OUT, spill_dir=tmp_path)
    assert memory.spill_path is None and spilled.spill_path.parent == tmp_path and spilled.spill_path.exists()
    assert np.array_equal(memory.query_scores, spilled.query_scores)
    assert np.array_equal(memory.chosen_query, spilled.chosen_query)
    for (t, a), (u, b) in zip(memory.frame_masks(), spilled.frame_masks()):
        assert t == u and all(np.array_equal(x, y) for x, y in zip(a, b))
    spilled.close()
    assert not any(tmp_path.iterdir())
    with pytest.raises(RuntimeError, match="closed"):
        next(spilled.masks(0))


def test_automatic_spill_beyond_the_threshold(model, video, monkeypatch):
    import losh.inference.video_inference as vi

    monkeypatch.setattr(vi, "SPILL_BYTES", 1000)
    p = predict_video(model, ArrayFrames(video[:5]), LONG[:1], SHORT[:1], window=4)
    path = p.spill_path
    assert path is not None and path.exists() and path.parent.name.startswith("losh-video-")
    p.close()
    assert not path.parent.exists()


def test_two_passes_keep_only_the_chosen_queries_and_give_the_same_masks(model, video, monkeypatch):
    import losh.inference.video_inference as vi

    source = ArrayFrames(video)
    every = predict_video(model, source, LONG[:2], SHORT[:2], window=4, output_size=OUT, keep="all")
    chosen = predict_video(model, source, LONG[:2], SHORT[:2], window=4, output_size=OUT, keep="chosen")
    queries = every.query_scores.shape[1]
    assert every._logits.shape[2] == queries > 1 and chosen._logits.shape[2] == 1   # 1/Q of the storage
    assert np.array_equal(every.query_scores, chosen.query_scores)
    assert np.array_equal(every.chosen_query, chosen.chosen_query)
    for (t, a), (u, b) in zip(every.frame_masks(), chosen.frame_masks()):
        assert t == u and all(np.array_equal(x, y) for x, y in zip(a, b))
    # "auto" chooses two passes when every query's logits would pass the bound
    monkeypatch.setattr(vi, "RECOMPUTE_BYTES", 1000)
    assert predict_video(model, source, LONG[:1], SHORT[:1], window=4)._logits.shape[2] == 1
    with pytest.raises(ValueError, match="keep must be one of"):
        predict_video(model, source, LONG[:1], SHORT[:1], window=4, keep="some")


def test_more_expressions_than_one_pass_hold_give_the_same_result(model, video):
    source = ArrayFrames(video)
    one = predict_video(model, source, LONG, SHORT, window=4, output_size=OUT)
    split = predict_video(model, source, LONG, SHORT, window=4, output_size=OUT, max_expressions_per_pass=2)
    np.testing.assert_allclose(split.query_scores, one.query_scores, rtol=1e-5, atol=1e-6)
    assert np.array_equal(split.chosen_query, one.chosen_query)
    for (_, a), (_, b) in zip(one.frame_masks(), split.frame_masks()):
        assert all((x != y).mean() < 1e-3 for x, y in zip(a, b))


def test_short_texts_are_required_when_the_encoder_reads_them(model, video):
    with pytest.raises(ValueError, match="short_texts"):
        predict_video(model, ArrayFrames(video), LONG[:1], None, window=4)
    with pytest.raises(ValueError, match="amp"):
        predict_video(model, ArrayFrames(video), LONG[:1], SHORT[:1], window=4, amp="fp8")


# ------------------------------------------------------------------- a stub model with controlled scores

FRAMES, WINDOW, QUERIES = 10, 4, 4
HIGH, LOW, STEADY = 0.95, 0.05, 0.45


def stub_probability(t: int) -> list[float]:
    """Per-frame reference probability of the 4 queries: q0 high on frames 0-3, q1 on 4-7, q2 on 7-9,
    q3 steady. Each window's mean picks a spiky query (q0, q1, q2: frames 6-9 in the last window), the
    mean over the whole video picks q3."""
    return [HIGH if t < 4 else LOW, HIGH if 4 <= t < 8 else LOW, HIGH if t >= 7 else LOW, STEADY]


class StubModel(nn.Module):
    """`infer` as LoSh's: reads each frame's index from its pixels (frame t is filled with 10 t), returns
    the scores of `stub_probability` and mask logits positive on column block q of query q."""

    def __init__(self) -> None:
        super().__init__()
        self.anchor = nn.Parameter(torch.zeros(1))
        self.config = SimpleNamespace(inference_uses_short_text=False)
        self.calls: list[int] = []

    def infer(self, frames, long_texts, short_texts=None, *, annotated_index, padding_mask=None, upsample=True,
              clip_index=None):
        assert annotated_index is None and not upsample and short_texts is None
        mean = torch.tensor(IMAGENET_MEAN).view(1, 1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD).view(1, 1, 3, 1, 1)
        pixel = ((frames * std + mean) * 255).round()[0, :, 0, 0, 0]          # (t,)
        index = [int(v) // 10 for v in pixel]
        self.calls.append(len(long_texts))
        prob = torch.tensor([stub_probability(t) for t in index])              # (t, Q)
        n, h, w = len(long_texts), frames.shape[-2] // 4, frames.shape[-1] // 4
        masks = torch.full((n, len(index), QUERIES, h, w), -10.0)
        for q in range(QUERIES):
            masks[:, :, q, :, q * w // QUERIES:(q + 1) * w // QUERIES] = 10.0
        return {"frame_scores": prob[None].expand(n, -1, -1), "pred_masks": masks,
                "frame_indices": list(range(len(index)))}


def test_the_chosen_query_is_the_best_over_the_whole_video_not_any_window():
    frames = np.zeros((FRAMES, 16, 32, 3), dtype=np.uint8)
    for t in range(FRAMES):
        frames[t] = 10 * t
    stub = StubModel()
    p = predict_video(stub, ArrayFrames(frames), ["x", "y", "z"], None, window=WINDOW, max_expressions_per_pass=2)
    assert stub.calls == [2, 1] * 3                                           # 3 windows, 2 passes each
    table = np.array([stub_probability(t) for t in range(FRAMES)])
    per_window = [table[start:stop].mean(0).argmax() for start, stop, _ in p.windows]
    assert p.windows == [(0, 4, 0), (4, 8, 4), (6, 10, 8)] and per_window == [0, 1, 2]
    whole = table.mean(0)                          # each frame once (frames 6, 7 are in two windows)
    assert whole.argmax() == 3 and 3 not in per_window
    assert p.chosen_query.tolist() == [3, 3, 3]
    np.testing.assert_allclose(p.query_scores, np.tile(whole, (3, 1)), rtol=1e-6)
    assert [s.chosen for s in p.scores] == pytest.approx([STEADY] * 3)
    expected = np.zeros((16, 32), dtype=bool)
    expected[:, 24:] = True                                                   # query 3: the last column block
    for e in range(3):
        masks = list(p.masks(e))
        assert [t for t, _ in masks] == list(range(FRAMES))
        assert all(np.array_equal(m, expected) for _, m in masks)            # the tail frames too
