"""Training throughput: resdepth's own step against the common per-sample PIL + DataLoader recipe.

`run_benchmark(BenchConfig) -> list[BenchRow]` times, for each depth and in one process, windows of the real
`Trainer` (the code `resdepth train` runs, augmentation included) alternating with windows of the naive recipe
on the same images, network and SGD settings, so that load from other processes hits both paths alike.
It also times an n x n matmul in every round, the yardstick for the network's achieved FLOP/s. It never prints.
"""

from __future__ import annotations

import contextlib
import ctypes
import re
import resource
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from ..errors import UserError
from ..models import build_model, count_multiply_adds
from ..models.families import check_network
from ..train.data import DataConfig, Dataset, load_dataset
from ..train.devices import (
    PYTORCH_DEFAULT_PRECISION,
    environment,
    pytorch_default_precision,
    resolve_device,
    resolved_precision,
)
from ..train.trainer import TrainConfig, Trainer

# A training step costs about 3 forward passes (the backward pass computes input and weight gradients),
# and one multiply-add is 2 FLOPs: achieved FLOP/s = 3 x 2 x forward multiply-adds x images/s.
TRAINING_PASSES = 3
FLOPS_PER_MULTIPLY_ADD = 2
CIFAR_MEAN = (0.4914, 0.4822, 0.4465)  # the per-channel statistics the common recipe normalizes with
CIFAR_STD = (0.2470, 0.2435, 0.2616)
MATMUL_SECONDS = 0.3  # minimum length of each matmul timing window
SETTLE_STEPS = 4  # untimed steps opening every window: drain the loader's prefetch queue, let its refill end


@dataclass
class BenchConfig:
    depths: tuple[int, ...] = (20, 56, 110)
    kind: str = "residual"
    device: str = "auto"  # auto: cuda if available, else cpu
    iterations: int = 30  # timed steps per window
    warmup: int = 10  # untimed steps per path and depth first: allocator, oneDNN/cuDNN plans, torch.compile
    rounds: int = 3  # windows per path, alternating resdepth, naive, matmul; the median counts
    batch_size: int = 128  # §4.2
    num_workers: int = 2  # naive loader processes: one per core of the 2-core reference machine
    naive: bool = True  # time the naive recipe too (off: resdepth and matmul only)
    threads: int | None = None  # torch CPU threads; None: torch's default (all cores)
    precision: str = "auto"  # as TrainConfig: fp32 on CPU, tf32 on CUDA
    channels_last: bool | None = None  # None: TrainConfig's default for the device
    compile: bool | None = None  # None: TrainConfig's default
    cuda_graph: bool = False  # as TrainConfig (CUDA only)
    data: DataConfig = field(
        default_factory=lambda: DataConfig(dataset="synthetic", synthetic_train=4096, synthetic_test=16))
    matmul_size: int = 2048

    def validate(self) -> None:
        for name in ("iterations", "rounds", "batch_size", "matmul_size"):
            if getattr(self, name) < 1:
                raise UserError(f"--{name.replace('_', '-')} must be a positive integer, got {getattr(self, name)}")
        if self.warmup < 0 or self.num_workers < 0:
            raise UserError("--warmup and --num-workers must be 0 or more")
        if not self.depths:
            raise UserError("give at least one depth, e.g. --depths 20,56,110")
        for depth in self.depths:
            check_network(self.kind, depth)


@dataclass
class BenchRow:
    kind: str
    depth: int
    device: str
    device_name: str
    threads: int
    precision: str  # resdepth's resolved setting: fp32, tf32 or bf16
    channels_last: bool  # resdepth's resolved setting
    compile: bool
    cuda_graph: bool
    resdepth_images_per_second: float  # median window
    naive_images_per_second: float | None
    speedup: float | None  # resdepth / naive images per second
    forward_multiply_adds: int  # per image
    achieved_gflops: float  # resdepth's: 3 x 2 x forward multiply-adds x images/s
    matmul_gflops: float  # median of the rounds' matmul windows
    peak_fraction: float  # achieved / matmul
    resdepth_peak_memory_mb: float
    naive_peak_memory_mb: float | None  # main process only: the loader workers are separate processes
    naive_precision: str | None  # PyTorch's defaults, which the recipe runs with (CUDA: TF32 convolutions)
    memory_measure: str
    warmup_seconds: float  # resdepth's setup and warm-up steps, torch.compile's compilation included
    resdepth_windows: list[float] = field(default_factory=list)
    naive_windows: list[float] = field(default_factory=list)
    matmul_windows: list[float] = field(default_factory=list)


