"""Tests that need a CUDA GPU (marked `cuda`, skipped without one; `make gpu-check` runs them).

They import nothing the GPU machine lacks (no spaCy, NLTK, Dask, pycocotools, PyAV).
"""
import pytest
import torch
from torch.utils.data import DataLoader

from bench.train_step import NO_DOWNLOAD
from losh.data.dataset import RVOSDataset, collate
from losh.models.registry import build_criterion, build_model
from losh.schemas.config import with_overrides
from losh.schemas.presets import get_config
from losh.schemas.train import TrainSettings
from losh.training.checkpoint import load_checkpoint
from losh.training.device import to_device
from losh.training.loop import forward_and_loss, train

pytestmark = [pytest.mark.cuda]

CUDA = torch.device("cuda")


@pytest.fixture()
def cuda():
    """Skips without a GPU. Asked for last, so that the data fixtures before it are set up first: the dry run
    of `make gpu-check` (no GPU) still builds them, as the GPU machine will (without PyAV, spaCy, ...)."""
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    return CUDA
T, H, W = 8, 64, 96


def _batch(b: int, device: torch.device, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    masks = torch.rand(b, 2, H, W, generator=g) > 0.6
    batch = {"frames": torch.randint(0, 255, (b, T, 3, H, W), dtype=torch.uint8, generator=g),
             "long_text": ["the brown dog is running on grass to the left", "a man in a red shirt walks"][:b],
             "short_text": ["the brown dog", "a man in a red shirt"][:b],
             "long_mask": masks[:, 0], "short_mask": masks[:, 0] | masks[:, 1],
             "instance_masks": [masks[i] for i in range(b)], "referred_index": torch.zeros(b, dtype=torch.long),
             "annotated_index": torch.full((b,), 4), "valid_size": torch.tensor([[H, W]] * b),
             "flows": torch.randn(b, 4, 2, H // 4, W // 4, generator=g),
             "flow_valid": torch.ones(b, 4, dtype=torch.bool)}
    return to_device(batch, device)


def test_bf16_training_step_of_losh_m_dims_on_cuda(cuda):
    """Paper dims (random weights): the forward runs in bf16 under autocast, the loss in float32,
    every gradient finite, and an AdamW step changes the weights."""
    torch.manual_seed(0)
    config = with_overrides(get_config("losh-m"), NO_DOWNLOAD)
    model = build_model(config).to(CUDA).train()
    criterion = build_criterion(config).to(CUDA)
    seen: list[torch.dtype] = []
    model.is_referred_head.register_forward_hook(lambda module, args, output: seen.append(output.dtype))
    losses = forward_and_loss(model, criterion, _batch(2, CUDA), CUDA, "bf16")
    assert seen == [torch.bfloat16]                # autocast is on inside the model
    assert losses["loss"].dtype == torch.float32 and torch.isfinite(losses["loss"])
    for key in ("loss_dice_long", "loss_dice_short", "loss_fbc"):
        assert losses[key] > 0, key
    losses["loss"].backward()
    grads = {name: p.grad for name, p in model.named_parameters() if p.requires_grad}
    assert all(torch.isfinite(g).all() for g in grads.values() if g is not None)
    for part in ("backbone", "video_proj", "text_proj", "encoder", "decoder", "spatial_decoder",
                 "is_referred_head", "kernel_head"):   # the loss reaches every trained part
        assert any(g is not None and g.abs().sum() > 0 for n, g in grads.items() if n.startswith(part + ".")), part
    before = model.video_proj.weight.detach().clone()
    torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4).step()
    assert not torch.equal(before, model.video_proj.weight)


@pytest.mark.parametrize("spec", ["tiny", "tiny-s"])
def test_cuda_float32_matches_the_cpu(spec, cuda):
    """The same weights and batch give the same loss terms on the GPU as on the CPU (float32, TF32
    off): the model's kernels (LoSh-S: FFT, grid_sample attention), the warp of L_fbc and the matching agree
    across devices."""
    torch.manual_seed(0)
    config = get_config(spec)
    model = build_model(config).eval()
    criterion = build_criterion(config)
    tf32 = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        with torch.no_grad():
            cpu = forward_and_loss(model, criterion, _batch(2, torch.device("cpu")), torch.device("cpu"), "off")
            model.to(CUDA)
            gpu = forward_and_loss(model, criterion.to(CUDA), _batch(2, CUDA), CUDA, "off")
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32
    for key in ("loss", "loss_dice_long", "loss_is_referred_long", "loss_lsi", "loss_fbc"):
        assert gpu[key].item() == pytest.approx(cpu[key].item(), rel=1e-3, abs=1e-5), key


def test_loader_pins_memory_and_the_batch_reaches_the_gpu(prepared_with_flows, cuda):
    """The trainer's loader path: workers, pinned host memory, non-blocking copies to the GPU."""
    dataset = RVOSDataset(prepared_with_flows, "train", with_flows=True)
    loader = DataLoader(dataset, batch_size=3, collate_fn=collate, num_workers=2, pin_memory=True)
    batch = next(iter(loader))
    assert batch["frames"].is_pinned() and batch["flows"].is_pinned()
    assert all(m.is_pinned() for m in batch["instance_masks"])
    moved = to_device(batch, CUDA)
    torch.cuda.synchronize()
    assert moved["frames"].device.type == "cuda" and moved["instance_masks"][0].device.type == "cuda"
    assert torch.equal(moved["frames"].cpu(), batch["frames"])
    assert torch.equal(moved["flows"].cpu(), batch["flows"])
    assert moved["long_text"] == batch["long_text"]


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_trainer_runs_on_cuda(prepared_with_flows, tmp_path, amp, cuda):
    """`losh train` on the GPU: bf16 autocast, or fp16 with the gradient scaler; a checkpoint that
    loads, with finite losses."""
    settings = TrainSettings(epochs=1, batch_size=2, num_workers=2, amp=amp, max_steps=3, log_every_steps=1)
    summary = train(prepared_with_flows, get_config("tiny"), tmp_path / "run", settings, progress=False)
    assert summary["device"].startswith("cuda") and summary["steps"] == 3
    assert all(torch.isfinite(torch.tensor(v)) for v in summary["last_losses"].values())
    ckpt = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
    assert ckpt["global_step"] == 3 and ckpt["train_settings"]["amp"] == amp


@pytest.mark.parametrize("spec, bound", [("tiny", 15), ("tiny-s", 30)])
def test_a_training_step_makes_few_host_syncs_on_cuda(spec, bound, cuda):
    """The trainer's step counted by CUDA itself (`set_sync_debug_mode`): the CPU count's bound holds."""
    import warnings

    from bench.train_step import host_batch
    from losh.training.loop import train_step
    from losh.training.optim import param_groups

    torch.manual_seed(0)
    config = get_config(spec)
    model = build_model(config).to(CUDA).train()
    criterion = build_criterion(config).to(CUDA)
    settings = TrainSettings(amp="bf16")
    optimizer = torch.optim.AdamW(param_groups(model, 1e-4, 1e-5, 1e-4), lr=1e-4, fused=True)
    batch = host_batch((H, W), config.window, model, pin=True)
    train_step(model, model, criterion, optimizer, None, batch, CUDA, settings, 0)      # warm-up
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            train_step(model, model, criterion, optimizer, None, batch, CUDA, settings, 1)
        finally:
            torch.cuda.set_sync_debug_mode(0)
    syncs = [f"{w.filename}:{w.lineno}" for w in caught if "synchroniz" in str(w.message)]
    assert len(syncs) <= bound, syncs
