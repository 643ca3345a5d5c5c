"""How long a planned sweep would take on this machine, for `resdepth sweep --dry-run`.

Per cell: the iterations it would run (a resumed cell: those left) and the time they take at this machine's
measured training speed. A depth's speed comes from a `resdepth bench` with the same settings where one was
recorded, else from a short timed probe of the real `Trainer` (a few eager steps on synthetic images of the run's
batch size); both are kept in a small cache for the next dry run. Only the sweep's smallest depth and its largest
up to 110 are probed: the others are interpolated, a training image costing a fixed time plus a time per forward
multiply-add (the fixed part is what makes small nets slower per FLOP on a GPU). It never prints.
"""

from __future__ import annotations

import json
import math
import os
import socket
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch

from ..errors import UserError
from ..models import count_multiply_adds
from ..models.families import build_network
from ..results.runs import CHECKPOINT_FILE, RunStatus, write_json
from ..sweep.runner import RUNNABLE, PlannedCell, SweepConfig, cpu_cores, device_slots, planned_jobs, task_threads
from ..train.data import DataCheck, DataConfig, check_data_present, make_synthetic
from ..train.devices import resolve_device, resolved_precision
from ..train.trainer import TrainConfig, Trainer, resolve_iterations, steps_per_epoch, uses_compile
from .throughput import BenchConfig, BenchRow, device_name, synchronize, train_steps

SPEEDS_FILE = "speeds.json"
PROBE_WARMUP_STEPS = 2  # untimed: the first steps allocate memory and plan the convolutions
PROBE_STEPS = (3, 10)  # timed steps per depth: at least 3, then until PROBE_SECONDS have passed, at most 10
PROBE_SECONDS = 1.5
PROBE_MAX_DEPTH = 110  # deeper nets (1202) are not probed (a step takes many seconds on a CPU): extrapolated
BUSY_LOAD = 1.0  # load average per core at which a probe shares the cores with others: on 2 cores, ~10x slower seen
EVAL_SPEEDUP = 3.0  # evaluation is a forward pass only, about a third of a training step (bench.TRAINING_PASSES)


@dataclass(frozen=True)
class Speed:
    images_per_second: float
    source: str  # "bench" (an earlier `resdepth bench`), "probe", or "interpolated" (from the measured depths)
    measured: float  # when (Unix time)
    compile: bool  # measured with torch.compile (bench only; a probe is always eager)
    load: float | None = None  # a probe: the 1-minute load average per core just before it (>= 1: others were busy)
    now: bool = False  # measured by this call


@dataclass
class CellEstimate:
    iterations: int | None  # to run: None for a cell that is skipped, or whose --epochs need an unknown data size
    seconds: float | None  # None where there is no estimate
    speed: Speed | None = None


@dataclass
class PlanEstimate:
    cells: dict[str, CellEstimate]  # by cell name
    total_seconds: float | None  # wall time with the sweep's parallel job slots, when every cell has an estimate
    basis: list[str]  # where the speeds come from and what the times leave out, or why there is none
    data: DataCheck


def estimate_plan(sweep: SweepConfig, planned: list[PlannedCell],
                  on_progress: Callable[[str], None] = lambda _: None) -> PlanEstimate:
    """Iterations and time per planned cell on this machine, measuring what the speed cache does not hold."""
    data = check_data_present(sweep.train.data)
    runnable = [item for item in planned if item.action in RUNNABLE]
    data_of = cells_data(runnable, sweep.train.data, data)  # finished cells are not checked again, as by the run
    cells = {item.cell.name: CellEstimate(cell_iterations(item, data_of(item)) if item in runnable else None, None)
             for item in planned}
    if sweep.executor in ("ray", "slurm"):
        basis = [f"no time estimate: the cells run on {sweep.executor} nodes, not on this machine"]
        return PlanEstimate(cells, None, basis, data)
    slots = device_slots(sweep)
    threads = task_threads(sweep)
    speeds: dict[tuple[str, str, int], Speed] = {}
    for slot, setting in dict.fromkeys((item.device, speed_setting(item.cell.config)) for item in runnable):
        configs = {item.cell.config.depth: item.cell.config for item in runnable
                   if (item.device, speed_setting(item.cell.config)) == (slot, setting)}
        for depth, speed in depth_speeds(configs, slot, threads, on_progress).items():
            speeds[slot, setting, depth] = speed
    eager: set[str] = set()  # "run", "group": some will compile, and their speed was measured without
    for item in runnable:
        estimate = cells[item.cell.name]
        estimate.speed = speeds[item.device, speed_setting(item.cell.config), item.cell.config.depth]
        estimate.seconds = cell_seconds(item.cell.config, estimate.iterations, data_of(item),
                                        estimate.speed.images_per_second)
        if will_compile(item, data_of(item)) and not estimate.speed.compile:
            eager.add("group" if item.group else "run")
    seconds = job_seconds(runnable, cells)
    total = None if None in seconds else wall_time([s for s in seconds if s is not None], len(slots))
    basis = describe_basis(speeds, threads, len(slots), data, eager)
    if any(item.group for item in runnable):
        basis.append("a fused job is timed as its cells one after another in one slot: `resdepth bench --fuse 1,2,4` "
                     "measures what fusing changes on this machine")
    return PlanEstimate(cells, total, basis, data)


