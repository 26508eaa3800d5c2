"""Progress bars of every stage (prepare, flows, epochs, validation, evaluation, predict), made in one place.

On a terminal: a tqdm bar with rate and ETA. Into a log file (stderr not a terminal): one plain line each tenth of
the work, never a carriage-return redraw, so that a log stays readable. Work of unknown length shows nothing
unless it lasts over a second (no "0frame [00:00, ?frame/s]" for an instant count).

    for batch in progress_bar(loader, desc="evaluate test", unit="batch", disable=quiet):
        ...
"""
from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import IO, Any

from tqdm import tqdm

LINE_FORMAT = "{desc}: {percentage:3.0f}% {n_fmt}/{total_fmt} {unit} [{elapsed}<{remaining}, {rate_fmt}{postfix}]"
UNKNOWN_TOTAL_FORMAT = "{desc}: {n_fmt} {unit} [{elapsed}, {rate_fmt}{postfix}]"
UNKNOWN_TOTAL_DELAY_S = 1.0      # a count of unknown length shows up only after this long


class LineProgress(tqdm):
    """tqdm for a log file: one line per tenth of the total (10 %, 20 %, ... 100 %) and, when the work stops
    short of its total, one line where it stopped. Of unknown length: one line at the end if it took over a
    second."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._tenths = None      # tenths already written (set before tqdm's first refresh)
        self._written_n = None   # the count of the last line written
        super().__init__(*args, **kwargs)
        self._tenths = int(10 * self.n // self.total) if self.total else 0

    def display(self, msg: str | None = None, pos: int | None = None) -> bool:
        if self._tenths is None or msg == "" or not self.total:
            return True
        tenths = min(10, int(10 * self.n // self.total))
        if tenths > self._tenths:
            self._tenths = tenths
            self._write_line(LINE_FORMAT)
        return True

    def _write_line(self, bar_format: str) -> None:
        if self.n == self._written_n:
            return
        self._written_n = self.n
        self.fp.write(self.format_meter(**{**self.format_dict, "bar_format": bar_format}) + "\n")
        self.fp.flush()

    def close(self) -> None:
        if getattr(self, "disable", True):
            return
        if not self.total:
            if self._time() - self.start_t >= UNKNOWN_TOTAL_DELAY_S:
                self._write_line(UNKNOWN_TOTAL_FORMAT)
        elif self._tenths < 10:          # stopped short of the total (a step limit): say where
            self._write_line(LINE_FORMAT)
        self.disable = True
        self._decr_instances(self)


def is_terminal(stream: IO | None) -> bool:
    try:
        return bool(stream is not None and stream.isatty())
    except (AttributeError, ValueError):      # a closed or odd stream
        return False


def progress_bar(iterable: Iterable | None = None, *, desc: str, unit: str = "it", total: int | None = None,
                 disable: bool = False, file: IO | None = None, **kwargs: Any) -> tqdm:
    """A progress bar over `iterable` (or updated by hand up to `total`) with tqdm's interface: a redrawn bar on a
    terminal, a line each tenth in a log file; hidden while a count of unknown length lasts under a second."""
    if total is None and iterable is not None and hasattr(iterable, "__len__"):
        total = len(iterable)
    if total is None:
        kwargs.setdefault("delay", UNKNOWN_TOTAL_DELAY_S)
    stream = file if file is not None else sys.stderr
    kind = tqdm if is_terminal(stream) else LineProgress
    return kind(iterable, desc=desc, unit=unit, total=total, disable=disable, file=stream, **kwargs)
