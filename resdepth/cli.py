"""The `resdepth` command line: the only module that prints or exits.

Known user errors (`UserError`) become one line on stderr and exit code 2; a sweep's exit code says how its
cells ended (0 all done, 1 some failed, 3 some diverged, 4 some busy elsewhere, 130/143 interrupted).
"""

from __future__ import annotations

import inspect
import os
import shlex
import signal
import sys
import time
from dataclasses import fields, replace
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from .cluster import SlurmConfig
from .data import DataConfig, LoadProgress, load_dataset
from .errors import UserError
from .results import RunStatus, ensure_writable_dir
from .sweep import (PlannedCell, SweepConfig, SweepProgress, count_actions, load_saved_sweep, load_sweep_file,
                    plan_sweep, run_sweep)
from .train import TrainConfig

app = typer.Typer(add_completion=False, no_args_is_help=True, rich_markup_mode=None,
                  help="Plain vs residual CIFAR networks by depth (He et al. 2016, section 4.2).")
console = Console()
errors = Console(stderr=True)

T, D, S = TrainConfig(), DataConfig(), SlurmConfig()
CLUSTER = "Cluster (--executor ray or slurm)"


def _csv(kind: type) -> Any:
    def parse(text: Optional[str]) -> Optional[list[Any]]:
        if text is None:
            return None
        try:
            return [kind(part.strip()) for part in text.split(",") if part.strip()]
        except ValueError:
            raise typer.BadParameter(f"expected a comma-separated list of {kind.__name__}s, got {text!r}") from None
    return parse


# Options shared by `train` and `sweep`, declared once. None means "not given": the config default applies.
Shortcut = Annotated[Optional[str], typer.Option(help=f"A: zero-padding identity (paper), B: projection. [default: {T.shortcut}]")]
Iterations = Annotated[Optional[int], typer.Option(help=f"SGD iterations; lr milestones scale with it (50%/75%). [default: {T.iterations}]")]
Epochs = Annotated[Optional[int], typer.Option(help="Train for this many epochs instead (converted to iterations).")]
BatchSize = Annotated[Optional[int], typer.Option(help=f"Mini-batch size (images). [default: {T.batch_size}]")]
Lr = Annotated[Optional[float], typer.Option(help=f"Initial learning rate, /10 at 50% and 75% of the iterations. [default: {T.lr}]")]
Momentum = Annotated[Optional[float], typer.Option(help=f"SGD momentum. [default: {T.momentum}]")]
WeightDecay = Annotated[Optional[float], typer.Option(help=f"L2 weight decay. [default: {T.weight_decay}]")]
Warmup = Annotated[Optional[str], typer.Option(help=f"auto: lr {T.warmup_lr} until train error < {T.warmup_until_error:g}% for depth >= {T.warmup_min_depth} (paper); on; off. [default: auto]")]
WarmupMinDepth = Annotated[Optional[int], typer.Option(help=f"Smallest depth that warms up with --warmup auto. [default: {T.warmup_min_depth}]")]
Dataset = Annotated[Optional[str], typer.Option(help=f"cifar10, cifar100, folder (needs --data-dir) or synthetic (embedded). [default: {D.dataset}]")]
DataDir = Annotated[Optional[str], typer.Option(help="Dataset folder (cifar download target, or train/<class>/ + test/<class>/ images). [default: $RESDEPTH_DATA or ~/.cache/resdepth/data]")]
TrainSize = Annotated[Optional[int], typer.Option(help="Use a seeded, class-balanced subset of this many training images. [default: all]")]
TestSize = Annotated[Optional[int], typer.Option(help="Use a seeded, class-balanced subset of this many test images. [default: all]")]
ValSize = Annotated[Optional[int], typer.Option(help="Hold out this many training images as a validation split (5000: the paper's 45k/5k). [default: 0, off]")]
SyntheticTrain = Annotated[Optional[int], typer.Option(help=f"Training images of --dataset synthetic. [default: {D.synthetic_train}]")]
SyntheticTest = Annotated[Optional[int], typer.Option(help=f"Test images of --dataset synthetic. [default: {D.synthetic_test}]")]
Augment = Annotated[Optional[bool], typer.Option("--augment/--no-augment", help="Pad-4 random crop + flip (paper). [default: on]")]
Device = Annotated[Optional[str], typer.Option(help="auto, cpu, cuda or cuda:N. [default: auto]")]
Threads = Annotated[Optional[int], typer.Option(help="Torch CPU threads per job. [default: cores / jobs]")]
Precision = Annotated[Optional[str], typer.Option(help="auto (fp32 on CPU, tf32 on CUDA), fp32, tf32 or bf16 (autocast; BN stays fp32). [default: auto]")]
ChannelsLast = Annotated[Optional[bool], typer.Option("--channels-last/--no-channels-last", help="NHWC memory format (measured faster on CPU and GPU). [default: on]")]
Compile = Annotated[Optional[bool], typer.Option("--compile/--no-compile", help="torch.compile the training step (+14% img/s on CPU after 1-2 min of compiling). [default: on for CPU runs of >= 2000 iterations, else off]")]
CudaGraph = Annotated[Optional[bool], typer.Option("--cuda-graph/--no-cuda-graph", help="CUDA only: replay forward+backward+SGD as one CUDA graph (no kernel-launch overhead; same math). [default: off]")]
TensorBoard = Annotated[Optional[bool], typer.Option("--tensorboard/--no-tensorboard", help="Also write each run's per-epoch metrics, lr and img/s as TensorBoard scalars in its folder: `tensorboard --logdir RESULTS_DIR` (needs the tensorboard extra). [default: off]")]
Out = Annotated[Optional[Path], typer.Option(help="Results folder; one sub-folder per run. [default: results/<name or dataset>]")]
Force = Annotated[bool, typer.Option(help="Start run folders whose config differs over (old folders are kept, renamed).")]

