"""`resdepth train` and `resdepth sweep` (a training run is a sweep of one cell): the options that make the
configs, the plan (and the dry run's table and time estimate), the run under a live display, the summary and the
commands to run next.

A sweep's exit code says how its cells ended: 0 all done, 1 some failed, 3 some diverged, 4 some busy in another
sweep process, 130/143/129 interrupted (SIGINT/SIGTERM/SIGHUP)."""

from __future__ import annotations

import shlex
import signal
from dataclasses import replace
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from ..bench.estimate import cells_data, estimate_plan
from ..config import PROTOCOL, flag
from ..errors import UserError
from ..models.families import WIDTH, get_family, load_named_families
from ..results.groups import absolute_path
from ..results.runs import CHECKPOINT_FILE, RunStatus, check_writable_dir, ensure_writable_dir, warmup_end
from ..results.tables import describe_warmup_end
from ..sweep.cell import STOP_SIGNALS
from ..sweep.cluster import SlurmConfig
from ..sweep.grid import parse_grid_words
from ..sweep.runner import (
    RUNNABLE,
    SWEEP_FILE,
    WHAT,
    PlannedCell,
    SweepConfig,
    check_executor,
    count_actions,
    device_slots,
    execution_not_resumed,
    load_saved_sweep,
    load_sweep_file,
    make_executor,
    plan_sweep,
    run_sweep,
    settled_elsewhere,
    task_threads,
)
from ..train.construct import check_init
from ..train.data import DataConfig, check_data_present, expected_classes, load_dataset
from ..train.protocol import DEPTH_HELP, KIND_HELP, TrainConfig
from .console import console, duration, errors, pct, print_full_width, rate, thousands
from .options import SWEEP_OPTIONS, TRAINING_OPTIONS, given_values, with_options
from .progress import DataLoadDisplay, LiveDisplay

# the network options that are not config fields: the width multiplier of the built-in families, and grid axes
WIDTH_OPTION = Annotated[int | None, typer.Option("--width", help=escape(f"{WIDTH.help} [default: {WIDTH.default}]"),
                                                  rich_help_panel=PROTOCOL, show_default=False)]
GRID_OPTION = Annotated[list[str] | None, typer.Option(
    "--grid", help="Another axis of the grid, KEY=V1,V2 (repeat for more): a training or data field (lr, batch_size, "
                   "weight_decay, val_size, warmup, precision, shortcut, ...) or a network option of the kinds "
                   "(width); cell folders carry the values (residual-56-lr0.05-s0).", rich_help_panel=WHAT,
    show_default=False, metavar="KEY=V1,V2")]


def with_width(train: TrainConfig, width: int | None) -> TrainConfig:
    """--width K as the run's network option (checked against each family when its cells are made)."""
    return train if width is None else replace(train, options={**train.options, "width": width})


def with_grid(config: SweepConfig, words: list[str] | None) -> SweepConfig:
    """--grid KEY=V1,V2 options added to (or replacing, key by key) the sweep file's [grid]."""
    if not words:
        return config
    return replace(config, grid={**config.grid, **parse_grid_words(words, [get_family(k) for k in config.kinds])})


def apply_overrides(train: TrainConfig, options: dict[str, Any]) -> TrainConfig:
    """Command-line training and data values that were given replace those of the config (or sweep file)."""
    given = given_values(TRAINING_OPTIONS, TrainConfig, options)
    if "iterations" in given and "epochs" in given:
        raise UserError("give --iterations or --epochs, not both: the run's length is one of them")
    if "iterations" in given:
        given["epochs"] = None  # the command line's length replaces a sweep file's epochs too
    data = replace(train.data, **given_values(TRAINING_OPTIONS, DataConfig, options))
    if data.data_dir:  # recorded absolute: a resume, or a colleague, reads it from anywhere
        data = replace(data, data_dir=absolute_path(data.data_dir))
    return replace(train, **given, data=data)


