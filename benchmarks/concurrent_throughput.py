"""Aggregate training images/s of N resdepth jobs sharing one device, per depth, and the Figure 6 sweep time
extrapolated from them. A helper of benchmarks/gpu_bench.sh; it also runs on a CPU (for its own check).

Each job is a process running the real Trainer (`resdepth.bench.throughput.OwnPath`, as `resdepth train` runs it).
For each depth all jobs set up and warm up, wait at a barrier, run `--steps` timed steps and report their
start and end times; the aggregate is all jobs' images over the span from the first start to the last end
(CLOCK_MONOTONIC is shared by the processes of one Linux machine).

    python benchmarks/concurrent_throughput.py --device cuda --jobs 1,2,4 --depths 20,56,110 --out c.json
"""

from __future__ import annotations

import argparse
import itertools
import json
import multiprocessing as mp
import queue
import tempfile
import time
from pathlib import Path
from typing import Any

from resdepth.models.families import FIGURE6_FAMILIES
from resdepth.sweep.runner import threads_per_job

FIGURE6_DEPTHS = (20, 32, 44, 56, 110)  # sweeps/figure6.toml: plain and residual at each depth
FIGURE6_KINDS = FIGURE6_FAMILIES
PAPER_ITERATIONS, PAPER_BATCH = 64_000, 128  # §4.2


def job(rank: int, args: argparse.Namespace, threads: int | None, barrier: Any, results: Any) -> None:
    import torch

    from resdepth.bench.throughput import BenchConfig, OwnPath, synchronize
    from resdepth.train.data import DataConfig, load_dataset
    from resdepth.train.devices import resolve_device

    config = BenchConfig(depths=tuple(args.depths), device=args.device, iterations=args.steps, warmup=args.warmup,
                         rounds=1, batch_size=args.batch_size, naive=False, threads=threads,
                         compile=False if args.no_compile else None,
                         data=DataConfig(dataset="synthetic", synthetic_train=args.train_images, synthetic_test=16))
    if threads:
        torch.set_num_threads(threads)  # as run_training does for a sweep's cell
    device = resolve_device(args.device)  # indexed, as every resdepth process trains on one
    dataset = load_dataset(config.data)
    with tempfile.TemporaryDirectory(prefix=f"resdepth-job{rank}-") as run_dir:
        for depth in args.depths:
            path = OwnPath(config, depth, device, dataset, Path(run_dir))  # set-up and warm-up steps
            barrier.wait()
            start = time.monotonic()
            path.run(args.steps)
            synchronize(device)
            results.put({"rank": rank, "depth": depth, "start": start, "end": time.monotonic()})
            path.trainer.close()  # its GPU memory free before the next depth is set up, as bench does
            barrier.wait()  # the next depth starts together


def measure(args: argparse.Namespace, jobs: int) -> list[dict[str, Any]]:
    context = mp.get_context("spawn")  # CUDA cannot be used in forked children
    barrier, results = context.Barrier(jobs), context.Queue()
    # on the CPU the cores are shared out as `resdepth sweep --jobs N` does; GPU jobs keep torch's default
    threads = threads_per_job(["cpu"] * jobs) if args.device == "cpu" else None
    processes = [context.Process(target=job, args=(rank, args, threads, barrier, results)) for rank in range(jobs)]
    for process in processes:
        process.start()
    try:
        reports = [results.get(timeout=args.timeout) for _ in range(jobs * len(args.depths))]
    except queue.Empty:
        for process in processes:
            process.terminate()
        message = f"a job sent no report within {args.timeout:.0f} s (its traceback, if any, is above)"
        raise SystemExit(message) from None
    for process in processes:
        process.join()
        if process.exitcode != 0:
            raise SystemExit(f"a job process failed with exit code {process.exitcode}")
    rows = []
    for depth in args.depths:
        mine = [r for r in reports if r["depth"] == depth]
        span = max(r["end"] for r in mine) - min(r["start"] for r in mine)
        per_job = [args.steps * args.batch_size / (r["end"] - r["start"]) for r in mine]
        rows.append({"jobs": jobs, "depth": depth,
                     "aggregate_images_per_second": jobs * args.steps * args.batch_size / span,
                     "per_job_images_per_second": per_job})
    return rows


def seconds_per_image(rows: list[dict[str, Any]], jobs: int, depth: int) -> float:
    """Measured at the depths run; linear in depth between them (a net's cost grows linearly with its depth)."""
    measured = sorted((r["depth"], 1 / r["aggregate_images_per_second"]) for r in rows if r["jobs"] == jobs)
    for (d0, t0), (d1, t1) in itertools.pairwise(measured):
        if d0 <= depth <= d1:
            return t0 + (t1 - t0) * (depth - d0) / (d1 - d0)
    (d0, t0), (d1, t1) = (measured[0], measured[-1])
    return t0 if depth <= d0 else t1 * depth / d1


def extrapolate_figure6(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """EXTRAPOLATION: hours for the Figure 6 sweep (10 cells x 64k iterations), training steps only, plain nets
    costed as residual ones, cells run `jobs` at a time beside cells of the same depth."""
    estimates = []
    for jobs in sorted({r["jobs"] for r in rows}):
        seconds = sum(PAPER_ITERATIONS * PAPER_BATCH * seconds_per_image(rows, jobs, depth)
                      for depth in FIGURE6_DEPTHS for _ in FIGURE6_KINDS)
        estimates.append({"jobs_per_gpu": jobs, "figure6_hours_extrapolated": seconds / 3600})
    return estimates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--jobs", default="1,2,4", help="comma-separated numbers of concurrent jobs")
    parser.add_argument("--depths", default="20,56,110")
    parser.add_argument("--steps", type=int, default=200, help="timed steps per job and depth")
    parser.add_argument("--warmup", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=PAPER_BATCH)
    parser.add_argument("--train-images", type=int, default=4096)
    parser.add_argument("--timeout", type=float, default=300, help="seconds to wait for any one job's report")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--no-compile", action="store_true", help="eager on the CPU too (a quick check of this script)")
    args = parser.parse_args()
    args.depths = [int(d) for d in args.depths.split(",")]
    rows: list[dict[str, Any]] = []
    for jobs in (int(j) for j in args.jobs.split(",")):
        for row in measure(args, jobs):
            rows.append(row)
            print(f"{row['jobs']} job(s) depth {row['depth']:>3}: {row['aggregate_images_per_second']:10,.0f} img/s "
                  f"aggregate (per job {', '.join(f'{x:,.0f}' for x in row['per_job_images_per_second'])})", flush=True)
        write_result(args, rows)  # after every job count: a time limit that cuts the script keeps what was measured
    for estimate in extrapolate_figure6(rows):
        print(f"EXTRAPOLATED Figure 6 sweep (10 cells x 64k iterations, training steps only) at "
              f"{estimate['jobs_per_gpu']} job(s) per {'GPU' if args.device.startswith('cuda') else args.device}: "
              f"{estimate['figure6_hours_extrapolated']:.2f} h")


def write_result(args: argparse.Namespace, rows: list[dict[str, Any]]) -> None:
    if not args.out:
        return
    result = {"device": args.device, "steps": args.steps, "batch_size": args.batch_size, "rows": rows,
              "figure6_extrapolation": extrapolate_figure6(rows)}
    partial = args.out.with_name(args.out.name + ".tmp")
    partial.write_text(json.dumps(result, indent=2) + "\n")
    partial.replace(args.out)


if __name__ == "__main__":
    main()
