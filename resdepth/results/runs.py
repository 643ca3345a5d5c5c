"""The results format: one folder per run holding config.json, metrics.csv, status.json and checkpoint.pt.

The metric schema is defined here once; the trainer's CSV writer, the plots, the table and the tests import it.
"""

from __future__ import annotations

import csv
import errno
import io
import json
import math
import os
import pickle
import re
import secrets
import socket
import stat
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, TextIO

import pandas as pd
import torch

from ..config import check_type, digits, from_dict
from ..errors import UserError

# Errors are in percent. train_* are measured on the augmented mini-batches during the epoch, in training
# mode, as the paper's curves are; test_* (and val_*) on the un-augmented images in evaluation mode.
METRIC_COLUMNS: tuple[str, ...] = (
    "epoch", "iteration", "lr", "train_loss", "train_error", "test_loss", "test_error",
    "epoch_seconds", "images_per_second",
)
VAL_COLUMNS: tuple[str, ...] = ("val_loss", "val_error")  # present only when the run holds out a validation split
# gradients.csv: per epoch and weight layer (1..depth in forward order, the FC last), the L2 norms of the weight's
# loss gradient and of the weight, averaged over the steps the epoch sampled (resdepth/train/gradients.py says which).
GRADIENT_COLUMNS: tuple[str, ...] = ("epoch", "iteration", "layer", "name", "grad_norm", "weight_norm", "sampled_steps")

WORKER_LOG = "worker.log"  # a worker process's output, in its job's first run folder
CONFIG_FILE, METRICS_FILE, STATUS_FILE, CHECKPOINT_FILE, LOCK_FILE, ERROR_FILE = (
    "config.json", "metrics.csv", "status.json", "checkpoint.pt", "lock", "error.txt",
)
# What training adds to a run's config.json beside the TrainConfig fields: the values as they took effect
# (iterations, milestones, sizes, params), the machine it ran on, and the fused group it trained in (--fuse).
RUN_CONFIG_SECTIONS = frozenset({"resolved", "environment", "fused", "attempts"})


def recorded_attempts(config: dict[str, Any]) -> list[dict[str, Any]]:
    """config.json's attempts (each start or resume), those that are JSON objects; a config.json written before
    attempts were recorded gives its machine as one attempt of unknown start (from_iteration None)."""
    attempts = config.get("attempts")
    if isinstance(attempts, list):
        return [attempt for attempt in attempts if isinstance(attempt, dict)]
    machine = config.get("environment")
    return [{"from_iteration": None, "environment": machine}] if isinstance(machine, dict) else []

GRADIENTS_FILE = "gradients.csv"
CONSTRUCTED_KEY = "constructed_from"  # config.json of a net `resdepth construct` built: a starting point, not a run
# A run is pending, running, interrupted (resumable), or in one of these:
TERMINAL_STATES = ("done", "failed", "diverged")  # not run again unless asked (--retry-failed)


# C0 and C1 controls but tab and newline (ESC starts escape sequences), and the bidirectional controls, which make a
# terminal show text in another order than it is (a name that reads as another)
CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def printable(text: str) -> str:
    """Text as a terminal or a figure may show it: control characters (escape sequences that set a terminal's title,
    write its clipboard or move its cursor) and bidirectional controls left out, and what no encoding can hold (a
    lone surrogate from a folder's JSON) escaped. Values read from a results folder are anyone's text."""
    return CONTROL.sub("", text).encode("utf-8", "backslashreplace").decode("utf-8")