TRAIN_OPTIONS = {f.name for f in fields(TrainConfig)}
DATA_OPTIONS = {f.name for f in fields(DataConfig)}


SHARED_OPTIONS = {  # name -> typed option alias; given to `train` and `sweep` by `with_training_options`
    "shortcut": Shortcut, "iterations": Iterations, "epochs": Epochs, "batch_size": BatchSize, "lr": Lr,
    "momentum": Momentum, "weight_decay": WeightDecay, "warmup": Warmup, "warmup_min_depth": WarmupMinDepth,
    "dataset": Dataset, "data_dir": DataDir, "train_size": TrainSize, "test_size": TestSize, "val_size": ValSize,
    "synthetic_train": SyntheticTrain, "synthetic_test": SyntheticTest, "augment": Augment, "device": Device,
    "threads": Threads, "precision": Precision, "channels_last": ChannelsLast, "compile": Compile,
    "cuda_graph": CudaGraph, "tensorboard": TensorBoard,
}


def with_training_options(command: Any) -> Any:
    """Declare the shared training options once: they replace the command's **options in the signature Typer reads."""
    signature = inspect.signature(command, eval_str=True)  # real annotations: Typer reads them from here
    own = [p for p in signature.parameters.values() if p.kind is not inspect.Parameter.VAR_KEYWORD]
    shared = [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=alias)
              for name, alias in SHARED_OPTIONS.items()]
    command.__signature__ = signature.replace(parameters=own + shared)
    return command


def apply_overrides(train: TrainConfig, options: dict[str, Any]) -> TrainConfig:
    """Command-line values that were given replace those of the config (or sweep file)."""
    given = {k: v for k, v in options.items() if v is not None}
    if "iterations" in given and "epochs" in given:
        raise UserError("give --iterations or --epochs, not both: the run's length is one of them")
    if "iterations" in given:
        given["epochs"] = None  # the command line's length replaces a sweep file's epochs too
    data = replace(train.data, **{k: v for k, v in given.items() if k in DATA_OPTIONS})
    return replace(train, **{k: given[k] for k in given.keys() & TRAIN_OPTIONS}, data=data)


def show_version(value: bool) -> None:
    if value:
        import platform

        import torch

        from . import __version__

        console.print(f"resdepth {__version__} (torch {torch.__version__}, Python {platform.python_version()})",
                      markup=False, highlight=False)
        raise typer.Exit()


@app.callback()
def main_options(
    version: Annotated[bool, typer.Option("--version", callback=show_version, is_eager=True, help="Print the version and exit.")] = False,
) -> None:
    """Plain vs residual CIFAR networks by depth (He et al. 2016, section 4.2)."""


@app.command()
def models(
    pattern: Annotated[str, typer.Argument(help="Shell-style filter, e.g. 'plain*' or 'resnet1*'.")] = "*",
    num_classes: Annotated[int, typer.Option(help="Classes of the FC layer (10: CIFAR-10, 100: CIFAR-100).")] = 10,
) -> None:
    """List the registered networks: name, kind, depth, parameters, forward multiply-adds."""
    from .models import describe_models

    table = Table(title=f"resdepth networks ({num_classes} classes)")
    for column in ("name", "kind", "depth", "params", "MFLOPs (mult-adds)"):
        table.add_column(column, justify="right" if column not in ("name", "kind") else "left")
    for row in describe_models(pattern, num_classes):
        table.add_row(str(row["name"]), str(row["kind"]), str(row["depth"]), f"{row['params']:,}", f"{row['mflops']:.1f}")
    console.print(table)


@app.command()
@with_training_options
def train(
    depth: Annotated[int, typer.Option(help="Layers, 6n+2: 20, 32, 44, 56, 110, 1202 (8, 14 for quick tests).")] = T.depth,
    kind: Annotated[str, typer.Option(help="plain or residual.")] = T.kind,
    seed: Annotated[int, typer.Option(help="Seed of init, shuffling and augmentation.")] = T.seed,
    out: Annotated[Optional[Path], typer.Option(help="Results folder; the run goes to its sub-folder <kind>-<depth>-s<seed>. [default: results/<dataset>]")] = None,
    force: Force = False, **options: Any,
) -> None:
    """Train one network with the paper's protocol (resumes if its folder holds a checkpoint)."""
    base = apply_overrides(TrainConfig(), options)
    sweep = SweepConfig(depths=[depth], kinds=[kind], seeds=[seed], out=str(out) if out else None, train=base, force=force)
    raise typer.Exit(execute(sweep, dry_run=False))


