"""The §4.2 protocol of one model, whatever trains it: its config (`TrainConfig`, saved as the run's config.json),
its lr schedule and warm-up, its epochs (data order, running sums, the NaN check), its random states and its
checkpoint (format and cadence).

A single run (`train.Trainer`) is the protocol of its one model; a fused group (`fused.FusedTrainer`) keeps one
`RunProgress` per model. The trainers only compute steps and hold weights, so every rule of the protocol, and
the checkpoint format that both write and both read, is written here once.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch

from ..config import EXECUTION, check_fields, digits, documented, flag, option
from ..errors import UserError
from ..models.families import Family, check_network, get_family
from ..results.tensorboard_log import check_tensorboard_installed
from .data import DataConfig, check_data_config
from .devices import (
    PRECISIONS,
    check_cuda_graph_device,
    check_device_name,
    check_same_device_type,
    global_rng_state,
    restore_rng_state,
    rng_state,
)
from .gradients import GradientLog

# auto: the family's paper's warm-up (families.py): §4.2's for residual nets of depth >= warmup_min_depth (it used it
# for ResNet-110 and says nothing of plain-110), 2016b's first 400 iterations for preact nets; deep: every net that
# deep, plain ones too; on: every net; off: none
WARMUP_MODES = ("auto", "deep", "on", "off")


KIND_HELP = ("Network family: plain, residual (§4.2), preact, preact-bottleneck (2016b), an installed one or "
             "module.path:function (`resdepth models`).")
DEPTH_HELP = ("Layers: 6n+2 for plain, residual, preact (20, 32, 44, 56, 110, 1202; 8, 14 for quick tests); 9n+2 "
              "for preact-bottleneck (164, 1001).")


@documented
@dataclass
class TrainConfig:
    """One run's training protocol and how it executes; saved as the run's config.json."""

    kind: str = option("residual", help=KIND_HELP, cli=False)
    depth: int = option(20, help=DEPTH_HELP, cli=False)
    # None: the family's (A for residual, §4.2; B for preact, the authors' code); plain nets take none
    shortcut: str | None = option(None, help="Where the shape changes: A zero-padding identity (§4.2; plain and "
                                             "residual twins then have the same parameters), B 1x1 projection.",
                                  default_text="the family's: A for residual (§4.2), B for preact")
    # Only values other than the family's defaults are kept, so {} is the paper's nets (width 1)
    options: dict[str, int | float | str | bool] = option(
        help="The family's own network options (`resdepth models`), e.g. width; --width sets width.",
        default_factory=dict, cli=False, default_text="none: the family's defaults")
    seed: int = option(0, help="Seed of init, shuffling and augmentation.", cli=False)
    iterations: int = option(64_000, help="SGD iterations (§4.2: stop at 64k); lr milestones scale with it (50%/75%).")
    epochs: int | None = option(None, help="Train for this many epochs instead (converted to iterations).",
                                default_text="none: --iterations")
    batch_size: int = option(128, help="Mini-batch size (images), §4.2.")
    lr: float = option(0.1,
                       help="Initial learning rate (§4.2), /10 at 50% and 75% of the iterations (32k, 48k of 64k).")
    lr_milestones: tuple[float, ...] = option((0.5, 0.75), help="Fractions of the iterations where lr is divided.",
                                              cli=False)
    lr_decay: float = option(0.1, help="Factor applied to lr at each milestone.", cli=False)
    momentum: float = option(0.9, help="SGD momentum (§4.2).")
    # §4.2 names no exclusions, so BN parameters and biases are decayed too
    weight_decay: float = option(1e-4, help="L2 weight decay on every parameter (§4.2).")
    warmup: str = option("auto", help="auto: the family's paper's warm-up at lr 0.01: residual nets of depth >= 110 "
                                      "until the train error is below 80% (§4.2), preact nets for their first 400 "
                                      "iterations (2016b), plain nets none; deep: plain nets that deep too; on: every "
                                      "net; off.")
    warmup_min_depth: int = option(110, help="Smallest depth that warms up with --warmup deep, and with auto for "
                                             "residual nets (§4.2).")
    warmup_lr: float = option(0.01, help="§4.2: 0.01 until the training error is below 80% (about 400 iterations).",
                              cli=False)
    # None: the family's; 80 (§4.2), 0 for preact (no threshold: 2016b warms up for a fixed 400 iterations)
    warmup_until_error: float | None = option(None, help="Training error (%) that ends the warm-up.", cli=False,
                                              default_text="the family's: 80 (§4.2), 0 for preact (none)")
    # A warm-up that never reaches the threshold (a net stuck above 80% at lr 0.01) ends here anyway, at 10x the
    # paper's "about 400 iterations": without a bound it would train the whole run at 0.01 and skip the schedule.
    # None: the family's; 4,000, or 400 for preact, whose paper warms up for exactly the first 400 iterations.
    warmup_max_iterations: int | None = option(None, help="The warm-up ends here at the latest; the lr milestones "
                                                          "apply either way.",
                                               default_text="the family's: 4000 (10x §4.2's about 400), 400 for "
                                                            "preact (2016b: exactly the first 400)")
    data: DataConfig = option(help="The dataset.", default_factory=DataConfig, cli=False)
    device: str = option("auto", help="auto (cuda if available, else cpu), cpu, cuda or cuda:N.", panel=EXECUTION)
    threads: int | None = option(None, help="Torch CPU threads per job.", panel=EXECUTION, default_text="cores / jobs")
    precision: str = option("auto", help="auto (fp32 on CPU, tf32 on CUDA), fp32, tf32 or bf16 (autocast: convs, "
                                         "FC and BN compute on bf16 activations; BN's weights and running statistics "
                                         "and the loss stay fp32).", panel=EXECUTION)
    # NHWC runs oneDNN's and cuDNN's native kernels: +16-19% img/s on 2 CPU cores (BENCHMARKS.md), GPU not measured
    channels_last: bool | None = option(None, help="NHWC memory format (measured faster on CPU).", panel=EXECUTION,
                                        default_text="on")
    # torch.compile: +14% img/s on CPU (BENCHMARKS.md) after 1-2 min of compiling per process, so None (auto)
    # turns it on for CPU runs of >= COMPILE_MIN_ITERATIONS, where that is repaid; off on CUDA until measured there
    compile: bool | None = option(None, help="torch.compile the training step (+14% img/s on CPU after 1-2 min of "
                                             "compiling).", panel=EXECUTION,
                                  default_text="on for CPU runs of >= 2000 iterations where a C++ compiler "
                                               "works, else off (and off for fused groups, slower compiled on the "
                                               "CPU)")
    # One CUDA graph per step removes the kernel-launch overhead that bounds these small nets on a fast GPU
    cuda_graph: bool = option(False, help="CUDA only: replay forward+backward+SGD as one CUDA graph (no kernel-launch "
                                          "overhead; same math); a fused group through torch.compile's CUDA-graph "
                                          "mode.", panel=EXECUTION)
    # cudnn.benchmark picks the fastest convolution algorithms, measured in each process: a resumed run may take
    # other ones (float order only); this asks for deterministic ones instead
    deterministic: bool = option(False, help="CUDA: deterministic cuDNN algorithms, the same bits in every process, "
                                             "instead of the fastest ones measured (cudnn.benchmark).",
                                 panel=EXECUTION)
    eval_batch_size: int = option(1000, help="Images per evaluation batch.", panel=EXECUTION, cli=False)
    tensorboard: bool = option(False, help="Also write each epoch's metrics as TensorBoard scalars in the run folder "
                                           "(needs the tensorboard extra).", panel=EXECUTION)
    # auto: each epoch on the CPU, where a checkpoint is small beside an epoch (minutes); each minute on CUDA, where
    # one per ~0.5 s ResNet-20 epoch costs ~2% of the time on a quiet local disk (BENCHMARKS.md); a kill loses <= 1 min
    checkpoint_every: str = option("auto", help="When the run writes its checkpoint: auto (epoch on the CPU, 1min on "
                                                "CUDA), epoch (at each epoch's end), N (every N iterations) or Nmin "
                                                "(every N minutes), and always when it ends or is stopped; a kill "
                                                "loses only the steps since the last one.", panel=EXECUTION)
    # A named deviation: the paper's nets start from He init; the constructed deeper net (§1) starts from these
    init: str | None = option(None, help="Start from these weights instead of the family's init: a run folder or a "
                                         "checkpoint (`resdepth construct` writes one); the rest of the protocol is "
                                         "unchanged.", default_text="none: He init, as the paper")

    def validate(self) -> None:
        """Refuse values that cannot train, with the fix in the message."""
        check_fields(self)
        for name in ("batch_size", "iterations", "eval_batch_size"):
            if getattr(self, name) < 1:
                raise UserError(f"{flag(TrainConfig, name)} must be a positive integer, got {getattr(self, name)}")
        if self.epochs is not None and self.epochs < 1:
            raise UserError(f"--epochs must be a positive integer, got {self.epochs}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise UserError(f"--lr must be a positive number, got {self.lr}")
        if not (self.weight_decay >= 0 and math.isfinite(self.weight_decay)):
            raise UserError(f"--weight-decay must be >= 0, got {self.weight_decay}")
        if not 0 <= self.momentum < 1:
            raise UserError(f"--momentum must be in [0, 1), got {self.momentum}")
        if self.precision not in PRECISIONS:
            raise UserError(f"unknown precision {self.precision!r}: use one of {', '.join(PRECISIONS)}")
        if self.warmup not in WARMUP_MODES:
            raise UserError(f"unknown warm-up mode {self.warmup!r}: use one of {', '.join(WARMUP_MODES)}")
        if self.threads is not None and self.threads < 1:
            raise UserError(f"--threads must be a positive integer, got {self.threads}")
        if self.cuda_graph and self.compile:
            raise UserError("--cuda-graph and --compile each rebuild the training step: choose one")
        check_device_name(self.device)
        check_cuda_graph_device(self.cuda_graph, self.device)
        if self.seed < 0:
            raise UserError(f"--seed must be 0 or a positive integer, got {self.seed}")
        until = self.warmup_until_error
        if self.warmup_min_depth < 1 or not self.warmup_lr > 0 or (until is not None and not 0 <= until <= 100):
            raise UserError("warm-up settings: warmup_min_depth >= 1, warmup_lr > 0, warmup_until_error in [0, 100]")
        if self.warmup_max_iterations is not None and self.warmup_max_iterations < 1:
            raise UserError(f"--warmup-max-iterations must be a positive integer, got {self.warmup_max_iterations}")
        check_data_config(self.data)
        Cadence.parse(self.checkpoint_every)
        if any(not 0 < m < 1 for m in self.lr_milestones):
            raise UserError("lr milestones are fractions of the iterations, each between 0 and 1")
        check_network(self.kind, self.depth, self.shortcut, self.options)
        if self.tensorboard:
            check_tensorboard_installed()

    def uses_warmup(self) -> bool:
        if self.warmup == "auto":
            return get_family(self.kind).protocol.warms_up(self.depth, self.warmup_min_depth)
        return self.warmup == "on" or (self.warmup == "deep" and self.depth >= self.warmup_min_depth)

    def for_family(self, family: Family | None = None) -> TrainConfig:
        """This config with its family's values where it leaves them open (None): the shortcut and the warm-up's
        threshold and length. A run's config.json holds these resolved values. family: the kind's family as known
        (reading results: from records, never importing a user's module); by default it is looked up."""
        family = family or get_family(self.kind)
        protocol = family.protocol
        return replace(self, shortcut=family.shortcut_for(self.shortcut), options=family.resolve_options(self.options),
                       warmup_until_error=first_given(self.warmup_until_error, protocol.warmup_until_error),
                       warmup_max_iterations=first_given(self.warmup_max_iterations, protocol.warmup_max_iterations))


def first_given(value: Any, default: Any) -> Any:
    return default if value is None else value


@dataclass(frozen=True)
class Cadence:
    """When a run writes its checkpoint (--checkpoint-every): at each epoch's end (neither set), or once so many
    iterations or seconds have passed since the last one, inside an epoch too. A checkpoint changes nothing the
    run computes, so any cadence resumes bit-identically; it only sets how much a kill can lose."""

    iterations: int | None = None
    seconds: float | None = None

    @classmethod
    def parse(cls, text: str, device_type: str = "cpu") -> Cadence:
        """auto, epoch, N (iterations) or Nmin (minutes); anything else is refused in one line."""
        value = str(text).strip().lower()
        if value == "auto":
            value = "1min" if device_type == "cuda" else "epoch"
        if value == "epoch":
            return cls()
        if digits(value) and int(value) >= 1:
            return cls(iterations=int(value))
        minutes = value.removesuffix("min").strip()
        if value.endswith("min") and digits(minutes.replace(".", "", 1)) and float(minutes) > 0:
            return cls(seconds=float(minutes) * 60)
        raise UserError(f"--checkpoint-every must be auto, epoch, a number of iterations (2000) or of minutes (5min), "
                        f"got {text!r}")

    @property
    def per_epoch(self) -> bool:
        return self.iterations is None and self.seconds is None

    def due(self, iterations: int, seconds: float) -> bool:
        """Whether a checkpoint is due, so many iterations and seconds after the last one (at an epoch's end with
        the per-epoch cadence)."""
        if self.iterations is not None:
            return iterations >= self.iterations
        return self.seconds is None or seconds >= self.seconds


WARMUP_CHECK_EVERY = 10  # iterations per warm-up check: one host sync per 10 steps, only while warming up
NAN_CHECK_EVERY = 50  # iterations per divergence check: one host sync per 50 steps, at the same steps every run


def learning_rate(config: TrainConfig, iteration: int, warming_up: bool) -> float:
    """The lr for 0-based `iteration`: step decay at the milestone fractions; while warming up the warm-up lr,
    unless a milestone has already brought the schedule below it (§4.2: "the rest of the schedule is as before")."""
    passed = sum(iteration >= round(m * config.iterations) for m in config.lr_milestones)
    scheduled = config.lr * config.lr_decay ** passed
    return min(config.warmup_lr, scheduled) if warming_up else scheduled


@dataclass
class EpochInProgress:
    """The epoch being trained: its data order, how far it got, and its running sums (device tensors), so a run
    stopped inside an epoch resumes at the same step with the same sums."""

    order: torch.Tensor
    loss_sum: torch.Tensor
    wrong: torch.Tensor
    step: int = 0
    seconds: float = 0.0

    def to(self, device: torch.device) -> EpochInProgress:
        return replace(self, order=self.order.to(device), loss_sum=self.loss_sum.to(device),
                       wrong=self.wrong.to(device))


class RunProgress:
    """Where one model stands in its protocol: iteration, epoch, the epoch in progress, the warm-up, its
    generator (data order, augmentation) and, for a fused model, a copy of the global RNG state its single run's
    checkpoint would hold. It also carries the attributes that status.json and config.json are written from."""

    def __init__(self, config: TrainConfig, run_dir: Path, device: torch.device, steps_per_epoch: int,
                 gradients: GradientLog, owns_global_rng: bool):
        self.config, self.run_dir, self.device = config, run_dir, device
        self.steps_per_epoch = steps_per_epoch
        self.epochs = math.ceil(config.iterations / steps_per_epoch)
        self.generator = torch.Generator(device=device).manual_seed(config.seed)
        # A single run draws from the process's global RNG and saves it live; a fused model cannot own it, so it
        # keeps the state right after its own init (nothing else would draw from it), which a resume alone restores.
        self.global_rng = None if owns_global_rng else global_rng_state(device)
        self.iteration, self.epoch = 0, 0
        self.warming_up = config.uses_warmup()
        self.warmup_end_iteration: int | None = None
        self.warmup_end_reason: str | None = None  # threshold or cap
        self.warmup_window = torch.zeros((), device=device)  # wrong answers since the last warm-up check
        self.in_progress: EpochInProgress | None = None  # kept across a stop, resumed where it stopped
        self.epoch_started: float | None = None  # perf_counter() at which the epoch began, less its saved seconds
        self.last_lr = config.lr  # the lr of the last step, as the checkpoint's optimizer state records it
        self.gradients = gradients  # its gradients.csv; the trainer hands in each sampled step's norms

    @property
    def finished(self) -> bool:
        return self.iteration >= self.config.iterations

    # ------------------------------------------------------------------ one step
    def lr(self) -> float:
        """The lr of the step about to be taken."""
        return learning_rate(self.config, self.iteration, self.warming_up)

    def start_epoch(self, train_size: int) -> EpochInProgress:
        """The epoch in progress, or a new one with a fresh shuffle from this model's generator."""
        if self.in_progress is None:
            order = torch.randperm(train_size, generator=self.generator, device=self.device)
            zero = torch.zeros((), device=self.device)
            self.in_progress = EpochInProgress(order, zero, zero.clone())
        if self.epoch_started is None:
            self.epoch_started = time.perf_counter() - self.in_progress.seconds
        return self.in_progress

    def next_batch(self, batch: int) -> torch.Tensor:
        """The indices of the training images of this model's next step."""
        epoch = self.in_progress
        assert epoch is not None
        return epoch.order[epoch.step * batch:(epoch.step + 1) * batch]

    def count_step(self, lr: float, loss: torch.Tensor, wrong: torch.Tensor, images: int) -> None:
        """After a step at lr: the epoch's sums, the position, the warm-up check and its cap."""
        epoch = self.in_progress
        assert epoch is not None
        self.last_lr = lr
        epoch.loss_sum += loss * images
        epoch.wrong += wrong
        self.warmup_window += wrong
        epoch.step += 1
        self.iteration += 1
        if self.warming_up and self.iteration % WARMUP_CHECK_EVERY == 0:
            # §4.2 (110 layers): warm up with lr 0.01 until the training error is below 80%, then go back to 0.1
            if self.warmup_window.item() / (WARMUP_CHECK_EVERY * images) * 100 < self.config.warmup_until_error:
                self.end_warmup("threshold")
            self.warmup_window.zero_()
        if self.warming_up and self.iteration >= self.config.warmup_max_iterations:
            self.end_warmup("cap")

    def end_warmup(self, reason: str) -> None:
        """From the next step on, the schedule's lr: reason is threshold (the paper's rule) or cap (the bound)."""
        self.warming_up = False
        self.warmup_end_iteration, self.warmup_end_reason = self.iteration, reason

    # ------------------------------------------------------------------ the epoch's end
    def steps_this_epoch(self) -> int:
        epoch = self.in_progress
        assert epoch is not None
        return min(self.steps_per_epoch, self.config.iterations - (self.iteration - epoch.step))

    def epoch_ended(self) -> bool:
        """Its epoch is complete, or its loss became NaN/inf (checked every NAN_CHECK_EVERY steps: the row of an
        epoch cut short records the NaN/inf)."""
        epoch = self.in_progress
        if epoch is None:
            return False
        if epoch.step >= self.steps_this_epoch():
            return True
        return epoch.step % NAN_CHECK_EVERY == 0 and not torch.isfinite(epoch.loss_sum).item()

    def close_epoch(self, images_per_step: int) -> dict[str, float]:
        """Count the epoch and return its sums."""
        epoch = self.in_progress
        assert epoch is not None and self.epoch_started is not None
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.epoch += 1
        seconds, seen = time.perf_counter() - self.epoch_started, epoch.step * images_per_step
        self.in_progress = self.epoch_started = None
        return {"train_loss": epoch.loss_sum.item() / seen, "train_error": epoch.wrong.item() / seen * 100,
                "epoch_seconds": seconds, "images_per_second": seen / seconds}

    def row(self, sums: dict[str, float]) -> dict[str, float | int]:
        """The start of the metrics row of the epoch just closed; the trainer adds the held-out errors."""
        # the lr rounded to the schedule's value (0.001, not 0.0010000000000000002); training used the exact one
        return {"epoch": self.epoch, "iteration": self.iteration, "lr": round(self.last_step_lr(), 12), **sums}

    def last_step_lr(self) -> float:
        # a warm-up that ended at this very iteration still ran its last step at the warm-up lr
        ran_warming_up = self.warming_up or self.warmup_end_iteration == self.iteration
        return learning_rate(self.config, self.iteration - 1, ran_warming_up)

    def pause(self) -> None:
        """Asked to stop: the epoch in progress keeps its seconds so far, for the checkpoint."""
        if self.in_progress is not None and self.epoch_started is not None:
            self.in_progress.seconds = time.perf_counter() - self.epoch_started

    # ------------------------------------------------------------------ checkpoint
    def progress_state(self) -> dict[str, Any]:
        """The position and random states, in types that `torch.load(weights_only=True)` accepts."""
        randoms = rng_state(self.device, self.generator)
        return {
            "iteration": self.iteration, "epoch": self.epoch, "warming_up": self.warming_up,
            "warmup_end_iteration": self.warmup_end_iteration, "warmup_end_reason": self.warmup_end_reason,
            "warmup_window": self.warmup_window, **randoms, **(self.global_rng or {}),
            "partial": None if self.in_progress is None else asdict(self.in_progress),
            "gradients": self.gradients.state_dict(),
        }

    def load_progress(self, state: dict[str, Any]) -> None:
        """Restore what progress_state saved, from a whole checkpoint read onto the CPU; refuses a checkpoint of
        another device type."""
        if self.global_rng is None:
            restore_rng_state(state, self.device, self.generator)
        else:
            check_same_device_type(state, self.device)
            self.generator.set_state(state["generator"].cpu())
            cuda_rng = state.get("cuda_rng")  # older versions saved a list: keep this model's own
            self.global_rng = {"torch_rng": state["torch_rng"].cpu(),
                               "cuda_rng": cuda_rng.cpu() if torch.is_tensor(cuda_rng) else self.global_rng["cuda_rng"]}
        self.iteration, self.epoch = state["iteration"], state["epoch"]
        self.last_lr = float(state["optimizer"]["param_groups"][0]["lr"])  # saved with the SGD state, as torch's
        self.warming_up, self.warmup_end_iteration = state["warming_up"], state["warmup_end_iteration"]
        self.warmup_end_reason = state.get("warmup_end_reason")  # absent in checkpoints of older versions
        self.warmup_window = state["warmup_window"].to(self.device)
        partial = state["partial"]
        self.in_progress = None if partial is None else EpochInProgress(**partial).to(self.device)
        self.epoch_started = None
        self.gradients.load_state_dict(state.get("gradients"))  # None in checkpoints of older versions


def checkpoint_state(progress: RunProgress, weights: dict[str, torch.Tensor], momentum: dict[int, torch.Tensor],
               param_groups: list[dict[str, Any]], data_fingerprint: str) -> dict[str, Any]:
    """One model's checkpoint, the same format from a single run and a fused group: its weights and SGD state as
    torch's SGD saves them (the momentum keyed by parameter index), every tensor contiguous and of its own storage
    (a fused model's are slices of the group's stacks), so that either trainer resumes it."""
    def own(tensor: torch.Tensor) -> torch.Tensor:
        return tensor.detach().clone(memory_format=torch.contiguous_format)

    optimizer = {"state": {index: {"momentum_buffer": own(buffer)} for index, buffer in momentum.items()},
                 "param_groups": [{**group, "lr": float(progress.last_lr)} for group in param_groups]}
    return {"model": {name: own(tensor) for name, tensor in weights.items()}, "optimizer": optimizer,
            **progress.progress_state(), "data_fingerprint": data_fingerprint}


def saved_momentum(state: dict[str, Any]) -> dict[int, torch.Tensor]:
    """A checkpoint's momentum buffers by parameter index (none before a parameter's first step)."""
    return {int(index): entry["momentum_buffer"] for index, entry in state["optimizer"]["state"].items()
            if entry.get("momentum_buffer") is not None}
