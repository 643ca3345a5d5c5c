"""Reading a results or data folder never runs code: a checkpoint made to run code is refused by every entry point
that reads one, and image files that declare a huge size are refused before their pixels are decoded."""

import base64
import hashlib
import json
import os
import shutil
import socket
import struct
import sys
import zlib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
import torch

from resdepth.errors import UserError
from resdepth.results.runs import RunStatus, read_checkpoint
from resdepth.train.data import DataConfig, load_dataset


class RunsCode:
    """Unpickling this calls os.system, as an attacker's checkpoint would."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.fixture
def malicious_checkpoint(tmp_path):
    """A factory: replace a run folder's checkpoint by one whose pickle runs a command; returns the marker path
    that the command would create."""
    def plant(run_dir: Path) -> Path:
        marker = tmp_path / "code-ran"
        state = read_checkpoint(run_dir / "checkpoint.pt")
        state["model"] = RunsCode(marker)
        torch.save(state, run_dir / "checkpoint.pt")
        return marker
    return plant


REFUSAL = "is not a resdepth checkpoint, or one made to run code (the safe loader refused GLOBAL posix.system"


def test_the_safe_reader_refuses_it_and_runs_nothing(tmp_path, tiny_config, malicious_checkpoint):
    from resdepth.train.trainer import run_training

    seen: list[int] = []
    run_training(tiny_config(epochs=3), tmp_path / "run", should_stop=lambda: seen.append(1) or len(seen) > 5)
    marker = malicious_checkpoint(tmp_path / "run")
    with pytest.raises(UserError, match=r"checkpoint\.pt " + REFUSAL.replace("(", r"\(")):
        read_checkpoint(tmp_path / "run" / "checkpoint.pt")
    assert not marker.exists()


@pytest.mark.parametrize("how", ["resume", "retry-failed"])
def test_a_sweep_fails_the_cell_in_one_line_and_touches_nothing_else(tmp_path, run_cli, tiny_args, how,
                                                                   malicious_checkpoint):
    args = ["sweep", "--depths", "8", "--kind", "plain,residual", *tiny_args, "--epochs", "3", "--out", str(tmp_path)]
    assert run_cli(*args).code == 0
    victim = tmp_path / "plain-8-s0"
    RunStatus(state="interrupted" if how == "resume" else "failed").write(victim)
    marker = malicious_checkpoint(victim)
    before = {p.name: p.read_bytes() for p in victim.iterdir() if p.name not in ("status.json", "error.txt")}
    code, out, _ = run_cli(*args, *(["--retry-failed"] if how == "retry-failed" else []), columns=400)
    assert code == 1 and not marker.exists()  # a sweep cell: exit 1, and no code ran
    assert REFUSAL in " ".join(out.split())
    assert RunStatus.read(victim).state == "failed"
    after = {p.name: p.read_bytes() for p in victim.iterdir() if p.name not in ("status.json", "error.txt")}
    assert after == before  # the checkpoint, metrics and config are left as they were
    assert json.loads((tmp_path / "residual-8-s0" / "status.json").read_text())["state"] == "done"


def png_declaring(width: int, height: int) -> bytes:
    """A PNG header that declares width x height pixels, with no image data behind it."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b"")


@pytest.mark.parametrize("width, height, message", [
    (5000, 5000, "is 5000x5000; resdepth needs 32x32 images"),  # refused from the header: never decoded
    (60000, 60000, "declares an image too large to decode safely"),  # Pillow's own bomb guard, one line too
])
def test_an_image_declaring_a_huge_size_is_refused_before_decoding(tmp_path, width, height, message):
    from PIL import Image

    for split in ("train", "test"):
        for cls in ("cat", "dog"):
            (tmp_path / split / cls).mkdir(parents=True)
            Image.new("RGB", (32, 32), (200, 10, 10)).save(tmp_path / split / cls / "0.png")
    bomb = tmp_path / "train" / "cat" / "bomb.png"
    bomb.write_bytes(png_declaring(width, height))
    with pytest.raises(UserError, match=f"{bomb} {message}"):
        load_dataset(DataConfig(dataset="folder", data_dir=str(tmp_path)))


@pytest.fixture
def finished_plain_run(tmp_path, run_cli, tiny_args):
    """A finished plain-8 run folder (2 epochs of the tiny synthetic set)."""
    code, _, err = run_cli("train", "--kind", "plain", "--depth", "8", *tiny_args, "--epochs", "2", "--out",
                           str(tmp_path / "runs"))
    assert code == 0, err
    return tmp_path / "runs" / "plain-8-s0"


