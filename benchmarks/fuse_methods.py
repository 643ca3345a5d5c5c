"""How to fuse K seeds, measured: the training step of K ResNets as K separate steps, as torch.func (vmap over
stacked weights, what `--fuse` uses) and as hand-written grouped convolutions (HFTA's way, specific to CifarNet).

A throwaway comparison behind the choice in resdepth/train/fused.py, kept so it can be run again on other machines:
random data, no augmentation, the model and SGD step only, windows alternating between the ways, median of
three. Aggregate images/s (images x models per second).

    python benchmarks/fuse_methods.py --threads 1 --depth 20 --models 1,2,4 --steps 2
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
import warnings
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, stack_module_state, vmap

from resdepth.models import SIX_N_PLUS_TWO, build_model

BATCH = 128
warnings.filterwarnings("ignore", message="There is a performance drop")  # vmap's avg-pool fallback, see fused.py


class GroupedCifarNet(nn.Module):
    """K option-A ResNets side by side in the channels: grouped convolutions (groups=K), BN over K x C channels,
    zero-padding per model, a batched FC layer. Input (B, K*3, H, W), output (B, K, classes)."""

    def __init__(self, models: int, depth: int, classes: int = 10):
        super().__init__()
        self.models = models
        conv = lambda i, o, s: nn.Conv2d(models * i, models * o, 3, s, 1, bias=False, groups=models)  # noqa: E731
        self.conv1, self.bn1 = conv(3, 16, 1), nn.BatchNorm2d(models * 16)
        self.blocks = nn.ModuleList()
        planes_in = 16
        for stage, planes in enumerate((16, 32, 64)):
            for index in range(SIX_N_PLUS_TWO.blocks(depth, "residual")):
                stride = 2 if stage and not index else 1
                block = nn.Module()
                block.conv1, block.bn1 = conv(planes_in, planes, stride), nn.BatchNorm2d(models * planes)
                block.conv2, block.bn2 = conv(planes, planes, 1), nn.BatchNorm2d(models * planes)
                block.pad = (planes_in, planes) if stride != 1 or planes_in != planes else None
                self.blocks.append(block)
                planes_in = planes
        self.weight = nn.Parameter(torch.randn(models, classes, 64) * 0.1)
        self.bias = nn.Parameter(torch.zeros(models, classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        for block in self.blocks:
            residual = F.relu(block.bn1(block.conv1(out)))
            residual = block.bn2(block.conv2(residual))
            shortcut = out
            if block.pad is not None:
                planes_in, planes = block.pad
                sub = out[:, :, ::2, ::2]
                batch, _, height, width = sub.shape
                extra = planes - planes_in
                sub = F.pad(sub.reshape(batch, self.models, planes_in, height, width),
                            (0, 0, 0, 0, extra // 2, extra - extra // 2))
                shortcut = sub.reshape(batch, self.models * planes, height, width).contiguous(
                    memory_format=torch.channels_last if residual.is_contiguous(memory_format=torch.channels_last)
                    else torch.contiguous_format)
            out = F.relu(residual + shortcut)
        pooled = F.adaptive_avg_pool2d(out, 1).flatten(1).view(-1, self.models, 64)
        return torch.einsum("nkc,koc->nko", pooled, self.weight) + self.bias


def sgd(params: list[torch.Tensor]) -> torch.optim.SGD:
    return torch.optim.SGD(params, lr=0.01, momentum=0.9, weight_decay=1e-4, foreach=True)


def separate(models: int, depth: int) -> Callable[[], None]:
    """K steps of one model, one after another (what K runs in sequence do)."""
    model = build_model("residual", depth).to(memory_format=torch.channels_last)
    optimizer = sgd(list(model.parameters()))
    x = torch.randn(BATCH, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (BATCH,))

    def step() -> None:
        for _ in range(models):
            loss = F.cross_entropy(model(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    return step


def vmapped(models: int, depth: int, channels_last: bool) -> Callable[[], None]:
    """torch.func: stacked weights, vmap over functional_call; the inputs optionally NHWC across the K models."""
    nets = [build_model("residual", depth) for _ in range(models)]
    params, buffers = stack_module_state(nets)
    for param in params.values():
        param.requires_grad_(True)
    base = copy.deepcopy(nets[0]).to("meta")
    optimizer = sgd(list(params.values()))
    x = torch.randn(models, BATCH, 3, 32, 32)
    if channels_last:
        x = torch.randn(BATCH, 32, 32, models, 3).permute(3, 0, 4, 1, 2)
    y = torch.randint(0, 10, (models, BATCH))
    forward = vmap(lambda p, b, inputs: functional_call(base, (p, b), (inputs,)))

    def step() -> None:
        losses = vmap(F.cross_entropy)(forward(params, buffers, x), y)
        optimizer.zero_grad(set_to_none=True)
        losses.sum().backward()
        optimizer.step()
    return step


def grouped(models: int, depth: int, channels_last: bool) -> Callable[[], None]:
    model = GroupedCifarNet(models, depth)
    x = torch.randn(BATCH, models * 3, 32, 32)
    if channels_last:
        model, x = model.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
    optimizer = sgd(list(model.parameters()))
    y = torch.randint(0, 10, (BATCH, models))

    def step() -> None:
        losses = F.cross_entropy(model(x).permute(0, 2, 1), y, reduction="none").mean(0)
        optimizer.zero_grad(set_to_none=True)
        losses.sum().backward()
        optimizer.step()
    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--depth", type=int, default=20)
    parser.add_argument("--models", default="1,2,4")
    parser.add_argument("--steps", type=int, default=2, help="timed steps per window")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    for models in (int(k) for k in args.models.split(",")):
        ways = {"separate (NHWC)": separate(models, args.depth), "vmap NCHW": vmapped(models, args.depth, False),
                "vmap NHWC": vmapped(models, args.depth, True), "grouped NCHW": grouped(models, args.depth, False),
                "grouped NHWC": grouped(models, args.depth, True)}
        for step in ways.values():
            step()
            step()
        rates: dict[str, list[float]] = {name: [] for name in ways}
        for _ in range(args.rounds):
            for name, step in ways.items():
                started = time.perf_counter()
                for _ in range(args.steps):
                    step()
                rates[name].append(models * BATCH * args.steps / (time.perf_counter() - started))
        print(f"depth {args.depth}, K = {models}, {args.threads} thread(s): " + ", ".join(
            f"{name} {statistics.median(values):,.0f}" for name, values in rates.items()) + " img/s", flush=True)


if __name__ == "__main__":
    main()
