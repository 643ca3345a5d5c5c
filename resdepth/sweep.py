"""Sweeps: the grid depths x kinds x seeds, planned against what the results folder already holds, then run.

The runner decides what to run (skip finished, resume unfinished, refuse mismatched folders) and on which
slot (GPU or CPU share); an `Executor` only runs it. `run_sweep` returns data; the CLI displays it.
"""

from __future__ import annotations

import os
import typing
from concurrent.futures import FIRST_COMPLETED, Future, wait
from dataclasses import asdict, dataclass, field, fields, is_dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Any, Callable

try:
    import tomllib
except ImportError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

from .cell import CellOutcome, is_locked
from .cluster import SlurmConfig, check_slurm_config
from .data import DataConfig
from .errors import UserError
from .executors import EXECUTORS, CellJob, Executor
from .models import check_kind, blocks_per_stage
from .results import (CHECKPOINT_FILE, CONFIG_FILE, TERMINAL_STATES, RunStatus, ensure_writable_dir, read_json,
                      write_config, write_json)
from .groups import comparable
from .train import TrainConfig, resolve_device

SWEEP_FILE = "sweep.json"  # the sweep's own config, saved in its results folder so --resume can rebuild it


@dataclass
class SweepConfig:
    name: str | None = None  # results go to results/<name> (default: the dataset's name) unless `out` is set
    depths: list[int] = field(default_factory=lambda: [20, 32, 44, 56])  # Figure 6's depths (110 is opt-in: slow)
    kinds: list[str] = field(default_factory=lambda: ["plain", "residual"])
    seeds: list[int] = field(default_factory=lambda: [0])
    out: str | None = None
    train: TrainConfig = field(default_factory=TrainConfig)
    executor: str = "auto"  # auto: in-process for one job at a time, one process per job for several
    jobs: int = 1  # CPU jobs at once; each gets cores/jobs torch threads
    gpus: list[int] | None = None  # None: every visible GPU when the device is auto/cuda
    jobs_per_gpu: int = 1
    ray_address: str | None = None  # ray: auto or HOST:PORT of a cluster; None: $RAY_ADDRESS, else a new local one
    gpus_per_job: float = 1.0  # ray: the GPU share each cell asks for (0.5: two cells per GPU); slurm: 1
    slurm: SlurmConfig = field(default_factory=SlurmConfig)  # slurm: what each cell's job asks for
    retry_failed: bool = False  # run failed and diverged cells again (from their last checkpoint)
    force: bool = False  # start mismatched run folders over, keeping the old ones renamed aside

    def out_dir(self) -> Path:
        return Path(self.out) if self.out else Path("results") / (self.name or self.train.data.dataset)

    def validate(self) -> None:
        """Everything that can be checked without running: a dry run refuses what the real run would."""
        if not self.depths or not self.kinds or not self.seeds:
            raise UserError("a sweep needs at least one depth, one kind and one seed")
        for option, values in (("--depths", self.depths), ("--kinds", self.kinds), ("--seeds", self.seeds)):
            repeated = sorted({str(v) for v in values if values.count(v) > 1})
            if repeated:
                raise UserError(f"{option} lists {', '.join(repeated)} more than once: name each value once")
        if any(seed < 0 for seed in self.seeds):
            raise UserError(f"--seed must be 0 or a positive integer, got {min(self.seeds)}")
        for depth in self.depths:
            blocks_per_stage(depth)
        for kind in self.kinds:
            check_kind(kind)
        if self.name is not None and (not self.name.strip(".") or any(sep in self.name for sep in "/\\")):
            raise UserError(f"--name {self.name!r} must be a plain folder name (no '/', not '.' or '..'): "
                            "use --out for a path")
        if self.executor not in EXECUTORS:
            raise UserError(f"unknown executor {self.executor!r}: use one of {', '.join(EXECUTORS)}")
        if self.jobs < 1 or self.jobs_per_gpu < 1:
            raise UserError("--jobs and --jobs-per-gpu must be positive integers")
        if self.gpus is not None and (self.train.device == "cpu" or any(gpu < 0 for gpu in self.gpus)):
            raise UserError("--gpus lists CUDA GPU numbers (0, 1, ...) and needs --device auto or cuda: "
                            "on the CPU use --jobs instead")
        if self.executor == "slurm":
            check_slurm_config(self.slurm, self.train.device, self.gpus_per_job)
        self.train.validate()


