"""Fixtures every test module shares: tiny configs and sweeps, running sweeps and the CLI, hand-made results
folders, and comparisons of runs. Helpers live here as fixtures only; test modules never import each other."""

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from resdepth.bench.throughput import BenchConfig
from resdepth.cli.app import app
from resdepth.results.runs import metric_columns
from resdepth.sweep.runner import SweepConfig, make_executor, plan_sweep, run_sweep
from resdepth.train.data import DataConfig
from resdepth.train.trainer import TrainConfig

torch.set_num_threads(1)  # same numerics in every test process, and room for a second job on 2 cores

TIMING = ["epoch_seconds", "images_per_second"]  # wall-clock columns: never equal between two runs


# ---------------------------------------------------------------------------------------------- configs
def _tiny_config(**changes) -> TrainConfig:
    data = DataConfig(dataset="synthetic", synthetic_train=128, synthetic_test=64)
    base = TrainConfig(kind="residual", depth=8, batch_size=32, epochs=2, data=data, device="cpu", threads=1)
    return replace(base, **changes)


@pytest.fixture(scope="session")
def tiny_config() -> Callable[..., TrainConfig]:
    """A factory: a network and dataset small enough to train in about a second on one CPU thread."""
    return _tiny_config


@pytest.fixture(scope="session")
def tiny_sweep() -> Callable[..., SweepConfig]:
    """A factory: plain-8 and residual-8 on the tiny config, written to `out`."""
    def make(out: Path, **changes) -> SweepConfig:
        base = SweepConfig(depths=[8], kinds=["plain", "residual"], seeds=[0], out=str(out), train=_tiny_config())
        return replace(base, **changes)
    return make


@pytest.fixture(scope="session")
def tiny_bench() -> Callable[..., BenchConfig]:
    """A factory: a benchmark of the 8-layer net that takes a few seconds on one CPU thread."""
    def make(**changes) -> BenchConfig:
        data = DataConfig(dataset="synthetic", synthetic_train=64, synthetic_test=16)
        base = BenchConfig(depths=(8,), iterations=2, warmup=1, rounds=2, batch_size=16, num_workers=0,
                           device="cpu", threads=1, data=data, matmul_size=256)
        return replace(base, **changes)
    return make


@pytest.fixture(scope="session")
def tiny_args() -> list[str]:
    """The tiny config's data and device as command-line options."""
    return ["--dataset", "synthetic", "--synthetic-train", "128", "--synthetic-test", "64", "--batch-size", "32",
            "--threads", "1", "--device", "cpu"]


