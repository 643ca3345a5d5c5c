"""Live displays of work under way: a sweep's cells (LiveDisplay), a dataset being decoded (DataLoadDisplay), an
evaluation of trained runs (EvalDisplay). On a terminal each draws rich progress bars; piped or logged, it prints
plain lines instead."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from rich.markup import escape

from ..errors import UserError
from ..results.runs import METRICS_FILE, RunStatus, read_metrics
from ..sweep.runner import SweepProgress
from ..train.data import LoadProgress
from .console import OutputClosed, console, pct, rate

# Epoch lines said for one run at one poll, at most: the rest are counted in one line. A run rarely finishes more
# between two polls; a planted metrics.csv of a million rows would otherwise print a million lines.
EPOCH_LINES_AT_ONCE = 20

Display = TypeVar("Display", bound="ProgressDisplay")


def progress_bars(description: str, bar_width: int = 40, info: bool = False, transient: bool = False) -> Any:
    """Rich progress bars: the task's description, its bar, done/total, its `info` field where asked, the time
    left. None off a terminal (piped or logged), where the displays print lines instead."""
    if not console.is_terminal:
        return None
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    columns = [TextColumn(description), BarColumn(bar_width=bar_width), MofNCompleteColumn(),
               *([TextColumn("{task.fields[info]}")] if info else []), TimeRemainingColumn()]
    return Progress(*columns, console=console, transient=transient)


class ProgressDisplay:
    """What the displays share: their bars (None off a terminal) drawn while a `with` block runs."""

    progress: Any = None

    def __enter__(self: Display) -> Display:
        if self.progress is not None:
            self.progress.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.progress is not None:
            self.progress.stop()


class LiveDisplay(ProgressDisplay):
    """Rich progress bars (overall, then one per running job) on a terminal; one plain line per epoch otherwise."""

    def __init__(self, total: int):
        self.progress = progress_bars("{task.description:<22}", bar_width=24, info=True)
        self.overall = self.progress.add_task("sweep", total=total, info="") if self.progress else None
        self.tasks: dict[str, Any] = {}
        self.logged: dict[str, int] = {}  # the last epoch a line was printed for, by cell
        self.attempts: dict[str, float] = {}  # the attempt those lines follow (its status.json `started`), by cell
        self.ended: set[str] = set()  # the cells whose end was printed
        self.closed: OutputClosed | None = None  # the output cannot be written: the sweep stops as on Ctrl-C

    def update(self, snapshot: SweepProgress) -> None:
        if self.closed:
            return
        try:
            if self.progress:
                self.update_bars(snapshot)
            else:
                self.log_lines(snapshot)
        except OutputClosed as closed:
            self.closed = closed
        self.closed = self.closed or console.closed  # the bars are drawn by their own thread, which it ended

    def update_bars(self, snapshot: SweepProgress) -> None:
        assert self.progress is not None
        ended = snapshot.outcomes.values()
        failed = sum(o.state in ("failed", "diverged") for o in ended)
        skipped = sum(1 for p in snapshot.planned if not p.device)
        self.progress.update(self.overall, completed=len(snapshot.outcomes) + skipped,
                             info=f"{sum(o.state == 'done' for o in ended)} done, {failed} failed/diverged, "
                                  f"{len(snapshot.running)} running, {skipped} skipped")
        for name, status in snapshot.running.items():
            if name not in self.tasks:
                self.tasks[name] = self.progress.add_task(name, total=status.iterations or None, info="")
            self.progress.update(self.tasks[name], total=status.iterations or None, completed=status.iteration,
                                 info=bar_info(status))
        run_dirs = {item.cell.name: item.cell.run_dir for item in snapshot.planned}
        for name, outcome in snapshot.outcomes.items():
            if name in self.tasks:  # redrawn from the final status.json: the last poll may be an epoch behind
                final = RunStatus.read_or_none(run_dirs[name]) if name in run_dirs else None
                fields = dict(completed=final.iteration, info=bar_info(final, live=False)) if final else {}
                self.progress.update(self.tasks.pop(name), description=f"{name} {outcome.state}", **fields)

    def log_lines(self, snapshot: SweepProgress) -> None:
        """A line when a run resumes from a checkpoint, one per epoch it finishes, and one when it ends, with its
        last epoch's numbers. Lines are keyed on the epoch, not the state: a status.json read between the run's
        last epoch and its process's exit says done too, and one read before a resumed run rewrote it is stale.
        Where this attempt started is status.json's own (a first poll may come epochs in); epochs finished between
        two polls (or before the end) are read from metrics.csv, and a finished run's last epoch is left to its end
        line."""
        run_dirs = {item.cell.name: item.cell.run_dir for item in snapshot.planned}
        for name, status in snapshot.running.items():
            if status.state != "running" or name in self.ended or earlier_attempt(snapshot, name, status):
                continue  # not started yet (still the last attempt's status.json), or already said
            self.say_epochs(name, status, run_dirs.get(name), min(status.epoch, status.epochs - 1))
        for item in snapshot.planned:
            outcome = snapshot.outcomes.get(item.cell.name)
            if outcome is not None and item.cell.name not in self.ended:
                self.ended.add(item.cell.name)
                self.say_end(snapshot, item.cell.name, item.cell.run_dir, outcome.state, outcome.error)

    def say_end(self, snapshot: SweepProgress, name: str, run_dir: Path, state: str, error: str | None) -> None:
        """The epochs not said yet, then the end line: a finished run's with its last epoch's numbers (said there
        only), a stopped one's with where it stopped, and that epoch's numbers unless its own line gave them."""
        status = RunStatus.read_or_none(run_dir)
        fresh = status is not None and state != "busy" and not earlier_attempt(snapshot, name, status)
        if status and fresh:
            self.say_epochs(name, status, run_dir, status.epoch - 1 if state == "done" else status.epoch)
        if status is None or (not status.epoch and not status.iteration):
            line = state
        elif state in ("done", "busy"):
            line = f"{state}: {epoch_line(status, status)}" if status.epoch else state
        else:
            line = stopped_line(state, status, said=fresh)
        self.say(name, line + (f" ({error})" if error else ""))

    def say_epochs(self, name: str, status: RunStatus, run_dir: Path | None, last: int) -> None:
        """Where an attempt resumed, when first seen (a cell's first, or a retry's or requeue's within the sweep);
        then a line for each epoch not said yet up to `last`, from its metrics.csv row (status.json's iteration has
        moved on into the next epoch by the time a poll reads it), the status's own numbers where that row cannot
        be read. Only epochs that have a row or are the status's own are said: never a range of status.json's
        numbers, which a planted file may make a quadrillion long."""
        if name not in self.attempts or not same_time(self.attempts[name], status.started):
            self.attempts[name] = status.started
            self.logged[name] = status.started_epoch
            if status.started_iteration:
                self.say(name, resumed_line(status, epoch_rows(run_dir, status.started_epoch)))
        said = self.logged[name]
        numbers: dict[int, EpochRow | RunStatus] = dict(epoch_rows(run_dir, said + 1, last)) if last > said else {}
        if said < status.epoch <= last:
            numbers.setdefault(status.epoch, status)
        epochs = sorted(numbers)
        if len(epochs) > EPOCH_LINES_AT_ONCE:
            passed = epochs[:-EPOCH_LINES_AT_ONCE]
            self.say(name, f"epochs {passed[0]}-{passed[-1]} finished ({len(passed):,} epochs; their numbers are in "
                           f"{METRICS_FILE})")
        for epoch in epochs[-EPOCH_LINES_AT_ONCE:]:
            self.say(name, epoch_line(status, numbers[epoch]))
        self.logged[name] = max(last, said)

    @staticmethod
    def say(name: str, line: str) -> None:
        console.print(f"{name}: {line}", highlight=False, soft_wrap=True, markup=False)


def bar_info(status: RunStatus, live: bool = True) -> str:
    """A cell's bar: its device, epoch, errors and speed; before its first status with numbers, only that it starts."""
    if not status.epochs:
        return f"{status.device or ''} starting".strip()
    train = status.live_train_error if live and status.live_train_error is not None else status.train_error
    epoch = min(status.epoch + 1, status.epochs) if live else status.epoch
    return (f"{status.device} epoch {epoch}/{status.epochs} train {pct(train)}% test {pct(status.test_error)}% "
            f"{rate(status.images_per_second)} img/s")


def earlier_attempt(snapshot: SweepProgress, name: str, status: RunStatus) -> bool:
    """Whether the cell's status.json is still the one an earlier attempt left (`SweepProgress.earlier`)."""
    return name in snapshot.earlier and same_time(status.started, snapshot.earlier[name])


def same_time(one: float | None, other: float | None) -> bool:
    """Two status.json `started` marks are one attempt's: equal, or both not a number (NaN is unequal to itself, and
    would make every poll a new attempt)."""
    return one == other or (isinstance(one, float) and isinstance(other, float) and one != one and other != other)


@dataclass
class EpochRow:
    """An epoch's numbers as a metrics.csv row has them."""

    epoch: int
    iteration: int
    train_error: float | None
    test_error: float | None
    images_per_second: float | None


def epoch_rows(run_dir: Path | None, first: int, last: int | None = None) -> dict[int, EpochRow]:
    """metrics.csv's rows for epochs first..last (last: first alone), by epoch; none where it cannot be read."""
    if run_dir is None:
        return {}
    try:
        metrics, _ = read_metrics(run_dir / METRICS_FILE)
    except (ValueError, UserError):
        return {}
    wanted = metrics[(metrics["epoch"] >= first) & (metrics["epoch"] <= (first if last is None else last))]
    return {int(row.epoch): EpochRow(int(row.epoch), int(row.iteration), float(row.train_error),
                                     float(row.test_error), float(row.images_per_second))
            for row in wanted.itertuples()}


def epoch_numbers(epoch: int, rows: dict[int, EpochRow], status: RunStatus) -> EpochRow | RunStatus | None:
    """An epoch's numbers: its metrics.csv row, else status.json's own while the run is at that epoch."""
    return rows.get(epoch) or (status if status.epoch == epoch else None)


def resumed_line(status: RunStatus, rows: dict[int, EpochRow]) -> str:
    """'resumed at iteration 52/55, after epoch 4/5 (train 40.00% test 45.00%)': with the numbers of the epoch it
    resumed after, while status.json still has them or metrics.csv does."""
    line = f"resumed at iteration {status.started_iteration}/{status.iterations}"
    if not status.started_epoch:  # within the first epoch
        return line
    line += f", after epoch {status.started_epoch}/{status.epochs}"
    numbers = epoch_numbers(status.started_epoch, rows, status)
    return f"{line} (train {pct(numbers.train_error)}% test {pct(numbers.test_error)}%)" if numbers else line


def stopped_line(state: str, status: RunStatus, said: bool) -> str:
    """'interrupted at iteration 37/55, after epoch 3/5': where a run that did not finish stopped, with its last
    epoch's numbers where no epoch line of this sweep gave them."""
    line = f"{state} at iteration {status.iteration}/{status.iterations}"
    if not status.epoch:
        return line
    line += f", after epoch {status.epoch}/{status.epochs}"
    if said or status.train_error is None or status.test_error is None:
        return line
    return f"{line} (train {pct(status.train_error)}% test {pct(status.test_error)}%)"


def epoch_line(status: RunStatus, numbers: RunStatus | EpochRow) -> str:
    """'epoch 5/5 iteration 55/55 train 12.50% test 20.31% 1,234 img/s': an epoch's numbers, out of the run's."""
    return (f"epoch {numbers.epoch}/{status.epochs} iteration {numbers.iteration}/{status.iterations} train "
            f"{pct(numbers.train_error)}% test {pct(numbers.test_error)}% {rate(numbers.images_per_second)} img/s")


class DataLoadDisplay(ProgressDisplay):
    """While an image folder is decoded (once: later loads read the cache it names), a progress bar on a
    terminal and a line at the start and end elsewhere; the loader's notices as one line each."""

    def __init__(self) -> None:
        self.task: Any = None
        self.started = 0.0

    def __call__(self, event: LoadProgress) -> None:
        if event.notice:
            console.print(f"[yellow]note:[/] {escape(event.notice)}", highlight=False, soft_wrap=True)
        elif event.done == 0:
            self.start(event)
        elif self.progress is not None:
            self.progress.update(self.task, completed=event.done)
        if not event.notice and event.done == event.total and event.total:
            self.__exit__()
            self.progress = None
            kept = f"; they are kept in {event.cache} for later runs" if event.cache else ""
            console.print(f"decoded {event.total:,} images in {time.monotonic() - self.started:.0f} s{kept}",
                          markup=False, highlight=False, soft_wrap=True)

    def start(self, event: LoadProgress) -> None:
        self.started = time.monotonic()
        console.print(f"decoding {event.total:,} images",
                      markup=False, highlight=False, soft_wrap=True)
        self.progress = progress_bars("decoding", transient=True)
        # started at the first event, which gives the number of images (a load from the cache never gets here)
        if self.progress is not None:
            self.task = self.progress.add_task("decoding", total=event.total)
            self.progress.start()


class EvalDisplay(ProgressDisplay):
    """A progress bar per run on a terminal; elsewhere a line as each run starts, every 10% and at its end (lesion,
    landscape)."""

    def __init__(self, what: str) -> None:
        self.what = what
        self.progress = progress_bars("{task.description}")
        self.tasks: dict[str, Any] = {}

    def __call__(self, event: Any) -> None:
        if event.label not in self.tasks:
            self.tasks[event.label] = self.progress.add_task(event.label, total=event.total) if self.progress else None
            if not self.progress:
                resumed = f", {event.done:,} already saved" if event.done else ""
                console.print(f"{event.label}: {event.total:,} {self.what}{resumed}", markup=False, highlight=False)
        if self.progress:
            self.progress.update(self.tasks[event.label], completed=event.done)
        elif event.done == event.total:
            console.print(f"{event.label}: done", markup=False, highlight=False)
        elif event.done and event.done * 10 // event.total > (event.done - 1) * 10 // event.total:  # every 10%
            console.print(f"{event.label}: {event.done:,}/{event.total:,}", markup=False, highlight=False)
