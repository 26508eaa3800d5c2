"""Long-short cross-attention variants and long-only inference (paper 3.4, 3.8; table 2)."""
import pytest
import torch

from losh.models.registry import build_model
from losh.schemas.config import with_overrides
from losh.schemas.presets import get_config

B, T, H, W, K = 2, 4, 48, 64, 2
LONG = ["the big red circle is moving to the left", "a small blue square jumping"]
OTHER_LONG = ["the small green triangle is rotating", "a big yellow diamond standing still"]
SHORT = ["the big red circle", "a small blue square"]
OTHER_SHORT = ["a purple dog", "the white car on the road"]


def _model(cross_attention, **overrides):
    torch.manual_seed(0)
    config = with_overrides(get_config("tiny"), {"transformer.cross_attention": cross_attention, **overrides})
    return build_model(config).eval()


@pytest.fixture(scope="module")
def frames():
    return torch.randn(B, T, 3, H, W, generator=torch.Generator().manual_seed(0))


def _run(model, frames, long, short):
    with torch.no_grad():
        out = model(frames, long, short, annotated_index=K)
    return out["long"]["pred_masks"], out["short"]["pred_masks"]


def _changed(a, b):
    return (a - b).abs().max().item() > 1e-3


def _same(a, b):
    return torch.allclose(a, b, atol=1e-5)


@pytest.mark.parametrize("mode,long_reads_short,short_reads_long", [
    ("long_from_short", True, False),
    ("none", False, False),
    ("short_from_long", False, True),
    ("bidirectional", True, True),
])
def test_cross_attention_reads_exactly_the_pathways_it_should(frames, mode, long_reads_short, short_reads_long):
    model = _model(mode)
    long_a, short_a = _run(model, frames, LONG, SHORT)
    long_b, _ = _run(model, frames, LONG, OTHER_SHORT)          # only the short text changes
    _, short_c = _run(model, frames, OTHER_LONG, SHORT)         # only the long text changes
    assert (_changed(long_a, long_b) if long_reads_short else _same(long_a, long_b))
    assert (_changed(short_a, short_c) if short_reads_long else _same(short_a, short_c))


def test_variants_replace_the_even_numbered_layers():
    counts = {}
    for mode in ("none", "long_from_short", "short_from_long", "bidirectional"):
        model = _model(mode)
        counts[mode] = model.num_parameters()
        long_layers = sorted(model.encoder.long_cross.keys())
        short_layers = sorted(model.encoder.short_cross.keys())
        assert long_layers == (["1", "3"] if mode in ("long_from_short", "bidirectional") else [])
        assert short_layers == (["1", "3"] if mode in ("short_from_long", "bidirectional") else [])
        assert len(model.encoder.layers) == 4
    layer = sum(p.numel() for p in _model("long_from_short").encoder.long_cross["1"].parameters())
    assert counts["long_from_short"] == counts["none"] + 2 * layer == counts["short_from_long"]
    assert counts["bidirectional"] == counts["none"] + 4 * layer


def _count_calls(model):
    calls = {"texts": [], "encoder_short": [], "decoder_batch": [], "short_cross": 0}
    model.text_encoder.model.register_forward_pre_hook(
        lambda _, args, kwargs: calls["texts"].append(kwargs["input_ids"].shape[0]), with_kwargs=True)
    model.encoder.register_forward_pre_hook(lambda _, args: calls["encoder_short"].append(args[3]))
    model.decoder.register_forward_pre_hook(lambda _, args: calls["decoder_batch"].append(args[0].shape[0]))
    for layer in model.encoder.short_cross.values():
        layer.register_forward_pre_hook(lambda *_: calls.__setitem__("short_cross", calls["short_cross"] + 1))
    return calls


@pytest.mark.parametrize("mode", ["long_from_short", "bidirectional"])
def test_inference_without_the_short_pathway_runs_the_long_one_alone(frames, mode):
    model = _model(mode, inference_short_pathway="none")
    calls = _count_calls(model)
    with torch.no_grad():
        model(frames, LONG, SHORT, annotated_index=K)
    assert calls["texts"] == [2 * B] and calls["decoder_batch"] == [2 * B]   # training: both, one call each
    assert calls["encoder_short"][0] is not None
    for key in calls:
        calls[key] = [] if key != "short_cross" else 0
    result = model.infer(frames, LONG, SHORT, annotated_index=K)   # short texts given but not used
    assert calls["texts"] == [B]                   # only the long texts are encoded
    assert calls["encoder_short"] == [None]        # the encoder gets no short sequence
    assert calls["decoder_batch"] == [B]           # one pathway decoded
    assert calls["short_cross"] == 0
    assert set(result) >= {"scores", "best_query", "mask_logits"} and "short" not in result


