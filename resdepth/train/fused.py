"""Horizontally fused seeds (`--fuse K`): up to K runs that differ only in their seed, trained as one job.

Each model is the model its seed gives alone: built with its own seed (then stacked), its own data order and
augmentation from its own generator in the same sequence as its single run, its own SGD momentum, its own BN
running statistics, its own warm-up and lr. Only the order of floating-point sums differs, because every layer's
K copies run as one batched kernel. How: `torch.func` -- the K models' parameters and buffers are stacked along a
new first dimension and the network runs under `vmap(functional_call(...))`, which turns each convolution into one
grouped convolution over the K models and each batch norm into one over K x C channels. Nothing in it depends on
the network: any `nn.Module` that vmap can batch fuses the same way.

The loss of the group is the sum of the K models' losses: its gradient with respect to model k's parameters is
model k's gradient alone (the parameters are disjoint), so a model that diverges cannot disturb the others; it
is marked `diverged` and dropped from the group while the others train on.

Each model keeps its own run folder, written exactly as a single run writes it (config.json, metrics.csv,
status.json, checkpoint.pt): its checkpoint holds that one model's weights and optimizer state in the single-run
format, so `build_model` + `load_state_dict`, `plot`, `table`, and even resuming it alone with `--fuse 1`, work
as for any run. A group whose members stopped at different points (a kill between their checkpoint writes)
trains each from its own position.
"""

from __future__ import annotations

import io
import math
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch.func import functional_call, vmap

from ..errors import UserError
from ..models.families import weight_layers
from ..results.groups import comparable
from ..results.runs import CHECKPOINT_FILE, atomic_write_bytes, ensure_writable_dir, write_config
from .construct import load_init
from .data import Dataset, augment, load_dataset, normalize
from .devices import check_same_device_type, environment, precision_context, resolve_device
from .gradients import GradientLog
from .trainer import (
    NAN_CHECK_EVERY,
    WARMUP_CHECK_EVERY,
    EpochInProgress,
    RunLogs,
    RunResult,
    TrainConfig,
    build_run_network,
    check_same_network,
    describe_run,
    learning_rate,
    prepare_process,
    read_resume_checkpoint,
    resolve_iterations,
    sgd_optimizer,
    steps_per_epoch,
    warmup_progress,
)

# The aggregate training img/s of one fused job of K against K runs one after another, measured per device type
# and depth with `resdepth bench --fuse 1,2,4,8` (BENCHMARKS.md): `--fuse auto` takes, for each depth, the K that
# measured best at the nearest measured depth. On 2 CPU cores no K > 1 beat separate runs (a CPU is already busy
# with one small net). CUDA is not measured yet (benchmarks/gpu_bench.sh prints the rows that belong here), so
# auto is 1 there too until it is.
MEASURED_BEST_FUSE: dict[str, dict[int, int]] = {"cpu": {20: 1, 56: 1}}

# vmap runs adaptive_avg_pool2d's backward through a slower generic path and says so on every new process; measured
# (torch.profiler, ResNet-20, K = 4) it costs well under 1% of a step, so the warning would only alarm.
warnings.filterwarnings("ignore", message="There is a performance drop because we have not yet implemented the "
                                          "batching rule for aten::as_strided_")


def parse_fuse(value: str | int) -> int | None:
    """--fuse K (models per job, K >= 1) or auto (None); anything else is refused in one line."""
    text = str(value).strip().lower()
    if text == "auto":
        return None
    if text.isdigit() and int(text) >= 1:
        return int(text)
    raise UserError(f"--fuse must be a number of models per job (1: no fusing) or auto, got {value!r}")


def auto_fuse(depth: int, device_type: str) -> int:
    """`--fuse auto`'s K for a depth on a device type: the best measured K at the nearest measured depth, else 1."""
    measured = MEASURED_BEST_FUSE.get(device_type, {})
    if not measured:
        return 1
    nearest = min(measured, key=lambda d: (abs(d - depth), d))
    return measured[nearest]


def group_label(names: list[str]) -> str:
    """A fused group's name from its run folders: 'residual-20-s0+s1+s2' (folders that share a stem), else joined."""
    stems = {name.rpartition("-s")[0] for name in names}
    if len(stems) == 1 and all(name.rpartition("-s")[2].isdigit() for name in names):
        return f"{stems.pop()}-" + "+".join("s" + name.rpartition("-s")[2] for name in names)
    return "+".join(names)