@app.command()
@with_training_options
def sweep(
    sweep_file: Annotated[Optional[Path], typer.Argument(help="TOML sweep file (see sweeps/); options given here override it.")] = None,
    depths: Annotated[Optional[str], typer.Option(help="Comma-separated depths (6n+2). [default: 20,32,44,56]")] = None,
    kind: Annotated[Optional[str], typer.Option("--kind", "--kinds", help="Comma-separated kinds. [default: plain,residual]")] = None,
    seeds: Annotated[Optional[str], typer.Option(help="Comma-separated seeds. [default: 0]")] = None,
    name: Annotated[Optional[str], typer.Option(help="Sweep name: results go to results/<name>. [default: file name, else dataset]")] = None,
    resume: Annotated[Optional[Path], typer.Option(help="Resume the sweep saved in this results folder.")] = None,
    jobs: Annotated[Optional[int], typer.Option(help="CPU jobs at once (threads split between them). [default: 1]")] = None,
    gpus: Annotated[Optional[str], typer.Option(help="Comma-separated GPU indices. [default: all visible with --device auto]")] = None,
    jobs_per_gpu: Annotated[Optional[int], typer.Option(help="Jobs sharing each GPU. [default: 1]")] = None,
    executor: Annotated[Optional[str], typer.Option(help="auto, sequential (in-process), local (a process per job), ray (a task per cell on a Ray cluster) or slurm (a job array through submitit). [default: auto]")] = None,
    address: Annotated[Optional[str], typer.Option(help="--executor ray: the cluster, auto (started here by `ray start`) or HOST:PORT. [default: $RAY_ADDRESS, else a new local one]", rich_help_panel=CLUSTER)] = None,
    gpus_per_job: Annotated[Optional[float], typer.Option(help="--executor ray: GPU share of each cell, e.g. 0.5 for two per GPU; slurm: 1 (whole GPUs). [default: 1]", rich_help_panel=CLUSTER)] = None,
    slurm_partition: Annotated[Optional[str], typer.Option(help="--executor slurm: partition. [default: the cluster's default]", rich_help_panel=CLUSTER)] = None,
    slurm_time: Annotated[Optional[int], typer.Option(help=f"--executor slurm: minutes per job; longer cells are checkpointed and requeued. [default: {S.time}]", rich_help_panel=CLUSTER)] = None,
    slurm_cpus: Annotated[Optional[int], typer.Option(help=f"--executor slurm: cores per cell (--threads overrides). [default: {S.cpus_per_job}]", rich_help_panel=CLUSTER)] = None,
    slurm_mem_gb: Annotated[Optional[float], typer.Option(help="--executor slurm: memory per job. [default: the partition's]", rich_help_panel=CLUSTER)] = None,
    slurm_account: Annotated[Optional[str], typer.Option(help="--executor slurm: account to charge.", rich_help_panel=CLUSTER)] = None,
    slurm_qos: Annotated[Optional[str], typer.Option(help="--executor slurm: quality of service.", rich_help_panel=CLUSTER)] = None,
    slurm_constraint: Annotated[Optional[str], typer.Option(help="--executor slurm: node features, e.g. h100.", rich_help_panel=CLUSTER)] = None,
    slurm_array_parallelism: Annotated[Optional[int], typer.Option(help=f"--executor slurm: array tasks running at once. [default: {S.array_parallelism}]", rich_help_panel=CLUSTER)] = None,
    retry_failed: Annotated[bool, typer.Option(help="Run failed and diverged cells again from their last checkpoint.")] = False,
    dry_run: Annotated[bool, typer.Option(help="List the cells, their folders and devices; train nothing.")] = False,
    out: Out = None, force: Force = False, **options: Any,
) -> None:
    """Train every cell of depths x kinds x seeds; finished cells are skipped, unfinished ones resumed."""
    if resume is not None and sweep_file is not None:
        raise UserError("give either a sweep file or --resume RESULTS_DIR, not both")
    config = load_saved_sweep(resume) if resume else load_sweep_file(sweep_file) if sweep_file else SweepConfig()
    config.train = apply_overrides(config.train, options)
    given = {"depths": _csv(int)(depths), "kinds": _csv(str)(kind), "seeds": _csv(int)(seeds), "name": name,
             "out": str(out) if out else None, "jobs": jobs, "gpus": _csv(int)(gpus), "jobs_per_gpu": jobs_per_gpu,
             "executor": executor, "ray_address": address, "gpus_per_job": gpus_per_job}
    slurm = {"partition": slurm_partition, "time": slurm_time, "cpus_per_job": slurm_cpus, "mem_gb": slurm_mem_gb,
             "account": slurm_account, "qos": slurm_qos, "constraint": slurm_constraint,
             "array_parallelism": slurm_array_parallelism}
    config = replace(config, **{k: v for k, v in given.items() if v is not None},
                     slurm=replace(config.slurm, **{k: v for k, v in slurm.items() if v is not None}),
                     retry_failed=retry_failed, force=force)
    raise typer.Exit(execute(config, dry_run))