@pytest.mark.parametrize("mode", ["long_from_short", "bidirectional"])
def test_inference_with_the_short_encoder_pathway_equals_trainings_long_pathway(frames, mode):
    model = _model(mode)                            # the presets' default: inference_short_pathway "encoder"
    assert model.config.inference_short_pathway == "encoder"
    long_masks, _ = _run(model, frames, LONG, SHORT)
    calls = _count_calls(model)
    result = model.infer(frames, LONG, SHORT, annotated_index=K)
    assert calls["texts"] == [2 * B]               # long and short texts encoded in one call
    assert calls["encoder_short"][0] is not None   # the short sequence feeds the long pathway's CA
    assert calls["decoder_batch"] == [B]           # but only the long pathway is decoded (no short head)
    assert "short" not in result
    assert torch.allclose(result["pred_masks"], long_masks, atol=1e-5)
    # the long prediction depends on the short text, as in training
    other = model.infer(frames, LONG, OTHER_SHORT, annotated_index=K)
    assert _changed(other["pred_masks"], result["pred_masks"])
    with pytest.raises(ValueError, match="short_texts"):
        model.infer(frames, LONG, annotated_index=K)


@pytest.mark.parametrize("mode", ["none", "short_from_long"])
def test_inference_equals_the_long_pathway_when_it_does_not_read_the_short_one(frames, mode):
    model = _model(mode)
    long_masks, _ = _run(model, frames, LONG, SHORT)
    result = model.infer(frames, LONG, annotated_index=K)      # no short text needed: the long pathway ignores it
    assert torch.allclose(result["pred_masks"], long_masks, atol=1e-5)


def test_inference_selects_the_query_with_the_best_mean_reference_score(frames):
    model = _model("long_from_short", **{"transformer.decode_frames": "all"})
    result = model.infer(frames, LONG, SHORT, annotated_index=K)
    q = model.config.transformer.num_queries
    assert result["frame_indices"] == list(range(T))
    assert result["pred_masks"].shape == (B, T, q, H // 4, W // 4)
    scores = result["pred_is_referred"].softmax(-1)[..., 0].mean(dim=1)
    assert torch.allclose(result["scores"], scores)
    assert torch.equal(result["best_query"], scores.argmax(dim=1))
    assert result["mask_logits"].shape == (B, T, H, W)
    best = result["pred_masks"][torch.arange(B), :, result["best_query"]]
    upsampled = torch.nn.functional.interpolate(best, size=(H, W), mode="bilinear", align_corners=False)
    assert torch.allclose(result["mask_logits"], upsampled)


def test_baseline_ignores_short_texts(frames):
    torch.manual_seed(0)
    model = build_model(get_config("tiny:baseline")).eval()
    with torch.no_grad():
        with_short = model(frames, LONG, SHORT, annotated_index=K)
        without = model(frames, LONG, annotated_index=K)
    assert "short" not in with_short
    assert torch.allclose(with_short["long"]["pred_masks"], without["long"]["pred_masks"], atol=1e-6)
    assert not model.encoder.long_cross and not model.encoder.short_cross


def test_text_conditioned_queries_start_from_the_sentence_feature(frames):
    """With the switch, the decoder's queries start from the mean text feature: the decoder sees the
    expression even where the encoder ignored it. Checked with the encoder's text path cut."""
    captured = {}

    def hook(module, args):
        captured["query_text"] = args[3] if len(args) > 3 else None

    for switch in (False, True):
        model = _model("none", **{"transformer.text_conditioned_queries": switch})
        handle = model.decoder.register_forward_pre_hook(hook)
        with torch.no_grad():
            model(frames, LONG, None, annotated_index=K)
        handle.remove()
        if not switch:
            assert captured["query_text"] is None
            continue
        sentence = captured["query_text"]
        assert sentence.shape == (B, 64)
        with torch.no_grad():
            text, padding = model.text_encoder(LONG)[:2]
            projected = model.text_proj(text)
        keep = (~padding).unsqueeze(-1).float()
        expected = (projected * keep).sum(1) / keep.sum(1)
        assert torch.allclose(sentence, expected, atol=1e-5)
