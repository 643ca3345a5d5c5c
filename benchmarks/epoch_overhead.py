"""What a run's bookkeeping between steps costs, per epoch, on this machine's disk: the checkpoint (weights,
momentum, RNG states, the epoch's data order, written atomically with an fsync), the metrics and gradient rows,
and status.json, measured on the real Trainer's files for ResNet-20 and ResNet-110 on CIFAR-10-sized data.

The share of an epoch is given against the GPU pace the fast path aims at (#27: ResNet-20's 64k iterations in 90 s,
1.4 ms a step, 391 steps an epoch, 0.55 s; a deeper net's epoch in proportion to its layers), for these ways of
writing:
- before: every row fsynced as written, a checkpoint every epoch (resdepth until --checkpoint-every);
- epoch: rows made durable just before each checkpoint, a checkpoint every epoch (today's default);
- 2000 / 1min: the same with a checkpoint every 2,000 iterations (5.1 epochs) or every minute.
The evaluation pass on the test images is compute, not bookkeeping, and is left out.

    python benchmarks/epoch_overhead.py [--repeats 15] [--out DIR]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

from resdepth.results.runs import (
    CHECKPOINT_FILE,
    METRICS_FILE,
    MetricsWriter,
    RunStatus,
    atomic_write_bytes,
    metric_columns,
    sync_file,
)
from resdepth.train.data import DataConfig, load_dataset
from resdepth.train.trainer import Trainer, TrainConfig, resolve_iterations

GPU_EPOCH_SECONDS = 391 * 1.4e-3  # the fast path's target pace (issue #27), ResNet-20, batch 128
WAYS = ("before", "epoch", "2000", "1min")


def gpu_epoch_seconds(depth: int) -> float:
    return GPU_EPOCH_SECONDS * (depth - 2) / 18  # the step's work grows with the layers


def epochs_per_checkpoint(way: str, depth: int) -> float:
    return {"2000": 2000 / 391, "1min": 60 / gpu_epoch_seconds(depth)}.get(way, 1.0)


def median_ms(action: Callable[[], None], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        began = time.perf_counter()
        action()
        times.append(time.perf_counter() - began)
    return statistics.median(times) * 1e3


def trained_a_little(depth: int, folder: Path, dataset) -> Trainer:
    config = TrainConfig(depth=depth, data=DataConfig(dataset="synthetic"), iterations=64_000, device="cpu",
                         compile=False, threads=2)
    trainer = Trainer(resolve_iterations(config, len(dataset.train_labels)), folder, torch.device("cpu"), dataset)
    trainer.train_epoch(lambda: trainer.iteration >= 2)  # momentum exists, an epoch is in progress
    return trainer


def costs(depth: int, folder: Path, dataset, repeats: int) -> dict[str, float]:
    trainer = trained_a_little(depth, folder, dataset)
    columns = metric_columns(False)
    row = dict.fromkeys(columns, 1.0)
    writer = MetricsWriter(folder / METRICS_FILE, columns)
    gradients = trainer.gradients
    gradients.open(folder / "gradients.csv")
    status = RunStatus(state="running", epoch=1, epochs=164, iteration=391, iterations=64_000)
    measured = {
        "checkpoint": median_ms(lambda: atomic_write_bytes(folder / CHECKPOINT_FILE, trainer.checkpoint_bytes(trainer)),
                                repeats),
        "rows": median_ms(lambda: (writer.append(row), gradients.end_epoch(1, 391)), repeats),
        "row syncs": median_ms(lambda: (sync_file(writer.path), sync_file(gradients.path)), repeats),
        "status": median_ms(lambda: status.update(folder, epoch=2), repeats),
        "checkpoint MB": (folder / "checkpoint.pt").stat().st_size / 2**20,
    }
    trainer.close()
    return measured


def per_epoch_ms(cost: dict[str, float], way: str, depth: int) -> float:
    """Bookkeeping per epoch: rows and status every epoch; the checkpoint and the row syncs at its cadence (before:
    the rows synced every epoch, as written)."""
    checkpoint = (cost["checkpoint"] + cost["row syncs"]) / epochs_per_checkpoint(way, depth)
    return cost["rows"] + cost["status"] + checkpoint + (cost["row syncs"] if way == "before" else 0.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--out", type=Path, default=None, help="folder on the disk to measure (default: a temp dir)")
    args = parser.parse_args()
    dataset = load_dataset(DataConfig(dataset="synthetic", synthetic_train=50_000, synthetic_test=10_000))
    print(f"| net | GPU epoch s | checkpoint MB | checkpoint ms | rows ms | row fsyncs ms | status.json ms | "
          f"{' | '.join(f'{way}: ms/epoch (share)' for way in WAYS)} |")
    print("|---" * (7 + len(WAYS)) + "|")
    for depth in (20, 110):
        with tempfile.TemporaryDirectory(dir=args.out) as folder:
            cost = costs(depth, Path(folder), dataset, args.repeats)
        epoch = gpu_epoch_seconds(depth)
        ways = " | ".join(f"{per_epoch_ms(cost, way, depth):.1f} ({per_epoch_ms(cost, way, depth) / epoch / 10:.1f}%)"
                          for way in WAYS)
        print(f"| ResNet-{depth} | {epoch:.2f} | {cost['checkpoint MB']:.1f} | {cost['checkpoint']:.1f} | "
              f"{cost['rows']:.2f} | {cost['row syncs']:.1f} | {cost['status']:.1f} | {ways} |")


if __name__ == "__main__":
    main()
