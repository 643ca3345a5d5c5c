import os
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from resdepth.data import DataConfig
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
