"""Executors for clusters: one Ray task per cell, or one Slurm job array per sweep through submitit.

Both ship the same `CellTask` to whichever node the scheduler picks; it runs `run_cell` there, in the run
folder every node reaches at the same path. A cell's run folder alone tells how it ended, so the driver's
outcome never depends on the scheduler's bookkeeping beyond "is this job still queued or running".
"""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import Future
from dataclasses import dataclass, fields
from functools import partial
from pathlib import Path
from typing import Any

from ..config import documented, flag_name, option
from ..errors import UserError
from ..results.runs import CONFIG_FILE, RunStatus, ensure_writable_dir, read_json, write_json
from . import startup
from .cell import (
    CellOutcome,
    RunLock,
    busy_outcome,
    cancelled_before_start,
    is_locked,
    job_outcome,
    last_line,
    log_gist,
    mark_failed,
    outcome_from_status,
    run_cells,
    set_state,
)
from .executors import CellJob, Executor
from .startup import python_command

CLUSTER = "Cluster (--executor ray or slurm)"  # the help panel of the cluster options

TASK_FILE = "task.json"  # the attempt running a cell (token, host, pid): lets a retry take over its dead lock


# ---------------------------------------------------------------------------------------------- on the node
class CellTask:
    """What a cluster runs for one cell, or one fused group of cells (fused_with: the other cells' folders):
    `run_cells` under a token that every retry or requeue of it shares.

    Training runs on a worker thread so that signal handlers, which Python runs on the main thread, can act
    while it waits: SIGINT (Ray's cancel, `scancel --signal=INT`, Ctrl-C) stops the run at its next iteration,
    and submitit's preemption handler calls `checkpoint()`, which waits for the checkpoint before requeueing.
    """

    def __init__(self, run_dir: Path, device: str, threads: int, token: str, fused_with: tuple[Path, ...] = ()):
        self.run_dir, self.device, self.threads, self.token = run_dir, device, threads, token
        self.fused_with = fused_with
        self._stop = threading.Event()
        self._finished = threading.Event()
        self._worker: threading.Thread | None = None

    def __getstate__(self) -> dict[str, Any]:  # events hold locks, which do not pickle; a new node makes new ones
        return {"run_dir": self.run_dir, "device": self.device, "threads": self.threads, "token": self.token,
                "fused_with": self.fused_with}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(**state)  # type: ignore[misc]

    @property
    def run_dirs(self) -> list[Path]:
        return [self.run_dir, *self.fused_with]

    def __call__(self) -> CellOutcome:
        for run_dir in self.run_dirs:
            if not (run_dir / CONFIG_FILE).exists():  # never train a default config in a folder we cannot see
                raise RuntimeError(f"{run_dir} is not visible on {socket.gethostname()}: the results folder must "
                                   "be on a filesystem every node mounts at the same path (choose it with --out)")
            take_over_own_lock(run_dir, self.token)
        free = [run_dir for run_dir in self.run_dirs if not is_locked(run_dir)]
        if not free:  # other live runs hold the cells: leave their attempt records alone
            return job_outcome([busy_outcome(run_dir)
                                for run_dir in self.run_dirs])
        me = {"token": self.token, "host": socket.gethostname(), "pid": os.getpid(), "slurm_job": slurm_job_id()}
        for run_dir in free:
            write_json(run_dir / TASK_FILE, me)
        outcome = self._train_until_stopped()  # a fused group's busy cells are left alone by run_cells
        for run_dir in free:
            if read_json(run_dir / TASK_FILE) == me:
                (run_dir / TASK_FILE).unlink(missing_ok=True)  # needed only while this attempt might hold the lock
        return outcome

    def checkpoint(self) -> Any:
        """submitit's preemption / time-limit handler: stop, wait for the checkpoint, requeue this same cell."""
        from submitit.helpers import DelayedSubmission

        self._stop.set()
        if self._worker is not None:  # else training has not begun, and cannot while this handler holds the main thread
            self._finished.wait()
        return DelayedSubmission(CellTask(self.run_dir, self.device, self.threads, self.token, self.fused_with))

    def _train_until_stopped(self) -> CellOutcome:
        result: list[Any] = []

        def train() -> None:
            try:
                result.append(run_cells(self.run_dirs, self.device, self.threads, self._stop.is_set))
            except BaseException as exc:  # noqa: BLE001 - re-raised on the main thread below
                result.append(exc)
            finally:
                self._finished.set()

        previous = signal.signal(signal.SIGINT, lambda _s, _f: self._stop.set())
        try:
            self._worker = threading.Thread(target=train, name="resdepth-cell", daemon=True)
            self._worker.start()
            while not self._finished.wait(0.05):  # handlers run between waits (Ray's cancel raises no real signal)
                pass
        finally:
            signal.signal(signal.SIGINT, previous if previous is not None else signal.default_int_handler)
        if isinstance(result[0], BaseException):
            raise result[0]
        return result[0]