@dataclass
class Cell:
    name: str
    run_dir: Path
    config: TrainConfig


@dataclass
class PlannedCell:
    cell: Cell
    action: str  # new, resume, skip-done, skip-failed, skip-diverged, retry, busy
    device: str = ""


RUNNABLE = ("new", "resume", "retry", "replace")


# ---------------------------------------------------------------------------------------------- the grid
def cell_name(config: TrainConfig) -> str:
    shortcut = f"-{config.shortcut}" if config.kind == "residual" and config.shortcut != "A" else ""
    return f"{config.kind}-{config.depth}{shortcut}-s{config.seed}"


def make_cells(sweep: SweepConfig) -> list[Cell]:
    cells = []
    for depth in sweep.depths:
        for kind in sweep.kinds:
            for seed in sweep.seeds:
                config = replace(sweep.train, kind=kind, depth=depth, seed=seed)
                cells.append(Cell(cell_name(config), sweep.out_dir() / cell_name(config), config))
    return cells


def device_slots(sweep: SweepConfig) -> list[str]:
    """One entry per concurrent job: a GPU (repeated jobs_per_gpu times) or 'cpu'; with Ray, one per cell."""
    if sweep.executor in ("ray", "slurm"):  # every cell is submitted at once; the scheduler places each
        return [sweep.executor] * len(make_cells(sweep))
    import torch

    device, gpus = sweep.train.device, sweep.gpus
    visible = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if gpus is None and device in ("auto", "cuda"):
        gpus = list(range(visible)) or None
    if device != "auto" or gpus:
        resolve_device(device if device != "auto" else "cuda")  # here, where the cells run: refused before any starts
    if gpus and max(gpus) >= visible:
        raise UserError(f"--gpus {','.join(map(str, gpus))}: this machine has {visible} CUDA GPU(s), numbered from 0")
    if gpus:
        slots = [f"cuda:{gpu}" for gpu in gpus for _ in range(sweep.jobs_per_gpu)]
    else:
        slots = [device if device not in ("auto", "cpu") else "cpu"] * sweep.jobs
    if sweep.train.cuda_graph and slots[0] == "cpu":
        raise UserError("--cuda-graph needs a CUDA device, and this sweep runs on the CPU: leave it out")
    return slots


def threads_per_job(slots: list[str]) -> int:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores // len(slots))


# ---------------------------------------------------------------------------------------------- planning
def plan_sweep(sweep: SweepConfig) -> list[PlannedCell]:
    """What each cell will do, judged from its folder; mismatched folders are refused unless --force."""
    sweep.validate()
    planned = [PlannedCell(cell, plan_action(cell, sweep.retry_failed)) for cell in make_cells(sweep)]
    mismatched = [p for p in planned if p.action == "mismatch"]
    if mismatched and not sweep.force:
        first = mismatched[0].cell
        raise UserError(
            f"{first.run_dir} holds a run with a different config ({describe_difference(first)}); "
            f"{len(mismatched)} folder(s) differ: use another --out folder, or --force to start them over "
            "(the old folders are kept, renamed)")
    for item in mismatched:
        item.action = "replace"
    slots = device_slots(sweep)
    for index, item in enumerate(p for p in planned if p.action in RUNNABLE):
        item.device = slots[index % len(slots)]
    return planned