@pytest.fixture(scope="session")
def randomized() -> Callable[..., torch.nn.Module]:
    """A function: the model with random BN scales, shifts and running statistics (a fresh net's BNs are the
    identity, which would hide what a test looks for), in evaluation mode."""
    def randomize(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
        generator = torch.Generator().manual_seed(seed)
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                size = module.num_features
                module.weight.data = torch.rand(size, generator=generator) + 0.5
                module.bias.data = torch.randn(size, generator=generator) * 0.3
                module.running_mean = torch.randn(size, generator=generator) * 0.2
                module.running_var = torch.rand(size, generator=generator) + 0.5
        return model.eval()
    return randomize


# ---------------------------------------------------------------------------------------------- running
@pytest.fixture(scope="session")
def run_sweep_now():
    """Plan and run a sweep (on its own executor unless one is given); returns (planned cells, outcomes by name)."""
    def run(sweep: SweepConfig, executor=None, **options):
        planned = plan_sweep(sweep)
        return planned, run_sweep(sweep, executor or make_executor(sweep), planned, poll_seconds=0.05, **options)
    return run


@pytest.fixture(scope="session")
def finished_sweep(tmp_path_factory, tiny_sweep, run_sweep_now) -> Callable[..., Path]:
    """A factory: a finished tiny sweep of plain and residual nets of one depth, trained once per session for each
    (depth, epochs) and shared by the modules that read trained runs (analyze, lesion, landscape). Tests copy it before
    changing it."""
    made: dict[tuple[int, int], Path] = {}

    def make(depth: int = 8, epochs: int = 2) -> Path:
        if (depth, epochs) not in made:
            out = tmp_path_factory.mktemp(f"finished-{depth}-{epochs}")
            _, outcomes = run_sweep_now(tiny_sweep(out, depths=[depth], train=_tiny_config(epochs=epochs)))
            assert {o.state for o in outcomes.values()} == {"done"}
            made[depth, epochs] = out
        return made[depth, epochs]
    return make


@pytest.fixture(scope="session")
def resdepth_cli() -> str:
    """The real console entry point of this venv, for the tests that need a separate process."""
    return str(Path(sys.executable).with_name("resdepth"))


@pytest.fixture
def cli_env() -> dict[str, str]:
    return {**os.environ, "PYTHONUNBUFFERED": "1", "COLUMNS": "200"}


@pytest.fixture(autouse=True)
def private_speed_cache(tmp_path_factory, monkeypatch) -> None:
    """Speeds that dry runs measure (and `resdepth bench` records) go to the test's own folder, not ~/.cache."""
    monkeypatch.setenv("RESDEPTH_CACHE", str(tmp_path_factory.mktemp("cache")))


@dataclass
class CliResult:
    code: int
    out: str
    err: str

    def __iter__(self):  # code, out, err = run_cli(...)
        return iter((self.code, self.out, self.err))

    def __getitem__(self, index: int):  # run_cli(...)[0]
        return (self.code, self.out, self.err)[index]


@pytest.fixture
def run_cli() -> Callable[..., CliResult]:
    """The command line in this process, through Typer's CliRunner: exit code, stdout and stderr."""
    def invoke(*args: str, columns: int = 200) -> CliResult:
        result = CliRunner().invoke(app, list(args), env={"COLUMNS": str(columns)}, catch_exceptions=False)
        return CliResult(result.exit_code, result.stdout, result.stderr)
    return invoke


@pytest.fixture(scope="session")
def wait_for_rows() -> Callable[[Path, int], None]:
    """Wait until a metrics.csv holds more than `rows` epochs (a run in another process is under way)."""
    def wait(path: Path, rows: int, timeout: float = 120) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if path.exists() and len(path.read_text().splitlines()) > rows:
                return
            time.sleep(0.02)
        raise AssertionError(f"{path} never reached {rows} rows")
    return wait


@pytest.fixture(scope="session")
def logged_epochs() -> Callable[[Path], int]:
    """Epochs a run folder's metrics.csv holds so far."""
    def count(run_dir: Path) -> int:
        path = run_dir / "metrics.csv"
        return max(0, len(path.read_text().splitlines()) - 1) if path.exists() else 0
    return count


@pytest.fixture
def live_lock():
    """Hold a run folder's lock as a live sweep process on this machine would."""
    holders = []

    def hold(run_dir: Path) -> int:
        holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])  # killed at teardown
        holders.append(holder)
        (run_dir / "lock").write_text(json.dumps({"pid": holder.pid, "host": os.uname().nodename, "time": time.time()}))
        return holder.pid

    yield hold
    for holder in holders:
        holder.kill()
        holder.wait()


# ---------------------------------------------------------------------------------------------- comparing runs
@pytest.fixture(scope="session")
def metrics_of() -> Callable[[Path], pd.DataFrame]:
    """A run folder's metrics.csv without its wall-clock columns."""
    return lambda run_dir: pd.read_csv(run_dir / "metrics.csv").drop(columns=TIMING)


@pytest.fixture(scope="session")
def weights_of() -> Callable[[Path], dict]:
    return lambda run_dir: torch.load(run_dir / "checkpoint.pt", weights_only=True)["model"]


@pytest.fixture(scope="session")
def assert_same_run(metrics_of, weights_of) -> Callable[[Path, Path], None]:
    """Same metrics (timing columns aside), the same gradients.csv and bit-identical final weights."""
    def check(a: Path, b: Path) -> None:
        pd.testing.assert_frame_equal(metrics_of(a), metrics_of(b))
        # gradients.csv resumed like metrics.csv: the same rows, none missing or repeated, the same numbers
        assert (a / "gradients.csv").exists() == (b / "gradients.csv").exists()
        if (a / "gradients.csv").exists():
            pd.testing.assert_frame_equal(pd.read_csv(a / "gradients.csv"), pd.read_csv(b / "gradients.csv"))
        wa, wb = weights_of(a), weights_of(b)
        assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    return check