def metric_columns(with_validation: bool) -> list[str]:
    columns = list(METRIC_COLUMNS)
    if with_validation:
        columns[7:7] = VAL_COLUMNS  # keep timing columns last
    return columns


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a temp file in the same folder, fsync, then rename: a reader never sees half a file. The file gets
    the mode a plain open() gives under the user's umask (mkstemp's 0600 would hide a shared results folder from
    the colleagues the umask lets read it)."""
    replace_all([(write_temp_beside(path, data), path)])


def write_temp_beside(path: Path, data: bytes) -> Path:
    """data in a new temp file beside path, on the disk (fsync), for `replace_all` to put in place."""
    fd, tmp = create_temp_beside(path)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return tmp


def replace_all(staged: list[tuple[Path, Path]]) -> None:
    """Each (temp file, path): the temp file renamed over its path; those not renamed yet are removed if one fails."""
    try:
        for tmp, path in staged:
            os.replace(tmp, path)
    except BaseException:
        discard(staged)
        raise


def discard(staged: list[tuple[Path, Path]]) -> None:
    for tmp, _ in staged:
        tmp.unlink(missing_ok=True)


TEMP_NAME = re.compile(r"\..+\.[0-9a-f]{8}\.tmp")  # create_temp_beside's names: .<file>.<8 hex digits>.tmp


def remove_leftover_temps(folder: Path) -> None:
    """The temp files of atomic writes a kill cut short (the files they were to replace are intact)."""
    for leftover in folder.glob(".*.tmp"):
        if TEMP_NAME.fullmatch(leftover.name):
            leftover.unlink(missing_ok=True)


def stage_all(writes: list[tuple[Path, Callable[[], bytes]]]) -> list[tuple[Path, Path]]:
    """Each (path, data) written to a temp file beside its path, all on the disk before `replace_all` puts any in
    place; if one fails, those written are removed."""
    staged: list[tuple[Path, Path]] = []
    try:
        for path, data in writes:
            staged.append((write_temp_beside(path, data()), path))
    except BaseException:
        discard(staged)
        raise
    return staged


def create_temp_beside(path: Path) -> tuple[int, Path]:
    """A new, exclusively created temp file next to path, opened for writing with mode 0666 less the umask (the
    kernel applies the umask, so nothing has to read it)."""
    for _ in range(100):
        tmp = path.parent / f".{path.name}.{secrets.token_hex(4)}.tmp"
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666), tmp
        except FileExistsError:
            continue
    raise FileExistsError(f"no free temporary name beside {path}")


def write_json(path: Path, payload: dict[str, Any]) -> None:
    """In the payload's own order: a sweep's grid keys in the order they were given, which its folder names follow."""
    atomic_write_bytes(path, (json.dumps(payload, indent=2, default=str) + "\n").encode())


# The most resdepth ever writes into each kind of file, with room to spare: a larger file is not one of its own, and
# is refused before it is read (a 2 GB sparse metrics.csv would otherwise be read whole).
MAX_JSON_BYTES = 16 * 2**20  # config.json and status.json are a few kB; sweep.json of the largest grid < 1 MB
MAX_CSV_BYTES = 256 * 2**20  # metrics.csv: ~100 B an epoch; gradients.csv: ~60 B a layer and epoch (~20 MB at 1202)
MAX_FIGURE_BYTES = 64 * 2**20  # a PNG that `analyze` drew
MAX_CHECKPOINT_BYTES = 4 * 2**30  # ResNet-1202's weights and momentum: ~160 MB


def open_folder_file(path: Path, limit: int) -> BinaryIO:
    """A file of a results folder opened for reading, refused in one line when it is a link (which may lead out of the
    folder), not a regular file (a FIFO would block) or larger than `limit` bytes: before anything is read from it.
    A missing file raises FileNotFoundError."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise UserError(f"{path} is a link: resdepth reads only regular files inside a results folder (a link may "
                            "lead out of it); put the file itself there") from None
        raise
    handle = os.fdopen(fd, "rb")
    info = os.fstat(fd)
    problem = ("is not a regular file" if not stat.S_ISREG(info.st_mode) else
               f"is {info.st_size / 2**20:,.0f} MiB, more than resdepth ever writes there ({limit / 2**20:,.0f} MiB)"
               if info.st_size > limit else None)
    if problem:
        handle.close()
        raise UserError(f"{path} {problem}: it is not one of resdepth's files; left unread")
    return handle


def read_folder_file(path: Path, limit: int) -> bytes:
    """The bytes of a regular file inside a results folder, at most `limit` of them (see open_folder_file)."""
    with open_folder_file(path, limit) as handle:
        data = handle.read(limit + 1)
    if len(data) > limit:  # it grew after it was measured
        raise UserError(f"{path} grew past {limit / 2**20:,.0f} MiB while it was read: left unread")
    return data


