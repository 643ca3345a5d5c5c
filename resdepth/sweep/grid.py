"""A sweep's other axes: `--grid KEY=V1,V2` and a sweep file's `[grid]` table, over any training or data field
(lr, batch_size, weight_decay, val_size, warmup, precision, ...) or any network option the families declare
(width, and shortcut, which is a training field). Depths, kinds and seeds stay the sweep's own axes.

Values are typed and checked as the field itself (`config.check_type`, `config.parse_value` for command-line
words; each cell's config is then validated as any run's). This module is the one place that says which values a
cell has on the axes (`axis_values`) and how they read in its folder name (`axis_label`: residual-56-lr0.05-s0).
"""

from __future__ import annotations

import difflib
import typing
from dataclasses import dataclass, replace
from typing import Any

from ..config import check_type, parse_value
from ..errors import UserError
from ..models.families import Family, file_name
from ..results.groups import EXECUTION_FIELDS
from ..train.data import DataConfig
from ..train.trainer import TrainConfig

OWN_AXES = {"kind": "--kinds", "depth": "--depths", "seed": "--seeds"}  # the sweep's own axes, never grid keys
NESTED = ("data", "options")  # TrainConfig fields that hold other fields: their own keys are the grid keys
# How folder names abbreviate a key ('' for values that say what they are: bf16); other keys are written whole
SHORT_NAMES = {"batch_size": "bs", "weight_decay": "wd", "momentum": "mom", "width": "w", "val_size": "val",
               "train_size": "train", "test_size": "test", "iterations": "it", "epochs": "ep", "lr_decay": "decay",
               "precision": "", "dataset": ""}
TRAIN_HINTS = {k: v for k, v in typing.get_type_hints(TrainConfig).items() if k not in NESTED}
DATA_HINTS = typing.get_type_hints(DataConfig)


@dataclass(frozen=True)
class Axis:
    """One grid axis: a key and its values, in order. section: train (a TrainConfig field), data (a DataConfig
    field) or option (a network option the families declare)."""

    key: str
    values: tuple[Any, ...]
    section: str


def axis_section(key: str) -> str:
    """Where a grid key lives: train, data or option (any other name: a family's option, checked apart)."""
    return "train" if key in TRAIN_HINTS else "data" if key in DATA_HINTS else "option"


def axis_hint(key: str, families: list[Family]) -> Any:
    """The type a key's values must have: the field's annotation, or the type of the declared option's default;
    an own axis, an execution setting or a key no field or family has is refused by name."""
    if key in OWN_AXES:
        raise UserError(f"--grid {key}: {key} is a sweep axis of its own: give its values with {OWN_AXES[key]}")
    if key in EXECUTION_FIELDS:
        raise UserError(f"--grid {key}: {key} says how a run executes, not what it computes: it is no axis of the "
                        f"study; set it once with --{key.replace('_', '-')}")
    section = axis_section(key)
    if section != "option":
        return TRAIN_HINTS[key] if section == "train" else DATA_HINTS[key]
    declared = [option for family in families if (option := family.net_option(key)) is not None]
    if not declared:
        options = sorted({o.name for family in families for o in family.net_options})
        keys = [k for k in [*TRAIN_HINTS, *DATA_HINTS, *options] if k not in OWN_AXES and k not in EXECUTION_FIELDS]
        close = difflib.get_close_matches(key, keys, n=2, cutoff=0.6)
        hint = f"did you mean {' or '.join(close)}? " if close else ""
        raise UserError(f"--grid {key}: unknown key: {hint}sweep a training or data field (lr, batch_size, "
                        f"weight_decay, val_size, warmup, precision, ...) or a network option of the kinds "
                        f"({', '.join(options) or 'they declare none'})")
    return type(declared[0].default)


