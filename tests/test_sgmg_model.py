"""LoSh-S (architecture "sgmg"): the model's outputs and gradients, LoSh's long-short cross-attention on the
deformable encoder, LoShSCriterion against hand computations, training/evaluation/prediction through the CLI,
and the presets."""
from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from typer.testing import CliRunner

from losh.cli.main import app
from losh.models.losh_s.criterion import LoShSCriterion
from losh.models.losh_s.model import LoShS
from losh.models.registry import build_criterion, build_model
from losh.schemas.config import ConfigError, LossConfig, load_config, save_config, with_overrides
from losh.schemas.presets import get_config
from losh.schemas.train import TrainSettings
from losh.training.loop import config_for_data
from losh.training.optim import param_groups

B, T, H, W, K = 2, 5, 64, 96, 2
LONG = ["the big red circle is moving to the left", "a small blue square jumping up and down"]
SHORT = ["the big red circle", "a small blue square"]
OTHER_LONG = ["the small green triangle is rotating", "a big yellow diamond standing still"]
OTHER_SHORT = ["a purple dog", "the white car on the road"]
PER_QUERY = ("pred_logits", "pred_boxes", "pred_masks", "pred_masks_low")


def _frames(b=B, t=T, h=H, w=W, seed=0):
    return torch.randn(b, t, 3, h, w, generator=torch.Generator().manual_seed(seed))


def _model(spec="tiny-s", **overrides):
    torch.manual_seed(0)
    config = get_config(spec)
    if overrides:
        config = with_overrides(config, overrides)
    return build_model(config)


def _targets(h=H, w=W, frames=1):
    """Per sample: two instances over `frames` supervised frames, the referred one by sample; a merged short
    mask that differs from the long one."""
    targets = []
    for referred in (0, 1):
        masks = torch.zeros(frames, 2, h, w)
        masks[:, 0, 5:30, 10:40] = 1
        masks[:, 1, 35:60, 50:90] = 1
        short = masks[:, referred].clone()
        short[:, :5, :5] = 1
        targets.append({"instance_masks": masks, "referred_index": referred, "short_mask": short,
                        "valid_size": torch.tensor([h, w])})
    return targets


@pytest.fixture(scope="module")
def step():
    """tiny-s, one training forward with long and short texts, the loss with flows (L_fbc), backward."""
    model = _model().train()
    config = model.config
    flows = torch.randn(B, 4, 2, H, W, generator=torch.Generator().manual_seed(1))
    outputs = model(_frames(), LONG, SHORT, annotated_index=K)
    losses = build_criterion(config)(outputs, _targets(), flows=flows,
                                     flow_valid=torch.tensor([[True, True, True, False], [False, True, True, True]]))
    losses["loss"].backward()
    return model, config, outputs, losses, flows


def test_matching_in_the_forward_refines_only_the_matched_query_with_the_same_losses_and_gradients():
    """SgMg's way (the trainer passes the targets): each layer matches in the forward and refines one query; the
    losses and gradients equal those of refining every query and matching in the criterion."""
    model = _model().eval()          # eval: no dropout, so the two forwards compute the same thing
    criterion = build_criterion(model.config)
    flows = torch.randn(B, 4, 2, H, W, generator=torch.Generator().manual_seed(1))
    valid = torch.ones(B, 4, dtype=torch.bool)
    results = []
    for targets in (None, _targets()):
        model.zero_grad(set_to_none=True)
        outputs = model(_frames(), LONG, SHORT, annotated_index=K, targets=targets)
        losses = criterion(outputs, _targets(), flows=flows, flow_valid=valid)
        losses["loss"].backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        results.append((outputs, losses, grads))
    (all_out, all_losses, all_grads), (matched_out, matched_losses, matched_grads) = results
    assert all_out["long"]["pred_masks"].shape == (B, 1, 5, H, W)
    for name in ("long", "short"):
        layer = matched_out[name]
        assert layer["pred_masks"].shape == (B, 1, 1, H, W) and layer["matched_query"].shape == (B,)
        assert all(aux["pred_masks"].shape == (B, 1, 1, H, W) for aux in layer["aux_outputs"])
        # the refined mask is the matched query's among all queries' refinements
        refined = all_out[name]["pred_masks"][torch.arange(B), :, layer["matched_query"]]
        assert torch.allclose(layer["pred_masks"][:, :, 0], refined, atol=1e-4)
    assert set(all_losses) == set(matched_losses)
    for key in all_losses:
        assert torch.allclose(all_losses[key], matched_losses[key], rtol=1e-4, atol=1e-5), key
    assert set(all_grads) == set(matched_grads)
    for name in all_grads:
        assert torch.allclose(all_grads[name], matched_grads[name], rtol=1e-3, atol=1e-6), name


# ----------------------------------------------------------------------------------------------- 1. shapes

