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

Everything but the batched step and its weights is the single run's code (`train.Engine`, `protocol.RunProgress`).
Each model keeps its own run folder, written exactly as a single run writes it (config.json, metrics.csv,
status.json, checkpoint.pt): its checkpoint holds that one model's weights and optimizer state in the one
checkpoint format, so `build_model` + `load_state_dict`, `plot`, `table`, and even resuming it alone with
`--fuse 1`, work as for any run. A group whose members stopped at different points (a kill between their
checkpoint writes) trains each from its own position.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.func import functional_call, vmap

from ..config import digits
from ..errors import UserError
from ..models.families import weight_layers
from ..results.groups import comparable
from .data import Dataset, model_inputs, normalize
from .devices import (
    caller_state_kept,
    check_compile_possible,
    precision_context,
    prepare_compiling,
    set_cudnn_mode,
)
from .gradients import GradientLog
from .protocol import RunProgress
from .trainer import (
    COMPILE_MODES,
    Engine,
    RunResult,
    TrainConfig,
    asked_compile,
    build_run_network,
    ctrl_c_stops,
    prepare_runs,
    resolve_iterations,
    sgd_optimizer,
    steps_per_epoch,
    train_to_the_end,
    uses_compile,
    write_run_config,
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
    if digits(text) and int(text) >= 1:
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
    seeds = [config.seed for config in configs]
    if len(set(seeds)) != len(seeds):
        raise UserError(f"a fused group lists a seed twice ({seeds}): each model needs its own seed")


class StackedSGD:
    """SGD with momentum and weight decay (§4.2) over the group's stacked parameters, with each model's own lr.

    It performs torch's foreach SGD update (the single run's CPU optimizer) element for element: gradient plus
    weight decay times the weight, the momentum buffer set to that on the first step and then scaled by the
    momentum and added to, the weight moved by -lr times the buffer. Every step is elementwise, so a model's slice
    of a stacked tensor sees exactly its own update. As torch's SGD, it skips a parameter without a gradient (a
    net may hold one its forward never uses): no decay, no momentum buffer until its first gradient.
    """

    def __init__(self, params: list[torch.Tensor], momentum: float, weight_decay: float):
        self.params, self.momentum, self.weight_decay = params, momentum, weight_decay
        self.buffers: list[torch.Tensor | None] = [None] * len(params)  # stacked like the params, from the 1st step

    @torch.no_grad()
    def step(self, lrs: torch.Tensor) -> None:
        """One update; lrs: each model's lr, a (K,) device tensor (compiled, a change of lr is new data, not new
        code)."""
        stepped = [i for i, p in enumerate(self.params) if p.grad is not None]
        params = [self.params[i] for i in stepped]
        grads = [self.params[i].grad for i in stepped]
        if self.weight_decay:
            grads = torch._foreach_add(grads, params, alpha=self.weight_decay)  # type: ignore[arg-type]
        if self.momentum:
            grads = self.momentum_step(stepped, grads)  # type: ignore[arg-type]
        model_lrs = [lrs.view(-1, *[1] * (p.dim() - 1)) for p in params]  # model k's lr over its slice of each
        torch._foreach_addcmul_(params, grads, model_lrs, value=-1)  # type: ignore[arg-type]  # as SGD's alpha=-lr

    def momentum_step(self, stepped: list[int], grads: list[torch.Tensor]) -> list[torch.Tensor]:
        """The buffers of the stepped params, each set to its gradient at its first step, then momentum-averaged."""
        old = [(position, i) for position, i in enumerate(stepped) if self.buffers[i] is not None]
        if old:
            buffers = [self.buffers[i] for _, i in old]
            torch._foreach_mul_(buffers, self.momentum)  # type: ignore[arg-type]
            torch._foreach_add_(buffers, [grads[position] for position, _ in old], alpha=1.0)  # type: ignore[arg-type]
        for position, i in enumerate(stepped):
            if self.buffers[i] is None:
                self.buffers[i] = grads[position].detach().clone()
        return [self.buffers[i] for i in stepped]  # type: ignore[misc]

    def keep(self, indices: torch.Tensor) -> None:
        """Only these models from now on (the others finished or diverged)."""
        self.buffers = [None if b is None else b.index_select(0, indices) for b in self.buffers]


class FusedTrainer(Engine):
    """A fused group: the stacked weights, their optimizer, and one `RunProgress` per model (its protocol).

    `train_step()` moves every active model one SGD step, each on its own next batch; `evaluate` runs the held-out
    splits through every closing model at once; `drop(members)` also removes the models from the stacks. The rest
    (resume, --init, rows, checkpoints in the single-run format) is the `Engine`'s, as for a single run.
    """

    def __init__(self, configs: list[TrainConfig], run_dirs: list[Path], device: torch.device, dataset: Dataset):
        configs = [config.for_family() for config in configs]  # as Trainer: the family's protocol defaults filled in
        check_fusable(configs)
        config = configs[0]
        check_compile_possible(asked_compile(config, fused=True), str(device))
        self.config, self.device = config, device
        self.data_fingerprint = dataset.fingerprint()
        self.data = dataset.to(device)
        self.mean = self.data.pixel_mean()
        self.train_size = len(self.data.train_labels)
        self.batch = min(config.batch_size, self.train_size)
        self.channels_last = config.channels_last is not False
        networks = self.build_members(configs, run_dirs, dataset.num_classes)
        self.param_names = [name for name, _ in networks[0].named_parameters()]
        self.state_names = list(networks[0].state_dict())
        self.param_groups = sgd_optimizer(networks[0].parameters(), config, device).state_dict()["param_groups"]
        states = [network.state_dict() for network in networks]
        self.params = {name: torch.stack([s[name] for s in states]).to(device).requires_grad_()
                       for name in self.param_names}
        self.buffers = {name: torch.stack([s[name] for s in states]).to(device)
                        for name in self.state_names if name not in self.params}
        self.network = networks[0].to("meta").train()  # the module vmap runs with each model's tensors
        self.gradient_params = [f"{name}.weight" for name, _ in weight_layers(self.network)]
        self.sgd = StackedSGD(list(self.params.values()), config.momentum, config.weight_decay)
        self.active = list(self.members)
        self.lr_values: list[float] = []  # the lrs in self.lrs, set by the first step
        self.autocast = precision_context(config.precision, device)
        set_cudnn_mode(device, config.deterministic)
        # --cuda-graph too: torch.compile's CUDA-graph mode is the one capture that follows vmap
        self.compiled = uses_compile(config, device, fused=True)
        self.losses_of, self.sgd_step = self.batched_losses, self.sgd.step
        if self.compiled:
            self.compile_step()

    def build_members(self, configs: list[TrainConfig], run_dirs: list[Path],
                      num_classes: int) -> list[torch.nn.Module]:
        """Each model's network, initialised as its single run's (from the global RNG seeded with its seed), and its
        protocol, which keeps the global RNG state right after that init."""
        steps = steps_per_epoch(self.train_size, configs[0].batch_size)
        networks, self.members = [], []
        for config, run_dir in zip(configs, run_dirs, strict=True):
            torch.manual_seed(config.seed)
            networks.append(build_run_network(config, num_classes))
            gradients = GradientLog(weight_layers(networks[-1]), self.device)  # norms handed in by the group
            self.members.append(RunProgress(config, run_dir, self.device, steps, gradients, owns_global_rng=False))
        return networks

    @property
    def models(self) -> int:
        return len(self.active)

    # ------------------------------------------------------------------ the batched network
    def forward(self, params: dict[str, torch.Tensor], buffers: dict[str, torch.Tensor],
                inputs: torch.Tensor) -> torch.Tensor:
        return functional_call(self.network, (params, buffers), (inputs,))

    def compile_step(self) -> None:
        """torch.compile the batched forward and loss (its backward with it) and the SGD update, as a single run's
        --compile does, for the group's current K: a model dropping out changes the shapes, and the next step
        compiles for the new K."""
        prepare_compiling()  # a group per size, and a size per model dropping out
        mode = COMPILE_MODES.get(self.device.type)
        if mode == "reduce-overhead":  # the CUDA-graph mode keeps the stacks in place instead of copying them in
            for tensor in [*self.params.values(), *self.buffers.values()]:
                torch._dynamo.mark_static_address(tensor)
        self.losses_of = torch.compile(self.batched_losses, mode=mode, dynamic=False)
        self.sgd_step = torch.compile(self.sgd.step, dynamic=False)

    def batched_losses(self, params: dict[str, torch.Tensor], buffers: dict[str, torch.Tensor],
                       inputs: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Every model's mean loss (K,) and logits (K, B, classes) on its own batch, in one batched pass."""
        logits = vmap(self.forward)(params, buffers, inputs)
        return vmap(F.cross_entropy)(logits, labels), logits

    def next_batches(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Every active model's next batch (K, B, 3, H, W) and labels (K, B): one gather and one augmentation for
        all, each model's crops and flips from its own generator, so its data stream is its single run's."""
        index = torch.cat([member.next_batch(self.batch) for member in self.active])
        images, labels = self.data.train_images[index], self.data.train_labels[index].view(self.models, self.batch)
        generators = [member.generator for member in self.active]
        return model_inputs(images, self.mean, generators, self.config.data.augment, self.channels_last), labels

    def set_lrs(self) -> list[float]:
        """The active models' lrs for this step, in the (K,) device tensor the update reads (made anew only when one
        changes, or a model leaves: a few times a run)."""
        lrs = [member.lr() for member in self.active]
        if lrs != self.lr_values:
            self.lrs, self.lr_values = torch.tensor(lrs, device=self.device), lrs
        return lrs

    def train_step(self) -> torch.Tensor:
        """One SGD step of every active model on its own next batch; returns the models' losses (K, device)."""
        for member in self.active:
            member.start_epoch(self.train_size)
        inputs, labels = self.next_batches()
        lrs = self.set_lrs()
        with self.autocast():
            losses, logits = self.losses_of(self.params, self.buffers, inputs, labels)
        for param in self.params.values():
            param.grad = None
        losses.sum().backward()  # d(sum)/d(model k's weights) is model k's own gradient: the weights are disjoint
        self.sgd_step(self.lrs)
        self.sample_gradients()
        losses = losses.detach().float()
        wrong = (logits.detach().argmax(-1) != labels).sum(1).float()
        for index, member in enumerate(self.active):
            member.count_step(lrs[index], losses[index], wrong[index], self.batch)
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

    @torch.no_grad()
    def evaluate(self, members: list[RunProgress], images: torch.Tensor,
                 labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Summed loss and wrong answers (each (K,), on the device) of these models on un-augmented images, in eval
        mode (each its own BN running statistics); every model sees the same images, so they are passed once,
        unbatched."""
        indices = [self.active.index(member) for member in members]
        params, buffers = self.params, self.buffers
        if indices != list(range(self.models)):
            chosen = torch.tensor(indices, device=self.device)
            params = {k: v.index_select(0, chosen) for k, v in self.params.items()}
            buffers = {k: v.index_select(0, chosen) for k, v in self.buffers.items()}
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
        return loss_sum, wrong

    # ------------------------------------------------------------------ the group shrinks
    def drop(self, members: list[RunProgress]) -> None:
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
        if self.compiled:
            self.compile_step()

    # ------------------------------------------------------------------ one model's slices, in the checkpoint format
    def model_weights(self, member: RunProgress) -> dict[str, torch.Tensor]:
        index = self.active.index(member)
        tensors = {**self.params, **self.buffers}
        return {name: tensors[name][index] for name in self.state_names}

    def model_momentum(self, member: RunProgress) -> dict[int, torch.Tensor]:
        index = self.active.index(member)
        return {i: buffer[index] for i, buffer in enumerate(self.sgd.buffers) if buffer is not None}

    @torch.no_grad()
    def set_weights(self, member: RunProgress, state: dict[str, torch.Tensor]) -> None:
        index = self.active.index(member)
        tensors = {**self.params, **self.buffers}
        for name in self.state_names:
            tensors[name][index].copy_(state[name])

    def load_momentum(self, member: RunProgress, momentum: dict[int, torch.Tensor]) -> None:
        """A model's momentum buffers into its slices. The other models of a param without any yet (no step taken)
        get zeros, which their next step turns into their gradient exactly as a first step would (0 x m + g)."""
        index = self.active.index(member)
        for i, saved in momentum.items():
            if self.sgd.buffers[i] is None:
                self.sgd.buffers[i] = torch.zeros_like(self.sgd.params[i], memory_format=torch.contiguous_format)
            self.sgd.buffers[i][index].copy_(saved)  # type: ignore[index]

    def close(self) -> None:
        """Free the stacks and the data now (a finished group's GPU memory is free at once)."""
        self.params, self.buffers, self.active = {}, {}, []
        self.sgd = self.data = None  # type: ignore[assignment]


# ---------------------------------------------------------------------------------------------- a group's run
def run_fused_training(configs: list[TrainConfig], run_dirs: list[Path] | list[str],
                       should_stop: Callable[[], bool] = lambda: False,
                       dataset: Dataset | None = None) -> list[RunResult]:
    """Train (or resume) the runs in run_dirs as one fused job; each folder ends as its single run's would (a
    Ctrl-C too: see run_training). Returns one RunResult per run, in order."""
    run_dirs = [Path(run_dir) for run_dir in run_dirs]
    with caller_state_kept():
        return train_fused(configs, run_dirs, should_stop, dataset)


def train_fused(configs: list[TrainConfig], run_dirs: list[Path], should_stop: Callable[[], bool],
                dataset: Dataset | None) -> list[RunResult]:
    configs, device, dataset = prepare_runs(configs, run_dirs, dataset)
    resolved = [resolve_iterations(config, len(dataset.train_labels)) for config in configs]
    trainer: FusedTrainer | None = None
    try:
        trainer = FusedTrainer(resolved, run_dirs, device, dataset)  # stacking K models may run out of memory
        trainer.start(dataset.num_classes)
        names = [run_dir.name for run_dir in run_dirs]
        for config, member in zip(configs, trainer.members, strict=True):
            fused = {"group": group_label(names), "models": len(names),
                     "fused_with": [name for name in names if name != member.run_dir.name]}
            write_run_config(trainer, member, config, dataset, fused=fused)
        with ctrl_c_stops() as pressed:
            return train_to_the_end(trainer, lambda: should_stop() or pressed())
    except (MemoryError, RuntimeError) as exc:  # CUDA's OutOfMemoryError is a RuntimeError
        if ran_out_of_memory(exc):
            raise out_of_memory(len(configs), device, exc) from None
        raise
    finally:
        if trainer is not None:
            trainer.close()


def ran_out_of_memory(exc: BaseException | None) -> bool:
    """Whether this error, or one on the way to it, says memory ran out: CUDA's OutOfMemoryError, or the CPU's
    MemoryError or "can't allocate memory" RuntimeError. An allocation that fails while a CUDA graph records surfaces
    as the capture's own error when the recording ends, the out-of-memory error as its context."""
    while exc is not None:
        if isinstance(exc, (torch.cuda.OutOfMemoryError, MemoryError)) or "can't allocate memory" in str(exc):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def out_of_memory(models: int, device: torch.device, exc: BaseException) -> UserError:
    smaller = max(1, models // 2)
    return UserError(f"out of memory training {models} models fused in one job on {device} ({type(exc).__name__}): "
                     f"rerun with a smaller --fuse, e.g. --fuse {smaller}, and --retry-failed (the runs continue from "
                     "their checkpoints)")