def read_json(path: Path) -> Any:
    """A JSON file's value; None when it is missing or not JSON (a nesting deeper than the parser's stack too); a
    UserError when it is a link, or larger than any resdepth writes."""
    try:
        return json.loads(read_folder_file(path, MAX_JSON_BYTES))
    except (OSError, ValueError, RecursionError):
        return None


def sync_file(path: Path) -> None:
    """Make what was appended to path durable (fsync), e.g. a run's rows before the checkpoint that counts them."""
    if path.is_file():
        with path.open("rb") as handle:
            os.fsync(handle.fileno())


class MetricsWriter:
    """Appends one row per epoch to metrics.csv. Each row reaches the OS at once (a killed process loses none);
    the run makes the rows durable against a power loss (`sync_file`) before each checkpoint that counts them:
    fsyncing every row would cost a GPU run a share of its time for rows a resume redoes anyway."""

    def __init__(self, path: Path, columns: list[str], keep_rows: int = 0):
        self.path, self.columns = path, columns
        truncate_csv(path, keep_rows, columns, required=True)
        self.rows = keep_rows

    def append(self, row: dict[str, float | int]) -> None:
        with open_to_append(self.path) as handle:
            writer = csv.DictWriter(handle, fieldnames=self.columns, lineterminator="\n")
            writer.writerow({k: row.get(k, "") for k in self.columns})
        self.rows += 1


def truncate_csv(path: Path, keep_rows: int, columns: list[str], required: bool = False) -> None:
    """Keep the header and the first keep_rows rows: rows written after the last checkpoint are redone on resume.
    A link or a FIFO in the file's place is refused, not read (it could copy a file from outside into the folder).
    required: the file must hold those rows (metrics.csv; a run of an older resdepth may lack gradients.csv)."""
    lines: list[str] = []
    present = False
    if keep_rows:
        try:
            lines = read_folder_file(path, MAX_CSV_BYTES).decode(errors="replace").splitlines(keepends=True)
            present = True
        except FileNotFoundError:
            pass
    kept = lines[1:keep_rows + 1]
    if present or required:
        check_kept_rows(path, kept, keep_rows, columns)
    header = ",".join(columns) + "\n"
    atomic_write_bytes(path, (header + "".join(kept)).encode())


def check_kept_rows(path: Path, kept: list[str], keep_rows: int, columns: list[str]) -> None:
    """The rows a resume keeps must be the rows its checkpoint counts: as many, each of the file's columns and
    starting with its epoch. A file damaged or cut short is refused rather than carried on into the results."""
    fix = f"restore it, or delete {CHECKPOINT_FILE} and rerun (a sweep: with --retry-failed) to start the run over"
    if len(kept) < keep_rows:
        raise UserError(f"{path} holds {len(kept)} of the {keep_rows} rows its checkpoint counts: {fix}")
    for number, fields in enumerate(csv.reader(kept), start=2):
        if len(fields) != len(columns) or not digits(fields[0]):
            raise UserError(f"{path} is damaged at line {number} ({shown_line(','.join(fields))}): {fix}")


def shown_line(text: str) -> str:
    printable = "".join(char if char.isprintable() else "?" for char in text)
    return printable if len(printable) <= 60 else printable[:57] + "..."


def open_to_append(path: Path) -> TextIO:
    """A run's CSV opened to add rows; a link put in its place is refused (ELOOP), not written through."""
    return os.fdopen(os.open(path, os.O_WRONLY | os.O_APPEND | getattr(os, "O_NOFOLLOW", 0)), "a", newline="")


