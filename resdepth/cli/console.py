"""Where the command line's text goes and how its numbers look: the two consoles (stdout, stderr), which strip
control characters from every text they print; warnings; tables printed whole when piped; number formats."""

from __future__ import annotations

import math
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from rich.console import Console, Group
from rich.segment import Segment
from rich.table import Table

from ..results.runs import load_runs, printable


class OutputClosed(Exception):
    """Standard output (or error) cannot be written: its reader has gone (`resdepth ... | head`: no reason) or its
    disk is full (the reason)."""

    def __init__(self, reason: str | None = None):
        super().__init__(reason)
        self.reason = reason


class SafeConsole(Console):
    """A Console that strips control characters from all text it is given, whatever its source (a folder name, a
    dataset name, status.json's error), while its own styling and cursor controls still reach the terminal. Output
    that cannot be written raises OutputClosed, for the command to end as it must (rich exits at once, code 1)."""

    def _render_buffer(self, buffer: Iterable[Segment]) -> str:
        # Rich renders text segments and its own control segments apart: only the text is cleaned.
        return super()._render_buffer(segment if segment.control else Segment(printable(segment.text), segment.style)
                                      for segment in buffer)

    def _check_buffer(self) -> None:
        try:
            super()._check_buffer()
        except OSError as exc:  # a full disk under a log, say
            self.silence()
            self.closed = OutputClosed(exc.strerror or str(exc))
            raise self.closed from None

    closed: OutputClosed | None = None  # set once a write failed: a progress bar's refresh thread cannot raise it

    def on_broken_pipe(self) -> None:
        self.silence()
        self.closed = OutputClosed()
        raise self.closed

    def silence(self) -> None:
        """This console's output goes nowhere from here on: every later write to it, the interpreter's last flush
        included, would fail again."""
        try:
            fd = self.file.fileno()
        except (AttributeError, OSError, ValueError):  # not a file of the system's: just stop writing
            self.quiet = True
            return
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, fd)
        os.close(devnull)


# no :emoji: codes: a family path such as mylab.nets:family:... must print as written
console = SafeConsole(emoji=False)
errors = SafeConsole(stderr=True, emoji=False)


OUTPUT_CLOSED = 141  # the exit code of a command whose reader went (`| head`): 128 + SIGPIPE, as a shell says


def read_runs(results_dir: Path) -> list[Any]:
    """The readable runs under results_dir; each skipped run folder gets one warning line on stderr."""
    runs, warnings = load_runs(results_dir)
    warn(warnings)
    return runs


def warn(lines: Any) -> None:
    """One 'warning: ...' line on stderr per item, printed as it is (file names are not rich markup)."""
    for line in lines:
        errors.print(f"warning: {line}", markup=False, highlight=False, soft_wrap=True)


def print_full_width(view: Table | Group) -> None:
    """A terminal gets the table at its own width; a pipe or a log at the table's full width, never numbers cut to
    '…' to fit 80 columns."""
    needed = view.__rich_measure__(console, console.options.update(max_width=10_000)).maximum
    (console if console.is_terminal or needed <= console.width else SafeConsole(width=needed, emoji=False)).print(view)


# the number formats of every table and progress line: "-" where a value is not known (yet)
def pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def rate(images_per_second: float | None) -> str:
    if images_per_second is None:
        return "-"
    return f"{images_per_second:,.0f}" if images_per_second >= 10 else f"{images_per_second:.1f}"


def thousands(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}"


def ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}" + ("x" if value else "")


def duration(seconds: float | None) -> str:
    """h:mm:ss, with days in front past 24 hours."""
    if seconds is None or not math.isfinite(seconds):
        return "-"
    days, rest = divmod(round(seconds), 86400)
    text = f"{rest // 3600}:{rest % 3600 // 60:02d}:{rest % 60:02d}"
    return f"{days}d {text}" if days else text