def cells_data(planned: list[PlannedCell], base: DataConfig, data: DataCheck) -> Callable[[PlannedCell], DataCheck]:
    """Each cell's data as its run sees it: a grid over data fields (train_size, val_size, ...) gives cells other
    split sizes than the sweep's own, which may be more than the dataset holds (refused here, as the run would)."""
    def data_key(config: DataConfig) -> str:
        return json.dumps(asdict(config), sort_keys=True, default=str)

    checks = {data_key(base): data}
    for item in planned:
        key = data_key(item.cell.config.data)
        if key not in checks:
            try:
                checks[key] = check_data_present(item.cell.config.data)
            except UserError as exc:
                raise UserError(f"cell {item.cell.name}: {exc}") from None
    return lambda item: checks[data_key(item.cell.config.data)]


def speed_setting(config: TrainConfig) -> str:
    """What sets a cell's images/s besides its depth and slot, as grid axes may vary it: the mini-batch, the
    precision, the layout and the network's options (width)."""
    return json.dumps([config.batch_size, config.precision, config.channels_last, config.options], sort_keys=True)


def job_seconds(runnable: list[PlannedCell], cells: dict[str, CellEstimate]) -> list[float | None]:
    """Each job's time: a cell's own, a fused group's the sum of its cells' (its cells share one slot)."""
    times = [[cells[item.cell.name].seconds for item in job] for job in planned_jobs(runnable)]
    return [None if None in job else sum(t for t in job if t is not None) for job in times]


def planned_iterations(config: TrainConfig, data: DataCheck) -> int | None:
    """The run's iterations from start to end; None when --epochs sets them and the data size is unknown."""
    if config.epochs is not None and data.train_images is None:
        return None
    return resolve_iterations(config, data.train_images or 0).iterations


def cell_iterations(item: PlannedCell, data: DataCheck) -> int | None:
    """The iterations the cell has left to run."""
    planned = planned_iterations(item.cell.config, data)
    if planned is None:
        return None
    # a resume and a retry (--retry-failed) both go on from the cell's checkpoint; without one they start over
    goes_on = item.action in ("resume", "retry") and (item.cell.run_dir / CHECKPOINT_FILE).exists()
    status = RunStatus.read(item.cell.run_dir) if goes_on else None
    if status is None:
        return planned
    # after a kill, status.json's iteration may be past the checkpoint the resume starts from
    done = status.saved_iteration if status.saved_iteration is not None else status.iteration
    return max(0, planned - done)


def will_compile(item: PlannedCell, data: DataCheck) -> bool:
    """Whether the cell's run will use torch.compile (`uses_compile`): a fused group's by its options, a single
    run's by its whole run's iterations too (which --epochs sets)."""
    config, device = item.cell.config, resolve_device(item.device)
    if item.group:
        return uses_compile(config, device, fused=True)
    planned = planned_iterations(config, data)
    return planned is not None and uses_compile(replace(config, iterations=planned), device)


def cell_seconds(config: TrainConfig, iterations: int | None, data: DataCheck,
                 images_per_second: float) -> float | None:
    """Training steps at the measured speed, plus an evaluation of the test (and validation) images per epoch."""
    if iterations is None:
        return None
    seconds = iterations * config.batch_size / images_per_second
    if data.train_images and data.test_images is not None:
        epochs = math.ceil(iterations / steps_per_epoch(data.train_images, config.batch_size))
        seconds += epochs * (data.test_images + data.val_images) / (EVAL_SPEEDUP * images_per_second)
    return seconds


def wall_time(seconds: list[float], slots: int) -> float:
    """The sweep's length when each cell, in plan order, takes the first job slot to come free (as run_sweep does)."""
    free_at = [0.0] * max(1, slots)
    for length in seconds:
        first = free_at.index(min(free_at))
        free_at[first] += length
    return max(free_at)


