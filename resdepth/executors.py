"""Executors run sweep cells; the sweep runner decides what to run and where.

Every executor has the same interface, `submit(job) -> Future[CellOutcome]` plus `interrupt()`, in the
manner of submitit: `SequentialExecutor` trains in this process (one job at a time, instant start, used by
tests), `LocalProcessExecutor` runs each job in its own Python process so a crash stays in its job, and
`RayExecutor` runs each job as a task on a Ray cluster, on any node that mounts the results folder.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import uuid
from abc import ABC, abstractmethod
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .cell import CellOutcome, RunLock, is_locked, mark_failed, outcome_from_status, run_cell
from .errors import UserError
from .results import RunStatus, ensure_writable_dir, read_json, write_json

if TYPE_CHECKING:
    from .sweep import SweepConfig


@dataclass(frozen=True)
class CellJob:
    """What an executor needs to run one cell: its prepared folder and the slot it was given."""

    run_dir: Path
    device: str
    threads: int | None = None


class Executor(ABC):
    @abstractmethod
    def submit(self, job: CellJob) -> "Future[CellOutcome]":
        """Start the job; the future resolves when it ends, whatever the way it ends."""

    @abstractmethod
    def interrupt(self) -> None:
        """Ask running jobs to checkpoint and stop soon (Ctrl-C, SIGTERM, preemption)."""

    def shutdown(self) -> None:
        """Release the executor's resources once every future has resolved."""


class SequentialExecutor(Executor):
    """Runs jobs one after another in this process, on a worker thread so the caller can keep displaying."""

    def __init__(self) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="resdepth-cell")
        self._stop = threading.Event()

    def submit(self, job: CellJob) -> "Future[CellOutcome]":
        return self._pool.submit(run_cell, job.run_dir, job.device, job.threads, self._stop.is_set)

    def interrupt(self) -> None:
        self._stop.set()

    def shutdown(self) -> None:
        self._pool.shutdown(wait=True)


class LocalProcessExecutor(Executor):
    """One `python -m resdepth.worker` process per job; its exit, even by SIGKILL, is read from the run folder."""

    def __init__(self) -> None:
        self._processes: set[subprocess.Popen[bytes]] = set()
        self._lock = threading.Lock()

    def submit(self, job: CellJob) -> "Future[CellOutcome]":
        future: Future[CellOutcome] = Future()
        command = [sys.executable, "-m", "resdepth.worker", str(job.run_dir), "--device", job.device]
        if job.threads:
            command += ["--threads", str(job.threads)]
        log = (job.run_dir / "worker.log").open("ab")
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)
        log.close()
        with self._lock:
            self._processes.add(process)
        threading.Thread(target=self._watch, args=(process, job, future), daemon=True).start()
        return future

    def _watch(self, process: "subprocess.Popen[bytes]", job: CellJob, future: "Future[CellOutcome]") -> None:
        code = process.wait()
        with self._lock:
            self._processes.discard(process)
        future.set_result(outcome_from_status(job.run_dir, exit_code=code))

    def interrupt(self) -> None:
        with self._lock:
            for process in self._processes:
                if process.poll() is None:
                    process.send_signal(signal.SIGINT)


# ---------------------------------------------------------------------------------------------- Ray
RAY_MAX_RETRIES = 3  # a cell whose worker or node dies is started again (from its last checkpoint) this often
ATTEMPT_FILE = "ray-task.json"  # the Ray task attempt running the cell: lets a retry take over the lock it left
PROBE_TIMEOUT_SECONDS = 120  # every node must answer the shared-folder check within this (a worker start each)
RAY_INSTALL = 'pip install "resdepth[ray]"'


