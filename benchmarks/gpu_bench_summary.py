"""The summary of benchmarks/gpu_bench.sh, read from the folder its steps wrote: what each GPU test gave, the
benchmark rows, the ResNet-20 run's pace, and the (labelled) extrapolations. A helper of that script:

    python benchmarks/gpu_bench_summary.py summary WORK_DIR ITERATIONS   # the summary, on stdout
    python benchmarks/gpu_bench_summary.py fastest-step WORK_DIR         # the fastest step's flag at depth 20:
                                                                         # none (2), --cuda-graph (2b), --compile (2c)

Every file may be missing or cut short (a step stopped at its time limit): what is there is reported, and a
target whose numbers are missing says NOT MEASURED rather than guessing.
"""

from __future__ import annotations

import itertools
import json
import math
import re
import sys
from pathlib import Path
from typing import Any

from resdepth.bench.estimate import EVAL_SPEEDUP  # the dry run's estimate of evaluation against training

TABLE6_DEPTHS = (20, 32, 44, 56, 110)  # sweeps/table6.toml: 5 seeds at each depth
TABLE6_SEEDS = 5
DEEPEST = 1202  # Table 6's ResNet-1202, trained once
PAPER_ITERATIONS = 64000  # §4.2: every target is about runs of this length
# CIFAR-10: each paper run evaluates its 10k test images after each epoch of 50k // batch steps (all the targets'
# runs; a bench step times training steps only, so the summary adds this, estimated as the dry run does)
TRAIN_IMAGES, TEST_IMAGES = 50_000, 10_000
TABLE6_SWEEP = Path(__file__).resolve().parent.parent / "sweeps" / "table6.toml"
# issue #27's targets, on one H100
RESNET20_TARGET_SECONDS = 90
FUSED_TARGET_MODELS, FUSED_TARGET_RATIO = 8, 3.0
TABLE6_TARGET_MINUTES = 45
# the bench steps' files of one run each (2, 2d, 2b, 2d, 2c), and of fused jobs: fused-fast (2e) and eager (3b)
SINGLE_FILES = ("bench.json", "deep.json", "graph.json", "deep-graph.json", "compile.json")
FUSED_FILES = (("fused-fast", "fused-fast.json"), ("fused eager", "fused.json"))


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
    """One line per GPU test: passed, skipped (with pytest's reason), failed or cut, and its seconds; a collection
    that failed (the test module did not import) says so, with pytest's last error line. Passed or skipped is read from
    pytest's own count in the test's output, not its exit code: a test that skips (no usable CUDA) exits 0 too."""
    try:
        log = (folder / "gpu-tests.log").read_text()
    except OSError:
        return ["gpu tests: no log"]
    lines = []
    collected = re.search(r"^gpu tests collected: exit (\d+).*$", log, re.MULTILINE)
    if collected and collected.group(1) not in ("0", "5"):
        before = [line for line in log[:collected.start()].splitlines() if line.strip()]
        errors = [line[1:].strip() for line in before if line.startswith("E ")]  # pytest's error lines
        why = errors[-1] if errors else before[-1] if before else ""
        lines.append(f"gpu tests: COLLECTION FAILED (exit {collected.group(1)}): {why}")
    start = collected.end() if collected else 0
    for found in re.finditer(r"^(tests/test_gpu\.py::\S+): exit (\d+) after (\d+) s.*$", log, re.MULTILINE):
        name, code, seconds = found.groups()
        lines.append(f"gpu test {name.split('::')[1]}: {test_outcome(code, log[start:found.start()])} in {seconds} s")
        start = found.end()
    skips = sorted(set(re.findall(r"^SKIPPED \[\d+\] [^:]+:\d+: (.+)$", log, re.MULTILINE)))
    return lines + [f"  skipped because: {reason}" for reason in skips] or ["gpu tests: none ran"]


def test_outcome(code: str, output: str) -> str:
    """A GPU test's outcome from its exit code and its pytest output (the part of the log before its step line)."""
    if code in ("124", "137"):
        return "CUT at its time limit"
    if code == "5":
        return "not collected"
    if code != "0":
        return f"FAILED (exit {code})"
    counts = re.findall(r"^(?:=+ )?(\d+) (passed|skipped)", output, re.MULTILINE)
    kinds = {kind for _, kind in counts}
    return "skipped" if kinds == {"skipped"} else "passed" if "passed" in kinds else "exit 0, no pytest count"