def run_benchmark(config: BenchConfig, on_progress: Callable[[str], None] = lambda _: None,
                  on_row: Callable[[BenchRow], None] = lambda _: None) -> list[BenchRow]:
    """One row per depth; `on_progress` gets a short line as each phase starts, `on_row` each row as it is
    measured (a benchmark stopped at a time limit keeps the rows it has)."""
    device, dataset = prepare_bench(config)
    rows = []
    with tempfile.TemporaryDirectory(prefix="resdepth-bench-") as run_dir:
        for depth in config.depths:
            rows.append(bench_depth(config, depth, device, dataset, Path(run_dir), on_progress))
            on_row(rows[-1])
    return rows


def prepare_bench(config: BenchConfig) -> tuple[torch.device, Dataset]:
    """Check the config, set the threads, load the data (at least one batch of it) and warm the process up."""
    config.validate()
    device = resolve_device(config.device)
    if config.threads:
        torch.set_num_threads(config.threads)
    dataset = load_dataset(config.data)
    if len(dataset.train_labels) < config.batch_size:
        raise UserError(f"the training set has {len(dataset.train_labels)} images, fewer than one batch of "
                        f"{config.batch_size}")
    warm_process(device, config.batch_size, config.naive)
    return device, dataset


@dataclass
class Measured:
    """One path at one depth: its set-up's memory and each window's images/s and memory, as MemoryMeter tracks them."""
    setup: tuple[int, int] = (0, 0)
    windows: list[tuple[float, tuple[int, int]]] = field(default_factory=list)

    def rates(self) -> list[float]:
        return [ips for ips, _ in self.windows]

    def images_per_second(self) -> float | None:
        return statistics.median(self.rates()) if self.windows else None

    def peak_mb(self) -> float | None:
        """Its set-up's peak, or what set-up kept plus the largest transient of a window."""
        if not self.windows:
            return None
        return max(self.setup[0], self.setup[1] + max(memory[0] for _, memory in self.windows)) / 2**20


def bench_depth(config: BenchConfig, depth: int, device: torch.device, dataset: Dataset, run_dir: Path,
                on_progress: Callable[[str], None]) -> BenchRow:
    meter = MemoryMeter(device)
    on_progress(f"depth {depth}: resdepth set-up and {config.warmup} warm-up steps")
    started = time.perf_counter()
    own, setup = meter.track(lambda: OwnPath(config, depth, device, dataset, run_dir))
    own_measured, naive_measured = Measured(setup), Measured()
    warmup_seconds = time.perf_counter() - started
    naive = None
    if config.naive:
        on_progress(f"depth {depth}: naive recipe set-up ({config.num_workers} loader workers) and warm-up")
        with pytorch_default_precision():  # as the recipe runs in a process of its own, not as our Trainer set it
            naive, naive_measured.setup = meter.track(lambda: NaivePath(config, depth, device, dataset))
    matmul_windows: list[float] = []
    for round_index in range(config.rounds):
        on_progress(f"depth {depth}: round {round_index + 1}/{config.rounds}")
        own_measured.windows.append(meter.track(lambda: timed_window(own.run, device, config)))
        if naive is not None:
            with pytorch_default_precision():
                naive_measured.windows.append(meter.track(lambda: timed_window(naive.run, device, config)))
        matmul_windows.append(matmul_gflops(device, config.matmul_size, own.trainer.autocast))
    if naive is not None:
        naive.close()
    row = make_row(config, depth, device, own.trainer, own_measured, naive_measured, matmul_windows,
                   meter.measure, warmup_seconds)
    own.trainer.close()  # this depth's GPU memory is free before the next depth is set up
    return row


def make_row(config: BenchConfig, depth: int, device: torch.device, trainer: Trainer, own: Measured,
             naive: Measured, matmul_windows: list[float], memory_measure: str, warmup_seconds: float) -> BenchRow:
    own_ips, naive_ips = own.images_per_second(), naive.images_per_second()
    assert own_ips is not None  # config.rounds >= 1
    multiply_adds = count_multiply_adds(trainer.model)
    achieved = TRAINING_PASSES * FLOPS_PER_MULTIPLY_ADD * multiply_adds * own_ips / 1e9
    matmul = statistics.median(matmul_windows)
    return BenchRow(
        kind=config.kind, depth=depth, device=str(device), device_name=device_name(device),
        threads=torch.get_num_threads(), precision=resolved_precision(config.precision, device),
        channels_last=trainer.channels_last, compile=trainer.compiled, cuda_graph=trainer.config.cuda_graph,
        resdepth_images_per_second=own_ips, naive_images_per_second=naive_ips,
        speedup=own_ips / naive_ips if naive_ips else None, forward_multiply_adds=multiply_adds,
        achieved_gflops=achieved, matmul_gflops=matmul, peak_fraction=achieved / matmul,
        resdepth_peak_memory_mb=own.peak_mb() or 0.0, naive_peak_memory_mb=naive.peak_mb(),
        naive_precision=PYTORCH_DEFAULT_PRECISION[device.type] if naive_ips else None,
        memory_measure=memory_measure, warmup_seconds=warmup_seconds,
        resdepth_windows=own.rates(), naive_windows=naive.rates(), matmul_windows=matmul_windows,
    )


