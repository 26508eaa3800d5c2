"""Progress as a log file shows it (one line each tenth, no carriage return), on a terminal (tqdm's bar), for work of
unknown length (nothing under a second: `losh predict`'s frame count, tests/test_report.py), and `--quiet`."""
import io
import re
import time

import pytest
from typer.testing import CliRunner

import losh.schemas.progress as progress
from losh.cli.main import app
from losh.schemas.progress import LineProgress, progress_bar

LINE = re.compile(r"^epoch 1/2: +(\d+)% (\d+)/25 batch \[[\d:]+<[\d:?]+, .*batch/s.*\]$")


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_log_file_gets_one_line_each_tenth_and_no_carriage_return():
    log = io.StringIO()
    for _ in progress_bar(range(25), desc="epoch 1/2", unit="batch", file=log, mininterval=0):
        time.sleep(0.001)
    text = log.getvalue()
    assert "\r" not in text
    lines = text.splitlines()
    assert len(lines) == 10, lines                                    # 10 %, 20 %, ... 100 %
    matches = [LINE.match(line) for line in lines]
    assert all(matches), lines
    percents = [int(m.group(1)) for m in matches]
    assert percents == sorted(set(percents)) and percents[-1] == 100
    tenths = [int(m.group(2)) * 10 // 25 for m in matches]
    assert tenths == list(range(1, 11))                                # each line a new tenth
    assert lines[-1].startswith("epoch 1/2: 100% 25/25 batch")


def test_work_stopped_short_of_its_total_says_where_and_postfix_and_initial_show():
    log = io.StringIO()
    bar = progress_bar(desc="compute-flows", total=10, initial=4, unit="video", file=log)
    for _ in range(3):
        bar.update()
        bar.set_postfix(loss="0.5")
    bar.close()
    lines = log.getvalue().splitlines()
    assert [line.split(" [")[0] for line in lines] == [f"compute-flows:  {k}0% {k}/10 video" for k in (5, 6, 7)]
    assert lines[-1].endswith("loss=0.5]")


def test_unknown_length_shows_nothing_when_quick_and_one_line_when_not(monkeypatch):
    log = io.StringIO()
    for _ in progress_bar(iter(range(5)), desc="count frames", unit="frame", file=log):
        pass
    assert log.getvalue() == ""                                       # not "count frames: 0frame [00:00, ?frame/s]"
    monkeypatch.setattr(progress, "UNKNOWN_TOTAL_DELAY_S", 0.02)
    for _ in progress_bar(iter(range(3)), desc="count frames", unit="frame", file=log):
        time.sleep(0.02)
    assert re.fullmatch(r"count frames: 3 frame \[[\d:]+, .*frame/s\]\n", log.getvalue()), log.getvalue()


def test_a_terminal_gets_tqdms_bar_and_disabled_bars_print_nothing():
    screen = Terminal()
    bar = progress_bar(range(4), desc="evaluate test", unit="batch", file=screen)
    assert not isinstance(bar, LineProgress)
    list(bar)
    assert "\r" in screen.getvalue() and "4/4" in screen.getvalue()
    quiet = io.StringIO()
    list(progress_bar(range(4), desc="evaluate test", unit="batch", file=quiet, disable=True))
    assert quiet.getvalue() == ""


@pytest.mark.parametrize("quiet", [False, True])
def test_prepare_data_logs_lines_or_is_quiet(synth_root, tmp_path, quiet):
    args = ["prepare-data", "--root", str(synth_root), "--out", str(tmp_path / "prep"), "--short-text", "manual",
            "--workers", "1", "--short-side", "64", "--max-long-side", "88", "--decoder", "opencv"]
    result = CliRunner().invoke(app, args + (["--quiet"] if quiet else []))
    assert result.exit_code == 0, result.output
    lines = [line for line in result.output.splitlines() if line.startswith("prepare-data:")]
    if quiet:
        assert lines == []
    else:
        assert lines and re.match(r"prepare-data: 100% (\d+)/\1 video \[", lines[-1]) and "\r" not in result.output
    assert "prepared " in result.output
