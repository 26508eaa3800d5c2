"""Prepared A2D-Sentences data identical to MTTR's protocol: decoder, sample list, windows, frame counts."""
import csv
import json
from fractions import Fraction
from pathlib import Path

import av
import cv2
import h5py
import numpy as np
import pytest
import torch
from av.video.frame import PictureType

from losh.pipeline.flows import build_flow_jobs, compute_flows, offset_targets
from losh.pipeline.prepare import PrepareSettings, prepare_a2d
from losh.pipeline.video import count_frames, decode_frames, window_indices
from losh.schemas.flows import FlowParams
from losh.schemas.prepared_reader import PreparedDataset

# libx264 is in PyAV's wheel; mpeg4 (also with B-frames) is the fallback where it is not
CODEC = "libx264" if "libx264" in av.codecs_available else "mpeg4"
WINDOW = 8


def write_clip(path: Path, images: list[np.ndarray], first_pts: int = 0) -> None:
    """An mp4 from RGB images, real codec with B-frames; first_pts < 0 makes an edit list (pre-roll)."""
    h, w = images[0].shape[:2]
    with av.open(str(path), "w") as container:
        stream = container.add_stream(CODEC, rate=25)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        if CODEC == "libx264":
            stream.options = {"bf": "3", "g": "12", "crf": "20"}
        else:
            stream.codec_context.max_b_frames, stream.codec_context.gop_size = 3, 12
        for i, image in enumerate(images):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
            frame.pts, frame.time_base = first_pts + i, Fraction(1, 25)
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def moving_images(n: int, h: int = 96, w: int = 128) -> list[np.ndarray]:
    yy, xx = np.mgrid[0:h, 0:w]
    out = []
    for i in range(n):
        img = np.zeros((h, w, 3), np.uint8)
        img[..., 0], img[..., 1], img[..., 2] = xx * 255 // w, yy * 255 // h, (i * 9) % 256
        cv2.circle(img, (10 + 4 * i, h // 2), 14, (250, 40, 40), -1)   # motion: P/B-frames carry real residuals
        out.append(img)
    return out


def read_video_reference(path: Path) -> list[np.ndarray]:
    """RGB frames as MTTR gets them: torchvision.io.read_video(path, pts_unit='sec') where this
    torchvision still has it, else its PyAV rule written out (every frame keyed by pts, pts >= 0, sorted)."""
    import torchvision.io
    if hasattr(torchvision.io, "read_video"):
        return list(torchvision.io.read_video(str(path), pts_unit="sec")[0].numpy())
    with av.open(str(path)) as container:
        by_pts = {f.pts: f for f in container.decode(video=0)}
    return [by_pts[p].to_ndarray(format="rgb24") for p in sorted(by_pts) if p >= 0]


def picture_types(path: Path) -> set[str]:
    with av.open(str(path)) as container:
        return {PictureType(int(f.pict_type)).name for f in container.decode(video=0)}


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("clips")
    plain, preroll = d / "bframes.mp4", d / "preroll.mp4"
    write_clip(plain, moving_images(30))
    write_clip(preroll, moving_images(20), first_pts=-2)   # 2 pre-roll frames cut by an edit list
    return {"plain": plain, "preroll": preroll}


def test_clips_are_real_codec_with_b_frames(clips):
    for path in clips.values():
        assert "B" in picture_types(path), f"{CODEC} wrote no B-frame"


@pytest.mark.parametrize("decoder", ["pyav", "opencv"])
def test_decoders_give_mttr_frame_f_minus_1_for_annotation_f(clips, decoder):
    """Frame f (1-based) of the annotation is read_video's frame f-1, pixel for pixel, as BGR."""
    for path in clips.values():
        reference = read_video_reference(path)
        wanted = {0, 1, 2, 3, 7, len(reference) // 2, len(reference) - 1}
        frames, n, ended = decode_frames(path, wanted, to_end=True, decoder=decoder)
        assert n == len(reference) and not ended
        for f in sorted(wanted):
            assert frames[f].shape == reference[f].shape
            diff = np.abs(frames[f][:, :, ::-1].astype(int) - reference[f].astype(int))
            if decoder == "pyav":
                assert diff.max() == 0, f"{path.name} frame {f}"
            else:   # measured 0 here (OpenCV 5.0's FFmpeg); other builds may convert colours differently
                assert diff.mean() < 1.0, f"{path.name} frame {f}: mean |diff| {diff.mean():.3f}"
            # and it is not a neighbour: neighbouring frames differ by far more
            if f + 1 < len(reference):
                assert np.abs(reference[f + 1].astype(int) - reference[f].astype(int)).mean() > 2


def test_decoders_agree_and_count_the_decoded_length_not_the_container_s(clips):
    with av.open(str(clips["preroll"])) as container:
        listed = container.streams.video[0].frames
    assert listed == 20   # the container lists the pre-roll frames ...
    assert count_frames(clips["preroll"], "pyav") == count_frames(clips["preroll"], "opencv") == 18   # ... decoding drops them
    assert len(read_video_reference(clips["preroll"])) == 18
    a, n_a, _ = decode_frames(clips["plain"], set(range(30)), decoder="pyav")
    b, n_b, _ = decode_frames(clips["plain"], set(range(30)), decoder="opencv")
    assert n_a == n_b == 30
    assert max(int(np.abs(a[i].astype(int) - b[i].astype(int)).max()) for i in range(30)) == 0   # measured


def test_pyav_stops_early_and_clamps_at_the_real_end(clips):
    frames, n, ended = decode_frames(clips["plain"], {2, 5}, decoder="pyav")
    assert n == 6 and not ended and set(frames) == {2, 5}
    frames, n, ended = decode_frames(clips["plain"], {28, 40}, decoder="pyav")
    assert n == 30 and ended and set(frames) == {28, 29}   # the real last frame, for clamping
    reference = read_video_reference(clips["plain"])
    assert (frames[29][:, :, ::-1] == reference[29]).all()
    with pytest.raises(ValueError, match="decoder"):
        decode_frames(clips["plain"], {0}, decoder="ffmpeg")


# ------------------------------------------------------------------------ MTTR's sample list


def mttr_samples(root: Path) -> set[tuple[str, int, int, str]]:
    """(video, instance, frame, split) of MTTR's A2DSentencesDataset.get_text_annotations, written out
    independently: used videos of the subset minus missed ones, rows minus '1 (copy)', one sample per
    h5 (sorted) whose 'instance' lists the row's instance, whatever its mask."""
    subsets = {}
    with open(root / "Release/videoset.csv") as f:
        for row in csv.reader(f):
            subsets[row[0]] = {"0": "train", "1": "test"}[row[8].strip()]
    missed = set((root / "text_annotations/a2d_missed_videos.txt").read_text().split())
    out = set()
    with open(root / "text_annotations/a2d_annotation.txt") as f:
        for row in csv.DictReader(f):
            if row["video_id"] in missed or row["video_id"] not in subsets or row["instance_id"] == "1 (copy)":
                continue
            iid = int(row["instance_id"])
            for p in sorted((root / "text_annotations/a2d_annotation_with_instances" / row["video_id"]).glob("*.h5")):
                with h5py.File(p, "r") as h:
                    if iid in list(h["instance"][()].reshape(-1)):
                        out.add((row["video_id"], iid, int(p.stem), subsets[row["video_id"]]))
    return out


def zero_mask(h5_path: Path, index: int) -> None:
    with h5py.File(h5_path, "r+") as h:
        masks = h["reMask"][()]
        if masks.ndim == 2:
            masks[:] = 0
        else:
            masks[index] = 0
        h["reMask"][...] = masks


@pytest.fixture(scope="module")
def parity_root(synth_root, tmp_path_factory) -> dict:
    """The synthetic root with, in one train and one test video, an instance whose mask is all zero in
    one frame (still listed in the h5), a video cut short of its last annotated frame (re-encoded with
    B-frames), and an expression whose instance no h5 lists."""
    import shutil
    root = tmp_path_factory.mktemp("parity") / "raw"
    shutil.copytree(synth_root, root)
    missed = set((root / "text_annotations/a2d_missed_videos.txt").read_text().split())
    with open(root / "Release/videoset.csv") as f:
        videoset = {r[0]: r for r in csv.reader(f)}
    split_of = {v: r[8].strip() for v, r in videoset.items()}
    ann = root / "text_annotations/a2d_annotation.txt"
    rows = list(csv.DictReader(open(ann)))
    expressed = {(r["video_id"], r["instance_id"]) for r in rows}
    changed = {}
    for subset in ("0", "1"):
        vid = sorted(v for v in split_of if split_of[v] == subset and v not in missed)[0]
        h5s = sorted((root / "text_annotations/a2d_annotation_with_instances" / vid).glob("*.h5"))
        with h5py.File(h5s[0], "r") as h:
            ids = list(h["instance"][()].reshape(-1))
        index = next(i for i, iid in enumerate(ids) if (vid, str(iid)) in expressed)
        zero_mask(h5s[0], index)
        last = int(h5s[-1].stem)
        keep = last - 2                               # the last annotated frame lies 2 frames past the end
        video = root / "Release/clips320H" / f"{vid}.mp4"
        frames, _, _ = decode_frames(video, set(range(keep)))
        write_clip(video, [frames[i][:, :, ::-1] for i in range(keep)])
        changed[vid] = {"zeroed": (int(ids[index]), int(h5s[0].stem)), "frames": keep,
                        "listed": int(videoset[vid][6])}
    with open(ann, "a") as f:
        f.write(f"{vid},99,a ghost nobody annotated,a ghost\n")
    return {"root": root, "changed": changed, "ghost": vid}


@pytest.fixture(scope="module")
def parity_prep(parity_root, tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("parity_prep") / "prep"
    manifest = prepare_a2d(parity_root["root"], out, short_source="manual", workers=1, progress=False,
                           settings=PrepareSettings(window=WINDOW, short_side=64, max_long_side=88))
    return {"prep": out, "manifest": manifest, **parity_root}


def test_sample_list_is_mttr_s_with_empty_masks_and_windows_past_the_end(parity_prep):
    root, prep, counts = parity_prep["root"], parity_prep["prep"], parity_prep["manifest"]["counts"]
    ds = PreparedDataset(prep)
    ours = {(r.video_id, r.instance_id, r.frame, r.split) for r in ds.records}
    expected = mttr_samples(root)
    assert ours == expected and len(ds.records) == len(expected)
    for split in ("train", "test"):
        assert counts[f"samples_{split}"] == sum(s[3] == split for s in expected)
    # windows: MTTR's, clamped to the decoded length (also past the end)
    lengths = {}
    for r in ds.records:
        n = lengths.setdefault(r.video_id, count_frames(root / "Release/clips320H" / f"{r.video_id}.mp4"))
        assert r.video_frames == n
        assert r.window == [min(max(i, 0), n - 1) + 1 for i in range(r.frame - 1 - WINDOW // 2,
                                                                     r.frame - 1 + (WINDOW + 1) // 2)]
    past = [r for r in ds.records if r.frame > r.video_frames]
    assert counts["samples_window_past_end"] == len(past) > 0
    assert {r.video_id for r in past} == set(parity_prep["changed"])
    for r in past:   # the window shows the last frames; its annotated position holds the last one
        assert r.window[r.annotated_position] == r.video_frames and r.window[-1] == r.video_frames
        sample = ds.read(r)
        assert sample.long_mask.shape == sample.frames.shape[1:3]
    # empty masks: kept and counted; exactly the zeroed (instance, frame) pairs
    empty = {(r.video_id, r.instance_id, r.frame) for r in ds.records if not ds.read(r).long_mask.any()}
    assert empty == {(vid, *c["zeroed"]) for vid, c in parity_prep["changed"].items()}
    assert counts["samples_empty_mask"] == len(empty) == 2


def test_frame_count_mismatch_and_skips_are_reported_by_video(parity_prep):
    counts = parity_prep["manifest"]["counts"]
    report = json.loads((parity_prep["prep"] / "report.json").read_text())["problems"]
    mismatches = {p["video_id"]: p for p in report if p["reason"].startswith("frame count mismatch")}
    assert counts["videos_frame_count_mismatch"] == len(mismatches) == 2
    for vid, c in parity_prep["changed"].items():
        assert mismatches[vid]["total_frames_listed"] == c["listed"] == 16
        assert mismatches[vid]["frames_decoded"] == c["frames"]
    ghosts = [p for p in report if p["instance_id"] == 99]
    assert len(ghosts) == 1 and ghosts[0]["video_id"] == parity_prep["ghost"] and "MTTR skips" in ghosts[0]["reason"]
    assert parity_prep["manifest"]["decoder"] == "pyav"


def test_flow_anchor_is_the_window_position():
    # annotated frame 11 of a 10-frame video: the window stands for it with the last frame, whose
    # neighbours are not frame 11's, so no flow of it is valid (flows still run from the anchor 10)
    window = [i + 1 for i in window_indices(11, 10, 8)]
    assert window == [7, 8, 9, 10, 10, 10, 10, 10]
    targets, valid = offset_targets(window, 11, (-2, -1, 1, 2))
    assert targets == (9, 10, 10, 10) and valid == (False, False, False, False)
    targets, valid = offset_targets([i + 1 for i in window_indices(9, 10, 8)], 9, (-2, -1, 1, 2))
    assert targets == (7, 8, 10, 10) and valid == (True, True, True, False)
    targets, valid = offset_targets([i + 1 for i in window_indices(1, 10, 8)], 1, (-2, -1, 1, 2))
    assert targets == (1, 1, 2, 3) and valid == (False, False, True, True)
    with pytest.raises(ValueError, match="does not stand for annotated frame 12"):
        offset_targets(list(range(9, 17)), 12, (-1, 1))   # the window of frame 13, not 12


def test_flows_training_step_and_evaluation_run_on_empty_masks_and_past_end(parity_prep, tmp_path):
    import shutil

    from losh.data.dataset import RVOSDataset, collate
    from losh.evaluation.evaluate import evaluate_checkpoint
    from losh.models.registry import build_criterion, build_model
    from losh.schemas.presets import get_config
    from losh.schemas.train import TrainSettings
    from losh.training.loop import forward_and_loss, train
    prep = tmp_path / "prep"
    shutil.copytree(parity_prep["prep"], prep)
    compute_flows(prep, workers=0, progress=False)
    jobs, _ = build_flow_jobs(prep, FlowParams())
    anchors = {(j.video_id, k): a for j in jobs for k, a in zip(j.frames, j.anchor_frames)}
    for vid, c in parity_prep["changed"].items():
        past = [k for (v, k) in anchors if v == vid and k > c["frames"]]
        assert past and all(anchors[vid, k] == c["frames"] for k in past)

    train_set = RVOSDataset(prep, "train", with_flows=True)
    vid = next(v for v in parity_prep["changed"] if any(r.video_id == v for r in train_set.data.records))
    iid, frame = parity_prep["changed"][vid]["zeroed"]
    empty = next(i for i, r in enumerate(train_set.data.records)
                 if (r.video_id, r.instance_id, r.frame) == (vid, iid, frame))
    past = next(i for i, r in enumerate(train_set.data.records) if r.past_end)
    batch = collate([train_set[empty], train_set[past]])
    assert not batch["long_mask"][0].any()
    config = get_config("tiny")
    torch.manual_seed(0)
    model = build_model(config)
    model.text_encoder.fit_tokenizer(sorted({t for r in train_set.data.records for t in (r.long, r.short)}))
    losses = forward_and_loss(model, build_criterion(config), batch, torch.device("cpu"), "off")
    assert all(torch.isfinite(v).all() for v in losses.values()), losses
    losses["loss"].backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)

    run = train(prep, config, tmp_path / "run", TrainSettings(epochs=1, batch_size=2, num_workers=0, amp="off"),
                progress=False)
    metrics = evaluate_checkpoint(prep, tmp_path / "run/checkpoints/last.pt", split="test", progress=False)
    print("evaluation on empty masks / past-end samples:", {k: metrics[k] for k in ("overall_iou", "mean_iou", "map")})
    assert run["steps"] >= 1 and metrics["overall_iou"] is not None
