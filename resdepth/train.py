"""One training run with the §4.2 protocol: SGD, iteration-based step schedule, warm-up for deep nets.

`run_training(config, run_dir)` trains, writes metrics.csv row by row, checkpoints every epoch (and when
asked to stop), resumes exactly from the last checkpoint, and returns a `RunResult`. It never prints.
"""

from __future__ import annotations

import contextlib
import io
import math
import os
import platform
import socket
import time
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import torch
import torch.nn.functional as F

from . import __version__
from .construct import describe_init, load_init
from .data import DataConfig, Dataset, augment, check_data_config, load_dataset, normalize
from .errors import UserError
from .gradients import GradientLog
from .models import CifarNet, build_model, count_parameters
from .results import (CHECKPOINT_FILE, GRADIENTS_FILE, METRICS_FILE, MetricsWriter, RunStatus, atomic_write_bytes,
                      ensure_writable_dir, metric_columns, write_config)

COMPILE_MIN_ITERATIONS = 2_000  # ~250k images: minutes of CPU training, against 1-2 min of compiling
WARMUP_CHECK_EVERY = 10  # iterations per warm-up check: one host sync per 10 steps, only while warming up
PRECISIONS = ("auto", "fp32", "tf32", "bf16")
WARMUP_MODES = ("auto", "on", "off")