@dataclass
class RunStatus:
    """What status.json says: the state and the live progress that displays poll."""

    state: str = "pending"
    epoch: int = 0
    epochs: int = 0
    iteration: int = 0
    iterations: int = 0
    train_error: float | None = None  # of the last finished epoch, as metrics.csv has it
    test_error: float | None = None
    live_train_error: float | None = None  # so far in the epoch being trained (None between epochs)
    images_per_second: float | None = None
    warmup_end_iteration: int | None = None  # the iteration after which the lr left the warm-up lr
    # threshold (training error below the bound, §4.2) or cap (--warmup-max-iterations)
    warmup_end_reason: str | None = None
    error: str | None = None
    # where this attempt started: a resumed run's checkpoint (0, 0: from the start)
    started_epoch: int = 0
    started_iteration: int = 0
    # the last checkpoint's iteration, where a resume starts: after a kill, `iteration` may be steps past it
    saved_iteration: int | None = None
    host: str = field(default_factory=socket.gethostname)
    pid: int = field(default_factory=os.getpid)
    device: str = ""
    # seconds since 1970 (time.time()); read back, 0.0 where status.json holds no time a clock can show (`known`)
    started: float = field(default_factory=time.time)
    updated: float = field(default_factory=time.time)

    @classmethod
    def read(cls, run_dir: Path) -> RunStatus | None:
        """The run's status.json (None while there is none, or it is not JSON); its keys of other versions are left
        out, a value of the wrong type is a UserError naming the file and the key."""
        path = run_dir / STATUS_FILE
        payload = read_json(path)
        if payload is None:
            return None
        if not isinstance(payload, dict):
            raise UserError(f"{path} is not a run's status (a JSON object), got a {type(payload).__name__}")
        status = from_dict(cls, payload, str(path), ignore=frozenset(payload) - set(cls.__dataclass_fields__))
        return status.known(time.time())

    def known(self, now: float) -> RunStatus:
        """This status with each number no run writes taken as not known, in place: an error or a speed that is NaN or
        infinite as None; a count that is negative or past MAX_COUNT as 0 (None where it may be None); a time that is
        not finite, before 1970, or more than CLOCK_SKEW_SECONDS ahead of `now` as 0.0, which is never fresh (a
        planted `updated` far ahead would keep the run's lock from ever going stale). The numbers of a planted or
        damaged status.json then reach no loop, no clock arithmetic and no display as more than unknown."""
        for name in ("train_error", "test_error", "live_train_error", "images_per_second"):
            value = getattr(self, name)
            if value is not None and not math.isfinite(value):
                setattr(self, name, None)
        for name in ("epoch", "epochs", "iteration", "iterations", "started_epoch", "started_iteration",
                     "saved_iteration", "warmup_end_iteration"):
            value = getattr(self, name)
            if value is not None and not 0 <= value <= MAX_COUNT:
                setattr(self, name, None if name in ("saved_iteration", "warmup_end_iteration") else 0)
        if not known_time(self.started, now):
            self.started = 0.0
        if not known_time(self.updated, now):
            self.updated = 0.0
        return self

    @classmethod
    def read_or_none(cls, run_dir: Path) -> RunStatus | None:
        """read(), with a status.json of the wrong shape taken as none: for the sweep's own bookkeeping, which rewrites
        it or only shows it (the commands that judge a run from it use read(), and say what is wrong)."""
        try:
            return cls.read(run_dir)
        except UserError:
            return None

    def write(self, run_dir: Path) -> None:
        self.updated = time.time()
        write_json(run_dir / STATUS_FILE, self.__dict__)

    def update(self, run_dir: Path, **values: Any) -> None:
        """Set some fields and write the file."""
        for key, value in values.items():
            setattr(self, key, value)
        self.write(run_dir)


@dataclass
class Run:
    """One run folder as read back for plots and tables."""

    path: Path
    config: dict[str, Any]
    metrics: pd.DataFrame
    status: str
    warmup_end_iteration: int | None = None  # from status.json: how the warm-up ended, if it did
    warmup_end_reason: str | None = None
    error: str | None = None  # from status.json: why it failed or diverged

    @property
    def finished(self) -> bool:
        return self.status == "done"

    def __repr__(self) -> str:  # the whole config and metrics filled a notebook's screen per run
        return f"Run({str(self.path)!r}, status={self.status!r}, epochs={len(self.metrics)})"

    def setting(self, key: str, default: Any = None) -> Any:
        """A config value, looking into the nested data section too (config['data'][key])."""
        if key in self.config:
            return self.config[key]
        return self.config.get("data", {}).get(key, default)


def is_run_dir(path: Path) -> bool:
    return (path / CONFIG_FILE).is_file()


