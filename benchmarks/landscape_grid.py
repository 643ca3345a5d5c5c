"""How long a `resdepth landscape` grid takes: seconds per grid point (set the weights to theta + a d1 + b d2, then
the training loss and error over the images in evaluation mode, as `landscape.fill_grid` does) and the projected
time of the whole grid, per depth and batch size; `--full` times a whole grid instead of projecting it.

Timing does not depend on the weights, so the nets are freshly initialised and the images synthetic.

    python benchmarks/landscape_grid.py --depths 20 --images 2000 --resolution 21 --points 6
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

from resdepth.analysis.landscape import directions, move_to, perturbed
from resdepth.analysis.trained import EVAL_LAYOUT, loss_and_error
from resdepth.models import build_model


def seconds_per_point(depth: int, images: int, batch_size: int, points: int, threads: int) -> list[float]:
    """Wall-clock seconds of each of `points` grid points (after one untimed warm-up point)."""
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = build_model("residual", depth).eval().to(memory_format=EVAL_LAYOUT)
    inputs = torch.randn(images, 3, 32, 32).contiguous(memory_format=EVAL_LAYOUT)
    labels = torch.randint(0, 10, (images,))
    origin = {name: p.detach().clone() for name, p in perturbed(model)}
    d1, d2 = directions(model, 0)
    times = []
    for point in range(points + 1):
        started = time.perf_counter()
        move_to(model, origin, d1, d2, 0.1 * point, -0.05 * point)
        loss_and_error(model, inputs, labels, batch_size)
        times.append(time.perf_counter() - started)
    return times[1:]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--depths", default="20", help="comma-separated depths (6n+2)")
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--resolution", type=int, default=21)
    parser.add_argument("--batch-sizes", default="500,1000,2000")
    parser.add_argument("--points", type=int, default=6, help="grid points timed per setting (after a warm-up)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--full", action="store_true", help="time every point of the grid (resolution^2)")
    args = parser.parse_args()
    grid = args.resolution ** 2
    print(f"torch {torch.__version__}, {args.threads} thread(s), load average {os.getloadavg()[0]:.1f}; "
          f"{args.resolution}x{args.resolution} grid = {grid} points, {args.images:,} images per point")
    print("| depth | batch | points timed | s/point (median) | min-max | img/s | grid (min) |")
    print("|---:|---:|---:|---:|---|---:|---:|")
    for depth in (int(d) for d in args.depths.split(",")):
        for batch in (int(b) for b in args.batch_sizes.split(",")):
            times = seconds_per_point(depth, args.images, batch, grid if args.full else args.points, args.threads)
            median = statistics.median(times)
            total = sum(times) if args.full else median * grid
            print(f"| {depth} | {batch} | {len(times)} | {median:.2f} | {min(times):.2f}-{max(times):.2f} | "
                  f"{args.images / median:,.0f} | {total / 60:.1f} |", flush=True)


if __name__ == "__main__":
    main()