def warm_process(device: torch.device, batch_size: int, naive: bool) -> None:
    """Pay the process's one-time costs (library loads, kernel JIT, thread pools) before any path is measured."""
    if naive:  # without it (--no-naive, bench --fuse) torchvision need not be installed
        import torchvision.transforms  # noqa: F401  (the naive path's imports)

    for memory_format in (torch.contiguous_format, torch.channels_last):
        model = build_model("resnet8").to(device, memory_format=memory_format)
        model(torch.randn(batch_size, 3, 32, 32,
                          device=device).contiguous(memory_format=memory_format)).sum().backward()
    matmul_gflops(device, 256, contextlib.nullcontext)
    synchronize(device)


def timed_window(run: Callable[[int], None], device: torch.device, config: BenchConfig) -> float:
    """Images/s of `config.iterations` steps, after a few untimed ones (see SETTLE_STEPS)."""
    run(SETTLE_STEPS)
    synchronize(device)
    started = time.perf_counter()
    run(config.iterations)
    synchronize(device)
    return config.iterations * config.batch_size / (time.perf_counter() - started)


def device_name(device: torch.device) -> str:
    """The GPU's name, or the CPU's model name from /proc/cpuinfo (platform.processor() is often empty)."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        match = re.search(r"^model name\s*:\s*(.+)$", Path("/proc/cpuinfo").read_text(), re.MULTILINE)
    except OSError:
        match = None
    return match.group(1).strip() if match else environment(device)["device_name"]


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ---------------------------------------------------------------------------------------------- the two paths
class OwnPath:
    """resdepth's training as `resdepth train` runs it: the real Trainer, its epochs, in-memory batched augmentation."""

    def __init__(self, config: BenchConfig, depth: int, device: torch.device, dataset: Dataset, run_dir: Path):
        self.trainer = Trainer(bench_train_config(config, depth, device), run_dir, device, dataset)
        self.run(config.warmup)
        synchronize(device)

    def run(self, steps: int) -> None:
        train_steps(self.trainer, steps)


def train_steps(trainer: Trainer, steps: int) -> None:
    """Run the trainer's real training steps. train_epoch's own stop hook ends the window mid-epoch; the next
    window resumes the epoch as a run would."""
    target = trainer.iteration + steps
    while trainer.iteration < target:
        trainer.train_epoch(lambda: trainer.iteration >= target)


def bench_train_config(config: BenchConfig, depth: int, device: torch.device) -> TrainConfig:
    """The run the bench times a step of: a paper-length run of this depth with the bench's execution options."""
    steps = config.warmup + config.rounds * (config.iterations + SETTLE_STEPS)
    train = TrainConfig(kind=config.kind, depth=depth, batch_size=config.batch_size, device=str(device),
                        threads=config.threads, precision=config.precision, data=config.data,
                        iterations=max(TrainConfig.iterations, steps))  # the paper's lr schedule, never reached
    if config.channels_last is not None:
        train.channels_last = config.channels_last
    if config.compile is not None:
        train.compile = config.compile
    train.cuda_graph = config.cuda_graph
    train.validate()
    return train