def check_fusable(configs: list[TrainConfig]) -> None:
    """The models of a group must differ only in their seed: one network shape, one data stream, one schedule."""
    reference = {k: v for k, v in comparable(asdict(configs[0])).items() if k != "seed"}
    for config in configs[1:]:
        other = {k: v for k, v in comparable(asdict(config)).items() if k != "seed"}
        differing = sorted(k for k in reference if reference[k] != other.get(k))
        if differing:
            raise UserError(f"runs fused in one job must differ only in their seed, these differ in "
                            f"{', '.join(differing)}: train them in separate jobs (--fuse 1)")
    if configs[0].compile or configs[0].cuda_graph:
        raise UserError("a fused group trains eagerly, through torch.func: leave out --compile and --cuda-graph, or "
                        "train the runs alone (--fuse 1)")
    seeds = [config.seed for config in configs]
    if len(set(seeds)) != len(seeds):
        raise UserError(f"a fused group lists a seed twice ({seeds}): each model needs its own seed")


class Member:
    """One model of a fused group: what a single run's Trainer keeps of its position (iteration, epoch, the epoch in
    progress, warm-up, its generator and random states), but not its weights, which live in the group's stacked
    tensors. It carries the attributes that train.py's status helpers read (run_dir, config, device, epoch, epochs,
    iteration, warm-up end, model for the parameter count), so status.json and config.json are written by the same
    code as a single run's."""

    def __init__(self, config: TrainConfig, run_dir: Path, device: torch.device, steps: int, network: torch.nn.Module,
                 channels_last: bool):
        self.config, self.run_dir, self.device = config, run_dir, device
        self.steps_per_epoch = steps
        self.epochs = math.ceil(config.iterations / steps)
        self.model = network  # the network on the meta device: its shape, for config.json's parameter count
        self.compiled, self.channels_last = False, channels_last
        self.generator = torch.Generator(device=device).manual_seed(config.seed)
        # The global RNG states right after this model's init: what its single run's checkpoint would hold (nothing
        # else draws from them), saved so that a checkpoint resumes alone as well as fused.
        self.torch_rng = torch.get_rng_state()
        self.cuda_rng = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
        self.iteration, self.epoch = 0, 0
        self.warming_up = config.uses_warmup()
        self.warmup_end_iteration: int | None = None
        self.warmup_end_reason: str | None = None
        self.warmup_window = torch.zeros((), device=device)
        self.in_progress: EpochInProgress | None = None
        self.epoch_started = 0.0  # perf_counter() at which the epoch in progress began, less its saved seconds
        self.last_lr = config.lr  # the lr of the last step, as the single run's optimizer state records it
        self.gradients = GradientLog(weight_layers(network), device)  # its gradients.csv; norms handed in by the group

    @property
    def finished(self) -> bool:
        return self.iteration >= self.config.iterations

    def start_epoch(self, train_size: int) -> EpochInProgress:
        """The epoch in progress, or a new one with a fresh shuffle from this model's generator (as Trainer does)."""
        if self.in_progress is None:
            order = torch.randperm(train_size, generator=self.generator, device=self.device)
            zero = lambda: torch.zeros((), device=self.device)  # noqa: E731
            self.in_progress = EpochInProgress(order, zero(), zero())
            self.epoch_started = time.perf_counter()
        return self.in_progress

    def steps_this_epoch(self) -> int:
        epoch = self.in_progress
        assert epoch is not None
        return min(self.steps_per_epoch, self.config.iterations - (self.iteration - epoch.step))

    def count_step(self, loss: torch.Tensor, wrong: torch.Tensor, images: int) -> None:
        """The bookkeeping of Trainer.train_batch: the epoch's sums, the position, the warm-up check and its cap."""
        epoch = self.in_progress
        assert epoch is not None
        epoch.loss_sum += loss * images
        epoch.wrong += wrong
        self.warmup_window += wrong
        epoch.step += 1
        self.iteration += 1
        if self.warming_up and self.iteration % WARMUP_CHECK_EVERY == 0:
            recent_error = self.warmup_window.item() / (WARMUP_CHECK_EVERY * images) * 100
            if recent_error < self.config.warmup_until_error:  # §4.2: until the training error is below 80%
                self.end_warmup("threshold")
            self.warmup_window.zero_()
        if self.warming_up and self.iteration >= self.config.warmup_max_iterations:
            self.end_warmup("cap")

    def end_warmup(self, reason: str) -> None:
        self.warming_up = False
        self.warmup_end_iteration, self.warmup_end_reason = self.iteration, reason

    def epoch_ended(self) -> bool:
        """Its epoch is complete, or its loss became NaN/inf (checked every NAN_CHECK_EVERY steps, as a single run)."""
        epoch = self.in_progress
        if epoch is None:
            return False
        if epoch.step >= self.steps_this_epoch():
            return True
        return epoch.step % NAN_CHECK_EVERY == 0 and not torch.isfinite(epoch.loss_sum).item()

    def close_epoch(self, images_per_step: int) -> dict[str, float]:
        """Count the epoch and return its sums, as Trainer.train_epoch does at an epoch's end."""
        epoch = self.in_progress
        assert epoch is not None
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.epoch += 1
        self.in_progress = None
        seconds, seen = time.perf_counter() - self.epoch_started, epoch.step * images_per_step
        return {"train_loss": epoch.loss_sum.item() / seen, "train_error": epoch.wrong.item() / seen * 100,
                "epoch_seconds": seconds, "images_per_second": seen / seconds}

    def pause(self) -> None:
        """Asked to stop: the epoch in progress keeps its seconds so far, for the checkpoint."""
        if self.in_progress is not None:
            self.in_progress.seconds = time.perf_counter() - self.epoch_started

    def last_step_lr(self) -> float:
        # a warm-up that ended at this very iteration still ran its last step at the warm-up lr
        ran_warming_up = self.warming_up or self.warmup_end_iteration == self.iteration
        return learning_rate(self.config, self.iteration - 1, ran_warming_up)