REPLACED_MARK = ".replaced-"  # `sweep --force` keeps a superseded run as <name>.replaced-<time>


OUTPUT_FOLDERS = ("plots", "analysis", "lesion", "landscape")  # what plot, analyze, lesion, landscape write by default


@dataclass
class FolderScan:
    """What a results folder holds: its run folders, the ones --force replaced (read only when named), and the links
    to folders inside it, never followed (a link may lead out of the folder, or make one run two)."""

    runs: list[Path]
    replaced: list[Path]
    links: list[Path]


def scan_results(root: Path) -> FolderScan:
    """Every folder under root that holds a config.json, walked without recursion (a planted tree of any depth is
    only slow) and without entering links or hidden folders."""
    if is_run_dir(root):
        return FolderScan([root], [], [])
    found, links, waiting = [], [], [root]
    while waiting:
        folder = waiting.pop()
        try:
            entries = list(os.scandir(folder))
        except OSError:
            continue  # unreadable: what it holds cannot be read either
        for entry in entries:
            if entry.name == CONFIG_FILE and folder != root:
                found.append(folder)
            elif not entry.name.startswith(".") and entry.is_dir(follow_symlinks=True):
                if not entry.is_symlink():
                    waiting.append(Path(entry.path))
                elif entry.name not in OUTPUT_FOLDERS:  # those: the commands that write or embed them say
                    links.append(Path(entry.path))
    found.sort()
    replaced = [p for p in found if any(REPLACED_MARK in part for part in p.parts[len(root.parts):])]
    return FolderScan([p for p in found if p not in replaced], replaced, sorted(links))


def find_run_dirs(root: Path) -> tuple[list[Path], list[Path]]:
    """The run folders under root, and apart from them the ones --force replaced (read only when named)."""
    scan = scan_results(root)
    return scan.runs, scan.replaced


def read_metrics(path: Path) -> tuple[pd.DataFrame, str | None]:
    """metrics.csv as a DataFrame, and a note when a last line cut short (a write killed midway) was left out.
    Raises ValueError when the file is missing, empty, lacks the schema's columns or has a broken line elsewhere."""
    if not path.is_file():
        raise ValueError(f"{path} is missing")
    try:
        lines = list(csv.reader(io.StringIO(read_folder_file(path, MAX_CSV_BYTES).decode())))
    except UserError as exc:
        raise ValueError(str(exc)) from None
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise ValueError(f"{path} is not a readable CSV ({exc.__class__.__name__})") from None
    lines = [line for line in lines if line]
    if not lines:
        raise ValueError(f"{path} is empty")
    header, body, note = lines[0], lines[1:], None
    repeated = [c for c in dict.fromkeys(header) if header.count(c) > 1]
    if repeated:
        raise ValueError(f"{path} names the column {repeated[0]} twice")
    missing = [c for c in METRIC_COLUMNS if c not in header]
    if missing:
        raise ValueError(f"{path} lacks the columns {', '.join(missing)}")
    broken = [number for number, line in enumerate(body, start=2) if len(line) != len(header)]
    if broken == [len(body) + 1]:
        body, note = body[:-1], f"left out the last line of {path}: {len(lines[-1])} of {len(header)} fields, cut short"
    elif broken:
        raise ValueError(f"{path} line {broken[0]} has {len(lines[broken[0] - 1])} fields, not {len(header)}")
    if not body:
        raise ValueError(f"{path} has no epochs yet")
    frame = pd.DataFrame(body, columns=header).apply(pd.to_numeric, errors="coerce")
    counts = frame[["epoch", "iteration"]]
    if counts.isna().any().any() or not counts.abs().le(2**53).all().all():  # 1e400 and inf are not counts either
        raise ValueError(f"{path} has an epoch or iteration that is not a number")
    return frame, note


