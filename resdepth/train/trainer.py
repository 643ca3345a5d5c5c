"""One training run with the §4.2 protocol: SGD, iteration-based step schedule, warm-up for deep nets.

`run_training(config, run_dir)` trains, writes metrics.csv row by row, checkpoints at each epoch's end (or at the
--checkpoint-every cadence, and when asked to stop), resumes exactly from the last checkpoint, records how it
ended in status.json, and returns a `RunResult`. It never prints.

One engine trains one model or K: `Engine` is what every trainer does around its steps (resume, --init, the
epochs' rows, checkpoints, dropping finished models) and `train_to_the_end` drives it; the protocol of each model
is a `protocol.RunProgress`, configured by a `protocol.TrainConfig`. `Trainer`, a single run, is an Engine whose
one member is itself; `fused.FusedTrainer` is one with K members.
"""

from __future__ import annotations

import contextlib
import io
import math
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from ..config import check_fields, from_dict
from ..errors import UserError
from ..models import count_parameters
from ..models.families import (
    build_network,
    family_record,
    get_family,
    recorded_version,
    weight_layers,
)
from ..results.groups import config_difference
from ..results.runs import (
    CHECKPOINT_FILE,
    CONFIG_FILE,
    GRADIENTS_FILE,
    METRICS_FILE,
    RUN_CONFIG_SECTIONS,
    MetricsWriter,
    RunStatus,
    check_writable_dir,
    ensure_writable_dir,
    metric_columns,
    read_checkpoint,
    read_json,
    read_metrics,
    recorded_attempts,
    remove_leftover_temps,
    replace_all,
    stage_all,
    sync_file,
    write_config,
)
from ..results.tensorboard_log import TensorBoardLog
from .construct import check_init, describe_init, load_init
from .data import Dataset, load_dataset, model_inputs, normalize
from .devices import (
    CapturedStep,
    caller_state_kept,
    check_compile_possible,
    check_cuda_graph_device,
    compile_fails,
    cudnn_benchmark,
    device_label,
    environment,
    precision_context,
    prepare_compiling,
    resolve_device,
    resolved_precision,
    set_cudnn_mode,
)
from .gradients import GradientLog
from .protocol import Cadence, RunProgress, TrainConfig, checkpoint_state, saved_momentum

# CUDA: torch.compile's CUDA-graph mode (cudagraph trees) removes the launch cost of each of the eager step's ~240
# kernels, which bounds a ResNet-20 step on a GPU; the CPU has no such mode. Not yet run on a GPU (gpu_bench.sh 2c)
COMPILE_MODES = {"cuda": "reduce-overhead"}
COMPILE_MIN_ITERATIONS = 2_000  # ~250k images: minutes of CPU training, against 1-2 min of compiling

@dataclass
class RunResult:
    """How a run_training call ended: its state, how far it got, and its final test error (%) once done."""

    state: str  # done, diverged or interrupted
    epochs_done: int
    iterations_done: int
    final_test_error: float | None
    warmup_end_iteration: int | None
    warmup_end_reason: str | None = None  # threshold (training error below warmup_until_error) or cap