def plan_action(cell: Cell, retry_failed: bool) -> str:
    existing = read_json(cell.run_dir / CONFIG_FILE)
    if is_locked(cell.run_dir):
        return "busy"  # before any mismatch: --force must never move a folder that a live run writes into
    if existing is None:
        return "new"
    if comparable(asdict(TrainConfig.from_dict(existing))) != comparable(asdict(cell.config)):
        return "mismatch"
    status = RunStatus.read(cell.run_dir)
    state = status.state if status else "pending"
    if state == "done":
        return "skip-done"
    if state in TERMINAL_STATES:
        return "retry" if retry_failed else f"skip-{state}"
    return "resume" if (cell.run_dir / CHECKPOINT_FILE).exists() else "new"


def describe_difference(cell: Cell) -> str:
    old = comparable(asdict(TrainConfig.from_dict(read_json(cell.run_dir / CONFIG_FILE) or {})))
    new = comparable(asdict(cell.config))
    diffs = [f"{key}: {old.get(key)} there, {new.get(key)} asked" for key in new if old.get(key) != new.get(key)]
    return "; ".join(diffs[:3])


def prepare_run_dir(item: PlannedCell) -> None:
    """Create the folder (moving a mismatched one aside) and write the config the worker will read."""
    run_dir = item.cell.run_dir
    if item.action == "replace":
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        run_dir.rename(run_dir.with_name(f"{run_dir.name}.replaced-{stamp}"))
    ensure_writable_dir(run_dir)
    if is_locked(run_dir):
        return  # another sweep process started this cell since planning: its config.json and status are its own
    if item.action in ("new", "replace") or not (run_dir / CONFIG_FILE).exists():
        write_config(run_dir, asdict(item.cell.config))
        RunStatus(state="pending").write(run_dir)


# ---------------------------------------------------------------------------------------------- running
@dataclass
class SweepProgress:
    """What a display needs at one moment: every cell's latest status and the outcomes so far."""

    planned: list[PlannedCell]
    running: dict[str, RunStatus]
    outcomes: dict[str, CellOutcome]


def run_sweep(sweep: SweepConfig, executor: Executor, planned: list[PlannedCell],
              on_progress: Callable[[SweepProgress], None] = lambda _: None,
              stop_requested: Callable[[], bool] = lambda: False, poll_seconds: float = 0.5) -> dict[str, CellOutcome]:
    """Run every runnable cell on the executor, at most one per slot at a time; returns each cell's outcome."""
    ensure_writable_dir(sweep.out_dir())
    write_json(sweep.out_dir() / SWEEP_FILE, asdict(sweep))
    slots = device_slots(sweep)
    threads = sweep.train.threads or threads_per_job(slots)
    queue = [p for p in planned if p.action in RUNNABLE]
    free = list(slots)
    running: dict[Future[CellOutcome], tuple[PlannedCell, str]] = {}
    outcomes: dict[str, CellOutcome] = {}
    interrupted = False
    while queue or running:
        if stop_requested() and not interrupted:
            interrupted = True
            executor.interrupt()
        starting = []
        while queue and free and not interrupted:
            item, slot = queue.pop(0), free.pop(0)
            try:
                prepare_run_dir(item)
            except (OSError, UserError) as exc:  # this cell's folder only (say a read-only mount): the rest go on
                outcomes[item.cell.name] = CellOutcome(item.cell.run_dir, "failed", error=str(exc))
                free.append(slot)
                continue
            starting.append((item, slot))
        if starting:
            futures = executor.submit_all([CellJob(item.cell.run_dir, slot, threads) for item, slot in starting])
            running.update(zip(futures, starting))
        done, _ = wait(list(running), timeout=poll_seconds, return_when=FIRST_COMPLETED)
        for future in done:
            item, slot = running.pop(future)
            free.append(slot)
            outcomes[item.cell.name] = future.result()
        live = {item.cell.name: RunStatus.read(item.cell.run_dir) for item, _ in running.values()}
        on_progress(SweepProgress(planned, {k: v for k, v in live.items() if v}, outcomes))
        if not running and interrupted:
            break
    executor.shutdown()
    return outcomes


