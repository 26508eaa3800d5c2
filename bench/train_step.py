"""Step time of LoSh-M vs the MTTR baseline, and whether the data loader keeps up.

`python -m bench.train_step [--size 160x288] [--steps 5]` prints JSON lines:
    train_step_ratio_losh_vs_mttr   training step (forward, loss, backward, AdamW) LoSh-M / MTTR
                                    (paper: 153 / 141 ms = 1.085; target <= 1.08)
    infer_step_ratio_losh_vs_mttr   inference (long pathway only) LoSh-M / MTTR (paper 80 / 79; target <= 1.02)
    loader_vs_step_ratio            time to load one batch from the shards (frames, masks, flows,
                                    augmentation, collate; one worker) / LoSh-M training step (target < 1)
    train_step_ratio_losh_s_vs_sgmg, infer_step_ratio_losh_s_vs_sgmg   the same for LoSh-S / SgMg on 5-frame
                                    windows (no paper figure: no target)

Both models use the paper dims (Swin-T, RoBERTa-base dims, D = 256, 50 queries) with random weights;
on a CPU the input is reduced (default 8 x 160 x 288, the dims kept), on CUDA it is the paper's
8 x 320 x 576 with bf16 autocast. Batch 3 (the paper's). The models take turns; the median of `--steps` timed steps
after a warm-up step.
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

from losh.data.dataset import Augment, RVOSDataset, collate
from losh.models.registry import build_criterion, build_model
from losh.schemas.config import with_overrides
from losh.schemas.presets import get_config
from losh.schemas.train import TrainSettings
from losh.training.device import autocast_for, to_device
from losh.training.loop import train_step
from losh.training.optim import param_groups

BATCH = 3
NO_DOWNLOAD = {"backbone.require_weights": False, "text.pretrained": False}


def synthetic_batch(size: tuple[int, int], device: torch.device, frames: int = 8) -> dict:
    """A batch of 3 random clips and masks on `device`."""
    return to_device(_host_batch(size, frames), device)


def host_batch(size: tuple[int, int], frames: int, model: torch.nn.Module, pin: bool = False) -> dict:
    """The batch as the training loader hands it over: on the host (pinned with `pin`), the texts' token ids made
    by the model's batch tokenizer."""
    batch = _host_batch(size, frames)
    batch["text_tokens"] = model.text_encoder.batch_tokenizer(model.config.use_short_text)(batch["long_text"],
                                                                                          batch["short_text"])
    if pin:
        batch = {k: v.pin_memory() if isinstance(v, torch.Tensor) else
                 [t.pin_memory() for t in v] if isinstance(v, list) and v and isinstance(v[0], torch.Tensor) else
                 {n: t.pin_memory() for n, t in v.items()} if isinstance(v, dict) else v for k, v in batch.items()}
    return batch


