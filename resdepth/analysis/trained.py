"""A trained run loaded back for evaluation: its network with the checkpoint's weights in evaluation mode (BN
running statistics), its own data splits and normalisation (the training pixel mean), checked to be the data it
was trained on. `resdepth lesion` and `resdepth landscape` read runs through it; `analyze` and `construct` use
the same pieces (read_saved_net, run_dataset, check_same_data)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import UserError
from ..results.groups import GroupKey, is_complete
from ..results.runs import Run
from ..train.construct import check_same_data, full_fp32, read_saved_net
from ..train.data import Dataset, balanced_subset, normalize
from .responses import IMAGE_SUBSET_SEED, DataCache, run_identity

# Nets and images in channels-last layout, as training runs them: only the order of float sums changes, and a
# ResNet-20 forward pass on 2 CPU cores is ~1.5x as fast (a 21x21 landscape: 9 instead of 15 minutes)
EVAL_LAYOUT = torch.channels_last


@dataclass(frozen=True)
class EvalProgress:
    """Evaluations of one run so far, for a progress display (the library never prints)."""

    label: str  # the run, e.g. residual-56-s0
    done: int
    total: int


OnEvalProgress = Callable[[EvalProgress], None]


@dataclass
class TrainedRun:
    run: Run
    identity: dict[str, Any]  # dataset, setting, kind, shortcut, depth, seed: the CSV columns that say which run
    model: nn.Module  # evaluation mode, on the device
    dataset: Dataset
    mean: torch.Tensor  # the training pixel mean the run normalised with
    epoch: int | None  # the checkpoint's
    finished: bool

    @property
    def label(self) -> str:
        return self.run.path.name


def load_trained(run: Run, key: GroupKey, data: DataCache, device: torch.device) -> TrainedRun:
    """The run's checkpoint on its own data (a UserError when either is missing, unreadable or changed)."""
    saved = read_saved_net(run.path)
    dataset = data.get(run.config)
    check_same_data(dataset, saved.checkpoint, run.path)
    model = saved.load(device).to(memory_format=EVAL_LAYOUT)
    return TrainedRun(run, run_identity(key, run), model, dataset, dataset.pixel_mean(),
                      saved.checkpoint.get("epoch"), is_complete(run))


def split_images(trained: TrainedRun, split: str, count: int | None,
                 device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """A split's un-augmented images as the net sees them (minus the training mean, fp32, on the device) and their
    labels; all of them, or a seeded class-balanced subset of `count` (the same for every run of the dataset)."""
    chosen = trained.dataset.splits().get(split)
    if chosen is None:
        raise UserError(f"it has no {split} split")
    images, labels = chosen
    if count is not None and count < len(labels):
        index = balanced_subset(labels, count, IMAGE_SUBSET_SEED)
        images, labels = images[index], labels[index]
    inputs = normalize(images.to(device), trained.mean.to(device)).contiguous(memory_format=EVAL_LAYOUT)
    return inputs, labels.to(device)


@torch.inference_mode()
def loss_and_error(model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor,
                   batch_size: int) -> tuple[float, float]:
    """Mean cross-entropy and error (%) over prepared inputs, evaluation mode, fp32, in batches."""
    model.eval()
    loss, wrong = 0.0, 0
    with full_fp32(inputs.device):
        for start in range(0, len(labels), batch_size):
            logits = model(inputs[start:start + batch_size])
            target = labels[start:start + batch_size]
            loss += float(F.cross_entropy(logits.float(), target, reduction="sum"))
            wrong += int((logits.argmax(1) != target).sum())
    return loss / len(labels), 100.0 * wrong / len(labels)