def bench_lines(folder: Path) -> list[str]:
    lines = []
    for name in SINGLE_FILES:
        for r in load(folder, name).get("rows", []):
            flags = (" --cuda-graph" if r.get("cuda_graph") else "") + (" --compile" if r.get("compile") else "")
            naive = (f"naive {r['naive_images_per_second']:,.0f} img/s, ratio {r['speedup']:.2f}x"
                     if r.get("naive_images_per_second") else "no naive recipe")
            naive_memory = f" vs {r['naive_peak_memory_mb']:,.0f} MB" if r.get("naive_peak_memory_mb") else ""
            lines.append(
                f"bench{flags} depth {r['depth']}: resdepth {r['resdepth_images_per_second']:,.0f} img/s, {naive}, "
                f"{r['achieved_gflops']:,.0f} GFLOP/s = {r['peak_fraction'] * 100:.0f}% of a "
                f"{r['matmul_gflops']:,.0f} GFLOP/s {r['precision']} matmul, peak "
                f"{r['resdepth_peak_memory_mb']:,.0f} MB{naive_memory}, "
                f"set-up and warm-up {r.get('warmup_seconds', 0):.0f} s")
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


def single_way(row: dict[str, Any]) -> str:
    return "--compile" if row.get("compile") else "--cuda-graph" if row.get("cuda_graph") else "default"


def single_rates(folder: Path, field: str = "resdepth_images_per_second") -> dict[str, dict[int, float]]:
    """One run's img/s (or another field of its row) per way (default, --cuda-graph, --compile) and depth, from
    every bench step's rows."""
    rates: dict[str, dict[int, float]] = {}
    for name in SINGLE_FILES:
        for r in load(folder, name).get("rows", []):
            rates.setdefault(single_way(r), {})[r["depth"]] = r.get(field) or 0.0
    return rates


