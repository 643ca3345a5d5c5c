"""The `resdepth` command line: the only module that prints or exits.

Known user errors (`UserError`) become one line on stderr and exit code 2; a sweep's exit code says how its
cells ended (0 all done, 1 some failed, 3 some diverged, 4 some busy elsewhere, 130/143 interrupted).
The training, data, sweep and Slurm options are generated from their config dataclasses' fields (help, flag and
panel live there, see config.py); only options that belong to one command are declared here.
"""

from __future__ import annotations

import inspect
import os
import shlex
import signal
import time
import types
import typing
from collections.abc import Callable, Iterable
from dataclasses import Field, replace
from pathlib import Path
from typing import Annotated, Any

import typer
from rich import box
from rich.console import Console
from rich.markup import escape
from rich.segment import Segment
from rich.table import Table
from rich.text import Text

from .. import __version__
from ..bench.estimate import estimate_plan, remember_bench
from ..bench.throughput import BenchConfig, BenchRow, run_benchmark
from ..config import DATA, EXECUTION, PROTOCOL, cli_fields, config_args, flag, flag_name, help_text
from ..errors import UserError
from ..models.families import WIDTH, get_family, load_named_families
from ..results.runs import (
    CHECKPOINT_FILE,
    RunStatus,
    atomic_write_bytes,
    check_writable_dir,
    ensure_writable_dir,
    load_runs,
    own_output_dir,
    printable,
    warmup_end,
    write_json,
)
from ..results.tables import describe_warmup_end
from ..sweep.cluster import CLUSTER, SlurmConfig
from ..sweep.grid import parse_grid_words
from ..sweep.runner import (
    RUNNABLE,
    SWEEP_FILE,
    WHAT,
    PlannedCell,
    SweepConfig,
    SweepProgress,
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
from ..train.construct import ConstructionMismatch, check_init, construct_from_run
from ..train.data import DataConfig, LoadProgress, expected_classes, load_dataset
from ..train.devices import resolve_device
from ..train.trainer import DEPTH_HELP, KIND_HELP, TrainConfig


class SafeConsole(Console):
    """A Console that strips control characters from all text it is given, whatever its source (a folder name, a
    dataset name, status.json's error), while its own styling and cursor controls still reach the terminal."""

    def _render_buffer(self, buffer: Iterable[Segment]) -> str:
        # Rich renders text segments and its own control segments apart: only the text is cleaned.
        return super()._render_buffer(segment if segment.control else Segment(printable(segment.text), segment.style)
                                      for segment in buffer)


# no :emoji: codes: a family path such as mylab.nets:family:... must print as written
console = SafeConsole(emoji=False)
errors = SafeConsole(stderr=True, emoji=False)


class Commands(typer.core.TyperGroup):
    """resdepth's commands: a UserError raised anywhere in one becomes one line on stderr and exit code 2."""

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except UserError as exc:
            errors.print(f"error: {exc}", highlight=False, soft_wrap=True, markup=False)
            raise typer.Exit(2) from None


def hide_flag_types() -> None:
    """A flag takes no value: its help row shows no type. (Typer 0.29 shows `<bool>` after every flag, --help
    included; TyperOption.display_type_rich is the one place its rich help asks an option for that column.)"""
    show_type = typer.core.TyperOption.display_type_rich
    if getattr(show_type, "hides_flags", False):
        return

    def display_type_rich(self: Any, ctx: Any) -> str | None:
        return None if self.is_flag and not self.count else show_type(self, ctx)

    display_type_rich.hides_flags = True  # type: ignore[attr-defined]
    typer.core.TyperOption.display_type_rich = display_type_rich  # type: ignore[method-assign]


hide_flag_types()
app = typer.Typer(cls=Commands, add_completion=False, no_args_is_help=True, rich_markup_mode="rich",
                  help="CIFAR networks by depth: plain vs residual (He et al. 2016, section 4.2), pre-activation "
                       "ResNets and your own network families.")


# ---------------------------------------------------------------------------------------------- options from configs
def parse_list(text: str, kind: type, flag: str) -> list[Any]:
    """'20,32,44' -> [20, 32, 44]; an empty item ('20,,56') or a value of another type is refused."""
    parts = [part.strip() for part in text.split(",")]
    if not all(parts):
        raise UserError(f"{flag} {text!r} has an empty item: list the values with one comma between each, "
                        f"e.g. {','.join(p for p in parts if p) or '20,56'}")
    try:
        return [kind(part) for part in parts]
    except ValueError:
        raise UserError(f"{flag} expects a comma-separated list of {kind.__name__}s, got {text!r}") from None


class ConfigOption:
    """One command-line option generated from a config field: its Typer parameter and how its value is read."""

    def __init__(self, owner: type, field: Field, hint: Any, default: Any):
        self.owner, self.field = owner, field
        self.flag = flag_name(field).split("/")[0]
        self.param = self.flag.removeprefix("--").replace("-", "_")
        union = typing.get_origin(hint) in (typing.Union, types.UnionType)
        options = typing.get_args(hint) if union else (hint,)
        base = next(o for o in options if o is not type(None))
        self.item = typing.get_args(base)[0] if typing.get_origin(base) is list else None
        self.type = str if self.item else base  # a list is given as one comma-separated string
        declarations = [flag_name(field)] if base is not bool or "/" in flag_name(field) else \
            [f"{self.flag}/--no-{self.flag.removeprefix('--')}"]
        if self.param == "kind":
            declarations.append("--kinds")  # the config field is `kinds`; both spellings are accepted
        self.annotation = Annotated[self.type | None, typer.Option(
            *declarations, help=escape(help_text(field, default)), rich_help_panel=field.metadata["panel"],
            show_default=False)]

    def value(self, given: Any) -> Any:
        return given if given is None or self.item is None else parse_list(given, self.item, self.flag)


def config_options(cls: type) -> list[ConfigOption]:
    hints, defaults = typing.get_type_hints(cls), cls()
    return [ConfigOption(cls, f, hints[f.name], getattr(defaults, f.name)) for f in cli_fields(cls)]


TRAINING_OPTIONS = config_options(TrainConfig) + config_options(DataConfig)
SWEEP_OPTIONS = config_options(SweepConfig) + config_options(SlurmConfig)
# a few shared options that other commands (bench, analyze, construct) take as they are
DEVICE = next(o for o in TRAINING_OPTIONS if o.param == "device").annotation
THREADS = next(o for o in TRAINING_OPTIONS if o.param == "threads").annotation
PRECISION = next(o for o in TRAINING_OPTIONS if o.param == "precision").annotation
CHANNELS_LAST = next(o for o in TRAINING_OPTIONS if o.param == "channels_last").annotation
CUDA_GRAPH = next(o for o in TRAINING_OPTIONS if o.param == "cuda_graph").annotation


def with_options(*groups: list[ConfigOption]) -> Callable[[Any], Any]:
    """Give a command the generated options: they replace its **options in the signature Typer reads."""
    def decorate(command: Any) -> Any:
        signature = inspect.signature(command, eval_str=True)  # real annotations: Typer reads them from here
        own = [p for p in signature.parameters.values() if p.kind is not inspect.Parameter.VAR_KEYWORD]
        generated = [inspect.Parameter(o.param, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=o.annotation)
                     for o in sorted((o for group in groups for o in group), key=panel_order)]
        command.__signature__ = signature.replace(parameters=own + generated)
        return command
    return decorate


PANELS = (WHAT, PROTOCOL, DATA, EXECUTION, CLUSTER)  # the order of the help panels


def panel_order(option: ConfigOption) -> int:
    return PANELS.index(option.field.metadata["panel"])


def given_values(group: list[ConfigOption], owner: type, options: dict[str, Any]) -> dict[str, Any]:
    """The field values of `owner` that the command line gave (None means not given)."""
    values = {o.field.name: o.value(options.get(o.param)) for o in group if o.owner is owner}
    return {name: value for name, value in values.items() if value is not None}


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
    return replace(train, **given, data=data)


def version_callback(value: bool) -> None:
    if value:
        import platform

        import torch

        console.print(f"resdepth {__version__} (torch {torch.__version__}, Python {platform.python_version()})",
                      markup=False, highlight=False)
        raise typer.Exit()


@app.callback()
def main_options(
    version: Annotated[bool | None, typer.Option("--version", callback=version_callback, is_eager=True,
                                                    help="Show the version and exit.")] = None,
) -> None:
    """CIFAR networks by depth: plain vs residual (He et al. 2016, section 4.2), pre-activation ResNets and your own
    network families."""


# ---------------------------------------------------------------------------------------------- models
@app.command()
def models(
    pattern: Annotated[str, typer.Argument(help="Shell-style filter of family and network names, e.g. 'preact*' or "
                                                "'resnet1*', or a family path module.path:function.")] = "*",
    num_classes: Annotated[int, typer.Option(help="Classes of the FC layer (10: CIFAR-10, 100: CIFAR-100).")] = 10,
    depths: Annotated[str | None, typer.Option(help="Build each matching family at these depths (comma-separated) "
                                                    "instead of listing its named networks.")] = None,
    widths: Annotated[str | None, typer.Option(help="Build each matching family at these width multipliers "
                                                    "(comma-separated, e.g. 1,2,4) x --depths (or its paper's depths "
                                                    "up to 110): parameters and MFLOPs by depth x width.")] = None,
) -> None:
    """The network families (depth rule, shortcuts, plain twin, paper numbers, protocol, source) and networks
    (name, family, depth, parameters, forward multiply-adds)."""
    from ..models import check_classes
    from ..models.families import describe_family, list_families

    check_classes(num_classes)
    wanted = parse_list(depths, int, "--depths") if depths else None
    wide = parse_list(widths, int, "--widths") if widths else None
    found = list_families(pattern)
    warn(f for f in found if isinstance(f, str))
    families = [f for f in found if not isinstance(f, str)]
    rows, skipped = network_rows(pattern, families, wanted, num_classes, wide)
    if not families and not rows:
        raise UserError(f"no network or family matches {pattern!r}: try 'resnet*', 'preact*' or leave the pattern "
                        "out for all")
    if families:
        described = [describe_family(f) for f in families]
        print_full_width(render_families(described))
        for row in described:  # one line each: a pipe gets them whole
            console.print(f"{row['family']}: {escape(row['summary'])}\n  protocol: {escape(row['protocol'])}\n"
                          f"  source: {escape(row['source'])}", highlight=False, soft_wrap=True)
    if rows:
        print_full_width(render_networks(rows, num_classes))
    for line in skipped:
        console.print(f"[dim]{escape(line)}[/]", highlight=False)


def network_rows(pattern: str, families: list[Any], depths: list[int] | None, num_classes: int,
                 widths: list[int] | None = None) -> tuple[list[dict[str, object]], list[str]]:
    """The named networks matching the pattern, or each family at --depths (user families without named networks:
    at example depths) and --widths; and a line for each depth a family's rule does not allow (or family without
    a width option)."""
    from ..models import count_network, describe_models

    rows = describe_models(pattern, num_classes) if depths is None and widths is None else []
    built = families if depths is not None or widths is not None else [f for f in families if not f.builtin]
    skipped = []
    for family in built:
        if widths and not family.net_option("width"):
            skipped.append(f"{family.name}: takes no width option")
            continue
        for depth in depths or widths_depths(family, widths):
            if not family.depths.allows(depth):
                skipped.append(f"{family.name}: no {depth}-layer net (depths {family.depths})")
                continue
            for width in widths or [None]:
                params, multiply_adds = count_network(family.name, depth, num_classes,
                                                      net_options={"width": width} if width else None)
                rows.append({"name": f"{family.name}-{depth}" + (f"-w{width}" if width else ""), "kind": family.name,
                             "depth": depth, "width": width, "params": params, "mflops": multiply_adds / 1e6})
    return rows, skipped


def widths_depths(family: Any, widths: list[int] | None) -> list[int]:
    """The depths a family is built at without --depths: its example depths; with --widths, those up to 110 (a
    1202-layer net at width 4 has 300M parameters), else its shallowest."""
    from ..models.families import example_depths

    examples = example_depths(family)
    return examples if not widths else [d for d in examples if d <= 110] or examples[:1]


def render_families(rows: list[dict[str, str]]) -> Table:
    """Families as a table; what each is, its protocol (where its paper differs from §4.2: `--warmup auto` follows
    it) and its source follow it as lines."""
    table = Table(title="network families", box=box.SIMPLE_HEAD)
    columns = ("family", "depths", "shortcuts", "options", "plain twin", "paper numbers")
    for column in columns:
        table.add_column(column, no_wrap=True)
    for row in rows:
        table.add_row(*(row[c] for c in columns))
    return table


def render_networks(rows: list[dict[str, object]], num_classes: int) -> Table:
    table = Table(title=f"resdepth networks ({num_classes} classes)")
    wide = any(row.get("width") for row in rows)  # --widths: a column of width multipliers
    for column in ("name", "family", "depth", *(["width"] if wide else []), "params", "MFLOPs (mult-adds)"):
        table.add_column(column, justify="right" if column not in ("name", "family") else "left")
    for row in rows:
        width = [str(row.get("width") or 1)] if wide else []
        table.add_row(str(row["name"]), str(row["kind"]), str(row["depth"]), *width, f"{row['params']:,}",
                      f"{row['mflops']:.1f}")
    return table


# ---------------------------------------------------------------------------------------------- train, sweep
@app.command()
@with_options(TRAINING_OPTIONS)
def train(
    depth: Annotated[int, typer.Option(help=DEPTH_HELP, rich_help_panel=WHAT)] = TrainConfig.depth,
    kind: Annotated[str, typer.Option(help=KIND_HELP, rich_help_panel=WHAT)] = TrainConfig.kind,
    seed: Annotated[int, typer.Option(help="Seed of init, shuffling and augmentation.",
                                      rich_help_panel=WHAT)] = TrainConfig.seed,
    out: Annotated[Path | None, typer.Option(help="Results folder; the run goes to its sub-folder "
                                                     "<family>-<depth>-s<seed>. \\[default: results/<dataset>]",
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


@app.command()
@with_options(SWEEP_OPTIONS, TRAINING_OPTIONS)
def sweep(
    sweep_file: Annotated[Path | None, typer.Argument(help="TOML sweep file (see sweeps/); options given here "
                                                              "override it.")] = None,
    resume: Annotated[Path | None, typer.Option(help="Resume the sweep saved in this results folder: its grid and "
                                                     "protocol; how to execute comes from the command line or a "
                                                     "sweep file given with it.",
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
    if dry_run:  # every check the run makes before training, without loading the data or writing anything
        check_inits(planned, expected_classes(config.train.data))
        if any(item.device for item in planned):
            check_writable_dir(config.out_dir())
        estimate = estimate_plan(config, planned, on_progress=lambda line: errors.print(f"[dim]{line}[/]",
                                                                                        highlight=False))
        print_full_width(render_plan(config, planned, estimate))  # piped: folders and fused jobs are never cut to "…"
        print_estimate(estimate)
        return 0
    if any(item.device for item in planned):
        with DataLoadDisplay() as show:  # fail fast, before any cell starts: missing data is a user error
            classes = load_dataset(config.train.data, on_progress=show).num_classes
        check_inits(planned, classes)
        ensure_writable_dir(config.out_dir())
    counts = count_actions(planned)
    console.print(f"[bold]{config.out_dir()}[/]: {len(planned)} cell(s): "
                  + ", ".join(f"{n} {a}" for a, n in counts.items()))
    executor = make_executor(config)
    received: list[int] = []
    previous = {sig: signal.signal(sig, lambda s, _f: received.append(s)) for sig in (signal.SIGINT, signal.SIGTERM)}
    display = LiveDisplay(len(planned))
    try:
        with display:
            outcomes = run_sweep(config, executor, planned, on_progress=display.update,
                                 stop_requested=lambda: bool(received))
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    states = final_states(planned, outcomes)
    console.print(render_summary(planned, outcomes, states))
    print_next_steps(config, planned, outcomes, states, interrupted=bool(received))
    if received:
        return 143 if received[0] == signal.SIGTERM else 130
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
    table = Table(title=f"dry run: {config.out_dir()} ({where})")
    numbers = ("iterations", "img/s", "est. time")
    for column in ("cell", "action", "device", *(["fused job"] if fused else []), *numbers, "folder"):
        table.add_column(column, justify="right" if column in numbers else "left")
    for item in planned:
        guess = estimate.cells[item.cell.name]
        table.add_row(item.cell.name, item.action, item.device or "-", *([item.group or "-"] if fused else []),
                      _count(guess.iterations), _rate(guess.speed and guess.speed.images_per_second),
                      _duration(guess.seconds),
                      str(item.cell.run_dir))
    return table


def print_estimate(estimate: Any) -> None:
    """The dry run's total time, what it rests on, and whether the data is here."""
    if estimate.total_seconds is not None:
        console.print(f"[bold]estimated time: {_duration(estimate.total_seconds)}[/] on this machine", highlight=False)
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
        table.add_row(item.cell.name, states[item.cell.name], f"{status.epoch}/{status.epochs}" if status else "-",
                      _pct(status.train_error if status else None), _pct(status.test_error if status else None),
                      summary_note(item, outcomes.get(item.cell.name), status, states[item.cell.name]))
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
        notes.append(f"warm-up still on at the end: lr {item.cell.config.warmup_lr:g} throughout")
    return "; ".join(notes)


def resume_command(config: SweepConfig, *extra: str) -> str:
    """`resdepth sweep --resume DIR` with the execution options this sweep ran with, which --resume takes only from
    the command line (a sweep file's [slurm] table is named, not spelled out)."""
    default = SweepConfig()
    args = ["resdepth", "sweep", "--resume", str(config.out_dir())]
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


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _rate(images_per_second: float | None) -> str:
    if images_per_second is None:
        return "-"
    return f"{images_per_second:,.0f}" if images_per_second >= 10 else f"{images_per_second:.1f}"


def _count(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}"


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}" + ("x" if value else "")


def _duration(seconds: float | None) -> str:
    """h:mm:ss, with days in front past 24 hours."""
    if seconds is None:
        return "-"
    days, rest = divmod(round(seconds), 86400)
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
        self.logged: dict[str, int] = {}  # the last epoch a line was printed for, by cell
        self.ended: set[str] = set()  # the cells whose end was printed

    def __enter__(self) -> LiveDisplay:
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
            train = status.live_train_error if status.live_train_error is not None else status.train_error
            self.progress.update(self.tasks[name], total=status.iterations or None, completed=status.iteration,
                                 info=f"{status.device} epoch {min(status.epoch + 1, status.epochs)}/{status.epochs} "
                                      f"train {_pct(train)}% test {_pct(status.test_error)}% "
                                      f"{_rate(status.images_per_second)} img/s")
        for name, outcome in snapshot.outcomes.items():
            if name in self.tasks:
                self.progress.update(self.tasks.pop(name), description=f"{name} {outcome.state}")

    def log_lines(self, snapshot: SweepProgress) -> None:
        """A line when a run resumes from a checkpoint, one per epoch it finishes, and one when it ends, with its
        last epoch's numbers. Lines are keyed on the epoch, not the state: a status.json read between the run's
        last epoch and its process's exit says done too, and one read before a resumed run rewrote it is stale."""
        for name, status in snapshot.running.items():
            if status.state != "running" or name in self.ended:
                continue  # not started yet (still the last attempt's status.json), or already said
            if name not in self.logged and status.epoch and status.iteration < status.iterations:
                console.print(f"{name}: resumed at iteration {status.iteration}/{status.iterations}, after epoch "
                              f"{status.epoch}/{status.epochs} (train {_pct(status.train_error)}% test "
                              f"{_pct(status.test_error)}%)", highlight=False, soft_wrap=True)
            elif status.epoch > self.logged.get(name, 0):
                console.print(f"{name}: {epoch_line(status)}", highlight=False, soft_wrap=True)
            self.logged[name] = max(status.epoch, self.logged.get(name, 0))
        for item in snapshot.planned:
            outcome = snapshot.outcomes.get(item.cell.name)
            if outcome is not None and item.cell.name not in self.ended:
                self.ended.add(item.cell.name)
                status = RunStatus.read(item.cell.run_dir)
                numbers = f": {epoch_line(status)}" if status and status.epoch else ""
                console.print(f"{item.cell.name}: {outcome.state}{numbers}" +
                              (f" ({outcome.error})" if outcome.error else ""), highlight=False, soft_wrap=True)


def epoch_line(status: RunStatus) -> str:
    """'epoch 5/5 iteration 55/55 train 12.50% test 20.31% 1,234 img/s' from a run's status."""
    return (f"epoch {status.epoch}/{status.epochs} iteration {status.iteration}/{status.iterations} train "
            f"{_pct(status.train_error)}% test {_pct(status.test_error)}% {_rate(status.images_per_second)} img/s")


class DataLoadDisplay:
    """While an image folder is decoded (once: later loads read the cache it names), a progress bar on a
    terminal and a line at the start and end elsewhere; the loader's notices as one line each."""

    def __init__(self) -> None:
        self.progress: Any = None
        self.task: Any = None
        self.started = 0.0

    def __enter__(self) -> DataLoadDisplay:
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


# ---------------------------------------------------------------------------------------------- plot, table
def read_runs(results_dir: Path) -> list[Any]:
    """The readable runs under results_dir; each skipped run folder gets one warning line on stderr."""
    runs, warnings = load_runs(results_dir)
    warn(warnings)
    return runs


def warn(lines: Any) -> None:
    """One 'warning: ...' line on stderr per item, printed as it is (file names are not rich markup)."""
    for line in lines:
        errors.print(f"warning: {line}", markup=False, highlight=False, soft_wrap=True)


@app.command()
def plot(
    results_dir: Annotated[Path, typer.Argument(help="Results folder; every run folder under it is read "
                                                     "(recursively).")],
    out: Annotated[Path | None, typer.Option(help="Folder for the figures. \\[default: RESULTS_DIR/plots]")] = None,
    x: Annotated[str, typer.Option(help="x axis: iterations (in 1e4, as the paper) or epochs.")] = "iterations",
    formats: Annotated[str, typer.Option("--format", help="Comma-separated file formats: png, pdf, svg.")] = "png",
    paper: Annotated[bool, typer.Option("--paper", help="Mark each family's paper's test errors on Figure 6 (Table 6 "
                                                        "for residual nets; a tick at the end of each curve), for "
                                                        "runs that follow that paper's protocol.")] = False,
) -> None:
    """Figure 1 (train | test error per kind) and Figure 6 (a panel per kind) style curves, seeds averaged."""
    from ..results.plots import (  # matplotlib: only when drawing
        build_figures,
        paper_tick_notes,
        parse_formats,
        save_figures,
    )

    chosen_formats = parse_formats(formats)
    runs = read_runs(results_dir)
    figures = build_figures(runs, x=x, paper=paper)
    for line in paper_tick_notes(runs) if paper else ():
        errors.print(f"note: --paper: {line}", markup=False, highlight=False, soft_wrap=True)
    out_dir = out or own_output_dir(results_dir / "plots")
    ensure_writable_dir(out_dir)
    for path in save_figures(figures, out_dir, chosen_formats):
        console.print(str(path), markup=False, highlight=False, soft_wrap=True)


@app.command()
def table(
    results_dir: Annotated[Path, typer.Argument(help="Results folder; every run folder under it is read "
                                                     "(recursively).")],
    csv: Annotated[Path | None, typer.Option("--csv", help="Also write the numbers (unrounded columns) to this "
                                                              "CSV file.")] = None,
    markdown: Annotated[bool, typer.Option("--markdown", help="Print a Markdown table (for papers and READMEs) "
                                                              "instead.")] = False,
    runs: Annotated[bool, typer.Option("--runs", help="One row per run instead (seed, state, epochs, final errors, "
                                                      "best-val epoch, how the warm-up ended); --csv writes these "
                                                      "rows.")] = False,
) -> None:
    """Table 6 style summary: one row per dataset x kind x depth, seeds as best (mean ± std), beside the paper."""
    from ..results.tables import display_runs, display_table, summarize, summarize_runs, to_markdown, write_csv

    found = read_runs(results_dir)
    summary = summarize_runs(found) if runs else summarize(found)
    if csv is not None:
        write_csv(summary, csv)
        errors.print(f"wrote {csv}", markup=False, highlight=False, soft_wrap=True)  # stdout stays the table
    if markdown:
        print(printable(to_markdown(summary, runs=runs)), end="")
        return
    headers, rows, notes = display_runs(summary) if runs else display_table(summary)
    datasets = ", ".join(summary["dataset"].unique())
    print_full_width(render_text_table(f"{results_dir} ({datasets}): {'runs' if runs else 'errors by depth'}",
                                       headers, rows))
    for note in notes:
        console.print(Text(note, style="dim"), highlight=False)


def render_text_table(title: str, headers: list[str], rows: list[list[str]]) -> Table:
    """Rows of text under headers; numbers never wrap, long headers wrap onto two lines at most."""
    from ..results.tables import TEXT_HEADERS

    view = Table(title=Text(title), box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, collapse_padding=True)
    for i, header in enumerate(headers):
        width = max([len(row[i]) for row in rows] + [len(word) for word in header.split()] + [min(len(header), 11)])
        left = header in TEXT_HEADERS
        view.add_column(header, justify="left" if left else "right", width=width)
    for row in rows:
        view.add_row(*map(Text, row))  # text from a folder, never markup
    return view


def print_full_width(view: Table) -> None:
    """A terminal gets the table at its own width; a pipe or a log at the table's full width, never numbers cut to
    '…' to fit 80 columns."""
    needed = view.__rich_measure__(console, console.options.update(max_width=10_000)).maximum
    (console if console.is_terminal or needed <= console.width else SafeConsole(width=needed, emoji=False)).print(view)


# ---------------------------------------------------------------------------------------------- analyze, construct
@app.command()
def analyze(
    results_dir: Annotated[Path, typer.Argument(help="Results folder; every run folder under it is read "
                                                     "(recursively).")],
    split: Annotated[str, typer.Option(help="Images the nets see: test, train (un-augmented) or val (runs with "
                                            "--val-size).")] = "test",
    images: Annotated[int | None, typer.Option(help="A class-balanced subset of this many images of the split, the "
                                                    "same for every run. \\[default: all]")] = None,
    out: Annotated[Path | None, typer.Option(help="Folder for the CSVs and figures. "
                                                  "\\[default: RESULTS_DIR/analysis]")] = None,
    formats: Annotated[str, typer.Option("--format", help="Comma-separated figure formats: png, pdf, svg.")] = "png",
    std: Annotated[str, typer.Option(help="The std Figure 7 draws: std (over all elements of a response) or "
                                          "channel_std (mean over channels of the per-channel std). The CSV holds "
                                          "both.")] = "std",
    device: DEVICE = None,
    batch_size: Annotated[int, typer.Option(help="Images per forward pass (the statistics do not depend on "
                                                 "it).")] = 500,
    kinds: Annotated[str | None, typer.Option("--kind", help="Comma-separated families by import path "
                                                             "(module.path:function) to import for runs that use "
                                                             "them: a results folder never names code to import.")]
    = None,
) -> None:
    """Figure 7 (std of each 3x3 layer's response, eval mode) and per-layer gradient norms of trained runs."""
    from ..analysis.responses import analyze as analyze_runs
    from ..analysis.responses import build_figures, check_std, write_analysis
    from ..results.plots import parse_formats  # matplotlib: only when drawing

    chosen_formats = parse_formats(formats)
    check_std(std)  # before the long analysis, not after it
    load_named_families(parse_list(kinds, str, "--kind") if kinds else [])
    runs = read_runs(results_dir)
    where = resolve_device(device or "auto")
    count = "all images" if images is None else f"{images:,} images (class-balanced)"
    console.print(f"layer responses: {split} split, {count} per run, evaluation mode (BN running statistics), fp32, "
                  f"on {where}", markup=False, highlight=False, soft_wrap=True)
    analysis = analyze_runs(runs, split, images, where, batch_size)
    warn(analysis.notes)
    figures = build_figures(analysis, std)
    out_dir = out or own_output_dir(results_dir / "analysis")
    ensure_writable_dir(out_dir)
    for path in write_analysis(analysis, figures, out_dir, chosen_formats):
        console.print(str(path), markup=False, highlight=False, soft_wrap=True)


WHAT_FIELDS = frozenset({"kind", "depth", "shortcut", "seed", "init"})  # what a run trains, not how: not carried over


@app.command()
def construct(
    run_dir: Annotated[Path, typer.Argument(help="A finished run folder, e.g. results/figure6/plain-20-s0.")],
    depth: Annotated[int, typer.Option(help="Depth of the constructed net: 6n+2, larger than the run's.")],
    out: Annotated[Path, typer.Option(help="Folder for the constructed net's folder "
                                           "<kind>-<depth>-from-<run folder>.")] = Path("results/constructed"),
    identity_bn: Annotated[str, typer.Option(help="Plain nets: the added BNs' running statistics: data (measured on "
                                                  "the training images: near-identity in training mode too) or unit "
                                                  "(mean 0, variance 1).")] = "data",
    device: DEVICE = None,
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing constructed net of the same "
                                                        "name.")] = False,
) -> None:
    """The paper's constructed deeper solution: a trained run's layers copied, identity blocks added at the end of
    each stage."""
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
    protocol, unset = config_args(TrainConfig, result.source_config, PROTOCOL, skip=WHAT_FIELDS)
    console.print(f"train from it with the source run's protocol: resdepth train "
                  f"{shlex.join([*result.train_args, *protocol])} --out DIR", markup=False, highlight=False,
                  soft_wrap=True)
    if unset:
        console.print(f"note: the source run also set {', '.join(unset)}, which only a sweep file sets (no option): "
                      "give them in one to train exactly as it did", markup=False, highlight=False, soft_wrap=True)


# ---------------------------------------------------------------------------------------------- lesion, landscape
class EvalDisplay:
    """A progress bar per run on a terminal; elsewhere a line as each run starts, every 10% and at its end (lesion,
    landscape)."""

    def __init__(self, what: str) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.what = what
        self.progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TimeRemainingColumn(), console=console) if console.is_terminal else None
        self.tasks: dict[str, Any] = {}

    def __enter__(self) -> EvalDisplay:
        if self.progress:
            self.progress.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.progress:
            self.progress.stop()

    def __call__(self, event: Any) -> None:
        if event.label not in self.tasks:
            self.tasks[event.label] = self.progress.add_task(event.label, total=event.total) if self.progress else None
            if not self.progress:
                resumed = f", {event.done:,} already saved" if event.done else ""
                console.print(f"{event.label}: {event.total:,} {self.what}{resumed}", markup=False, highlight=False)
        if self.progress:
            self.progress.update(self.tasks[event.label], completed=event.done)
        elif event.done == event.total:
            console.print(f"{event.label}: done", markup=False, highlight=False)
        elif event.done and event.done * 10 // event.total > (event.done - 1) * 10 // event.total:  # every 10%
            console.print(f"{event.label}: {event.done:,}/{event.total:,}", markup=False, highlight=False)


@app.command()
def lesion(
    results_dir: Annotated[Path, typer.Argument(help="Results folder; every run folder under it is read "
                                                     "(recursively).")],
    images: Annotated[int | None, typer.Option(help="A class-balanced subset of this many test images, the same for "
                                                    "every run. \\[default: the run's whole test split]")] = None,
    max_k: Annotated[int, typer.Option(help="Delete up to k random blocks and swap up to k random pairs, "
                                            "k = 1 .. this.")] = 10,
    draws: Annotated[int, typer.Option(help="Random draws per k (seeded; twins draw the same blocks).")] = 5,
    seed: Annotated[int, typer.Option(help="Seed of the draws.")] = 0,
    out: Annotated[Path | None, typer.Option(help="Folder for lesion.csv and the figures. "
                                                  "\\[default: RESULTS_DIR/lesion]")] = None,
    formats: Annotated[str, typer.Option("--format", help="Comma-separated figure formats: png, pdf, svg.")] = "png",
    device: DEVICE = None,
    batch_size: Annotated[int, typer.Option(help="Images per forward pass.")] = 500,
) -> None:
    """Veit et al. 2016: test error of trained runs with single blocks deleted, k random blocks deleted and k random
    pairs swapped (evaluation mode)."""
    from ..analysis.lesion import LesionConfig, build_figures, lesion_runs, write_lesion
    from ..results.plots import parse_formats  # matplotlib: only when drawing

    chosen_formats = parse_formats(formats)
    config = LesionConfig(images, max_k, draws, seed, batch_size)
    config.check()  # before reading anything
    runs = read_runs(results_dir)
    where = resolve_device(device or "auto")
    console.print(f"lesions: test split, {'all images' if images is None else f'{images:,} images'} per run, "
                  f"evaluation mode, fp32, on {where}", markup=False, highlight=False, soft_wrap=True)
    with EvalDisplay("lesions") as display:
        result = lesion_runs(runs, config, where, on_progress=display)
    warn(result.notes)
    out_dir = out or results_dir / "lesion"
    ensure_writable_dir(out_dir)
    for path in write_lesion(result, build_figures(result), out_dir, chosen_formats):
        console.print(str(path), markup=False, highlight=False, soft_wrap=True)


@app.command()
def landscape(
    run_dirs: Annotated[list[Path], typer.Argument(help="Finished run folders, e.g. results/figure6/plain-56-s0 "
                                                        "results/figure6/residual-56-s0.")],
    resolution: Annotated[int, typer.Option(help="Grid points per axis (Li et al.: 51).")] = 21,
    span: Annotated[float, typer.Option(help="The grid covers -span .. span along each direction.")] = 1.0,
    images: Annotated[int, typer.Option(help="A fixed class-balanced subset of this many training images "
                                             "(un-augmented).")] = 2000,
    dims: Annotated[int, typer.Option(help="2: a grid over two directions (contours); 1: a slice along "
                                           "one.")] = 2,
    seed: Annotated[int, typer.Option(help="Seed of the random directions (twins draw the same).")] = 0,
    out: Annotated[Path | None, typer.Option(help="Folder for the grids, landscape.csv and the figures. "
                                                  "\\[default: landscape/ beside the first run folder]")] = None,
    formats: Annotated[str, typer.Option("--format", help="Comma-separated figure formats: png, pdf, svg.")] = "png",
    device: DEVICE = None,
    batch_size: Annotated[int, typer.Option(help="Images per forward pass.")] = 500,
    force: Annotated[bool, typer.Option("--force", help="Compute grids anew where --out holds grids of other "
                                                        "settings or weights.")] = False,
) -> None:
    """Li et al. 2018: training loss and error of trained runs around their weights, along filter-normalised
    random directions (1D slices, 2D contours); a partial grid is resumed."""
    from ..analysis.landscape import LandscapeConfig, build_figures, landscape_runs, write_landscape
    from ..results.plots import parse_formats  # matplotlib: only when drawing

    chosen_formats = parse_formats(formats)
    config = LandscapeConfig(resolution, span, images, dims, seed, batch_size)
    config.check()
    out_dir = out or run_dirs[0].parent / "landscape"
    where = resolve_device(device or "auto")
    console.print(f"landscape: {resolution}{f'x{resolution}' if dims == 2 else ''} points in [-{span:g}, {span:g}], "
                  f"{images:,} training images per point, evaluation mode, fp32, on {where}; saved as it fills in "
                  f"{out_dir}", markup=False, highlight=False, soft_wrap=True)
    with EvalDisplay("grid points") as display:
        result = landscape_runs(run_dirs, config, out_dir, where, on_progress=display, force=force)
    for path in write_landscape(result, build_figures(result), out_dir, chosen_formats):
        console.print(str(path), markup=False, highlight=False, soft_wrap=True)


# ---------------------------------------------------------------------------------------------- report, status
@app.command()
def report(
    results_dir: Annotated[Path, typer.Argument(help="Results folder; every run folder under it is read "
                                                     "(recursively).")],
    out: Annotated[Path | None, typer.Option(help="The HTML file to write. "
                                                  "\\[default: RESULTS_DIR/report.html]")] = None,
) -> None:
    """One self-contained HTML page: the Table-6 summary beside the paper, Figures 1 and 6 (and the analysis
    figures), each group's config and environment, and links to every run's CSV."""
    from ..results.report import build_report

    out = out or results_dir / "report.html"
    if results_dir.is_dir():
        check_output_file(out, "--out")
    page, warnings = build_report(results_dir, out)
    warn(warnings)
    atomic_write_bytes(out, page.encode())
    console.print(f"wrote {out} ({len(page) / 1e6:.1f} MB, self-contained): open it in a browser", markup=False,
                  highlight=False, soft_wrap=True)


@app.command()
def status(
    results_dir: Annotated[Path, typer.Argument(help="Results folder of a sweep (or a folder of sweeps); every run "
                                                     "folder under it is read.")],
    watch: Annotated[bool, typer.Option("--watch", help="Refresh in place until every cell has ended (done, failed or "
                                                        "diverged); Ctrl-C stops watching.")] = False,
    interval: Annotated[float, typer.Option(help="Seconds between refreshes with --watch.")] = 2.0,
) -> None:
    """Each cell's state, epoch, iteration, errors, img/s, elapsed time and ETA, read from the results folder
    (works while the sweep runs in another terminal or on a cluster, and after it ended)."""
    from rich.live import Live

    from ..sweep.watch import read_folder_status

    if not interval > 0:
        raise UserError(f"--interval must be a positive number of seconds, got {interval}")
    folder = read_folder_status(results_dir)
    warn(folder.warnings)
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


STATE_STYLES = {"done": "green", "running": "cyan", "failed": "red", "diverged": "red", "unreadable": "red",
                "stopped": "yellow", "interrupted": "yellow", "pending": "dim", "not started": "dim"}


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
        _duration(cell.eta), cell.where or "-", status_note(cell)), strict=True)) for cell in folder.cells]
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
        cells = {**{column: Text(value) for column, value in row.items()},  # text from a folder, never markup
                 "state": Text(row["state"], style=STATE_STYLES.get(row["state"], "")),
                 "note": Text(row["note"], style="dim")}
        table.add_row(*(cells[column] for column in shown))
    counts = ", ".join(f"{n} {state}" for state, n in folder.counts().items())
    planned = folder.iterations_planned
    progress = f"iterations {folder.iterations_done:,}" + (
        f"/{planned:,} ({folder.iterations_done / planned:.0%})" if planned else "")
    eta = f" · longest ETA {_duration(folder.longest_eta)}" if folder.longest_eta is not None else ""
    lines = [Text(f"{len(folder.cells)} cell(s): {counts} · {progress}{eta}")]
    stopped = {cell.run_dir.parent for cell in folder.cells if cell.state in ("stopped", "interrupted")}
    for sweep_dir, executor in ((path, e) for path, e in folder.sweeps.items() if path in stopped):
        how = ("" if executor == SweepConfig().executor else  # --resume never takes it from sweep.json: say it
               f" --executor {shlex.quote(executor)} (and the other execution options it ran with)")
        lines.append(Text(f"resume: resdepth sweep --resume {shlex.quote(str(sweep_dir))}{how}", style="dim"))
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