def test_construct_refuses_a_checkpoint_made_to_run_code(tmp_path, run_cli, finished_plain_run, malicious_checkpoint):
    marker = malicious_checkpoint(finished_plain_run)
    code, _, err = run_cli("construct", str(finished_plain_run), "--depth", "14", "--out", str(tmp_path / "built"))
    assert code == 2 and not marker.exists() and REFUSAL in " ".join(err.split())
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "built").exists()


def test_init_refuses_a_checkpoint_made_to_run_code(tmp_path, run_cli, tiny_args, finished_plain_run,
                                                   malicious_checkpoint):
    marker = malicious_checkpoint(finished_plain_run)
    code, _, err = run_cli("train", "--kind", "plain", "--depth", "8", *tiny_args, "--epochs", "1", "--init",
                           str(finished_plain_run), "--out", str(tmp_path / "from"))
    assert code == 2 and not marker.exists() and REFUSAL in " ".join(err.split())
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "from").exists()


# ---------------------------------------------------------------------------------------------- a planted folder
# Every test below starts from the results folder of a real tiny sweep (plain-8 and residual-8, one epoch), copies
# it, tampers with it as someone who can write a shared folder would, and runs the reading commands on it: nothing
# may run (a marker file stays absent), nothing outside the folder may change (checksums), every refusal is one line.
READING = ("table", "plot", "report", "status", "analyze")


@pytest.fixture(scope="module")
def swept_folder(tmp_path_factory) -> Path:
    from typer.testing import CliRunner

    from resdepth.cli.app import app

    out = tmp_path_factory.mktemp("swept") / "results"
    args = ["sweep", "--depths", "8", "--kind", "plain,residual", "--dataset", "synthetic", "--synthetic-train", "128",
            "--synthetic-test", "64", "--batch-size", "32", "--threads", "1", "--device", "cpu", "--epochs", "1",
            "--out", str(out)]
    result = CliRunner().invoke(app, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return out


@dataclass
class Planted:
    results: Path  # the copied results folder
    outside: Path  # files beside it that no command may change
    marker: Path  # created by any planted code that runs

    def checksums(self) -> dict[str, str]:
        return {str(p.relative_to(self.outside)): hashlib.sha256(p.read_bytes()).hexdigest()
                for p in sorted(self.outside.rglob("*")) if p.is_file()}


@pytest.fixture
def planted(tmp_path, swept_folder, monkeypatch) -> Planted:
    """A copy of the swept folder, a folder of private files beside it, a module `evil_mod` planted in the folder
    (it creates the marker when imported) and the folder as the working directory, as a user inside it would be."""
    results = tmp_path / "results"
    shutil.copytree(swept_folder, results, symlinks=True)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "private.txt").write_text("a private file\n")
    (outside / "figure6-synthetic.png").write_bytes(b"\x89PNG not a figure, a private file")
    marker = tmp_path / "code-ran"
    (results / "evil_mod.py").write_text(f"import pathlib\npathlib.Path({str(marker)!r}).touch()\n"
                                         "def build(depth, num_classes=10):\n    raise SystemExit\n")
    monkeypatch.chdir(results)
    return Planted(results, outside, marker)


def edit_json(path: Path, **changes: Any) -> None:
    payload = json.loads(path.read_text())
    for dotted, value in changes.items():
        *parents, key = dotted.split("__")
        target = payload
        for parent in parents:
            target = target[parent]
        target[key] = value
    path.write_text(json.dumps(payload))


def one_line_refusal(result, *words: str) -> None:
    code, out, err = result
    assert code == 2 and "Traceback" not in out + err, (code, out, err)
    assert len(err.strip().splitlines()) == 1, err
    for word in words:
        assert word in " ".join(err.split()), err


def run_reading(run_cli, results: Path, command: str):
    extra = {"plot": ["--out", str(results / "figures")], "report": ["--out", str(results / "report.html")]}
    return run_cli(command, str(results), *extra.get(command, []), columns=400)


