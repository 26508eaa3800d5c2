"""Training on clips: several expressions of one (video, annotated frame) share one backbone pass."""
import pytest
import torch

from losh.data.dataset import Augment, ClipDataset, RVOSDataset, collate, collate_clips
from losh.models.registry import build_criterion, build_model
from losh.schemas.presets import get_config
from losh.schemas.train import TrainConfigError, TrainSettings
from losh.training.checkpoint import load_checkpoint
from losh.training.loop import forward_and_loss, train


def test_clips_hold_the_expressions_of_one_frame_and_an_epoch_visits_every_sample_once(prepared_with_flows):
    samples = RVOSDataset(prepared_with_flows, "train")
    for k in (1, 2, 8):
        clips = ClipDataset(prepared_with_flows, "train", max_expressions=k)
        visited = sorted(i for group in clips.groups for i in group)
        assert visited == list(range(len(samples)))
        for group in clips.groups:
            assert 1 <= len(group) <= k
            assert len({(samples.data.records[i].video_id, samples.data.records[i].frame) for i in group}) == 1
    # a clip above the cap is split into near-equal parts, not K + remainder
    sizes = {}
    for r in samples.data.records:
        sizes[(r.video_id, r.frame)] = sizes.get((r.video_id, r.frame), 0) + 1
    assert max(sizes.values()) >= 3, "the fixture should hold a frame with 3+ expressions"
    cap = max(sizes.values()) - 1
    clips = ClipDataset(prepared_with_flows, "train", max_expressions=cap)
    for group in clips.groups:
        r = samples.data.records[group[0]]
        n = sizes[(r.video_id, r.frame)]
        parts = -(-n // cap)
        assert len(group) in (n // parts, -(-n // parts))
    with pytest.raises(ValueError, match="max_expressions"):
        ClipDataset(prepared_with_flows, "train", max_expressions=0)


def test_a_clip_is_read_and_flipped_once_for_all_its_expressions(prepared_with_flows):
    plain = RVOSDataset(prepared_with_flows, "train", with_flows=True)
    flipping = ClipDataset(prepared_with_flows, "train", max_expressions=8, with_flows=True,
                           augment=Augment(flip_p=1.0))
    index = max(range(len(flipping)), key=lambda i: len(flipping.groups[i]))
    items = flipping[index]
    assert len(items) >= 2
    for item, sample_index in zip(items, flipping.groups[index]):
        reference = plain[sample_index]
        assert item["sample_id"] == reference["sample_id"] and item["flipped"]
        assert item["frames"] is items[0]["frames"]                      # one tensor for the clip
        assert torch.equal(item["frames"], reference["frames"].flip(-1))
        assert torch.equal(item["long_mask"], reference["long_mask"].flip(-1))
        assert torch.equal(item["short_mask"], reference["short_mask"].flip(-1))
        assert torch.equal(item["instance_masks"], reference["instance_masks"].flip(-1))
        assert torch.allclose(item["flows"][:, 0], -reference["flows"][:, 0].flip(-1))
        assert item["referred_index"] == reference["referred_index"]

    batch = collate_clips([flipping[0], items])
    n0 = len(flipping[0])
    assert batch["frames"].shape[0] == 2 and batch["flows"].shape[0] == 2 and batch["valid_size"].shape == (2, 2)
    assert batch["clip_index"].tolist() == [0] * n0 + [1] * len(items)
    assert len(batch["long_text"]) == batch["long_mask"].shape[0] == len(batch["instance_masks"]) == n0 + len(items)
    assert "clip_index" not in collate([plain[0], plain[1]])


def test_a_clip_batch_gives_the_outputs_losses_and_gradients_of_its_expressions_one_by_one(prepared_with_flows):
    """One backbone pass per clip is an optimisation only: the same numbers as repeating the clip's frames."""
    config = get_config("tiny")
    clips = ClipDataset(prepared_with_flows, "train", max_expressions=8, with_flows=True)
    index = max(range(len(clips)), key=lambda i: len(clips.groups[i]))
    grouped = collate_clips([clips[index]])
    n = len(grouped["long_text"])
    # the same expressions as n separate samples, each with (a copy of) its clip's frames and flows
    repeated = {**grouped, "frames": grouped["frames"].repeat(n, 1, 1, 1, 1),
                "flows": grouped["flows"].repeat(n, 1, 1, 1, 1), "flow_valid": grouped["flow_valid"].repeat(n, 1),
                "valid_size": grouped["valid_size"].repeat(n, 1),
                "annotated_index": grouped["annotated_index"].repeat(n)}
    del repeated["clip_index"]

    torch.manual_seed(0)
    model = build_model(config)
    model.text_encoder.fit_tokenizer(sorted({t for r in clips.data.records for t in (r.long, r.short)}))
    model.eval()   # the text encoder's dropout would draw other masks in the two runs
    criterion = build_criterion(config)
    results = []
    for batch in (grouped, repeated):
        model.zero_grad(set_to_none=True)
        losses = forward_and_loss(model, criterion, batch, torch.device("cpu"), "off")
        losses["loss"].backward()
        grads = {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}
        results.append(({k: float(v.detach()) for k, v in losses.items()}, grads))
    (losses_g, grads_g), (losses_r, grads_r) = results
    assert losses_g.keys() == losses_r.keys() and losses_g["loss_fbc"] > 0
    for k in losses_g:
        assert losses_g[k] == pytest.approx(losses_r[k], rel=1e-4, abs=1e-6), k
    assert grads_g.keys() == grads_r.keys()
    for k in grads_g:
        assert torch.allclose(grads_g[k], grads_r[k], rtol=1e-3, atol=1e-6), k

    with pytest.raises(ValueError, match="clip_index"):
        model(grouped["frames"].float(), grouped["long_text"], annotated_index=0,
              clip_index=torch.tensor([0] * (n - 1) + [1]))


def test_training_on_clips_records_the_setting_and_resumes(prepared, tmp_path):
    with pytest.raises(TrainConfigError, match="expressions_per_clip"):
        TrainSettings(expressions_per_clip=0).validate()
    config = get_config("tiny:wo-fbc")
    base = dict(epochs=2, batch_size=2, expressions_per_clip=3, num_workers=0, amp="off", lr_milestones=(1,),
                deterministic=True)
    clips = len(ClipDataset(prepared, "train", max_expressions=3))
    full = train(prepared, config, tmp_path / "full", TrainSettings(**base), progress=False)
    assert full["steps"] == 2 * -(-clips // 2)
    assert load_checkpoint(tmp_path / "full/checkpoints/last.pt")["train_settings"]["expressions_per_clip"] == 3
    train(prepared, config, tmp_path / "split", TrainSettings(**{**base, "epochs": 1}), progress=False)
    resumed = train(prepared, config, tmp_path / "split", TrainSettings(**base), resume=True, progress=False)
    assert resumed["steps"] == full["steps"]
    a = load_checkpoint(tmp_path / "full/checkpoints/last.pt")["model"]
    b = load_checkpoint(tmp_path / "split/checkpoints/last.pt")["model"]
    for k, v in a.items():
        if isinstance(v, torch.Tensor):
            assert torch.equal(v, b[k]), k
