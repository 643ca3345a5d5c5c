"""Per-layer gradient norms logged during training (§1/§4.1: "the backward propagated gradients exhibit healthy
norms with BN"), into gradients.csv beside metrics.csv: one row per (epoch, layer).

The weight norm is logged beside the gradient's: a conv followed by BN computes the same function at any scale of
its weight, and its gradient shrinks as the weight grows (||grad|| ~ 1/||W||), so a small gradient norm can mean a
large weight rather than a vanishing signal; grad_norm / weight_norm tells them apart.

The training step stays as fast as without it: every GRADIENT_EVERY-th step of an epoch is sampled (its first
step always), by one `torch._foreach_norm` over the layers' weight gradients and weights, summed on the device;
the sums come to the host once, when the epoch ends. The sums are part of the checkpoint, so a run stopped inside
an epoch resumes them, and gradients.csv is cut back to the checkpoint's rows as metrics.csv is.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import torch

from ..results.runs import GRADIENT_COLUMNS, open_to_append, truncate_csv

# One step in 10: ~39 samples per CIFAR-10 epoch (390 steps), enough for a mean, and the norms' cost falls to
# noise (BENCHMARKS.md); an epoch shorter than 10 steps still samples its first step.
GRADIENT_EVERY = 10


class GradientLog:
    """Sums of the gradient norms of the network's weight layers over the sampled steps of the current epoch."""

    def __init__(self, layers: list[tuple[str, torch.nn.Module]], device: torch.device, every: int = GRADIENT_EVERY):
        self.names = [name for name, _ in layers]
        self.weights = [module.weight for _, module in layers]
        self.every = every
        self.sums = torch.zeros(2 * len(self.weights), dtype=torch.float64, device=device)  # gradients, then weights
        self.steps = 0  # sampled steps in the current epoch
        self.rows = 0  # data rows in gradients.csv

    def samples(self, step: int) -> bool:
        """Whether 0-based step `step` of the epoch is one of the sampled steps."""
        return step % self.every == 0

    @torch.no_grad()
    def sample(self, step: int) -> None:
        """After the optimizer step at 0-based step `step` of the epoch: add this step's norms if it is sampled.
        The weights' .grad still holds the step's loss gradient (SGD adds weight decay to a copy)."""
        if not self.samples(step):
            return
        grads = [weight.grad for weight in self.weights]
        if any(grad is None for grad in grads):
            return
        self.add(torch.stack(torch._foreach_norm(grads + self.weights)))  # type: ignore[arg-type,operator]

    def add(self, norms: torch.Tensor) -> None:
        """One sampled step's norms: the layers' gradient norms, then their weight norms (a fused group computes
        them for all its models at once and hands each model its own)."""
        self.sums += norms
        self.steps += 1

    def open(self, path: Path) -> None:
        """Start writing to path: keep the header and the rows the checkpoint holds, drop any written after it."""
        self.path = path
        truncate_csv(path, self.rows, list(GRADIENT_COLUMNS))

    def end_epoch(self, epoch: int, iteration: int) -> None:
        """Append the epoch's mean norm per layer (one host sync) and start the next epoch's sums."""
        means = [repr(value) if self.steps else "" for value in (self.sums / max(self.steps, 1)).tolist()]
        count = len(self.names)
        with open_to_append(self.path) as handle:
            writer = csv.writer(handle, lineterminator="\n")
            layers = zip(self.names, means[:count], means[count:], strict=True)
            for layer, (name, grad, weight) in enumerate(layers, start=1):
                writer.writerow([epoch, iteration, layer, name, grad, weight, self.steps])
        self.rows += len(self.names)
        self.sums.zero_()
        self.steps = 0

    def state_dict(self) -> dict[str, Any]:
        """In types that `torch.load(weights_only=True)` accepts."""
        return {"sums": self.sums.cpu(), "steps": self.steps, "rows": self.rows, "names": list(self.names)}

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        """Restore saved sums; a checkpoint written before gradients were logged (None) starts a new gradients.csv."""
        if state is None:
            return
        self.sums = state["sums"].to(device=self.sums.device, dtype=torch.float64)
        self.steps, self.rows = int(state["steps"]), int(state["rows"])
