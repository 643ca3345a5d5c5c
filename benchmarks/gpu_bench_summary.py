"""The summary of benchmarks/gpu_bench.sh, read from the folder its steps wrote: what each GPU test gave, the
benchmark rows, the ResNet-20 run's pace, and the (labelled) extrapolations. A helper of that script:

    python benchmarks/gpu_bench_summary.py summary WORK_DIR ITERATIONS   # the summary, on stdout
    python benchmarks/gpu_bench_summary.py fastest-step WORK_DIR         # the fastest step's flag at depth 20:
                                                                         # none (2), --cuda-graph (2b), --compile (2c)

Every file may be missing or cut short (a step stopped at its time limit): what is there is reported.
"""

from __future__ import annotations

import itertools
import json
import re
import sys
from pathlib import Path
from typing import Any

TABLE6_DEPTHS = (20, 32, 44, 56, 110)  # sweeps/table6.toml: 5 seeds at each depth


def load(folder: Path, name: str) -> dict[str, Any]:
    try:
        return json.loads((folder / name).read_text())
    except (OSError, ValueError):
        return {}


def depth20_rate(folder: Path, name: str) -> float:
    rows = load(folder, name).get("rows", [])
    return next((r["resdepth_images_per_second"] for r in rows if r["depth"] == 20), 0)


def fastest_step(folder: Path) -> str:
    """The flag of the fastest measured step at depth 20 (eager when nothing was measured)."""
    rates = {flag: depth20_rate(folder, name) for flag, name in
             (("", "bench.json"), ("--cuda-graph", "graph.json"), ("--compile", "compile.json"))}
    return max(rates, key=lambda flag: rates[flag]) if rates[""] > 0 else ""


def gpu_test_lines(folder: Path) -> list[str]:
    """One line per GPU test: passed, skipped (with pytest's reason) or failed, and its seconds."""
    try:
        log = (folder / "gpu-tests.log").read_text()
    except OSError:
        return ["gpu tests: no log"]
    outcomes = re.findall(r"^(tests/test_gpu\.py::\S+): exit (\d+) after (\d+) s", log, re.MULTILINE)
    words = {"0": "passed", "5": "not collected", "124": "CUT at its time limit"}
    lines = [f"gpu test {name.split('::')[1]}: {words.get(code, f'FAILED (exit {code})')} in {seconds} s"
             for name, code, seconds in outcomes]
    skips = sorted(set(re.findall(r"^SKIPPED \[\d+\] [^:]+:\d+: (.+)$", log, re.MULTILINE)))
    return lines + [f"  skipped because: {reason}" for reason in skips] or ["gpu tests: none ran"]


def bench_lines(folder: Path) -> list[str]:
    lines = []
    for name in ("bench.json", "graph.json", "compile.json"):
        for r in load(folder, name).get("rows", []):
            flags = (" --cuda-graph" if r.get("cuda_graph") else "") + (" --compile" if r.get("compile") else "")
            lines.append(
                f"bench{flags} depth {r['depth']}: resdepth "
                f"{r['resdepth_images_per_second']:,.0f} img/s, naive {r['naive_images_per_second'] or 0:,.0f} img/s, "
                f"ratio {r['speedup'] or 0:.2f}x, {r['achieved_gflops']:,.0f} GFLOP/s = "
                f"{r['peak_fraction'] * 100:.0f}% of a {r['matmul_gflops']:,.0f} GFLOP/s {r['precision']} matmul, peak "
                f"{r['resdepth_peak_memory_mb']:,.0f} MB vs {r['naive_peak_memory_mb'] or 0:,.0f} MB")
    return lines


def concurrent_lines(folder: Path) -> list[str]:
    concurrent = load(folder, "concurrent.json")
    lines = [f"{r['jobs']} job(s)/GPU depth {r['depth']}: {r['aggregate_images_per_second']:,.0f} img/s aggregate"
             for r in concurrent.get("rows", [])]
    return lines + [f"EXTRAPOLATION (from the rows above, training steps only): Figure 6 sweep at "
                    f"{e['jobs_per_gpu']} job(s)/GPU = {e['figure6_hours_extrapolated']:.2f} h"
                    for e in concurrent.get("figure6_extrapolation", [])]