def grid_axes(grid: dict[str, list[Any]], families: list[Family]) -> list[Axis]:
    """The grid as typed axes, in the order given; a value of the wrong type, an empty or repeated one is refused."""
    axes = []
    for key, values in grid.items():
        hint = axis_hint(key, families)
        if not isinstance(values, list) or not values:
            raise UserError(f"--grid {key} needs a list of at least one value, e.g. --grid {key}=V1,V2")
        typed = [check_type(value, hint, f"--grid {key}") for value in values]
        if axis_section(key) == "option":
            typed = [checked_option(key, value, families) for value in typed]
        repeated = sorted({format_value(v) for v in typed if typed.count(v) > 1})
        if repeated:
            raise UserError(f"--grid {key} lists {', '.join(repeated)} more than once: name each value once")
        axes.append(Axis(key, tuple(typed), axis_section(key)))
    return axes


def checked_option(key: str, value: Any, families: list[Family]) -> Any:
    """The value as every family declaring the option checks it (its type, its minimum)."""
    for family in families:
        declared = family.net_option(key)
        if declared is not None:
            value = declared.check(value, family.name)
    return value


def parse_grid_words(words: list[str], families: list[Family]) -> dict[str, list[Any]]:
    """Command-line `--grid KEY=V1,V2` options as a grid: each value typed as its key's field or option."""
    grid: dict[str, list[Any]] = {}
    for word in words:
        key, sep, text = word.partition("=")
        key = key.strip()
        if not sep or not key or not text.strip():
            raise UserError(f"--grid {word!r}: write KEY=V1,V2 (e.g. --grid lr=0.1,0.05)")
        if key in grid:
            raise UserError(f"--grid {key} is given twice: list all its values in one --grid {key}=V1,V2")
        hint = axis_hint(key, families)
        parts = [part.strip() for part in text.split(",")]
        if not all(parts):
            raise UserError(f"--grid {word!r} has an empty value: one comma between each, e.g. {key}=V1,V2")
        grid[key] = [parse_value(part, hint, f"--grid {key}") for part in parts]
    return grid


def apply_axes(config: TrainConfig, values: dict[str, Any], family: Family) -> TrainConfig:
    """The config with these axis values; a network option the family does not declare leaves it as it is (the
    cell then does not vary along that axis)."""
    train = {k: v for k, v in values.items() if axis_section(k) == "train"}
    if "iterations" in train:
        train.setdefault("epochs", None)  # an iterations axis sets the run's length, as --iterations does
    data = {k: v for k, v in values.items() if axis_section(k) == "data"}
    options = {k: v for k, v in values.items() if axis_section(k) == "option" and family.net_option(k)}
    return replace(config, **train, data=replace(config.data, **data), options={**config.options, **options})


def axis_values(config: TrainConfig, keys: list[str] | tuple[str, ...], family: Family) -> dict[str, Any]:
    """A cell's values on the grid's axes (keys), and on every network option that is not its default: what its
    folder name shows. The shortcut is left to the name's own shortcut part (families.Family.shown_shortcut)."""
    options = family.option_values(config.options)
    values = {}
    for key in keys:
        section = axis_section(key)
        if key == "shortcut" or (section == "option" and key not in options):
            continue
        values[key] = getattr(config, key) if section == "train" else \
            getattr(config.data, key) if section == "data" else options[key]
    return {**values, **{k: v for k, v in config.options.items() if k not in values}}


def format_value(value: Any) -> str:
    """A value as names show it: 0.05, 1e-05, 256, bf16, on/off, none, 0.5+0.75 for a list."""
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (list, tuple)):
        return "+".join(format_value(item) for item in value)
    return "none" if value is None else file_name(str(value))


def axis_label(values: dict[str, Any]) -> str:
    """Axis values as one part of a folder name: {'lr': 0.05, 'width': 2} -> 'lr0.05-w2'; a boolean as
    'augment-off'."""
    parts = []
    for key, value in values.items():
        short = SHORT_NAMES.get(key, key)
        joiner = "-" if isinstance(value, bool) and short else ""
        parts.append(f"{short}{joiner}{format_value(value)}")
    return "-".join(parts)


def grid_points(axes: list[Axis]) -> list[dict[str, Any]]:
    """Every combination of the axes' values, the last axis changing fastest; one empty point for no grid."""
    points: list[dict[str, Any]] = [{}]
    for axis in axes:
        points = [{**point, axis.key: value} for point in points for value in axis.values]
    return points