@dataclass
class TrainConfig:
    kind: str = "residual"
    depth: int = 20
    shortcut: str = "A"  # §4.2 CIFAR nets use option A (zero-padding) so plain and residual twins match
    seed: int = 0
    iterations: int = 64_000  # §4.2: "terminate training at 64k iterations"
    epochs: int | None = None  # alternative to iterations: converted with the training split's size
    batch_size: int = 128  # §4.2: mini-batch size of 128
    lr: float = 0.1  # §4.2: start with 0.1, divided by 10 at 50% and 75% of the iterations (32k, 48k of 64k)
    lr_milestones: tuple[float, ...] = (0.5, 0.75)
    lr_decay: float = 0.1
    momentum: float = 0.9  # §4.2
    weight_decay: float = 1e-4  # §4.2; on every parameter (BN and biases too): the paper names no exclusions
    warmup: str = "auto"  # auto: the paper's warm-up for depth >= warmup_min_depth (110), on, off
    warmup_min_depth: int = 110
    warmup_lr: float = 0.01  # §4.2: 0.01 until the training error is below 80% (about 400 iterations)
    warmup_until_error: float = 80.0
    data: DataConfig = field(default_factory=DataConfig)
    device: str = "auto"  # auto: cuda if available, else cpu
    threads: int | None = None  # torch CPU threads; None: torch's default (all cores)
    precision: str = "auto"  # auto: fp32 on CPU, tf32 on CUDA (PyTorch's own default for convolutions)
    channels_last: bool | None = None  # None: on (NHWC runs oneDNN's/cuDNN's native kernels: +19% img/s on 2 CPU cores, BENCHMARKS.md)
    # torch.compile: +14% img/s on CPU (BENCHMARKS.md) after 1-2 min of compiling per process, so None (auto)
    # turns it on for CPU runs of >= COMPILE_MIN_ITERATIONS, where that is repaid; off on CUDA until measured there
    compile: bool | None = None
    # Replay forward + backward + SGD as one CUDA graph (CUDA only): removes kernel-launch overhead, which bounds
    # these small nets on a fast GPU. Off until measured on one (benchmarks/gpu_bench.sh measures it).
    cuda_graph: bool = False
    eval_batch_size: int = 1000
    # Start from these weights instead of He init (a run folder or checkpoint file, e.g. what `resdepth construct`
    # writes); the rest of the protocol is unchanged. None: He init, the paper's.
    init: str | None = None

    @classmethod
    def from_dict(cls, payload: dict[str, Any]) -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in payload.items() if k in known}
        values["data"] = DataConfig(**{k: v for k, v in payload.get("data", {}).items() if k in DataConfig.__dataclass_fields__})
        if "lr_milestones" in values:
            values["lr_milestones"] = tuple(values["lr_milestones"])
        return cls(**values)

    def validate(self) -> None:
        """Refuse values that cannot train, with the fix in the message."""
        for name in ("batch_size", "iterations", "eval_batch_size"):
            if getattr(self, name) < 1:
                raise UserError(f"--{name.replace('_', '-')} must be a positive integer, got {getattr(self, name)}")
        if self.epochs is not None and self.epochs < 1:
            raise UserError(f"--epochs must be a positive integer, got {self.epochs}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise UserError(f"--lr must be a positive number, got {self.lr}")
        if self.weight_decay < 0 or not 0 <= self.momentum < 1:
            raise UserError("--weight-decay must be >= 0 and --momentum in [0, 1)")
        if self.precision not in PRECISIONS:
            raise UserError(f"unknown precision {self.precision!r}: use one of {', '.join(PRECISIONS)}")
        if self.warmup not in WARMUP_MODES:
            raise UserError(f"unknown warm-up mode {self.warmup!r}: use one of {', '.join(WARMUP_MODES)}")
        if self.threads is not None and self.threads < 1:
            raise UserError(f"--threads must be a positive integer, got {self.threads}")
        if self.cuda_graph and self.compile:
            raise UserError("--cuda-graph and --compile each rebuild the training step: choose one")
        check_device_name(self.device)
        if self.cuda_graph and self.device == "cpu":
            raise UserError("--cuda-graph needs a CUDA device, not cpu: leave it out on the CPU")
        if self.seed < 0:
            raise UserError(f"--seed must be 0 or a positive integer, got {self.seed}")
        if self.warmup_min_depth < 1 or not self.warmup_lr > 0 or not 0 <= self.warmup_until_error <= 100:
            raise UserError("warm-up settings: warmup_min_depth >= 1, warmup_lr > 0, warmup_until_error in [0, 100]")
        check_data_config(self.data)
        if any(not 0 < m < 1 for m in self.lr_milestones):
            raise UserError("lr milestones are fractions of the iterations, each between 0 and 1")
        CifarNet(self.kind, self.depth, shortcut=self.shortcut)  # type: ignore[arg-type]  # kind/depth/shortcut checks

    def uses_warmup(self) -> bool:
        return self.warmup == "on" or (self.warmup == "auto" and self.depth >= self.warmup_min_depth)



@dataclass
class RunResult:
    state: str  # done, diverged or interrupted
    epochs_done: int
    iterations_done: int
    final_test_error: float | None
    warmup_end_iteration: int | None


def check_device_name(name: str) -> None:
    """The spelling of --device, checked without touching any GPU (a sweep may be planned on a login node)."""
    kind, _, index = name.partition(":")
    if kind not in ("auto", "cpu", "cuda") or (index and (kind != "cuda" or not index.isdigit())):
        raise UserError(f"unknown device {name!r}: use auto, cpu, cuda or cuda:N")


def resolve_device(name: str) -> torch.device:
    """The device a run on this machine uses; a UserError when this machine does not have it."""
    check_device_name(name)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device {name} asked for, but this machine has no CUDA GPU: use --device cpu")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise UserError(f"device {name} does not exist: this machine has {torch.cuda.device_count()} GPU(s)")
    return device


def learning_rate(config: TrainConfig, iteration: int, warming_up: bool) -> float:
    """The lr for 0-based `iteration`: step decay at the milestone fractions, or the warm-up lr."""
    if warming_up:
        return config.warmup_lr
    passed = sum(iteration >= round(m * config.iterations) for m in config.lr_milestones)
    return config.lr * config.lr_decay ** passed


def steps_per_epoch(train_size: int, batch_size: int) -> int:
    # Full batches only (static shapes); a training set smaller than a batch is one batch per epoch.
    return max(1, train_size // batch_size)


def resolve_iterations(config: TrainConfig, train_size: int) -> TrainConfig:
    """--epochs E becomes E epochs' worth of iterations, so the schedule is always in iterations."""
    if config.epochs is None:
        return config
    return replace(config, iterations=config.epochs * steps_per_epoch(train_size, config.batch_size))


def environment(device: torch.device) -> dict[str, Any]:
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else (platform.processor() or platform.machine())
    return {"python": platform.python_version(), "torch": torch.__version__, "resdepth": __version__,
            "device": str(device), "device_name": name, "host": socket.gethostname(), "threads": torch.get_num_threads(),
            "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES")}


def device_label(device: torch.device, environ: Mapping[str, str] = os.environ) -> str:
    """The device as the machine numbers it: a worker that sees only GPU 3 (CUDA_VISIBLE_DEVICES=3, as the local,
    Ray and Slurm executors give it) trains on its cuda:0, which a progress display should call cuda:3."""
    visible = environ.get("CUDA_VISIBLE_DEVICES")
    if device.type != "cuda" or not visible:
        return str(device)
    ids = [part.strip() for part in visible.split(",")]
    index = device.index or 0
    return f"cuda:{ids[index]}" if index < len(ids) else str(device)


def read_checkpoint(path: Path) -> dict[str, Any]:
    """A checkpoint's contents on the CPU, read without running any code it may carry (`weights_only=True`).

    Always onto the CPU whatever the training device: the RNG states must be CPU byte tensors to be restored,
    and `load_state_dict` moves everything else to the run's device.
    """
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - truncated, overwritten or foreign: all mean the same to the user
        raise UserError(f"{path} cannot be read ({type(exc).__name__}): delete it and rerun with --retry-failed "
                        "to start this run over") from None
    if not isinstance(state, dict) or "model" not in state:
        raise UserError(f"{path} is not a resdepth checkpoint: delete it and rerun with --retry-failed to start over")
    return state


def rng_state(device: torch.device, generator: torch.Generator) -> dict[str, torch.Tensor | None]:
    """The random states a run draws from: its own generator (data order, augmentation), torch's global CPU RNG
    and, on CUDA, the global RNG of the run's own GPU only (a model with dropout draws from it). Saving one state
    per visible GPU would tie a checkpoint to the number of GPUs the process saw."""
    return {"generator": generator.get_state(), "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state(device) if device.type == "cuda" else None}


def restore_rng_state(state: dict[str, Any], device: torch.device, generator: torch.Generator) -> None:
    """Put back what `rng_state` saved; states are CPU byte tensors whatever device they were mapped to."""
    generator.set_state(state["generator"].cpu())
    torch.set_rng_state(state["torch_rng"].cpu())
    cuda_rng = state.get("cuda_rng")
    if device.type == "cuda" and torch.is_tensor(cuda_rng):  # checkpoints of older versions saved a list: skip it
        torch.cuda.set_rng_state(cuda_rng.cpu(), device)


CPU_GENERATOR_STATE_BYTES = 5056  # a CPU torch.Generator's state; a CUDA one's is 16 bytes (seed and offset)


def check_same_device_type(state: dict[str, Any], device: torch.device) -> None:
    """Refuse to resume on another kind of device: the generator's state (data order and augmentation) does not
    carry over between CPU and CUDA, and `--precision auto` means fp32 on one and tf32 on the other."""
    saved = state.get("device_type")
    if saved is None:  # written before device_type was saved: the generator state's size tells
        saved = "cpu" if state["generator"].numel() == CPU_GENERATOR_STATE_BYTES else "cuda"
    if saved != device.type:
        raise UserError(f"this run was trained on {saved} and is now asked to resume on {device.type}: the two draw "
                        f"different random numbers, so resume it on {saved} (--device {saved}), or delete "
                        "checkpoint.pt and rerun with --retry-failed to start over")


class Trainer:
    """The state of one run: data, model, optimizer, schedule position and RNGs, all checkpointable."""

    def __init__(self, config: TrainConfig, run_dir: Path, device: torch.device, dataset: Dataset):
        self.config, self.run_dir, self.device = config, run_dir, device
        torch.manual_seed(config.seed)
        self.data_fingerprint = dataset.fingerprint()
        self.data = dataset.to(device)
        self.mean = self.data.pixel_mean()
        self.batch = min(config.batch_size, len(self.data.train_labels))
        self.steps_per_epoch = steps_per_epoch(len(self.data.train_labels), config.batch_size)
        self.epochs = math.ceil(config.iterations / self.steps_per_epoch)
        self.channels_last = config.channels_last is not False  # None (auto): on for CPU and CUDA alike
        self.model = build_model(config.kind, config.depth, num_classes=dataset.num_classes, shortcut=config.shortcut).to(device)  # type: ignore[arg-type]
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        # The same update either way: fused (one kernel for all parameters) on CUDA, foreach on the CPU
        implementation = {"fused": True} if device.type == "cuda" else {"foreach": True}
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=config.lr, momentum=config.momentum,
                                         weight_decay=config.weight_decay, **implementation)
        self.compiled = uses_compile(config, device)
        self.forward = torch.compile(self.model) if self.compiled else self.model  # training steps only
        self.generator = torch.Generator(device=device).manual_seed(config.seed)
        self.iteration, self.epoch, self.csv_rows = 0, 0, 0
        self.warming_up = config.uses_warmup()
        self.warmup_end_iteration: int | None = None
        self.warmup_window = torch.zeros((), device=device)  # wrong answers since the last warm-up check
        self.partial: dict[str, Any] | None = None  # position inside an epoch stopped by a signal
        self.autocast = precision_context(config.precision, device, graph_safe=config.cuda_graph)
        if config.cuda_graph and device.type != "cuda":
            raise UserError(f"--cuda-graph needs a CUDA device, not {device}: leave it out on the CPU")
        self.captured: CapturedStep | None = None  # captured at the first step, after any resume
        self.gradients = GradientLog(self.model, device)

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, Any]:
        """Everything a resume needs, in types that `torch.load(weights_only=True)` accepts."""
        optimizer = self.optimizer.state_dict()
        for group in optimizer["param_groups"]:  # a CUDA graph keeps the lr in a device tensor: save the number
            group["lr"] = float(group["lr"])
        return {
            "model": self.model.state_dict(), "optimizer": optimizer,
            "iteration": self.iteration, "epoch": self.epoch, "csv_rows": self.csv_rows,
            "warming_up": self.warming_up, "warmup_end_iteration": self.warmup_end_iteration,
            "device_type": self.device.type, **rng_state(self.device, self.generator),
            "partial": self.partial, "warmup_window": self.warmup_window, "data_fingerprint": self.data_fingerprint,
            "gradients": self.gradients.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a checkpoint read onto the CPU (`read_checkpoint`): tensors move to this run's device here."""
        check_same_device_type(state, self.device)
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.iteration, self.epoch, self.csv_rows = state["iteration"], state["epoch"], state["csv_rows"]
        self.warming_up, self.warmup_end_iteration = state["warming_up"], state["warmup_end_iteration"]
        restore_rng_state(state, self.device, self.generator)
        self.partial = state["partial"]
        self.warmup_window = state["warmup_window"].to(self.device)
        self.gradients.load_state_dict(state.get("gradients"))
        if self.partial is not None:
            self.partial = {k: v.to(self.device) if torch.is_tensor(v) else v for k, v in self.partial.items()}

    def save_checkpoint(self) -> None:
        buffer = io.BytesIO()
        torch.save(self.state_dict(), buffer)
        atomic_write_bytes(self.run_dir / CHECKPOINT_FILE, buffer.getvalue())

    def try_resume(self) -> bool:
        for leftover in self.run_dir.glob(f".{CHECKPOINT_FILE}.*.tmp"):
            leftover.unlink(missing_ok=True)  # a checkpoint write cut short by a kill; the previous one is intact
        path = self.run_dir / CHECKPOINT_FILE
        if not path.exists():
            return False
        state = read_checkpoint(path)
        saved = state.get("data_fingerprint")  # absent in checkpoints written before it existed
        if saved is not None and saved != self.data_fingerprint:
            raise UserError(f"the training data is not what {path} was trained on (images or labels changed): "
                            "restore the data, or delete checkpoint.pt and rerun with --retry-failed to start over")
        self.load_state_dict(state)
        return True

    def close(self) -> None:
        """Drop the model, data, optimizer and CUDA graph now: a finished run's GPU memory is free at once, not
        when the cyclic garbage collector gets round to it (the next cell of an in-process sweep needs it)."""
        self.captured = None
        self.model = self.forward = self.optimizer = self.data = None  # type: ignore[assignment]
        self.partial = None

    # ------------------------------------------------------------------ one epoch
    def train_epoch(self, should_stop: Callable[[], bool], report: Callable[[dict[str, float]], None]) -> dict[str, Any] | None:
        """Train until the epoch ends (returns its sums) or a stop is asked (returns None, state kept in self.partial)."""
        self.model.train()
        state = self.partial or {
            "order": torch.randperm(len(self.data.train_labels), generator=self.generator, device=self.device),
            "step": 0, "loss_sum": torch.zeros((), device=self.device), "wrong": torch.zeros((), device=self.device),
            "seconds": 0.0,
        }
        self.partial = None
        steps = min(self.steps_per_epoch, self.config.iterations - (self.iteration - state["step"]))
        started, last_report = time.perf_counter() - state["seconds"], time.monotonic()
        while state["step"] < steps:
            if should_stop():
                state["seconds"] = time.perf_counter() - started
                self.partial = state
                return None
            index = state["order"][state["step"] * self.batch:(state["step"] + 1) * self.batch]
            loss, wrong = self.train_step(index)
            self.gradients.sample(state["step"])
            state["loss_sum"] += loss * len(index)
            state["wrong"] += wrong
            self.warmup_window += wrong
            state["step"] += 1
            self.iteration += 1
            if self.warming_up and self.iteration % WARMUP_CHECK_EVERY == 0:
                self.check_warmup(self.warmup_window.item() / (WARMUP_CHECK_EVERY * self.batch) * 100)
                self.warmup_window.zero_()
            if time.monotonic() - last_report > 1.0:
                last_report = time.monotonic()
                seen = state["step"] * self.batch
                if not math.isfinite(state["loss_sum"].item()):
                    break  # diverged: end the epoch here, its row records the NaN/inf
                report({"train_error": state["wrong"].item() / seen * 100, "iteration": self.iteration,
                        "images_per_second": seen / (time.perf_counter() - started)})
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        seconds = time.perf_counter() - started
        seen = state["step"] * self.batch
        return {"train_loss": state["loss_sum"].item() / seen, "train_error": state["wrong"].item() / seen * 100,
                "epoch_seconds": seconds, "images_per_second": seen / seconds}

    def train_step(self, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One SGD step on the images at index; returns the batch's mean loss and wrong answers (device tensors)."""
        lr = learning_rate(self.config, self.iteration, self.warming_up)
        images = self.data.train_images[index]
        inputs = augment(images, self.mean, self.generator) if self.config.data.augment else normalize(images, self.mean)
        if self.channels_last:
            inputs = inputs.contiguous(memory_format=torch.channels_last)
        labels = self.data.train_labels[index]
        if self.config.cuda_graph and len(index) == self.batch:
            if self.captured is None:
                self.captured = CapturedStep(self, inputs, labels)
            return self.captured.replay(inputs, labels, lr)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        return self.sgd_step(inputs, labels, zero_grad=True)

    def sgd_step(self, inputs: torch.Tensor, labels: torch.Tensor, zero_grad: bool) -> tuple[torch.Tensor, torch.Tensor]:
        with self.autocast():
            logits = self.forward(inputs)
            loss = F.cross_entropy(logits, labels)
        if zero_grad:
            self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return loss.detach().float(), (logits.detach().argmax(1) != labels).sum().float()

    def last_step_lr(self) -> float:
        # a warm-up that ended at this very iteration still ran its last step at the warm-up lr
        ran_warming_up = self.warming_up or self.warmup_end_iteration == self.iteration
        return learning_rate(self.config, self.iteration - 1, ran_warming_up)

    def check_warmup(self, recent_error: float) -> None:
        # §4.2 (110 layers): warm up with lr 0.01 until the training error is below 80%, then go back to 0.1.
        if recent_error < self.config.warmup_until_error:
            self.warming_up = False
            self.warmup_end_iteration = self.iteration

    @torch.no_grad()
    def evaluate(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[float, float]:
        """Mean loss and error (%) on un-augmented images, in eval mode (BN running statistics)."""
        self.model.eval()
        loss_sum = torch.zeros((), device=self.device)
        wrong = torch.zeros((), device=self.device)
        for start in range(0, len(labels), self.config.eval_batch_size):
            batch = normalize(images[start:start + self.config.eval_batch_size], self.mean)
            if self.channels_last:
                batch = batch.contiguous(memory_format=torch.channels_last)
            target = labels[start:start + self.config.eval_batch_size]
            with self.autocast():
                logits = self.model(batch)  # eager: compiling eval-mode graphs too would double the compile time
            loss_sum += F.cross_entropy(logits.float(), target, reduction="sum")
            wrong += (logits.argmax(1) != target).sum()
        self.model.train()
        return loss_sum.item() / len(labels), wrong.item() / len(labels) * 100


class CapturedStep:
    """The training step (forward, loss, backward, SGD update) recorded once as a CUDA graph, then replayed.

    A replay launches the whole step at once. Shapes are static (full batches); the lr lives in a device tensor,
    so the schedule and the warm-up change it without a new capture; augmentation stays outside the graph, drawing
    from the run's generator as the eager step does, so checkpoints resume exactly. Capturing needs a few real
    steps first (cuDNN plans, the momentum buffers, with lr 0); `restore_training_state` then puts the weights,
    BN statistics and momentum back, so the replayed run computes what the eager step computes (a GPU test checks
    this; the CPU suite checks the restore itself). Everything happens under the run's own device: a capture
    stream made on another GPU than the model's records nothing that replays.
    """

    WARMUP_STEPS = 3  # PyTorch's recipe: run the step a few times on a side stream before capturing it

    def __init__(self, trainer: "Trainer", inputs: torch.Tensor, labels: torch.Tensor):
        device = trainer.device
        self.inputs, self.labels = inputs.clone(), labels.clone()  # the graph's fixed input addresses
        self.lr = torch.zeros((), device=device)
        for group in trainer.optimizer.param_groups:
            group["lr"] = self.lr
        saved = snapshot_training_state(trainer.model, trainer.optimizer)
        with torch.cuda.device(device):
            current = torch.cuda.current_stream(device)
            side = torch.cuda.Stream(device)
            side.wait_stream(current)
            with torch.cuda.stream(side):
                for _ in range(self.WARMUP_STEPS):
                    trainer.sgd_step(self.inputs, self.labels, zero_grad=True)
            current.wait_stream(side)
            trainer.optimizer.zero_grad(set_to_none=True)  # gradients are then allocated inside the graph's pool
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph, stream=torch.cuda.Stream(device)):
                self.loss, self.wrong = trainer.sgd_step(self.inputs, self.labels, zero_grad=False)
        restore_training_state(trainer.model, trainer.optimizer, saved)

    def replay(self, inputs: torch.Tensor, labels: torch.Tensor, lr: float) -> tuple[torch.Tensor, torch.Tensor]:
        """Run the step on this batch; the returned tensors are overwritten by the next replay."""
        self.inputs.copy_(inputs)
        self.labels.copy_(labels)
        self.lr.fill_(lr)
        self.graph.replay()
        return self.loss, self.wrong


def snapshot_training_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """Copies of the weights, BN statistics and momentum buffers, to undo steps taken only to prepare a capture."""
    weights = {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}
    momentum = {id(p): s["momentum_buffer"].clone() for p, s in optimizer.state.items()
                if s.get("momentum_buffer") is not None}
    return {"model": weights, "momentum": momentum}


@torch.no_grad()
def restore_training_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer, saved: dict[str, Any]) -> None:
    """Copy the snapshot back into the same tensors (a CUDA graph holds their addresses). A momentum buffer born
    in the undone steps becomes zero, so the next real step sets it to the gradient, as SGD's first step does."""
    for name, tensor in model.state_dict().items():
        tensor.copy_(saved["model"][name])
    for param, state in optimizer.state.items():
        buffer = state.get("momentum_buffer")
        if buffer is None:
            continue
        before = saved["momentum"].get(id(param))
        if before is not None:
            buffer.copy_(before)
        else:
            buffer.zero_()


def uses_compile(config: TrainConfig, device: torch.device) -> bool:
    if config.compile is not None:
        return config.compile
    return device.type == "cpu" and config.iterations >= COMPILE_MIN_ITERATIONS


def resolved_precision(precision: str, device: torch.device) -> str:
    return precision if precision != "auto" else "tf32" if device.type == "cuda" else "fp32"


def precision_context(precision: str, device: torch.device, graph_safe: bool = False) -> Callable[[], Any]:
    """Set matmul/conv precision for the run and return the autocast context factory for its forward passes."""
    precision = resolved_precision(precision, device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = precision == "tf32"
        torch.backends.cudnn.allow_tf32 = precision == "tf32"
    if precision == "bf16":
        # autocast keeps BN and the loss in fp32; only convs and the FC layer run in bf16
        # a CUDA graph must not keep autocast's cache of cast weights: a replay would read stale copies
        return lambda: torch.autocast(device_type=device.type, dtype=torch.bfloat16, cache_enabled=not graph_safe)
    return contextlib.nullcontext


# What the TF32 switches give in a process that never touched them: cuDNN convolutions in TF32, matmuls in fp32.
PYTORCH_DEFAULT_PRECISION = {"cuda": "PyTorch default: tf32 convolutions, fp32 matmuls", "cpu": "fp32"}


@contextlib.contextmanager
def pytorch_default_precision() -> Iterator[None]:
    """PyTorch's own TF32 switches for the duration, whatever a Trainer in this process set (they are global)."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = False, True
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def run_training(config: TrainConfig, run_dir: Path, should_stop: Callable[[], bool] = lambda: False,
                 dataset: Dataset | None = None) -> RunResult:
    """Train (or resume) the run in run_dir; rows go to metrics.csv as each epoch ends."""
    config.validate()
    ensure_writable_dir(run_dir)
    device = resolve_device(config.device)
    if config.threads:
        torch.set_num_threads(config.threads)
    if device.type == "cuda":
        torch.cuda.set_device(device)  # streams, graphs and cuDNN handles of this process are made on the run's GPU
    dataset = dataset or load_dataset(config.data)
    trainer = Trainer(resolve_iterations(config, len(dataset.train_labels)), run_dir, device, dataset)
    try:
        write_config(run_dir, {**asdict(config), "resolved": describe_run(trainer, dataset), "environment": environment(device)})
        return train_to_the_end(trainer, dataset, should_stop)
    finally:
        trainer.close()


def train_to_the_end(trainer: Trainer, dataset: Dataset, should_stop: Callable[[], bool]) -> RunResult:
    config, run_dir, device = trainer.config, trainer.run_dir, trainer.device
    if not trainer.try_resume() and config.init:
        load_init(trainer.model, config.init, dataset.num_classes)
    has_val = dataset.val_labels is not None
    writer = MetricsWriter(run_dir / METRICS_FILE, metric_columns(has_val), keep_rows=trainer.csv_rows)
    trainer.gradients.open(run_dir / GRADIENTS_FILE)
    status = RunStatus(state="running", epoch=trainer.epoch, epochs=trainer.epochs, iteration=trainer.iteration,
                       iterations=config.iterations, device=device_label(device))
    status.write(run_dir)

    def report(live: dict[str, float]) -> None:
        for key, value in live.items():
            setattr(status, key, value)
        status.warmup_end_iteration = trainer.warmup_end_iteration
        status.write(run_dir)

    final_test_error = None
    while trainer.iteration < config.iterations:
        sums = trainer.train_epoch(should_stop, report)
        if sums is None:
            trainer.save_checkpoint()
            return RunResult("interrupted", trainer.epoch, trainer.iteration, None, trainer.warmup_end_iteration)
        trainer.epoch += 1
        row = {"epoch": trainer.epoch, "iteration": trainer.iteration,
               "lr": trainer.last_step_lr(), **sums}
        row["test_loss"], row["test_error"] = trainer.evaluate(*dataset_split(trainer, "test"))
        if has_val:
            row["val_loss"], row["val_error"] = trainer.evaluate(*dataset_split(trainer, "val"))
        writer.append(row)
        trainer.csv_rows = writer.rows
        trainer.gradients.end_epoch(trainer.epoch, trainer.iteration)
        final_test_error = row["test_error"]
        report({"epoch": trainer.epoch, "iteration": trainer.iteration, "train_error": row["train_error"],
                "test_error": row["test_error"], "images_per_second": row["images_per_second"]})
        if not math.isfinite(row["train_loss"]):
            return RunResult("diverged", trainer.epoch, trainer.iteration, final_test_error, trainer.warmup_end_iteration)
        trainer.save_checkpoint()
    return RunResult("done", trainer.epoch, trainer.iteration, final_test_error, trainer.warmup_end_iteration)


def dataset_split(trainer: Trainer, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    data = trainer.data
    return (data.test_images, data.test_labels) if split == "test" else (data.val_images, data.val_labels)  # type: ignore[return-value]


def describe_run(trainer: Trainer, dataset: Dataset) -> dict[str, Any]:
    """The resolved settings stored in config.json beside the raw config."""
    config = trainer.config
    return {
        "iterations": config.iterations, "steps_per_epoch": trainer.steps_per_epoch, "epochs": trainer.epochs,
        "lr_milestone_iterations": [round(m * config.iterations) for m in config.lr_milestones],
        "warmup": config.uses_warmup(), "compile": trainer.compiled, "channels_last": trainer.channels_last,
        "cuda_graph": config.cuda_graph, "precision": resolved_precision(config.precision, trainer.device),
        "train_size": len(dataset.train_labels), "test_size": len(dataset.test_labels),
        "val_size": 0 if dataset.val_labels is None else len(dataset.val_labels), "num_classes": dataset.num_classes,
        "params": count_parameters(trainer.model),
        "init": describe_init(config.init) if config.init else None,
    }