def step_seconds(rows: list[dict[str, Any]], batch: int, depth: int, k: int) -> float:
    """Seconds per step of a fused job of k at this depth: the next measured K >= k bounds it from above; linear
    in depth between measured depths and proportional to depth beyond them."""
    size = min(s for s in {r["models"] for r in rows} if s >= k)
    measured = sorted((r["depth"], batch * r["models"] / r["fused_images_per_second"]) for r in rows
                      if r["models"] == size)
    for (d0, t0), (d1, t1) in itertools.pairwise(measured):
        if d0 <= depth <= d1:
            return t0 + (t1 - t0) * (depth - d0) / (d1 - d0)
    (d0, t0), (d1, t1) = measured[0], measured[-1]
    return t0 * depth / d0 if depth < d0 else t1 * depth / d1


def fused_lines(folder: Path, name: str, iterations: int) -> list[str]:
    fused = load(folder, name)
    rows, batch = fused.get("fused_rows", []), fused.get("config", {}).get("batch_size", 128)
    lines = [f"fused {r['precision']} depth {r['depth']} K={r['models']}: {r['fused_images_per_second']:,.0f} img/s "
             f"aggregate vs one run {r['sequence_images_per_second']:,.0f} ({r['fused_vs_sequence']:.2f}x), "
             f"peak {r['fused_peak_memory_mb']:,.0f} MB vs {r['single_peak_memory_mb']:,.0f} MB" for r in rows]
    for depth in sorted({r["depth"] for r in rows}):  # K = 1 means separate runs: one run's rate
        mine = [r for r in rows if r["depth"] == depth]
        rates = {1: sorted(r["sequence_images_per_second"] for r in mine)[len(mine) // 2],
                 **{r["models"]: r["fused_images_per_second"] for r in mine if r["models"] > 1}}
        best = max(rates, key=lambda k: rates[k])
        lines.append(f"best K at depth {depth} ({mine[0]['precision']}): {best}, {rates[best]:,.0f} img/s vs "
                     f"{rates[1]:,.0f} unfused (for MEASURED_BEST_FUSE['cuda'] in resdepth/train/fused.py)")
    sizes = {r["models"] for r in rows}
    for k in sorted({s for s in sizes if s < 5} | ({5} if sizes and max(sizes) >= 5 else set())):
        jobs = [k] * (5 // k) + ([5 % k] if 5 % k else [])
        hours = sum(iterations * step_seconds(rows, batch, depth, size) for depth in TABLE6_DEPTHS for size in jobs)
        lines.append(f"EXTRAPOLATION ({rows[0]['precision']}, training steps only, one GPU): Table 6 sweep, 5 seeds x "
                     f"20/32/44/56/110, {iterations} iterations, --fuse {k} (jobs of {jobs}) = {hours / 3600:.2f} h"
                     + ("  (a job of 5 costed at the next measured K)" if 5 in jobs and 5 not in sizes else ""))
    return lines


def run_lines(folder: Path, iterations: int) -> list[str]:
    try:
        import pandas as pd

        metrics = pd.read_csv(folder / "metrics.csv")
        last = metrics.iloc[-1]
    except Exception as exc:  # noqa: BLE001 - no run, or no finished epoch: say so
        return [f"ResNet-20 run: no metrics ({type(exc).__name__})"]
    seconds = metrics["epoch_seconds"].sum()
    median = metrics["images_per_second"].iloc[1:].median() if len(metrics) > 1 else last["images_per_second"]
    lines = [f"ResNet-20 run: {int(last['iteration'])} of {iterations} iterations in {seconds:.0f} s of training "
             f"epochs ({median:,.0f} img/s median epoch), test error {last['test_error']:.2f}% at epoch "
             f"{int(last['epoch'])}"]
    if last["iteration"] < iterations:
        pace = last["iteration"] / seconds
        lines.append(f"EXTRAPOLATION: the whole run would take {iterations / pace / 60:.1f} min of training epochs "
                     "at this pace")
    return lines


def summary(folder: Path, iterations: int) -> list[str]:
    return [*gpu_test_lines(folder), *bench_lines(folder), *concurrent_lines(folder),
            *fused_lines(folder, "fused.json", iterations), *fused_lines(folder, "fused-bf16.json", iterations),
            *run_lines(folder, iterations)]


def main() -> None:
    command, folder = sys.argv[1], Path(sys.argv[2])
    if command == "fastest-step":
        print(fastest_step(folder))
    else:
        print("\n".join(summary(folder, int(sys.argv[3]))))


if __name__ == "__main__":
    main()
