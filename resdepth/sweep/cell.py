"""One sweep cell's lifecycle in its run folder: lock, train or resume, final state. Shared by every executor."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any

from ..errors import UserError
from ..results.runs import (
    ERROR_FILE,
    LOCK_FILE,
    STALE_FOREIGN_LOCK_SECONDS,
    RunStatus,
    atomic_write_bytes,
    pid_alive,
    read_json,
)
from ..train.trainer import RunResult, load_run_config, run_training

EXIT_CODES = {"done": 0, "failed": 1, "diverged": 3, "busy": 4, "interrupted": 130}


@dataclass
class CellOutcome:
    run_dir: Path
    state: str  # done, diverged, failed, interrupted, busy (locked by another live process)
    error: str | None = None
    final_test_error: float | None = None
    # a fused job's outcome is its first cell's, and carries every cell's here (`each_cell`)
    members: tuple[CellOutcome, ...] = ()


def job_outcome(outcomes: list[CellOutcome]) -> CellOutcome:
    """The outcome of a job of several cells (a fused group): its first cell's, carrying all of them."""
    return outcomes[0] if len(outcomes) == 1 else replace(outcomes[0], members=tuple(outcomes))


def each_cell(outcome: CellOutcome) -> tuple[CellOutcome, ...]:
    """The outcome of every cell a job trained: one for a single cell, one per member for a fused group."""
    return outcome.members or (outcome,)


class RunLock:
    """An exclusive lock file holding pid and host; a lock whose owner is gone is taken over."""

    def __init__(self, run_dir: Path):
        self.path = run_dir / LOCK_FILE
        self.held = False

    def acquire(self) -> bool:
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)  # as open(): not executable
            except FileExistsError:
                if not self.is_stale():
                    return False
                self.path.unlink(missing_ok=True)
                continue
            with os.fdopen(fd, "w") as handle:
                json.dump({"pid": os.getpid(), "host": socket.gethostname(), "time": time.time()}, handle)
            self.held = True
            return True
        return False

    def owner(self) -> dict | None:
        owner = read_json(self.path)
        return owner if isinstance(owner, dict) else None

    def is_stale(self) -> bool:
        owner = self.owner()
        if owner is None:  # empty or half-written: its writer died between create and write
            return time.time() - self.path.stat().st_mtime > 5 if self.path.exists() else True
        if owner.get("host") == socket.gethostname():
            pid = owner.get("pid")
            return not pid_alive(pid if isinstance(pid, int) and not isinstance(pid, bool) else -1)
        status = RunStatus.read_or_none(self.path.parent)
        written = owner.get("time")
        last_sign = status.updated if status else written if clock_time(written) else 0
        return time.time() - last_sign > STALE_FOREIGN_LOCK_SECONDS

    def release(self) -> None:
        if self.held:
            self.path.unlink(missing_ok=True)
            self.held = False


def clock_time(value: Any) -> bool:
    """Whether a lock file's time is a time the clock can show (a hand-made 1e400 is not)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value < 2**40


def describe_owner(owner: dict | None) -> str:
    """'running elsewhere: pid 19320 on vm since 10:42', from a lock file's contents."""
    if not owner:
        return "running elsewhere"
    started = owner.get("time")
    since = time.strftime("%H:%M", time.localtime(started)) if clock_time(started) else "?"
    return f"running elsewhere: pid {owner.get('pid', '?')} on {owner.get('host', '?')} since {since}"


def is_locked(run_dir: Path) -> bool:
    lock = RunLock(run_dir)
    return lock.path.exists() and not lock.is_stale()


def busy_outcome(run_dir: Path, lock: RunLock | None = None) -> CellOutcome:
    """The outcome of a cell another live run holds: busy, naming who holds it."""
    return CellOutcome(run_dir, "busy", error=describe_owner((lock or RunLock(run_dir)).owner()))


def run_cell(run_dir: Path, device: str, threads: int | None, should_stop: Callable[[], bool]) -> CellOutcome:
    """Train or resume the run whose config.json is in run_dir, under its lock; the final state lands in status.json."""
    return run_cells([run_dir], device, threads, should_stop)


