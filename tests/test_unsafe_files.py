"""No file runs code: a checkpoint or weights file that would run code when unpickled is refused by every entry
point that loads one, naming what it holds, and the code never runs; `--trust-checkpoint` is the one way in."""
import os
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from losh.cli.main import app
from losh.schemas.presets import get_config
from losh.schemas.torch_files import UnsafeFile, safe_torch_load, trusting_files
from losh.schemas.train import TrainSettings

FIXTURES = Path(__file__).parent / "fixtures" / "legacy_checkpoints"


class _RunsCode:
    """Unpickling this calls os.system: what a hostile checkpoint would do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def _hostile_copy(source: Path, target: Path, marker: Path) -> Path:
    """A real checkpoint with one extra entry that runs `touch MARKER` when loaded."""
    ckpt = torch.load(source, weights_only=False)
    ckpt["extra"] = _RunsCode(marker)
    target.parent.mkdir(parents=True, exist_ok=True)
    torch.save(ckpt, target)
    return target


@pytest.fixture(scope="module")
def trained_run(prepared_with_flows, tmp_path_factory) -> Path:
    from losh.training.loop import train

    run = tmp_path_factory.mktemp("unsafe") / "run"
    train(prepared_with_flows, get_config("tiny"), run,
          TrainSettings(epochs=1, batch_size=2, num_workers=0, max_steps=2, amp="off"), progress=False)
    return run


def test_the_loader_refuses_and_names_the_class(tmp_path):
    marker = tmp_path / "MARKER"
    torch.save({"weights": torch.ones(2), "extra": _RunsCode(marker)}, tmp_path / "f.pt")
    with pytest.raises(UnsafeFile, match=r"(posix|os)\.system.*--trust-checkpoint"):
        safe_torch_load(tmp_path / "f.pt")
    assert not marker.exists()
    with trusting_files(True):                      # the user's word: loaded whole (and the code runs)
        safe_torch_load(tmp_path / "f.pt")
    assert marker.exists()


@pytest.mark.parametrize("command", ["evaluate", "predict", "resume"])
def test_every_entry_point_refuses_a_checkpoint_that_runs_code(command, trained_run, prepared_with_flows, tmp_path):
    marker = tmp_path / "MARKER"
    if command == "resume":
        run = tmp_path / "run"
        (run / "checkpoints").mkdir(parents=True)
        _hostile_copy(trained_run / "checkpoints" / "last.pt", run / "checkpoints" / "last.pt", marker)
        args = ["train", "--data", str(prepared_with_flows), "--out", str(run), "--config", "tiny", "--resume",
                "--workers", "0", "--epochs", "2"]
    else:
        hostile = _hostile_copy(trained_run / "checkpoints" / "last.pt", tmp_path / "hostile.pt", marker)
        if command == "evaluate":
            args = ["evaluate", "--data", str(prepared_with_flows), "--checkpoint", str(hostile),
                    "--resolution", "prepared"]
        else:
            frames = tmp_path / "frames"
            frames.mkdir()
            import cv2
            import numpy as np
            for i in range(3):
                cv2.imwrite(str(frames / f"{i}.png"), np.zeros((32, 48, 3), np.uint8))
            args = ["predict", "--checkpoint", str(hostile), "--video", str(frames), "--text", "a red circle",
                    "--out", str(tmp_path / "pred"), "--no-video"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 1, result.output
    assert "refused" in result.output and "system" in result.output and "--trust-checkpoint" in result.output
    assert not marker.exists()


def test_backbone_weights_that_run_code_are_refused(tmp_path):
    from losh.models.shared.backbone import VideoSwinBackbone
    from losh.schemas.config import with_overrides

    marker = tmp_path / "MARKER"
    torch.save({"state_dict": {}, "meta": _RunsCode(marker)}, tmp_path / "swin.pth")
    config = with_overrides(get_config("tiny"), {"backbone.weights": str(tmp_path / "swin.pth")}).backbone
    with pytest.raises(UnsafeFile, match="weights file"):
        VideoSwinBackbone(config)
    assert not marker.exists()


def test_our_checkpoints_hold_only_data_and_older_ones_still_load(trained_run):
    from losh.training.checkpoint import load_checkpoint

    path = trained_run / "checkpoints" / "last.pt"
    assert torch.serialization.get_unsafe_globals_in_checkpoint(path) == []     # tensors and plain values only
    assert load_checkpoint(path)["global_step"] == 2
    legacy = FIXTURES / "tiny_dbd33de.pt"                                       # numpy's RNG state as an array
    assert set(torch.serialization.get_unsafe_globals_in_checkpoint(legacy)) <= {
        "numpy._core.multiarray._reconstruct", "numpy.ndarray", "numpy.dtype", "numpy.core.multiarray._reconstruct"}
    assert load_checkpoint(legacy)["schema"] == "losh.checkpoint"
