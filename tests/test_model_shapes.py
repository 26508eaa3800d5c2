"""The tiny preset end to end: forward, loss, backward, gradients, parameter groups."""
import copy

import pytest
import torch

from losh.models.registry import build_criterion, build_model
from losh.schemas.config import with_overrides
from losh.schemas.presets import get_config
from losh.training.optim import param_groups

B, T, H, W, K = 2, 4, 64, 96, 2
LONG = ["the big red circle is moving to the left", "a small blue square jumping up and down"]
SHORT = ["the big red circle", "a small blue square"]


def _targets():
    targets = []
    for referred in (0, 1):
        masks = torch.zeros(2, H, W)
        masks[0, 5:30, 10:40] = 1
        masks[1, 35:60, 50:90] = 1
        short = masks[referred].clone()
        short[:5, :5] = 1  # a (merged) short mask differing from the long one
        targets.append({"instance_masks": masks, "referred_index": referred, "short_mask": short})
    return targets


@pytest.fixture(scope="module")
def step():
    torch.manual_seed(0)
    # the paper's structure in tiny dims: frozen text encoder, queries starting from zeros (MTTR)
    config = with_overrides(get_config("tiny"), {"text.freeze": True, "transformer.text_conditioned_queries": False})
    model = build_model(config).train()
    criterion = build_criterion(config)
    frames = torch.randn(B, T, 3, H, W)
    flows = torch.randn(B, 4, 2, H, W)
    flow_valid = torch.tensor([[True, True, True, False], [False, True, True, True]])
    outputs = model(frames, LONG, SHORT, annotated_index=K)
    losses = criterion(outputs, _targets(), flows=flows, flow_valid=flow_valid)
    losses["loss"].backward()
    return model, config, outputs, losses


