"""`resdepth bench --fuse 1,2,4,8`: one fused job of K models against K separate runs, in sequence and at once.

Per depth and K, three ways to train K seeds, in alternating windows so that other load hits them alike:
- fused: one `FusedTrainer` of K models in this process (what `sweep --fuse K` runs);
- in sequence: one `Trainer` (what `sweep --fuse 1` runs K times, one after another: the same images/s);
- at once: K processes, each its own `Trainer`, started together (`--jobs-per-gpu K` on CUDA, `--jobs K` on the CPU
  with the cores divided between them as a sweep divides them).
Images/s are aggregate: images x models per second. Peak memory: this process's growth for the fused and single
paths, the sum of the K processes' growths for the third (not counting each process's own Python and torch). It
never prints.
"""

from __future__ import annotations

import multiprocessing as mp
import queue
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from ..errors import UserError
from ..sweep.runner import threads_per_job
from ..train.data import Dataset, load_dataset
from ..train.devices import resolved_precision
from ..train.fused import FusedTrainer
from .throughput import (
    SETTLE_STEPS,
    BenchConfig,
    MemoryMeter,
    OwnPath,
    bench_train_config,
    device_name,
    prepare_bench,
    synchronize,
    timed_window,
)

PROCESS_TIMEOUT_SECONDS = 900  # a process that sends nothing for this long has failed (its traceback is on stderr)


@dataclass
class FuseRow:
    kind: str
    depth: int
    models: int  # K
    device: str
    device_name: str
    threads: int  # torch threads of the fused and single paths
    process_threads: int  # torch threads of each of the K processes
    precision: str
    compile: bool  # the fused step (and the single run's) compiled: --compile, or --cuda-graph for the group
    cuda_graph: bool  # --cuda-graph: the single run's step replayed as a CUDA graph
    fused_images_per_second: float  # aggregate, median window
    sequence_images_per_second: float  # one run's: K runs one after another train at this rate
    processes_images_per_second: float | None  # aggregate of K processes at once; None with --no-processes
    fused_vs_sequence: float
    fused_vs_processes: float | None
    fused_peak_memory_mb: float
    single_peak_memory_mb: float
    processes_peak_memory_mb: float | None  # summed over the K processes
    memory_measure: str
    fused_warmup_seconds: float  # the fused job's set-up and warm-up steps, torch.compile's compilation included
    fused_windows: list[float] = field(default_factory=list)
    sequence_windows: list[float] = field(default_factory=list)
    processes_windows: list[float] = field(default_factory=list)


def parse_sizes(text: str) -> tuple[int, ...]:
    """'1,2,4,8' -> (1, 2, 4, 8); each a number of models per fused job."""
    try:
        sizes = tuple(int(part) for part in text.split(","))
    except ValueError:
        sizes = ()
    if not sizes or any(size < 1 for size in sizes):
        raise UserError(f"--fuse {text!r}: give numbers of models per fused job, e.g. --fuse 1,2,4,8")
    return sizes


def run_fuse_benchmark(config: BenchConfig, sizes: tuple[int, ...], processes: bool = True,
                       on_progress: Callable[[str], None] = lambda _: None,
                       on_row: Callable[[FuseRow], None] = lambda _: None) -> list[FuseRow]:
    """One row per depth and K, each handed to `on_row` as it is measured."""
    # eager unless asked: a paper-length run on the CPU would compile (minutes per K); --compile and --cuda-graph
    # time the fast path of each way (a fused group captures its step through torch.compile's CUDA-graph mode)
    config = replace(config, compile=bool(config.compile))
    device, dataset = prepare_bench(config)
    rows = []
    with tempfile.TemporaryDirectory(prefix="resdepth-fusebench-") as folder:
        for depth in config.depths:
            meter = MemoryMeter(device)
            on_progress(f"depth {depth}: one run's set-up and {config.warmup} warm-up steps")
            single, single_setup = meter.track(lambda depth=depth: OwnPath(config, depth, device, dataset,
                                                                           Path(folder) / "one"))
            for size in sizes:
                rows.append(bench_size(config, depth, size, processes, device, dataset, Path(folder), single,
                                       single_setup, meter, on_progress))
                on_row(rows[-1])
            single.trainer.close()
    return rows


def bench_size(config: BenchConfig, depth: int, size: int, processes: bool, device: torch.device, dataset: Dataset,
               folder: Path, single: OwnPath, single_setup: tuple[int, int], meter: MemoryMeter,
               on_progress: Callable[[str], None]) -> FuseRow:
    """The three ways at one depth and K, alternating for config.rounds rounds."""
    on_progress(f"depth {depth}, K={size}: fused set-up and {config.warmup} warm-up steps")
    started = time.perf_counter()
    fused, fused_setup = meter.track(lambda: FusedPath(config, depth, size, device, dataset, folder / f"k{size}"))
    warmup_seconds = time.perf_counter() - started
    pool = ProcessPool(config, depth, size, device) if processes else None
    sequence_windows, fused_windows, process_windows, fused_memory, single_memory = [], [], [], [], []
    try:
        for round_index in range(config.rounds):
            on_progress(f"depth {depth}, K={size}: round {round_index + 1}/{config.rounds}")
            rate, memory = meter.track(lambda: timed_window(single.run, device, config))
            sequence_windows.append(rate)
            single_memory.append(memory[0])
            rate, memory = meter.track(lambda: timed_window(fused.run, device, config))
            fused_windows.append(rate * size)
            fused_memory.append(memory[0])
            if pool is not None:
                process_windows.append(pool.window(config.iterations))
        process_memory = pool.peak_mb() if pool is not None else None
    finally:
        if pool is not None:
            pool.close()
        fused.trainer.close()
    peak_mb = lambda setup, windows: max(setup[0], setup[1] + max(windows)) / 2**20  # noqa: E731
    fused_ips, sequence_ips = statistics.median(fused_windows), statistics.median(sequence_windows)
    processes_ips = statistics.median(process_windows) if process_windows else None
    return FuseRow(
        kind=config.kind, depth=depth, models=size, device=str(device), device_name=device_name(device),
        threads=torch.get_num_threads(), process_threads=process_threads(size, config.threads),
        precision=resolved_precision(config.precision, device), compile=fused.trainer.compiled,
        cuda_graph=config.cuda_graph, fused_images_per_second=fused_ips,
        sequence_images_per_second=sequence_ips, processes_images_per_second=processes_ips,
        fused_vs_sequence=fused_ips / sequence_ips,
        fused_vs_processes=fused_ips / processes_ips if processes_ips else None,
        fused_peak_memory_mb=peak_mb(fused_setup, fused_memory),
        single_peak_memory_mb=peak_mb(single_setup, single_memory),
        processes_peak_memory_mb=process_memory, memory_measure=meter.measure, fused_warmup_seconds=warmup_seconds,
        fused_windows=fused_windows, sequence_windows=sequence_windows, processes_windows=process_windows)


