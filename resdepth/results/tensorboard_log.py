"""TensorBoard event files beside metrics.csv (`--tensorboard`): each run's per-epoch metrics, its lr and its
img/s as scalars at their iteration, so `tensorboard --logdir results/NAME` shows every cell of a sweep, live.

The event file mirrors metrics.csv: an epoch's scalars are appended right after its CSV row (made durable with it),
and a resumed run rewrites the file from the rows the CSV kept, so TensorBoard never shows an epoch twice. Optional:
it needs the `tensorboard` package (`pip install "resdepth[tensorboard]"`).
"""

from __future__ import annotations

import csv
import io
import os
import socket
import time
from pathlib import Path
from typing import Any

from ..errors import UserError
from .runs import METRICS_FILE, atomic_write_bytes

# metrics.csv column -> scalar tag; TensorBoard puts the tags that share a prefix ("error/") in one section
TAGS = {"train_error": "error/train", "test_error": "error/test", "val_error": "error/val",
        "train_loss": "loss/train", "test_loss": "loss/test", "val_loss": "loss/val", "lr": "lr",
        "images_per_second": "speed/images_per_second", "epoch_seconds": "speed/epoch_seconds", "epoch": "epoch"}
EVENTS_GLOB = "events.out.tfevents.*"  # TensorBoard reads the files whose names hold "tfevents"
INSTALL_HINT = 'pip install "resdepth[tensorboard]"'


def check_tensorboard_installed() -> None:
    """A UserError with the install hint where the tensorboard package is missing."""
    try:
        import tensorboard.compat.proto.event_pb2
        import tensorboard.summary.writer.record_writer  # noqa: F401
    except ImportError:
        raise UserError(f"--tensorboard needs the tensorboard package, which is not installed: {INSTALL_HINT} "
                        "(or leave --tensorboard out)") from None


class TensorBoardLog:
    """One run's event file. `resume(epochs_kept)` starts it from the first epochs_kept rows of metrics.csv,
    `append(row)` adds an epoch. No file stays open between epochs (as with MetricsWriter), so a run killed at
    any moment leaves whole records behind and there is nothing to close."""

    def __init__(self, run_dir: Path):
        check_tensorboard_installed()
        self.run_dir = run_dir
        stamp = f"{int(time.time()):010d}.{socket.gethostname()}.{os.getpid()}"
        self.path = run_dir / f"events.out.tfevents.{stamp}.resdepth"

    @classmethod
    def resumed(cls, run_dir: Path, epochs_kept: int) -> TensorBoardLog:
        log = cls(run_dir)
        log.resume(epochs_kept)
        return log

    def resume(self, epochs_kept: int) -> None:
        """Write a new event file holding metrics.csv's first epochs_kept rows, then remove the older files.

        It opens with a session start at step 0: a TensorBoard that already showed the older files drops their
        points (its rule for a restarted job) and reads them again from this one."""
        older = [path for path in self.run_dir.glob(EVENTS_GLOB) if path != self.path]
        records = [self.event(file_version="brain.Event:2")]
        if older:
            records.append(self.event(step=0, session_start=True))
        records += [self.row_event(row) for row in kept_rows(self.run_dir / METRICS_FILE, epochs_kept)]
        atomic_write_bytes(self.path, framed(records))
        for path in older:
            path.unlink(missing_ok=True)

    def append(self, row: dict[str, Any]) -> None:
        with self.path.open("ab") as handle:
            handle.write(framed([self.row_event(row)]))

    def row_event(self, row: dict[str, Any]) -> bytes:
        scalars = {TAGS[column]: float(value) for column, value in row.items()
                   if column in TAGS and value not in ("", None)}
        return self.event(step=int(row["iteration"]), scalars=scalars)

    @staticmethod
    def event(step: int = 0, scalars: dict[str, float] | None = None, file_version: str | None = None,
              session_start: bool = False) -> bytes:
        from tensorboard.compat.proto.event_pb2 import Event, SessionLog
        from tensorboard.compat.proto.summary_pb2 import Summary

        event = Event(wall_time=time.time(), step=step)
        if file_version:
            event.file_version = file_version
        if session_start:
            event.session_log.status = SessionLog.START
        if scalars:
            values = [Summary.Value(tag=tag, simple_value=value) for tag, value in scalars.items()]
            event.summary.CopyFrom(Summary(value=values))
        return event.SerializeToString()


def framed(records: list[bytes]) -> bytes:
    """Records in TensorBoard's file format (TFRecord: length, its CRC, data, its CRC)."""
    from tensorboard.summary.writer.record_writer import RecordWriter

    buffer = io.BytesIO()
    writer = RecordWriter(buffer)
    for record in records:
        writer.write(record)
    return buffer.getvalue()


def kept_rows(path: Path, count: int) -> list[dict[str, str]]:
    """The first count rows of a metrics.csv (a resumed run keeps the rows up to its checkpoint)."""
    if count == 0 or not path.is_file():
        return []
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))[:count]
