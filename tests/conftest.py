import os
import sys
from dataclasses import replace
from pathlib import Path

import pandas as pd
import pytest
import torch

from resdepth.data import DataConfig
from resdepth.executors import make_executor
from resdepth.sweep import SweepConfig, plan_sweep, run_sweep
from resdepth.train import TrainConfig

torch.set_num_threads(1)  # same numerics in every test process, and room for a second job on 2 cores

RESDEPTH = str(Path(sys.executable).with_name("resdepth"))  # the real console entry point of this venv


def tiny_config(**changes) -> TrainConfig:
    """A network and dataset small enough to train in about a second on one CPU thread."""
    data = DataConfig(dataset="synthetic", synthetic_train=128, synthetic_test=64)
    base = TrainConfig(kind="residual", depth=8, batch_size=32, epochs=2, data=data, device="cpu", threads=1)
    return replace(base, **changes)


@pytest.fixture
def cli_env() -> dict[str, str]:
    return {**os.environ, "PYTHONUNBUFFERED": "1", "COLUMNS": "200"}


@pytest.fixture(autouse=True)
def private_speed_cache(tmp_path_factory, monkeypatch) -> None:
    """Speeds that dry runs measure (and `resdepth bench` records) go to the test's own folder, not ~/.cache."""
    monkeypatch.setenv("RESDEPTH_CACHE", str(tmp_path_factory.mktemp("cache")))


@pytest.fixture
def cli(monkeypatch, capsys):
    """Call resdepth.cli.main in this process (UserError -> exit 2 happens there); returns code, stdout, stderr."""
    from resdepth.cli import main

    def call(*args: str) -> tuple[int, str, str]:
        monkeypatch.setattr(sys, "argv", ["resdepth", *args])
        monkeypatch.setenv("COLUMNS", "200")
        with pytest.raises(SystemExit) as exited:
            main()
        out, err = capsys.readouterr()
        return int(exited.value.code or 0), out, err
    return call


# ---------------------------------------------------------------------------------------------- sweeps on executors
TIMING = ["epoch_seconds", "images_per_second"]  # wall-clock columns: never equal between two runs


def tiny_sweep(out: Path, **changes) -> SweepConfig:
    """plain-8 and residual-8 on the tiny config, written to out."""
    return replace(SweepConfig(depths=[8], kinds=["plain", "residual"], seeds=[0], out=str(out), train=tiny_config()),
                   **changes)


def run(sweep: SweepConfig, executor=None, **options):
    """Plan and run a sweep; returns (planned cells, outcomes by cell name)."""
    planned = plan_sweep(sweep)
    return planned, run_sweep(sweep, executor or make_executor(sweep), planned, poll_seconds=0.05, **options)


def assert_same_run(a: Path, b: Path) -> None:
    """Same metrics (timing columns aside) and bit-identical final weights."""
    pd.testing.assert_frame_equal(pd.read_csv(a / "metrics.csv").drop(columns=TIMING),
                                  pd.read_csv(b / "metrics.csv").drop(columns=TIMING))
    wa, wb = (torch.load(d / "checkpoint.pt", weights_only=False)["model"] for d in (a, b))
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def rows(run_dir: Path) -> int:
    """Epochs logged so far."""
    path = run_dir / "metrics.csv"
    return max(0, len(path.read_text().splitlines()) - 1) if path.exists() else 0