class StackedSGD:
    """SGD with momentum and weight decay (§4.2) over the group's stacked parameters, with each model's own lr.

    It performs torch's foreach SGD update (the single run's CPU optimizer) element for element: gradient plus
    weight decay times the weight, the momentum buffer set to that on the first step and then scaled by the
    momentum and added to, the weight moved by -lr times the buffer. Every step is elementwise, so a model's slice
    of a stacked tensor sees exactly its own update.
    """

    def __init__(self, params: list[torch.Tensor], momentum: float, weight_decay: float):
        self.params, self.momentum, self.weight_decay = params, momentum, weight_decay
        self.buffers: list[torch.Tensor] | None = None  # stacked like the params; None until the first step

    @torch.no_grad()
    def step(self, lrs: list[float]) -> None:
        grads = [p.grad for p in self.params]
        if self.weight_decay:
            grads = torch._foreach_add(grads, self.params, alpha=self.weight_decay)
        if self.momentum:
            if self.buffers is None:
                self.buffers = [grad.detach().clone() for grad in grads]
            else:
                torch._foreach_mul_(self.buffers, self.momentum)
                torch._foreach_add_(self.buffers, grads, alpha=1.0)
            grads = self.buffers
        if len(set(lrs)) == 1:
            torch._foreach_add_(self.params, grads, alpha=-lrs[0])
            return
        for index, lr in enumerate(lrs):  # models whose lr differs (one's warm-up ended, another's not yet)
            torch._foreach_add_([p[index] for p in self.params], [g[index] for g in grads], alpha=-lr)

    def keep(self, indices: torch.Tensor) -> None:
        """Only these models from now on (the others finished or diverged)."""
        if self.buffers is not None:
            self.buffers = [buffer.index_select(0, indices) for buffer in self.buffers]


