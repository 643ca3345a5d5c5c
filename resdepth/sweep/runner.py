"""Sweeps: the grid depths x kinds x seeds (x any other axis, `grid.py`), planned against what the results folder
already holds, then run.

The runner decides what to run (skip finished, resume unfinished, refuse mismatched folders), on which slot
(GPU or CPU share), and with which executor (`make_executor`: the choice sits here, above executors.py and
cluster.py, which never see a SweepConfig). An `Executor` only runs jobs: a cell, or with `--fuse` a group of
cells that differ only in their seed, trained together
(`train/fused.py`). `run_sweep` returns data; the CLI displays it.
"""

from __future__ import annotations

import itertools
import json
import math
import os
from collections import Counter
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, wait
from dataclasses import asdict, dataclass, field, fields, replace
from datetime import datetime
from pathlib import Path
from typing import Any

try:
    import tomllib
except ImportError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

from ..config import EXECUTION, check_fields, documented, from_dict, option
from ..errors import UserError
from ..models.families import FIGURE6_FAMILIES, Family, check_builds, family_named_by_folder, get_family
from ..results.groups import EXECUTION_FIELDS, absolute_path, comparable, config_difference, dataset_name
from ..results.runs import (
    CHECKPOINT_FILE,
    CONFIG_FILE,
    TERMINAL_STATES,
    RunStatus,
    ensure_writable_dir,
    read_json,
    write_config,
    write_json,
)
from ..train.data import DataConfig, expected_classes
from ..train.devices import check_compile_possible, check_cuda_graph_device, resolve_device
from ..train.fused import auto_fuse, group_label, parse_fuse
from ..train.trainer import TrainConfig, asked_compile, network_change, run_config
from .cell import CellOutcome, RunLock, busy_outcome, describe_owner, each_cell, is_locked, mark_failed
from .cluster import (
    CLUSTER,
    RayExecutor,
    SlurmConfig,
    SlurmExecutor,
    check_ray_address,
    check_sbatch,
    check_slurm_config,
    import_ray,
    import_submitit,
)
from .executors import CellJob, Executor, LocalProcessExecutor, SequentialExecutor
from .grid import apply_axes, axis_label, axis_values, grid_axes, grid_points

SWEEP_FILE = "sweep.json"  # the sweep's own config, saved in its results folder so --resume can rebuild it
WHAT = "What to run"  # the help panel of the grid's options
EXECUTORS = ("auto", "sequential", "local", "ray", "slurm")
# Flags of one invocation, not of the sweep: never saved in sweep.json, so --resume does not repeat them.
INVOCATION_FIELDS = ("retry_failed", "force")
MAX_CELLS = 10_000  # the paper's whole §4.2 is under 100 cells; a larger grid is a typo or a planted sweep.json