# ---------------------------------------------------------------------------------------------- speeds
def depth_speeds(configs: dict[int, TrainConfig], slot: str, threads: int,
                 on_progress: Callable[[str], None]) -> dict[int, Speed]:
    """The speed of each depth on one device: cached, else probed (the smallest depth and the largest up to
    PROBE_MAX_DEPTH), else interpolated from those by forward multiply-adds."""
    device = resolve_device(slot)
    cache = read_speeds()
    quiet = busy_load() < BUSY_LOAD
    known = {depth: speed for depth, config in configs.items()
             if (speed := cached_speed(cache, config, device, threads)) is not None
             and not (quiet and speed.load is not None and speed.load >= BUSY_LOAD)}  # a busy probe: measured again
    probed = [d for d in configs if d <= PROBE_MAX_DEPTH] or [min(configs)]
    for depth in sorted({min(configs), max(probed)} - known.keys()):
        on_progress(f"measuring depth {depth} on {slot} ({threads} thread(s)): a few training steps")
        known[depth] = probe_and_remember(configs[depth], device, threads)
    config = next(iter(configs.values()))
    cost = fit_image_cost({depth: 1 / speed.images_per_second for depth, speed in known.items()}, config.kind,
                          config.options)
    compiled = all(speed.compile for speed in known.values())
    return {depth: known.get(depth) or Speed(1 / cost(depth), "interpolated", time.time(), compiled)
            for depth in configs}


def cached_speed(cache: dict[str, dict[str, Any]], config: TrainConfig, device: Any, threads: int) -> Speed | None:
    """The recorded speed of these settings: with compile as the run will use it, else eager."""
    for compile in dict.fromkeys((uses_compile(config, device), False)):
        entry = cache.get(speed_key(config, device, threads, compile))
        if entry is not None:
            return Speed(**entry)
    return None


def busy_load() -> float:
    """The 1-minute load average per core: at BUSY_LOAD or above, a probe shares the cores with other work (0 where
    the system keeps none, as on Windows)."""
    try:
        return os.getloadavg()[0] / cpu_cores()
    except (AttributeError, OSError):
        return 0.0


def probe_and_remember(config: TrainConfig, device: Any, threads: int) -> Speed:
    load = busy_load()
    saved_threads = torch.get_num_threads()
    try:
        images_per_second = probe_speed(config, device, threads)
    finally:
        torch.set_num_threads(saved_threads)
    speed = Speed(images_per_second, "probe", time.time(), compile=False, load=round(load, 2))
    remember_speed(speed_key(config, device, threads, False), speed)
    return replace(speed, now=True)


def fit_image_cost(seconds_per_image: dict[int, float], kind: str,
                   options: dict[str, Any] | None = None) -> Callable[[int], float]:
    """Seconds per training image as fixed + per-multiply-add cost, fitted through the measured depths of the
    family at these network options (least squares; through zero when one depth is known, or when the fit gives a
    negative fixed cost)."""
    def macs(depth: int) -> float:
        return float(count_multiply_adds(build_network(kind, depth, net_options=options)))

    points = [(macs(depth), cost) for depth, cost in seconds_per_image.items()]
    mean_x, mean_y = (sum(v) / len(points) for v in zip(*points, strict=True))
    if not any(x for x, _ in points):  # a family that counts no multiply-adds: its measured cost, flat
        return lambda depth: mean_y
    fixed, per_mac = 0.0, sum(x * y for x, y in points) / sum(x * x for x, _ in points)
    spread = sum((x - mean_x) ** 2 for x, _ in points)  # 0: every depth builds the same net (a user's family may)
    if len(points) > 1 and spread > 0:
        slope = sum((x - mean_x) * (y - mean_y) for x, y in points) / spread
        if mean_y - slope * mean_x >= 0 and slope > 0:
            fixed, per_mac = mean_y - slope * mean_x, slope
    return lambda depth: fixed + per_mac * macs(depth)


def probe_speed(config: TrainConfig, device: Any, threads: int) -> float:
    """Images/s of the real Trainer's training step with these settings, eager, on synthetic images."""

    torch.set_num_threads(threads)
    data = DataConfig(dataset="synthetic", synthetic_train=2 * config.batch_size, synthetic_test=16)
    probe = replace(config, compile=False, epochs=None, iterations=TrainConfig.iterations, data=data,
                    device=str(device), threads=threads, tensorboard=False)
    with tempfile.TemporaryDirectory(prefix="resdepth-probe-") as run_dir:
        trainer = Trainer(probe, Path(run_dir), device, make_synthetic(data.synthetic_train, data.synthetic_test))
        try:
            train_steps(trainer, PROBE_WARMUP_STEPS)
            synchronize(device)
            seconds: list[float] = []  # per step: other load only ever slows a step down, so the fastest counts
            while len(seconds) < PROBE_STEPS[0] or (len(seconds) < PROBE_STEPS[1] and sum(seconds) < PROBE_SECONDS):
                started = time.perf_counter()
                train_steps(trainer, 1)
                synchronize(device)
                seconds.append(time.perf_counter() - started)
            return trainer.batch / min(seconds)
        finally:
            trainer.close()


