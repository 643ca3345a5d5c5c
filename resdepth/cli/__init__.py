"""The `resdepth` command line, the only layer that prints or exits."""

from __future__ import annotations

import sys

__all__ = ["main"]  # the Typer app itself: resdepth.cli.app.app

INTERRUPTED = 130  # 128 + SIGINT, as a shell reports a Ctrl-C


def main() -> None:
    """Console entry point (see app.main). A Ctrl-C while the commands load (torch takes seconds) ends it as one
    inside a command does: exit 130, no traceback."""
    try:
        from .app import main as run
    except KeyboardInterrupt:
        sys.exit(INTERRUPTED)
    run()
