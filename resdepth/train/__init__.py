"""Training one run or a fused group of seeds, by the paper's protocol: the data and its augmentation (`data.py`),
`TrainConfig`, the learning-rate schedule with the 110-layer warm-up and the `Trainer` (`trainer.py`), K seeds
trained as one stacked model (`fused.py`), devices, precision and random states (`devices.py`), per-layer gradient
norms (`gradients.py`) and the constructed deeper net that `--init` starts from (`construct.py`)."""

from .data import DataConfig
from .fused import run_fused_training
from .trainer import RunResult, TrainConfig, load_run_config, run_training

__all__ = ["DataConfig", "RunResult", "TrainConfig", "load_run_config", "run_fused_training", "run_training"]