def load_runs(root: Path | str) -> tuple[list[Run], list[str]]:
    """Every readable run under root (recursively) and one warning line per run folder that was skipped;
    a UserError when there is no readable run (nothing to plot or tabulate)."""
    root = Path(root)
    if not root.exists():
        raise UserError(f"results folder {root} does not exist: pass the --out folder of a sweep, e.g. results/")
    scan = scan_results(root)
    run_dirs, replaced = scan.runs, scan.replaced
    runs, constructed = [], []
    warnings = [f"left out {link}: a link to a folder; resdepth reads a results folder only through folders of its "
                "own (a link may lead out of it): move the folder in, or name it" for link in scan.links]
    for run_dir in run_dirs:
        try:
            run = read_run(run_dir, warnings)
        except (UserError, ValueError) as exc:
            warnings.append(f"skipped {run_dir}: {exc}")
            continue
        if run is None:
            constructed.append(run_dir)  # a net built by `resdepth construct`, not trained here
        else:
            runs.append(run)
    if not runs and not warnings and constructed:
        raise UserError(f"{root} holds only nets built by `resdepth construct`, no trained runs: train from one "
                        "with --init")
    if not runs and not warnings:
        raise UserError(f"no runs found under {root}: a run folder holds config.json and metrics.csv "
                        "(run `resdepth sweep` first)")
    if not runs:
        raise UserError(f"no readable runs under {root}: {len(warnings)} run folder(s), all skipped "
                        f"(first: {warnings[0].removeprefix('skipped ')})")
    if constructed:
        warnings.append(f"left out {len(constructed)} constructed net(s) (resdepth construct, e.g. {constructed[0]}): "
                        "not trained runs; train from one with --init")
    if replaced:
        warnings.append(f"left out {len(replaced)} run folder(s) that sweep --force replaced (*{REPLACED_MARK}*, e.g. "
                        f"{replaced[0]}): name one to read it")
    runs, repeated = without_repeats(runs)
    return runs, warnings + repeated


def without_repeats(runs: list[Run]) -> tuple[list[Run], list[str]]:
    """The runs with each experiment once: two runs of one group (the table's notion of one setting: protocol,
    resolved precision, network version, split sizes, ...) with the same seed and the same --init weights are one
    seed, not two (trained twice under two folder names, e.g. before and after a --grid axis named the default's
    value, or a copy). The complete one is kept, else the shallowest, then the first by folder; a note names each
    one left out."""
    from .groups import group_runs, is_complete

    kept: dict[str, Run] = {}
    notes = []
    for key, group in group_runs(runs).items():
        for run in sorted(group, key=lambda r: (not is_complete(r), len(r.path.parts), str(r.path))):
            init = (run.config.get("resolved") or {}).get("init")
            same = json.dumps([str(key), run.setting("seed"), init.get("sha256") if isinstance(init, dict) else
                               None], default=str)
            if same in kept:
                notes.append(f"left out {run.path}: the same config and seed as {kept[same].path} (trained twice, "
                             "or a copy), counted once")
            else:
                kept[same] = run
    chosen = {id(run) for run in kept.values()}
    return [run for run in runs if id(run) in chosen], notes


def read_run(run_dir: Path, notes: list[str]) -> Run | None:
    """One run folder as its files say, checked against their schemas (a UserError or ValueError naming the file
    and the key otherwise); None for a net `resdepth construct` built (no metrics: not a trained run)."""
    config = read_json(run_dir / CONFIG_FILE)
    if isinstance(config, dict) and CONSTRUCTED_KEY in config and not (run_dir / METRICS_FILE).exists():
        return None
    problem = "config.json is not valid JSON" if config is None else config_problem(config)
    if problem:
        raise UserError(problem)
    config = {key: value for key, value in config.items() if not (key in SECTIONS and value is None)}  # null: absent
    metrics, note = read_metrics(run_dir / METRICS_FILE)
    if note:
        notes.append(note)
    status = RunStatus.read(run_dir)
    state = status.state if status else "unknown"
    if status and state == "running" and writer_gone(status, time.time()):
        state = STOPPED  # killed, or its node lost: `status` says the same
    error = status.error if status and isinstance(status.error, str) else None
    return Run(run_dir, config, metrics, state, *warmup_end(status), error=error)


STOPPED = "stopped"  # status.json says running, but its process is gone (killed, node lost): resume it
STALE_FOREIGN_LOCK_SECONDS = 900  # a run on another host that shows no progress for this long is dead
CLOCK_SKEW_SECONDS = 3600  # a status.json time further ahead of this machine's clock was not written by a live run
# (an hour: far past any synced clock's skew between nodes, whose live runs must never look stopped)
MAX_COUNT = 2**40  # more epochs or iterations than any run makes (a year of 30,000 steps a second)


