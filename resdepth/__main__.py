"""`python -m resdepth`: the command line, as the `resdepth` command."""

from .cli import main

main()
