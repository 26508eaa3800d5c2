"""`make bench` as a whole: every benchmark in its own process, each measuring only what it started."""
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from bench.run import BENCHMARKS, parse

ROOT = Path(__file__).resolve().parents[1]
LOADER = "loader_scale 16 --sizes 4,8"


def _with_stray_child(call: str) -> subprocess.CompletedProcess:
    """Runs `call` in a fresh Python process that already has a stray child process (as a benchmark that ran
    before could leave one)."""
    script = textwrap.dedent(f"""
        import subprocess, sys
        stray = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
        try:
            {call}
        finally:
            stray.kill()
    """)
    return subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=300)


def _lines(stdout: str) -> list[dict]:
    return [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]


def test_runner_runs_two_benchmarks_beside_a_stray_child():
    done = _with_stray_child(f"from bench.run import main; sys.exit(main([{LOADER!r}, 'prepare_storage']))")
    assert done.returncode == 0, done.stderr[-2000:]
    names = [line["bench"] for line in _lines(done.stdout)]
    assert "loader_rss_growth_ratio" in names and "loader_worker_open_fds" in names
    assert "prepare_decode_ms_per_sample" in names
    summary = _lines(done.stdout)[-1]
    assert summary["bench"] == "bench_run" and summary["failed"] == []
    assert [r["benchmark"] for r in summary["runs"]] == [LOADER, "prepare_storage"]


def test_loader_benchmark_counts_only_its_own_workers():
    # called in-process: the stray child is this process's child, as an earlier benchmark's leftover would be
    done = _with_stray_child("from bench.loader_scale import main; main(['16', '--sizes', '4,8'])")
    assert done.returncode == 0, done.stderr[-2000:]
    peaks = [line for line in _lines(done.stdout) if line["bench"] == "loader_worker_peak_rss"]
    assert len(peaks) == 4 and all(line["workers"] == 4 for line in peaks)


def test_a_failing_benchmark_is_reported_and_the_rest_still_run():
    done = _with_stray_child(f"from bench.run import main; sys.exit(main(['loader_scale 16 --sizes x', {LOADER!r}]))")
    assert done.returncode == 1
    summary = _lines(done.stdout)[-1]
    assert summary["failed"] == ["loader_scale 16 --sizes x"] and summary["runs"][1]["exit"] == 0
    assert any(line["bench"] == "loader_rss_growth_ratio" for line in _lines(done.stdout))


def test_parse_names_and_command_lines():
    assert parse([]) == [[name] for name in BENCHMARKS]
    assert parse(["flops", LOADER]) == [["flops"], ["loader_scale", "16", "--sizes", "4,8"]]
    with pytest.raises(ValueError, match="unknown benchmark"):
        parse(["nope"])