def execute(config: SweepConfig, dry_run: bool) -> int:
    """Plan, show the plan, run with a live display, print the summary; returns the exit code."""
    from .executors import make_executor

    planned = plan_sweep(config)
    if dry_run:
        print_plan(config, planned)
        return 0
    ensure_writable_dir(config.out_dir())
    if any(item.device for item in planned):
        with DataLoadDisplay() as show:  # fail fast, before any cell starts: missing data is a user error
            load_dataset(config.train.data, on_progress=show)
    counts = count_actions(planned)
    console.print(f"[bold]{config.out_dir()}[/]: {len(planned)} cell(s): "
                  + ", ".join(f"{n} {a}" for a, n in counts.items()))
    executor = make_executor(config)
    received: list[int] = []
    previous = {sig: signal.signal(sig, lambda s, _f: received.append(s)) for sig in (signal.SIGINT, signal.SIGTERM)}
    display = LiveDisplay(len(planned))
    try:
        with display:
            outcomes = run_sweep(config, executor, planned, on_progress=display.update, stop_requested=lambda: bool(received))
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    print_summary(planned, outcomes)
    print_next_steps(config.out_dir(), planned, outcomes, interrupted=bool(received))
    if received:
        return 143 if received[0] == signal.SIGTERM else 130
    states = {o.state for o in outcomes.values()} | {p.action.removeprefix("skip-") for p in planned}
    return 1 if "failed" in states else 3 if "diverged" in states else 4 if "busy" in states else 0


def print_plan(config: SweepConfig, planned: list[PlannedCell]) -> None:
    from .estimate import estimate_plan
    from .sweep import device_slots, threads_per_job

    slots = device_slots(config)
    if config.executor in ("ray", "slurm"):
        from .cluster import task_threads

        where = f"one {config.executor} task per cell, {task_threads(config)} thread(s) each"
    else:
        where = f"{len(slots)} job slot(s): {', '.join(slots)}, {config.train.threads or threads_per_job(slots)} thread(s) each"
    estimate = estimate_plan(config, planned, on_progress=lambda line: errors.print(f"[dim]{line}[/]", highlight=False))
    table = Table(title=f"dry run: {config.out_dir()} ({where})")
    for column in ("cell", "action", "device", "iterations", "img/s", "est. time", "folder"):
        table.add_column(column, justify="right" if column in ("iterations", "img/s", "est. time") else "left")
    for item in planned:
        guess = estimate.cells[item.cell.name]
        table.add_row(item.cell.name, item.action, item.device or "-", _count(guess.iterations),
                      _rate(guess.speed and guess.speed.images_per_second), _duration(guess.seconds), str(item.cell.run_dir))
    console.print(table)
    print_estimate(estimate)


def print_estimate(estimate: Any) -> None:
    """The dry run's total time, what it rests on, and whether the data is here."""
    if estimate.total_seconds is not None:
        console.print(f"[bold]estimated time: {_duration(estimate.total_seconds)}[/] on this machine", highlight=False)
    for line in estimate.basis:
        console.print(f"[dim]  {line}[/]", highlight=False)
    mark = "[green]ready[/]" if estimate.data.ready else "[bold yellow]not ready[/]"
    console.print(f"data {mark}: {escape(estimate.data.summary)}", highlight=False, soft_wrap=True)


def print_summary(planned: list[PlannedCell], outcomes: dict[str, Any]) -> None:
    table = Table(title="sweep summary")
    for column in ("cell", "state", "epochs", "train err %", "test err %", "note"):
        table.add_column(column, justify="right" if "err" in column or column == "epochs" else "left")
    for item in planned:
        outcome = outcomes.get(item.cell.name)
        status = RunStatus.read(item.cell.run_dir)
        state = outcome.state if outcome else item.action.replace("skip-", "") if item.action.startswith("skip") else item.action
        note = (outcome.error or "") if outcome else skip_note(item.action) if item.action.startswith("skip") else ""
        if status and status.warmup_end_iteration:
            note = (note + f" warm-up ended at iteration {status.warmup_end_iteration}").strip()
        table.add_row(item.cell.name, state, f"{status.epoch}/{status.epochs}" if status else "-",
                      _pct(status.train_error if status else None), _pct(status.test_error if status else None), note[:80])
    console.print(table)