def steps_per_epoch(train_size: int, batch_size: int) -> int:
    # Full batches only (static shapes); a training set smaller than a batch is one batch per epoch.
    return max(1, train_size // batch_size)


def resolve_iterations(config: TrainConfig, train_size: int) -> TrainConfig:
    """--epochs E becomes E epochs' worth of iterations, so the schedule is always in iterations."""
    if config.epochs is None:
        return config
    return replace(config, iterations=config.epochs * steps_per_epoch(train_size, config.batch_size))


def build_run_network(config: TrainConfig, num_classes: int) -> torch.nn.Module:
    """The run's network, initialised from the global RNG (seeded with the run's seed just before)."""
    return build_network(config.kind, config.depth, num_classes=num_classes, shortcut=config.shortcut,
                         net_options=config.options)


def init_weights(config: TrainConfig, num_classes: int) -> dict[str, torch.Tensor]:
    """--init's weights (and BN statistics) for the run's network, checked to be of that network. The network
    they are loaded into is built on a fork of the global RNG, which the run's own random states never see."""
    with torch.random.fork_rng(devices=[]):
        network = build_run_network(config, num_classes)
    load_init(network, config.init, config.kind, config.depth, config.shortcut, num_classes)  # type: ignore[arg-type]
    return network.state_dict()


def sgd_optimizer(params: Any, config: TrainConfig, device: torch.device, compiled: bool = False) -> torch.optim.SGD:
    """§4.2's SGD. The same update either way: fused (one kernel for all parameters) on CUDA, foreach on the CPU and
    wherever the step is compiled: dynamo never traces into the fused kernel (it breaks the graph around it, so the
    update would stay eager and outside a CUDA graph), while Inductor fuses the foreach update itself."""
    implementation = {"fused": True} if device.type == "cuda" and not compiled else {"foreach": True}
    return torch.optim.SGD(params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay,
                           **implementation)


def uses_compile(config: TrainConfig, device: torch.device, fused: bool = False) -> bool:
    """Whether a run (fused: a fused group) compiles its step. A group compiles only when asked, --compile or
    --cuda-graph (which it takes through torch.compile's CUDA-graph mode): compiled, a group of 2 ResNet-20 trained
    at 0.77x its eager img/s on 2 CPU cores (BENCHMARKS.md), where a run alone gains 6-14%; CUDA is not measured
    yet (gpu_bench.sh 2e)."""
    if fused:
        return asked_compile(config, fused=True) is not None
    if config.compile is not None:
        return config.compile
    return device.type == "cpu" and config.iterations >= COMPILE_MIN_ITERATIONS and not compile_fails("cpu")


def asked_compile(config: TrainConfig, fused: bool = False) -> str | None:
    """The option by which a run (fused: a fused group) asks to be compiled, or None (auto compiles only where it
    can, `uses_compile`)."""
    if config.compile:
        return "--compile"
    return "--cuda-graph" if fused and config.cuda_graph else None


class Engine:
    """What every trainer of one model or K does around its steps, written once: resume each model from its own
    checkpoint or start it from --init, close epochs into metrics rows, write checkpoints, drop models that have
    finished or diverged. `train_to_the_end` drives any engine. A subclass holds the weights and provides
    `train_step()` (one step of every active model), `evaluate`, `model_weights`, `model_momentum`,
    `set_weights` and `load_momentum`."""

    members: list[RunProgress]  # one per model, in the order of the run folders
    active: list[RunProgress]  # those still training
    data: Dataset
    data_fingerprint: str
    batch: int
    train_size: int
    param_groups: list[dict[str, Any]]  # the SGD settings a checkpoint records, as torch's SGD saves them
    state_names: list[str]  # the network's state_dict keys
    network: torch.nn.Module  # the network's shape (config.json's parameter count)
    compiled: bool
    channels_last: bool

    def train_step(self) -> Any:
        raise NotImplementedError

    def evaluate(self, members: list[RunProgress], images: torch.Tensor,
                 labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """These models' summed loss and wrong answers on the images, each a (K,) device tensor."""
        raise NotImplementedError

    def model_weights(self, member: RunProgress) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def model_momentum(self, member: RunProgress) -> dict[int, torch.Tensor]:
        raise NotImplementedError

    def set_weights(self, member: RunProgress, state: dict[str, torch.Tensor]) -> None:
        raise NotImplementedError

    def load_momentum(self, member: RunProgress, momentum: dict[int, torch.Tensor]) -> None:
        raise NotImplementedError

    def ended_members(self) -> list[RunProgress]:
        return [member for member in self.active if member.epoch_ended()]

    def drop(self, members: list[RunProgress]) -> None:
        """These models train no more (finished or diverged)."""
        self.active = [member for member in self.active if member not in members]

    def close_epochs(self, members: list[RunProgress]) -> list[dict[str, float | int]]:
        """The metrics rows of the epochs these models just finished: sums, lr, test (and val) errors."""
        rows = [member.row(member.close_epoch(self.batch)) for member in members]
        # the held-out splits (the training error is the epochs' own sums), summed on the device and read in one
        # transfer for every split and model
        held_out = {split: data for split, data in self.data.splits().items() if split != "train"}
        sums = [torch.stack(self.evaluate(members, images, labels)) for images, labels in held_out.values()]
        for (split, (_, labels)), (losses, wrong) in zip(held_out.items(), torch.stack(sums).tolist(), strict=True):
            for row, loss, miss in zip(rows, losses, wrong, strict=True):
                row[f"{split}_loss"], row[f"{split}_error"] = loss / len(labels), miss / len(labels) * 100
        return rows

    # ------------------------------------------------------------------ checkpoints, one per model
    def checkpoint(self, member: RunProgress) -> dict[str, Any]:
        """The model's checkpoint, in the one format that a single run and a fused group both write and read."""
        return checkpoint_state(member, self.model_weights(member), self.model_momentum(member), self.param_groups,
                                self.data_fingerprint)

    def checkpoint_bytes(self, member: RunProgress) -> bytes:
        buffer = io.BytesIO()
        torch.save(self.checkpoint(member), buffer)
        return buffer.getvalue()

    def load_checkpoint(self, member: RunProgress, state: dict[str, Any], path: Path | None = None) -> None:
        """Restore a checkpoint read onto the CPU (`read_checkpoint`): tensors move to this engine's device."""
        member.load_progress(state)  # first: it refuses a checkpoint of another device type
        if set(state["model"]) != set(self.state_names):
            raise UserError(f"{path} holds another network's weights: delete it and rerun with --retry-failed")
        self.set_weights(member, state["model"])
        with torch.no_grad():
            self.load_momentum(member, saved_momentum(state))

    def try_resume(self) -> list[RunProgress]:
        """Each model continues from its own checkpoint, if its folder holds one (whichever trainer wrote it);
        returns the models that start afresh."""
        fresh = []
        for member in self.members:
            state = read_resume_checkpoint(member.run_dir, self.data_fingerprint)
            if state is None:
                fresh.append(member)
            else:
                self.load_checkpoint(member, state, member.run_dir / CHECKPOINT_FILE)
        return fresh

    def start(self, num_classes: int) -> None:
        """Resume every model that has a checkpoint; the others start from --init's weights if it names any."""
        fresh = self.try_resume()
        config = self.members[0].config
        if fresh and config.init:
            weights = init_weights(config, num_classes)  # the models of a group share their --init: loaded once
            for member in fresh:
                self.set_weights(member, weights)


class Trainer(RunProgress, Engine):
    """One run: its protocol (a `RunProgress`, its own and only member) and its model, optimizer and data, eager,
    compiled or replayed as a CUDA graph.

    `train_step` trains one step; `train_epoch` trains to the end of the epoch (or a stop) and counts it, for
    the benchmarks; `close_epochs` evaluates it into the metrics row. The Trainer owns its position (iteration,
    epoch, the epoch in progress): callers only read it.
    """

    def __init__(self, config: TrainConfig, run_dir: Path, device: torch.device, dataset: Dataset):
        config = config.for_family()
        check_cuda_graph_device(config.cuda_graph, str(device))
        check_compile_possible(asked_compile(config), str(device))
        torch.manual_seed(config.seed)
        self.data_fingerprint = dataset.fingerprint()
        self.data = dataset.to(device)
        self.mean = self.data.pixel_mean()
        self.train_size = len(self.data.train_labels)
        self.batch = min(config.batch_size, self.train_size)
        self.channels_last = channels_last_of(config, run_dir, device)
        self.model = build_run_network(config, dataset.num_classes).to(device)
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        steps = steps_per_epoch(self.train_size, config.batch_size)
        super().__init__(config, run_dir, device, steps, GradientLog(weight_layers(self.model), device), True)
        self.compiled = uses_compile(config, device)
        self.optimizer = sgd_optimizer(self.model.parameters(), config, device, self.compiled)
        self.param_groups = self.optimizer.state_dict()["param_groups"]
        self.state_names = list(self.model.state_dict())
        if self.compiled:
            prepare_compiling()
        self.forward = torch.compile(self.model, mode=COMPILE_MODES.get(device.type)) if self.compiled else self.model
        self.optimizer_step = self.compiled_sgd() if self.compiled else self.optimizer.step
        self.autocast = precision_context(config.precision, device, graph_safe=config.cuda_graph)
        set_cudnn_mode(device, config.deterministic)
        self.captured: CapturedStep | None = None  # captured at the first step, after any resume
        self.members, self.active = [self], [self]

    @property
    def network(self) -> torch.nn.Module:
        return self.model

    # ------------------------------------------------------------------ weights in the checkpoint format
    def model_weights(self, member: RunProgress) -> dict[str, torch.Tensor]:
        return self.model.state_dict()

    def model_momentum(self, member: RunProgress) -> dict[int, torch.Tensor]:
        momentum = {}
        for index, param in enumerate(self.model.parameters()):
            buffer = self.optimizer.state.get(param, {}).get("momentum_buffer")
            if buffer is not None:
                momentum[index] = buffer
        return momentum

    def set_weights(self, member: RunProgress, state: dict[str, torch.Tensor]) -> None:
        self.model.load_state_dict(state)

    def load_momentum(self, member: RunProgress, momentum: dict[int, torch.Tensor]) -> None:
        """Each buffer in its param's strides, whatever layout it was saved in (CUDA's fused SGD kernel assumes
        equal strides and computes a wrong update, silently, from a buffer laid out otherwise)."""
        params = list(self.model.parameters())
        for index, buffer in momentum.items():
            self.optimizer.state[params[index]]["momentum_buffer"] = torch.empty_like(params[index]).copy_(buffer)

    def close(self) -> None:
        """Drop the model, data, optimizer and CUDA graph now: a finished run's GPU memory is free at once, not
        when the cyclic garbage collector gets round to it (the next cell of an in-process sweep needs it)."""
        self.captured = self.in_progress = None
        self.model = self.forward = self.optimizer = self.optimizer_step = self.data = None  # type: ignore[assignment]
        self.gradients = None  # type: ignore[assignment]  # it holds the conv weights, and so their gradients
        self.members, self.active = [], []

    # ------------------------------------------------------------------ steps
    def train_epoch(self, should_stop: Callable[[], bool] = lambda: False) -> dict[str, float] | None:
        """Train to the end of the epoch, count it and return its sums; or stop early when asked (returns None;
        the position is kept). What the benchmarks time: the steps, without rows or checkpoints."""
        while True:
            self.start_epoch(self.train_size)
            if should_stop():
                self.pause()
                return None
            self.train_step()
            if self.epoch_ended():
                return self.close_epoch(self.batch)

    def train_step(self) -> None:
        """One SGD step on the epoch's next batch, its sums, its gradient sample and the warm-up check."""
        epoch = self.start_epoch(self.train_size)
        lr = self.lr()
        index = self.next_batch(self.batch)
        loss, wrong = self.step_on(index, lr)
        self.gradients.sample(epoch.step)
        self.count_step(lr, loss, wrong, len(index))

    def step_on(self, index: torch.Tensor, lr: float) -> tuple[torch.Tensor, torch.Tensor]:
        """One SGD step on the images at index; returns the batch's mean loss and wrong answers (device tensors)."""
        images = self.data.train_images[index]
        inputs = model_inputs(images, self.mean, [self.generator], self.config.data.augment, self.channels_last)[0]
        labels = self.data.train_labels[index]
        if self.config.cuda_graph and len(index) == self.batch:
            if self.captured is None:
                self.captured = CapturedStep(self.sgd_step, self.model, self.optimizer, self.device, inputs, labels)
            return self.captured.replay(inputs, labels, lr)
        if self.compiled:
            self.lr_tensor.fill_(lr)
        else:
            for group in self.optimizer.param_groups:
                group["lr"] = lr
        return self.sgd_step(inputs, labels, True)

    def compiled_sgd(self) -> Callable[[], Any]:
        """The SGD update compiled too (one fused kernel per elementwise chain). Its lr lives in a device tensor
        that each step fills: a float lr would be a constant of the compiled code, recompiled at every change."""
        self.lr_tensor = torch.tensor(self.config.lr, device=self.device)
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr_tensor
        return torch.compile(self.optimizer.step)

    def sgd_step(self, inputs: torch.Tensor, labels: torch.Tensor,
                 zero_grad: bool) -> tuple[torch.Tensor, torch.Tensor]:
        with self.autocast():
            logits = self.forward(inputs)
            loss = F.cross_entropy(logits, labels)
        if zero_grad:
            self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer_step()
        return loss.detach().float(), (logits.detach().argmax(1) != labels).sum().float()

    @torch.no_grad()
    def evaluate(self, members: list[RunProgress], images: torch.Tensor,
                 labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Summed loss and wrong answers (each (1,), on the device) on un-augmented images, in eval mode (BN running
        statistics)."""
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
        return loss_sum.view(1), wrong.view(1)


def run_training(config: TrainConfig, run_dir: Path | str, should_stop: Callable[[], bool] = lambda: False,
                 dataset: Dataset | None = None) -> RunResult:
    """Train (or resume) the run in run_dir: metrics.csv gets a row as each epoch ends, and status.json says how
    the run ended (done, diverged or interrupted) whichever entry point called it. A finished run asked again
    trains nothing and returns its result; a folder holding a run of another config is refused (UserError).
    Ctrl-C (a notebook's interrupt) checkpoints the run where it is, then raises KeyboardInterrupt. What the run
    sets process-wide (the global random state, threads, TF32 and cuDNN switches) is the caller's again after."""
    run_dir = Path(run_dir)
    with caller_state_kept():
        (config,), device, dataset = prepare_runs([config], [run_dir], dataset)
        trainer = Trainer(resolve_iterations(config, len(dataset.train_labels)), run_dir, device, dataset)
        try:
            trainer.start(dataset.num_classes)
            write_run_config(trainer, trainer, config, dataset)
            with ctrl_c_stops() as pressed:
                return train_to_the_end(trainer, lambda: should_stop() or pressed())[0]
        finally:
            trainer.close()


def prepare_runs(configs: list[TrainConfig], run_dirs: list[Path],
                 dataset: Dataset | None) -> tuple[list[TrainConfig], torch.device, Dataset]:
    """What a single run and a fused group check and set up before their engine: each config with its family's
    values filled in and valid, each folder writable and begun (if at all) on today's networks; the device, this
    process's threads and GPU, and the data."""
    check_run_list(configs, run_dirs)
    configs = [replace(config) for config in configs]
    for config in configs:
        check_fields(config)  # numpy's numbers as Python's, before the family is looked up by the kind
    configs = [config.for_family() for config in configs]
    for config in configs:
        config.validate()
    for run_dir, config in zip(run_dirs, configs, strict=True):
        check_writable_dir(run_dir)
        check_same_network(run_dir, config.kind)  # first: the reason no config of today would resume it
        check_same_run(run_dir, config)
    device = resolve_device(configs[0].device)
    prepare_process(configs[0], device)
    dataset = dataset or load_dataset(configs[0].data)
    for run_dir, config in zip(run_dirs, configs, strict=True):  # nothing is made before the data has loaded
        if config.init and not (run_dir / CHECKPOINT_FILE).exists():
            check_init(config.init, config.kind, config.depth, config.shortcut, dataset.num_classes)
        ensure_writable_dir(run_dir)
    return configs, device, dataset


def check_run_list(configs: list[TrainConfig], run_dirs: list[Path]) -> None:
    """One folder per config, each named once: two models written into one folder would leave neither."""
    if not configs or len(configs) != len(run_dirs):
        raise UserError(f"give one run folder per config: got {len(configs)} config(s) and {len(run_dirs)} "
                        "folder(s)")
    resolved = [Path(run_dir).resolve() for run_dir in run_dirs]
    twice = next((run_dir for run_dir, where in zip(run_dirs, resolved, strict=True) if resolved.count(where) > 1),
                 None)
    if twice is not None:
        raise UserError(f"{twice} is given twice: each run needs its own folder")


def load_run_config(run_dir: Path | str) -> TrainConfig:
    """The run's config.json as a TrainConfig, strictly (the sections training adds, resolved and environment,
    are read elsewhere); a UserError names the file and what is wrong in it."""
    path = Path(run_dir) / CONFIG_FILE
    payload = read_json(path)
    if payload is None:
        raise UserError(f"{path} is missing or not valid JSON: rerun the sweep, or delete the folder to start over")
    return run_config(payload, path)


def run_config(payload: Any, path: Path) -> TrainConfig:
    """A config.json's contents (read from path) as a TrainConfig, strictly."""
    return from_dict(TrainConfig, payload, str(path), ignore=RUN_CONFIG_SECTIONS)


def check_same_run(run_dir: Path, config: TrainConfig) -> None:
    """Refuse a folder that holds a run of another config (the sweep plans these as `mismatch`): training on would
    record this config beside the other run's weights and rows."""
    payload = read_json(run_dir / CONFIG_FILE)
    if payload is None:
        if (run_dir / CHECKPOINT_FILE).exists():
            raise UserError(f"{run_dir} holds a {CHECKPOINT_FILE} but no {CONFIG_FILE}: what it trained cannot be "
                            "told; train into another folder, or delete this one to start over")
        return
    saved = run_config(payload, run_dir / CONFIG_FILE)
    differs = config_difference(asdict(saved.for_family()), asdict(config))
    if differs:
        raise UserError(f"{run_dir} holds a run with a different config ({differs}): train into another folder, or "
                        "delete this one to start over")


def write_run_config(engine: Engine, run: RunProgress, config: TrainConfig, dataset: Dataset, **extra: Any) -> None:
    """The run's config.json, as each attempt starts (its checkpoint read): its config as given (the family's values
    filled in), what it resolved to, the machine and anything its engine adds (a fused group, its members), and
    under `attempts` each attempt's start, machine and execution. A finished run asked again is left as it is: its
    record names the machines that trained it, not the one that asked."""
    if run.finished:
        return
    resolved, machine = describe_run(run, engine, dataset), environment(run.device)
    attempt = {"from_iteration": run.iteration, "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
               "environment": machine, "execution": {key: resolved[key] for key in ATTEMPT_EXECUTION}, **extra}
    write_config(run.run_dir, {**asdict(config), "resolved": resolved, "environment": machine, **extra,
                               "attempts": [*earlier_attempts(run), attempt]})


# How an attempt trained that may change across a resume (the execution options as they took effect)
ATTEMPT_EXECUTION = ("precision", "compile", "channels_last", "cuda_graph", "cudnn_benchmark")


def earlier_attempts(run: RunProgress) -> list[dict[str, Any]]:
    """The attempts config.json records before this one, when this one resumes (a run started over has none). A
    config.json written before attempts were recorded gives its machine as one attempt of unknown start."""
    saved = read_json(run.run_dir / CONFIG_FILE) if run.iteration else None
    return recorded_attempts(saved) if isinstance(saved, dict) else []


def check_same_network(run_dir: Path, kind: str) -> None:
    """Refuse to resume a run begun on another version of its family's networks (a fix has changed what they
    compute since): its weights would go on training in another function, and its config.json would name only one."""
    change = network_change(run_dir, kind)
    if change:
        was, now = change
        raise UserError(f"{run_dir} began training on version {was} of the {kind} networks and resdepth now builds "
                        f"version {now} (docs/families.md, Network versions): resuming would mix the two; delete its "
                        f"{CHECKPOINT_FILE} and rerun (a sweep: with --retry-failed) to start it over, or keep it and "
                        "sweep into another --out folder")


def network_change(run_dir: Path, kind: str) -> tuple[int, int] | None:
    """(version begun on, version built now) for a checkpoint begun on another version of its family's networks;
    None for one of today's, or no checkpoint (a finished run is read, never resumed)."""
    saved = resumed_config(run_dir)
    if saved is None or "resolved" not in saved:
        return None
    was, now = recorded_version(saved), get_family(kind).version
    return (was, now) if was != now else None


def resumed_config(run_dir: Path) -> dict[str, Any] | None:
    """The config.json of a run folder that holds a checkpoint (what a resume goes on from); None without either,
    or where config.json is not a JSON object."""
    if not (run_dir / CHECKPOINT_FILE).exists():
        return None
    saved = read_json(run_dir / CONFIG_FILE)
    return saved if isinstance(saved, dict) else None


def read_resume_checkpoint(run_dir: Path, data_fingerprint: str) -> dict[str, Any] | None:
    """The run folder's checkpoint to resume from (None: there is none), refused if trained on other data. A
    checkpoint write cut short by a kill leaves a temporary file, removed here: the previous checkpoint is intact."""
    remove_leftover_temps(run_dir)
    path = run_dir / CHECKPOINT_FILE
    if not path.exists():
        return None
    state = read_checkpoint(path)
    saved = state.get("data_fingerprint")  # absent in checkpoints written before it existed
    if saved is not None and saved != data_fingerprint:
        raise UserError(f"the training data is not what {path} was trained on (images or labels changed): "
                        "restore the data, or delete checkpoint.pt and rerun with --retry-failed to start over")
    return state


def prepare_process(config: TrainConfig, device: torch.device) -> None:
    if config.threads:
        torch.set_num_threads(config.threads)
    if device.type == "cuda":
        torch.cuda.set_device(device)  # streams, graphs and cuDNN handles of this process are made on the run's GPU


@contextlib.contextmanager
def ctrl_c_stops() -> Iterator[Callable[[], bool]]:
    """Training called from Python's main thread (a script, a notebook): a Ctrl-C is a stop request, so the runs
    checkpoint where they are and end `interrupted`, and KeyboardInterrupt is raised once they have. A second
    Ctrl-C interrupts at once. A caller with its own SIGINT handler (the command line, a sweep's worker) keeps it."""
    if (threading.current_thread() is not threading.main_thread()
            or signal.getsignal(signal.SIGINT) is not signal.default_int_handler):
        yield lambda: False
        return
    pressed: list[int] = []

    def request_stop(signum: int, _frame: object) -> None:
        pressed.append(signum)
        signal.signal(signal.SIGINT, signal.default_int_handler)

    signal.signal(signal.SIGINT, request_stop)
    try:
        yield lambda: bool(pressed)
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    if pressed:
        raise KeyboardInterrupt


def train_to_the_end(engine: Engine, should_stop: Callable[[], bool] = lambda: False) -> list[RunResult]:
    """Steps until every model has finished, diverged, or the job is asked to stop (checked before every step);
    each model's epochs get their rows, checkpoints and status. Returns one RunResult per model, in order."""
    has_val = engine.data.val_labels is not None
    logs = {id(member): RunLogs.open(member, has_val) for member in engine.members}
    engine.drop(finish([member for member in engine.members if member.finished], logs, "done"))
    last_report = time.monotonic()
    while engine.active:
        for member in engine.active:
            member.start_epoch(engine.train_size)  # before the stop check: a stopped epoch keeps its data order
        if should_stop():
            for member in engine.active:
                member.pause()
            save_checkpoints(engine, engine.active, logs)
            finish(engine.active, logs, "interrupted")
            break
        engine.train_step()
        ended = engine.ended_members()
        if ended:
            engine.drop(end_epochs(engine, ended, logs))
        save_due_checkpoints(engine, [member for member in engine.active if member not in ended], logs)
        if time.monotonic() - last_report > 1.0:  # progress for displays only: decides nothing
            last_report = time.monotonic()
            report_progress(engine, logs)
    return [logs[id(member)].result for member in engine.members]  # type: ignore[misc]


def end_epochs(engine: Engine, ended: list[RunProgress], logs: dict[int, RunLogs]) -> list[RunProgress]:
    """Rows, status and checkpoints of the epochs that just ended; returns the models that are now done or
    diverged, to be dropped."""
    leaving: list[RunProgress] = []
    saving: list[RunProgress] = []
    for member, row in zip(ended, engine.close_epochs(ended), strict=True):
        logs[id(member)].append(member, row)
        if not math.isfinite(row["train_loss"]):
            leaving += finish([member], logs, "diverged")  # no checkpoint: it keeps the last finite epoch
        elif member.finished or logs[id(member)].checkpoint_due(member, epoch_ended=True):
            saving.append(member)  # the last one always: analysis reads its weights
    save_checkpoints(engine, saving, logs)
    return leaving + finish([member for member in saving if member.finished], logs, "done")


def save_due_checkpoints(engine: Engine, members: list[RunProgress], logs: dict[int, RunLogs]) -> None:
    """Inside an epoch, the checkpoints that an iteration or minute cadence has made due (with its epoch so far)."""
    due = []
    for member in members:
        epoch = member.in_progress
        if epoch is None or not logs[id(member)].checkpoint_due(member, epoch_ended=False):
            continue
        if torch.isfinite(epoch.loss_sum).item():  # a diverging epoch is not kept: its row will record the NaN
            member.pause()
            due.append(member)
    save_checkpoints(engine, due, logs)


def save_checkpoints(engine: Engine, members: list[RunProgress], logs: dict[int, RunLogs]) -> None:
    """The members' checkpoints, as one: every file is whole on the disk before any replaces its last one, so a kill
    leaves a fused group's members at one iteration (resumed at two, the one ahead would finish first and the other
    train its last steps alone, in another float order than the group that was never killed)."""
    for member in members:
        logs[id(member)].sync(member)  # the rows each checkpoint counts reach the disk first
    replace_all(stage_all([(member.run_dir / CHECKPOINT_FILE, partial(engine.checkpoint_bytes, member))
                           for member in members]))
    for member in members:
        logs[id(member)].saved(member)


def finish(members: list[RunProgress], logs: dict[int, RunLogs], state: str) -> list[RunProgress]:
    for member in members:
        logs[id(member)].end(member, state)
    return members


def report_progress(engine: Engine, logs: dict[int, RunLogs]) -> None:
    """Live progress in every active model's status.json: its own error so far and its own share of img/s."""
    for member in engine.active:
        epoch = member.in_progress
        if epoch is None or not epoch.step or member.epoch_started is None:
            continue
        seen = epoch.step * engine.batch
        logs[id(member)].status.update(member.run_dir, live_train_error=epoch.wrong.item() / seen * 100,
                                       iteration=member.iteration,
                                       images_per_second=seen / (time.perf_counter() - member.epoch_started),
                                       **warmup_progress(member))


@dataclass
class RunLogs:
    """What a run writes besides its checkpoint: metrics.csv, gradients.csv (through its GradientLog), status.json
    and the --tensorboard events; and, once it has ended, how. One per model, single or fused."""

    writer: MetricsWriter
    status: RunStatus
    board: TensorBoardLog | None
    cadence: Cadence
    result: RunResult | None = None
    saved_iteration: int = 0  # where and when (time.monotonic()) the last checkpoint was written or read
    saved_at: float = 0.0

    @classmethod
    def open(cls, run: RunProgress, has_val: bool) -> RunLogs:
        """Start (or continue) the run's files, each kept as far as its checkpoint; metrics.csv is cut back first,
        so a resumed run's status shows its last kept epoch."""
        writer = MetricsWriter(run.run_dir / METRICS_FILE, metric_columns(has_val), keep_rows=run.epoch)
        run.gradients.open(run.run_dir / GRADIENTS_FILE)
        # --tensorboard: the event file restarts from the rows the CSV kept, so no epoch shows twice
        board = TensorBoardLog.resumed(run.run_dir, run.epoch) if run.config.tensorboard else None
        status = starting_status(run)
        status.write(run.run_dir)
        cadence = Cadence.parse(run.config.checkpoint_every, run.device.type)
        return cls(writer, status, board, cadence, saved_iteration=run.iteration, saved_at=time.monotonic())

    def checkpoint_due(self, run: RunProgress, epoch_ended: bool) -> bool:
        if self.cadence.per_epoch:
            return epoch_ended
        return self.cadence.due(run.iteration - self.saved_iteration, time.monotonic() - self.saved_at)

    def saved(self, run: RunProgress) -> None:
        """Its checkpoint is written (`save_checkpoints`): the cadence counts from here, and status.json says where a
        resume would start."""
        self.saved_iteration, self.saved_at = run.iteration, time.monotonic()
        self.status.update(run.run_dir, saved_iteration=run.iteration)

    def append(self, run: RunProgress, row: dict[str, float | int]) -> None:
        """The epoch just ended: its metrics row, its gradient norms, its events and its status."""
        self.writer.append(row)
        run.gradients.end_epoch(run.epoch, run.iteration)
        if self.board is not None:
            self.board.append(row)
        self.status.update(run.run_dir, **epoch_progress(row), live_train_error=None, **warmup_progress(run))

    def sync(self, run: RunProgress) -> None:
        for path in (self.writer.path, run.gradients.path, self.board.path if self.board else None):
            if path is not None:
                sync_file(path)

    def end(self, run: RunProgress, state: str) -> RunResult:
        if state == "diverged":  # no checkpoint (done and interrupted runs just wrote one): sync its rows here
            self.sync(run)
        self.result = end_run(run, self.status, state)
        return self.result


def warmup_progress(run: RunProgress) -> dict[str, Any]:
    """How the warm-up ended (iteration, threshold or cap), as status.json records it; None while it goes on."""
    return {"warmup_end_iteration": run.warmup_end_iteration, "warmup_end_reason": run.warmup_end_reason}


def epoch_progress(row: dict[str, Any]) -> dict[str, Any]:
    """What status.json shows of the last finished epoch."""
    return {key: row[key] for key in ("epoch", "iteration", "train_error", "test_error", "images_per_second")}


def channels_last_of(config: TrainConfig, run_dir: Path, device: torch.device) -> bool:
    """--channels-last, where auto (None) means on for the CPU and CUDA alike; except for a run begun before the
    layout was recorded (config.json's `resolved` without `channels_last`, 2026-11-28 and earlier), when auto meant
    off on the CPU: resumed in the layout it began in, its resume stays exact."""
    if config.channels_last is not None:
        return config.channels_last
    saved = resumed_config(run_dir)
    resolved = saved.get("resolved") if saved is not None else None
    if isinstance(resolved, dict) and resolved and "channels_last" not in resolved:
        return device.type == "cuda"
    return True


def starting_status(run: RunProgress) -> RunStatus:
    """status.json as a run (re)starts: a resumed run shows its last finished epoch's numbers, not blanks."""
    status = RunStatus(state="running", epoch=run.epoch, epochs=run.epochs, iteration=run.iteration,
                       iterations=run.config.iterations, device=device_label(run.device),
                       started_epoch=run.epoch, started_iteration=run.iteration,
                       saved_iteration=run.iteration if run.iteration else None, **warmup_progress(run))
    if run.epoch:
        try:
            metrics, _ = read_metrics(run.run_dir / METRICS_FILE)
        except ValueError:  # rows lost (deleted by hand): the next epoch's numbers fill the blanks
            return status
        last = metrics.iloc[-1]
        status.train_error, status.test_error = float(last["train_error"]), float(last["test_error"])
        status.images_per_second = float(last["images_per_second"])
    return status


def end_run(run: RunProgress, status: RunStatus, state: str) -> RunResult:
    status.update(run.run_dir, state=state, iteration=run.iteration, live_train_error=None,
                  **warmup_progress(run))
    final = status.test_error if state != "interrupted" else None
    return RunResult(state, run.epoch, run.iteration, final, run.warmup_end_iteration,
                     run.warmup_end_reason)


def describe_run(run: RunProgress, engine: Engine, dataset: Dataset) -> dict[str, Any]:
    """The resolved settings stored in config.json beside the raw config: the run's, and how its engine trains."""
    config = run.config
    return {
        "iterations": config.iterations, "steps_per_epoch": run.steps_per_epoch, "epochs": run.epochs,
        "lr_milestone_iterations": [round(m * config.iterations) for m in config.lr_milestones],
        "warmup": config.uses_warmup(), "compile": engine.compiled, "channels_last": engine.channels_last,
        "cuda_graph": config.cuda_graph, "precision": resolved_precision(config.precision, run.device),
        "cudnn_benchmark": cudnn_benchmark(run.device, config.deterministic),
        "train_size": len(dataset.train_labels), "test_size": len(dataset.test_labels),
        "val_size": 0 if dataset.val_labels is None else len(dataset.val_labels), "num_classes": dataset.num_classes,
        "params": count_parameters(engine.network), "family": family_record(config.kind),
        "init": describe_init(config.init) if config.init else None,
    }