class FusedTrainer:
    """The state of a fused group: the stacked weights, their optimizer, and one `Member` per model.

    `train_step()` moves every active model one SGD step, each on its own next batch; `ended_members()` are those
    whose epoch has just ended; `close_epochs(members)` evaluates them into their metrics rows; `drop(members)`
    removes finished or diverged models from the stacks. Checkpoints are per model, in the single-run format.
    """

    def __init__(self, configs: list[TrainConfig], run_dirs: list[Path], device: torch.device, dataset: Dataset):
        configs = [config.for_family() for config in configs]  # as Trainer: the family's protocol defaults filled in
        check_fusable(configs)
        config = configs[0]
        self.config, self.device = config, device
        self.data_fingerprint = dataset.fingerprint()
        self.data = dataset.to(device)
        self.mean = self.data.pixel_mean()
        self.train_size = len(self.data.train_labels)
        self.batch = min(config.batch_size, self.train_size)
        self.channels_last = config.channels_last is not False
        steps = steps_per_epoch(self.train_size, config.batch_size)
        networks, self.members = [], []
        for member_config, run_dir in zip(configs, run_dirs, strict=True):
            torch.manual_seed(member_config.seed)  # as Trainer: the model's init draws from the seeded global RNG
            networks.append(build_run_network(member_config, dataset.num_classes))
            self.members.append(Member(member_config, run_dir, device, steps, networks[0], self.channels_last))
        self.param_names = [name for name, _ in networks[0].named_parameters()]
        self.state_names = list(networks[0].state_dict())
        self.optimizer_groups = sgd_optimizer(networks[0].parameters(), config, device).state_dict()["param_groups"]
        states = [network.state_dict() for network in networks]
        self.params = {name: torch.stack([s[name] for s in states]).to(device).requires_grad_()
                       for name in self.param_names}
        self.buffers = {name: torch.stack([s[name] for s in states]).to(device)
                        for name in self.state_names if name not in self.params}
        self.network = networks[0].to("meta").train()  # the module vmap runs with each model's tensors
        self.gradient_params = [f"{name}.weight" for name, _ in weight_layers(self.network)]
        self.sgd = StackedSGD(list(self.params.values()), config.momentum, config.weight_decay)
        self.active = list(self.members)
        self.autocast = precision_context(config.precision, device)

    @property
    def models(self) -> int:
        return len(self.active)

    # ------------------------------------------------------------------ the batched network
    def forward(self, params: dict[str, torch.Tensor], buffers: dict[str, torch.Tensor],
                inputs: torch.Tensor) -> torch.Tensor:
        return functional_call(self.network, (params, buffers), (inputs,))

    def stack_inputs(self, batches: list[torch.Tensor]) -> torch.Tensor:
        """K batches (B, 3, H, W) as one (K, B, 3, H, W) tensor whose memory is the channels-last layout of
        (B, K*3, H, W): the grouped convolutions vmap makes then read NHWC, as the single run's do."""
        if not self.channels_last:
            return torch.stack(batches)
        return torch.stack([batch.permute(0, 2, 3, 1) for batch in batches], dim=3).permute(3, 0, 4, 1, 2)

    def train_step(self) -> torch.Tensor:
        """One SGD step of every active model on its own next batch; returns the models' losses (K, device)."""
        inputs, labels = [], []
        for member in self.active:
            epoch = member.start_epoch(self.train_size)
            index = epoch.order[epoch.step * self.batch:(epoch.step + 1) * self.batch]
            images = self.data.train_images[index]
            inputs.append(augment(images, self.mean, member.generator) if self.config.data.augment else
                          normalize(images, self.mean))
            labels.append(self.data.train_labels[index])
        lrs = [learning_rate(m.config, m.iteration, m.warming_up) for m in self.active]
        stacked_labels = torch.stack(labels)
        with self.autocast():
            logits = vmap(self.forward)(self.params, self.buffers, self.stack_inputs(inputs))
            losses = vmap(F.cross_entropy)(logits, stacked_labels)
        for param in self.params.values():
            param.grad = None
        losses.sum().backward()  # d(sum)/d(model k's weights) is model k's own gradient: the weights are disjoint
        self.sgd.step(lrs)
        self.sample_gradients()
        losses = losses.detach().float()
        wrong = (logits.detach().argmax(-1) != stacked_labels).sum(1).float()
        for index, member in enumerate(self.active):
            member.last_lr = lrs[index]
            member.count_step(losses[index], wrong[index], self.batch)
        return losses

    @torch.no_grad()
    def sample_gradients(self) -> None:
        """Each model whose step is sampled gets its layers' gradient and weight norms (after the SGD step, as a
        single run samples them), computed for all models at once from the stacked tensors."""
        sampled = [i for i, m in enumerate(self.active) if m.gradients.samples(m.in_progress.step)]  # type: ignore[union-attr]
        if not sampled:
            return
        grads = [self.params[name].grad for name in self.gradient_params]
        if any(grad is None for grad in grads):
            return
        weights = [self.params[name] for name in self.gradient_params]
        norms = torch.stack([t.flatten(1).norm(dim=1) for t in grads + weights]).double()  # type: ignore[union-attr]
        for index in sampled:
            self.active[index].gradients.add(norms[:, index])

    def ended_members(self) -> list[Member]:
        return [member for member in self.active if member.epoch_ended()]

    # ------------------------------------------------------------------ epochs' rows
    def close_epochs(self, members: list[Member]) -> list[dict[str, float | int]]:
        """The metrics rows of the epochs these members just finished: sums, lr, test (and val) errors."""
        sums = [member.close_epoch(self.batch) for member in members]
        rows = [{"epoch": m.epoch, "iteration": m.iteration, "lr": round(m.last_step_lr(), 12), **s}
                for m, s in zip(members, sums, strict=True)]
        indices = [self.active.index(member) for member in members]
        for split, (images, labels) in self.data.splits().items():
            if split != "train":  # the held-out splits; the training error is the epochs' own sums
                for row, (loss, error) in zip(rows, self.evaluate(indices, images, labels), strict=True):
                    row[f"{split}_loss"], row[f"{split}_error"] = loss, error
        return rows

    @torch.no_grad()
    def evaluate(self, indices: list[int], images: torch.Tensor, labels: torch.Tensor) -> list[tuple[float, float]]:
        """Mean loss and error (%) of the models at these indices on un-augmented images, in eval mode (each its own
        BN running statistics); every model sees the same images, so they are passed once, unbatched."""
        everyone = indices == list(range(self.models))
        chosen = torch.tensor(indices, device=self.device)
        params = self.params if everyone else {k: v.index_select(0, chosen) for k, v in self.params.items()}
        buffers = self.buffers if everyone else {k: v.index_select(0, chosen) for k, v in self.buffers.items()}
        loss_sum = torch.zeros(len(indices), device=self.device)
        wrong = torch.zeros(len(indices), device=self.device)
        size = self.config.eval_batch_size
        self.network.eval()
        for start in range(0, len(labels), size):
            batch = normalize(images[start:start + size], self.mean)
            if self.channels_last:
                batch = batch.contiguous(memory_format=torch.channels_last)
            target = labels[start:start + size]
            with self.autocast():
                logits = vmap(self.forward, in_dims=(0, 0, None))(params, buffers, batch)
            losses = F.cross_entropy(logits.float().flatten(0, 1), target.repeat(len(indices)), reduction="none")
            loss_sum += losses.view(len(indices), -1).sum(1)
            wrong += (logits.argmax(-1) != target).sum(1)
        self.network.train()
        return [(loss / len(labels), miss / len(labels) * 100)
                for loss, miss in zip(loss_sum.tolist(), wrong.tolist(), strict=True)]

    # ------------------------------------------------------------------ the group shrinks
    def drop(self, members: list[Member]) -> None:
        """Remove finished or diverged models from the stacks: the others train on, on their own slices."""
        keep = [index for index, member in enumerate(self.active) if member not in members]
        self.active = [self.active[index] for index in keep]
        if not keep:
            return
        indices = torch.tensor(keep, device=self.device)
        with torch.no_grad():
            self.params = {k: v.index_select(0, indices).requires_grad_() for k, v in self.params.items()}
            self.buffers = {k: v.index_select(0, indices) for k, v in self.buffers.items()}
        self.sgd.params = list(self.params.values())
        self.sgd.keep(indices)

    # ------------------------------------------------------------------ checkpoints, one per model
    def member_state_dict(self, member: Member) -> dict[str, Any]:
        """One model's checkpoint, exactly what its single run's Trainer.state_dict() holds."""
        index = self.active.index(member)
        tensors = {**self.params, **self.buffers}
        model = {name: tensors[name][index].detach().clone() for name in self.state_names}
        momentum = ({} if self.sgd.buffers is None else
                    {i: {"momentum_buffer": b[index].clone()} for i, b in enumerate(self.sgd.buffers)})
        groups = [{**group, "lr": float(member.last_lr)} for group in self.optimizer_groups]
        return {
            "model": model, "optimizer": {"state": momentum, "param_groups": groups},
            "iteration": member.iteration, "epoch": member.epoch, "warming_up": member.warming_up,
            "warmup_end_iteration": member.warmup_end_iteration, "warmup_end_reason": member.warmup_end_reason,
            "warmup_window": member.warmup_window,
            "generator": member.generator.get_state(), "torch_rng": member.torch_rng, "cuda_rng": member.cuda_rng,
            "device_type": self.device.type,
            "partial": None if member.in_progress is None else asdict(member.in_progress),
            "data_fingerprint": self.data_fingerprint, "gradients": member.gradients.state_dict(),
        }

    def save_checkpoint(self, member: Member) -> None:
        buffer = io.BytesIO()
        torch.save(self.member_state_dict(member), buffer)
        atomic_write_bytes(member.run_dir / CHECKPOINT_FILE, buffer.getvalue())

    def try_resume(self) -> list[Member]:
        """Each model continues from its own checkpoint, if its folder holds one (written fused or alone); returns
        the models that start afresh."""
        fresh = []
        for index, member in enumerate(self.members):
            state = read_resume_checkpoint(member.run_dir, self.data_fingerprint)
            if state is None:
                fresh.append(member)
            else:
                self.load_member(index, member, state, member.run_dir / CHECKPOINT_FILE)
        return fresh

    def load_init(self, members: list[Member], num_classes: int) -> None:
        """--init: these models start from the saved net's weights instead of their He init (loaded once: the
        models of a group share their --init)."""
        config = self.config
        network = build_run_network(config, num_classes)
        load_init(network, config.init, config.kind, config.depth, config.shortcut, num_classes)  # type: ignore[arg-type]
        for member in members:
            self.set_weights(self.members.index(member), network.state_dict())

    @torch.no_grad()
    def set_weights(self, index: int, state: dict[str, torch.Tensor]) -> None:
        tensors = {**self.params, **self.buffers}
        for name in self.state_names:
            tensors[name][index].copy_(state[name])

    def load_member(self, index: int, member: Member, state: dict[str, Any], path: Path) -> None:
        check_same_device_type(state, self.device)
        if set(state["model"]) != set(self.state_names):
            raise UserError(f"{path} holds another network's weights: delete it and rerun with --retry-failed")
        self.set_weights(index, state["model"])
        with torch.no_grad():
            self.load_momentum(index, state["optimizer"]["state"])
        member.generator.set_state(state["generator"].cpu())
        member.torch_rng = state["torch_rng"].cpu()
        cuda_rng = state.get("cuda_rng")
        member.cuda_rng = cuda_rng.cpu() if torch.is_tensor(cuda_rng) else member.cuda_rng
        member.iteration, member.epoch = state["iteration"], state["epoch"]
        member.warming_up, member.warmup_end_iteration = state["warming_up"], state["warmup_end_iteration"]
        member.warmup_end_reason = state.get("warmup_end_reason")
        member.warmup_window = state["warmup_window"].to(self.device)
        member.last_lr = float(state["optimizer"]["param_groups"][0]["lr"])
        member.gradients.load_state_dict(state.get("gradients"))
        partial = state["partial"]
        member.in_progress = None if partial is None else EpochInProgress(**partial).to(self.device)
        if member.in_progress is not None:
            member.epoch_started = time.perf_counter() - member.in_progress.seconds

    def load_momentum(self, index: int, saved: dict[int, dict[str, torch.Tensor]]) -> None:
        """A model's momentum buffers into its slices. A model without any yet (no step taken) gets zeros, which
        the next step turns into its gradient exactly as a first step would (0 x momentum + gradient)."""
        if not saved:
            return
        if self.sgd.buffers is None:
            self.sgd.buffers = [torch.zeros_like(p, memory_format=torch.contiguous_format).detach()
                                for p in self.params.values()]
        for i, buffer in enumerate(self.sgd.buffers):
            buffer[index].copy_(saved[i]["momentum_buffer"])

    def close(self) -> None:
        """Free the stacks and the data now (a finished group's GPU memory is free at once)."""
        self.params, self.buffers, self.active = {}, {}, []
        self.sgd = self.data = None  # type: ignore[assignment]