# ---------------------------------------------------------------------------------------------- bench


@app.command()
def bench(
    depths: Annotated[str, typer.Option(help="Comma-separated depths (6n+2).")] = "20,56,110",
    kind: Annotated[str, typer.Option(help=KIND_HELP)] = "residual",
    device: DEVICE = None,
    iterations: Annotated[int, typer.Option(help="Timed training steps per window.")] = 30,
    warmup: Annotated[int, typer.Option(help="Untimed steps per path and depth first (compilation included).")] = 10,
    rounds: Annotated[int, typer.Option(help="Windows per path, resdepth and naive alternating; the median "
                                             "counts.")] = 3,
    batch_size: Annotated[int, typer.Option(help="Mini-batch size (images).")] = 128,
    num_workers: Annotated[int, typer.Option(help="DataLoader worker processes of the naive recipe.")] = 2,
    naive: Annotated[bool, typer.Option("--naive/--no-naive",
                                        help="Time the naive PIL + DataLoader recipe too.")] = True,
    threads: THREADS = None, precision: PRECISION = None, channels_last: CHANNELS_LAST = None,
    compile: Annotated[bool | None, typer.Option("--compile/--no-compile", help="torch.compile the training step. "
                       "\\[default: as a paper-length `resdepth train` run: on for CPU, off on CUDA]")] = None,
    cuda_graph: CUDA_GRAPH = None,
    data_dir: Annotated[str | None, typer.Option(help="CIFAR-10 folder (torchvision's download) instead of "
                                                         "synthetic images.")] = None,
    synthetic_train: Annotated[int, typer.Option(help="Synthetic training images (both paths draw batches from "
                                                      "them).")] = 4096,
    json_out: Annotated[Path | None, typer.Option("--json", help="Also write the rows, every window included, to "
                                                                    "this JSON file.")] = None,
    fuse: Annotated[str | None, typer.Option(help="Instead: per depth and K, aggregate img/s of one fused job of K "
                                                  "seeds vs K runs in sequence vs K processes at once, e.g. "
                                                  "1,2,4,8.")] = None,
    processes: Annotated[bool, typer.Option("--processes/--no-processes",
                                            help="With --fuse: time K processes at once too.")] = True,
    matmul_size: Annotated[int, typer.Option(help="Rows and columns of the matmul whose GFLOP/s the rows are "
                                                  "compared with.")] = BenchConfig.matmul_size,
) -> None:
    """Images/s of resdepth's training step vs the common PIL + DataLoader recipe, FLOP/s and peak memory."""
    from dataclasses import asdict

    if json_out is not None:
        check_output_file(json_out, "--json")  # before minutes of measuring, not after
    data = (DataConfig(dataset="cifar10", data_dir=data_dir) if data_dir else
            DataConfig(dataset="synthetic", synthetic_train=synthetic_train, synthetic_test=16))
    config = BenchConfig(depths=tuple(parse_list(depths, int, "--depths")), kind=kind, device=device or "auto",
                         iterations=iterations, warmup=warmup, rounds=rounds, batch_size=batch_size,
                         num_workers=num_workers, naive=naive and fuse is None, threads=threads,
                         precision=precision or "auto", channels_last=channels_last, compile=compile,
                         cuda_graph=bool(cuda_graph), data=data, matmul_size=matmul_size)
    if fuse is not None:  # fused vs separate runs, instead of resdepth vs the naive recipe
        raise typer.Exit(bench_fused(config, fuse, processes, json_out))
    rows = run_benchmark(config, on_progress=lambda line: errors.print(f"[dim]{line}[/]", highlight=False),
                         on_row=json_rows(json_out, {"config": asdict(config)}, "rows"))
    remember_bench(config, rows)  # `sweep --dry-run` estimates times from these speeds
    console.print(render_bench(kind, rows))