def print_next_steps(out: Path, planned: list[PlannedCell], outcomes: dict[str, Any], interrupted: bool) -> None:
    """Where the results are and what to run next: resume what is left, then the table, figures and report."""
    from .sweep import RUNNABLE

    states = {o.state for o in outcomes.values()} | {p.action.removeprefix("skip-") for p in planned}
    left = interrupted or "interrupted" in states or any(
        p.action in RUNNABLE and p.cell.name not in outcomes for p in planned)
    folder = shlex.quote(str(out))
    steps = [("results", str(out))]
    if left:
        steps.append(("resume", f"resdepth sweep --resume {folder}"))
    if states & {"failed", "diverged"}:
        steps.append(("run failed ones again", f"resdepth sweep --resume {folder} --retry-failed"))
    if "busy" in states:
        steps.append(("busy ones", f"resdepth status {folder} --watch; once they end, the same command again"))
    if any((status := RunStatus.read(p.cell.run_dir)) and status.epoch for p in planned):
        steps += [("table", f"resdepth table {folder}"), ("figures", f"resdepth plot {folder}"),
                  ("report", f"resdepth report {folder}")]
    width = max(len(label) for label, _ in steps) + 1
    for label, text in steps:
        console.print(f"{label + ':':<{width}} {text}", markup=False, highlight=False, soft_wrap=True)


def skip_note(action: str) -> str:
    return "skipped" if action == "skip-done" else "skipped: --retry-failed runs it again"


def _pct(value: Optional[float]) -> str:
    return "-" if value is None else f"{value:.2f}"


def _count(value: Optional[float]) -> str:
    return "-" if value is None else f"{value:,.0f}"


def _rate(images_per_second: Optional[float]) -> str:
    return "-" if images_per_second is None else f"{images_per_second:,.0f}" if images_per_second >= 10 else f"{images_per_second:.1f}"


def _duration(seconds: Optional[float]) -> str:
    """h:mm:ss, with days in front past 24 hours."""
    if seconds is None:
        return "-"
    days, rest = divmod(int(round(seconds)), 86400)
    text = f"{rest // 3600}:{rest % 3600 // 60:02d}:{rest % 60:02d}"
    return f"{days}d {text}" if days else text


class LiveDisplay:
    """Rich progress bars (overall, then one per running job) on a terminal; one plain line per epoch otherwise."""

    def __init__(self, total: int):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.tty = console.is_terminal
        self.progress = Progress(
            TextColumn("{task.description:<22}"), BarColumn(bar_width=24), MofNCompleteColumn(),
            TextColumn("{task.fields[info]}"), TimeRemainingColumn(), console=console, transient=False,
        ) if self.tty else None
        self.overall = self.progress.add_task("sweep", total=total, info="") if self.progress else None
        self.tasks: dict[str, Any] = {}
        self.logged: dict[str, tuple[str, int]] = {}

    def __enter__(self) -> "LiveDisplay":
        if self.progress:
            self.progress.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.progress:
            self.progress.stop()

    def update(self, snapshot: SweepProgress) -> None:
        if self.progress:
            self.update_bars(snapshot)
        else:
            self.log_lines(snapshot)

    def update_bars(self, snapshot: SweepProgress) -> None:
        assert self.progress is not None
        ended = snapshot.outcomes.values()
        failed = sum(o.state in ("failed", "diverged") for o in ended)
        skipped = sum(1 for p in snapshot.planned if not p.device)
        self.progress.update(self.overall, completed=len(snapshot.outcomes) + skipped,
                             info=f"{sum(o.state == 'done' for o in ended)} done, {failed} failed/diverged, "
                                  f"{len(snapshot.running)} running, {skipped} skipped")
        for name, status in snapshot.running.items():
            if name not in self.tasks:
                self.tasks[name] = self.progress.add_task(name, total=status.iterations or None, info="")
            self.progress.update(self.tasks[name], total=status.iterations or None, completed=status.iteration,
                                 info=f"{status.device} epoch {status.epoch}/{status.epochs} "
                                      f"train {_pct(status.train_error)}% test {_pct(status.test_error)}% "
                                      f"{status.images_per_second or 0:,.0f} img/s")
        for name, outcome in snapshot.outcomes.items():
            if name in self.tasks:
                self.progress.update(self.tasks.pop(name), description=f"{name} {outcome.state}")

    def log_lines(self, snapshot: SweepProgress) -> None:
        for name, status in snapshot.running.items():
            if self.logged.get(name) != (status.state, status.epoch) and status.epoch:
                self.logged[name] = (status.state, status.epoch)
                console.print(f"{name}: epoch {status.epoch}/{status.epochs} iteration {status.iteration}/{status.iterations} "
                              f"train {_pct(status.train_error)}% test {_pct(status.test_error)}% "
                              f"{status.images_per_second or 0:.0f} img/s", highlight=False)
        for name, outcome in snapshot.outcomes.items():
            if self.logged.get(name, ("", 0))[0] != outcome.state:
                self.logged[name] = (outcome.state, -1)
                console.print(f"{name}: {outcome.state}" + (f" ({outcome.error})" if outcome.error else ""), highlight=False)


