import shutil
from pathlib import Path

import pytest

from pipeline.synth import write_synthetic_a2d

SHARED = Path(__file__).resolve().parents[2] / "shared"


@pytest.fixture(scope="session")
def synth_root(tmp_path_factory) -> Path:
    """A small synthetic A2D-Sentences root shared by the tests (read-only: copy before changing)."""
    root = tmp_path_factory.mktemp("synth") / "raw"
    write_synthetic_a2d(root, videos=6, seed=3, height=64, width=88, frames=16, annotated_per_video=2,
                        progress=False)
    return root


@pytest.fixture()
def raw_copy(synth_root, tmp_path) -> Path:
    dst = tmp_path / "raw"
    shutil.copytree(synth_root, dst)
    return dst