@documented
@dataclass
class SweepConfig:
    """A grid of runs and how to execute it; saved as the results folder's sweep.json."""

    name: str | None = option(None, help="Sweep name: results go to results/<name>.", panel=WHAT,
                              default_text="the sweep file's name, else the dataset")
    # Figure 6's depths; 110 is opt-in, being the slowest
    depths: list[int] = option(help="Comma-separated depths (6n+2; 9n+2 for preact-bottleneck).", panel=WHAT,
                               default_factory=lambda: [20, 32, 44, 56], default_text="20,32,44,56")
    kinds: list[str] = option(help="Comma-separated network families: plain, residual, preact, preact-bottleneck, "
                                   "installed ones, module.path:function (`resdepth models`).", flag="--kind",
                              panel=WHAT, default_factory=lambda: list(FIGURE6_FAMILIES),
                              default_text=",".join(FIGURE6_FAMILIES))
    seeds: list[int] = option(help="Comma-separated seeds.", panel=WHAT, default_factory=lambda: [0], default_text="0")
    # Other axes (grid.py): a training or data field or a family's network option -> its values; {}: §4.2's grid
    grid: dict[str, list[Any]] = option(help="Other axes: KEY=V1,V2.", panel=WHAT, default_factory=dict, cli=False,
                                        default_text="none")
    out: str | None = option(None, help="Results folder; one sub-folder per run.", panel=WHAT,
                             default_text="results/<name, dataset or image folder>")
    train: TrainConfig = option(help="Each run's training.", default_factory=TrainConfig, cli=False)
    executor: str = option("auto", help="auto (in-process for one job at a time, a process per job for several), "
                                        "sequential, local, ray (a task per cell on a Ray cluster) or slurm (a job "
                                        "array through submitit).", panel=EXECUTION)
    jobs: int = option(1, help="CPU jobs at once (the cores are split between them).", panel=EXECUTION)
    gpus: list[int] | None = option(None, help="Comma-separated GPU indices.", panel=EXECUTION,
                                    default_text="every visible GPU with --device auto")
    jobs_per_gpu: int = option(1, help="Jobs sharing each GPU.", panel=EXECUTION)
    # A small net leaves a GPU mostly idle; K seeds fused fill it with one kernel per layer. 1 until measured faster.
    fuse: str | int = option("1", help="Train up to K cells that differ only in their seed as one job (each model is "
                                       "exactly its own run, only float sums differ); auto: K per depth as "
                                       "measured (BENCHMARKS.md).", panel=EXECUTION, default_text="1, no fusing")
    ray_address: str | None = option(None, help="--executor ray: the cluster, auto (started here by `ray start`) or "
                                                "HOST:PORT.", flag="--address", panel=CLUSTER,
                                     default_text="$RAY_ADDRESS, else a new local one")
    gpus_per_job: float = option(1.0, help="--executor ray: GPU share of each cell, e.g. 0.5 for two per GPU; "
                                           "slurm: 1 (whole GPUs).", panel=CLUSTER)
    slurm: SlurmConfig = option(help="--executor slurm: what each cell's job asks for.", default_factory=SlurmConfig,
                                cli=False)
    retry_failed: bool = option(False, help="Run failed and diverged cells again from their last checkpoint.",
                                panel=WHAT)
    force: bool = option(False, help="Start run folders whose config differs over (old folders are kept, renamed).",
                         panel=WHAT)

    def out_dir(self) -> Path:
        """--out; else results/ and the sweep's name, or the dataset (an image folder: the folder's own name, so two
        folders' sweeps do not meet in results/folder). --dataset-name, a label, leaves it as it is."""
        if self.out:
            return Path(self.out)
        data = self.train.data
        unlabelled = {"dataset": data.dataset, "data_dir": data.data_dir}
        return Path("results") / (self.name or dataset_name({"data": unlabelled}))

    def check_size(self) -> None:
        """Refuse a grid larger than any study runs before anything is planned (a 300k-cell sweep.json took minutes
        to plan and to show) and more concurrent jobs than it can start."""
        axes = {"depths": len(self.depths), "kinds": len(self.kinds), "seeds": len(self.seeds),
                **{f"{key} values": len(values) if isinstance(values, list) else 1
                   for key, values in self.grid.items()}}
        cells = math.prod(axes.values())
        if cells > MAX_CELLS:
            sizes = " x ".join(f"{count:,} {what}" for what, count in axes.items())
            raise UserError(f"the sweep has {cells:,} cells ({sizes}): at most {MAX_CELLS:,}; split it into several "
                            "sweeps")
        if max(self.jobs, self.jobs_per_gpu) > MAX_CELLS:
            raise UserError(f"--jobs and --jobs-per-gpu take at most {MAX_CELLS:,} (this machine runs {cpu_cores()} "
                            "CPU jobs at once)")

    def validate(self) -> None:
        """Everything that can be checked without running: a dry run refuses what the real run would."""
        check_fields(self)
        check_fields(self.slurm)
        if not self.depths or not self.kinds or not self.seeds:
            raise UserError("a sweep needs at least one depth, one kind and one seed")
        self.check_size()
        for option_name, values in (("--depths", self.depths), ("--kinds", self.kinds), ("--seeds", self.seeds)):
            counts = Counter(map(str, values))
            repeated = sorted(value for value, count in counts.items() if count > 1)
            if repeated:
                raise UserError(f"{option_name} lists {', '.join(repeated)} more than once: name each value once")
        if any(seed < 0 for seed in self.seeds):
            raise UserError(f"--seed must be 0 or a positive integer, got {min(self.seeds)}")
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
        parse_fuse(self.fuse)  # a bad --fuse is refused here, in one line
        self.check_networks()

    def check_networks(self) -> None:
        """Every kind exists, every cell's config (the grid's values in it) is valid, every network can be built; a
        user family's builder is run once per depth and options and its output checked (one 32x32 image, the
        dataset's number of classes), before anything runs or is written."""
        for kind in self.kinds:
            get_family(kind)  # an unknown or broken family first, before its depths
        checked = set()
        for cell in make_cells(self):
            config = replace(cell.config, seed=self.seeds[0])
            key = json.dumps(asdict(config), sort_keys=True, default=str)
            if key not in checked:
                checked.add(key)
                config.validate()
                check_builds(config.kind, config.depth, config.shortcut, expected_classes(config.data), config.options)


