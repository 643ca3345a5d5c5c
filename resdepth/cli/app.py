"""The `resdepth` command line, assembled: the Typer app, its --version, the commands of each group module in
the order `resdepth --help` lists them, and the one place a known user error (`UserError`) becomes one line on
stderr and exit code 2. The CLI package is the only layer that prints or exits; the commands live in

  models.py    models                                  sweep.py     train, sweep
  results.py   plot, table, report, status             analysis.py  analyze, construct, lesion, landscape
  bench.py     bench                                   options.py   the options generated from the configs
  console.py   the consoles and number formats         progress.py  the live progress displays
"""

from __future__ import annotations

import sys
from typing import Annotated, Any

import typer

from .._version import __version__
from ..errors import UserError
from . import INTERRUPTED, analysis, bench, models, results, sweep
from .console import OUTPUT_CLOSED, OutputClosed, console, errors
from .options import hide_flag_types


class Commands(typer.core.TyperGroup):
    """resdepth's commands: a UserError raised anywhere in one becomes one line on stderr and exit code 2; a Ctrl-C,
    exit code 130 (`sweep` and `train` stop their runs first, as they say). Output
    that cannot be written (a sweep first stops its cells as on Ctrl-C): its reader gone (`| head`), exit code 141;
    a full disk, a line on stderr and exit code 1."""

    def main(self, *args: Any, standalone_mode: bool = True, **kwargs: Any) -> Any:
        if not standalone_mode:
            return super().main(*args, standalone_mode=False, **kwargs)
        try:
            code = super().main(*args, standalone_mode=False, **kwargs)
        except Exception as exc:
            if type(exc).__name__ == "Abort":  # a Ctrl-C while click parses, in Typers that raise it
                sys.exit(INTERRUPTED)
            if not is_usage_error(exc):
                raise
            say_usage_error(exc)
            sys.exit(exc.exit_code)
        sys.exit(code if isinstance(code, int) else 0)

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except UserError as exc:
            errors.print(f"error: {exc}", highlight=False, soft_wrap=True, markup=False)
            raise typer.Exit(2) from None
        except KeyboardInterrupt:  # Ctrl-C: what a command had written stays; train and sweep checkpoint first
            raise typer.Exit(INTERRUPTED) from None
        except BrokenPipeError:  # written past the console (`resdepth ... | head`): nothing more of it is read
            console.silence()
            raise typer.Exit(OUTPUT_CLOSED) from None
        except OutputClosed as exc:
            if exc.reason is None:
                raise typer.Exit(OUTPUT_CLOSED) from None
            try:
                errors.print(f"error: cannot write the output ({exc.reason})", highlight=False, soft_wrap=True,
                             markup=False)
            except OutputClosed:
                pass
            raise typer.Exit(1) from None


def is_usage_error(exc: BaseException) -> bool:
    """A mistyped command line, told apart by click's public exception interface (`format_message`, `exit_code`)
    rather than its classes: Typer vendors its own click, which the versions pyproject allows place differently."""
    return callable(getattr(exc, "format_message", None)) and isinstance(getattr(exc, "exit_code", None), int)


def say_usage_error(exc: Any) -> None:
    """One line, with where to look: `error: No such option: --depht (Possible options: --depths, --epochs). Try
    'resdepth sweep --help' for help.` Where no arguments were given, the help has been shown already."""
    if type(exc).__name__ == "NoArgsIsHelpError":
        return
    message = " ".join(exc.format_message().split())
    ctx = getattr(exc, "ctx", None)
    if ctx is not None:
        message += ("" if message.endswith((".", "?")) else ".") + f" Try '{ctx.command_path} --help' for help."
    try:
        errors.print(f"error: {message}", highlight=False, soft_wrap=True, markup=False)
    except OutputClosed:
        pass


hide_flag_types()
app = typer.Typer(cls=Commands, add_completion=False, no_args_is_help=True, rich_markup_mode="rich",
                  help="CIFAR networks by depth: plain vs residual (He et al. 2016, section 4.2), pre-activation "
                       "ResNets and your own network families.")


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


# the order `resdepth --help` lists them in: what there is, training, its results, measuring trained nets, speed
COMMANDS = (models.models, sweep.train, sweep.sweep, results.plot, results.table, analysis.analyze, analysis.construct,
            analysis.lesion, analysis.landscape, results.report, results.status, bench.bench)
for command in COMMANDS:
    # the list in `resdepth --help` gets the docstring's first paragraph as one line: kept as written, it broke
    # mid-sentence where the source's lines end
    app.command(short_help=" ".join((command.__doc__ or "").split("\n\n")[0].split()))(command)


def main() -> None:
    """Console entry point: user errors become one line and exit code 2 (see Commands), never a traceback."""
    app()  # a mistyped command line: one line too, and click's exit code 2 (Commands.main)