def _check_pathway(out, b, frames, q, h, w):
    assert out["pred_logits"].shape == (b, frames, q)
    assert out["pred_boxes"].shape == (b, frames, q, 4)
    assert out["pred_masks"].shape == (b, frames, q, h, w)
    assert out["pred_masks_low"].shape == (b, frames, q, (h + 1) // 2, (w + 1) // 2)
    assert ((out["pred_boxes"] > 0) & (out["pred_boxes"] < 1)).all()
    for key in PER_QUERY:
        assert torch.isfinite(out[key]).all(), key


def test_forward_shapes_of_both_pathways_every_layer_and_the_fbc_features(step):
    model, config, outputs, _, _ = step
    q, layers = config.transformer.num_queries, config.transformer.num_decoder_layers
    assert isinstance(model, LoShS) and (q, layers) == (5, 4)
    assert outputs["frame_indices"] == [K] and outputs["annotated_index"] == K and outputs["supervised"] == [K]
    assert outputs["input_size"] == (H, W)
    for pathway in ("long", "short"):
        _check_pathway(outputs[pathway], B, 1, q, H, W)
        assert outputs[pathway]["pred_masks_low"].shape[-2:] == (H // 2, W // 2)
        assert len(outputs[pathway]["aux_outputs"]) == layers - 1
        for aux in outputs[pathway]["aux_outputs"]:
            assert set(aux) == set(PER_QUERY)
            _check_pathway(aux, B, 1, q, H, W)
    # F_v of L_fbc: every frame of every clip at stride 16 (backbone stage 2: 4 x 24 channels), no padding
    assert outputs["fbc_features"].shape == (B, T, 96, H // 16, W // 16)
    assert outputs["fbc_padding_mask"] is None


def test_clip_index_supervised_frames_and_decoding_every_frame():
    model = _model().eval()
    frames = _frames()
    texts, shorts = ["a red circle", "the blue square", "a square jumping"], ["circle", "square", "square"]
    with torch.no_grad():
        out = model(frames, texts, shorts, annotated_index=K, clip_index=torch.tensor([0, 1, 1]),
                    supervised=[0, 2, 4])
        alone = model(frames[1:], texts[2:], shorts[2:], annotated_index=K, supervised=[0, 2, 4])
    assert out["frame_indices"] == [0, 2, 4] and out["supervised"] == [0, 2, 4]
    for pathway in ("long", "short"):
        _check_pathway(out[pathway], 3, 3, 5, H, W)
    assert out["fbc_features"].shape[:2] == (2, T)            # visual, per clip
    # text 2 reads clip 1: as if clip 1 had been run alone with it
    for key in PER_QUERY:
        assert torch.allclose(out["long"][key][2], alone["long"][key][0], atol=1e-4), key
    # the loss over the three supervised frames of each text, L_fbc per clip
    targets = _targets(frames=3) + _targets(frames=3)[:1]
    targets[1]["instance_masks"][1:, 1] = 0                    # text 1's object leaves after the first frame
    losses = build_criterion(model.config)(out, targets, flows=torch.randn(2, 4, 2, H, W))
    assert all(torch.isfinite(v) for v in losses.values()) and losses["loss_fbc"] > 0
    every = _model(**{"transformer.decode_frames": "all"}).eval()
    with torch.no_grad():
        out = every(frames, LONG, SHORT, annotated_index=K)
    assert out["frame_indices"] == list(range(T))
    for pathway in ("long", "short"):
        _check_pathway(out[pathway], B, T, 5, H, W)


def test_infer_selects_the_query_with_the_best_mean_score_over_the_window():
    model = _model().eval()
    frames = _frames()
    result = model.infer(frames, LONG, SHORT, annotated_index=None)
    assert result["frame_indices"] == list(range(T)) and result["annotated_index"] is None
    assert "short" not in result and result["aux_outputs"] == []
    frame_scores = result["pred_logits"].sigmoid()
    assert result["frame_scores"].shape == (B, T, 5)
    assert torch.equal(result["frame_scores"], frame_scores)
    assert torch.allclose(result["scores"], frame_scores.mean(dim=1))
    assert torch.equal(result["best_query"], result["scores"].argmax(dim=1))
    assert result["mask_logits"].shape == (B, T, H, W)
    for b in range(B):
        assert torch.equal(result["mask_logits"][b], result["pred_masks"][b, :, result["best_query"][b]])
    # the default reads the short text in the encoder at inference; "none" needs none and ignores one given
    with pytest.raises(ValueError, match="short_texts"):
        model.infer(frames, LONG, None, annotated_index=None)
    long_only = _model(**{"inference_short_pathway": "none"}).eval()
    without = long_only.infer(frames, LONG, None, annotated_index=K)
    given = long_only.infer(frames, LONG, OTHER_SHORT, annotated_index=K)
    assert without["frame_scores"].shape == (B, 1, 5) and without["mask_logits"].shape == (B, 1, H, W)
    assert torch.equal(without["pred_masks"], given["pred_masks"])


def test_inputs_not_divisible_by_the_strides_give_masks_at_the_input_size_aligned_with_it():
    model = _model().eval()
    with torch.no_grad():
        out = model(_frames(h=72, w=100), LONG, SHORT, annotated_index=K)
    for pathway in ("long", "short"):
        _check_pathway(out[pathway], B, 1, 5, 72, 100)
    assert out["long"]["pred_masks_low"].shape[-2:] == (36, 50)
    # the backbone pads the input bottom/right, so the masks' grids start at its top-left corner: a 70 x 98 input
    # gives the masks of the same input zero-padded to 72 x 100 (padding masked), cropped, not resized
    frames = _frames(b=1, h=70, w=98)
    padding = torch.zeros(1, 72, 100, dtype=torch.bool)
    padding[:, 70:] = True
    padding[:, :, 98:] = True
    with torch.no_grad():
        odd = model(frames, LONG[:1], SHORT[:1], annotated_index=K)["long"]
        padded = model(F.pad(frames, (0, 2, 0, 2)), LONG[:1], SHORT[:1], annotated_index=K,
                       padding_mask=padding)["long"]
    assert odd["pred_masks"].shape[-2:] == (70, 98) and odd["pred_masks_low"].shape[-2:] == (35, 49)
    assert torch.allclose(odd["pred_masks"], padded["pred_masks"][..., :70, :98], atol=1e-4)
    assert torch.allclose(odd["pred_masks_low"], padded["pred_masks_low"][..., :35, :49], atol=1e-4)
    assert torch.allclose(odd["pred_logits"], padded["pred_logits"], atol=1e-4)


# -------------------------------------------------------------------------------------------- 2. gradients

# Zero at the first step, for a reason (both get a gradient once the first step has moved the zero-initialised
# weights, checked below):
# - the first two layers of every box head: its last layer's weight starts at zero (Deformable DETR), so
#   nothing flows back through it (the heads are shared with the decoder, where they are registered first);
# - the level embedding: it only enters the deformable attention's queries, whose sampling offsets and
#   attention weights are projections with zero-initialised weights (Deformable DETR), so at step 0 the
#   queries do not reach the output (the values come from the features, without positions).
ZERO_AT_INIT = {"transformer.level_embed"} | {f"transformer.decoder.bbox_embed.{layer}.layers.{i}.{kind}"
                                             for layer in range(4) for i in (0, 1) for kind in ("weight", "bias")}


def test_every_trainable_parameter_gets_a_finite_gradient(step):
    model, config, _, losses, flows = step
    assert losses["loss_fbc"].item() > 0
    trainable = 0
    for name, parameter in model.named_parameters():
        assert parameter.requires_grad, name          # tiny-s trains its small random text encoder too
        assert parameter.grad is not None and torch.isfinite(parameter.grad).all(), name
        assert (parameter.grad.abs().sum() > 0) != (name in ZERO_AT_INIT), name
        trainable += 1
    assert trainable > 400
    assert {name for name, _ in model.named_parameters()} >= ZERO_AT_INIT

    stepped = copy.deepcopy(model)
    for original, copied in zip(model.parameters(), stepped.parameters()):
        copied.grad = original.grad.clone()
    torch.optim.AdamW(param_groups(stepped, 1e-3, 1e-3, 0.0)).step()
    stepped.zero_grad()
    outputs = stepped(_frames(seed=2), LONG, SHORT, annotated_index=K)
    build_criterion(config)(outputs, _targets(), flows=flows)["loss"].backward()
    for name, parameter in stepped.named_parameters():
        assert parameter.grad is not None and torch.isfinite(parameter.grad).all(), name
        assert parameter.grad.abs().sum() > 0, name


def test_loss_terms_and_weighted_total(step):
    _, config, _, losses, _ = step
    terms = ("is_referred", "box_l1", "giou", "focal", "dice", "focal_low", "dice_low")
    per_layer = {f"loss_{t}_{p}" for t in terms for p in ("long", "short")} | {"loss_lsi"}
    assert set(losses) == per_layer | {f"{k}_aux{i}" for k in per_layer for i in range(3)} | {"loss_fbc", "loss"}
    weights = {"is_referred": 2.0, "box_l1": 5.0, "giou": 2.0, "focal": 2.0, "dice": 5.0, "focal_low": 2.0,
               "dice_low": 5.0, "lsi": 5.0, "fbc": 0.1}
    total = 0.0
    for key, value in losses.items():
        if key == "loss":
            continue
        base = key[len("loss_"):].replace("_long", "").replace("_short", "").split("_aux")[0]
        total += weights[base] * value.item()
        assert torch.isfinite(value) and value.item() >= 0, key
    assert losses["loss"].item() == pytest.approx(total, rel=1e-5)


def test_sgmg_baseline_trains_the_long_pathway_without_short_text():
    config = get_config("tiny-s:baseline")
    assert not config.use_short_text and config.transformer.num_encoder_layers == 4
    model = _model("tiny-s:baseline").train()
    assert len(model.transformer.encoder.long_cross) == 0
    outputs = model(_frames(), LONG, SHORT, annotated_index=K)             # short texts are ignored
    assert "short" not in outputs
    losses = build_criterion(config)(outputs, _targets())                  # no flows: no L_fbc
    assert "loss_lsi" not in losses and "loss_fbc" not in losses
    assert not any("short" in key for key in losses) and "loss_dice_long" in losses
    losses["loss"].backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


# ------------------------------------------------------------------------------ 3. long-short cross-attention

def _awake(model):
    """Random values in the weights initialised to zero (the deformable attention's offsets and weights, the box
    heads' last layers), so that every path, the queries' included, carries the inputs."""
    generator = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if any(part in name for part in ("sampling_offsets.weight", "attention_weights.weight",
                                             "layers.2.weight")) and not parameter.any():
                parameter.copy_(0.05 * torch.randn(parameter.shape, generator=generator))
    return model.eval()


def _run_pathways(model, frames, long, short):
    with torch.no_grad():
        out = model(frames, long, short, annotated_index=K)
    return out["long"], out["short"]


def _differ(a, b):
    return max((a[k] - b[k]).abs().max().item() for k in PER_QUERY) > 1e-3


def _equal(a, b):
    return all(torch.allclose(a[k], b[k], atol=1e-4) for k in PER_QUERY)


@pytest.mark.parametrize("mode,long_reads_short,short_reads_long", [
    ("long_from_short", True, False),
    ("none", False, False),
    ("bidirectional", True, True),
])
def test_cross_attention_reads_exactly_the_pathways_it_should(mode, long_reads_short, short_reads_long):
    spec = "tiny-s:wo-ca" if mode == "none" else "tiny-s"
    model = _awake(_model(spec, **({} if mode == "none" else {"transformer.cross_attention": mode})))
    assert model.config.transformer.dropout == 0.0 and model.config.transformer.cross_attention == mode
    encoder = model.transformer.encoder
    assert sorted(encoder.long_cross) == (["1", "3"] if long_reads_short else [])
    assert sorted(encoder.short_cross) == (["1", "3"] if short_reads_long else [])
    assert any("long_cross" in n for n, _ in model.named_parameters()) == long_reads_short
    frames = _frames()
    long_a, short_a = _run_pathways(model, frames, LONG, SHORT)
    long_b, short_b = _run_pathways(model, frames, LONG, OTHER_SHORT)        # only the short text changes
    long_c, short_c = _run_pathways(model, frames, OTHER_LONG, SHORT)        # only the long text changes
    assert _differ(short_a, short_b) and _differ(long_a, long_c)             # each pathway reads its own text
    assert _differ(long_a, long_b) if long_reads_short else _equal(long_a, long_b)
    assert _differ(short_a, short_c) if short_reads_long else _equal(short_a, short_c)
    if long_reads_short:   # inference: the short text reaches the long pathway through the encoder
        scores = [model.infer(frames, LONG, s, annotated_index=K)["pred_masks"] for s in (SHORT, OTHER_SHORT)]
        assert (scores[0] - scores[1]).abs().max() > 1e-3
        assert torch.allclose(scores[0], long_a["pred_masks"], atol=1e-4)


def test_cross_attention_layers_are_the_even_numbered_encoder_layers_own_copies():
    counts = {mode: _model(**{"transformer.cross_attention": mode}).num_parameters()
              for mode in ("none", "long_from_short", "bidirectional")}
    layer = sum(p.numel() for p in _model().transformer.encoder.long_cross["1"].parameters())
    assert counts["long_from_short"] == counts["none"] + 2 * layer
    assert counts["bidirectional"] == counts["none"] + 4 * layer


# ------------------------------------------------------------------------------- 4. the criterion by hand

def sigmoid(x):
    return 1.0 / (1.0 + math.exp(-x))


def focal(x, t, alpha=0.25, gamma=2.0):
    """RetinaNet's focal loss of one logit x against target t."""
    p = sigmoid(x)
    ce = -(t * math.log(p) + (1 - t) * math.log(1 - p))
    p_t = p * t + (1 - p) * (1 - t)
    return (alpha * t + (1 - alpha) * (1 - t)) * (1 - p_t) ** gamma * ce


def class_cost(x, alpha=0.25, gamma=2.0):
    """SgMg's matching cost of a "referred" logit: focal cost of the positive minus that of the negative."""
    p = sigmoid(x)
    return alpha * (1 - p) ** gamma * -math.log(p) - (1 - alpha) * p ** gamma * -math.log(1 - p)


def dice(logits, targets):
    probs = [sigmoid(x) for x in logits]
    return (2 * sum(p * t for p, t in zip(probs, targets)) + 1) / (sum(probs) + sum(targets) + 1)


def lsi(long_logits, short_logits, threshold=0.5, eps=1.0):
    long = [sigmoid(x) for x in long_logits]
    short = [sigmoid(x) for x in short_logits]
    long = [p if p >= threshold else 0.0 for p in long]
    short = [p if p >= threshold else 0.0 for p in short]
    return 1 - (sum(a * b for a, b in zip(long, short)) + eps) / (sum(long) + eps)


def rect_box(r0, r1, c0, c1, valid):
    """The normalised (cx, cy, w, h) target of the mask rows r0:r1, cols c0:c1: the box runs to the last row and
    column (max index, not +1), divided by the valid (h, w)."""
    h, w = valid
    x0, x1, y0, y1 = c0, c1 - 1, r0, r1 - 1
    return [(x0 + x1) / 2 / w, (y0 + y1) / 2 / h, (x1 - x0) / w, (y1 - y0) / h]


def l1(a, b):
    return sum(abs(x - y) for x, y in zip(a, b))


def giou(a, b, eps=1e-6):
    """GIoU of two (cx, cy, w, h) boxes, with SgMg's 1e-6 in both ratios (finite for degenerate boxes)."""
    ax0, ay0, ax1, ay1 = a[0] - a[2] / 2, a[1] - a[3] / 2, a[0] + a[2] / 2, a[1] + a[3] / 2
    bx0, by0, bx1, by1 = b[0] - b[2] / 2, b[1] - b[3] / 2, b[0] + b[2] / 2, b[1] + b[3] / 2
    inter = max(0.0, min(ax1, bx1) - max(ax0, bx0)) * max(0.0, min(ay1, by1) - max(ay0, by0))
    union = (ax1 - ax0) * (ay1 - ay0) + (bx1 - bx0) * (by1 - by0) - inter
    enclosing = (max(ax1, bx1) - min(ax0, bx0)) * (max(ay1, by1) - min(ay0, by0))
    return (inter + eps) / (union + eps) - (enclosing - union + eps) / (enclosing + eps)


def test_hand_helpers_on_known_numbers():
    assert rect_box(2, 5, 1, 6, (6, 8)) == pytest.approx([0.375, 0.5, 0.5, 1 / 3])
    assert l1([0.4, 0.45, 0.5, 0.3], [0.375, 0.5, 0.5, 1 / 3]) == pytest.approx(0.025 + 0.05 + 1 / 30)
    # intersection 0.475 x 0.8/3, union 0.15 + 1/6 - inter, enclosing 0.525 x 1.1/3
    inter = 0.475 * 0.8 / 3
    union = 0.15 + 1 / 6 - inter
    assert giou([0.4, 0.45, 0.5, 0.3], [0.375, 0.5, 0.5, 1 / 3]) == pytest.approx(
        inter / union - (0.525 * 1.1 / 3 - union) / (0.525 * 1.1 / 3), rel=1e-4)
    assert focal(0.0, 1) == pytest.approx(0.25 * 0.25 * math.log(2))
    assert class_cost(0.0) == pytest.approx(-0.5 * 0.25 * math.log(2))


class Scene:
    """A fabricated `outputs` dict (no model) of B samples, A supervised frames, Q queries, masks h x w, and the
    targets: the referred object is a rectangle per (sample, frame), or absent (None)."""

    def __init__(self, rects, valid_sizes, q=3, h=8, w=8, pathways=("long",)):
        self.rects, self.valid_sizes, self.q, self.h, self.w = rects, valid_sizes, q, h, w
        self.b, self.a = len(rects), len(rects[0])
        self.pathways = pathways
        self.out = {p: {"pred_logits": torch.zeros(self.b, self.a, q),
                        "pred_boxes": torch.full((self.b, self.a, q, 4), 0.5),
                        "pred_masks": torch.full((self.b, self.a, q, h, w), -4.0),
                        "pred_masks_low": torch.full((self.b, self.a, q, (h + 1) // 2, (w + 1) // 2), -4.0),
                        "aux_outputs": []} for p in pathways}
        self.short_rects = None

    def target_mask(self, b, a, short=False):
        rect = (self.short_rects if short else self.rects)[b][a]
        mask = torch.zeros(self.h, self.w)
        for r0, r1, c0, c1 in ([] if rect is None else rect if isinstance(rect, list) else [rect]):
            mask[r0:r1, c0:c1] = 1
        return mask

    def outputs(self):
        frames = list(range(self.a))
        return {**self.out, "frame_indices": frames, "annotated_index": 0, "supervised": frames,
                "input_size": (self.h, self.w)}

    def targets(self):
        out = []
        for b in range(self.b):
            long = torch.stack([self.target_mask(b, a) for a in range(self.a)])
            target = {"instance_masks": long[:, None], "referred_index": 0, "valid_size": self.valid_sizes[b]}
            if self.short_rects is not None:
                target["short_mask"] = torch.stack([self.target_mask(b, a, short=True) for a in range(self.a)])
            out.append(target)
        return out

    # ----------------------------------------------------------------- hand computations, plain loops

    def _masks(self, pathway, b, q, low=False):
        """The query's mask logits and the target over the A frames as one flat sequence; at stride 2 the target
        is every second pixel from the second."""
        key = "pred_masks_low" if low else "pred_masks"
        logits, targets = [], []
        for a in range(self.a):
            target = self.target_mask(b, a, short=pathway == "short")
            if low:   # pixel (2i + 1, 2j + 1); beyond an odd-sized target's last row or column: background
                target = torch.tensor([[float(target[2 * i + 1, 2 * j + 1]) if 2 * i + 1 < self.h and
                                        2 * j + 1 < self.w else 0.0 for j in range((self.w + 1) // 2)]
                                       for i in range((self.h + 1) // 2)])
            logits += self.out[pathway][key][b, a, q].flatten().tolist()
            targets += target.flatten().tolist()
        return logits, targets

    def _rects(self, b, a, pathway="long"):
        rect = (self.short_rects if pathway == "short" and self.short_rects is not None else self.rects)[b][a]
        return [] if rect is None else rect if isinstance(rect, list) else [rect]

    def visible(self, b, pathway="long"):
        return [bool(self._rects(b, a, pathway)) for a in range(self.a)]

    def box_target(self, b, a, pathway="long"):
        """The box of the pathway's target: the short one's is the box around all of its rectangles (merged)."""
        rects = self._rects(b, a, pathway)
        return rect_box(min(r[0] for r in rects), max(r[1] for r in rects), min(r[2] for r in rects),
                        max(r[3] for r in rects), self.valid_sizes[b])

    def cost(self, b, weights):
        """Every query's matching cost in sample b, summed over the pathways, plus eq. 5's long-short term."""
        costs = []
        for q in range(self.q):
            total = 0.0
            for p in self.pathways:
                out = self.out[p]
                seen = [a for a in range(self.a) if self.visible(b, p)[a]]
                if seen:
                    total += weights["class"] * sum(class_cost(out["pred_logits"][b, a, q].item())
                                                    for a in seen) / len(seen)
                    total += weights["l1"] * sum(l1(out["pred_boxes"][b, a, q].tolist(), self.box_target(b, a, p))
                                                 for a in seen) / len(seen)
                    total -= weights["giou"] * sum(giou(out["pred_boxes"][b, a, q].tolist(), self.box_target(b, a, p))
                                                   for a in seen) / len(seen)
                logits, targets = self._masks(p, b, q, low=True)
                total += weights["focal"] * sum(focal(x, t) for x, t in zip(logits, targets)) / len(logits)
                total -= weights["dice"] * dice(logits, targets)
            if len(self.pathways) == 2:
                total += weights["lsi"] * lsi(self._masks("long", b, q, low=True)[0],
                                              self._masks("short", b, q, low=True)[0])
            costs.append(total)
        return costs

    def num_boxes(self):
        return max(1, sum(sum(self.visible(b)) for b in range(self.b)))

    def losses(self, matched, pathway="long"):
        """The criterion's unweighted terms of the last layer for the given matched query of each sample."""
        out, n = self.out[pathway], self.num_boxes()
        is_referred = box_l1 = giou_loss = 0.0
        masks = {"": [0.0, 0.0], "_low": [0.0, 0.0]}        # focal, dice
        for b, m in enumerate(matched):
            for a in range(self.a):
                for q in range(self.q):
                    target = 1 if (q == m and self.visible(b, pathway)[a]) else 0
                    is_referred += focal(out["pred_logits"][b, a, q].item(), target)
                if self.visible(b, pathway)[a]:
                    box = out["pred_boxes"][b, a, m].tolist()
                    box_l1 += l1(box, self.box_target(b, a, pathway))
                    giou_loss += 1 - giou(box, self.box_target(b, a, pathway))
            for suffix, low in (("", False), ("_low", True)):
                logits, targets = self._masks(pathway, b, m, low)
                masks[suffix][0] += sum(focal(x, t) for x, t in zip(logits, targets)) / len(logits)
                masks[suffix][1] += 1 - dice(logits, targets)
        values = {"is_referred": is_referred, "box_l1": box_l1, "giou": giou_loss, "focal": masks[""][0],
                  "dice": masks[""][1], "focal_low": masks["_low"][0], "dice_low": masks["_low"][1]}
        return {f"loss_{k}_{pathway}": v / n for k, v in values.items()}

    def matched_by(self, losses, pathway="long"):
        """The matched query of each sample, read off the "is referred" loss (one sample at a time varies)."""
        candidates = [[m] for m in range(self.q)]
        for _ in range(1, self.b):
            candidates = [c + [m] for c in candidates for m in range(self.q)]
        found = [c for c in candidates if self.losses(c, pathway)[f"loss_is_referred_{pathway}"]
                 == pytest.approx(losses[f"loss_is_referred_{pathway}"].item(), rel=1e-5)]
        assert len(found) == 1, found
        return found[0]


def _set_mask(tensor, rect, inside, outside):
    tensor.fill_(outside)
    r0, r1, c0, c1 = rect
    tensor[r0:r1, c0:c1] = inside


def _noise(shape, seed):
    return 0.5 * torch.randn(shape, generator=torch.Generator().manual_seed(seed))


DEFAULT = {"class": 2.0, "l1": 5.0, "giou": 2.0, "focal": 2.0, "dice": 5.0, "lsi": 5.0}


def _criterion(short=False, **weights):
    loss = LossConfig(fbc=0.0, lsi=5.0 if short else 0.0, match_lsi=weights.pop("match_lsi", 5.0 if short else 0.0),
                      **weights)
    return LoShSCriterion(loss, use_short_text=short)


@pytest.fixture()
def two_samples():
    """B=2, A=1, Q=3, 8 x 8 masks. Sample 0 (valid 6 x 8): the object is rows 2:5, cols 1:6; query 0 has the
    highest class score but masks and box elsewhere, query 1 the object's masks and a close box. Sample 1
    (valid 8 x 8): the object is rows 0:4, cols 4:8, query 2 is right there, query 1 is not."""
    scene = Scene(rects=[[(2, 5, 1, 6)], [(0, 4, 4, 8)]], valid_sizes=[(6, 8), (8, 8)])
    out = scene.out["long"]
    out["pred_logits"][0, 0] = torch.tensor([2.0, 0.0, -1.0])
    out["pred_logits"][1, 0] = torch.tensor([-0.5, 1.5, 0.2])
    out["pred_boxes"][0, 0] = torch.tensor([[0.75, 0.85, 0.4, 0.2], [0.4, 0.45, 0.5, 0.3], [0.5, 0.5, 0.2, 0.2]])
    out["pred_boxes"][1, 0] = torch.tensor([[0.3, 0.3, 0.3, 0.3], [0.2, 0.8, 0.3, 0.3], [0.7, 0.25, 0.45, 0.45]])
    rects = {(0, 0): (5, 8, 4, 8), (0, 1): (2, 5, 1, 6), (0, 2): (0, 2, 0, 2),
             (1, 0): (4, 8, 0, 4), (1, 1): (5, 8, 0, 8), (1, 2): (0, 4, 4, 8)}
    for (b, q), rect in rects.items():
        _set_mask(out["pred_masks"][b, 0, q], rect, 3.0, -3.0)
        out["pred_masks"][b, 0, q] += _noise((8, 8), 10 * b + q)
        r0, r1, c0, c1 = rect
        _set_mask(out["pred_masks_low"][b, 0, q], (r0 // 2, (r1 + 1) // 2, c0 // 2, (c1 + 1) // 2), 2.5, -2.5)
        out["pred_masks_low"][b, 0, q] += _noise((4, 4), 100 + 10 * b + q)
    return scene


MATCH_WEIGHTS = {"class": "match_is_referred", "l1": "match_box_l1", "giou": "match_giou", "focal": "match_focal",
                 "dice": "match_dice"}


def test_matching_picks_the_query_of_the_lowest_hand_computed_cost(two_samples):
    scene = two_samples
    logits = scene.out["long"]["pred_logits"]
    assert logits[0, 0].argmax() == 0                          # the highest class score is a wrong query
    costs = scene.cost(0, DEFAULT)
    assert min(range(3), key=costs.__getitem__) == 1 and costs[0] - costs[1] > 1.0
    assert min(range(3), key=scene.cost(1, DEFAULT).__getitem__) == 2
    losses = _criterion()(scene.outputs(), scene.targets())
    assert scene.matched_by(losses) == [1, 2]
    # each term in turn weighted 25 times SgMg's weight: the hand cost, and the criterion, pick its best query
    winners = set()
    for term, name in MATCH_WEIGHTS.items():
        weights = {**DEFAULT, term: 25 * DEFAULT[term]}
        expected = [min(range(3), key=scene.cost(b, weights).__getitem__) for b in range(2)]
        losses = _criterion(**{n: weights[t] for t, n in MATCH_WEIGHTS.items()})(scene.outputs(), scene.targets())
        assert scene.matched_by(losses) == expected, term
        winners.add(expected[0])
    assert winners == {0, 1}


def test_loss_terms_equal_hand_computations(two_samples):
    scene = two_samples
    losses = _criterion()(scene.outputs(), scene.targets())
    expected = scene.losses([1, 2])
    assert set(losses) == set(expected) | {"loss"}
    for key, value in expected.items():
        assert losses[key].item() == pytest.approx(value, rel=1e-4, abs=1e-6), key
    # (c) the box pair of sample 0 in numbers: target rows 2..4, cols 1..5 of a 6 x 8 frame -> (3/8, 3/6, 4/8, 2/6)
    box_0 = scene.out["long"]["pred_boxes"][0, 0, 1].tolist()
    assert scene.box_target(0, 0) == pytest.approx([0.375, 0.5, 0.5, 1 / 3])
    box_1 = scene.out["long"]["pred_boxes"][1, 0, 2].tolist()
    assert scene.box_target(1, 0) == pytest.approx([5.5 / 8, 1.5 / 8, 3 / 8, 3 / 8])
    assert losses["loss_box_l1_long"].item() == pytest.approx(
        (l1(box_0, [0.375, 0.5, 0.5, 1 / 3]) + l1(box_1, [5.5 / 8, 1.5 / 8, 3 / 8, 3 / 8])) / 2, rel=1e-5)
    # (d) the stride-2 targets are every second pixel from the second: sample 0's is row 1, columns 0..2
    assert scene.target_mask(0, 0)[1::2, 1::2].nonzero().tolist() == [[1, 0], [1, 1], [1, 2]]
    weights = {"is_referred": 2, "box_l1": 5, "giou": 2, "focal": 2, "dice": 5, "focal_low": 2, "dice_low": 5}
    assert losses["loss"].item() == pytest.approx(
        sum(weights[k[len("loss_"):-len("_long")]] * v for k, v in expected.items()), rel=1e-4)


def test_odd_input_sizes_compare_the_stride_2_masks_with_the_targets_they_cover():
    """7 x 9 input: the stride-2 grid is 4 x 5 from the top-left corner (the model crops its masks to it); its last
    row and column lie past the input (background)."""
    scene = Scene(rects=[[(3, 7, 5, 9)]], valid_sizes=[(7, 9)], q=2, h=7, w=9)
    out = scene.out["long"]
    generator = torch.Generator().manual_seed(4)
    out["pred_logits"].copy_(torch.tensor([[[0.2, -0.3]]]))
    out["pred_boxes"].copy_(torch.tensor([[[[0.7, 0.7, 0.4, 0.5], [0.2, 0.3, 0.2, 0.2]]]]))
    out["pred_masks"].copy_(torch.randn(out["pred_masks"].shape, generator=generator))
    out["pred_masks_low"].copy_(torch.randn(out["pred_masks_low"].shape, generator=generator))
    out["pred_masks_low"][0, 0, 0, 1:3, 2:4] += 4.0
    assert out["pred_masks_low"].shape[-2:] == (4, 5)
    logits, targets = scene._masks("long", 0, 0, low=True)
    assert [i for i, t in enumerate(targets) if t] == [1 * 5 + 2, 1 * 5 + 3, 2 * 5 + 2, 2 * 5 + 3]
    assert min(range(2), key=scene.cost(0, DEFAULT).__getitem__) == 0
    losses = _criterion()(scene.outputs(), scene.targets())
    for key, value in scene.losses([0]).items():
        assert losses[key].item() == pytest.approx(value, rel=1e-4, abs=1e-6), key


def test_absent_object_frames_are_not_referred_have_no_box_and_do_not_count():
    """B=2, A=2: sample 0's object is absent from its second frame; sample 1's is in both. num_boxes = 3."""
    scene = Scene(rects=[[(2, 5, 1, 6), None], [(0, 4, 4, 8), (1, 5, 3, 7)]], valid_sizes=[(8, 8), (8, 8)])
    out = scene.out["long"]
    out["pred_logits"].copy_(torch.tensor([[[0.5, 1.0, -1.0], [3.0, 1.0, -1.0]], [[0.3, -0.2, 1.1], [0.0, 0.4, 0.9]]]))
    generator = torch.Generator().manual_seed(3)
    out["pred_boxes"].copy_(0.2 + 0.6 * torch.rand(out["pred_boxes"].shape, generator=generator))
    out["pred_masks"].copy_(2.0 * torch.randn(out["pred_masks"].shape, generator=generator))
    out["pred_masks_low"].copy_(2.0 * torch.randn(out["pred_masks_low"].shape, generator=generator))
    for b in range(2):
        for a in range(2):
            # query 1 of sample b knows the object (the absent frame: an empty mask), so it is matched
            target = scene.target_mask(b, a)
            out["pred_masks"][b, a, 1] = 4.0 * (2 * target - 1)
            out["pred_masks_low"][b, a, 1] = 4.0 * (2 * target[1::2, 1::2] - 1)
    # sample 0's query 0 predicts what query 1 does, and scores lower where the object is, higher where it is not:
    # the class cost averages over the frames with the object only, so query 1 is matched (over both frames,
    # query 0 would be)
    out["pred_masks"][0, :, 0] = out["pred_masks"][0, :, 1]
    out["pred_masks_low"][0, :, 0] = out["pred_masks_low"][0, :, 1]
    out["pred_boxes"][0, :, 0] = out["pred_boxes"][0, :, 1]
    assert class_cost(0.5) + class_cost(3.0) < 2 * class_cost(1.0) and class_cost(1.0) < class_cost(0.5)
    for b in range(2):
        assert min(range(3), key=scene.cost(b, DEFAULT).__getitem__) == 1
    assert scene.num_boxes() == 3
    losses = _criterion()(scene.outputs(), scene.targets())
    expected = scene.losses([1, 1])
    for key, value in expected.items():
        assert losses[key].item() == pytest.approx(value, rel=1e-4, abs=1e-6), key
    # the absent frame: every query "not referred" (query 1 says 1.0 there and pays for it), no box term
    present = sum(focal(out["pred_logits"][0, 0, q].item(), int(q == 1)) for q in range(3))
    absent = sum(focal(out["pred_logits"][0, 1, q].item(), 0) for q in range(3))
    rest = sum(focal(out["pred_logits"][1, a, q].item(), int(q == 1)) for a in range(2) for q in range(3))
    assert losses["loss_is_referred_long"].item() == pytest.approx((present + absent + rest) / 3, rel=1e-5)
    boxes = [(0, 0), (1, 0), (1, 1)]
    assert losses["loss_box_l1_long"].item() == pytest.approx(
        sum(l1(out["pred_boxes"][b, a, 1].tolist(), scene.box_target(b, a)) for b, a in boxes) / 3, rel=1e-5)


def test_long_short_term_of_the_matching_cost_prefers_queries_whose_pathways_agree():
    """Eq. 5. Queries 0 and 1 predict the same long masks and box (the object, rows 2:6, cols 2:6 of 8 x 16);
    their short masks are equally good for the short target (the object and a second one at cols 10:14), but
    query 0's short mask is the other object, query 1's the object itself. Query 0's class score is slightly
    higher: without the long-short term it wins, with it query 1 does."""
    scene = Scene(rects=[[(2, 6, 2, 6)]], valid_sizes=[(8, 16)], h=8, w=16, pathways=("long", "short"))
    scene.short_rects = [[[(2, 6, 2, 6), (2, 6, 10, 14)]]]
    this, other, elsewhere = (2, 6, 2, 6), (2, 6, 10, 14), (6, 8, 0, 4)
    masks = {("long", 0): this, ("long", 1): this, ("long", 2): elsewhere,
             ("short", 0): other, ("short", 1): this, ("short", 2): elsewhere}
    for (p, q), rect in masks.items():
        out = scene.out[p]
        _set_mask(out["pred_masks"][0, 0, q], rect, 6.0, -6.0)
        r0, r1, c0, c1 = rect
        _set_mask(out["pred_masks_low"][0, 0, q], (r0 // 2, r1 // 2, c0 // 2, c1 // 2), 6.0, -6.0)
        out["pred_boxes"][0, 0, q] = torch.tensor(rect_box(*masks[("long", q)], (8, 16)))   # both: the object's
    scene.out["long"]["pred_logits"][0, 0] = torch.tensor([0.3, 0.0, -3.0])
    scene.out["short"]["pred_logits"][0, 0] = torch.tensor([0.1, -0.1, -3.0])
    without = {**DEFAULT, "lsi": 0.0}
    assert scene.cost(0, without)[0] < scene.cost(0, without)[1]
    assert scene.cost(0, DEFAULT)[1] < scene.cost(0, DEFAULT)[0] - 1.0
    assert scene.matched_by(_criterion(short=True, match_lsi=0.0)(scene.outputs(), scene.targets())) == [0]
    losses = _criterion(short=True)(scene.outputs(), scene.targets())
    assert scene.matched_by(losses) == [1] and scene.matched_by(losses, "short") == [1]
    # L_lsi (eq. 1) of the matched query's full-resolution long and short masks: they agree, almost 0
    long, short = (scene.out[p]["pred_masks"][0, 0, 1].flatten().tolist() for p in ("long", "short"))
    assert losses["loss_lsi"].item() == pytest.approx(lsi(long, short), rel=1e-4)
    for key, value in scene.losses([1], "short").items():
        assert losses[key].item() == pytest.approx(value, rel=1e-4, abs=1e-6), key


# ------------------------------------------------------------------------------------ 5. CLI end to end

@pytest.fixture(scope="module")
def prepared_s(tmp_path_factory) -> Path:
    """A small synthetic A2D set prepared with 5-frame windows, manual short text, and its flows."""
    from losh.pipeline.flows import compute_flows
    from losh.pipeline.prepare import PrepareSettings, prepare_a2d
    from losh.pipeline.synth import write_synthetic_a2d

    base = tmp_path_factory.mktemp("sgmg_data")
    write_synthetic_a2d(base / "raw", videos=4, seed=3, height=64, width=88, frames=12, annotated_per_video=1,
                        progress=False)
    prepare_a2d(base / "raw", base / "prep", short_source="manual",
                settings=PrepareSettings(window=5, short_side=64, max_long_side=88), workers=1, progress=False)
    compute_flows(base / "prep", workers=0, progress=False)
    return base / "prep"


def _train(data, run, *extra):
    # deterministic: bit-identical resumes need it on more than one thread (Swin's bias-table backward adds in
    # any order otherwise)
    settings = Path(run).parent / "deterministic.json"
    settings.write_text(json.dumps({**TrainSettings().to_dict(), "deterministic": True}))
    return CliRunner().invoke(app, ["train", "--data", str(data), "--out", str(run), "--config", "tiny-s",
                                    "--window", "5", "--batch-size", "2", "--workers", "0", "--seed", "3",
                                    "--settings", str(settings), *extra])


def test_cli_trains_resumes_evaluates_and_predicts_with_losh_s(prepared_s, tmp_path):
    from losh.evaluation.frame_metrics import METRIC_KEYS
    from losh.pipeline.video import write_h264
    from losh.training.checkpoint import load_checkpoint, load_model

    train_samples = json.loads((prepared_s / "manifest.json").read_text())["counts"]["samples_train"]
    steps = -(-train_samples // 2)
    result = _train(prepared_s, tmp_path / "full", "--epochs", "2")
    assert result.exit_code == 0, result.output
    assert f"trained {2 * steps} steps" in result.output and "loss_fbc=" in result.output
    # the same run in two parts: one epoch, then --resume to the second
    result = _train(prepared_s, tmp_path / "split", "--epochs", "1")
    assert result.exit_code == 0, result.output
    result = _train(prepared_s, tmp_path / "split", "--epochs", "2", "--resume")
    assert result.exit_code == 0, result.output
    full, split = (load_checkpoint(tmp_path / run / "checkpoints/last.pt") for run in ("full", "split"))
    assert split["epoch"] == full["epoch"] == 2 and split["global_step"] == full["global_step"] == 2 * steps
    assert full["model_config"]["architecture"] == "sgmg" and full["model_config"]["name"] == "tiny-s"
    assert full["model"].keys() == split["model"].keys()
    for key, value in full["model"].items():      # tensors, and the trained tokenizer's state
        if isinstance(value, torch.Tensor):
            assert torch.equal(value, split["model"][key]), key
        else:
            assert value == split["model"][key], key

    checkpoint = tmp_path / "full/checkpoints/last.pt"
    model, _ = load_model(checkpoint, torch.device("cpu"))
    manifest = json.loads((prepared_s / "manifest.json").read_text())
    assert isinstance(model, LoShS) and model.config == config_for_data(get_config("tiny-s"), manifest)
    assert model.config.short_text_source == manifest["short_text"]["source"] != "data"
    result = CliRunner().invoke(app, ["evaluate", "--data", str(prepared_s), "--checkpoint", str(checkpoint),
                                      "--out", str(tmp_path / "metrics.json")])
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    for key in METRIC_KEYS:
        assert isinstance(metrics[key], (int, float)) and math.isfinite(metrics[key]), key
    assert 0 <= metrics["mean_iou"] <= 1 and metrics["samples"] == \
        json.loads((prepared_s / "manifest.json").read_text())["counts"]["samples_test"]

    # losh predict: 12 frames in 5-frame windows (the last one overlapping), one mask per frame
    frames = np.full((12, 64, 88, 3), 90, dtype=np.uint8)
    yy, xx = np.mgrid[:64, :88]
    for t in range(12):
        frames[t][(yy - 30) ** 2 + (xx - 10 - 6 * t) ** 2 < 100] = (220, 30, 30)
    video = write_h264(tmp_path / "clip.mp4", frames, 24)
    out = tmp_path / "predicted"
    result = CliRunner().invoke(app, ["predict", "--checkpoint", str(checkpoint), "--video", str(video), "--text",
                                      "the red circle moving right", "--out", str(out), "--no-video", "--device",
                                      "cpu", "--no-progress"])
    assert result.exit_code == 0, result.output
    report = json.loads((out / "predictions.json").read_text())
    assert report["model"] == "tiny-s" and report["window"] == 5 and report["frames"] == 12
    [expression] = report["expressions"]
    assert 0 <= expression["query"] < 5 and 0 < expression["score"] <= 1
    masks = sorted((out / expression["masks"]).iterdir())
    assert [p.name for p in masks] == [f"{t:05d}.png" for t in range(12)]
    for path in masks:
        mask = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        assert mask.shape == (64, 88) and set(np.unique(mask)) <= {0, 255}


# ------------------------------------------------------------------------------------------------ 6. config

def test_losh_s_and_sgmg_presets():
    config = get_config("losh-s")
    assert config.architecture == "sgmg" and config.backbone.num_stages == 4 and config.backbone.variant == "swin-t"
    assert (config.backbone.embed_dim, config.backbone.depths, config.backbone.num_heads) == (96, (2, 2, 6, 2),
                                                                                             (3, 6, 12, 24))
    assert config.window == 5 and config.use_short_text
    tc = config.transformer
    assert (tc.num_encoder_layers, tc.num_decoder_layers, tc.num_queries, tc.cross_attention) == (
        4, 4, 5, "long_from_short")
    assert config.loss.lsi > 0 and config.loss.match_lsi > 0 and config.loss.fbc > 0
    baseline = get_config("sgmg")
    assert baseline.architecture == "sgmg" and not baseline.use_short_text
    assert baseline.transformer.num_encoder_layers == 4          # SgMg's, not MTTR's 3
    assert baseline.transformer.cross_attention == "none" and baseline.inference_short_pathway == "none"
    assert baseline.loss.lsi == baseline.loss.match_lsi == baseline.loss.fbc == 0
    expected = with_overrides(config, {"name": "sgmg", "use_short_text": False, "transformer.cross_attention": "none",
                                       "loss.lsi": 0.0, "loss.match_lsi": 0.0, "loss.fbc": 0.0,
                                       "inference_short_pathway": "none",
                                       "sgmg.long_short_attention": "deformable"})   # SgMg has no such attention
    assert baseline == expected                                     # nothing else differs
    swin_b = with_overrides(config, {"backbone.variant": "swin-b"}).backbone
    assert (swin_b.embed_dim, swin_b.depths, swin_b.num_heads) == (128, (2, 2, 18, 2), (4, 8, 16, 32))
    tiny = get_config("tiny-s")
    assert tiny.architecture == "sgmg" and tiny.window == 5 and tiny.backbone.num_stages == 4
    assert get_config("tiny-s:wo-lsi").loss.lsi == 0 and get_config("tiny-s:wo-fbc").loss.fbc == 0
    assert get_config("tiny-s:wo-ca").transformer.cross_attention == "none"
    # SgMg's choices in both paper presets (the tiny CPU preset keeps the recipe its figures were measured with)
    for spec in ("losh-s", "sgmg"):
        c = get_config(spec)
        assert (c.sgmg.sentence_feature, c.sgmg.position_offset, c.sgmg.pad_multiple, c.sgmg.pad_multiple_videos) == (
            "pooler", 0.5, 32, 16)
        assert c.backbone.stochastic_depth == 0.2 and c.loss.boxes_in_absent_frames
        assert c.text.as_written_in_videos and c.text.collapse_whitespace and c.text.dropout_when_frozen
    assert (tiny.sgmg.sentence_feature, tiny.sgmg.position_offset, tiny.sgmg.pad_multiple) == ("mean", 0.0, 1)


def test_config_files_round_trip_and_bad_combinations_are_refused(tmp_path):
    for spec in ("losh-s", "sgmg", "tiny-s:wo-ca"):
        config = with_overrides(get_config(spec), {"sgmg.fft_sigma": 5.0, "loss.match_giou": 1.5})
        save_config(config, tmp_path / f"{spec}.json")
        assert load_config(tmp_path / f"{spec}.json") == config
    with pytest.raises(ConfigError, match="official LoSh code.*architecture 'sgmg'"):
        get_config("losh-s:official")
    with pytest.raises(ConfigError, match="architecture 'mttr' takes backbone.num_stages = 3, got 4"):
        with_overrides(get_config("losh-m"), {"backbone.num_stages": 4})
    with pytest.raises(ConfigError, match="architecture 'sgmg' takes backbone.num_stages = 4, got 3"):
        with_overrides(get_config("tiny-s"), {"backbone.num_stages": 3})


def test_with_boxes_in_absent_frames_an_absent_objects_box_is_regressed_to_zeros_and_costs_in_matching():
    """SgMg's matcher averages the box costs over every frame and its loss regresses an absent object's box to
    zeros (`loss.boxes_in_absent_frames`, on in the losh-s and sgmg presets). Two queries with the same masks and
    scores: query 0's box is exact where the object is and large where it is absent, query 1's is a little off
    where the object is and nearly empty where it is absent."""
    scene = Scene(rects=[[(2, 5, 1, 6), None]], valid_sizes=[(8, 8)], q=2)
    out = scene.out["long"]
    for a in range(2):
        target = scene.target_mask(0, a)
        for q in range(2):
            out["pred_masks"][0, a, q] = 4.0 * (2 * target - 1)
            out["pred_masks_low"][0, a, q] = 4.0 * (2 * target[1::2, 1::2] - 1)
    box = scene.box_target(0, 0)
    near, small, large = [v + 0.02 for v in box], [0.02, 0.02, 0.01, 0.01], [0.5, 0.5, 0.6, 0.6]
    out["pred_boxes"][0, 0, 0], out["pred_boxes"][0, 1, 0] = torch.tensor(box), torch.tensor(large)
    out["pred_boxes"][0, 0, 1], out["pred_boxes"][0, 1, 1] = torch.tensor(near), torch.tensor(small)
    visible_only = _criterion()(scene.outputs(), scene.targets())
    every_frame = _criterion(boxes_in_absent_frames=True)(scene.outputs(), scene.targets())
    # the box loss says which query was matched: query 0 (0 where the object is) without the switch; with it
    # query 1 (query 0 would pay l1(large, 0) = 2.2 in the absent frame); num_boxes counts the frames with the
    # object (1), SgMg's normaliser, whatever the switch
    assert visible_only["loss_box_l1_long"].item() == pytest.approx(0.0, abs=1e-6)
    assert every_frame["loss_box_l1_long"].item() == pytest.approx(l1(near, box) + l1(small, [0, 0, 0, 0]), rel=1e-5)


def test_sgmg_pads_inputs_to_its_multiples_as_explicit_padding_would():
    """SgMg pads frames to multiples of 32 (training, window evaluation) or 16 (whole videos): the model does it
    inside, with a padding mask; inference crops the masks back, training keeps the padded size."""
    model = _model("tiny-s", **{"sgmg.pad_multiple": 32, "sgmg.pad_multiple_videos": 16}).eval()
    frames = _frames(b=1, t=3, h=60, w=90)
    padded = F.pad(frames, (0, 6, 0, 4))                                      # 64 x 96, both multiples
    mask = torch.zeros(1, 64, 96, dtype=torch.bool)
    mask[:, 60:], mask[:, :, 90:] = True, True
    with torch.no_grad():
        inside = model.infer(frames, LONG[:1], SHORT[:1], annotated_index=1)
        explicit = model.infer(padded, LONG[:1], SHORT[:1], annotated_index=1, padding_mask=mask)
        trained = model.forward(frames, LONG[:1], SHORT[:1], annotated_index=1)
        video = model.infer(frames, LONG[:1], SHORT[:1], annotated_index=None)
    assert inside["mask_logits"].shape[-2:] == (60, 90) and trained["input_size"] == (64, 96)
    assert torch.allclose(inside["mask_logits"], explicit["mask_logits"][..., :60, :90], atol=1e-5)
    assert torch.allclose(inside["pred_logits"], explicit["pred_logits"], atol=1e-6)
    assert video["mask_logits"].shape[-2:] == (60, 90)


def test_whole_video_inference_reads_the_expression_as_written_when_switched_on():
    """SgMg feeds Refer-YouTube-VOS and Refer-DAVIS17 expressions to RoBERTa as written (no lowercasing or
    whitespace clean-up); its training and window evaluation clean them up as MTTR does."""
    model = _model("tiny-s", **{"text.as_written_in_videos": True}).eval()
    seen = []
    tokenizer = model.text_encoder.tokenizer
    model.text_encoder.tokenizer = lambda texts, **kw: seen.append(list(texts)) or tokenizer(texts, **kw)
    frames = _frames(b=1, t=3)
    with torch.no_grad():
        model.infer(frames, ["The  Big red Circle "], ["Big  Circle"], annotated_index=None)
        model.infer(frames, ["The  Big red Circle "], ["Big  Circle"], annotated_index=1)
    assert seen == [["The  Big red Circle ", "Big  Circle"], ["the big red circle", "big circle"]]