# ---------------------------------------------------------------------------------------------- a group's run
def run_fused_training(configs: list[TrainConfig], run_dirs: list[Path],
                       should_stop: Callable[[], bool] = lambda: False,
                       dataset: Dataset | None = None) -> list[RunResult]:
    """Train (or resume) the runs in run_dirs as one fused job; each folder ends as its single run's would.
    Returns one RunResult per run, in order."""
    configs = [config.for_family() for config in configs]
    for config in configs:
        config.validate()
    for run_dir, config in zip(run_dirs, configs, strict=True):
        ensure_writable_dir(run_dir)
        check_same_network(run_dir, config.kind)
    device = resolve_device(configs[0].device)
    prepare_process(configs[0], device)
    dataset = dataset or load_dataset(configs[0].data)
    resolved = [resolve_iterations(config, len(dataset.train_labels)) for config in configs]
    trainer: FusedTrainer | None = None
    try:
        trainer = FusedTrainer(resolved, run_dirs, device, dataset)  # stacking K models may run out of memory
        names = [run_dir.name for run_dir in run_dirs]
        for config, member in zip(configs, trainer.members, strict=True):
            fused = {"group": group_label(names), "models": len(names),
                     "fused_with": [name for name in names if name != member.run_dir.name]}
            write_config(member.run_dir, {**asdict(config), "resolved": describe_run(member, dataset),  # type: ignore[arg-type]
                                          "environment": environment(device), "fused": fused})
        fresh = trainer.try_resume()
        if fresh and trainer.config.init:
            trainer.load_init(fresh, dataset.num_classes)
        return train_group_to_the_end(trainer, should_stop)
    except torch.cuda.OutOfMemoryError as exc:  # the CPU's is a RuntimeError or MemoryError, below
        raise out_of_memory(len(configs), device, exc) from None
    except (MemoryError, RuntimeError) as exc:
        if isinstance(exc, MemoryError) or "can't allocate memory" in str(exc):
            raise out_of_memory(len(configs), device, exc) from None
        raise
    finally:
        if trainer is not None:
            trainer.close()