class DataLoadDisplay:
    """While an image folder is decoded (once: later loads read the cache it names), a progress bar on a
    terminal and a line at the start and end elsewhere; the loader's notices as one line each."""

    def __init__(self) -> None:
        self.progress: Any = None
        self.task: Any = None
        self.started = 0.0

    def __enter__(self) -> "DataLoadDisplay":
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.progress is not None:
            self.progress.stop()

    def __call__(self, event: LoadProgress) -> None:
        if event.notice:
            console.print(f"[yellow]note:[/] {escape(event.notice)}", highlight=False, soft_wrap=True)
        elif event.done == 0:
            self.start(event)
        elif self.progress is not None:
            self.progress.update(self.task, completed=event.done)
        if not event.notice and event.done == event.total and event.total:
            self.__exit__()
            self.progress = None
            console.print(f"decoded {event.total:,} images in {time.monotonic() - self.started:.0f} s", highlight=False)

    def start(self, event: LoadProgress) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.started = time.monotonic()
        console.print(f"decoding {event.total:,} images once; they are kept in {event.cache} for later runs",
                      markup=False, highlight=False, soft_wrap=True)
        if console.is_terminal:
            self.progress = Progress(TextColumn("decoding"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                                     console=console, transient=True)
            self.task = self.progress.add_task("decoding", total=event.total)
            self.progress.start()


def read_runs(results_dir: Path) -> list[Any]:
    """The readable runs under results_dir; each skipped run folder gets one warning line on stderr."""
    from .results import load_runs

    runs, warnings = load_runs(results_dir)
    for line in warnings:
        errors.print(f"warning: {line}", markup=False, highlight=False, soft_wrap=True)
    return runs


@app.command()
def plot(
    results_dir: Annotated[Path, typer.Argument(help="Results folder; every run folder under it is read (recursively).")],
    out: Annotated[Optional[Path], typer.Option(help="Folder for the figures. [default: RESULTS_DIR/plots]")] = None,
    x: Annotated[str, typer.Option(help="x axis: iterations (in 1e4, as the paper) or epochs.")] = "iterations",
    formats: Annotated[str, typer.Option("--format", help="Comma-separated file formats: png, pdf, svg.")] = "png",
) -> None:
    """Figure 1 (train | test error per kind) and Figure 6 (plain | residual) style curves, seeds averaged."""
    from .plots import build_figures, parse_formats, save_figures

    chosen_formats = parse_formats(formats)
    runs = read_runs(results_dir)
    figures = build_figures(runs, x=x)
    out_dir = out or results_dir / "plots"
    ensure_writable_dir(out_dir)
    for path in save_figures(figures, out_dir, chosen_formats):
        console.print(str(path), markup=False, highlight=False, soft_wrap=True)


@app.command()
def table(
    results_dir: Annotated[Path, typer.Argument(help="Results folder; every run folder under it is read (recursively).")],
    csv: Annotated[Optional[Path], typer.Option("--csv", help="Also write the numbers (unrounded columns) to this CSV file.")] = None,
    markdown: Annotated[bool, typer.Option("--markdown", help="Print a Markdown table (for papers and READMEs) instead.")] = False,
) -> None:
    """Table 6 style summary: one row per dataset x kind x depth, seeds as mean ± std, beside the paper."""
    from rich import box
    from rich.text import Text

    from .tables import display_table, summarize, to_markdown, write_csv

    summary = summarize(read_runs(results_dir))
    if csv is not None:
        write_csv(summary, csv)
        errors.print(f"wrote {csv}", markup=False, highlight=False, soft_wrap=True)  # stdout stays the table
    if markdown:
        print(to_markdown(summary), end="")
    else:
        headers, rows, notes = display_table(summary)
        datasets = ", ".join(summary["dataset"].unique())
        view = Table(title=Text(f"{results_dir} ({datasets}): errors by depth"), box=box.SIMPLE_HEAD, show_edge=False,
                     pad_edge=False, collapse_padding=True)
        for i, header in enumerate(headers):  # numbers never wrap; long headers wrap onto two lines at most
            width = max([len(row[i]) for row in rows] + [len(word) for word in header.split()] + [min(len(header), 11)])
            view.add_column(header, justify="left" if header in ("dataset", "kind") else "right", width=width)
        for row in rows:
            view.add_row(*row)
        console.print(view)
        for note in notes:
            console.print(f"[dim]{note}[/]", highlight=False)


@app.command()
def report(
    results_dir: Annotated[Path, typer.Argument(help="Results folder; every run folder under it is read (recursively).")],
    out: Annotated[Optional[Path], typer.Option(help="The HTML file to write. [default: RESULTS_DIR/report.html]")] = None,
) -> None:
    """One self-contained HTML page: the Table-6 summary beside the paper, Figures 1 and 6 (and the analysis
    figures), each group's config and environment, and links to every run's CSV."""
    from .report import build_report
    from .results import atomic_write_bytes

    out = out or results_dir / "report.html"
    if results_dir.is_dir():
        check_output_file(out, "--out")
    page, warnings = build_report(results_dir, out)
    for line in warnings:
        errors.print(f"warning: {line}", markup=False, highlight=False, soft_wrap=True)
    atomic_write_bytes(out, page.encode())
    console.print(f"wrote {out} ({len(page) / 1e6:.1f} MB, self-contained): open it in a browser", markup=False,
                  highlight=False, soft_wrap=True)


@app.command()
def status(
    results_dir: Annotated[Path, typer.Argument(help="Results folder of a sweep (or a folder of sweeps); every run folder under it is read.")],
    watch: Annotated[bool, typer.Option("--watch", help="Refresh in place until every cell has ended (done, failed or diverged); Ctrl-C stops watching.")] = False,
    interval: Annotated[float, typer.Option(help="Seconds between refreshes with --watch.")] = 2.0,
) -> None:
    """Each cell's state, epoch, iteration, errors, img/s, elapsed time and ETA, read from the results folder
    (works while the sweep runs in another terminal or on a cluster, and after it ended)."""
    from rich.live import Live

    from .watch import read_folder_status

    if not interval > 0:
        raise UserError(f"--interval must be a positive number of seconds, got {interval}")
    folder = read_folder_status(results_dir)
    for line in folder.warnings:
        errors.print(f"warning: {line}", markup=False, highlight=False, soft_wrap=True)
    if not watch:
        console.print(status_view(folder, console.width))
        return
    try:
        with Live(status_view(folder, console.width), console=console, auto_refresh=False) as live:
            while not folder.ended:
                time.sleep(interval)
                folder = read_folder_status(results_dir)
                live.update(status_view(folder, console.width), refresh=True)
    except KeyboardInterrupt:
        pass  # stopping the watch is not an error: the last table stays on the screen


STATE_STYLES = {"done": "green", "running": "cyan", "failed": "red", "diverged": "red", "stopped": "yellow",
                "interrupted": "yellow", "pending": "dim", "not started": "dim"}


STATUS_COLUMNS = ("cell", "state", "epoch", "iteration", "train\nerr %", "test\nerr %", "img/s", "elapsed", "ETA",
                  "where", "note")
STATUS_DROP_ORDER = ("note", "where", "elapsed", "img/s", "epoch")  # left out in this order where a terminal is narrow


def status_view(folder: Any, width: int) -> Any:
    """The status table: a row per cell, then the totals and how to resume stopped cells. Nothing wraps: in a
    terminal narrower than the table, the columns of STATUS_DROP_ORDER are left out, in that order."""
    from rich.console import Group
    from rich.text import Text

    rows = [dict(zip(STATUS_COLUMNS, (
        cell.name, cell.state, f"{cell.epoch}/{cell.epochs}" if cell.epochs else "-",
        f"{cell.iteration:,}/{_count(cell.iterations)}", _pct(cell.train_error), _pct(cell.test_error),
        _rate(cell.images_per_second) if cell.state == "running" else "-", _duration(cell.elapsed),
        _duration(cell.eta), cell.where or "-", status_note(cell)))) for cell in folder.cells]
    shown = [c for c in STATUS_COLUMNS if c != "note" or any(row["note"] for row in rows)]
    for column in STATUS_DROP_ORDER:
        if table_width(rows, shown) <= width:
            break
        if column in shown:
            shown.remove(column)
    sweeps = "; ".join(f"sweep {path.relative_to(folder.root) if path != folder.root else path.name}: "
                       f"executor {executor}" for path, executor in folder.sweeps.items())
    table = Table(title=Text(f"{folder.root}" + (f" ({sweeps})" if sweeps else "")), box=box.SIMPLE_HEAD,
                  show_edge=False, pad_edge=False, collapse_padding=True,
                  caption=time.strftime("read at %H:%M:%S", time.localtime(folder.read_at)))
    for column in shown:
        table.add_column(column, justify="left" if column in ("cell", "state", "where", "note") else "right",
                         no_wrap=column != "note")
    for row in rows:
        cells = {**row, "state": Text(row["state"], style=STATE_STYLES.get(row["state"], "")),
                 "note": Text(row["note"], style="dim")}
        table.add_row(*(cells[column] for column in shown))
    counts = ", ".join(f"{n} {state}" for state, n in folder.counts().items())
    planned = folder.iterations_planned
    progress = f"iterations {folder.iterations_done:,}" + (
        f"/{planned:,} ({folder.iterations_done / planned:.0%})" if planned else "")
    eta = f" · longest ETA {_duration(folder.longest_eta)}" if folder.longest_eta is not None else ""
    lines = [Text(f"{len(folder.cells)} cell(s): {counts} · {progress}{eta}")]
    stopped = {cell.run_dir.parent for cell in folder.cells if cell.state in ("stopped", "interrupted")}
    for sweep_dir in (path for path in folder.sweeps if path in stopped):
        lines.append(Text(f"resume: resdepth sweep --resume {shlex.quote(str(sweep_dir))}", style="dim"))
    return Group(table, *lines)


def table_width(rows: list[dict[str, str]], columns: list[str]) -> int:
    """Characters a table of these text rows takes: each column as wide as its widest line, plus padding."""
    return sum(max([len(row[c]) for row in rows] + [len(line) for line in c.split("\n")]) + 2 for c in columns)


def status_note(cell: Any) -> str:
    if cell.state == "stopped":
        return "its process is gone (killed, or its node lost): resume the sweep"
    if cell.error:
        return cell.error
    if cell.state == "running" and cell.updated_ago is not None and cell.updated_ago > 120:
        return f"no update for {_duration(cell.updated_ago)}"
    return ""


@app.command()
def bench(
    depths: Annotated[str, typer.Option(help="Comma-separated depths (6n+2).")] = "20,56,110",
    kind: Annotated[str, typer.Option(help="plain or residual.")] = "residual",
    device: Device = None,
    iterations: Annotated[int, typer.Option(help="Timed training steps per window.")] = 30,
    warmup: Annotated[int, typer.Option(help="Untimed steps per path and depth first (compilation included).")] = 10,
    rounds: Annotated[int, typer.Option(help="Windows per path, resdepth and naive alternating; the median counts.")] = 3,
    batch_size: Annotated[int, typer.Option(help="Mini-batch size (images).")] = 128,
    num_workers: Annotated[int, typer.Option(help="DataLoader worker processes of the naive recipe.")] = 2,
    naive: Annotated[bool, typer.Option("--naive/--no-naive", help="Time the naive PIL + DataLoader recipe too.")] = True,
    threads: Threads = None, precision: Precision = None, channels_last: ChannelsLast = None,
    compile: Annotated[Optional[bool], typer.Option("--compile/--no-compile", help="torch.compile the training step. [default: as a paper-length `resdepth train` run: on for CPU, off on CUDA]")] = None,
    cuda_graph: CudaGraph = None,
    data_dir: Annotated[Optional[str], typer.Option(help="CIFAR-10 folder (torchvision's download) instead of synthetic images.")] = None,
    synthetic_train: Annotated[int, typer.Option(help="Synthetic training images (both paths draw batches from them).")] = 4096,
    json_out: Annotated[Optional[Path], typer.Option("--json", help="Also write the rows, every window included, to this JSON file.")] = None,
) -> None:
    """Images/s of resdepth's training step vs the common PIL + DataLoader recipe, FLOP/s and peak memory."""
    import json
    from dataclasses import asdict

    from .bench import BenchConfig, run_benchmark
    from .estimate import remember_bench

    if json_out is not None:
        check_output_file(json_out, "--json")  # before minutes of measuring, not after

    data = (DataConfig(dataset="cifar10", data_dir=data_dir) if data_dir else
            DataConfig(dataset="synthetic", synthetic_train=synthetic_train, synthetic_test=16))
    config = BenchConfig(depths=tuple(_csv(int)(depths) or ()), kind=kind, device=device or "auto", iterations=iterations,
                         warmup=warmup, rounds=rounds, batch_size=batch_size, num_workers=num_workers, naive=naive,
                         threads=threads, precision=precision or "auto", channels_last=channels_last, compile=compile,
                         cuda_graph=bool(cuda_graph), data=data)
    rows = run_benchmark(config, on_progress=lambda line: errors.print(f"[dim]{line}[/]", highlight=False))
    remember_bench(config, rows)  # `sweep --dry-run` estimates times from these speeds
    if json_out is not None:
        json_out.write_text(json.dumps({"config": asdict(config), "rows": [asdict(r) for r in rows]}, indent=2) + "\n")
    first = rows[0]
    view = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, title=f"{kind} training throughput on {first.device_name} ({first.device}, {first.threads} threads, "
                       f"{first.precision}, channels_last {'on' if first.channels_last else 'off'}, "
                       f"compile {'on' if first.compile else 'off'}{', CUDA graph' if first.cuda_graph else ''})",
                 caption=f"achieved FLOP/s = 3 x 2 x forward multiply-adds x resdepth img/s; MB: {first.memory_measure}"
                         + (f"; naive precision: {first.naive_precision}" if first.naive_precision else ""))
    # Two-line headers and no vertical rules keep the table whole in an 80-column terminal or log (rich cuts words).
    for column in ("depth", "resdepth\nimg/s", "naive\nimg/s", "ratio", "achieved\nGFLOP/s", "matmul\nGFLOP/s",
                   "% of\npeak", "resdepth\nMB", "naive\nMB"):
        view.add_column(column, justify="right", no_wrap=True)
    dash = lambda value, spec: "-" if value is None else format(value, spec)  # noqa: E731
    for row in rows:
        view.add_row(str(row.depth), f"{row.resdepth_images_per_second:,.0f}", dash(row.naive_images_per_second, ",.0f"),
                     dash(row.speedup, ".2f") + ("x" if row.speedup else ""), f"{row.achieved_gflops:,.0f}",
                     f"{row.matmul_gflops:,.0f}", f"{row.peak_fraction * 100:.0f}%",
                     f"{row.resdepth_peak_memory_mb:,.0f}", dash(row.naive_peak_memory_mb, ",.0f"))
    console.print(view)


def check_output_file(path: Path, option: str) -> None:
    if path.is_dir() or not path.parent.is_dir() or not os.access(path.parent, os.W_OK):
        raise UserError(f"{option} {path}: not a file in a writable folder; name a file such as bench.json")


def main() -> None:
    """Console entry point: user errors become one line and exit code 2, never a traceback."""
    try:
        app()  # click itself turns usage errors into a message and exit code 2
    except UserError as exc:
        errors.print(f"error: {exc}", highlight=False, soft_wrap=True, markup=False)
        sys.exit(2)


if __name__ == "__main__":
    main()
