"""What the runs of a results folder are doing, read from the folder alone: for `resdepth status [--watch]`.

Everything comes from the files each run keeps up to date (status.json, config.json, the lock, task.json) and
from the sweep's own sweep.json, so it works from any machine that mounts the folder, while the sweep runs in
another terminal or on a cluster's nodes, or after it ended. It returns data; the CLI displays it.
"""

from __future__ import annotations

import math
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ..config import from_dict
from ..errors import UserError
from ..models.families import Family, family_of_run
from ..results.runs import (
    CONFIG_FILE,
    REPLACED_MARK,
    STOPPED,
    TERMINAL_STATES,
    RunStatus,
    check_run_config,
    config_problem,
    find_run_dirs,
    read_json,
    writer_gone,
)
from ..train.trainer import TrainConfig, steps_per_epoch
from .cell import is_locked
from .cluster import recorded_task
from .runner import SWEEP_FILE, SweepConfig, make_cells

NOT_STARTED = "not started"  # a cell of sweep.json whose folder the sweep has not made yet
UNREADABLE = "unreadable"  # its config.json or status.json is not what resdepth writes (the note says what)


@dataclass
class CellState:
    """One run as its files show it now. Errors in %; seconds for elapsed and eta."""

    name: str  # the run folder, relative to the results folder
    run_dir: Path
    state: str  # pending, running, interrupted, done, failed, diverged, or NOT_STARTED / STOPPED
    epoch: int = 0
    epochs: int | None = None
    iteration: int = 0
    iterations: int | None = None
    train_error: float | None = None
    test_error: float | None = None
    images_per_second: float | None = None
    elapsed: float | None = None  # since the run (last) started or resumed, up to its latest update
    eta: float | None = None  # running cells: training time left at the current img/s (evaluation not counted)
    where: str = ""  # host and device, and the Slurm job where there is one
    updated_ago: float | None = None  # seconds since status.json was last written
    resumes_from: int | None = None  # a stopped cell's last checkpoint, where it is behind its last iteration
    error: str | None = None

    @property
    def ended(self) -> bool:
        return self.state in TERMINAL_STATES


@dataclass
class FolderStatus:
    """Every run under a results folder: each sweep's cells in the sweep's order (those not started yet too),
    then any other run folders."""

    root: Path
    cells: list[CellState]
    sweeps: dict[Path, str] = field(default_factory=dict)  # folder holding sweep.json -> its executor
    warnings: list[str] = field(default_factory=list)
    read_at: float = field(default_factory=time.time)

    def counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for cell in self.cells:
            counts[cell.state] = counts.get(cell.state, 0) + 1
        return counts

    @property
    def iterations_done(self) -> int:
        return sum(cell.iteration for cell in self.cells)

    @property
    def iterations_planned(self) -> int | None:
        """All cells' iterations, or None where a cell's are not known yet (--epochs before its data is read)."""
        planned = [cell.iterations for cell in self.cells]
        return None if None in planned else sum(p for p in planned if p is not None)

    @property
    def longest_eta(self) -> float | None:
        etas = [cell.eta for cell in self.cells if cell.eta is not None]
        return max(etas) if etas else None

    @property
    def ended(self) -> bool:
        """Every cell is done, failed or diverged: nothing more will happen without a new command."""
        return all(cell.ended for cell in self.cells)

    @property
    def at_rest(self) -> bool:
        """No cell runs or waits to start: the rest are ended, interrupted, stopped (their process gone) or
        unreadable, and stay so until a new command (`sweep --resume`)."""
        return not any(cell.state in ("running", "pending", NOT_STARTED) for cell in self.cells)