def speed_key(config: TrainConfig, device: Any, threads: int, compile: bool, depth: int | None = None,
              batch_size: int | None = None, precision: str | None = None, channels_last: bool | None = None) -> str:
    """What a speed depends on: this host, its device, threads, batch size, precision, layout, graph, depth."""
    return json.dumps({
        "host": socket.gethostname(), "device": device_name(device), "threads": threads,
        "batch_size": batch_size or config.batch_size,
        "precision": precision or resolved_precision(config.precision, device),
        "channels_last": channels_last if channels_last is not None else config.channels_last is not False,
        "cuda_graph": config.cuda_graph, "compile": compile, "depth": depth or config.depth,
        **({"options": config.options} if config.options else {}),  # width 1 keeps the keys cached before widths
    }, sort_keys=True)


def speeds_path() -> Path:
    """$RESDEPTH_CACHE/speeds.json, by default ~/.cache/resdepth/speeds.json."""
    return Path(os.environ.get("RESDEPTH_CACHE") or Path.home() / ".cache" / "resdepth") / SPEEDS_FILE


def read_speeds() -> dict[str, dict[str, Any]]:
    try:
        payload = json.loads(speeds_path().read_text())
    except (OSError, ValueError):
        return {}
    fields = set(Speed.__dataclass_fields__) - {"now"}
    return {key: value for key, value in payload.items() if isinstance(value, dict) and set(value) == fields}


def remember_speed(key: str, speed: Speed) -> None:
    """Keep a measured speed for later dry runs; a cache that cannot be written only means measuring again."""
    path = speeds_path()
    entries = read_speeds()
    entries[key] = {name: getattr(speed, name) for name in Speed.__dataclass_fields__ if name != "now"}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json(path, entries)
    except OSError:
        pass


def remember_bench(config: BenchConfig, rows: list[BenchRow]) -> None:
    """`resdepth bench`'s speeds, preferred by later dry runs with the same settings over a probe."""

    for row in rows:
        device = torch.device(row.device)
        train = TrainConfig(batch_size=config.batch_size, cuda_graph=row.cuda_graph)
        key = speed_key(train, device, row.threads, row.compile, depth=row.depth, precision=row.precision,
                        channels_last=row.channels_last)
        remember_speed(key, Speed(row.resdepth_images_per_second, "bench", time.time(), row.compile))


def describe_basis(speeds: dict[tuple[str, str, int], Speed], threads: int, slots: int, data: DataCheck,
                   eager: set[str]) -> list[str]:
    """Where the img/s come from, and what the times assume (eager: "run" and/or "group" when single runs or fused
    groups that will compile were timed without)."""
    lines = []
    for source, words in (("bench", "from `resdepth bench` of"), ("probe", "probed (a few eager training steps)")):
        chosen = {depth: speed for (*_, depth), speed in speeds.items() if speed.source == source}
        if chosen:
            when = ", ".join(sorted({"now" if s.now else time.strftime("%Y-%m-%d %H:%M", time.localtime(s.measured))
                                     for s in chosen.values()}))
            lines.append(f"img/s of depth {', '.join(map(str, sorted(chosen)))} {words} {when} on this machine, "
                         f"{threads} thread(s) per job")
    guessed = sorted({depth for (*_, depth), speed in speeds.items() if speed.source == "interpolated"})
    if guessed:
        lines.append(f"depth {', '.join(map(str, guessed))}: from the measured depths by forward multiply-adds")
    if "run" in eager:
        lines.append("measured without torch.compile, which these runs use: on the CPU expect them ~14% faster after "
                     "1-2 minutes of compiling; `resdepth bench` measures that")
    if "group" in eager:
        lines.append("measured without torch.compile, which the fused jobs use (--compile): on 2 CPU cores a compiled "
                     "group trained at ~0.7x its eager img/s (BENCHMARKS.md); `resdepth bench --fuse K --compile` "
                     "measures it here")
    busy = [speed.load for speed in speeds.values() if speed.load is not None and speed.load >= BUSY_LOAD]
    if busy:
        lines.append(f"probed while other processes kept this machine busy (load {max(busy):.1f} per core): those "
                     "img/s may be several times too low")
    if slots > 1:
        lines.append(f"{slots} jobs at once, assumed not to slow each other")
    if data.train_images is None:
        lines.append("runs given in --epochs: their iterations are unknown until the data can be read")
    if speeds:
        lines.append(f"speeds are kept in {speeds_path()}: delete it to measure again (say on an idle machine)")
    return lines
