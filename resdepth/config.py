"""One way from plain data (sweep files, sweep.json, config.json) to the typed config dataclasses, and the option
metadata that the command line is generated from.

Each config field is declared once, with `option(...)`: its default, its help text, its command-line flag and the
help panel it shows in. `cli/options.py` builds the shared Typer options from `fields(...)`, and error messages name a
field by its flag through `flag()`, so adding a training option is one line in one place.
"""

from __future__ import annotations

import dataclasses
import numbers
import os
import textwrap
import types
import typing
from dataclasses import MISSING, Field, fields, is_dataclass
from typing import Any, TypeVar

from .errors import UserError

T = TypeVar("T")

# Help panels of `resdepth train/sweep --help`, in the order they are shown.
PROTOCOL, DATA, EXECUTION = "Training protocol", "Data", "Execution"


def option(default: Any = MISSING, *, help: str, flag: str | None = None, panel: str = PROTOCOL, cli: bool = True,
           default_factory: Any = MISSING, default_text: str | None = None) -> Any:
    """A config field with its documentation. flag: the command-line name (default --field-name; booleans get
    --name/--no-name); cli=False keeps it to sweep files and the Python API; default_text replaces the shown
    default where the value alone would mislead (None meaning 'decided at run time')."""
    metadata = {"help": help, "flag": flag, "panel": panel, "cli": cli, "default_text": default_text}
    if default_factory is not MISSING:
        return dataclasses.field(default_factory=default_factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def documented(cls: type[T]) -> type[T]:
    """Append each field's help to the class docstring, so help(TrainConfig) in Python says what --help says."""
    hints = typing.get_type_hints(cls)
    lines = [(cls.__doc__ or cls.__name__).rstrip(), "", "Fields (and their command-line flags):"]
    for field in fields(cls):
        default = field.default_factory() if field.default_factory is not MISSING else field.default
        hint = hints[field.name]
        kind = hint.__name__ if isinstance(hint, type) else str(hint).replace("typing.", "")
        flag_text = f" ({flag_name(field)})" if field.metadata.get("cli") and not is_dataclass(hint) else ""
        lines.append(f"    {field.name}: {kind}{flag_text}")
        lines += textwrap.wrap(help_text(field, default), 108, initial_indent=" " * 8, subsequent_indent=" " * 8)
    cls.__doc__ = "\n".join(lines)
    return cls


def flag_name(field: Field) -> str:
    return field.metadata.get("flag") or "--" + field.name.replace("_", "-")


def flag(cls: type, name: str) -> str:
    """The command-line flag of a config field, as error messages name it: flag(TrainConfig, "lr") -> '--lr'."""
    return flag_name(next(f for f in fields(cls) if f.name == name))


def help_text(field: Field, default: Any) -> str:
    """The field's help with its default, as --help shows it."""
    shown = field.metadata.get("default_text")
    if shown is None:
        shown = default if not isinstance(default, bool) else ("on" if default else "off")
    return f"{field.metadata['help']} [default: {shown}]"


def cli_fields(cls: type) -> list[Field]:
    """The fields of cls that are command-line options, in declaration order."""
    return [f for f in fields(cls) if f.metadata.get("cli") and not is_dataclass(typing.get_type_hints(cls)[f.name])]


def config_args(cls: type, values: dict[str, Any], panel: str, skip: frozenset[str] = frozenset()
                ) -> tuple[list[str], list[str]]:
    """The command-line options that set cls's fields of a help panel to values (a config.json section) where they
    differ from the defaults, and the names of such fields no option sets (sweep files only). `skip`: fields
    the caller gives itself."""
    args: list[str] = []
    unset: list[str] = []
    for field in fields(cls):
        if field.metadata.get("panel") != panel or field.name in skip or field.name not in values:
            continue
        default = field.default_factory() if field.default_factory is not MISSING else field.default
        value = values[field.name]
        if value is None or normalised(value) == normalised(default) or is_dataclass(default):
            continue
        if not field.metadata.get("cli"):
            unset.append(field.name)
            continue
        on, _, off = flag_name(field).partition("/")
        if isinstance(value, bool):
            args.append(on if value else off or f"--no-{on.removeprefix('--')}")
        else:
            args += [on, ",".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)]
    return args, unset


def normalised(value: Any) -> Any:
    """A value as JSON gives it back (tuples are lists)."""
    return list(value) if isinstance(value, tuple) else value


# ---------------------------------------------------------------------------------------------- loading
def from_dict(cls: type[T], payload: Any, where: str, prefix: str = "", ignore: frozenset[str] = frozenset()) -> T:
    """Build cls from a mapping, strictly: every key must be a field (or in `ignore`), every value of the field's
    type (ints pass for floats), nested dataclasses from nested mappings (or given ready-made). Anything else is a
    UserError naming `where`, the key as `prefix` + name, and what was expected."""
    if not isinstance(payload, dict):
        raise UserError(f"{where}: {prefix.rstrip('.') or 'the file'} must be a table of keys, got {payload!r}")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(payload) - known - ignore)
    if unknown:
        raise UserError(f"{where}: unknown key {prefix}{unknown[0]} (known: {', '.join(sorted(known | ignore))})")
    values = {}
    for name, value in payload.items():
        if name in ignore:
            continue
        hint = hints[name]
        if is_dataclass(hint):
            values[name] = value if isinstance(value, hint) else from_dict(hint, value, where, f"{prefix}{name}.")
        else:
            values[name] = check_type(value, hint, f"{where}: key {prefix}{name}")
    return cls(**values)


