"""Entry point of one local worker process: `python -m resdepth.worker RUN_DIR --device D [--threads T]`."""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path

from .cell import EXIT_CODES, run_cell


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m resdepth.worker")
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    received: list[int] = []

    def request_stop(signum: int, _frame: object) -> None:
        received.append(signum)  # the training loop checkpoints at the next iteration and returns

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)
    outcome = run_cell(args.run_dir, args.device, args.threads, lambda: bool(received))
    if outcome.state == "interrupted" and received and received[0] == signal.SIGTERM:
        return 143
    return EXIT_CODES.get(outcome.state, 1)


if __name__ == "__main__":
    sys.exit(main())
