"""The §4.2 protocol of one model, whatever trains it: its lr schedule and warm-up, its epochs (data order, running
sums, the NaN check), its random states and its checkpoint.

A single run (`train.Trainer`) is the protocol of its one model; a fused group (`fused.FusedTrainer`) keeps one
`RunProgress` per model. The trainers only compute steps and hold weights, so every rule of the protocol, and
the checkpoint format that both write and both read, is written here once.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from .devices import check_same_device_type, global_rng_state, restore_rng_state, rng_state
from .gradients import GradientLog

if TYPE_CHECKING:  # train.py holds the config and imports this module
    from .trainer import TrainConfig

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