def bench_fused(config: BenchConfig, sizes: str, processes: bool, json_out: Path | None) -> int:
    """`bench --fuse`: the fused job against separate runs; prints the table, returns the exit code."""
    from dataclasses import asdict

    from ..bench.fused import parse_sizes, run_fuse_benchmark

    chosen = parse_sizes(sizes)
    rows = run_fuse_benchmark(config, chosen, processes,
                              on_progress=lambda line: errors.print(f"[dim]{line}[/]", highlight=False),
                              on_row=json_rows(json_out, {"config": asdict(config), "fuse": list(chosen)},
                                               "fused_rows"))
    console.print(render_fuse_bench(rows))
    return 0


def json_rows(path: Path | None, header: dict[str, Any], key: str) -> Callable[[Any], None]:
    """--json's writer: the file rewritten whole (atomically) with every row measured so far, as each comes, so a
    benchmark stopped at a time limit leaves the rows it measured."""
    from dataclasses import asdict

    rows: list[dict[str, Any]] = []

    def write(row: Any) -> None:
        rows.append(asdict(row))
        if path is not None:
            write_json(path, {**header, key: rows})
    return write


def render_fuse_bench(rows: list[Any]) -> Table:
    """Per depth and K: aggregate img/s of the three ways, the fused job's ratios, peak memory; fits 80 columns."""
    first = rows[0]
    title = (f"{first.kind}: K seeds fused vs separate, on {first.device_name} ({first.device}, {first.precision}; "
             f"fused and single: {first.threads} threads, K processes: cores / K threads each)")
    caption = (f"img/s = images x models per second, all paths eager; vs: the fused job's ratio to each; "
               f"MB: {first.memory_measure}, the processes' summed")
    view = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, title=title, caption=caption)
    for column in ("depth", "K", "fused\nimg/s", "in seq.\nimg/s", "K procs\nimg/s", "vs\nseq.", "vs\nprocs",
                   "MB\nfused", "MB\nsingle", "MB\nprocs"):
        view.add_column(column, justify="right", no_wrap=True)
    for row in rows:
        view.add_row(str(row.depth), str(row.models), _count(row.fused_images_per_second),
                     _count(row.sequence_images_per_second), _count(row.processes_images_per_second),
                     f"{row.fused_vs_sequence:.2f}x", _ratio(row.fused_vs_processes), _count(row.fused_peak_memory_mb),
                     _count(row.single_peak_memory_mb), _count(row.processes_peak_memory_mb))
    return view