def read_folder_status(root: Path) -> FolderStatus:
    """The state of every run under root (recursively) and of the cells its sweep.json files plan."""
    if not root.is_dir():
        raise UserError(f"results folder {root} does not exist: pass the --out folder of a sweep, e.g. results/smoke")
    sweeps, warnings = planned_cells(root)
    planned = {run_dir: config for _, cells in sweeps.values() for run_dir, config in cells}
    found, _ = find_run_dirs(root)
    run_dirs, skipped = own_run_dirs([run_dir for run_dir in found if run_dir not in planned])
    if not planned and not run_dirs and skipped:  # as table, plot and report refuse it
        raise UserError(f"no readable runs under {root}: {len(skipped)} run folder(s), all skipped "
                        f"(first: {skipped[0].removeprefix('skipped ')})")
    warnings += skipped
    order = list(dict.fromkeys([*planned, *run_dirs]))
    if not order:
        raise UserError(f"no runs or sweep under {root}: it holds no run folder (config.json) and no sweep.json")
    now = time.time()
    cells = [read_cell(root, run_dir, now) for run_dir in order]
    for _, members in sweeps.values():
        configs = dict(members)
        fill_planned_iterations([cell for cell in cells if cell.run_dir in configs], configs)
    return FolderStatus(root, cells, {folder: executor for folder, (executor, _) in sweeps.items()}, warnings, now)


def own_run_dirs(run_dirs: list[Path]) -> tuple[list[Path], list[str]]:
    """The folders whose config.json is a resdepth run's (its kind and depth at least), and a 'skipped' line for
    each of the others: a folder from something else is not a pending run."""
    own, skipped = [], []
    for run_dir in run_dirs:
        try:
            config = read_json(run_dir / CONFIG_FILE)
        except UserError:  # a link or a FIFO in a run's config.json: that cell is shown as unreadable (read_cell)
            own.append(run_dir)
            continue
        problem = config_problem(config) if isinstance(config, dict) else "config.json is not valid JSON"
        if not problem and not {"kind", "depth"} <= config.keys():
            problem = "config.json is not a resdepth run's (it names no kind and depth)"
        if problem:
            skipped.append(f"skipped {run_dir}: {problem}")
        else:
            own.append(run_dir)
    return own, skipped


def planned_cells(root: Path) -> tuple[dict[Path, tuple[str, list[tuple[Path, TrainConfig]]]], list[str]]:
    """Per folder holding a sweep.json: its executor and its cells (run folder, config) in the sweep's order;
    a warning per sweep.json that cannot be read."""
    found: dict[Path, tuple[str, list[tuple[Path, TrainConfig]]]] = {}
    warnings = []
    for path in sorted(p for p in root.rglob(SWEEP_FILE) if not any(
            part.startswith(".") or REPLACED_MARK in part for part in p.parts[len(root.parts):])):
        try:
            sweep = from_dict(SweepConfig, read_json(path), str(path))
            sweep.check_size()
            sweep.out = str(path.parent)
            cells = make_cells(sweep, recorded_families(path.parent))
            found[path.parent] = (sweep.executor, [(cell.run_dir, cell.config) for cell in cells])
        except UserError as exc:
            warnings.append(f"left out {path}: not a sweep resdepth can read ({exc})")
    return found, warnings


def recorded_families(folder: Path) -> Callable[[str], Family]:
    """How the sweep in folder names its cells' families without importing a user's module (status reads results:
    it runs no code from them): a built-in family by name, else as a started run's config.json records it, else a
    bare family of that name (its cells then show no shortcut in their names, as the family's default)."""
    recorded: dict[str, Family] = {}
    for config_file in sorted(folder.glob(f"*/{CONFIG_FILE}")):
        try:
            config = read_json(config_file)
        except UserError:  # a link or a FIFO: its cell shows as unreadable, the sweep's other cells as they are
            continue
        if isinstance(config, dict) and "kind" in config:
            recorded.setdefault(str(config["kind"]), family_of_run(config))
    return lambda kind: recorded.get(kind) or family_of_run({"kind": kind})


def recorded_train_size(run_dir: Path) -> int | None:
    try:
        config = read_json(run_dir / CONFIG_FILE)
    except UserError:  # replaced by a link or a FIFO since its cell was read
        return None
    resolved = config.get("resolved") if isinstance(config, dict) else None
    size = resolved.get("train_size") if isinstance(resolved, dict) else None
    return size if isinstance(size, int) and not isinstance(size, bool) and size > 0 else None