def slurm_job_id() -> str | None:
    """This process's Slurm job as scancel names it (array jobs: JOBID_TASK), None outside Slurm."""
    array, index = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    return f"{array}_{index}" if array and index else os.environ.get("SLURM_JOB_ID")


def recorded_task(run_dir: Path) -> dict[str, Any]:
    """The attempt task.json records (token, host, pid, slurm_job); {} where there is none: missing, not a JSON
    object, or a link or a FIFO in its place, which no attempt wrote."""
    try:
        attempt = read_json(run_dir / TASK_FILE)
    except UserError:
        return {}
    return attempt if isinstance(attempt, dict) else {}


def take_over_own_lock(run_dir: Path, token: str) -> None:
    """Remove a lock left by an earlier attempt of this same task: the scheduler starts it again only once dead.

    Without this, a retry on another node would see the lost node's lock as live for STALE_FOREIGN_LOCK_SECONDS.
    """
    attempt = recorded_task(run_dir)
    lock = RunLock(run_dir)
    owner = lock.owner() or {}
    same_process = (owner.get("host"), owner.get("pid")) == (attempt.get("host"), attempt.get("pid"))
    if attempt.get("token") == token and same_process:
        lock.path.unlink(missing_ok=True)


def outcome_without_result(run_dir: Path, reason: str) -> CellOutcome:
    """A task that returned no outcome (its worker died more often than retried, or it could not start)."""
    status = RunStatus.read_or_none(run_dir)
    state = status.state if status else "pending"
    if state in ("running", "pending"):
        return mark_failed(run_dir, reason)
    return outcome_from_status(run_dir, exit_code=0)


# ---------------------------------------------------------------------------------------------- Ray
RAY_MAX_RETRIES = 3  # a cell whose worker or node dies is started again (from its last checkpoint) this often
PROBE_TIMEOUT_SECONDS = 120  # every node must answer the shared-folder check within this (a worker start each)
RAY_INSTALL = 'pip install "resdepth[ray]"'


