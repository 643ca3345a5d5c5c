"""Reading a results or data folder never runs code: a checkpoint made to run code is refused by every entry point
that reads one, and image files that declare a huge size are refused before their pixels are decoded."""

import json
import os
import struct
import zlib
from pathlib import Path

import pytest
import torch

from resdepth.data import DataConfig, load_dataset
from resdepth.errors import UserError
from resdepth.results import RunStatus
from resdepth.results import read_checkpoint


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
    from resdepth.train import run_training

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
        (tmp_path / split / "cat").mkdir(parents=True)
        Image.new("RGB", (32, 32), (200, 10, 10)).save(tmp_path / split / "cat" / "0.png")
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