def fill_planned_iterations(cells: list[CellState], configs: dict[Path, TrainConfig]) -> None:
    """The iterations of a sweep's cells that have not started: given, or --epochs over the training split's
    size, which every cell of a sweep shares and a started cell's config.json records."""
    sizes = [recorded_train_size(cell.run_dir) for cell in cells if cell.state not in (NOT_STARTED, UNREADABLE)]
    train_size = next((size for size in sizes if size), None)
    for cell in cells:
        config = configs[cell.run_dir]
        if cell.iterations is None and config.epochs is None:
            cell.iterations = config.iterations
        elif cell.iterations is None and train_size:
            cell.iterations = config.epochs * steps_per_epoch(train_size, config.batch_size)


def read_cell(root: Path, run_dir: Path, now: float) -> CellState:
    """A cell as its files show it; one whose config.json or status.json is malformed is shown as unreadable, with
    what is wrong (the file and the key)."""
    name = run_dir.name if run_dir == root else str(run_dir.relative_to(root))
    try:
        return read_cell_files(name, run_dir, now)
    except UserError as exc:
        return CellState(name, run_dir, UNREADABLE, error=str(exc))


def read_cell_files(name: str, run_dir: Path, now: float) -> CellState:
    config = read_json(run_dir / CONFIG_FILE)
    if config is None and os.path.lexists(run_dir / CONFIG_FILE):
        raise UserError(f"{run_dir / CONFIG_FILE} is not valid JSON")
    if config is None:
        return CellState(name, run_dir, NOT_STARTED)
    check_run_config(config, str(run_dir / CONFIG_FILE))
    status = RunStatus.read(run_dir)
    planned = planned_iterations(config)
    if status is None:
        return CellState(name, run_dir, "pending", iterations=planned)
    state = status.state
    if state == "running" and not process_alive(run_dir, status, now):
        state = STOPPED
    cell = CellState(name, run_dir, state, epoch=status.epoch, epochs=status.epochs or None, iteration=status.iteration,
                     iterations=status.iterations or planned, train_error=status.train_error,
                     test_error=status.test_error, images_per_second=status.images_per_second,
                     where=where(run_dir, status), error=status.error)
    # status.json's times and numbers are as RunStatus.read took them: 0.0 for a time not known, None for a speed
    if status.updated:
        cell.updated_ago = max(0.0, now - status.updated)
    if state == STOPPED and status.saved_iteration is not None and status.saved_iteration < status.iteration:
        cell.resumes_from = status.saved_iteration
    until = now if state == "running" else status.updated
    if state != "pending" and status.started and until:
        cell.elapsed = max(0.0, until - status.started)
    batch = config.get("batch_size", 128)
    if (state == "running" and cell.iterations and status.images_per_second and status.images_per_second > 0
            and isinstance(batch, int) and batch > 0):
        eta = max(0, cell.iterations - status.iteration) * batch / status.images_per_second
        cell.eta = eta if math.isfinite(eta) else None  # a speed of 1e-320 img/s is no time left that a clock shows
    return cell


def planned_iterations(config: dict) -> int | None:
    """A run's iterations from its config.json: resolved once it started; else known unless given as --epochs."""
    resolved = (config.get("resolved") or {}).get("iterations")  # check_run_config: an int, or null or absent
    if resolved is not None:
        return int(resolved)
    iterations = config.get("iterations")
    return int(iterations) if config.get("epochs") is None and iterations is not None else None


def process_alive(run_dir: Path, status: RunStatus, now: float) -> bool:
    """Is the process that wrote 'running' still at it? Exactly on its own host; elsewhere by its lock and how
    recently it wrote status.json (the rule the sweep runner uses for a lock held on another host)."""
    return not writer_gone(status, now) or (status.host != socket.gethostname() and is_locked(run_dir))


def where(run_dir: Path, status: RunStatus) -> str:
    """Host and device, and the Slurm job that task.json names: a task.json that is not an object, a link or a FIFO
    names none (it only adds to where the run is; the cell's state does not depend on it)."""
    slurm_job = recorded_task(run_dir).get("slurm_job")
    shown = isinstance(slurm_job, (str, int)) and not isinstance(slurm_job, bool) and 0 < len(str(slurm_job)) <= 64
    job = f" slurm job {slurm_job}" if shown else ""
    return " ".join(filter(None, (status.host, status.device))) + job
