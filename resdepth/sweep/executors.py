"""Executors run sweep cells; the sweep runner decides what to run and where.

Every executor has the same interface, `submit(job) -> Future[CellOutcome]` plus `interrupt()`, in the
manner of submitit: `SequentialExecutor` trains in this process (one job at a time, instant start, used by
tests) and `LocalProcessExecutor` runs each job in its own Python process so a crash stays in its job. The
cluster executors (`RayExecutor`, `SlurmExecutor`) live in `cluster.py` behind the same interface; which one a
sweep uses is decided above them all, by `sweep.make_executor`. A job is one cell, or a fused group (`--fuse`)
of cells trained together, whose outcome carries each cell's (`cell.each_cell`).
"""

from __future__ import annotations

import contextlib
import os
import signal
import stat
import subprocess
import threading
from abc import ABC, abstractmethod
from collections.abc import Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from ..results.runs import WORKER_LOG
from .cell import CellOutcome, job_outcome_from_status, run_cells
from .startup import python_command


@dataclass(frozen=True)
class CellJob:
    """What an executor needs to run one cell: its prepared folder and the slot it was given. A fused group
    (`--fuse`) is one job too: its first cell's folder, and the others' in fused_with."""

    run_dir: Path
    device: str
    threads: int | None = None
    fused_with: tuple[Path, ...] = ()

    @property
    def run_dirs(self) -> list[Path]:
        return [self.run_dir, *self.fused_with]


class Executor(ABC):
    @abstractmethod
    def submit(self, job: CellJob) -> Future[CellOutcome]:
        """Start the job; the future resolves when it ends, whatever the way it ends."""

    @abstractmethod
    def interrupt(self) -> None:
        """Ask running jobs to checkpoint and stop soon (Ctrl-C, SIGTERM, preemption)."""

    def submit_all(self, jobs: list[CellJob]) -> list[Future[CellOutcome]]:
        """Start several jobs at once; a scheduler may take them as one request (Slurm: one job array)."""
        return [self.submit(job) for job in jobs]

    def shutdown(self) -> None:  # noqa: B027 - an optional hook: most executors hold nothing to release
        """Release the executor's resources once every future has resolved."""


class SequentialExecutor(Executor):
    """Runs jobs one after another in this process, on a worker thread so the caller can keep displaying."""

    def __init__(self) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="resdepth-cell")
        self._stop = threading.Event()

    def submit(self, job: CellJob) -> Future[CellOutcome]:
        return self._pool.submit(run_cells, job.run_dirs, job.device, job.threads, self._stop.is_set)

    def interrupt(self) -> None:
        self._stop.set()

    def shutdown(self) -> None:
        self._pool.shutdown(wait=True)


class LocalProcessExecutor(Executor):
    """One `python -m resdepth.sweep.worker` process per job (started so that it imports the installed resdepth,
    whatever the working folder holds: `startup.python_command`); its exit, even by SIGKILL, is read from the run
    folders (its log goes to the first cell's worker.log)."""

    def __init__(self) -> None:
        self._processes: set[subprocess.Popen[bytes]] = set()
        self._lock = threading.Lock()

    def submit(self, job: CellJob) -> Future[CellOutcome]:
        future: Future[CellOutcome] = Future()
        device, env = worker_device(job.device, os.environ)
        command = python_command("-m", "resdepth.sweep.worker", *map(str, job.run_dirs), "--device", device,
                                 "--parent", str(os.getpid()))
        if job.threads:
            command += ["--threads", str(job.threads)]
        log = open_log(job.run_dir / WORKER_LOG)
        env["PYTHONUNBUFFERED"] = "1"
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)
        log.close()
        with self._lock:
            self._processes.add(process)
        threading.Thread(target=self._watch, args=(process, job, future), daemon=True).start()
        return future

    def _watch(self, process: subprocess.Popen[bytes], job: CellJob, future: Future[CellOutcome]) -> None:
        code = process.wait()
        with self._lock:
            self._processes.discard(process)
        future.set_result(job_outcome_from_status(job.run_dirs, exit_code=code, log=job.run_dir / WORKER_LOG))

    def interrupt(self) -> None:
        with self._lock:
            for process in self._processes:
                if process.poll() is None:
                    process.send_signal(signal.SIGINT)


def open_log(path: Path) -> BinaryIO:
    """A worker's log, opened to append to. Anything but a regular file in its place (a link that may lead out of
    the folder, a FIFO that would block) is removed first, never written through."""
    with contextlib.suppress(FileNotFoundError):
        if not stat.S_ISREG(os.lstat(path).st_mode):
            path.unlink()
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0)
    return os.fdopen(os.open(path, flags, 0o666), "ab")


def worker_device(slot: str, environ: Mapping[str, str]) -> tuple[str, dict[str, str]]:
    """The --device and environment of a worker process for a slot: a GPU slot becomes the only GPU the worker
    sees (CUDA_VISIBLE_DEVICES), as Ray and Slurm give theirs, so every CUDA call in it, graph capture streams
    and cuDNN handles included, lands on that GPU. Slot numbers count the GPUs this process sees."""
    env = dict(environ)
    kind, _, index = slot.partition(":")
    if kind != "cuda" or not index:
        return slot, env
    visible = environ.get("CUDA_VISIBLE_DEVICES")
    ids = [part.strip() for part in visible.split(",")] if visible else None
    env["CUDA_VISIBLE_DEVICES"] = ids[int(index)] if ids else index
    return "cuda:0", env