@dataclass
class Cell:
    name: str
    run_dir: Path
    config: TrainConfig


@dataclass
class PlannedCell:
    cell: Cell
    action: str  # new, resume, retry, replace, skip-done, skip-failed, skip-diverged, busy
    device: str = ""
    note: str = ""  # why it is busy (and whether its config differs from this sweep's)
    group: str = ""  # --fuse: the fused job it trains in ('residual-20-s0+s1+s2'); empty when it trains alone


RUNNABLE = ("new", "resume", "retry", "replace")


# ---------------------------------------------------------------------------------------------- the grid
def cell_name(config: TrainConfig, family: Family | None = None, axes: tuple[str, ...] | list[str] = ()) -> str:
    """<family>-<depth>[-<shortcut>][-<axis values>]-s<seed>: residual-56-s0, residual-56-B-s0 (not the family's
    default shortcut), residual-56-lr0.05-w2-s0 (the grid's axes and any network option not at its default),
    preact-bottleneck-164-s0, mylab.nets.gated-20-s0 (a family path as a folder name can hold it)."""
    family = family or get_family(config.kind)
    parts = (family.slug, str(config.depth), family.shown_shortcut(config.shortcut),
             axis_label(axis_values(config, axes, family)), f"s{config.seed}")
    return "-".join(part for part in parts if part)


def make_cells(sweep: SweepConfig, family_of: Callable[[str], Family] = get_family) -> list[Cell]:
    """The sweep's cells in order (depth, then kind, then the grid's other axes, then seed). family_of: how a
    kind's family is found; reading a results folder passes one that never imports a user's module. A cell that
    an axis does not apply to (a family without that option; a plain net on the shortcut axis) is made once."""
    families = {kind: family_of(kind) for kind in sweep.kinds}
    axes = grid_axes(sweep.grid, list(families.values()))
    keys = [axis.key for axis in axes]
    existing = folder_names(sweep.out_dir()) if len(keys) > 1 else set()
    cells: dict[str, Cell] = {}
    for depth in sweep.depths:
        for kind, family in families.items():
            for point in grid_points(axes):
                base = apply_axes(replace(sweep.train, kind=kind, depth=depth), point, family)
                for seed in sweep.seeds:
                    config = replace(base, seed=seed).for_family(family)
                    name = cell_name(config, family, keys)
                    if existing and name not in existing:
                        name = name_in_another_order(config, family, keys, existing) or name
                    if name in cells and comparable(asdict(cells[name].config)) != comparable(asdict(config)):
                        raise UserError(f"two cells of the grid would share the folder {name} (values that read "
                                        "the same in a folder name): give the axis values that differ more")
                    cells.setdefault(name, Cell(name, sweep.out_dir() / name, config))
    return list(cells.values())


def folder_names(out_dir: Path) -> set[str]:
    try:
        return {entry.name for entry in os.scandir(out_dir) if entry.is_dir(follow_symlinks=False)}
    except OSError:  # no results folder yet
        return set()


MAX_REORDERED_KEYS = 5  # 120 orders: more grid keys than any study sweeps


def name_in_another_order(config: TrainConfig, family: Family, keys: list[str], existing: set[str]) -> str | None:
    """The folder an earlier sweep made for this cell with the grid's keys in another order (`--grid width=...
    --grid lr=...` against `--grid lr=... --grid width=...`, or a sweep.json written before the order was kept,
    which saved them sorted): that folder is this cell's, not a second one beside it."""
    if len(keys) > MAX_REORDERED_KEYS:
        return None
    names = (cell_name(config, family, list(order)) for order in itertools.permutations(keys))
    return next((name for name in names if name in existing), None)