def test_a_family_named_by_the_folder_is_never_imported(planted, run_cli, tiny_args):
    """config.json and a checkpoint name a module planted in the folder (the working directory): reading commands
    label the run from its record, and construct, analyze and --init refuse to build it, in one line."""
    before = planted.checksums()
    victim = planted.results / "plain-8-s0"
    edit_json(victim / "config.json", kind="evil_mod:build")
    for command in READING:
        code, out, err = run_reading(run_cli, planted.results, command)
        assert code == 0 and "Traceback" not in out + err, (command, out, err)
    one_line_refusal(run_cli("construct", str(victim), "--depth", "14", "--out", str(planted.results / "built")),
                     "holds a evil_mod:build net (a family by import path, which resdepth never imports",
                     "plain and residual nets only")
    one_line_refusal(run_cli("train", "--kind", "plain", "--depth", "8", *tiny_args, "--epochs", "1", "--init",
                             str(victim), "--out", str(planted.results / "from")), "never imports code")
    state = torch.load(planted.results / "residual-8-s0" / "checkpoint.pt", weights_only=True)
    state["net"] = {"kind": "evil_mod:build", "depth": 8, "shortcut": None, "num_classes": 10}
    torch.save(state, planted.results / "named.pt")
    one_line_refusal(run_cli("train", "--kind", "residual", "--depth", "8", *tiny_args, "--epochs", "1", "--init",
                             str(planted.results / "named.pt"), "--out", str(planted.results / "from")),
                     "named.pt holds a evil_mod:build-8 net, not the residual-8")
    assert not planted.marker.exists() and "evil_mod" not in sys.modules
    assert planted.checksums() == before


def test_resume_takes_the_grid_from_sweep_json_but_never_how_to_execute(planted, run_cli):
    """sweep.json asks for Slurm with a setup line that would run as shell, and a Ray cluster elsewhere: --resume
    trains the saved grid (a seed added to it) here, says which settings it left out, and runs none of them."""
    before = planted.checksums()
    sweep_json = planted.results / "sweep.json"
    edit_json(sweep_json, seeds=[0, 1], executor="slurm", ray_address="203.0.113.1:6379",
              slurm__setup=[f"touch {planted.marker}"], slurm__cluster="local", slurm__partition="theirs")
    code, out, err = run_cli("sweep", "--resume", str(planted.results), columns=400)
    assert code == 0 and not planted.marker.exists(), (out, err)
    note = " ".join(err.split())
    assert "never takes how to execute from the folder's sweep.json" in note and "executor 'slurm'" in note
    assert "ray_address '203.0.113.1:6379'" in note and "touch" in note
    assert json.loads((planted.results / "plain-8-s1" / "status.json").read_text())["state"] == "done"
    assert not (planted.results / "slurm").exists()
    edit_json(sweep_json, kinds=["evil_mod:build"])
    one_line_refusal(run_cli("sweep", "--resume", str(planted.results), "--dry-run"),
                     "sweep.json names the family evil_mod:build by import path")
    assert not planted.marker.exists() and "evil_mod" not in sys.modules
    assert planted.checksums() == before


def test_a_family_by_path_is_not_looked_for_in_the_working_folder(planted, run_cli, tiny_args):
    one_line_refusal(run_cli("train", "--kind", "evil_mod:build", "--depth", "8", *tiny_args, "--out",
                             str(planted.results / "new")), "cannot import family evil_mod:build")
    assert not planted.marker.exists()


HOSTILE = "../../outside/$\\frac<script>alert(1)</script>\x1b]0;pwned\x07\x1b]52;c;c2VjcmV0\x07[/]\x9b2J"


def test_folder_values_reach_a_page_escaped_and_a_terminal_without_escape_sequences(planted, run_cli):
    """A dataset name, a state, an error and a host made of markup and terminal escapes (window title, clipboard,
    clear screen, and rich's own markup)."""
    before = planted.checksums()
    edit_json(planted.results / "plain-8-s0" / "config.json", data__dataset=HOSTILE)
    edit_json(planted.results / "residual-8-s0" / "status.json", state="failed", error=HOSTILE, host=HOSTILE)
    for command in READING[:4]:
        code, out, err = run_reading(run_cli, planted.results, command)
        assert code == 0 and "Traceback" not in out + err, (command, out, err)
        assert not any(c in out + err for c in "\x1b\x07\x9b"), (command, out + err)
    code, out, err = run_cli("table", str(planted.results), "--markdown", "--runs")
    assert code == 0 and not any(c in out + err for c in "\x1b\x07\x9b") and "alert(1)" in out
    assert "<script>" not in out and "&lt;script&gt;" in out  # Markdown shows the name, renders no HTML of it
    page = (planted.results / "report.html").read_text()
    assert "<script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert planted.checksums() == before