class RayExecutor(Executor):
    """Each cell is a Ray task running `CellTask` on whichever node Ray places it; results go to a shared folder.

    A task asks for `gpus_per_job` of a GPU (or `threads` CPUs when the cells train on CPU) and is run again, up to
    RAY_MAX_RETRIES times, from its last checkpoint when its worker or node dies. `interrupt()` cancels every task:
    Ray drops those not started and sends SIGINT to running ones, which checkpoint and stop.
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
        # A fresh worker process per cell: one that has initialised CUDA keeps its first CUDA_VISIBLE_DEVICES, so a
        # reused worker would train its next cell on the previous cell's GPU while the one Ray gave it idles.
        self._task = remote_call(self.ray, max_calls=1)
        self._running: dict[Any, list[Path]] = {}  # ObjectRef -> the job's run folders
        self._lock = threading.Lock()

    def submit(self, job: CellJob) -> Future[CellOutcome]:
        run_dirs = [run_dir.resolve() for run_dir in job.run_dirs]  # the same paths on every node
        task = CellTask(run_dirs[0], self.device, self.threads, uuid.uuid4().hex, tuple(run_dirs[1:]))
        ref = self._task.options(**self._options).remote(*remote_args(task))  # job.device, job.threads: the driver's
        with self._lock:
            self._running[ref] = run_dirs
        future: Future[CellOutcome] = Future()
        ref.future().add_done_callback(lambda done: future.set_result(self._outcome(ref, done)))
        return future

    def _outcome(self, ref: Any, done: Future[CellOutcome]) -> CellOutcome:
        with self._lock:
            run_dirs = self._running.pop(ref)
        try:
            return done.result()
        except self.ray.exceptions.TaskCancelledError:
            return job_outcome([cancelled_before_start(run_dir) for run_dir in run_dirs])
        except Exception as exc:  # noqa: BLE001 - the job raised: its message is the cell's error
            reason = f"Ray task ended without a result ({type(exc).__name__}): {last_line(str(exc))}"
            return job_outcome([self._without_result(run_dir, reason, exc) for run_dir in run_dirs])

    @staticmethod
    def _without_result(run_dir: Path, reason: str, exc: Exception) -> CellOutcome:
        try:
            return outcome_without_result(run_dir, reason)
        except OSError as unreadable:  # the future must resolve, or the sweep would wait forever
            return CellOutcome(run_dir, "failed", error=f"{type(exc).__name__}; run folder: {unreadable}")

    def interrupt(self) -> None:
        """Cancel the jobs not started yet before the running ones: a running job that stopped first would free its
        CPUs (or GPU) for Ray to start a queued one before its cancel arrived."""
        with self._lock:
            jobs = list(self._running.items())
        for ref, _ in sorted(jobs, key=lambda job: maybe_started(job[1][0])):
            self.ray.cancel(ref)

    def shutdown(self) -> None:
        if self._owns_connection and self.ray.is_initialized():
            self.ray.shutdown()  # a cluster this process started stops; a joined one only loses this driver


def maybe_started(run_dir: Path) -> bool:
    """Whether an attempt may be running the cell (its task.json; one a dead attempt left counts too): a folder
    that cannot be read counts as started, so an interrupt still cancels every job."""
    try:
        return (run_dir / TASK_FILE).exists()
    except OSError:
        return True


def import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise UserError(f"--executor ray needs Ray here and on every node of the cluster: {RAY_INSTALL}") from None
    return ray


def connect_ray(ray: Any, address: str | None) -> None:
    """Join the cluster at address (auto: the one `ray start` runs here); None: $RAY_ADDRESS, else a new local one.
    A HOST:PORT, given or in $RAY_ADDRESS, is probed first: Ray itself retries a dead one for minutes, warning."""
    check_ray_address(address)
    try:
        ray.init(address=address, log_to_driver=False, logging_level=logging.WARNING)
    except ConnectionError as exc:
        raise UserError(f"cannot join a Ray cluster ({exc}): start one with `ray start --head`, "
                        "or leave --address out to start a local one") from None


# An HTTP/2 client's opening and an empty SETTINGS frame: a gRPC server such as Ray's GCS answers with its own
# SETTINGS frame (type 4, the frame header's fourth byte); a web server, ssh or a database answers otherwise.
HTTP2_OPENING = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes([0, 0, 0, 4, 0, 0, 0, 0, 0])
SETTINGS_FRAME = 4
PROBE_SECONDS = 10


def check_ray_address(address: str | None) -> None:
    """A HOST:PORT (--address, else $RAY_ADDRESS) that nothing answers, or that answers but not as Ray's GCS does
    (gRPC), in one line: Ray itself retries either for minutes, warning. auto, ray:// and none are Ray's to find;
    with RAY_USE_TLS the GCS speaks TLS first, and only the connection is probed."""
    named, given = (address, "--address") if address else (os.environ.get("RAY_ADDRESS"), "$RAY_ADDRESS")
    if not named or named == "auto" or named.startswith("ray://"):
        return
    head = "give the head node's HOST:PORT that `ray start --head` printed (port 6379 unless --port said otherwise)"
    host, _, port = named.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=PROBE_SECONDS) as connection:
            if os.environ.get("RAY_USE_TLS", "0").lower() in ("0", "false", ""):
                connection.sendall(HTTP2_OPENING)
                reply = connection.recv(9)
                if len(reply) < 4 or reply[3] != SETTINGS_FRAME:
                    raise UserError(f"{given} {named} answers, but not as a Ray cluster does (Ray's GCS speaks gRPC): "
                                    f"{head}")
    except (OSError, ValueError) as exc:
        what = f"no answer in {PROBE_SECONDS} s" if isinstance(exc, TimeoutError) else str(exc)
        raise UserError(f"no Ray cluster answers at {given} {named} ({what}): {head}, or auto on a node of the "
                        "cluster") from None


def remote_call(ray: Any, **options: Any) -> Any:
    """A Ray remote function of a pickled callable (`.remote(*remote_args(call))`), shipped by value: the worker drops
    the driver's working folder that Ray put first on its sys.path before it imports resdepth (startup.py)."""
    ray.cloudpickle.register_pickle_by_value(startup)
    return ray.remote(**options)(startup.run_pickled) if options else ray.remote(startup.run_pickled)