def known_time(value: float, now: float) -> bool:
    """Whether a status.json time is one a run wrote: finite, after 1970, and not ahead of `now` by more than the
    clocks of two machines differ."""
    return math.isfinite(value) and 0 < value <= now + CLOCK_SKEW_SECONDS


def writer_gone(status: RunStatus, now: float) -> bool:
    """Whether the process that wrote 'running' is gone: on this host, its pid is; on another, it has written
    nothing for STALE_FOREIGN_LOCK_SECONDS."""
    if status.host == socket.gethostname():
        return not pid_alive(status.pid)
    return not known_time(status.updated, now) or now - status.updated >= STALE_FOREIGN_LOCK_SECONDS


def pid_alive(pid: int) -> bool:
    if not 0 < pid < 2**31:  # no process has it (and os.kill cannot take a pid past the OS's)
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def warmup_end(status: RunStatus | None) -> tuple[int | None, str | None]:
    """(iteration, reason) of a warm-up that ended. Runs of versions without the cap record no reason: theirs
    could only end at the threshold."""
    if status is None or status.warmup_end_iteration is None:
        return None, None
    return status.warmup_end_iteration, status.warmup_end_reason or "threshold"


# config.json as the readers (table, plot, report, status, analyze) use it: each key they read, with its type (the
# TrainConfig, DataConfig and describe_run types; a test holds them equal). A key left out is fine (hand-made and
# older configs); a value of another type makes the run unreadable, and the warning names the key.
RUN_CONFIG_TYPES: dict[str, Any] = {
    "kind": str, "depth": int, "seed": int, "shortcut": str | None, "batch_size": int, "iterations": int,
    "epochs": int | None, "lr": float, "momentum": float, "weight_decay": float, "lr_milestones": tuple[float, ...],
    "precision": str, "warmup": str, "warmup_min_depth": int, "warmup_lr": float, "warmup_until_error": float | None,
    "warmup_max_iterations": int | None, "init": str | None, "options": dict[str, int | float | str | bool]}
DATA_CONFIG_TYPES: dict[str, Any] = {
    "dataset": str, "dataset_name": str | None, "data_dir": str | None, "train_size": int | None,
    "test_size": int | None, "val_size": int, "split_seed": int, "augment": bool, "synthetic_train": int,
    "synthetic_test": int}
RESOLVED_TYPES: dict[str, Any] = {
    "iterations": int, "steps_per_epoch": int, "epochs": int, "warmup": bool, "precision": str, "train_size": int,
    "test_size": int, "val_size": int, "num_classes": int, "params": int | None}
SECTIONS = ("data", "resolved", "environment", "fused", "family")  # JSON objects where present


def check_run_config(config: Any, where: str) -> None:
    """A run's config.json against RUN_CONFIG_TYPES: a UserError naming the file and the key otherwise."""
    if not isinstance(config, dict):
        raise UserError(f"{where} is not a resdepth config (a JSON object with a data object)")
    resolved = config.get("resolved")
    for name, section in (*((n, config.get(n)) for n in SECTIONS[:4]),
                          ("resolved.family", resolved.get("family") if isinstance(resolved, dict) else None)):
        if section is not None and not isinstance(section, dict):
            raise UserError(f"{where}: key {name}: expected a JSON object, got {type(section).__name__}")
    schemas = ((RUN_CONFIG_TYPES, config, ""), (DATA_CONFIG_TYPES, config.get("data") or {}, "data."),
               (RESOLVED_TYPES, resolved or {}, "resolved."))
    for types, values, prefix in schemas:
        for key, hint in types.items():
            if values.get(key) is not None:
                check_type(values[key], hint, f"{where}: key {prefix}{key}")


def config_problem(config: Any) -> str | None:
    """What makes a config.json unusable for grouping runs (hand-edited or foreign files), or None."""
    try:
        check_run_config(config, CONFIG_FILE)
    except UserError as exc:
        return str(exc)
    return None