@with_options(TRAINING_OPTIONS)
def train(
    depth: Annotated[int, typer.Option(help=DEPTH_HELP, rich_help_panel=WHAT)] = TrainConfig.depth,
    kind: Annotated[str, typer.Option(help=KIND_HELP, rich_help_panel=WHAT)] = TrainConfig.kind,
    seed: Annotated[int, typer.Option(help="Seed of init, shuffling and augmentation.",
                                      rich_help_panel=WHAT)] = TrainConfig.seed,
    out: Annotated[Path | None, typer.Option(help="Results folder; the run goes to its sub-folder "
                                                     "<family>-<depth>-s<seed>. \\[default: "
                                                     "results/<dataset or image folder>]",
                                                rich_help_panel=WHAT)] = None,
    force: Annotated[bool, typer.Option("--force",
                                        help="Start a run folder whose config differs over (the old folder is "
                                             "kept, renamed).", rich_help_panel=WHAT)] = False,
    width: WIDTH_OPTION = None,
    **options: Any,
) -> None:
    """Train one network with the paper's protocol (resumes if its folder holds a checkpoint)."""
    base = with_width(apply_overrides(TrainConfig(), options), width)
    sweep = SweepConfig(depths=[depth], kinds=[kind], seeds=[seed], out=str(out) if out else None, train=base,
                        force=force)
    raise typer.Exit(execute(sweep, dry_run=False))


@with_options(SWEEP_OPTIONS, TRAINING_OPTIONS)
def sweep(
    sweep_file: Annotated[Path | None, typer.Argument(help="TOML sweep file (see sweeps/); options given here "
                                                              "override it.")] = None,
    resume: Annotated[Path | None, typer.Option(help="Resume the sweep saved in this results folder: its grid and "
                                                     "protocol, and its runs' own execution options "
                                                     "(--checkpoint-every, --compile, ...) where the command line "
                                                     "or a sweep file given with it does not say; --jobs, --executor "
                                                     "and the like only from them.",
                                                   rich_help_panel=WHAT)] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="List the cells, their folders and devices; train nothing.",
                                          rich_help_panel=WHAT)] = False,
    grid: GRID_OPTION = None,
    width: WIDTH_OPTION = None,
    **options: Any,
) -> None:
    """Train every cell of depths x kinds x seeds (x the --grid axes); finished cells are skipped, unfinished ones
    resumed."""
    given = given_values(SWEEP_OPTIONS, SweepConfig, options)
    if resume is not None:  # the grid and protocol from its sweep.json; how to execute only from the user
        load_named_families(given.get("kinds", []))  # a family by path is imported only when the user names it
        config = load_saved_sweep(resume, load_sweep_file(sweep_file) if sweep_file else None)
    else:
        config = load_sweep_file(sweep_file) if sweep_file else SweepConfig()
    config = replace(config, **given, slurm=replace(config.slurm, **given_values(SWEEP_OPTIONS, SlurmConfig, options)),
                     train=with_width(apply_overrides(config.train, options), width))
    if resume is not None:
        not_resumed = execution_not_resumed(resume, config)
        if not_resumed:
            errors.print(f"note: --resume never takes how to execute from the folder's {SWEEP_FILE}; not used: "
                         f"{', '.join(not_resumed)} (give them on the command line or in a sweep file to use them)",
                         markup=False, highlight=False, soft_wrap=True)
    raise typer.Exit(execute(with_grid(config, grid), dry_run))


def execute(config: SweepConfig, dry_run: bool) -> int:
    """Plan, show the plan, run with a live display, print the summary; returns the exit code. A command refused
    while planning or for missing data writes nothing, not even the results folder."""
    planned = plan_sweep(config)
    runs_any = any(item.device for item in planned)
    if runs_any:  # a cluster that cannot take the cells: refused before anything is written
        check_executor(config)
    if dry_run:  # every check the run makes before training, without loading the data or writing anything
        check_inits(planned, expected_classes(config.train.data))
        if runs_any:
            check_writable_dir(config.out_dir())
        estimate = estimate_plan(config, planned, on_progress=lambda line: errors.print(f"[dim]{line}[/]",
                                                                                        highlight=False))
        print_full_width(render_plan(config, planned, estimate))  # piped: folders and fused jobs are never cut to "…"
        print_estimate(estimate)
        return 0
    if runs_any:
        # a grid over data fields: each cell's split sizes checked, as the dry run does, before any cell starts
        cells_data([item for item in planned if item.device], config.train.data, check_data_present(config.train.data))
        with DataLoadDisplay() as show:  # fail fast, before any cell starts: missing data is a user error
            classes = load_dataset(config.train.data, on_progress=show).num_classes
        check_inits(planned, classes)
        ensure_writable_dir(config.out_dir())
    counts = count_actions(planned)
    console.print(f"[bold]{config.out_dir()}[/]: {len(planned)} cell(s): "
                  + ", ".join(f"{n} {a}" for a, n in counts.items()))
    executor = make_executor(config)
    received: list[int] = []
    previous = {sig: signal.signal(sig, lambda s, _f: received.append(s)) for sig in STOP_SIGNALS}
    display = LiveDisplay(len(planned))
    try:
        with display:
            outcomes = run_sweep(config, executor, planned, on_progress=display.update,
                                 stop_requested=lambda: bool(received) or display.closed is not None)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    states = final_states(planned, outcomes)
    print_full_width(render_summary(planned, outcomes, states))  # a log keeps each note on one line
    print_next_steps(config, planned, outcomes, states, interrupted=bool(received) or display.closed is not None)
    if display.closed is not None:
        raise display.closed  # its exit code and line, as for any command (app.Commands)
    if received:
        return 128 + received[0]  # as a shell reports a process the signal ended: 130 Ctrl-C, 143 SIGTERM, 129 SIGHUP
    ended = set(states.values())
    return 1 if "failed" in ended else 3 if "diverged" in ended else 4 if "busy" in ended else 0