def test_names_and_numbers_no_figure_lock_or_family_record_can_take_are_shown_as_written(planted, run_cli):
    """A kind, a dataset and a setting with mathtext in them (matplotlib parsed them, or failed the drawing), a family
    record of infinite numbers, lock files of a pid and a time past the OS's: each command still ends as usual."""
    before = planted.checksums()
    for name in ("plain-8-s0", "residual-8-s0"):
        edit_json(planted.results / name / "config.json", kind="x$\\foo{$\x1b[2J", resolved__family__name="x$\\foo{$",
                  data__dataset="d$\\bar{$", resolved__family__stages=float("inf"))
        (planted.results / name / "lock").write_text(json.dumps({"pid": 10**30, "host": "elsewhere", "time": 1e400}))
    edit_json(planted.results / "residual-8-s0" / "config.json", lr=0.05)  # two settings: the by-setting figure
    for args in (["plot", str(planted.results), "--out", str(planted.results / "figures")],
                 ["report", str(planted.results), "--out", str(planted.results / "report.html")],
                 ["status", str(planted.results)]):
        code, out, err = run_cli(*args, columns=400)
        assert code == 0 and "Traceback" not in out + err and "\x1b" not in out + err, (args, out, err)
    from resdepth.sweep.cell import RunLock, describe_owner

    lock = RunLock(planted.results / "plain-8-s0")
    assert describe_owner(lock.owner()) == f"running elsewhere: pid {10**30} on elsewhere since ?"
    RunStatus.read(lock.path.parent).update(lock.path.parent)  # its run wrote a status just now
    assert not lock.is_stale()  # another host's: judged by the run's status.json
    (lock.path).write_text(json.dumps({"pid": 10**30, "host": socket.gethostname(), "time": 1.0}))
    assert lock.is_stale()  # no such process here
    assert "x$\\foo{$" in (planted.results / "report.html").read_text()
    assert not planted.marker.exists() and planted.checksums() == before


def set_metrics_cell(run_dir: Path, column: str, value: str) -> None:
    lines = (run_dir / "metrics.csv").read_text().splitlines()
    header = lines[0].split(",")
    row = lines[1].split(",")
    row[header.index(column)] = value
    (run_dir / "metrics.csv").write_text("\n".join([lines[0], ",".join(row), *lines[2:]]) + "\n")


def nest_net_kind(run_dir: Path) -> None:
    state = torch.load(run_dir / "checkpoint.pt", weights_only=True)
    state["net"] = {"kind": 5, "depth": 8, "shortcut": None, "num_classes": 10}
    torch.save(state, run_dir / "checkpoint.pt")


MALFORMED = {  # what is planted in plain-8-s0, and the words the one line (or the warning) must hold
    "status a list": (lambda d: (d / "status.json").write_text("[]"), "status.json is not a run's status"),
    "status epoch text": (lambda d: edit_json(d / "status.json", epoch="x"), "key epoch: expected int, got 'x'"),
    "resolved a list": (lambda d: edit_json(d / "config.json", resolved=[]), "key resolved: expected a JSON object"),
    "environment text": (lambda d: edit_json(d / "config.json", environment="x"),
                         "key environment: expected a JSON object"),
    "batch size text": (lambda d: edit_json(d / "config.json", batch_size="x"), "key batch_size: expected int"),
    "train size text": (lambda d: edit_json(d / "config.json", data__train_size="x"),
                        "key data.train_size: expected int or nothing"),
    "epoch inf": (lambda d: set_metrics_cell(d, "epoch", "inf"), "has an epoch or iteration that is not a number"),
    "column twice": (lambda d: (d / "metrics.csv").write_text("epoch," + (d / "metrics.csv").read_text()),
                     "names the column epoch twice"),
    "iteration 1e400": (lambda d: set_metrics_cell(d, "iteration", "1e400"),
                        "has an epoch or iteration that is not a number"),
    "deep JSON": (lambda d: (d / "config.json").write_text("[" * 200_000 + "]" * 200_000), "config.json"),
    "net kind a number": (nest_net_kind, "key net.kind: expected str, got 5"),
    # numbers past what numpy, pandas and the OS take: JSON's integers have no bound
    "depth 10**30": (lambda d: edit_json(d / "config.json", depth=10**30), "key depth: " + str(10**30) + " is out of"),
    "updated 10**400": (lambda d: edit_json(d / "status.json", updated=10**400), "key updated: 1000"),
}


@pytest.mark.parametrize("case", MALFORMED)
def test_a_malformed_file_is_one_line_naming_it_in_every_reading_command(planted, run_cli, tiny_args, case):
    plant, words = MALFORMED[case]
    victim = planted.results / "plain-8-s0"
    plant(victim)
    before = planted.checksums()
    commands = [[command, str(planted.results)] for command in READING] + [
        ["plot", str(planted.results), "--out", str(planted.results / "figures")],
        ["report", str(planted.results), "--out", str(planted.results / "report.html")],
        ["construct", str(victim), "--depth", "14", "--out", str(planted.results / "built")],
        ["train", "--kind", "plain", "--depth", "8", *tiny_args, "--epochs", "1", "--init", str(victim), "--out",
         str(planted.results / "from")],
        ["sweep", "--resume", str(planted.results), "--dry-run"]]
    named = 0
    for args in commands:
        code, out, err = run_cli(*args, columns=400)
        said = " ".join((out + err).split())
        assert code in (0, 2) and "Traceback" not in out + err, (args, code, out, err)
        if code == 2:
            assert len(err.strip().splitlines()) == 1, (args, err)
        named += words in said
    assert named, f"no command named the problem ({words})"
    assert not planted.marker.exists() and planted.checksums() == before