def run_cells(run_dirs: list[Path], device: str, threads: int | None, should_stop: Callable[[], bool]) -> CellOutcome:
    """One job: a single cell, or a fused group (`--fuse`) trained together, each cell under its own lock. A cell
    another live process holds is `busy` and left alone; the others train as a smaller group (alone if one is
    left). Returns the job's outcome (`each_cell` gives every cell's)."""
    locks = [RunLock(run_dir) for run_dir in run_dirs]
    outcomes: dict[Path, CellOutcome] = {}
    try:
        mine = []
        for lock, run_dir in zip(locks, run_dirs, strict=True):
            if lock.acquire():
                mine.append(run_dir)
            else:
                outcomes[run_dir] = busy_outcome(run_dir, lock)
        outcomes.update(train_group(mine, device, threads, should_stop))
    finally:
        for lock in locks:
            lock.release()
    return job_outcome([outcomes[run_dir] for run_dir in run_dirs])


def train_group(run_dirs: list[Path], device: str, threads: int | None,
                should_stop: Callable[[], bool]) -> dict[Path, CellOutcome]:
    """Train cells whose locks this process holds, fused; a cell whose config cannot be read fails alone first, and
    so does a cell whose own files the group refuses. A failure of the fused job itself (out of memory, ...) fails
    every cell of it, with the reason."""
    from ..train.fused import run_fused_training  # torch.func and the fused trainer: only for jobs that fuse

    outcomes: dict[Path, CellOutcome] = {}
    configs = {}
    for run_dir in run_dirs:
        (run_dir / ERROR_FILE).unlink(missing_ok=True)
        try:
            configs[run_dir] = load_run_config(run_dir)
            configs[run_dir].device, configs[run_dir].threads = device, threads or configs[run_dir].threads
        except UserError as exc:
            configs.pop(run_dir, None)
            outcomes[run_dir] = mark_failed(run_dir, str(exc))
    group = list(configs)
    if not group:
        return outcomes
    if len(group) == 1:  # nothing left to fuse with: the cell trains as any single run
        single = partial(run_training, configs[group[0]], group[0], should_stop=should_stop)
        return {**outcomes, group[0]: train_guarded(group, lambda: [single()])[0]}

    def fail_it_alone(exc: UserError) -> list[CellOutcome] | None:
        # one cell's own files (a damaged checkpoint or metrics.csv, another network version) fail it alone; the
        # rest train on as a smaller group, each from its own checkpoint
        named = cell_named_by(str(exc), group)
        if named is None:
            return None
        failed = mark_failed(named, str(exc))
        rest = train_group([run_dir for run_dir in group if run_dir != named], device, threads, should_stop)
        return [failed if run_dir == named else rest[run_dir] for run_dir in group]

    fused = partial(run_fused_training, [configs[run_dir] for run_dir in group], group, should_stop=should_stop)
    return {**outcomes, **dict(zip(group, train_guarded(group, fused, fail_it_alone), strict=True))}


def cell_named_by(message: str, run_dirs: list[Path]) -> Path | None:
    """The one cell whose folder a message names (as a whole path: s1 is not s10), else None."""
    named = [run_dir for run_dir in run_dirs if re.search(re.escape(str(run_dir)) + r"(?![\w.-])", message)]
    return named[0] if len(named) == 1 else None


def train_guarded(run_dirs: list[Path], train: Callable[[], list[RunResult]],
                  refused: Callable[[UserError], list[CellOutcome] | None] = lambda _exc: None) -> list[CellOutcome]:
    """The cells' outcomes from train()'s results; a UserError (unless `refused` settles it) or a crash fails every
    one of them, with the reason (and the traceback in error.txt)."""
    try:
        results = train()
    except UserError as exc:
        return refused(exc) or [mark_failed(run_dir, str(exc)) for run_dir in run_dirs]
    except Exception as exc:  # noqa: BLE001 - a crash fails only these cells; the sweep goes on
        trace = traceback.format_exc()
        for run_dir in run_dirs:
            atomic_write_bytes(run_dir / ERROR_FILE, trace.encode())
        return [mark_failed(run_dir, f"{type(exc).__name__}: {exc}") for run_dir in run_dirs]
    return [CellOutcome(run_dir, result.state, final_test_error=result.final_test_error)
            for run_dir, result in zip(run_dirs, results, strict=True)]