def test_output_shapes(step):
    model, config, outputs, _ = step
    q = config.transformer.num_queries
    assert outputs["frame_indices"] == [K] and outputs["annotated_index"] == K
    for pathway in ("long", "short"):
        out = outputs[pathway]
        assert out["pred_is_referred"].shape == (B, 1, q, 2)
        assert out["pred_masks"].shape == (B, 1, q, H // 4, W // 4)
        assert len(out["aux_outputs"]) == config.transformer.num_decoder_layers - 1
        assert out["aux_outputs"][0]["pred_masks"].shape == out["pred_masks"].shape
    # F_v of L_fbc: every frame of the window, stride 16, the last backbone stage
    assert outputs["fbc_features"].shape == (B, T, model.backbone.out_channels[-1], H // 16, W // 16)


def test_loss_terms_and_weighted_total(step):
    _, config, _, losses = step
    per_layer = {f"loss_{term}_{p}" for term in ("is_referred", "dice", "focal") for p in ("long", "short")}
    per_layer.add("loss_lsi")
    expected = per_layer | {k + f"_aux{i}" for k in per_layer for i in range(2)} | {"loss_fbc", "loss"}
    assert set(losses) == expected
    weights = {"is_referred": 2.0, "dice": 5.0, "focal": 2.0, "lsi": 5.0, "fbc": 0.1}
    total = 0.0
    for key, value in losses.items():
        if key == "loss":
            continue
        term = next(t for t in weights if key.startswith(f"loss_{t}"))
        total += weights[term] * value.item()
        assert torch.isfinite(value) and value.item() >= 0
    assert losses["loss"].item() == pytest.approx(total, rel=1e-5)


def test_every_trainable_parameter_gets_a_gradient_and_the_frozen_text_encoder_none(step):
    model, config, _, _ = step
    # DETR/MTTR decode from zero targets: the first decoder layer's self-attention attends over equal
    # values (its value bias), so its input projection weights get no gradient (in DETR too; only
    # rounding noise later); at initialisation its output is its zero biases, so the two weights after
    # it get a zero gradient on the first step and a non-zero one once the biases have moved
    never = "decoder.layers.0.self_attention.in_proj_weight"
    zero_at_init = {never, "decoder.layers.0.self_attention.out_proj.weight", "decoder.layers.0.norm1.weight"}
    trainable = 0
    for name, parameter in model.named_parameters():
        if name.startswith("text_encoder."):
            assert not parameter.requires_grad and parameter.grad is None, name
            continue
        assert parameter.requires_grad and parameter.grad is not None, name
        assert (parameter.grad.abs().sum() > 0) != (name in zero_at_init), name
        trainable += 1
    assert trainable > 100
    # frozen, yet its dropout on while the model trains: MTTR and SgMg call model.train() on the whole model
    assert model.text_encoder.model.training == config.text.dropout_when_frozen is True
    from losh.models.shared.text_encoder import TextEncoder
    from losh.schemas.config import with_overrides
    quiet = TextEncoder(with_overrides(config, {"text.dropout_when_frozen": False}).text).train()
    assert not quiet.model.training           # the switch off: frozen means no dropout either

    stepped = copy.deepcopy(model)  # (deepcopy does not copy gradients)
    for original, copied in zip(model.parameters(), stepped.parameters()):
        copied.grad = None if original.grad is None else original.grad.clone()
    torch.optim.AdamW(param_groups(stepped, 1e-3, 1e-3, 0.0)).step()
    stepped.zero_grad()
    torch.manual_seed(1)
    outputs = stepped(torch.randn(B, T, 3, H, W), LONG, SHORT, annotated_index=K)
    build_criterion(config)(outputs, _targets(), flows=torch.randn(B, 4, 2, H, W))["loss"].backward()
    for name, parameter in stepped.named_parameters():
        if parameter.requires_grad and name != never:
            assert parameter.grad.abs().sum() > 0, name


def test_param_groups_split_backbone_and_rest_and_leave_out_the_frozen_encoder(step):
    model, _, _, _ = step
    groups = param_groups(model, lr=1e-4, backbone_lr=1e-5, weight_decay=1e-4)
    by_name = {g["name"]: g for g in groups}
    assert set(by_name) == {"rest", "backbone"}
    assert by_name["backbone"]["lr"] == 1e-5 and by_name["rest"]["lr"] == 1e-4
    grouped = [id(p) for g in groups for p in g["params"]]
    trainable = [id(p) for p in model.parameters() if p.requires_grad]
    assert sorted(grouped) == sorted(trainable)
    assert {id(p) for p in by_name["backbone"]["params"]} == {id(p) for p in model.backbone.parameters()}
    torch.optim.AdamW(groups)  # accepted as is


def test_mttr_variant_trains_the_long_pathway_only():
    torch.manual_seed(0)
    config = get_config("tiny:baseline")
    model = build_model(config)
    frames = torch.randn(1, T, 3, H, W)
    outputs = model(frames, LONG[:1], SHORT[:1], annotated_index=K)  # short texts are ignored
    assert "short" not in outputs
    losses = build_criterion(config)(outputs, _targets()[:1])  # no flows needed: no L_fbc
    assert "loss_lsi" not in losses and "loss_fbc" not in losses and "loss_dice_short" not in losses
    losses["loss"].backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_criterion_refuses_missing_inputs(step):
    _, config, outputs, _ = step
    criterion = build_criterion(config)
    with pytest.raises(ValueError, match="no flows"):
        criterion(outputs, _targets())
    long_only = {k: v for k, v in outputs.items() if k != "short"}
    with pytest.raises(ValueError, match="short_texts"):
        criterion(long_only, _targets(), flows=torch.zeros(B, 4, 2, H, W))


def test_padded_batch_with_smaller_targets():
    torch.manual_seed(0)
    config = get_config("tiny")
    model = build_model(config)
    frames = torch.randn(1, T, 3, H, W)
    padding = torch.zeros(1, H, W, dtype=torch.bool)
    padding[:, :, 64:] = True  # this clip is 64x64, padded to 64x96
    outputs = model(frames, LONG[:1], SHORT[:1], annotated_index=K, padding_mask=padding)
    assert outputs["fbc_padding_mask"].shape == (1, H // 16, W // 16)
    assert outputs["fbc_padding_mask"][0, :, 4:].all() and not outputs["fbc_padding_mask"][0, :, :4].any()
    target = {"instance_masks": torch.ones(1, H, 64), "referred_index": 0}
    losses = build_criterion(config)(outputs, [target], flows=torch.zeros(1, 4, 2, H, W))
    assert torch.isfinite(losses["loss"])


def test_bf16_autocast_step_runs_and_stays_close_to_float32():
    """The AMP path in bf16 (the GPU default), exercised with the CPU's autocast: no dtype clash
    anywhere in the model, the loss or the backward, and the loss close to the float32 one."""
    torch.manual_seed(0)
    config = get_config("tiny")
    model = build_model(config).train()
    criterion = build_criterion(config)
    frames = torch.randn(B, T, 3, H, W)
    flows = torch.randn(B, 4, 2, H, W)
    flow_valid = torch.ones(B, 4, dtype=torch.bool)

    def loss(amp: bool) -> dict:
        torch.manual_seed(1)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
            outputs = model(frames, LONG, SHORT, annotated_index=K)
        return criterion(outputs, _targets(), flows=flows, flow_valid=flow_valid)

    full = loss(amp=False)
    half = loss(amp=True)
    assert half["loss"].dtype == torch.float32          # the loss terms are computed in float32
    half["loss"].backward()
    assert torch.isfinite(half["loss"])
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    for key in ("loss", "loss_dice_long", "loss_is_referred_long", "loss_lsi", "loss_fbc"):
        assert half[key].item() == pytest.approx(full[key].item(), rel=0.05, abs=0.02), key


def test_stride4_mask_resolution_gives_the_same_terms_on_their_scale(step):
    model, config, outputs, losses = step
    coarse = with_overrides(config, {"loss.mask_resolution": "stride4"})
    detached = {k: v for k, v in outputs.items()}
    again = build_criterion(coarse)(detached, _targets(), flows=torch.randn(B, 4, 2, H, W),
                                    flow_valid=torch.ones(B, 4, dtype=torch.bool))
    assert set(again) == set(losses) and all(torch.isfinite(v) for v in again.values())
    # the same targets at 16x fewer pixels: the terms move but stay on their scale
    assert abs(again["loss_dice_long"].item() - losses["loss_dice_long"].item()) < 0.2
    with pytest.raises(Exception, match="mask_resolution"):
        with_overrides(config, {"loss.mask_resolution": "stride8"})
