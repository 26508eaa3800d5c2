"""FLOPs of LoSh-M and of the MTTR baseline at the paper's input (paper table 4: 253.2G vs 238.9G), and of
LoSh-S and its SgMg baseline.

`python -m bench.flops` prints one JSON object per line:
    flops_ratio_losh_vs_mttr   LoSh-M / MTTR forward FLOPs of one training sample (target 1.06)
    flops_losh_m, flops_mttr   forward GFLOPs (torch.utils.flop_counter: 2 per multiply-add), with
                               GMACs, the paper's figure and the inference (long pathway only) FLOPs
    params_losh_m, params_mttr trainable parameters (M; the frozen RoBERTa is reported apart)
    flops_ratio_losh_s_vs_sgmg, flops_losh_s, flops_sgmg, params_losh_s, params_sgmg: the same for LoSh-S / SgMg
                               (the paper gives no FLOPs for them: no target)

`python -m bench.flops --pair losh-s-dense:losh-s` measures other pairs instead: "losh-s-dense" is LoSh-S with the
paper's dense long-short cross-attention (`sgmg.long_short_attention` "dense") against the default deformable one
(flops_ratio_losh_s_dense_vs_losh_s, flops_losh_s_dense, ...); `--input T,H,W` takes another clip size.

Models are the paper presets with random weights (no download): Video Swin-T dims from torchvision,
a RoBERTa built from a config with roberta-base's dims. One sample: LoSh-M/MTTR 8 frames of 320 x 576,
LoSh-S/SgMg 5 frames of 360 x 640 (SgMg's A2D input); the transformer on the annotated frame (their A2D
setting); the "all frames" figures are in the details. The counter has no formula for grid_sample (the
deformable attention's bilinear sampling) nor for the FFTs of SgMg's spectrum modulation: those count 0.
Texts have the mean lengths of real A2D-Sentences expressions (6.9 words long, 3.1 words short, in
shared/data/a2d_expressions_dev.csv).
"""
from __future__ import annotations

import argparse
import json
import time

import torch
from torch.utils import flop_counter
from torch.utils.flop_counter import FlopCounterMode, register_flop_formula, sdpa_flop_count

from losh.models.registry import build_model
from losh.schemas.config import with_overrides
from losh.schemas.presets import get_config

# models that are a preset with overrides: (preset, overrides)
VARIANTS = {"losh-s-dense": ("losh-s", {"sgmg.long_short_attention": "dense"})}
PAPER_GFLOPS = {"losh-m": 253.2, "mttr": 238.9, "losh-s": None, "sgmg": None, "losh-s-dense": None}
# (frames, height, width, annotated position) of one sample
INPUTS = {"losh-m": (8, 320, 576, 4), "mttr": (8, 320, 576, 4), "losh-s": (5, 360, 640, 2), "sgmg": (5, 360, 640, 2),
          "losh-s-dense": (5, 360, 640, 2)}
PAIRS = (("losh-m", "mttr"), ("losh-s", "sgmg"))     # what `make bench` measures
RATIO_NAMES = {("losh-m", "mttr"): "flops_ratio_losh_vs_mttr", ("losh-s", "sgmg"): "flops_ratio_losh_s_vs_sgmg"}
LONG_TEXT = "the brown dog is running on grass"   # 7 words
SHORT_TEXT = "the brown dog"                       # 3 words