def final_states(planned: list[PlannedCell], outcomes: dict[str, Any]) -> dict[str, str]:
    """Each cell's state for the summary and the exit code. A cell that was busy in another sweep process and has
    ended there since counts as that process left it (a cell another sweep finished is done, not busy)."""
    states = {}
    for item in planned:
        outcome = outcomes.get(item.cell.name)
        state = outcome.state if outcome else item.action.removeprefix("skip-")
        if state == "busy":
            state = settled_elsewhere(item) or "busy"
        states[item.cell.name] = state
    return states


def check_inits(planned: list[PlannedCell], classes: int | None) -> None:
    """--init weights that do not fit a cell starting afresh (its network; its dataset's classes, when known) are
    refused before anything is written."""
    fresh = [item.cell.config for item in planned if item.cell.config.init and (
        item.action in ("new", "replace") or
        (item.action in ("resume", "retry") and not (item.cell.run_dir / CHECKPOINT_FILE).exists()))]
    for cell in fresh:
        check_init(cell.init, cell.kind, cell.depth, cell.shortcut, classes)




def render_plan(config: SweepConfig, planned: list[PlannedCell], estimate: Any) -> Table:
    """The dry run's table: each cell's action, device, iterations left and estimated time, and its folder."""
    slots = device_slots(config)
    fused = any(item.group for item in planned)
    if config.executor in ("ray", "slurm"):
        where = f"one {config.executor} task per {'job' if fused else 'cell'}, {task_threads(config)} thread(s) each"
    else:
        where = f"{len(slots)} job slot(s): {', '.join(slots)}, {task_threads(config)} thread(s) each"
    if fused:
        where += f"; --fuse {config.fuse}: cells that differ only in their seed train as one job"
    table = Table(title=Text(f"dry run: {config.out_dir()} ({where})"))
    numbers = ("iterations", "img/s", "est. time")
    for column in ("cell", "action", "device", *(["fused job"] if fused else []), *numbers, "folder"):
        table.add_column(column, justify="right" if column in numbers else "left")
    for item in planned:
        guess = estimate.cells[item.cell.name]
        table.add_row(*map(Text, (item.cell.name, item.action, item.device or "-",  # a folder's text, never markup
                                  *([item.group or "-"] if fused else []), thousands(guess.iterations),
                                  rate(guess.speed and guess.speed.images_per_second), duration(guess.seconds),
                                  str(item.cell.run_dir))))
    return table


def print_estimate(estimate: Any) -> None:
    """The dry run's total time, what it rests on, and whether the data is here."""
    if estimate.total_seconds is not None:
        console.print(f"[bold]estimated time: {duration(estimate.total_seconds)}[/] on this machine", highlight=False)
    for line in estimate.basis:
        console.print(f"[dim]  {line}[/]", highlight=False)
    mark = "[green]ready[/]" if estimate.data.ready else "[bold yellow]not ready[/]"
    console.print(f"data {mark}: {escape(estimate.data.summary)}", highlight=False, soft_wrap=True)