def out_of_memory(models: int, device: torch.device, exc: BaseException) -> UserError:
    smaller = max(1, models // 2)
    return UserError(f"out of memory training {models} models fused in one job on {device} ({type(exc).__name__}): "
                     f"rerun with a smaller --fuse, e.g. --fuse {smaller}, and --retry-failed (the runs continue from "
                     "their checkpoints)")


def train_group_to_the_end(trainer: FusedTrainer, should_stop: Callable[[], bool] = lambda: False) -> list[RunResult]:
    """Group steps until every model has finished, diverged, or the job is asked to stop; each model's epochs get
    their rows, checkpoints and status as a single run's do."""
    has_val = trainer.data.val_labels is not None
    logs = {id(m): RunLogs.open(m, has_val) for m in trainer.members}  # type: ignore[arg-type]
    trainer.drop(finish([m for m in trainer.members if m.finished], logs, "done"))
    last_report = time.monotonic()
    while trainer.active:
        for member in trainer.active:
            member.start_epoch(trainer.train_size)  # before the stop check, as Trainer.train_epoch begins its epoch
        if should_stop():
            for member in trainer.active:
                member.pause()
                trainer.save_checkpoint(member)
            finish(trainer.active, logs, "interrupted")
            break
        trainer.train_step()
        ended = trainer.ended_members()
        if ended:
            trainer.drop(end_epochs(trainer, ended, logs))
        if time.monotonic() - last_report > 1.0:  # progress for displays only: decides nothing
            last_report = time.monotonic()
            report_progress(trainer, logs)
    return [logs[id(member)].result for member in trainer.members]  # type: ignore[misc]


def end_epochs(trainer: FusedTrainer, ended: list[Member], logs: dict[int, RunLogs]) -> list[Member]:
    """Rows, status and checkpoints of the epochs that just ended; returns the members that are now done or
    diverged, to be dropped from the group."""
    leaving: list[Member] = []
    for member, row in zip(ended, trainer.close_epochs(ended), strict=True):
        logs[id(member)].append(member, row)  # type: ignore[arg-type]
        if not math.isfinite(row["train_loss"]):
            leaving += finish([member], logs, "diverged")  # no checkpoint, as a single run
            continue
        trainer.save_checkpoint(member)
        if member.finished:
            leaving += finish([member], logs, "done")
    return leaving


def finish(members: list[Member], logs: dict[int, RunLogs], state: str) -> list[Member]:
    for member in members:
        logs[id(member)].end(member, state)  # type: ignore[arg-type]
    return members


def report_progress(trainer: FusedTrainer, logs: dict[int, RunLogs]) -> None:
    """Live progress in every active model's status.json: its own error so far and its own share of img/s."""
    for member in trainer.active:
        epoch = member.in_progress
        if epoch is None or not epoch.step:
            continue
        seen = epoch.step * trainer.batch
        logs[id(member)].status.update(member.run_dir, live_train_error=epoch.wrong.item() / seen * 100,
                                       iteration=member.iteration,
                                       images_per_second=seen / (time.perf_counter() - member.epoch_started),
                                       **warmup_progress(member))  # type: ignore[arg-type]