def write_config(run_dir: Path, config: dict[str, Any]) -> None:
    write_json(run_dir / CONFIG_FILE, config)


def own_output_dir(path: Path) -> Path:
    """A folder inside a results folder that a command writes into by default (plots/, analysis/); refused when it
    is a link, whose target may lie outside the folder."""
    if path.is_symlink():
        raise UserError(f"{path} is a link: resdepth writes into a results folder only through folders of its own (a "
                        "link may lead out of it); remove the link, or name a folder with --out")
    return path


def ensure_writable_dir(path: Path) -> None:
    """Create path (and parents) or raise a UserError that says why it cannot be used."""
    check_writable_dir(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise UserError(f"cannot write results to {path} ({exc.strerror or exc}): choose another --out "
                        "folder") from None


def check_writable_dir(path: Path) -> None:
    """What ensure_writable_dir would refuse, told without creating anything (a dry run): the nearest existing
    folder on the way must be a folder this process may write in."""
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    reason = None
    if existing.exists() and not existing.is_dir():
        reason = f"{existing} is not a folder"
    elif not os.access(existing, os.W_OK | os.X_OK):
        reason = f"no permission to write in {existing}"
    if reason:
        raise UserError(f"cannot write results to {path} ({reason}): choose another --out folder")


# ---------------------------------------------------------------------------------------------- checkpoints
RESUME_FIX = "delete it and rerun with --retry-failed to start this run over"


def read_checkpoint(path: Path, fix: str = RESUME_FIX) -> dict[str, Any]:
    """A checkpoint's contents on the CPU, read without running any code it may carry (`weights_only=True`); a
    UserError naming the file, why it cannot be used and `fix` (what to do) otherwise.

    Always onto the CPU whatever the training device: the RNG states must be CPU byte tensors to be restored,
    and `load_state_dict` moves everything else to the run's device.
    """
    try:
        with open_folder_file(path, MAX_CHECKPOINT_BYTES) as handle:
            check_unpacked_size(handle, path, fix)
            state = torch.load(handle, map_location="cpu", weights_only=True)
    except UserError:
        raise
    except pickle.UnpicklingError as exc:
        refused = refused_global(exc)
        if refused:  # a pickle of objects, not plain data: foreign, or made to run code
            raise UserError(f"{path} is not a resdepth checkpoint, or one made to run code (the safe loader refused "
                            f"{refused}; nothing in it was run): {fix}") from None
        raise UserError(f"{path} cannot be read (not a checkpoint): {fix}") from None
    except Exception as exc:  # noqa: BLE001 - truncated, overwritten or foreign: all mean the same to the user
        raise UserError(f"{path} cannot be read ({type(exc).__name__}): {fix}") from None
    if not isinstance(state, dict) or not isinstance(state.get("model"), dict):
        raise UserError(f"{path} is not a resdepth checkpoint (no model weights in it): {fix}")
    return state


def check_unpacked_size(handle: BinaryIO, path: Path, fix: str, limit: int = MAX_CHECKPOINT_BYTES) -> None:
    """Refuse a torch file whose zip declares more than `limit` bytes unpacked, or compressed members (torch
    stores them as they are): a 2 MB deflate bomb is refused before anything is inflated. Leaves handle at 0."""
    try:
        members = zipfile.ZipFile(handle).infolist()
    except (zipfile.BadZipFile, OSError, ValueError):
        raise UserError(f"{path} cannot be read (not a checkpoint): {fix}") from None
    unpacked = sum(member.file_size for member in members)
    if unpacked > limit or any(m.compress_type != zipfile.ZIP_STORED for m in members):
        raise UserError(f"{path} is not a checkpoint torch wrote (it declares {unpacked / 2**20:,.0f} MiB unpacked, "
                        "from compressed members): refused before unpacking it; " + fix)
    handle.seek(0)


def refused_global(exc: Exception) -> str | None:
    """The object a pickle named that torch's safe loader refused ('GLOBAL posix.system'), or None when the file
    was not a pickle of objects at all (truncated or foreign bytes)."""
    match = re.search(r"(?:unsupported|Unsupported global:) (GLOBAL [\w.]+)", str(exc))
    return match.group(1) if match else None
