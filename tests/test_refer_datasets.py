"""Refer-YouTube-VOS and Refer-DAVIS17 end to end on synthetic roots in their shipped layouts: read, prepare,
train a few steps on whole windows (every frame supervised, L_fbc too), infer whole videos, J&F against an
independent computation, the DAVIS four-set protocol, the submission zip read back."""
import json
import zipfile

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from losh.cli.main import app
from losh.evaluation.evaluate import evaluate_checkpoint
from losh.evaluation.submission import check_submission, read_submission
from losh.evaluation.video_metrics import expression_j_f
from losh.pipeline.prepare import PrepareSettings, consecutive_windows, prepare_dataset
from losh.pipeline.synth_layouts import write_synthetic_refer_davis, write_synthetic_refer_youtube_vos
from losh.schemas.config import with_overrides
from losh.schemas.prepared_reader import PreparedDataset
from losh.schemas.presets import get_config
from losh.schemas.train import TrainSettings
from losh.training.loop import forward_and_loss, train

WINDOW = 6
SETTINGS = PrepareSettings(window=WINDOW, short_side=64, max_long_side=88)


@pytest.fixture(scope="module")
def ytvos(tmp_path_factory):
    root = tmp_path_factory.mktemp("ytvos") / "raw"
    write_synthetic_refer_youtube_vos(root, videos=6, seed=5, height=64, width=88, frames=40, progress=False)
    prep = root.parent / "prep"
    manifest = prepare_dataset("refer-youtube-vos", root, prep, short_source="machine", settings=SETTINGS,
                               workers=1, progress=False, holdout_videos=1, seed=0)
    return root, prep, manifest


@pytest.fixture(scope="module")
def trained(ytvos, tmp_path_factory):
    _, prep, _ = ytvos
    from losh.pipeline.flows import compute_flows
    compute_flows(prep, workers=0, progress=False)
    config = with_overrides(get_config("tiny:msh-subject"), {"window": WINDOW})
    out = tmp_path_factory.mktemp("run")
    summary = train(prep, config, out, TrainSettings(epochs=1, batch_size=2, num_workers=0, log_every_steps=1,
                                                     max_steps=3, amp="off", lr_milestones=(1,)), progress=False)
    return out / "checkpoints" / "last.pt", summary


def test_consecutive_windows_follow_mttr():
    assert consecutive_windows(30, 12) == [list(range(12)), list(range(12, 24)), list(range(18, 30))]
    assert consecutive_windows(24, 12) == [list(range(12)), list(range(12, 24))]
    assert consecutive_windows(5, 12) == [[0, 1, 2, 3, 4] + [4] * 7]


