"""The command-line options: those generated from the config dataclasses' fields (their help, flag and help panel
live in the fields, see config.py), i.e. the training, data, sweep and Slurm options, a few of them shared as they
are by other commands (--device, --threads, ...); how the values given are read back and checked (comma-separated
lists, output files); and --help rows of flags without a type."""

from __future__ import annotations

import inspect
import os
import types
import typing
from collections.abc import Callable
from dataclasses import Field
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape

from ..config import DATA, EXECUTION, PROTOCOL, cli_fields, flag_name, help_text
from ..errors import UserError
from ..models.families import load_named_families
from ..sweep.cluster import CLUSTER, SlurmConfig
from ..sweep.runner import WHAT, SweepConfig
from ..train.data import DataConfig
from ..train.trainer import TrainConfig


def hide_flag_types() -> None:
    """A flag takes no value: its help row shows no type. (Typer 0.29 shows `<bool>` after every flag, --help
    included; TyperOption.display_type_rich is the one place its rich help asks an option for that column.)"""
    show_type = getattr(typer.core.TyperOption, "display_type_rich", None)
    if show_type is None or getattr(show_type, "hides_flags", False):  # a Typer without it shows no `<bool>`
        return

    def display_type_rich(self: Any, ctx: Any) -> str | None:
        return None if self.is_flag and not self.count else show_type(self, ctx)

    display_type_rich.hides_flags = True  # type: ignore[attr-defined]
    typer.core.TyperOption.display_type_rich = display_type_rich  # type: ignore[method-assign]


EXAMPLE_LISTS = {"--kind": "plain,residual", "--seeds": "0,1,2", "--widths": "1,2,4", "--gpus": "0,1"}


def parse_list(text: str, kind: type, flag: str) -> list[Any]:
    """'20,32,44' -> [20, 32, 44]; an empty item ('20,,56') or a value of another type is refused."""
    parts = [part.strip() for part in text.split(",")]
    if not all(parts):
        example = ",".join(p for p in parts if p) or EXAMPLE_LISTS.get(flag, "20,56")
        raise UserError(f"{flag} {text!r} has an empty item: list the values with one comma between each, "
                        f"e.g. {example}")
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
# analyze, lesion, landscape: the formats of the figures they draw
FIGURE_FORMATS = Annotated[str, typer.Option("--format", help="Comma-separated figure formats: png, pdf, svg.")]

# analyze, lesion, landscape: the families by import path their runs use, named by the user (never by the folder)
FAMILY_PATHS = Annotated[str | None, typer.Option("--kind", help="Comma-separated families by import path "
                                                               "(module.path:function) to import for runs that use "
                                                               "them: a results folder never names code to import.")]


def import_named_families(kinds: str | None) -> None:
    load_named_families(parse_list(kinds, str, "--kind") if kinds else [])


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


def check_output_file(path: Path, option: str, example: str) -> None:
    if path.is_dir() or not path.parent.is_dir() or not os.access(path.parent, os.W_OK):
        raise UserError(f"{option} {path}: not a file in a writable folder; name a file such as {example}")
