"""Entry point of one local worker process:
`python -m resdepth.sweep.worker RUN_DIR [RUN_DIR ...] --device D [--threads T] [--parent PID]`
(several folders: a fused group, trained as one job)."""

from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path

from .cell import EXIT_CODES, STOP_SIGNALS, each_cell, run_cells


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m resdepth.sweep.worker")
    parser.add_argument("run_dirs", type=Path, nargs="+")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--parent", type=int, default=None, help="the sweep's pid: its death stops the cells")
    args = parser.parse_args(argv)
    received: list[int] = []

    def request_stop(signum: int, _frame: object) -> None:
        received.append(signum)  # the training loop checkpoints at the next iteration and returns

    for stop in STOP_SIGNALS:
        signal.signal(stop, request_stop)
    outcome = run_cells(args.run_dirs, args.device, args.threads,
                        lambda: bool(received) or parent_gone(args.parent))
    states = {cell.state for cell in each_cell(outcome)}
    if "interrupted" in states and received and received[0] == signal.SIGTERM:
        return 143
    if len(args.run_dirs) > 1:  # a group: the parent reads each cell's state from its folder, busy ones by their lock
        states.discard("busy")
        return next((EXIT_CODES[s] for s in ("failed", "diverged", "interrupted") if s in states), 0)
    return EXIT_CODES.get(outcome.state, 1)


def parent_gone(parent: int | None) -> bool:
    """Whether the sweep that started this worker has died without stopping it (SIGKILL, a crash, the OOM killer):
    its orphans are adopted by another process, and would otherwise train on unwatched, holding their cells."""
    return parent is not None and os.getppid() != parent


if __name__ == "__main__":
    sys.exit(main())