def process_threads(size: int, threads: int | None) -> int:
    """Torch threads of each of K processes at once, as `sweep --jobs K` gives them: --threads, else the cores
    divided between them."""
    return threads or threads_per_job(["cpu"] * size)


class FusedPath:
    """`sweep --fuse K`'s training: one FusedTrainer of K seeds of a paper-length run, its epochs, no evaluation."""

    def __init__(self, config: BenchConfig, depth: int, size: int, device: torch.device, dataset: Dataset,
                 run_dir: Path):
        train = bench_train_config(config, depth, device)
        configs = [replace(train, seed=seed) for seed in range(size)]
        self.trainer = FusedTrainer(configs, [run_dir / f"s{seed}" for seed in range(size)], device, dataset)
        self.run(config.warmup)
        synchronize(device)

    def run(self, steps: int) -> None:
        """Group steps; an epoch that ends is counted and a new one begins, as in a run (without its evaluation)."""
        for _ in range(steps):
            self.trainer.train_step()
            for member in self.trainer.ended_members():
                member.close_epoch(self.trainer.batch)


class ProcessPool:
    """K processes, each training its own run of the depth (OwnPath), set up once; `window(steps)` times them
    training together: images x K over the span from the first start to the last end."""

    def __init__(self, config: BenchConfig, depth: int, size: int, device: torch.device):
        context = mp.get_context("spawn")  # CUDA cannot be used in forked children
        self.size, self.device = size, device
        self.commands, self.reports = context.Queue(), context.Queue()
        barrier = context.Barrier(size)
        threads = process_threads(size, config.threads)
        self.processes = [context.Process(target=process_main, daemon=True,
                                          args=(config, depth, str(device), threads, barrier, self.commands,
                                                self.reports)) for _ in range(size)]
        for process in self.processes:
            process.start()
        self.setup = [self.receive() for _ in range(size)]
        self.windows_memory: list[list[int]] = []
        self.batch = config.batch_size

    def receive(self) -> Any:
        try:
            report = self.reports.get(timeout=PROCESS_TIMEOUT_SECONDS)
        except queue.Empty:
            raise RuntimeError(f"a benchmark process sent nothing for {PROCESS_TIMEOUT_SECONDS} s") from None
        if isinstance(report, str):
            raise RuntimeError(f"a benchmark process failed: {report}")
        return report

    def window(self, steps: int) -> float:
        for _ in self.processes:
            self.commands.put(steps)
        reports = [self.receive() for _ in self.processes]
        self.windows_memory.append([memory for _, _, memory in reports])
        span = max(end for _, end, _ in reports) - min(start for start, _, _ in reports)
        return self.size * steps * self.batch / span

    def peak_mb(self) -> float:
        """The K processes' peaks summed: each its set-up's, or what set-up kept plus its largest window."""
        total = 0
        for index, (setup_peak, setup_kept) in enumerate(self.setup):
            window = max((memories[index] for memories in self.windows_memory), default=0)
            total += max(setup_peak, setup_kept + window)
        return total / 2**20

    def close(self) -> None:
        for _ in self.processes:
            self.commands.put(None)
        for process in self.processes:
            process.join(timeout=60)
            if process.is_alive():
                process.kill()


def process_main(config: BenchConfig, depth: int, device_name_: str, threads: int, barrier: Any, commands: Any,
                 reports: Any) -> None:
    """One of the K processes: set up a run, report its memory, then time windows on command, all together."""
    try:
        torch.set_num_threads(threads)
        device = torch.device(device_name_)
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dataset = load_dataset(config.data)
        meter = MemoryMeter(device)
        with tempfile.TemporaryDirectory(prefix="resdepth-fusebench-proc-") as folder:
            path, setup = meter.track(lambda: OwnPath(replace(config, threads=threads), depth, device, dataset,
                                                      Path(folder)))
            reports.put(setup)
            while (steps := commands.get()) is not None:
                def window(steps: int = steps) -> tuple[float, float]:
                    path.run(SETTLE_STEPS)
                    synchronize(device)
                    barrier.wait()
                    start = time.monotonic()  # CLOCK_MONOTONIC: one clock for the processes of one machine
                    path.run(steps)
                    synchronize(device)
                    return start, time.monotonic()
                (start, end), memory = meter.track(window)
                reports.put((start, end, memory[0]))
    except Exception as exc:  # noqa: BLE001 - the parent waits on the queue: tell it, rather than leave it to time out
        reports.put(f"{type(exc).__name__}: {exc}")