def _host_batch(size: tuple[int, int], frames: int) -> dict:
    h, w = size
    g = torch.Generator().manual_seed(0)
    masks = torch.rand(BATCH, 2, h, w, generator=g) > 0.7
    batch = {
        "frames": torch.randint(0, 255, (BATCH, frames, 3, h, w), dtype=torch.uint8, generator=g),
        "long_text": ["the brown dog is running on grass to the left"] * BATCH,
        "short_text": ["the brown dog"] * BATCH,
        "long_mask": masks[:, 0], "short_mask": masks[:, 0] | masks[:, 1],
        "instance_masks": [masks[i] for i in range(BATCH)],
        "referred_index": torch.zeros(BATCH, dtype=torch.long),
        "annotated_index": torch.full((BATCH,), frames // 2), "valid_size": torch.tensor([[h, w]] * BATCH),
        "flows": torch.randn(BATCH, 4, 2, h // 4, w // 4, generator=g),
        "flow_valid": torch.ones(BATCH, 4, dtype=torch.bool),
    }
    return batch


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


class Timed:
    """One config's model, loss, optimiser (the trainer's fused AdamW) and batch, timed a step at a time: the
    trainer's own step (`losh.training.loop.train_step`) on a batch as the loader hands it over."""

    def __init__(self, spec: str, size: tuple[int, int], device: torch.device, amp: str) -> None:
        torch.manual_seed(0)
        self.config = config = with_overrides(get_config(spec), NO_DOWNLOAD)
        self.device, self.amp = device, amp
        self.model = build_model(config).to(device)
        self.criterion = build_criterion(config).to(device)
        self.settings = TrainSettings(amp=amp)
        self.optimizer = torch.optim.AdamW(param_groups(self.model, self.settings.lr, self.settings.backbone_lr,
                                                        self.settings.weight_decay, self.settings.text_encoder_lr),
                                           lr=self.settings.lr, fused=True)
        self.batch = host_batch(size, config.window, self.model, pin=device.type == "cuda")
        self.device_batch = to_device(self.batch, device)
        self.annotated = config.window // 2
        self.steps = 0

    def train_step(self) -> float:
        self.model.train()
        _sync(self.device)
        start = time.perf_counter()
        train_step(self.model, self.model, self.criterion, self.optimizer, None, self.batch, self.device,
                   self.settings, self.steps)
        self.steps += 1
        _sync(self.device)
        return time.perf_counter() - start

    def infer_step(self) -> float:
        self.model.eval()
        frames = self.device_batch["frames"].float() / 255
        _sync(self.device)
        start = time.perf_counter()
        with torch.no_grad(), autocast_for(self.device, self.amp):
            self.model.infer(frames, self.batch["long_text"], self.batch["short_text"], annotated_index=self.annotated)
        _sync(self.device)
        return time.perf_counter() - start


def time_models(specs: tuple[str, ...], size: tuple[int, int], steps: int, device: torch.device, amp: str
                ) -> dict[str, tuple[float, float]]:
    """{spec: (median training step s, median inference s)}. The models take turns step by step, so
    that a slower or faster phase of the machine (thermal, other load, allocator warm-up) hits both."""
    models = {spec: Timed(spec, size, device, amp) for spec in specs}
    times: dict[str, tuple[list[float], list[float]]] = {spec: ([], []) for spec in specs}
    for i in range(steps + 1):        # the first round warms up (allocations, cudnn.benchmark) and is dropped
        for spec, timed in models.items():
            train_s, infer_s = timed.train_step(), timed.infer_step()
            if i:
                times[spec][0].append(train_s)
                times[spec][1].append(infer_s)
    return {spec: (statistics.median(t), statistics.median(n)) for spec, (t, n) in times.items()}


def time_loader(size: tuple[int, int], repeats: int = 5) -> float:
    """Median seconds to load one batch of 3 samples (frames, masks, flows, flip) with one worker."""
    from losh.pipeline.flows import compute_flows
    from losh.pipeline.prepare import PrepareSettings, prepare_a2d
    from losh.pipeline.synth import write_synthetic_a2d

    h, w = size
    with tempfile.TemporaryDirectory() as tmp:
        root, prep = Path(tmp) / "raw", Path(tmp) / "prep"
        write_synthetic_a2d(root, videos=4, seed=0, height=h, width=w, frames=16, annotated_per_video=2,
                            progress=False)
        prepare_a2d(root, prep, short_source="manual", settings=PrepareSettings(short_side=min(h, w),
                    max_long_side=max(h, w)), workers=1, progress=False)
        compute_flows(prep, workers=0, progress=False)
        ds = RVOSDataset(prep, "train", with_flows=True, augment=Augment(flip_p=0.5))
        collate([ds[i % len(ds)] for i in range(BATCH)])  # open the shards outside the timing
        times = []
        for r in range(repeats):
            start = time.perf_counter()
            collate([ds[(r * BATCH + i) % len(ds)] for i in range(BATCH)])
            times.append(time.perf_counter() - start)
        return statistics.median(times)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size", default=None, help="HxW of the input (default: 320x576 on CUDA, 160x288 on CPU)")
    parser.add_argument("--steps", type=int, default=3)
    args = parser.parse_args(argv)   # None: the command line
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    amp = "bf16" if device.type == "cuda" else "off"
    size = tuple(int(v) for v in (args.size or ("320x576" if device.type == "cuda" else "160x288")).split("x"))
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    timed = time_models(("losh-m", "mttr"), size, args.steps, device, amp)
    (losh_train, losh_infer), (mttr_train, mttr_infer) = timed["losh-m"], timed["mttr"]
    common = {"device": str(device), "input": f"{BATCH}x8x{size[0]}x{size[1]}", "amp": amp, "steps": args.steps}
    print(json.dumps({"bench": "train_step_ratio_losh_vs_mttr", "value": round(losh_train / mttr_train, 4),
                      "unit": "ratio", "target": 1.08, "losh_m_s": round(losh_train, 4), "mttr_s": round(mttr_train, 4),
                      "paper": "153/141 ms = 1.085", **common}), flush=True)
    print(json.dumps({"bench": "infer_step_ratio_losh_vs_mttr", "value": round(losh_infer / mttr_infer, 4),
                      "unit": "ratio", "target": 1.02, "losh_m_s": round(losh_infer, 4), "mttr_s": round(mttr_infer, 4),
                      "paper": "80/79 ms = 1.013", **common}), flush=True)
    timed_s = time_models(("losh-s", "sgmg"), size, args.steps, device, amp)
    (s_train, s_infer), (g_train, g_infer) = timed_s["losh-s"], timed_s["sgmg"]
    common_s = {**common, "input": f"{BATCH}x5x{size[0]}x{size[1]}"}
    print(json.dumps({"bench": "train_step_ratio_losh_s_vs_sgmg", "value": round(s_train / g_train, 4), "unit": "ratio",
                      "target": None, "losh_s_s": round(s_train, 4), "sgmg_s": round(g_train, 4), **common_s}),
          flush=True)
    print(json.dumps({"bench": "infer_step_ratio_losh_s_vs_sgmg", "value": round(s_infer / g_infer, 4), "unit": "ratio",
                      "target": None, "losh_s_s": round(s_infer, 4), "sgmg_s": round(g_infer, 4), **common_s}),
          flush=True)
    load = time_loader(size)
    print(json.dumps({"bench": "loader_vs_step_ratio", "value": round(load / losh_train, 4), "unit": "ratio",
                      "target": 1.0, "loader_s_per_batch": round(load, 4), "losh_m_step_s": round(losh_train, 4),
                      "loader_s_vs_paper_gpu_step": round(load / (3 * 0.153), 4),
                      "note": "one loader worker; N workers divide the loading time by about N", **common}), flush=True)


if __name__ == "__main__":
    main()