def render_summary(planned: list[PlannedCell], outcomes: dict[str, Any], states: dict[str, str]) -> Table:
    """One row per cell: its state, the epochs it finished, its last finished epoch's errors, and a note."""
    table = Table(title="sweep summary")
    for column in ("cell", "state", "epochs", "train err %", "test err %", "note"):
        table.add_column(column, justify="right" if "err" in column or column == "epochs" else "left")
    for item in planned:
        status = RunStatus.read_or_none(item.cell.run_dir)
        epochs = f"{status.epoch}/{status.epochs}" if status and status.epochs else "-"  # not started: no 0/0
        table.add_row(*map(Text, (item.cell.name, states[item.cell.name], epochs,  # notes quote folders: not markup
                                  pct(status.train_error if status else None),
                                  pct(status.test_error if status else None),
                                  summary_note(item, outcomes.get(item.cell.name), status, states[item.cell.name]))))
    return table


def summary_note(item: PlannedCell, outcome: Any, status: RunStatus | None, state: str) -> str:
    notes = []
    if outcome is not None and outcome.error:
        notes.append(outcome.error)
    elif item.action == "busy":
        notes.append(item.note if state == "busy" else f"finished by another sweep process: {state}")
    elif item.action.startswith("skip"):
        notes.append("skipped" if item.action == "skip-done" else "skipped: --retry-failed runs it again")
    if status and state == "interrupted" and status.iteration < status.iterations:
        notes.append(f"stopped at iteration {status.iteration}/{status.iterations} (in epoch {status.epoch + 1})")
    if status and status.warmup_end_iteration is not None:
        iteration, reason = warmup_end(status)
        notes.append(f"warm-up ended: {describe_warmup_end(reason, iteration)}")
    elif status and state == "done" and item.cell.config.uses_warmup():  # a run shorter than its warm-up (preact: 400)
        config = item.cell.config
        notes.append(f"warm-up still on at the end: never at lr {config.lr:g}, at most {config.warmup_lr:g} (the "
                     "warm-up's)")
    return "; ".join(notes)


def resume_command(config: SweepConfig, *extra: str) -> str:
    """`resdepth sweep --resume DIR` with the execution options this sweep ran with, which --resume takes only from
    the command line (a sweep file's [slurm] table is named, not spelled out)."""
    default = SweepConfig()
    args = ["resdepth", "sweep", "--resume", str(config.out_dir())]
    if any(":" in kind for kind in config.kinds):  # a family by path is imported only when the user names it
        args += ["--kind", ",".join(config.kinds)]
    for name in ("executor", "ray_address", "jobs", "gpus", "jobs_per_gpu", "gpus_per_job"):
        value = getattr(config, name)
        if value != getattr(default, name):
            shown = ",".join(map(str, value)) if isinstance(value, list) else f"{value:g}" \
                if isinstance(value, float) else str(value)
            args += [flag(SweepConfig, name), shown]
    command = " ".join(map(shlex.quote, [*args, *extra]))
    return command + (" with your sweep file's [slurm] table (SWEEP_FILE before --resume)"
                      if config.slurm != default.slurm else "")


def print_next_steps(config: SweepConfig, planned: list[PlannedCell], outcomes: dict[str, Any],
                     final: dict[str, str], interrupted: bool) -> None:
    """Where the results are and what to run next: resume what is left, then the table, figures and report."""
    out = config.out_dir()
    states = set(final.values())
    left = interrupted or "interrupted" in states or any(
        p.action in RUNNABLE and p.cell.name not in outcomes for p in planned)
    folder = shlex.quote(str(out))
    steps = [("results", str(out))]
    if left:
        steps.append(("resume", resume_command(config)))
    if states & {"failed", "diverged"}:
        steps.append(("run failed ones again", resume_command(config, "--retry-failed")))
    if "busy" in states:
        steps.append(("busy ones", f"resdepth status {folder} --watch; once they end, the same command again"))
    if any((status := RunStatus.read_or_none(p.cell.run_dir)) and status.epoch for p in planned):
        steps += [("table", f"resdepth table {folder}"), ("figures", f"resdepth plot {folder}"),
                  ("report", f"resdepth report {folder}")]
    width = max(len(label) for label, _ in steps) + 1
    for label, text in steps:
        console.print(f"{label + ':':<{width}} {text}", markup=False, highlight=False, soft_wrap=True)