class RayExecutor(Executor):
    """Each cell is a Ray task running `run_cell` on whichever node Ray places it; results go to a shared folder.

    A task asks for `gpus_per_job` of a GPU (or `threads` CPUs when the cells train on CPU) and is run again, up to
    RAY_MAX_RETRIES times, from its last checkpoint when its worker or node dies. `interrupt()` cancels every task:
    Ray drops those not started and sends SIGINT to running ones, whose handler makes `should_stop` true.
    """

    def __init__(self, out_dir: Path, address: str | None = None, gpus_per_job: float = 1.0,
                 device: str = "auto", threads: int | None = None):
        if not 0 < gpus_per_job <= 1:
            raise UserError(f"--gpus-per-job must be in (0, 1] (a cell trains on one GPU), got {gpus_per_job:g}")
        self.ray = import_ray()
        self._owns_connection = not self.ray.is_initialized()
        if self._owns_connection:
            connect_ray(self.ray, address)
        try:
            self.device = ray_device(self.ray, device)
            self.threads = threads or 1  # CPU share of a task, and its torch threads
            gpus = gpus_per_job if self.device == "cuda" else 0
            self._options = {"num_cpus": self.threads, "num_gpus": gpus, "max_retries": RAY_MAX_RETRIES}
            check_shared_folder(self.ray, out_dir.resolve(), "GPU" if gpus else "CPU")
        except BaseException:
            self.shutdown()
            raise
        self._task = self.ray.remote(run_ray_cell)
        self._running: dict[Any, Path] = {}  # ObjectRef -> run folder
        self._lock = threading.Lock()

    def submit(self, job: CellJob) -> "Future[CellOutcome]":
        run_dir = job.run_dir.resolve()  # the same path on every node; job.device and job.threads are the driver's
        ref = self._task.options(**self._options).remote(run_dir, self.device, self.threads, uuid.uuid4().hex)
        with self._lock:
            self._running[ref] = run_dir
        future: Future[CellOutcome] = Future()
        ref.future().add_done_callback(lambda done: future.set_result(self._outcome(ref, done)))
        return future

    def _outcome(self, ref: Any, done: "Future[CellOutcome]") -> CellOutcome:
        with self._lock:
            run_dir = self._running.pop(ref)
        try:
            return done.result()
        except self.ray.exceptions.TaskCancelledError:
            return CellOutcome(run_dir, "interrupted", error="cancelled before it started")
        except Exception as exc:  # noqa: BLE001 - retries used up, worker setup failed: the run folder tells the rest
            try:
                return outcome_after_ray_error(run_dir, exc)
            except OSError as unreadable:  # the future must resolve, or the sweep would wait forever
                return CellOutcome(run_dir, "failed", error=f"{type(exc).__name__}; run folder: {unreadable}")

    def interrupt(self) -> None:
        with self._lock:
            refs = list(self._running)
        for ref in refs:
            self.ray.cancel(ref)

    def shutdown(self) -> None:
        if self._owns_connection and self.ray.is_initialized():
            self.ray.shutdown()  # a cluster this process started stops; a joined one only loses this driver


def import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise UserError(f"--executor ray needs Ray here and on every node of the cluster: {RAY_INSTALL}") from None
    return ray


def connect_ray(ray: Any, address: str | None) -> None:
    """Join the cluster at address (auto: the one `ray start` runs here); None: $RAY_ADDRESS, else a new local one."""
    if address and address != "auto" and not address.startswith("ray://"):
        host, _, port = address.rpartition(":")
        try:
            socket.create_connection((host, int(port)), timeout=10).close()
        except (OSError, ValueError) as exc:
            raise UserError(f"no Ray cluster answers at --address {address} ({exc}): give the head node's HOST:PORT "
                            "that `ray start --head` printed, or auto on a node of the cluster") from None
    try:
        ray.init(address=address, log_to_driver=False, logging_level=logging.WARNING)
    except ConnectionError as exc:
        raise UserError(f"cannot join a Ray cluster ({exc}): start one with `ray start --head`, "
                        "or leave --address out to start a local one") from None


def ray_device(ray: Any, device: str) -> str:
    """cuda when the cells should ask for GPUs (Ray picks which and sets CUDA_VISIBLE_DEVICES), else cpu."""
    has_gpus = ray.cluster_resources().get("GPU", 0) > 0
    if device.startswith("cuda") and not has_gpus:
        raise UserError(f"--device {device} asked for, but the Ray cluster has no GPU now: start GPU nodes, "
                        "or use --device cpu")
    return "cuda" if has_gpus and device != "cpu" else "cpu"


def run_ray_cell(run_dir: Path, device: str, threads: int, token: str) -> CellOutcome:
    """The body of a cell's Ray task: `run_cell`, stopping cleanly on SIGINT (what `ray.cancel` sends)."""
    take_over_own_lock(run_dir, token)
    if is_locked(run_dir):  # another live run holds the cell: leave its attempt record alone
        return CellOutcome(run_dir, "busy", error=f"running elsewhere: {RunLock(run_dir).owner()}")
    attempt, me = run_dir / ATTEMPT_FILE, {"token": token, "host": socket.gethostname(), "pid": os.getpid()}
    write_json(attempt, me)
    stop = threading.Event()
    previous = signal.signal(signal.SIGINT, lambda _s, _f: stop.set())  # Ray runs tasks on the main thread
    try:
        outcome = run_cell(run_dir, device, threads, stop.is_set)
    finally:
        signal.signal(signal.SIGINT, previous if previous is not None else signal.default_int_handler)
    if read_json(attempt) == me:
        attempt.unlink(missing_ok=True)  # needed only while this attempt might hold the lock
    return outcome