def set_state(run_dir: Path, state: str, error: str | None = None) -> None:
    status = RunStatus.read_or_none(run_dir) or RunStatus()
    status.state, status.error = state, error
    status.write(run_dir)


def cancelled_before_start(run_dir: Path) -> CellOutcome:
    """A queued cell a stop cancelled: interrupted in its status.json too, as `status` then shows it (with how to
    resume), not pending for good."""
    status = RunStatus.read_or_none(run_dir)
    if status is not None and status.state == "pending":
        set_state(run_dir, "interrupted")
    return CellOutcome(run_dir, "interrupted", error="cancelled before it started")


def mark_failed(run_dir: Path, error: str) -> CellOutcome:
    set_state(run_dir, "failed", error)
    if not (run_dir / ERROR_FILE).is_file():
        atomic_write_bytes(run_dir / ERROR_FILE, (error + "\n").encode())
    return CellOutcome(run_dir, "failed", error=error)


def job_outcome_from_status(run_dirs: list[Path], exit_code: int, log: Path | None = None) -> CellOutcome:
    """How a worker process's job ended, from its run folders: `outcome_from_status` for a single cell; for a fused
    group each cell's own state, a cell still held by another live process being busy. log: the worker's output."""
    if len(run_dirs) == 1:
        return outcome_from_status(run_dirs[0], exit_code, log)
    outcomes = []
    for run_dir in run_dirs:
        status = RunStatus.read_or_none(run_dir)
        if (status is None or status.state in ("running", "pending")) and is_locked(run_dir):
            outcomes.append(busy_outcome(run_dir))
        else:  # a group's worker never exits with the busy code: the cells say how each ended
            outcomes.append(outcome_from_status(run_dir, exit_code if exit_code != EXIT_CODES["busy"] else 1, log))
    return job_outcome(outcomes)


# A stop, not a failure: Ctrl-C and a sweep's interrupt (SIGINT), SIGTERM, and a closed terminal (SIGHUP, which
# reaches the sweep and its workers alike); the sweep and its workers each checkpoint and end interrupted on these.
STOP_SIGNALS = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name))


def outcome_from_status(run_dir: Path, exit_code: int, log: Path | None = None) -> CellOutcome:
    """How a worker process ended, from its run folder; a process that died without saying so is a failure, whose
    reason quotes the last line of its log (the exception, mostly) and names the log."""
    if exit_code == EXIT_CODES["busy"]:
        return busy_outcome(run_dir)
    status = RunStatus.read_or_none(run_dir)
    if (status is None or status.state in ("running", "pending")) and -exit_code in STOP_SIGNALS:
        # stopped (Ctrl-C, the sweep's interrupt) while still importing torch, before its handler was in place
        set_state(run_dir, "interrupted")
        return CellOutcome(run_dir, "interrupted")
    if status is None or status.state in ("running", "pending"):  # it ended without recording how
        reason = (f"worker process died (signal {-exit_code})" if exit_code < 0 else
                  f"worker process exited with code {exit_code}")
        return mark_failed(run_dir, reason + log_gist(log))
    return CellOutcome(run_dir, status.state, error=status.error, final_test_error=status.test_error)


LOG_TAIL_BYTES = 64 * 1024  # the end of a log is where a crash says why; a long log is not read whole


def log_gist(log: Path | None) -> str:
    """': <the log's last meaningful line> (log: <path>)', or '' without a log to read."""
    if log is None or not log.is_file():
        return ""
    with log.open("rb") as handle:
        handle.seek(max(0, log.stat().st_size - LOG_TAIL_BYTES))
        text = handle.read().decode(errors="replace")
    # a traceback's frames and a fault handler's stack are indented: the line that says why is not
    meaningful = last_line("\n".join(line for line in text.splitlines() if not line[:1].isspace()))
    return f": {meaningful} (log: {log})" if meaningful else f" (log: {log})"


def last_line(text: str) -> str:
    """The gist of an error whose text carries a traceback first: its last non-blank line, at most 200 characters."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1][:200] if lines else ""