# ---------------------------------------------------------------------------------------------- results folders
@pytest.fixture(scope="session")
def write_run() -> Callable[..., Path]:
    """A factory of run folders as the trainer writes them (see its docstring)."""
    def write(root: Path, kind: str = "plain", depth: int = 20, seed: int = 0, test=(50.0, 20.0, 9.0),
              train=None, *, dataset: str = "cifar10", state: str | None = "done", val=None, shortcut: str = "A",
              step: int = 10000, planned_epochs: int | None = None, params: int | None = 1000,
              iterations: int | None = None, warmup_end: tuple[str, int] | None = None, **changes) -> Path:
        """A run folder as the trainer writes it, with the given errors (%) per epoch; iteration = epoch * step.
        iterations: the planned length (default: planned_epochs or the epochs given, times step; 64000 with the
        defaults' other values is the paper's protocol); warmup_end: (reason, iteration) in status.json, and the
        run marked as warming up; changes: other config keys (a dict for "data" or "resolved" is merged)."""
        name = f"{kind}-{depth}-{shortcut + '-' if shortcut != 'A' else ''}s{seed}"
        run_dir = root / name
        run_dir.mkdir(parents=True)
        train = train if train is not None else [t - 2.0 for t in test]
        epochs = np.arange(1, len(test) + 1)
        frame = pd.DataFrame({"epoch": epochs, "iteration": epochs * step, "lr": 0.1, "train_loss": 1.0,
                              "train_error": train, "test_loss": 1.0, "test_error": test,
                              "epoch_seconds": 1.0, "images_per_second": 100.0})
        if val is not None:
            frame["val_loss"], frame["val_error"] = 1.0, val
        frame[metric_columns(val is not None)].to_csv(run_dir / "metrics.csv", index=False)
        iterations = iterations or (planned_epochs or len(test)) * step
        config = {"kind": kind, "depth": depth, "seed": seed, "shortcut": shortcut, "iterations": iterations,
                  "data": {"dataset": dataset, "val_size": 5000 if val is not None else 0},
                  "resolved": {"iterations": iterations, "params": params, "steps_per_epoch": step,
                               "epochs": planned_epochs or len(test), "warmup": warmup_end is not None}}
        for key, value in changes.items():
            config[key] = {**config[key], **value} if isinstance(value, dict) else value
        (run_dir / "config.json").write_text(json.dumps(config))
        if state is not None:
            status = {"state": state}
            if warmup_end:
                status["warmup_end_reason"], status["warmup_end_iteration"] = warmup_end
            (run_dir / "status.json").write_text(json.dumps(status))
        return run_dir
    return write


# ---------------------------------------------------------------------------------------------- a user's family
TINY_FAMILY = '''"""A tiny network family, as a user would write one: gated residual 3x3 convs, any depth from 3."""
import torch
from torch import nn

from resdepth.models.families import DepthRule, Family, PaperNumber, PaperReference


class Gated(nn.Module):
    def __init__(self, depth, num_classes):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.convs = nn.ModuleList(nn.Conv2d(8, 8, 3, padding=1, bias=False) for _ in range(depth - 2))
        self.norms = nn.ModuleList(nn.BatchNorm2d(8) for _ in range(depth - 2))
        self.gates = nn.Parameter(torch.zeros(depth - 2))
        self.fc = nn.Linear(8, num_classes)

    def forward(self, x):
        x = torch.relu(self.stem(x))
        for gate, conv, norm in zip(self.gates, self.convs, self.norms):
            x = x + torch.sigmoid(gate) * torch.relu(norm(conv(x)))
        return self.fc(x.mean((2, 3)))

    def response_layers(self):
        from resdepth.models import ResponseLayer

        return [ResponseLayer(f"norms.{i}", 1, norm) for i, norm in enumerate(self.norms)]


def gated(depth, num_classes=10, **options):
    """Gated residual 3x3 convs (a test family)."""
    return Gated(depth, num_classes)


family = Family("gated", gated, depths=DepthRule(2, 2), summary="gated residual convs, even depths",
                reference=PaperReference("Lab 2025", "Lab et al. 2025, Table 1 (CIFAR-10)", (PaperNumber(4, 50.0),)))


def broken(depth, num_classes=10):
    raise ValueError(f"no {depth}-layer gated net today")


def wrong_shape(depth, num_classes=10):
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 7))


not_a_builder = 42
'''