def paper_epochs(batch: int) -> int:
    """The epochs of a paper-length run, each ending in an evaluation (the last one cut short)."""
    return math.ceil(PAPER_ITERATIONS / (TRAIN_IMAGES // batch))


def evaluation_seconds(models: int, batch: int, images_per_second: float) -> float:
    """A paper-length run's evaluations (its test images after every epoch) for `models` runs, at EVAL_SPEEDUP times
    the training rate, as the dry run estimates them."""
    return models * paper_epochs(batch) * TEST_IMAGES / (EVAL_SPEEDUP * images_per_second)


def precisions(folder: Path) -> list[str]:
    """The precisions the bench steps of one run and of fused jobs measured in."""
    rows = [r for name in SINGLE_FILES for r in load(folder, name).get("rows", [])]
    rows += [r for _, name in FUSED_FILES for r in fused_rows(folder, name)]
    return sorted({r["precision"] for r in rows})


def table6_precision() -> str:
    """What sweeps/table6.toml trains in (its [train] precision; auto when it says none)."""
    try:  # resdepth's own reader: tomllib, or tomli on Python 3.10, whichever the GPU machine's Python has
        from resdepth.sweep.runner import tomllib

        return tomllib.loads(TABLE6_SWEEP.read_text()).get("train", {}).get("precision", "auto")
    except (ImportError, OSError, ValueError):  # TOMLDecodeError is a ValueError
        return "unknown"


def fastest_single(rates: dict[str, dict[int, float]], depth: int, ways: tuple[str, ...] | None = None
                   ) -> tuple[str, float] | None:
    """The fastest of these ways (all when None) measured at this depth, with its img/s."""
    measured = [(way, by_depth[depth]) for way, by_depth in rates.items()
                if depth in by_depth and (ways is None or way in ways)]
    return max(measured, key=lambda item: item[1], default=None)


def batch_size(folder: Path) -> int:
    """The bench steps' batch (they all run $BATCH), to turn img/s into seconds per step."""
    for name in SINGLE_FILES + tuple(name for _, name in FUSED_FILES):
        config = load(folder, name).get("config")
        if config:
            return config["batch_size"]
    return 128


def fused_rows(folder: Path, name: str) -> list[dict[str, Any]]:
    return load(folder, name).get("fused_rows", [])


def ratios(rate: float, bases: dict[str, float | None]) -> str:
    """' (2.50x default, 1.20x fast)': the rate against each base that was measured."""
    parts = [f"{rate / base:.2f}x {name}" for name, base in bases.items() if base]
    return f" ({', '.join(parts)})" if parts else ""


def fast_path_line(depth: int, rates: dict[str, dict[int, float]], jobs: list[dict[str, Any]]) -> str:
    """The default step, the fastest one-flag step, and the fastest fused-fast job (aggregate) at one depth."""
    default = rates.get("default", {}).get(depth)
    fast = fastest_single(rates, depth, ("--cuda-graph", "--compile"))
    job = max((r for r in jobs if r["depth"] == depth), key=lambda r: r["fused_images_per_second"], default=None)
    parts = [f"default {default:,.0f} img/s" if default else "default NOT MEASURED"]
    parts.append(f"fast {fast[0]} {fast[1]:,.0f} img/s{ratios(fast[1], {'default': default})}" if fast
                 else "fast NOT MEASURED")
    if job is None:
        parts.append("fused-fast NOT MEASURED")
    else:
        aggregate = job["fused_images_per_second"]
        bases = {"default": default, "fast": fast[1] if fast else None,
                 "one compiled run": job.get("sequence_images_per_second")}
        parts.append(f"fused-fast K={job['models']} {aggregate:,.0f} img/s aggregate{ratios(aggregate, bases)}")
    return f"fast path depth {depth}: " + "; ".join(parts)


def fast_path_lines(folder: Path) -> list[str]:
    """Default vs fast vs fused-fast, per depth that any of them measured."""
    rates, jobs = single_rates(folder), fused_rows(folder, "fused-fast.json")
    depths = sorted({depth for by_depth in rates.values() for depth in by_depth} | {r["depth"] for r in jobs})
    return [fast_path_line(depth, rates, jobs) for depth in depths]


def resnet20_target(folder: Path) -> str:
    """One paper-length ResNet-20 run at its quickest measured way: its training steps at the way's img/s, plus its
    set-up and warm-up (compiling or capturing included) and the evaluations after each epoch (estimated)."""
    head = f"target ResNet-20, {PAPER_ITERATIONS} iterations in <= {RESNET20_TARGET_SECONDS} s:"
    rates, warmups, batch = single_rates(folder), single_rates(folder, "warmup_seconds"), batch_size(folder)
    ways = []
    for way, by_depth in rates.items():
        if by_depth.get(20):
            rate, warmup = by_depth[20], warmups[way][20]
            steps, evaluation = PAPER_ITERATIONS * batch / rate, evaluation_seconds(1, batch, rate)
            ways.append((steps + warmup + evaluation, way, rate, steps, warmup, evaluation))
    if not ways:
        return f"{head} NOT MEASURED (no depth-20 bench row)"
    seconds, way, rate, steps, warmup, evaluation = min(ways)
    verdict = "MET" if seconds <= RESNET20_TARGET_SECONDS else "NOT MET"
    return (f"{head} {verdict}, {seconds:.0f} s EXTRAPOLATED ({way}, the quickest way): steps {steps:.0f} s "
            f"({PAPER_ITERATIONS} x {batch} images at {rate:,.0f} img/s) + set-up and warm-up {warmup:.0f} s "
            f"(compiling or capturing included) + evaluation {evaluation:.0f} s (estimated, "
            f"{paper_epochs(batch)} x {TEST_IMAGES:,} test images at "
            f"{EVAL_SPEEDUP:g}x the training rate)")


def fused_target(folder: Path) -> str:
    """The fastest job of 8 fused ResNet-20 seeds (compiled or eager) against one default run, and one fast run."""
    head = (f"target {FUSED_TARGET_MODELS} fused ResNet-20 >= {FUSED_TARGET_RATIO:g}x one unfused run's img/s "
            "(the default step):")
    jobs = [(way, r["fused_images_per_second"], r["fused_vs_sequence"]) for way, name in FUSED_FILES
            for r in fused_rows(folder, name) if r["depth"] == 20 and r["models"] == FUSED_TARGET_MODELS]
    rates = single_rates(folder)
    default = rates.get("default", {}).get(20)
    if not jobs or not default:
        missing = [what for what, there in ((f"a K={FUSED_TARGET_MODELS} fused row", jobs), ("a default row", default))
                   if not there]
        return f"{head} NOT MEASURED (missing at depth 20: {', '.join(missing)})"
    way, aggregate, same_way = max(jobs, key=lambda job: job[1])
    verdict = "MET" if aggregate / default >= FUSED_TARGET_RATIO else "NOT MET"
    fast = fastest_single(rates, 20, ("--cuda-graph", "--compile"))
    versus_fast = f"{aggregate / fast[1]:.2f}x one {fast[0]} run ({fast[1]:,.0f})" if fast else "no fast run measured"
    # the target's ratio counts the fused way's own speed-up (compiling) too: the same way alone, timed alternately
    # in the same process, says what fusing itself gives
    return (f"{head} {verdict}, {aggregate / default:.2f}x: {way} {aggregate:,.0f} img/s aggregate vs "
            f"{default:,.0f} default; {versus_fast}; {same_way:.2f}x one run the same way (alternating, one process)")


def interpolated(points: dict[int, float], depth: int) -> float | None:
    """The value at this depth, linear between the measured depths around it; None outside them."""
    if depth in points:
        return points[depth]
    for (d0, v0), (d1, v1) in itertools.pairwise(sorted(points.items())):
        if d0 < depth < d1:
            return v0 + (v1 - v0) * (depth - d0) / (d1 - d0)
    return None


def single_ways_seconds(folder: Path, batch: int, depth: int, seeds: int) -> list[tuple[float, str]]:
    """Seeds one run after another, per way whose per-step time is measured at or around this depth: each run's
    steps, set-up and warm-up, and evaluations."""
    ways = []
    warmups = single_rates(folder, "warmup_seconds")
    for way, by_depth in single_rates(folder).items():
        step = interpolated({d: batch / rate for d, rate in by_depth.items() if rate}, depth)
        if step is not None:
            warmup = interpolated(warmups[way], depth) or 0.0
            run = PAPER_ITERATIONS * step + warmup + evaluation_seconds(1, batch, batch / step)
            ways.append((seeds * run, f"{seeds} x one {way} run" + note(depth in by_depth)))
    return ways


def note(measured: bool) -> str:
    return "" if measured else " (per-step time interpolated in depth)"


def seed_jobs(sizes: set[int]) -> list[list[int]]:
    """Ways to split Table 6's seeds into fused jobs: jobs of 5 (costed at the next measured K), or of a smaller
    measured K and the rest."""
    ks = {k for k in sizes if 1 < k < TABLE6_SEEDS}
    if max(sizes, default=0) >= TABLE6_SEEDS:
        ks.add(TABLE6_SEEDS)
    return [[k] * (TABLE6_SEEDS // k) + ([TABLE6_SEEDS % k] if TABLE6_SEEDS % k else []) for k in sorted(ks)]


def fused_ways_seconds(folder: Path, batch: int, depth: int) -> list[tuple[float, str]]:
    """Table 6's seeds as fused jobs, where the fused rows measure the depth or two around it (step_seconds)."""
    ways = []
    for way, name in FUSED_FILES:
        rows = fused_rows(folder, name)
        sizes = {r["models"] for r in rows}
        for jobs in seed_jobs(sizes):
            costed = sorted({min(s for s in sizes if s >= k) for k in jobs})  # the K that step_seconds times each at
            depths = [sorted(r["depth"] for r in rows if r["models"] == size) for size in costed]
            if all(ds[0] <= depth <= ds[-1] for ds in depths):  # step_seconds would extrapolate outside them
                seconds = sum(job_seconds(rows, batch, depth, k) for k in jobs)
                ways.append((seconds, f"{way} jobs of {jobs} (costed at K={'/'.join(map(str, costed))})"
                             + note(all(depth in ds for ds in depths))))
    return ways


def job_seconds(rows: list[dict[str, Any]], batch: int, depth: int, k: int) -> float:
    """A fused job of k paper-length runs: its steps, its set-up and warm-up (compiling included) as measured for
    the K it is costed at, and its k runs' evaluations at the job's aggregate rate."""
    size = min(s for s in {r["models"] for r in rows} if s >= k)
    step = step_seconds(rows, batch, depth, k)
    warmup = interpolated({r["depth"]: r.get("fused_warmup_seconds", 0.0) for r in rows if r["models"] == size},
                          depth)
    return PAPER_ITERATIONS * step + (warmup or 0.0) + evaluation_seconds(k, batch, batch * size / step)


def table6_lines(folder: Path) -> list[str]:
    """Table 6 (5 seeds at each depth) plus ResNet-1202 once, each depth at its fastest measured way."""
    batch = batch_size(folder)
    head = (f"target Table 6 (5 seeds x {'/'.join(map(str, TABLE6_DEPTHS))} + ResNet-{DEEPEST} once, "
            f"{PAPER_ITERATIONS} iterations each) in <= {TABLE6_TARGET_MINUTES} min:")
    lines, total, missing = [], 0.0, []
    for depth, seeds in [(d, TABLE6_SEEDS) for d in TABLE6_DEPTHS] + [(DEEPEST, 1)]:
        ways = single_ways_seconds(folder, batch, depth, seeds)
        if seeds > 1:
            ways += fused_ways_seconds(folder, batch, depth)
        if not ways:
            missing.append(depth)
            continue
        seconds, way = min(ways)
        total += seconds
        lines.append(f"EXTRAPOLATION Table 6 depth {depth}: {way}, {seconds / 60:.1f} min")
    if missing:
        return [*lines, f"{head} NOT MEASURED (no measured way at depth {', '.join(map(str, missing))})"]
    verdict = "MET" if total / 60 <= TABLE6_TARGET_MINUTES else "NOT MET"
    measured, asked = precisions(folder), table6_precision()
    caveat = f"; sweeps/table6.toml trains in {asked}, not measured here" if asked not in measured else ""
    return [*lines, f"{head} {verdict}, {total / 60:.1f} min EXTRAPOLATED (steps, set-up and warm-up, evaluation "
                    f"estimated; one GPU; {'/'.join(measured)}{caveat})"]


def target_lines(folder: Path) -> list[str]:
    return [resnet20_target(folder), fused_target(folder), *table6_lines(folder)]


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
    wall = train_wall_seconds(folder)
    if wall:
        lines.append(f"ResNet-20 run wall clock: {wall} s to epoch {int(last['epoch'])} (start-up, compiling or "
                     "capturing, evaluations and checkpoints included)")
        if last["iteration"] < iterations:
            lines.append(f"EXTRAPOLATION: at this wall-clock pace the whole run would take "
                         f"{iterations * wall / last['iteration'] / 60:.1f} min (an upper bound: its start-up counted "
                         "as if it recurred)")
    return lines


def train_wall_seconds(folder: Path) -> int | None:
    """The seconds step 4's `resdepth train` ran, from its time box's line in train.log."""
    try:
        match = re.search(r"^train: exit \d+ after (\d+) s", (folder / "train.log").read_text(), re.MULTILINE)
    except OSError:
        return None
    return int(match.group(1)) if match else None


def summary(folder: Path, iterations: int) -> list[str]:
    return [*gpu_test_lines(folder), *bench_lines(folder), *fast_path_lines(folder), *concurrent_lines(folder),
            *fused_lines(folder, "fused.json", iterations), *fused_lines(folder, "fused-bf16.json", iterations),
            *run_lines(folder, iterations), *target_lines(folder)]


def main() -> None:
    command, folder = sys.argv[1], Path(sys.argv[2])
    if command == "fastest-step":
        print(fastest_step(folder))
    else:
        print("\n".join(summary(folder, int(sys.argv[3]))))


if __name__ == "__main__":
    main()