def remote_args(call: Any) -> tuple[bytes, str]:
    """The arguments of a `remote_call` function that runs call()."""
    return pickle.dumps(call), os.path.abspath(os.curdir)  # the folder Ray adds to workers' sys.path


def ray_device(ray: Any, device: str) -> str:
    """cuda when the cells should ask for GPUs (Ray picks which and sets CUDA_VISIBLE_DEVICES), else cpu."""
    has_gpus = ray.cluster_resources().get("GPU", 0) > 0
    if device.startswith("cuda") and not has_gpus:
        raise UserError(f"--device {device} asked for, but the Ray cluster has no GPU now: start GPU nodes, "
                        "or use --device cpu")
    return "cuda" if has_gpus and device != "cpu" else "cpu"


def check_shared_folder(ray: Any, folder: Path, resource: str) -> None:
    """Ask one task on every node that can run a cell to read a file written here and write beside it."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    ensure_writable_dir(folder)
    token = uuid.uuid4().hex
    probe = folder / f".ray-probe-{token}"
    probe.write_text(token)
    try:
        nodes = [n for n in ray.nodes() if n["Alive"] and n["Resources"].get(resource, 0) > 0]
        check, call = remote_call(ray), remote_args(partial(probe_folder, probe, token))
        on_node = [NodeAffinitySchedulingStrategy(node["NodeID"], soft=False) for node in nodes]
        refs = {check.options(num_cpus=0, scheduling_strategy=where).remote(*call): node["NodeManagerHostname"]
                for node, where in zip(nodes, on_node, strict=True)}
        ready, _ = ray.wait(list(refs), num_returns=len(refs), timeout=PROBE_TIMEOUT_SECONDS)
        problems = []
        for ref, host in refs.items():
            try:
                problem = ray.get(ref) if ref in ready else f"no answer within {PROBE_TIMEOUT_SECONDS} s"
            except Exception as exc:  # noqa: BLE001 - e.g. resdepth not installed on that node
                problem = f"{type(exc).__name__}: {last_line(str(exc))}"
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


# ---------------------------------------------------------------------------------------------- Slurm
SLURM_INSTALL = 'pip install "resdepth[slurm]"'
SLURM_LOGS = "slurm"  # submitit's job files and logs, under the sweep's results folder (one folder per job)
SLURM_ENDED = {"BOOT_FAIL", "CANCELLED", "COMPLETED", "DEADLINE", "FAILED", "NODE_FAIL", "OUT_OF_MEMORY",
               "REVOKED", "SPECIAL_EXIT", "TIMEOUT"}  # squeue states after which a job will not run again
RESULT_GRACE_SECONDS = 30.0  # a shared filesystem may show a job's result file a little after the job has ended


@documented
@dataclass
class SlurmConfig:
    """What `--executor slurm` asks Slurm for, per cell (one array task each); saved in sweep.json."""

    partition: str | None = option(None, help="--executor slurm: partition.", flag="--slurm-partition",
                                   panel=CLUSTER, default_text="the cluster's default")
    # a cell that needs longer is checkpointed before the limit and requeued
    time: int = option(240, help="--executor slurm: minutes per job; longer cells are checkpointed and requeued.",
                       flag="--slurm-time", panel=CLUSTER)
    cpus_per_job: int = option(4, help="--executor slurm: cores per cell (--threads overrides); GPU cells need few.",
                               flag="--slurm-cpus", panel=CLUSTER)
    mem_gb: float | None = option(None, help="--executor slurm: memory per job (GB).", flag="--slurm-mem-gb",
                                  panel=CLUSTER, default_text="the partition's")
    account: str | None = option(None, help="--executor slurm: account to charge.", flag="--slurm-account",
                                 panel=CLUSTER, default_text="yours")
    qos: str | None = option(None, help="--executor slurm: quality of service.", flag="--slurm-qos", panel=CLUSTER,
                             default_text="the partition's")
    constraint: str | None = option(None, help="--executor slurm: node features, e.g. h100.",
                                    flag="--slurm-constraint", panel=CLUSTER, default_text="none")
    array_parallelism: int = option(256, help="--executor slurm: array tasks running at once (Slurm's %N).",
                                    flag="--slurm-array-parallelism", panel=CLUSTER)
    # clusters whose scheduler predates Slurm's cons_tres plugin know GPUs only as a generic resource
    gres: str | None = option(None, help="--executor slurm: ask for each cell's GPU as this generic resource "
                                         "(sbatch --gres, e.g. gpu:1 or gpu:a100:1) instead of --gpus-per-node=1.",
                              flag="--slurm-gres", panel=CLUSTER, default_text="--gpus-per-node=1")
    # requeues after hitting the time limit before a cell is given up (preemption: no limit)
    max_timeouts: int = option(10, help="Requeues after hitting the time limit before a cell is given up.", cli=False)
    setup: list[str] = option(help='Shell lines run first in each job, e.g. ["module load cuda"].', cli=False,
                              default_factory=list)
    cluster: str = option("slurm", help="local: submitit's local executor, to try a sweep on this machine without "
                                        "Slurm.", cli=False)
    poll_seconds: float = option(10.0, help="How often the driver asks squeue about its jobs.", cli=False)


class SlurmExecutor(Executor):
    """One submitit job per cell, submitted together as one Slurm job array; the driver waits for them.

    submitit sends SIGUSR2 before the time limit or on preemption; `CellTask.checkpoint` then stops the run at its
    next iteration and the job is requeued, resuming from that checkpoint. A job that ends without a result (node
    failure, killed) leaves its cell failed with the reason; `--retry-failed` continues it from its checkpoint.
    """

    def __init__(self, out_dir: Path, config: SlurmConfig, device: str = "auto", gpus_per_job: float = 1.0,
                 threads: int | None = None, name: str = "resdepth"):
        self.submitit = import_submitit()
        self.config = config
        check_slurm_config(config, device, gpus_per_job)
        check_sbatch(config)
        # Slurm picks each job's GPU and shows it as the job's only one, cuda:0: an index given here names a GPU of
        # the submitting machine, not of the node (Ray's cells do the same, ray_device)
        self.device = "cuda" if device.startswith("cuda") else device
        self.threads = threads or config.cpus_per_job
        gpus = 0 if device == "cpu" else int(gpus_per_job)
        resources: dict[str, Any] = {"slurm_gres": config.gres} if config.gres and gpus else {"gpus_per_node": gpus}
        ensure_writable_dir(out_dir)
        self.log_folder = out_dir.resolve() / SLURM_LOGS / "%j"  # submitit puts each job's files in <job id>/
        self.executor = self.submitit.AutoExecutor(folder=self.log_folder, cluster=config.cluster,
                                                   slurm_max_num_timeout=config.max_timeouts,
                                                   local_max_num_timeout=config.max_timeouts,
                                                   slurm_python=submitit_python(), local_python=submitit_python())
        self.executor.update_parameters(
            name=f"resdepth-{name}", timeout_min=config.time, cpus_per_task=self.threads, **resources,
            mem_gb=config.mem_gb, slurm_partition=config.partition, slurm_account=config.account,
            slurm_qos=config.qos, slurm_constraint=config.constraint, slurm_array_parallelism=config.array_parallelism,
            slurm_setup=list(config.setup) or None, local_setup=list(config.setup) or None)
        self._jobs: dict[Any, tuple[list[Path], Future[CellOutcome]]] = {}  # submitit job -> (run folders, future)
        self._ended_at: dict[Any, float] = {}  # when a job was first seen ended without its result file
        self._lock = threading.Lock()
        self._interrupted = False
        self._closing = threading.Event()
        self._watcher = threading.Thread(target=self._watch, name="resdepth-slurm-watch", daemon=True)
        self._watcher.start()

    def submit(self, job: CellJob) -> Future[CellOutcome]:
        return self.submit_all([job])[0]

    def submit_all(self, jobs: list[CellJob]) -> list[Future[CellOutcome]]:
        tasks = [CellTask(job.run_dir.resolve(), self.device, self.threads, uuid.uuid4().hex,
                          tuple(run_dir.resolve() for run_dir in job.fused_with)) for job in jobs]
        said: list[str] = []
        try:
            with stderr_into(said):
                submitted = self.executor.submit_array(tasks)
        except Exception as exc:  # noqa: BLE001 - the job raised: its message is the cell's error
            reason = "; ".join(line.removeprefix("sbatch: error: ") for line in said[-3:]) or last_line(str(exc))
            raise UserError(f"Slurm refused the jobs ({reason}): check that `sinfo` reaches the cluster from here, "
                            "then --slurm-partition/--slurm-account/--slurm-qos/--slurm-time against it") from None
        futures: list[Future[CellOutcome]] = [Future() for _ in submitted]
        with self._lock:
            for task, slurm_job, future in zip(tasks, submitted, futures, strict=True):
                self._jobs[slurm_job] = (task.run_dirs, future)
        return futures

    def _watch(self) -> None:
        while not self._closing.wait(self.config.poll_seconds):
            with self._lock:
                jobs = list(self._jobs)
            if not jobs:
                continue
            try:
                ended = self._ended_jobs(jobs)
            except (OSError, subprocess.SubprocessError) as exc:  # squeue hiccup: ask again next time
                logging.getLogger(__name__).warning("cannot ask Slurm about the sweep's jobs: %s", exc)
                continue
            for job in ended:
                with self._lock:
                    run_dirs, future = self._jobs.pop(job)
                    self._ended_at.pop(job, None)
                future.set_result(self._outcome(job, run_dirs))

    def _ended_jobs(self, jobs: list[Any]) -> list[Any]:
        """The jobs that have their result, or have left the queue without one for a grace period."""
        has_result = [job for job in jobs if job.paths.result_pickle.exists()]
        waiting = [job for job in jobs if job not in has_result]
        local = self.config.cluster == "local"
        states = {} if local else queue_states([job.job_id for job in waiting])
        grace = 1.0 if local else RESULT_GRACE_SECONDS
        now, ended = time.time(), list(has_result)
        for job in waiting:
            gone = job.done() if local else states.get(job.job_id, "GONE") in SLURM_ENDED | {"GONE"}
            if gone and now - self._ended_at.setdefault(job, now) >= grace:
                ended.append(job)
        return ended

    def _outcome(self, job: Any, run_dirs: list[Path]) -> CellOutcome:
        """How a job ended, from each of its cells' run folders and the text of its log. The job's result pickle
        is never loaded: a results folder that others can write must not be able to run code in this process."""
        return job_outcome([self._cell_outcome(job, run_dir) for run_dir in run_dirs])

    def _cell_outcome(self, job: Any, run_dir: Path) -> CellOutcome:
        """How one cell of the job ended, read from its run folder (and the job's log when it recorded no end)."""
        try:
            status = RunStatus.read_or_none(run_dir) or RunStatus()
            if status.state not in ("running", "pending"):  # the run recorded its own end
                return outcome_from_status(run_dir, exit_code=0)
            if self._interrupted and status.state == "pending":
                return cancelled_before_start(run_dir)
            if self._interrupted:  # stopped before it could checkpoint: resumable all the same
                set_state(run_dir, "interrupted")
                return CellOutcome(run_dir, "interrupted", error="stopped before its mid-epoch checkpoint")
            if job.paths.result_pickle.exists() and is_locked(run_dir):  # the task found another run holding it
                return busy_outcome(run_dir)
            ended = "failed" if job.paths.result_pickle.exists() else "ended without a result"
            where = log_gist(job.paths.stderr) or f"; see its log in {job.paths.folder}"
            return outcome_without_result(run_dir, f"Slurm job {job.job_id} {ended}{where}")
        except OSError as unreadable:  # the future must resolve, or the sweep would wait forever
            return CellOutcome(run_dir, "failed", error=f"Slurm job {job.job_id}: run folder unreadable ({unreadable})")

    def interrupt(self) -> None:
        """Cancel cells still queued; running ones get SIGINT, checkpoint and stop (no requeue)."""
        self._interrupted = True
        with self._lock:
            items = list(self._jobs.items())
        if self.config.cluster == "local":
            for job, (run_dirs, _future) in items:
                if not signal_local_task(run_dirs[0]):
                    job.cancel()  # not training yet: submitit stops its process
            return
        ids = [job.job_id for job, _ in items]
        if ids:
            subprocess.run(["scancel", "--state=PENDING", *ids], capture_output=True, timeout=60)
            subprocess.run(["scancel", "--signal=INT", *ids], capture_output=True, timeout=60)

    def shutdown(self) -> None:
        self._closing.set()
        self._watcher.join()
        literal = self.log_folder  # submitit's local controller also makes the folder named as given, '%j' and all
        if self.config.cluster == "local" and literal.is_dir() and not any(literal.iterdir()):
            literal.rmdir()


def import_submitit() -> Any:
    try:
        import submitit
    except ImportError:
        raise UserError(f"--executor slurm needs submitit here and on the nodes: {SLURM_INSTALL}") from None
    return submitit


def submitit_python() -> str:
    """The shell command submitit runs `-u -m submitit.core._submit` with on a node: this interpreter, without the
    job's working folder first on sys.path (startup.py says why)."""
    return shlex.join(python_command())


def check_slurm_config(config: SlurmConfig, device: str, gpus_per_job: float) -> None:
    """What can be told wrong before anything is submitted (the values alone: also checked when planning)."""
    if config.cluster not in ("slurm", "local"):
        raise UserError(f"[slurm] cluster must be slurm or local (submitit's local executor), got {config.cluster!r}")
    for name, smallest in (("time", 1), ("cpus_per_job", 1), ("array_parallelism", 1), ("max_timeouts", 0)):
        if getattr(config, name) < smallest:
            field = next(f for f in fields(SlurmConfig) if f.name == name)
            given = f"{flag_name(field)} (or [slurm] {name})" if field.metadata["cli"] else f"[slurm] {name}"
            raise UserError(f"{given} must be at least {smallest}, got {getattr(config, name)}")
    if device != "cpu" and gpus_per_job != 1:
        raise UserError(f"Slurm gives a job whole GPUs and a cell trains on one: --gpus-per-job 1, not "
                        f"{gpus_per_job:g} (to share a GPU between cells use --executor ray)")
    if config.gres is not None:
        check_gres(config.gres, device)


def check_gres(gres: str, device: str) -> None:
    """--slurm-gres: one GPU, as NAME[:TYPE]:1 or NAME[:TYPE] (a count of 1), and only for cells that train on one.
    Its text becomes an #SBATCH line, so nothing but a resource's characters passes."""
    if device == "cpu":
        raise UserError("--slurm-gres asks Slurm for each cell's GPU, but --device cpu trains on the CPU: drop "
                        "--slurm-gres (or [slurm] gres)")
    parts = gres.split(":")
    count = parts[-1] if len(parts) > 1 and parts[-1].isdigit() else "1"
    if not re.fullmatch(r"[A-Za-z][\w.-]*(:[\w.-]+)*", gres) or count != "1" or len(parts) > 3:
        raise UserError(f"--slurm-gres must name one GPU as Slurm's --gres does, NAME[:TYPE][:1] (gpu:1, "
                        f"gpu:a100:1), got {gres!r}: a cell trains on one GPU")


SLURM_ANSWER_SECONDS = 30  # sinfo's answer from a controller that is up takes well under a second


def check_sbatch(config: SlurmConfig) -> None:
    """sbatch here, and a controller that answers `sinfo` (otherwise every job would be refused at submission)."""
    if config.cluster != "slurm":
        return
    if shutil.which("sbatch") is None:
        raise UserError("--executor slurm needs Slurm's sbatch on PATH: run the sweep from a login node of the cluster")
    if shutil.which("sinfo") is None:
        return
    try:
        answer = subprocess.run(["sinfo", "--noheader", "--format=%P"], capture_output=True, text=True,
                                timeout=SLURM_ANSWER_SECONDS, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise UserError(f"Slurm did not answer `sinfo` within {SLURM_ANSWER_SECONDS} s: check that the cluster's "
                        "controller is up and reachable from here") from None
    if answer.returncode != 0:
        said = next((line for line in reversed(answer.stderr.splitlines()) if line.strip()), "no reason given")
        said = said.strip().removeprefix("sinfo: ")
        raise UserError(f"Slurm does not answer here (sinfo: {said}): run the sweep from a login node of the "
                        "cluster, where `sinfo` lists its partitions")



@contextlib.contextmanager
def stderr_into(lines: list[str]) -> Iterator[None]:
    """Collect what child processes (sbatch) write to stderr, to report it in one line instead of raw."""
    with tempfile.TemporaryFile(mode="w+") as sink:
        sys.stderr.flush()
        saved = os.dup(2)
        os.dup2(sink.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            lines.extend(line.strip() for line in sink if line.strip())


def queue_states(job_ids: list[str]) -> dict[str, str]:
    """squeue's state of each listed job still known to Slurm (array tasks one by one: JOBID_TASK).

    A job Slurm no longer knows is absent; a squeue that fails otherwise (controller busy) raises OSError, so that
    a slow controller never makes running jobs look finished.
    """
    states = {}
    for array in sorted({job_id.split("_")[0] for job_id in job_ids}):
        listing = subprocess.run(["squeue", "--array", "--noheader", "--format=%i|%T", "--jobs", array],
                                 capture_output=True, text=True, timeout=60)
        if listing.returncode != 0:
            if "invalid job id" in listing.stderr.lower():
                continue  # ended long enough ago that Slurm has forgotten it
            raise OSError(f"squeue: {last_line(listing.stderr)}")
        for line in listing.stdout.splitlines():
            job_id, _, state = line.strip().partition("|")
            states[job_id] = state
    return states


def signal_local_task(run_dir: Path) -> bool:
    """SIGINT to the process training this cell on this machine (submitit's local executor), found in task.json."""
    attempt = recorded_task(run_dir)
    if attempt.get("host") != socket.gethostname() or not attempt.get("pid"):
        return False
    try:
        os.kill(int(attempt["pid"]), signal.SIGINT)
    except ProcessLookupError:
        return False
    return True
