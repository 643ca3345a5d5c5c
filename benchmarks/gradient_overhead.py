"""What logging per-layer gradient norms (resdepth/train/gradients.py) costs the training step, measured in one process.

The real Trainer (`resdepth.bench.throughput.OwnPath`, as `resdepth train` runs it, compiled on the CPU by
default) trains in alternating windows with the gradient log on (every 10th step sampled, as in a run) and off
(its `sample` replaced by a no-op); under load from other processes both sides see the same machine, so the ratio of the
median windows holds where absolute img/s do not. It also times one sampled step's norm computation alone
(one `torch._foreach_norm` over the weight gradients, stacked and summed on the device) against a step.

    python benchmarks/gradient_overhead.py --device cpu --depths 20,56 --rounds 7
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from resdepth.bench.throughput import BenchConfig, OwnPath, synchronize
from resdepth.train.data import DataConfig, load_dataset
from resdepth.train.gradients import GRADIENT_EVERY


def window(path: OwnPath, steps: int, device: torch.device) -> float:
    """Seconds per training step over a window of steps."""
    synchronize(device)
    started = time.perf_counter()
    path.run(steps)
    synchronize(device)
    return (time.perf_counter() - started) / steps


def sample_seconds(path: OwnPath, device: torch.device, calls: int = 200) -> float:
    """One sampled step's share of the log: the norms of every weight gradient, summed on the device."""
    log = path.trainer.gradients
    synchronize(device)
    started = time.perf_counter()
    for _ in range(calls):
        log.sample(0)
    synchronize(device)
    seconds = (time.perf_counter() - started) / calls
    log.sums.zero_()
    log.steps = 0
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--depths", type=lambda s: [int(d) for d in s.split(",")], default=[20, 56])
    parser.add_argument("--kind", default="residual")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--steps", type=int, default=20, help="training steps per window")
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=7, help="windows per side, alternating")
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                        help="torch.compile the step [default: as a paper-length run: on for the CPU]")
    args = parser.parse_args()
    device = torch.device(args.device)
    data = DataConfig(dataset="synthetic", synthetic_train=4096, synthetic_test=16)
    dataset = load_dataset(data)
    print(f"{torch.get_num_threads()} threads, {device}, every {GRADIENT_EVERY}th step sampled; "
          f"{args.rounds} alternating windows of {args.steps} steps per side, medians")
    print(f"{'depth':>5} {'off ms/step':>12} {'on ms/step':>11} {'on/off':>8} {'spread on/off':>15} {'norms ms':>9} "
          f"{'norms/10 steps':>15}")
    for depth in args.depths:
        config = BenchConfig(depths=(depth,), kind=args.kind, device=args.device, iterations=args.steps,
                             warmup=args.warmup, rounds=args.rounds, naive=False, compile=args.compile, data=data)
        with tempfile.TemporaryDirectory() as run_dir:
            path = OwnPath(config, depth, device, dataset, Path(run_dir))
            sample = path.trainer.gradients.sample
            times: dict[str, list[float]] = {"on": [], "off": []}
            for round_ in range(args.rounds):
                for side in (("on", "off") if round_ % 2 == 0 else ("off", "on")):
                    path.trainer.gradients.sample = sample if side == "on" else (lambda step: None)  # type: ignore[method-assign]
                    times[side].append(window(path, args.steps, device))
            path.trainer.gradients.sample = sample  # type: ignore[method-assign]
            norms = sample_seconds(path, device)
        on, off = statistics.median(times["on"]), statistics.median(times["off"])
        ratios = sorted(a / b for a, b in zip(times["on"], times["off"], strict=True))
        print(f"{depth:>5} {off * 1e3:>12.1f} {on * 1e3:>11.1f} {on / off:>8.3f} "
              f"{ratios[0]:>7.3f}-{ratios[-1]:<7.3f} {norms * 1e3:>9.2f} "
              f"{norms / (GRADIENT_EVERY * off) * 100:>14.3f}%")


if __name__ == "__main__":
    main()