class PilImages(torch.utils.data.Dataset):
    """What torchvision's CIFAR10 does per sample: an HWC uint8 array becomes a PIL image, then the transforms."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, transform: Callable[[Any], torch.Tensor]):
        self.arrays = images.permute(0, 2, 3, 1).contiguous().numpy()
        self.labels = labels.tolist()
        self.transform = transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        from PIL import Image

        return self.transform(Image.fromarray(self.arrays[index])), self.labels[index]


class NaivePath:
    """The common recipe: per-sample PIL crop/flip/ToTensor/Normalize in DataLoader workers, an eager NCHW
    model, `loss.item()` every step for the running loss. Same network, init and SGD settings as resdepth."""

    def __init__(self, config: BenchConfig, depth: int, device: torch.device, dataset: Dataset):
        from torchvision import transforms

        self.device = device
        torch.manual_seed(0)
        self.model = build_model(config.kind, depth, num_classes=dataset.num_classes).to(device)
        train = TrainConfig()
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=train.lr, momentum=train.momentum,
                                         weight_decay=train.weight_decay)
        transform = transforms.Compose([transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip(),
                                        transforms.ToTensor(), transforms.Normalize(CIFAR_MEAN, CIFAR_STD)])
        self.loader = torch.utils.data.DataLoader(
            PilImages(dataset.train_images, dataset.train_labels, transform), batch_size=config.batch_size,
            shuffle=True, drop_last=True, num_workers=config.num_workers, persistent_workers=config.num_workers > 0,
            pin_memory=device.type == "cuda")
        self.batches = self.forever()
        self.running_loss = 0.0
        self.run(config.warmup)
        synchronize(device)

    def forever(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        while True:
            yield from self.loader

    def run(self, steps: int) -> None:
        self.model.train()
        for _ in range(steps):
            images, labels = next(self.batches)
            images = images.to(self.device, non_blocking=True)
            labels = labels.to(self.device, non_blocking=True)
            self.optimizer.zero_grad()
            loss = F.cross_entropy(self.model(images), labels)
            loss.backward()
            self.optimizer.step()
            self.running_loss += loss.item()  # the recipe's habit: a host sync every step on a GPU

    def close(self) -> None:
        self.batches.close()  # ends the epoch's iterator; its persistent workers exit with it
        del self.loader


# ---------------------------------------------------------------------------------------------- yardstick, memory
def matmul_gflops(device: torch.device, size: int, autocast: Callable[[], Any]) -> float:
    """GFLOP/s of a size x size matmul at the run's precision, over at least MATMUL_SECONDS."""
    a = torch.randn(size, size, device=device)
    b = torch.randn(size, size, device=device)
    with autocast():
        dtype = (a @ b).dtype  # bf16 under bf16 autocast: cast once here, or each matmul below would cast a and b
        a, b = a.to(dtype), b.to(dtype)
        synchronize(device)
        count, started = 0, time.perf_counter()
        while count < 3 or time.perf_counter() - started < MATMUL_SECONDS:
            for _ in range(4):
                a @ b
            count += 4
            synchronize(device)
        seconds = time.perf_counter() - started
    return count * 2 * size**3 / seconds / 1e9


class MemoryMeter:
    """Peak memory growth of a call: CUDA's allocator peak, or the process's peak RSS (VmHWM, reset per call).

    `track(fn)` returns fn's result and (peak growth, growth still held at the end) in bytes.
    """

    def __init__(self, device: torch.device):
        self.device = device
        self.resettable = device.type == "cuda" or reset_peak_rss()
        self.measure = ("torch.cuda.max_memory_allocated" if device.type == "cuda" else
                        "peak RSS growth (VmHWM, reset per phase)" if self.resettable else
                        "ru_maxrss growth (a lower bound: the peak cannot be reset)")

    def track(self, fn: Callable[[], Any]) -> tuple[Any, tuple[int, int]]:
        before = self.current()
        self.reset()
        result = fn()
        synchronize(self.device)
        peak = self.peak()
        return result, (max(0, peak - before), max(0, self.current() - before))

    def current(self) -> int:
        if self.device.type == "cuda":
            return torch.cuda.memory_allocated(self.device)
        release_free_heap()  # else RSS counts memory that malloc keeps for reuse, charged to whoever ran first
        return rss_bytes("VmRSS")

    def reset(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        elif self.resettable:
            reset_peak_rss()

    def peak(self) -> int:
        if self.device.type == "cuda":
            return torch.cuda.max_memory_allocated(self.device)
        if self.resettable:
            return rss_bytes("VmHWM")
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def rss_bytes(field_name: str) -> int:
    try:
        status = Path("/proc/self/status").read_text()
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    match = re.search(rf"^{field_name}:\s+(\d+) kB", status, re.MULTILINE)
    return int(match.group(1)) * 1024 if match else 0


def release_free_heap() -> None:
    """Give freed heap pages back to the OS (glibc's malloc_trim); elsewhere a no-op."""
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):
        pass


def reset_peak_rss() -> bool:
    """Reset this process's VmHWM to its current RSS (Linux >= 4.0); False where that is not allowed."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False