def device_slots(sweep: SweepConfig) -> list[str]:
    """One entry per concurrent job: a GPU (repeated jobs_per_gpu times) or 'cpu'; on a cluster, one per cell,
    saying what each cell's task asks the scheduler for."""
    if sweep.executor in ("ray", "slurm"):  # every cell is submitted at once; the scheduler places each
        return [cluster_slot(sweep)] * len(make_cells(sweep))
    import torch  # here, not at import: planning a cluster sweep on a login node needs no CUDA probe

    device, gpus = sweep.train.device, sweep.gpus
    visible = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if gpus is None and device in ("auto", "cuda"):
        gpus = list(range(visible)) or None
    if device != "auto" or gpus:
        resolve_device(device if device != "auto" else "cuda")  # here, where the cells run: refused before any starts
    if gpus and max(gpus) >= visible:
        raise UserError(f"--gpus {','.join(map(str, gpus))}: this machine has {visible} CUDA GPU(s), numbered from 0")
    if gpus:
        slots = [f"cuda:{gpu}" for gpu in gpus for _ in range(min(sweep.jobs_per_gpu, cpu_cores()))]
    else:  # never more jobs at once than cores: --jobs 10000 would start 10,000 processes
        slots = [device if device not in ("auto", "cpu") else "cpu"] * min(sweep.jobs, cpu_cores())
    check_cuda_graph_device(sweep.train.cuda_graph, slots[0])
    # a trial compile on CUDA would start CUDA in this planning process: there, each run tries before it compiles
    check_compile_possible(asked_compile(sweep.train, fused=parse_fuse(sweep.fuse) != 1), slots[0],
                           trial=slots[0] == "cpu")
    return slots


def cluster_slot(sweep: SweepConfig) -> str:
    """What a cluster cell's task asks for, as the plan shows it: 'slurm: 1 GPU', 'ray: cpu', ..."""
    if sweep.train.device == "cpu":
        return f"{sweep.executor}: cpu"
    if sweep.executor == "slurm":
        return "slurm: 1 GPU"
    return f"ray: {sweep.gpus_per_job:g} GPU, else cpu" if sweep.train.device == "auto" else \
        f"ray: {sweep.gpus_per_job:g} GPU"