def take_over_own_lock(run_dir: Path, token: str) -> None:
    """Remove a lock left by an earlier attempt of this task: Ray only runs a task again once its worker is dead.

    Without this, a retry on another node would see the lost node's lock as live for STALE_FOREIGN_LOCK_SECONDS.
    """
    attempt = read_json(run_dir / ATTEMPT_FILE) or {}
    lock = RunLock(run_dir)
    owner = lock.owner() or {}
    same_process = (owner.get("host"), owner.get("pid")) == (attempt.get("host"), attempt.get("pid"))
    if attempt.get("token") == token and same_process:
        lock.path.unlink(missing_ok=True)


def outcome_after_ray_error(run_dir: Path, exc: Exception) -> CellOutcome:
    """A task that returned no outcome (its worker died more often than retried, or could not start it)."""
    status = RunStatus.read(run_dir)
    state = status.state if status else "pending"
    if state in ("running", "pending"):
        return mark_failed(run_dir, f"Ray task ended without a result ({type(exc).__name__}): {last_line(exc)}")
    return outcome_from_status(run_dir, exit_code=0)


def last_line(exc: Exception) -> str:
    """The gist of a Ray error, whose text carries the remote traceback first."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[-1][:200] if lines else ""


def check_shared_folder(ray: Any, folder: Path, resource: str) -> None:
    """Ask one task on every node that can run a cell to read a file written here and write beside it."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    ensure_writable_dir(folder)
    token = uuid.uuid4().hex
    probe = folder / f".ray-probe-{token}"
    probe.write_text(token)
    try:
        nodes = [n for n in ray.nodes() if n["Alive"] and n["Resources"].get(resource, 0) > 0]
        check = ray.remote(probe_folder)
        on_node = [NodeAffinitySchedulingStrategy(node["NodeID"], soft=False) for node in nodes]
        refs = {check.options(num_cpus=0, scheduling_strategy=where).remote(probe, token): node["NodeManagerHostname"]
                for node, where in zip(nodes, on_node)}
        ready, _ = ray.wait(list(refs), num_returns=len(refs), timeout=PROBE_TIMEOUT_SECONDS)
        problems = []
        for ref, host in refs.items():
            try:
                problem = ray.get(ref) if ref in ready else f"no answer within {PROBE_TIMEOUT_SECONDS} s"
            except Exception as exc:  # noqa: BLE001 - e.g. resdepth not installed on that node
                problem = f"{type(exc).__name__}: {last_line(exc)}"
            if problem:
                problems.append(f"{host}: {problem}")
    finally:
        probe.unlink(missing_ok=True)
    if problems:
        raise UserError(f"every Ray node needs resdepth installed and the results folder {folder} at the same path, "
                        f"writable (a shared filesystem; choose it with --out): " + "; ".join(problems))


def probe_folder(probe: Path, token: str) -> str | None:
    """On one node: None if the probe file reads back token and its folder takes a new file, else what is wrong."""
    try:
        if probe.read_text() != token:
            return f"{probe} holds something else"
        mine = probe.with_name(f"{probe.name}-{socket.gethostname()}-{os.getpid()}")
        mine.write_text(token)
        mine.unlink()
    except OSError as exc:
        return f"{probe.parent} is not this folder there ({exc.strerror or exc})"
    return None


# ---------------------------------------------------------------------------------------------- choosing one
EXECUTORS = ("auto", "sequential", "local", "ray")


def make_executor(sweep: "SweepConfig") -> Executor:
    """auto: in-process for a single slot, one process per job for several; ray: one task per cell on a cluster."""
    from .sweep import device_slots

    if sweep.executor == "ray":
        train = sweep.train
        return RayExecutor(sweep.out_dir(), sweep.ray_address, sweep.gpus_per_job, train.device, train.threads)
    slots = len(device_slots(sweep))
    if sweep.executor == "sequential" or (sweep.executor == "auto" and slots == 1):
        return SequentialExecutor()
    if sweep.executor in ("local", "auto"):
        return LocalProcessExecutor()
    raise UserError(f"unknown executor {sweep.executor!r}: use one of {', '.join(EXECUTORS)}")