# ---------------------------------------------------------------------------------------------- sweep files
def load_sweep_file(path: Path) -> SweepConfig:
    """A TOML sweep file: top-level sweep keys and [train] (TrainConfig), [data] (DataConfig), [slurm] tables."""
    try:
        payload = tomllib.loads(path.read_text())
    except OSError as exc:
        raise UserError(f"cannot read sweep file {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise UserError(f"{path} is not valid TOML: {exc}") from None
    payload.setdefault("name", path.stem)
    tables = {section: payload.pop(section, {}) for section in ("train", "data", "slurm")}
    for section, value in tables.items():
        if not isinstance(value, dict):
            raise UserError(f"{path}: [{section}] must be a table")
    if {"iterations", "epochs"} <= tables["train"].keys():
        raise UserError(f"{path}: [train] sets both iterations and epochs: keep one, the run's length")
    sweep_values = typed_values(SweepConfig, payload, path, "")
    train_values = typed_values(TrainConfig, tables["train"], path, "train.")
    train_values["data"] = DataConfig(**typed_values(DataConfig, tables["data"], path, "data."))
    slurm = SlurmConfig(**typed_values(SlurmConfig, tables["slurm"], path, "slurm."))
    return SweepConfig(**sweep_values, train=TrainConfig(**train_values), slurm=slurm)


def typed_values(cls: type, values: dict[str, Any], path: Path, prefix: str) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    known = {f.name for f in fields(cls) if not is_dataclass(hints[f.name])}
    result = {}
    for key, value in values.items():
        if key not in known:
            raise UserError(f"{path}: unknown key {prefix}{key} (known: {', '.join(sorted(known))})")
        result[key] = check_type(value, hints[key], f"{path}: key {prefix}{key}")
    return result


def check_type(value: Any, hint: Any, where: str) -> Any:
    """Accept value if it fits the annotation (ints for floats too); else one line saying what was expected."""
    options = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, getattr(__import__("types"), "UnionType")) else (hint,)
    for option in options:
        origin = typing.get_origin(option)
        if option is type(None) and value is None:
            return value
        if option is bool and isinstance(value, bool):
            return value
        if option is int and isinstance(value, int) and not isinstance(value, bool):
            return value
        if option is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if option is str and isinstance(value, str):
            return value
        if origin in (list, tuple) and isinstance(value, list):
            inner = typing.get_args(option)[0]
            items = [check_type(item, inner, where) for item in value]
            return tuple(items) if origin is tuple else items
    expected = " or ".join(getattr(o, "__name__", str(o)) for o in options).replace("NoneType", "nothing")
    raise UserError(f"{where}: expected {expected}, got {value!r}")


def sweep_from_dict(payload: dict[str, Any]) -> SweepConfig:
    train = TrainConfig.from_dict(payload.get("train", {}))
    slurm_fields = SlurmConfig.__dataclass_fields__
    slurm = SlurmConfig(**{k: v for k, v in (payload.get("slurm") or {}).items() if k in slurm_fields})
    values = {k: v for k, v in payload.items() if k in SweepConfig.__dataclass_fields__ and k not in ("train", "slurm")}
    return SweepConfig(**values, train=train, slurm=slurm)


def load_saved_sweep(results_dir: Path) -> SweepConfig:
    path = results_dir / SWEEP_FILE
    if not path.is_file():
        raise UserError(f"{results_dir} holds no {SWEEP_FILE}: pass the --out folder of an earlier sweep to --resume")
    payload = read_json(path)
    try:
        if not isinstance(payload, dict):
            raise TypeError("not valid JSON" if payload is None else "not a JSON object")
        sweep = sweep_from_dict(payload)
        sweep.validate()
    except (TypeError, ValueError, AttributeError, UserError) as exc:
        raise UserError(f"{path} is not a sweep that resdepth can resume ({exc}): rerun the sweep's own command "
                        "(same --out) instead of --resume") from None
    sweep.out = str(results_dir)
    return sweep


def count_actions(planned: list[PlannedCell]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for item in planned:
        counts[item.action] = counts.get(item.action, 0) + 1
    return counts