@dataclass
class UserFamily:
    folder: Path  # holds tinyfam_nets.py and the tinyfam_nets-0.1 distribution's metadata
    env: dict[str, str]  # the environment for resdepth subprocesses that must find it


@pytest.fixture
def user_family(tmp_path_factory, monkeypatch) -> UserFamily:
    """A user's family module, `tinyfam_nets` (builder `gated`, a Family `family`, and broken ones), on sys.path
    and PYTHONPATH, installed as the distribution tinyfam-nets 0.1 that registers `family` as the entry point
    `gated` of resdepth.models.families (an .dist-info folder on sys.path, as pip would leave it)."""
    from resdepth.models.families import forget_loaded

    folder = tmp_path_factory.mktemp("site")
    (folder / "tinyfam_nets.py").write_text(TINY_FAMILY)
    (folder / "tinyfam_broken.py").write_text("import tinyfam_no_such_module  # an import that fails\n")
    dist = folder / "tinyfam_nets-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: tinyfam-nets\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[resdepth.families]\ngated = tinyfam_nets:family\n")
    (dist / "top_level.txt").write_text("tinyfam_nets\n")
    monkeypatch.syspath_prepend(str(folder))
    path = os.pathsep.join(filter(None, [str(folder), os.environ.get("PYTHONPATH")]))
    monkeypatch.setenv("PYTHONPATH", path)
    forget_loaded()
    yield UserFamily(folder, {**os.environ, "PYTHONPATH": path, "PYTHONUNBUFFERED": "1", "COLUMNS": "200"})
    forget_loaded()
    for name in ("tinyfam_nets", "tinyfam_broken"):
        sys.modules.pop(name, None)


# ---------------------------------------------------------------------------------------------- a fake CUDA
sys.path.insert(0, str(Path(__file__).parent / "fakecuda"))
import fake_cuda  # noqa: E402 - the folder that also holds the subprocesses' sitecustomize


@dataclass
class FakeCudaMachine:
    gpus: int
    record: Path  # each process's first CUDA tensor, one JSON line each (fake_cuda.records)

    def records(self) -> list[dict]:
        return fake_cuda.records(self.record)


@pytest.fixture
def fake_cuda_machine(tmp_path_factory, monkeypatch) -> Callable[..., FakeCudaMachine]:
    """A factory: this process and every subprocess it starts (their PYTHONPATH) see `gpus` fake GPUs, of which
    `visible` (CUDA_VISIBLE_DEVICES, None: all) are theirs; see tests/fakecuda/fake_cuda.py."""
    def start(gpus: int = 4, visible: str | None = None) -> FakeCudaMachine:
        machine = FakeCudaMachine(gpus, tmp_path_factory.mktemp("fakecuda") / "first-tensors.jsonl")
        if visible is None:
            monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
        else:
            monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
        monkeypatch.setenv(fake_cuda.GPUS_VARIABLE, str(gpus))
        monkeypatch.setenv(fake_cuda.RECORD_VARIABLE, str(machine.record))
        path = os.pathsep.join(filter(None, [str(fake_cuda.FOLDER), os.environ.get("PYTHONPATH")]))
        monkeypatch.setenv("PYTHONPATH", path)
        fake = fake_cuda.FakeCuda(gpus, machine.record)
        for target, name, value in fake.patches():
            monkeypatch.setattr(target, name, value)
        mode = fake.mode()
        mode.__enter__()
        modes.append(mode)
        return machine

    modes: list = []
    yield start
    for mode in reversed(modes):
        mode.__exit__(None, None, None)