def check_fields(config: Any) -> None:
    """Check a config built in Python as from_dict checks one read from a file: each field of its annotation's type,
    numpy's numbers taken as Python's and paths as text (as JSON writes them), nested configs by their own validate().
    The config's values are replaced in place by these equal plain ones. A UserError names the field:
    `TrainConfig.epochs: expected int or nothing, got 1.5`."""
    hints = typing.get_type_hints(type(config))
    for field in fields(config):
        hint = hints[field.name]
        if is_dataclass(hint):
            if not isinstance(getattr(config, field.name), hint):
                raise UserError(f"{type(config).__name__}.{field.name}: expected a {hint.__name__}, got "
                                f"{shown(getattr(config, field.name))}")
            continue
        value = check_type(plain(getattr(config, field.name)), hint, f"{type(config).__name__}.{field.name}")
        object.__setattr__(config, field.name, value)  # frozen configs too: the same value, as its own type


def plain(value: Any) -> Any:
    """numpy's (and any other) integer and real numbers as Python's int and float, paths as text, inside lists and
    dicts too."""
    if isinstance(value, (bool, int, float, str)) or value is None:
        return value
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        return float(value)
    if isinstance(value, (list, tuple)):
        return type(value)(plain(item) for item in value)
    if isinstance(value, dict):
        return {plain(key): plain(item) for key, item in value.items()}
    if type(value).__name__ == "bool_":  # numpy's bool is no number
        return bool(value)
    return value


def digits(text: str) -> bool:
    """Whether text is a plain decimal number, 0-9 only: str.isdigit alone also takes '²' and '５', which int()
    refuses or reads unexpectedly."""
    return text.isascii() and text.isdigit()


def fits_int64(value: int) -> bool:
    """Whether a JSON or TOML integer fits the 64 bits that numpy, pandas and the OS take (Python's have no bound)."""
    return -2**63 <= value < 2**63


def check_type(value: Any, hint: Any, where: str) -> Any:
    """value if it fits the annotation (ints for floats, lists for tuples); else one line saying what was expected."""
    options = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
    for option_type in options:
        origin = typing.get_origin(option_type)
        if option_type is type(None) and value is None:
            return value
        if option_type is bool and isinstance(value, bool):
            return value
        if option_type is int and isinstance(value, int) and not isinstance(value, bool) and fits_int64(value):
            return value
        if option_type is float and isinstance(value, (int, float)) and not isinstance(value, bool) and (
                isinstance(value, float) or fits_int64(value)):
            return float(value)
        if option_type is str and isinstance(value, str):
            return value
        if option_type is Any:
            return value
        if origin in (list, tuple) and isinstance(value, (list, tuple)):
            inner = typing.get_args(option_type)[0]
            items = [check_type(item, inner, where) for item in value]
            return tuple(items) if origin is tuple else items
        if origin is dict and isinstance(value, dict):
            key_type, value_type = typing.get_args(option_type)
            return {check_type(key, key_type, where): check_type(item, value_type, f"{where}.{key}")
                    for key, item in value.items()}
    if isinstance(value, int) and not isinstance(value, bool) and not fits_int64(value) and {int, float} & set(options):
        raise UserError(f"{where}: {shown(value)} is out of range")
    expected = " or ".join(getattr(o, "__name__", str(o)) for o in options).replace("NoneType", "nothing")
    raise UserError(f"{where}: expected {expected}, got {shown(value)}")


def shown(value: Any) -> str:
    """A value as an error message quotes it: its repr, cut short (a file may hold a megabyte in one value)."""
    text = repr(value)
    return text if len(text) <= 80 else f"{text[:77]}..."


def parse_value(text: str, hint: Any, where: str) -> Any:
    """A command-line word as a value of the annotation: '0.05' for a float, '256' for an int, 'on'/'off' for a
    bool, 'none' where None is allowed; then checked as a file's value would be (check_type)."""
    options = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
    if type(None) in options and text.lower() in ("none", "null"):
        return None
    for option_type in options:
        converted = convert_word(text, option_type)
        if converted is not None:
            return check_type(converted, hint, where)
    expected = " or ".join(getattr(o, "__name__", str(o)) for o in options).replace("NoneType", "none")
    raise UserError(f"{where}: expected {expected}, got {text!r}")


def convert_word(text: str, option_type: Any) -> Any:
    """text as option_type, or None where it is not one."""
    if option_type is bool:
        return {"true": True, "on": True, "yes": True, "false": False, "off": False, "no": False}.get(text.lower())
    if option_type in (int, float):
        try:
            return option_type(text)
        except ValueError:
            return None
    return text if option_type in (str, Any) else None