def test_the_readers_schema_of_config_json_is_the_configs_own():
    import typing

    from resdepth.results.runs import DATA_CONFIG_TYPES, RUN_CONFIG_TYPES
    from resdepth.train.data import DataConfig
    from resdepth.train.trainer import TrainConfig

    train, data = typing.get_type_hints(TrainConfig), typing.get_type_hints(DataConfig)
    assert {key: train[key] for key in RUN_CONFIG_TYPES} == RUN_CONFIG_TYPES
    assert data == DATA_CONFIG_TYPES


# ---------------------------------------------------------------------------------------------- links out of it
def test_links_in_the_folder_are_never_read_or_written_through(planted, run_cli):
    """A link named like an analysis figure (to a private file) is not embedded in the report; links in place of
    plot outputs are replaced, not written through; a linked plots/ folder is refused; a linked config.json is
    not read."""
    before = planted.checksums()
    private = planted.outside / "figure6-synthetic.png"
    (planted.results / "analysis").mkdir()
    (planted.results / "analysis" / "figure7-synthetic.png").symlink_to(private)
    (planted.results / "plots").mkdir()
    (planted.results / "plots" / "figure6-synthetic.png").symlink_to(private)
    (planted.results / "plots" / "figure1-plain-synthetic.png").symlink_to(planted.outside / "new.png")  # dangling
    code, out, err = run_cli("report", str(planted.results))
    assert code == 0 and "figure7-synthetic.png" in err and "is a link" in err
    page = (planted.results / "report.html").read_text()
    assert base64.b64encode(private.read_bytes()).decode() not in page and "figure7-synthetic" not in page.split(
        "id='warnings'")[0]
    code, out, err = run_cli("plot", str(planted.results), "--format", "png,svg")
    assert code == 0, err
    assert not (planted.results / "plots" / "figure6-synthetic.png").is_symlink()
    assert (planted.results / "plots" / "figure6-synthetic.png").read_bytes().startswith(b"\x89PNG\r\n")
    assert not (planted.outside / "new.png").exists()
    shutil.rmtree(planted.results / "plots")
    (planted.results / "plots").symlink_to(planted.outside)
    one_line_refusal(run_cli("plot", str(planted.results)), "plots is a link")
    for folder, command in (("analysis", ["analyze", str(planted.results)]),
                            ("lesion", ["lesion", str(planted.results)]),
                            ("landscape", ["landscape", str(planted.results / "residual-8-s0")])):
        shutil.rmtree(planted.results / folder, ignore_errors=True)
        (planted.results / folder).symlink_to(planted.outside)  # the folder each writes into by default
        one_line_refusal(run_cli(*command, "--device", "cpu"), f"{folder} is a link")
    config = planted.results / "residual-8-s0" / "config.json"
    shutil.copy(config, planted.outside / "config.json")
    config.unlink()
    config.symlink_to(planted.outside / "config.json")
    code, out, err = run_cli("table", str(planted.results))
    assert code == 0 and "residual-8-s0" in err and "is a link" in err and "| residual" not in out
    assert planted.checksums() == {**before, "config.json": planted.checksums()["config.json"]}


def test_a_worker_log_planted_as_a_link_is_replaced_not_appended_through(planted, run_cli, tiny_args):
    before = planted.checksums()
    for seed, target in ((1, planted.outside / "private.txt"), (2, planted.outside / "created.log")):
        (planted.results / f"plain-8-s{seed}").mkdir()
        (planted.results / f"plain-8-s{seed}" / "worker.log").symlink_to(target)
    code, out, err = run_cli("sweep", "--depths", "8", "--kind", "plain", "--seeds", "1,2", *tiny_args, "--epochs", "1",
                             "--executor", "local", "--out", str(planted.results))
    assert code == 0, out + err
    for seed in (1, 2):
        log = planted.results / f"plain-8-s{seed}" / "worker.log"
        assert log.is_file() and not log.is_symlink()
    assert not (planted.outside / "created.log").exists() and planted.checksums() == before


