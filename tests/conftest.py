import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from losh.pipeline.synth import write_synthetic_a2d

SHARED = Path(__file__).resolve().parents[2] / "shared"


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ImportError:          # a finder that refuses it (the GPU machine's, as the tests make it)
        return False


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


@pytest.fixture(scope="session")
def prepared(synth_root, tmp_path_factory) -> Path:
    """`synth_root` prepared at its own 64 x 88 size, manual short text (read-only)."""
    from losh.pipeline.prepare import PrepareSettings, prepare_a2d

    out = tmp_path_factory.mktemp("prepared") / "prep"
    # PyAV (the default decoder, as MTTR reads A2D) where installed; OpenCV where not (the lent GPU machine)
    decoder = "pyav" if _installed("av") else "opencv"
    prepare_a2d(synth_root, out, short_source="manual", settings=PrepareSettings(window=8, short_side=64,
                max_long_side=88, decoder=decoder), workers=1, progress=False)
    return out


@pytest.fixture(scope="session")
def prepared_with_flows(prepared, tmp_path_factory) -> Path:
    """A copy of `prepared` with its Farneback flows (computed in-process, read-only)."""
    from losh.pipeline.flows import compute_flows

    out = tmp_path_factory.mktemp("prepared_flows") / "prep"
    shutil.copytree(prepared, out)
    compute_flows(out, workers=0, progress=False)
    return out


@pytest.fixture()
def live_process():
    """A process that runs while the test does (a lock's or a staging folder's live owner)."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    yield proc
    proc.kill()
    proc.wait()