def cpu_cores() -> int:
    """The cores this process may run on (its affinity, as a cluster's allocation sets it), else all."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def threads_per_job(slots: list[str]) -> int:
    return max(1, cpu_cores() // len(slots))


def task_threads(sweep: SweepConfig) -> int:
    """CPU cores (and torch threads) each cell asks for: --threads, else the cores split between the jobs that
    run here at once (local jobs, or Slurm's local cluster), else 1 on Ray and cpus_per_job on Slurm."""
    if sweep.train.threads:
        return sweep.train.threads
    if sweep.executor == "slurm" and sweep.slurm.cluster == "local":  # every array task runs on this machine
        return threads_per_job(["cpu"] * min(len(make_cells(sweep)), sweep.slurm.array_parallelism))
    if sweep.executor == "slurm":
        return sweep.slurm.cpus_per_job
    if sweep.executor == "ray":
        return 1
    return threads_per_job(device_slots(sweep))


def make_executor(sweep: SweepConfig) -> Executor:
    """auto: in-process for a single slot, one process per job for several; ray/slurm: a task per cell."""
    if sweep.executor == "ray":
        return RayExecutor(sweep.out_dir(), sweep.ray_address, sweep.gpus_per_job, sweep.train.device,
                           task_threads(sweep))
    if sweep.executor == "slurm":
        return SlurmExecutor(sweep.out_dir(), sweep.slurm, sweep.train.device, sweep.gpus_per_job, task_threads(sweep),
                             sweep.name or sweep.out_dir().name)
    if sweep.executor == "sequential" or (sweep.executor == "auto" and len(device_slots(sweep)) == 1):
        return SequentialExecutor()
    return LocalProcessExecutor()


def check_executor(sweep: SweepConfig) -> None:
    """What a Ray or Slurm sweep needs from here, checked before anything is written and by a dry run: the package,
    and a cluster that answers (Slurm's sbatch and controller; a Ray HOST:PORT). Ray's nodes are checked once it
    starts (probe tasks)."""
    if sweep.executor == "ray":
        import_ray()
        check_ray_address(sweep.ray_address)
    elif sweep.executor == "slurm":
        import_submitit()
        check_sbatch(sweep.slurm)


# ---------------------------------------------------------------------------------------------- planning
def plan_sweep(sweep: SweepConfig) -> list[PlannedCell]:
    """What each cell will do, judged from its folder; mismatched folders are refused unless --force."""
    sweep.validate()
    cells = make_cells(sweep)
    check_no_linked_folders(cells)
    planned = [plan_cell(cell, sweep.retry_failed) for cell in cells]
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
    for index, job in enumerate(form_jobs(planned, sweep, slots[0])):
        for item in job:
            item.device = slots[index % len(slots)]
    return planned


def check_no_linked_folders(cells: list[Cell]) -> None:
    """A cell's folder that is a link is refused before anything is written: training would write through it, to
    wherever it leads (a link planted in a shared results folder could point anywhere)."""
    linked = [cell.run_dir for cell in cells if cell.run_dir.is_symlink()]
    if linked:
        more = f" (and {len(linked) - 1} more)" if len(linked) > 1 else ""
        raise UserError(f"{linked[0]} is a link{more}: resdepth writes a run only into a folder of its own inside the "
                        "results folder (a link may lead out of it); remove the link, or use another --out folder")


def form_jobs(planned: list[PlannedCell], sweep: SweepConfig, slot: str) -> list[list[PlannedCell]]:
    """The runnable cells as jobs, in grid order: each alone, or with --fuse K up to K cells that differ only in
    their seed, in seed order (a cell that is done, failed or busy is never in one). Names each fused job."""
    settings: dict[str, list[PlannedCell]] = {}
    for item in (p for p in planned if p.action in RUNNABLE):
        setting = comparable(asdict(replace(item.cell.config, seed=0)))
        settings.setdefault(json.dumps(setting, sort_keys=True, default=str), []).append(item)
    jobs = []
    for items in settings.values():
        size = fuse_size(sweep.fuse, items[0].cell.config.depth, slot)
        for start in range(0, len(items), size):
            job = items[start:start + size]
            for item in job if len(job) > 1 else ():
                item.group = group_label([member.cell.name for member in job])
            jobs.append(job)
    return jobs


def fuse_size(fuse: str | int, depth: int, slot: str) -> int:
    """--fuse K, or auto's K for this depth on the slot's kind of device (cluster slots: GPUs unless --device cpu)."""
    size = parse_fuse(fuse)
    return size if size is not None else auto_fuse(depth, "cpu" if slot == "cpu" or slot.endswith(": cpu") else "cuda")


def planned_jobs(planned: list[PlannedCell]) -> list[list[PlannedCell]]:
    """The jobs `plan_sweep` formed: runnable cells, those of one fused group together."""
    jobs: dict[str, list[PlannedCell]] = {}
    for index, item in enumerate(p for p in planned if p.action in RUNNABLE):
        jobs.setdefault(item.group or f"alone-{index}", []).append(item)
    return list(jobs.values())


def plan_cell(cell: Cell, retry_failed: bool) -> PlannedCell:
    if is_locked(cell.run_dir):  # before any mismatch: --force must never move a folder that a live run writes into
        differs = saved_config(cell) is not None and describe_difference(cell)
        note = describe_owner(RunLock(cell.run_dir).owner())
        return PlannedCell(cell, "busy", note=note + (f"; its config differs from this sweep's ({differs})"
                                                       if differs else ""))
    return PlannedCell(cell, plan_action(cell, retry_failed))


def plan_action(cell: Cell, retry_failed: bool) -> str:
    existing = saved_config(cell)
    if existing is None:  # a checkpoint without its config.json: what it trained cannot be told, so not resumed
        return "mismatch" if (cell.run_dir / CHECKPOINT_FILE).exists() else "new"
    if comparable(asdict(existing)) != comparable(asdict(cell.config)):
        return "mismatch"
    status = RunStatus.read(cell.run_dir)
    state = status.state if status else "pending"
    if state == "done":
        return "skip-done"  # read as it is, whatever network version it trained
    if state in TERMINAL_STATES and not retry_failed:
        return f"skip-{state}"
    if network_changed(cell):  # its checkpoint cannot go on training in today's networks
        return "mismatch"
    if state in TERMINAL_STATES:
        return "retry"
    return "resume" if (cell.run_dir / CHECKPOINT_FILE).exists() else "new"


def saved_config(cell: Cell) -> TrainConfig | None:
    """The config a cell's folder holds (None: a new cell), with its family's values where it leaves them open, as
    the cell's own; a foreign or hand-broken one is a UserError."""
    path = cell.run_dir / CONFIG_FILE
    payload = read_json(path)
    if payload is None:
        return None
    return run_config(payload, path).for_family()


def describe_difference(cell: Cell) -> str:
    """'lr: 0.1 there, 0.05 asked', for the first few protocol fields where the folder and the sweep differ; or the
    network version a checkpoint was trained on, where only that differs."""
    saved = saved_config(cell)
    if saved is None:
        return f"no {CONFIG_FILE} beside its {CHECKPOINT_FILE}"
    return config_difference(asdict(saved), asdict(cell.config)) or network_changed(cell)


def network_changed(cell: Cell) -> str:
    """'network version 1 there, 2 now' for a checkpoint that cannot resume (`check_same_network`); '' otherwise."""
    change = network_change(cell.run_dir, cell.config.kind)
    return f"network version {change[0]} there, {change[1]} now" if change else ""


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
    else:
        take_execution_settings(run_dir, item.cell.config)


def take_execution_settings(run_dir: Path, config: TrainConfig) -> None:
    """A resumed cell runs as this sweep asks (--checkpoint-every, --compile, ...: how it runs, not what it computes),
    not as its first attempt did: its config.json takes them before its worker reads it. Device and threads come
    from the cell's slot."""
    saved = read_json(run_dir / CONFIG_FILE)
    if not isinstance(saved, dict):
        return  # its worker refuses it, naming the file
    asked = asdict(config)
    changed = {key: asked[key] for key in EXECUTION_FIELDS
               if key not in ("device", "threads") and saved.get(key) != asked[key]}
    if changed:
        write_config(run_dir, {**saved, **changed})


# ---------------------------------------------------------------------------------------------- running
@dataclass
class SweepProgress:
    """What a display needs at one moment: every cell's latest status and the outcomes so far."""

    planned: list[PlannedCell]
    running: dict[str, RunStatus]
    outcomes: dict[str, CellOutcome]
    # each started cell's status.json `started` as its job was submitted: a status still carrying it is an earlier
    # attempt's (a resumed cell's worker has not written its own yet, or never will: stopped before it started)
    earlier: dict[str, float | None] = field(default_factory=dict)


def run_sweep(sweep: SweepConfig, executor: Executor, planned: list[PlannedCell],
              on_progress: Callable[[SweepProgress], None] = lambda _: None,
              stop_requested: Callable[[], bool] = lambda: False, poll_seconds: float = 0.5) -> dict[str, CellOutcome]:
    """Run every runnable cell on the executor, one job (a cell, or a fused group) per slot at a time; returns each
    cell's outcome.
    sweep.json is (re)written only when some cell starts: a sweep that only skips or finds busy cells (when planned,
    or since) changes nothing. A KeyboardInterrupt (Ctrl-C in a script or notebook) stops the running cells as
    stop_requested does, waits for them to checkpoint, and goes on up."""
    running: dict[Future[CellOutcome], tuple[list[PlannedCell], str]] = {}
    try:
        return run_jobs(sweep, executor, planned, running, on_progress, stop_requested, poll_seconds)
    except KeyboardInterrupt:
        executor.interrupt()
        wait(list(running))
        executor.shutdown()
        raise


def run_jobs(sweep: SweepConfig, executor: Executor, planned: list[PlannedCell],
             running: dict[Future[CellOutcome], tuple[list[PlannedCell], str]],
             on_progress: Callable[[SweepProgress], None], stop_requested: Callable[[], bool],
             poll_seconds: float) -> dict[str, CellOutcome]:
    queue = planned_jobs(planned)  # one cell each, or a fused group
    saved = False
    if queue:
        queue_retries(planned)
    slots = device_slots(sweep)
    threads = task_threads(sweep)
    free = list(slots)
    outcomes: dict[str, CellOutcome] = {}
    earlier: dict[str, float | None] = {}
    interrupted = False
    while queue or running:
        if stop_requested() and not interrupted:
            interrupted = True
            executor.interrupt()
        starting = []
        while queue and free and not interrupted:
            job, slot = queue.pop(0), free.pop(0)
            ready = prepare_job(job, outcomes)
            if ready:
                starting.append((ready, slot))
            else:
                free.append(slot)
        if starting and not saved:
            ensure_writable_dir(sweep.out_dir())
            save_sweep(sweep)
            saved = True
        if starting:
            earlier.update(started_marks([item for items, _ in starting for item in items]))
            futures = executor.submit_all([CellJob(items[0].cell.run_dir, slot, threads,
                                                   tuple(item.cell.run_dir for item in items[1:]))
                                           for items, slot in starting])
            running.update(zip(futures, starting, strict=True))
        done, _ = wait(list(running), timeout=poll_seconds, return_when=FIRST_COMPLETED)
        for future in done:
            items, slot = running.pop(future)
            free.append(slot)
            for item, outcome in zip(items, job_outcomes(future, items), strict=True):
                outcomes[item.cell.name] = outcome
        live = {item.cell.name: RunStatus.read_or_none(item.cell.run_dir)
                for items, _ in running.values() for item in items}
        on_progress(SweepProgress(planned, {k: v for k, v in live.items() if v}, outcomes, earlier))
        if not running and interrupted:
            break
    executor.shutdown()
    return outcomes


def started_marks(items: list[PlannedCell]) -> dict[str, float | None]:
    """Each cell's status.json `started` before its job is submitted (None: no status yet), for
    `SweepProgress.earlier`."""
    marks = {}
    for item in items:
        status = RunStatus.read_or_none(item.cell.run_dir)
        marks[item.cell.name] = status.started if status else None
    return marks


def queue_retries(planned: list[PlannedCell]) -> None:
    """Cells --retry-failed will run are queued from now on: `status` shows them pending, not failed with the error
    of the attempt that is being retried (their progress, for the resume, stays)."""
    for item in planned:
        status = RunStatus.read_or_none(item.cell.run_dir) if item.action == "retry" and item.device else None
        if status and status.state in ("failed", "diverged") and not is_locked(item.cell.run_dir):
            status.update(item.cell.run_dir, state="pending", error=None)


def job_outcomes(future: Future[CellOutcome], items: list[PlannedCell]) -> list[CellOutcome]:
    """Each cell's outcome of an ended job. A job whose thread died of an exception (say, out of memory) fails its
    cells with it, so the sweep goes on and ends with an error instead of a traceback or a hang."""
    try:
        return list(each_cell(future.result()))
    except Exception as exc:  # noqa: BLE001 - whatever killed the job's thread is that job's failure
        return [mark_failed(item.cell.run_dir, f"{type(exc).__name__}: {exc}") for item in items]


def prepare_job(job: list[PlannedCell], outcomes: dict[str, CellOutcome]) -> list[PlannedCell]:
    """The job's cells whose folders are ready to train in; a cell whose folder cannot be prepared (say a read-only
    mount) fails alone, into outcomes, and the rest go on."""
    ready = []
    for item in job:
        try:
            prepare_run_dir(item)
        except (OSError, UserError) as exc:
            outcomes[item.cell.name] = CellOutcome(item.cell.run_dir, "failed", error=str(exc))
            continue
        if is_locked(item.cell.run_dir):  # another sweep started it since planning: its folder is its own
            outcomes[item.cell.name] = busy_outcome(item.cell.run_dir)
            continue
        ready.append(item)
    return ready


# ---------------------------------------------------------------------------------------------- sweep files
def save_sweep(sweep: SweepConfig) -> None:
    payload = {k: v for k, v in asdict(sweep).items() if k not in INVOCATION_FIELDS}
    write_json(sweep.out_dir() / SWEEP_FILE, payload)


def load_sweep_file(path: Path) -> SweepConfig:
    """A TOML sweep file: top-level sweep keys and [train] (TrainConfig), [data] (DataConfig), [slurm] tables."""
    try:
        payload = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(f"cannot read sweep file {path}: no such file (the project's sweep files are in the sweeps/ "
                        "folder of its checkout)") from None
    except OSError as exc:
        raise UserError(f"cannot read sweep file {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise UserError(f"{path} is not valid TOML: {exc}") from None
    payload.setdefault("name", path.stem)
    tables = {section: payload.pop(section, {}) for section in ("train", "data", "slurm")}
    for section, value in tables.items():
        if not isinstance(value, dict):
            raise UserError(f"{path}: [{section}] must be a table")
    if "data" in tables["train"]:
        raise UserError(f"{path}: put the dataset's keys in a [data] table, not in [train]")
    per_cell = sorted(tables["train"].keys() & PER_CELL_KEYS.keys())
    if per_cell:
        key = per_cell[0]
        raise UserError(f"{path}: [train] sets {key}, which each cell takes from the sweep: give it as a top-level "
                        f"list, {PER_CELL_KEYS[key]} = [...]")
    if {"iterations", "epochs"} <= tables["train"].keys():
        raise UserError(f"{path}: [train] sets both iterations and epochs: keep one, the run's length")
    if type(tables["train"].get("checkpoint_every")) is int:  # TOML's 2000 for the text "2000" (N iterations)
        tables["train"]["checkpoint_every"] = str(tables["train"]["checkpoint_every"])
    where = str(path)
    data = from_dict(DataConfig, tables["data"], where, "data.")
    if data.data_dir:  # relative to where the sweep is started, as a --data-dir would be; recorded absolute
        data = replace(data, data_dir=absolute_path(data.data_dir))
    train = from_dict(TrainConfig, {**tables["train"], "data": data}, where, "train.")
    slurm = from_dict(SlurmConfig, tables["slurm"], where, "slurm.")
    return from_dict(SweepConfig, {**payload, "train": train, "slurm": slurm}, where, ignore=frozenset({"data"}))


PER_CELL_KEYS = {"depth": "depths", "kind": "kinds", "seed": "seeds"}  # [train] keys a sweep sets per cell, from these


def execution_fields() -> list[str]:
    """The SweepConfig fields that say how and where a sweep executes, not what it trains: --resume never takes them
    from a folder's sweep.json (Slurm setup lines run as shell; a Ray address sends the work to another host).
    --fuse is kept: it names no code nor host, and a fused group resumes as it was fused."""
    return [f.name for f in fields(SweepConfig)
            if f.metadata.get("panel") in (EXECUTION, CLUSTER) and f.name != "fuse"] + ["slurm"]


def read_saved_sweep(results_dir: Path) -> SweepConfig:
    """sweep.json as it is (execution settings included), checked against the schema; a UserError otherwise."""
    path = results_dir / SWEEP_FILE
    if not path.is_file():
        raise UserError(f"{results_dir} holds no {SWEEP_FILE}: pass the --out folder of an earlier sweep to --resume")
    payload = read_json(path)
    try:
        if not isinstance(payload, dict):
            raise TypeError("not valid JSON" if payload is None else "not a JSON object")
        return from_dict(SweepConfig, payload, str(path))
    except (TypeError, ValueError, UserError) as exc:
        raise UserError(f"{path} is not a sweep that resdepth can resume ({exc}): rerun the sweep's own command "
                        "(same --out) instead of --resume") from None


def load_saved_sweep(results_dir: Path, execution: SweepConfig | None = None) -> SweepConfig:
    """The grid and protocol of the sweep saved in results_dir, executed as `execution` says (a sweep file the user
    passed; default: the defaults, to which the command line adds): never as the folder's sweep.json says. A family
    it names by path is used only when the user named it too (--kind)."""
    saved = read_saved_sweep(results_dir)
    for kind in saved.kinds:
        try:
            family_named_by_folder(kind, str(results_dir / SWEEP_FILE))
        except UserError:  # --kind with --resume sets the sweep's kinds: every one of them, not the path's alone
            raise UserError(f"{results_dir / SWEEP_FILE} names the family {kind} by import path; resdepth never "
                            "imports code that a results folder names: if you trust that module, name the sweep's "
                            f"kinds yourself, --kind {','.join(saved.kinds)}") from None
    how = execution or SweepConfig()
    sweep = replace(saved, **{name: getattr(how, name) for name in execution_fields()})
    try:
        sweep.validate()
    except UserError as exc:
        raise UserError(f"{results_dir / SWEEP_FILE} is not a sweep that resdepth can resume ({exc}): rerun the "
                        "sweep's own command (same --out) instead of --resume") from None
    # where it was saved; and never an earlier invocation's --force or --retry-failed (older versions saved them)
    return replace(sweep, out=str(results_dir), retry_failed=False, force=False)


def execution_not_resumed(results_dir: Path, used: SweepConfig) -> list[str]:
    """The execution settings of the folder's sweep.json that differ from those `used`: 'executor slurm', ..."""
    saved = read_saved_sweep(results_dir)
    return [f"{name} {getattr(saved, name)!r}" for name in execution_fields()
            if getattr(saved, name) != getattr(used, name)]


def count_actions(planned: list[PlannedCell]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for item in planned:
        counts[item.action] = counts.get(item.action, 0) + 1
    return counts


def settled_elsewhere(item: PlannedCell) -> str | None:
    """The state a busy cell reached in another process by now (done, failed, ...), or None while it still runs."""
    status = RunStatus.read_or_none(item.cell.run_dir)
    return status.state if status and status.state in TERMINAL_STATES and not is_locked(item.cell.run_dir) else None

