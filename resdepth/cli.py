"""The `resdepth` command line: the only module that prints or exits.

Known user errors (`UserError`) become one line on stderr and exit code 2; a sweep's exit code says how its
cells ended (0 all done, 1 some failed, 3 some diverged, 4 some busy elsewhere, 130/143 interrupted).
"""

from __future__ import annotations

import inspect
import os
import signal
import sys
from dataclasses import fields, replace
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich import box
from rich.console import Console
from rich.table import Table

from .cluster import SlurmConfig
from .data import DataConfig, load_dataset
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
Out = Annotated[Optional[Path], typer.Option(help="Results folder; one sub-folder per run. [default: results/<name or dataset>]")]
Force = Annotated[bool, typer.Option(help="Start run folders whose config differs over (old folders are kept, renamed).")]
Init = Annotated[Optional[str], typer.Option(help="Start from these weights instead of He init: a run folder or checkpoint of the same kind, depth and classes, e.g. what `resdepth construct` writes. [default: He init]")]

TRAIN_OPTIONS = {f.name for f in fields(TrainConfig)}
DATA_OPTIONS = {f.name for f in fields(DataConfig)}


SHARED_OPTIONS = {  # name -> typed option alias; given to `train` and `sweep` by `with_training_options`
    "shortcut": Shortcut, "iterations": Iterations, "epochs": Epochs, "batch_size": BatchSize, "lr": Lr,
    "momentum": Momentum, "weight_decay": WeightDecay, "warmup": Warmup, "warmup_min_depth": WarmupMinDepth,
    "dataset": Dataset, "data_dir": DataDir, "train_size": TrainSize, "test_size": TestSize, "val_size": ValSize,
    "synthetic_train": SyntheticTrain, "synthetic_test": SyntheticTest, "augment": Augment, "device": Device,
    "threads": Threads, "precision": Precision, "channels_last": ChannelsLast, "compile": Compile,
    "cuda_graph": CudaGraph, "init": Init,
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
    check_inits(planned, config, with_classes=not dry_run)
    if dry_run:
        print_plan(config, planned)
        return 0
    ensure_writable_dir(config.out_dir())
    if any(item.device for item in planned):
        load_dataset(config.train.data)  # fail fast, before any cell starts: missing data is a user error
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
    if received:
        return 143 if received[0] == signal.SIGTERM else 130
    states = {o.state for o in outcomes.values()} | {p.action.removeprefix("skip-") for p in planned}
    return 1 if "failed" in states else 3 if "diverged" in states else 4 if "busy" in states else 0


def check_inits(planned: list[PlannedCell], config: SweepConfig, with_classes: bool) -> None:
    """--init weights that do not fit a cell starting afresh are refused before anything is written."""
    from .construct import check_init
    from .results import CHECKPOINT_FILE

    fresh = [item.cell.config for item in planned if item.cell.config.init and (
        item.action in ("new", "replace") or item.action in ("resume", "retry") and not (item.cell.run_dir / CHECKPOINT_FILE).exists())]
    for cell in fresh:
        check_init(cell.init, cell.kind, cell.depth, cell.shortcut)  # type: ignore[arg-type]
    if fresh and with_classes:
        classes = load_dataset(config.train.data).num_classes
        for cell in fresh:
            check_init(cell.init, cell.kind, cell.depth, cell.shortcut, classes)  # type: ignore[arg-type]


def print_plan(config: SweepConfig, planned: list[PlannedCell]) -> None:
    from .sweep import device_slots, threads_per_job

    slots = device_slots(config)
    if config.executor in ("ray", "slurm"):
        from .cluster import task_threads

        where = f"one {config.executor} task per cell, {task_threads(config)} thread(s) each"
    else:
        where = f"{len(slots)} job slot(s): {', '.join(slots)}, {config.train.threads or threads_per_job(slots)} thread(s) each"
    table = Table(title=f"dry run: {config.out_dir()} ({where})")
    for column in ("cell", "action", "device", "folder"):
        table.add_column(column)
    for item in planned:
        table.add_row(item.cell.name, item.action, item.device or "-", str(item.cell.run_dir))
    console.print(table)


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


def skip_note(action: str) -> str:
    return "skipped" if action == "skip-done" else "skipped: --retry-failed runs it again"


def _pct(value: Optional[float]) -> str:
    return "-" if value is None else f"{value:.2f}"


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
def analyze(
    results_dir: Annotated[Path, typer.Argument(help="Results folder; every run folder under it is read (recursively).")],
    split: Annotated[str, typer.Option(help="Images the nets see: test, train (un-augmented) or val (runs with --val-size).")] = "test",
    images: Annotated[Optional[int], typer.Option(help="A class-balanced subset of this many images of the split, the same for every run. [default: all]")] = None,
    out: Annotated[Optional[Path], typer.Option(help="Folder for the CSVs and figures. [default: RESULTS_DIR/analysis]")] = None,
    formats: Annotated[str, typer.Option("--format", help="Comma-separated figure formats: png, pdf, svg.")] = "png",
    std: Annotated[str, typer.Option(help="The std Figure 7 draws: std (over all elements of a response) or channel_std (mean over channels of the per-channel std). The CSV holds both.")] = "std",
    device: Device = None,
    batch_size: Annotated[int, typer.Option(help="Images per forward pass (the statistics do not depend on it).")] = 500,
) -> None:
    """Figure 7 (std of each 3x3 layer's response, eval mode) and per-layer gradient norms of trained runs."""
    from .analysis import STDS, analyze as analyze_runs, build_figures, write_analysis
    from .plots import parse_formats
    from .train import resolve_device

    chosen_formats = parse_formats(formats)
    if std not in STDS:
        raise UserError(f"unknown --std {std!r}: use std (all elements) or channel_std (mean of per-channel stds)")
    runs = read_runs(results_dir)
    where = resolve_device(device or "auto")
    count = "all images" if images is None else f"{images:,} images (class-balanced)"
    console.print(f"layer responses: {split} split, {count} per run, evaluation mode (BN running statistics), fp32, "
                  f"on {where}", markup=False, highlight=False, soft_wrap=True)
    analysis = analyze_runs(runs, split, images, where, batch_size)
    for note in analysis.notes:
        errors.print(f"warning: {note}", markup=False, highlight=False, soft_wrap=True)
    figures = build_figures(analysis, std)
    out_dir = out or results_dir / "analysis"
    ensure_writable_dir(out_dir)
    for path in write_analysis(analysis, figures, out_dir, chosen_formats):
        console.print(str(path), markup=False, highlight=False, soft_wrap=True)


@app.command()
def construct(
    run_dir: Annotated[Path, typer.Argument(help="A finished run folder, e.g. results/figure6/plain-20-s0.")],
    depth: Annotated[int, typer.Option(help="Depth of the constructed net: 6n+2, larger than the run's.")],
    out: Annotated[Path, typer.Option(help="Folder for the constructed net's folder <kind>-<depth>-from-<run folder>.")] = Path("results/constructed"),
    identity_bn: Annotated[str, typer.Option(help="Plain nets: the added BNs' running statistics: data (measured on the training images: near-identity in training mode too) or unit (mean 0, variance 1).")] = "data",
    device: Device = None,
    force: Annotated[bool, typer.Option(help="Overwrite an existing constructed net of the same name.")] = False,
) -> None:
    """The paper's constructed deeper solution: a trained run's layers copied, identity blocks added at the end of each stage."""
    from .construct import ConstructionMismatch, construct_from_run
    from .train import resolve_device

    try:
        result = construct_from_run(run_dir, depth, out, resolve_device(device or "auto"), identity_bn, force)
    except ConstructionMismatch as exc:
        errors.print(f"error: {exc}", markup=False, highlight=False, soft_wrap=True)
        raise typer.Exit(1) from None
    view = Table(title=f"{result.source} -> {result.target}: evaluation mode", box=box.SIMPLE_HEAD)
    for column in ("split", "images", f"{result.source} err %", f"{result.target} err %", "same predictions"):
        view.add_column(column, justify="left" if column == "split" else "right")
    for row in result.comparisons:
        view.add_row(row.split, f"{row.images:,}", f"{row.source_error:.2f}", f"{row.constructed_error:.2f}",
                     f"{row.images - row.disagreements:,}/{row.images:,}")
    console.print(view)
    console.print(str(result.out_dir), markup=False, highlight=False, soft_wrap=True)
    console.print(f"train from it: resdepth train {' '.join(result.train_args)} --out DIR", markup=False,
                  highlight=False, soft_wrap=True)


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

    if json_out is not None:
        check_output_file(json_out, "--json")  # before minutes of measuring, not after

    data = (DataConfig(dataset="cifar10", data_dir=data_dir) if data_dir else
            DataConfig(dataset="synthetic", synthetic_train=synthetic_train, synthetic_test=16))
    config = BenchConfig(depths=tuple(_csv(int)(depths) or ()), kind=kind, device=device or "auto", iterations=iterations,
                         warmup=warmup, rounds=rounds, batch_size=batch_size, num_workers=num_workers, naive=naive,
                         threads=threads, precision=precision or "auto", channels_last=channels_last, compile=compile,
                         cuda_graph=bool(cuda_graph), data=data)
    rows = run_benchmark(config, on_progress=lambda line: errors.print(f"[dim]{line}[/]", highlight=False))
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