@pytest.mark.parametrize("plant", ["link", "fifo"])
def test_a_resumed_runs_csvs_planted_as_a_link_or_fifo_are_refused_not_copied_in_nor_blocking(tmp_path, plant):
    from resdepth.results.runs import METRIC_COLUMNS, MetricsWriter, open_to_append
    from resdepth.train.gradients import GradientLog

    outside = tmp_path / "private.csv"
    outside.write_text("a,private\nfile,outside\n")
    os.chmod(outside, 0o600)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    for name in ("metrics.csv", "gradients.csv"):
        path = run_dir / name
        if plant == "link":
            path.symlink_to(outside)
        else:
            os.mkfifo(path)  # opened without O_NONBLOCK it would wait for a writer forever
        word = "is a link" if plant == "link" else "is not a regular file"
        gradients = GradientLog([], torch.device("cpu"))
        gradients.rows = 1  # as a resumed run's checkpoint counts them
        with pytest.raises(UserError, match=word):
            MetricsWriter(path, list(METRIC_COLUMNS), keep_rows=1) if name == "metrics.csv" else gradients.open(path)
        assert outside.read_text() == "a,private\nfile,outside\n" and (path.is_symlink() or plant == "fifo")
    (run_dir / "metrics.csv").unlink()
    (run_dir / "metrics.csv").symlink_to(outside)
    with pytest.raises(OSError):  # a link put in place between two rows: not appended through
        open_to_append(run_dir / "metrics.csv")
    assert outside.read_text() == "a,private\nfile,outside\n"