def _count_cpu_attention() -> None:
    """FlopCounterMode has no formula for the CPU kernel of scaled_dot_product_attention: add one."""
    op = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    if op is None or op in flop_counter.flop_registry:
        return

    @register_flop_formula(op)
    def _cpu_sdpa(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
        return sdpa_flop_count(query_shape, key_shape, value_shape)


def paper_sized_model(spec: str, decode_frames: str = "annotated"):
    preset, overrides = VARIANTS.get(spec, (spec, {}))
    config = with_overrides(get_config(preset), {
        **overrides, "backbone.require_weights": False, "text.pretrained": False, "text.max_tokens": 512,
        "transformer.decode_frames": decode_frames,
    })
    torch.manual_seed(0)
    return build_model(config).eval()


def count_flops(model, frames: torch.Tensor, annotated: int, infer: bool = False) -> int:
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        if infer:
            model.infer(frames, [LONG_TEXT], [SHORT_TEXT], annotated_index=annotated)
        else:
            model(frames, [LONG_TEXT], [SHORT_TEXT], annotated_index=annotated)
    return counter.get_total_flops()


def measure(pairs: tuple[tuple[str, str], ...] = PAIRS, clip: tuple[int, int, int] | None = None) -> list[dict]:
    """The JSON lines of each (ours, baseline) pair; `clip` (frames, height, width): another input than INPUTS'
    (the annotated frame the middle one)."""
    _count_cpu_attention()
    lines = []
    for ours, baseline in pairs:
        lines += _measure_pair(ours, baseline, clip)
    return lines


def _key(spec: str) -> str:
    return spec.replace("-", "_")


def _measure_pair(ours: str, baseline: str, clip: tuple[int, int, int] | None = None) -> list[dict]:
    frames_n, height, width, annotated = INPUTS[ours] if clip is None else (*clip, clip[0] // 2)
    frames = torch.randn(1, frames_n, 3, height, width, generator=torch.Generator().manual_seed(0))
    results: dict[str, dict] = {}
    for spec in (ours, baseline):
        started = time.perf_counter()
        model = paper_sized_model(spec)
        flops = count_flops(model, frames, annotated)
        infer_flops = count_flops(model, frames, annotated, infer=True)   # the preset's inference (short text encoded)
        infer_long_only_flops = infer_flops
        if model.config.use_short_text:   # the other reading: the long pathway alone
            model.config = with_overrides(model.config, {"inference_short_pathway": "none"})
            infer_long_only_flops = count_flops(model, frames, annotated, infer=True)
        all_frames = count_flops(paper_sized_model(spec, "all"), frames, annotated)
        text = model.text_encoder
        results[spec] = {
            "flops": flops, "infer_flops": infer_flops, "infer_long_only_flops": infer_long_only_flops,
            "all_frames_flops": all_frames,
            "params": model.num_parameters(),
            "params_frozen_text_encoder": sum(p.numel() for p in text.parameters() if not p.requires_grad),
            "text_tokens": len(text.tokenizer(LONG_TEXT)["input_ids"]),
            "seconds": round(time.perf_counter() - started, 1),
        }
    losh, base = results[ours], results[baseline]
    shape = [frames_n, 3, height, width]
    target = (round(PAPER_GFLOPS[ours] / PAPER_GFLOPS[baseline], 2)
              if PAPER_GFLOPS[ours] and PAPER_GFLOPS[baseline] else None)
    lines = [{
        "bench": RATIO_NAMES.get((ours, baseline), f"flops_ratio_{_key(ours)}_vs_{_key(baseline)}"),
        "value": round(losh["flops"] / base["flops"], 4), "unit": "ratio", "target": target, "input": shape,
        f"{_key(ours)}_gflops": round(losh["flops"] / 1e9, 1),
        f"{_key(baseline)}_gflops": round(base["flops"] / 1e9, 1),
        "infer_ratio": round(losh["infer_flops"] / base["infer_flops"], 4),
        "infer_ratio_long_only": round(losh["infer_long_only_flops"] / base["infer_flops"], 4),
        "all_frames_ratio": round(losh["all_frames_flops"] / base["all_frames_flops"], 4),
        "note": "forward of one training sample, transformer on the annotated frame (their A2D setting)",
    }]
    for spec in (ours, baseline):
        name = f"flops_{_key(spec)}"
        r = results[spec]
        lines.append({
            "bench": name, "value": round(r["flops"] / 1e9, 1), "unit": "GFLOPs", "target": None,
            "gmacs": round(r["flops"] / 2e9, 1), "paper_g": PAPER_GFLOPS[spec],
            "infer_gflops": round(r["infer_flops"] / 1e9, 1),
            "infer_long_only_gflops": round(r["infer_long_only_flops"] / 1e9, 1),
            "all_frames_gflops": round(r["all_frames_flops"] / 1e9, 1), "input": shape,
            "long_text_tokens": r["text_tokens"], "seconds": r["seconds"],
        })
    for spec in (ours, baseline):
        name = f"params_{_key(spec)}"
        r = results[spec]
        lines.append({"bench": name, "value": round(r["params"] / 1e6, 2), "unit": "M trainable", "target": None,
                      "frozen_text_encoder_m": round(r["params_frozen_text_encoder"] / 1e6, 2)})
    return lines


def _pair(text: str) -> tuple[str, str]:
    ours, _, baseline = text.partition(":")
    unknown = [spec for spec in (ours, baseline) if spec not in INPUTS]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown model(s) {unknown}; choose from {sorted(INPUTS)}")
    return ours, baseline


def _clip(text: str) -> tuple[int, int, int]:
    try:
        frames, height, width = (int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected FRAMES,HEIGHT,WIDTH, got {text!r}") from None
    return frames, height, width


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.flops", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pair", type=_pair, action="append", metavar="OURS:BASELINE",
                        help=f"a pair to measure instead of the paper's (repeatable); models: {sorted(INPUTS)}")
    parser.add_argument("--input", type=_clip, metavar="T,H,W", help="clip size instead of each model's own")
    args = parser.parse_args(argv)
    for line in measure(tuple(args.pair) if args.pair else PAIRS, args.input):
        print(json.dumps(line), flush=True)


if __name__ == "__main__":
    main()
