"""The `resdepth` command line, the only layer that prints or exits."""

from .app import app, main

__all__ = ["app", "main"]