# ---------------------------------------------------------------------------------------------- unbounded resources
def deflate_bomb(path: Path, unpacked: int) -> None:
    """A zip laid out like a torch checkpoint whose tensor data is `unpacked` zero bytes, deflated to a few kB."""
    import zipfile

    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("archive/data.pkl", b"\x80\x02}q\x00.")
        with archive.open("archive/data/0", "w", force_zip64=True) as member:
            chunk = bytes(2**20)
            for _ in range(unpacked // len(chunk)):
                member.write(chunk)


def test_sizes_depths_and_counts_are_bounded_before_anything_is_read_or_built(planted, run_cli, tiny_args):
    before = planted.checksums()
    metrics = planted.results / "plain-8-s0" / "metrics.csv"
    kept = metrics.read_bytes()
    with metrics.open("r+b") as handle:  # sparse: 300 MB that take no disk
        handle.truncate(300 * 2**20)
    code, _, err = run_cli("table", str(planted.results))
    assert code == 0 and "metrics.csv is 300 MiB, more than resdepth ever writes there" in " ".join(err.split())
    metrics.write_bytes(kept)
    deflate_bomb(planted.results / "bomb.pt", 64 * 2**20)
    for command in (["construct", str(planted.results / "bomb.pt"), "--depth", "14", "--out", str(planted.outside)],
                    ["train", "--kind", "plain", "--depth", "8", *tiny_args, "--init", str(planted.results / "bomb.pt"),
                     "--out", str(planted.outside)]):
        one_line_refusal(run_cli(*command), "bomb.pt")
    from resdepth.errors import UserError as Refused
    from resdepth.results.runs import read_checkpoint as read

    with pytest.raises(Refused, match="refused before unpacking it"):
        read(planted.results / "bomb.pt")
    one_line_refusal(run_cli("sweep", "--depths", "6000002", "--kind", "plain", *tiny_args, "--dry-run", "--out",
                             str(planted.results / "deep")), "depth 6,000,002 is deeper than resdepth builds")
    state = torch.load(planted.results / "residual-8-s0" / "checkpoint.pt", weights_only=True)
    state["net"] = {"kind": "residual", "depth": 60_000_002, "shortcut": "A", "num_classes": 10}
    torch.save(state, planted.results / "residual-8-s0" / "checkpoint.pt")
    code, out, err = run_cli("analyze", str(planted.results), "--out", str(planted.results / "analysis"))
    assert code == 0 and "Traceback" not in out + err and "depth 60,000,002 is deeper than resdepth builds" in err
    edit_json(planted.results / "sweep.json", seeds=list(range(100_000)))
    one_line_refusal(run_cli("sweep", "--resume", str(planted.results), "--dry-run"), "at most 10,000")
    code, _, err = run_cli("status", str(planted.results))
    assert code == 0 and "sweep.json: not a sweep resdepth can read" in err and "at most 10,000" in err
    assert not planted.marker.exists() and planted.checksums() == before


def test_jobs_are_capped_by_the_machine(tmp_path, tiny_sweep):
    from resdepth.sweep.runner import cpu_cores, device_slots

    assert len(device_slots(tiny_sweep(tmp_path, jobs=10_000))) == cpu_cores()


def test_a_job_whose_thread_dies_fails_its_cells_and_the_sweep_ends(tmp_path, tiny_sweep, run_sweep_now):
    """A job's thread killed by an exception the cell lifecycle did not catch (here, the run folder's config.json
    replaced by a folder between planning and training: reading it raises IsADirectoryError in the thread)."""
    from concurrent.futures import ThreadPoolExecutor

    from resdepth.sweep.executors import SequentialExecutor

    class DyingThread(SequentialExecutor):
        def submit(self, job):
            def train():
                (job.run_dir / "config.json").unlink()
                (job.run_dir / "config.json").mkdir()
                return json.loads((job.run_dir / "config.json").read_text())
            return ThreadPoolExecutor(1).submit(train)

    sweep = tiny_sweep(tmp_path, kinds=["plain"])
    _, outcomes = run_sweep_now(sweep, DyingThread())
    assert outcomes["plain-8-s0"].state == "failed" and "IsADirectoryError" in outcomes["plain-8-s0"].error
    assert json.loads((tmp_path / "plain-8-s0" / "status.json").read_text())["state"] == "failed"


# ---------------------------------------------------------------------------------------------- whole outputs
def complete(path: Path) -> bool:
    data = path.read_bytes()
    ends = {".png": b"IEND\xaeB`\x82", ".pdf": b"%%EOF\n", ".svg": b"</svg>\n"}
    return data.rstrip(b"\n").endswith(ends[path.suffix].rstrip(b"\n"))


def test_a_plot_killed_midway_leaves_whole_files_or_none(swept_folder, tmp_path, resdepth_cli, cli_env):
    """SIGKILL as soon as the first figure file appears: every file under its final name is whole."""
    import signal
    import subprocess
    import time

    out = tmp_path / "figures"
    for _ in range(3):
        shutil.rmtree(out, ignore_errors=True)
        process = subprocess.Popen([resdepth_cli, "plot", str(swept_folder), "--format", "png,pdf,svg", "--out",
                                    str(out)], env=cli_env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 120
        while time.time() < deadline and process.poll() is None and not any(
                p for p in (out.glob("*.*") if out.exists() else ()) if not p.name.startswith(".")):
            time.sleep(0.001)
        process.send_signal(signal.SIGKILL)
        process.wait()
        written = [p for p in out.glob("*.*") if not p.name.startswith(".")]
        assert written and all(complete(p) for p in written), [(p.name, p.stat().st_size) for p in written]


# ---------------------------------------------------------------------------------------------- a busy sweep
def test_a_sweep_that_only_finds_busy_cells_leaves_sweep_json_as_it_was(tmp_path, tiny_sweep, run_sweep_now,
                                                                       live_lock):
    """Sweep B plans a cell as new, and by the time it would start it, sweep A (another live process) holds it."""
    from resdepth.sweep.runner import make_executor, plan_sweep, run_sweep

    first = tiny_sweep(tmp_path, kinds=["plain"], seeds=[0, 1])
    run_sweep_now(first)
    saved = (tmp_path / "sweep.json").read_bytes()
    second = tiny_sweep(tmp_path, kinds=["plain"], seeds=[0, 1, 2], train=replace(first.train, lr=0.05), force=True)
    planned = plan_sweep(second)
    assert [p.action for p in planned] == ["replace", "replace", "new"]
    for item in planned:
        item.action = "busy" if item.action == "replace" else item.action  # A's cells: left alone in this test
    (tmp_path / "plain-8-s2").mkdir()
    live_lock(tmp_path / "plain-8-s2")
    outcomes = run_sweep(second, make_executor(second), planned, poll_seconds=0.05)
    assert outcomes["plain-8-s2"].state == "busy"
    assert (tmp_path / "sweep.json").read_bytes() == saved


def test_the_suggested_resume_command_repeats_how_the_sweep_executed(tmp_path, tiny_sweep):
    from resdepth.cli.sweep import resume_command

    sweep = tiny_sweep(tmp_path, executor="ray", ray_address="auto", gpus_per_job=0.5)
    assert resume_command(sweep, "--retry-failed") == (
        f"resdepth sweep --resume {tmp_path} --executor ray --address auto --gpus-per-job 0.5 --retry-failed")


# ---------------------------------------------------------------------------------------------- image folders
def image_folder(root: Path) -> Path:
    from PIL import Image

    for split in ("train", "test"):
        for cls in ("cat", "dog"):
            (root / split / cls).mkdir(parents=True)
            for i in range(2):
                Image.new("RGB", (32, 32), (200, 10, 10) if cls == "cat" else (10, 10, 200)).save(
                    root / split / cls / f"{i}.png")
    return root


def test_a_link_at_the_cache_name_is_replaced_never_written_through(tmp_path, monkeypatch):
    # torch.save(..., cache) followed a dangling link planted at the cache's predictable name, and wrote the decoded
    # images outside the data folder
    data = image_folder(tmp_path / "data")
    events: list = []
    load_dataset(DataConfig(dataset="folder", data_dir=str(data)), on_progress=events.append)
    cache = next(e.cache for e in events if e.cache is not None)
    cache.unlink()
    outside = tmp_path / "outside" / "written.pt"
    outside.parent.mkdir()
    cache.symlink_to(outside)  # a link to nothing: the cache looks absent
    older = data / ".resdepth-cache-0123456789abcdef.pt"  # an older cache's name, a link to someone's file
    kept = tmp_path / "outside" / "kept.pt"
    kept.write_bytes(b"not yours to remove")
    older.symlink_to(kept)
    stale, fresh = (data / f".{cache.name}.{hex}.tmp" for hex in ("0badf00d", "5eedf00d"))  # a killed load's temps
    stale.write_bytes(b"half a cache")
    fresh.write_bytes(b"another load is writing")
    os.utime(stale, (1_577_836_800, 1_577_836_800))
    events.clear()
    load_dataset(DataConfig(dataset="folder", data_dir=str(data)), on_progress=events.append)
    assert [e for e in events if e.cache == cache and e.done == e.total]  # kept, in the folder
    assert not outside.exists() and not cache.is_symlink() and cache.is_file()
    assert kept.read_bytes() == b"not yours to remove" and not older.is_symlink()
    assert sorted(p.name for p in data.iterdir()) == sorted(["train", "test", cache.name, fresh.name])
    fresh.unlink()

    import resdepth.train.data as data_module

    def full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    cache.unlink()
    events.clear()
    monkeypatch.setattr(data_module.torch, "save", full)
    load_dataset(DataConfig(dataset="folder", data_dir=str(data)), on_progress=events.append)
    assert any("could not keep the decoded images" in (e.notice or "") for e in events)
    assert sorted(p.name for p in data.iterdir()) == ["test", "train"]  # the temp file is removed


@pytest.mark.parametrize("link", ["image", "class folder", "split folder"])
def test_a_link_out_of_the_data_folder_is_refused_in_one_line(tmp_path, run_cli, link):
    # a linked image or class folder was decoded from wherever it led, and its pixels kept in the folder's cache
    from PIL import Image

    from resdepth.train.data import check_data_present

    data = image_folder(tmp_path / "data")
    private = image_folder(tmp_path / "private")
    named = {"image": data / "train" / "cat" / "9.png", "class folder": data / "train" / "eel",
             "split folder": data / "test"}[link]
    if link == "image":
        named.symlink_to(private / "train" / "dog" / "0.png")
    elif link == "class folder":
        named.symlink_to(private / "train" / "dog", target_is_directory=True)
        (data / "test" / "eel").mkdir()
        Image.new("RGB", (32, 32)).save(data / "test" / "eel" / "0.png")
    else:
        shutil.rmtree(named)
        named.symlink_to(private / "test", target_is_directory=True)
    config = DataConfig(dataset="folder", data_dir=str(data))
    with pytest.raises(UserError) as refused:
        load_dataset(config)
    message = str(refused.value)
    assert str(named) in message and "outside" in message and "copy" in message and "\n" not in message
    assert not check_data_present(config).ready  # the dry run says the same
    assert not list(data.glob(".resdepth-cache-*"))
    code, out, err = run_cli("train", "--depth", "8", "--iterations", "1", "--batch-size", "4", "--device", "cpu",
                             "--dataset", "folder", "--data-dir", str(data), "--out", str(tmp_path / "results"))
    assert code == 2 and str(named) in err and "Traceback" not in err + out


def test_links_that_stay_inside_the_data_folder_are_read(tmp_path):
    data = image_folder(tmp_path / "data")
    (data / "train" / "cat" / "same.png").symlink_to(data / "test" / "cat" / "0.png")
    (data / "train" / "eel").symlink_to(Path("..") / "test" / "dog", target_is_directory=True)
    (data / "test" / "eel").mkdir()
    (data / "test" / "eel" / "0.png").symlink_to(Path("..") / "dog" / "1.png")
    loaded = load_dataset(DataConfig(dataset="folder", data_dir=str(data)))
    assert loaded.classes == ["cat", "dog", "eel"] and len(loaded.train_labels) == 7