def render_bench(kind: str, rows: list[BenchRow]) -> Table:
    """The bench rows as a table that fits 80 columns: two-line headers, no vertical rules (rich cuts words)."""
    first = rows[0]
    title = (f"{kind} training throughput on {first.device_name} ({first.device}, {first.threads} threads, "
             f"{first.precision}, channels_last {'on' if first.channels_last else 'off'}, "
             f"compile {'on' if first.compile else 'off'}{', CUDA graph' if first.cuda_graph else ''})")
    caption = (f"achieved FLOP/s = 3 x 2 x forward multiply-adds x resdepth img/s; MB: {first.memory_measure}"
               + (f"; naive precision: {first.naive_precision}" if first.naive_precision else ""))
    view = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, title=title, caption=caption)
    for column in ("depth", "resdepth\nimg/s", "naive\nimg/s", "ratio", "achieved\nGFLOP/s", "matmul\nGFLOP/s",
                   "% of\npeak", "resdepth\nMB", "naive\nMB"):
        view.add_column(column, justify="right", no_wrap=True)
    for row in rows:
        view.add_row(str(row.depth), f"{row.resdepth_images_per_second:,.0f}", _count(row.naive_images_per_second),
                     _ratio(row.speedup), f"{row.achieved_gflops:,.0f}", f"{row.matmul_gflops:,.0f}",
                     f"{row.peak_fraction * 100:.0f}%", f"{row.resdepth_peak_memory_mb:,.0f}",
                     _count(row.naive_peak_memory_mb))
    return view


def check_output_file(path: Path, option: str) -> None:
    if path.is_dir() or not path.parent.is_dir() or not os.access(path.parent, os.W_OK):
        raise UserError(f"{option} {path}: not a file in a writable folder; name a file such as bench.json")


def main() -> None:
    """Console entry point: user errors become one line and exit code 2 (see Commands), never a traceback."""
    app()  # click itself turns usage errors into a message and exit code 2