def test_refer_youtube_vos_prepares_windows_holdout_and_valid(ytvos):
    root, prep, manifest = ytvos
    assert manifest["dataset"] == "refer-youtube-vos" and manifest["eval_split"] == "holdout"
    assert manifest["splits"]["train"]["kind"] == "window" and manifest["splits"]["holdout"]["kind"] == "video"
    assert manifest["splits"]["valid"] == {"kind": "video", "masks": False, "samples": manifest["counts"]["samples_valid"]}
    held = manifest["dataset_info"]["holdout"]["video_ids"]
    assert len(held) == 1
    data = PreparedDataset(prep)
    train_records = [r for r in data.records if r.split == "train"]
    assert train_records and held[0] not in {r.video_id for r in train_records}
    meta = json.loads((root / "meta_expressions/train/meta_expressions.json").read_text())["videos"]
    for r in train_records:
        # MTTR's windows of the 8 released frames: [1..6], [3..8]; every frame annotated and supervised
        assert r.window in ([1, 2, 3, 4, 5, 6], [3, 4, 5, 6, 7, 8]) and r.targets == list(range(WINDOW))
        assert r.target_frames == r.window and r.frame == r.window[WINDOW // 2]
        assert meta[r.video_id]["expressions"][r.expression_id]["exp"] == r.long
        sample = data.read(r)
        names = data.frame_names(r)
        assert names[:2] == ["00000", "00005"]
        for position, frame in enumerate(r.target_frames):
            labels = np.asarray(Image.open(root / f"train/Annotations/{r.video_id}/{names[frame - 1]}.png"))
            assert np.array_equal(sample.long_masks[position], labels == r.instance_id)   # stored at the same size
            assert (sample.short_masks[position] >= sample.long_masks[position]).all()
    video = [r for r in data.records if r.split == "holdout"]
    assert all(r.kind == "video" and r.window == list(range(1, 9)) and len(r.targets) == 8 for r in video)
    valid = [r for r in data.records if r.split == "valid"]
    assert valid and all(r.instance_id == -1 and not r.targets for r in valid)


def test_training_supervises_every_frame_of_the_window(ytvos, trained):
    _, prep, _ = ytvos
    checkpoint, summary = trained
    assert summary["steps"] == 3 and np.isfinite(summary["last_losses"]["loss"])
    assert summary["last_losses"]["loss_fbc"] > 0
    # the batch's masks: one per supervised frame; the loss sees all of them
    from losh.data.dataset import ClipDataset, collate_clips
    from losh.models.registry import build_criterion, build_model
    config = with_overrides(get_config("tiny:msh-subject"), {"window": WINDOW, "loss.fbc": 0.0})
    dataset = ClipDataset(prep, "train", max_expressions=4)
    batch = collate_clips([dataset[0]])
    assert batch["long_mask"].shape[1] == WINDOW and batch["supervised"] == list(range(WINDOW))
    torch.manual_seed(0)
    model = build_model(config)
    model.text_encoder.fit_tokenizer(sorted({r.long for r in dataset.data.records} | {r.short for r in dataset.data.records}))
    losses = forward_and_loss(model, build_criterion(config), batch, torch.device("cpu"), "off")
    losses["loss"].backward()
    assert torch.isfinite(losses["loss"])
    # the same batch supervised on its centre frame only gives another loss: the other frames count
    one = dict(batch, supervised=[WINDOW // 2], long_mask=batch["long_mask"][:, WINDOW // 2:WINDOW // 2 + 1],
               short_mask=batch["short_mask"][:, WINDOW // 2:WINDOW // 2 + 1],
               instance_masks=[m[WINDOW // 2:WINDOW // 2 + 1] for m in batch["instance_masks"]])
    with torch.no_grad():
        assert abs(forward_and_loss(model, build_criterion(config), one, torch.device("cpu"), "off")["loss"].item()
                   - losses["loss"].item()) > 1e-4


def test_holdout_j_and_f_match_an_independent_computation(ytvos, trained, tmp_path):
    root, prep, _ = ytvos
    checkpoint, _ = trained
    zip_path = tmp_path / "holdout.zip"
    report = evaluate_checkpoint(prep, checkpoint, out=tmp_path / "m.json", progress=False, submission=zip_path)
    assert report["split"] == "holdout" and 0 <= report["J&F"] <= 1 and report["jf"] == report["J&F"]
    masks = read_submission(zip_path)
    data = PreparedDataset(prep, "holdout")
    js, fs = [], []
    for r in data.records:
        names = data.frame_names(r)
        pred = np.stack([masks[(r.video_id, r.expression_id, names[f - 1])] > 0 for f in r.target_frames])
        gt = np.stack([np.asarray(Image.open(root / f"train/Annotations/{r.video_id}/{names[f - 1]}.png"))
                       == r.instance_id for f in r.target_frames])
        j, f = expression_j_f(pred, gt)
        js.append(j)
        fs.append(f)
    assert report["per_expression"]["expressions"] == len(data.records)
    assert report["J"] == pytest.approx(np.mean(js), abs=1e-9) and report["F"] == pytest.approx(np.mean(fs), abs=1e-9)


def test_valid_submission_has_every_frame_of_every_expression(ytvos, trained, tmp_path):
    root, prep, _ = ytvos
    checkpoint, _ = trained
    zip_path = tmp_path / "submission.zip"
    result = CliRunner().invoke(app, ["evaluate", "--data", str(prep), "--checkpoint", str(checkpoint),
                                      "--split", "valid", "--submission", str(zip_path)])
    assert result.exit_code == 0, result.output
    assert "submission written to" in result.output and "no public masks" in result.output
    meta = json.loads((root / "meta_expressions/valid/meta_expressions.json").read_text())["videos"]
    expected = {vid: {eid: v["frames"] for eid in v["expressions"]} for vid, v in meta.items()}
    assert check_submission(zip_path, expected) == []
    with zipfile.ZipFile(zip_path) as z:
        names = [n for n in z.namelist() if n.endswith(".png")]
    assert all(n.startswith("Annotations/") for n in names)
    assert len(names) == sum(len(frames) for e in expected.values() for frames in e.values())


def test_refer_davis_is_scored_per_expression_set_and_their_mean(trained, tmp_path):
    checkpoint, _ = trained
    root = tmp_path / "davis"
    write_synthetic_refer_davis(root, videos=2, seed=1, height=64, width=88, frames=10, progress=False)
    prep = tmp_path / "davis_prep"
    manifest = prepare_dataset("refer-davis", root, prep, settings=SETTINGS, workers=1, progress=False)
    assert manifest["eval_split"] == "val" and manifest["splits"]["val"]["kind"] == "video"
    records = PreparedDataset(prep).records
    assert {r.subset for r in records} == {"annot1", "annot1_full_video", "annot2", "annot2_full_video"}
    report = evaluate_checkpoint(prep, checkpoint, progress=False)
    sets = report["davis_unsupervised"]["subsets"]
    assert set(sets) == {"annot1", "annot1_full_video", "annot2", "annot2_full_video"}
    assert report["J&F"] == pytest.approx(np.mean([s["J&F"] for s in sets.values()]))
    assert report["per_expression"]["expressions"] == len(records)


def test_prepare_cli_reads_each_layout_and_refuses_bad_options(tmp_path):
    root = tmp_path / "raw"
    write_synthetic_refer_youtube_vos(root, videos=3, seed=2, height=48, width=64, frames=20, progress=False)
    result = CliRunner().invoke(app, ["prepare-data", "--dataset", "refer-youtube-vos", "--root", str(root),
                                      "--out", str(tmp_path / "prep"), "--window", "4", "--short-side", "48",
                                      "--max-long-side", "64", "--workers", "1"])
    assert result.exit_code == 0, result.output
    assert "train (window)" in result.output and "valid (video, no masks)" in result.output
    bad = CliRunner().invoke(app, ["prepare-data", "--dataset", "a2d", "--root", str(root), "--out",
                                   str(tmp_path / "x"), "--holdout-videos", "2"])
    assert bad.exit_code == 2 and "--holdout-videos is for --dataset refer-youtube-vos" in bad.output
    unknown = CliRunner().invoke(app, ["prepare-data", "--dataset", "mevis", "--root", str(root), "--out",
                                       str(tmp_path / "y")])
    assert unknown.exit_code == 2 and "a2d, jhmdb, refer-youtube-vos, refer-davis" in unknown.output


def test_broken_files_are_reported_by_id_and_the_rest_prepared(tmp_path):
    root = tmp_path / "raw"
    write_synthetic_refer_youtube_vos(root, videos=6, seed=3, height=48, width=64, frames=40, progress=False)
    train_videos = sorted(json.loads((root / "train/meta.json").read_text())["videos"])
    no_frame, no_mask = train_videos[0], train_videos[1]
    (root / f"train/JPEGImages/{no_frame}/00010.jpg").unlink()
    (root / f"train/Annotations/{no_mask}/00035.png").unlink()    # the last released frame's mask
    prep = tmp_path / "prep"
    manifest = prepare_dataset("refer-youtube-vos", root, prep, short_source="machine",
                               settings=PrepareSettings(window=4, short_side=48, max_long_side=64), workers=1,
                               progress=False)
    problems = json.loads((prep / "report.json").read_text())["problems"]
    assert any(p["video_id"] == no_frame and "unreadable frames" in p["reason"] and "00010.jpg" in p["reason"]
               for p in problems)
    assert any(p["video_id"] == no_mask and "skipped: no mask for frame(s) [8]" in p["reason"] for p in problems)
    records = PreparedDataset(prep).records
    assert no_frame not in {r.video_id for r in records}
    # frames 5-8 lose their window; the others of that video are kept, every one fully supervised
    kept = {tuple(r.window) for r in records if r.video_id == no_mask}
    assert kept == {(1, 2, 3, 4)} and manifest["counts"]["broken"] == len(problems)


def test_valid_split_writes_its_submission_by_default_and_is_refused_with_nowhere_to_write(ytvos, trained, tmp_path):
    _, prep, _ = ytvos
    checkpoint, _ = trained
    nowhere = CliRunner().invoke(app, ["evaluate", "--data", str(prep), "--checkpoint", str(checkpoint),
                                       "--split", "valid"])
    assert nowhere.exit_code == 2 and "scored by the Refer-YouTube-VOS server: give --out" in nowhere.output
    result = CliRunner().invoke(app, ["evaluate", "--data", str(prep), "--checkpoint", str(checkpoint),
                                      "--split", "valid", "--out", str(tmp_path / "eval"), "--workers", "0"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "eval" / "submission.zip").is_file() and (tmp_path / "eval" / "metrics.json").is_file()
