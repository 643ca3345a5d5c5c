"""benchmarks/gpu_bench.sh rehearsed on the CPU (`--rehearse`: its steps, commands and files at tiny sizes), so a
renamed option or helper fails here on every change, not on a lent GPU machine that returns only a few files;
and its summary's targets and Table 6 extrapolation computed from hand-made rows of bench's own fields."""

import dataclasses
import json
import os
import re
import subprocess
import sys
import tarfile
from pathlib import Path

import pandas as pd

from resdepth.bench.fused import FuseRow
from resdepth.bench.throughput import BenchRow

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
SCRIPT = BENCHMARKS / "gpu_bench.sh"
SUMMARY = BENCHMARKS / "gpu_bench_summary.py"
MOST_FILES = 8  # what comes back from a lent GPU machine's output folder


def test_the_gpu_check_rehearses_on_the_cpu_with_the_files_a_gpu_machine_returns(tmp_path):
    out = tmp_path / "out"
    env = {**os.environ, "OUT": str(out), "PY": sys.executable}
    result = subprocess.run(["bash", str(SCRIPT), "--rehearse"], cwd=tmp_path, env=env, capture_output=True,
                            text=True, timeout=400)
    assert result.returncode == 0, result.stderr[-2000:]
    files = sorted(p.name for p in out.iterdir())
    assert files == ["gpu-bench.tar.gz", "steps.txt", "summary.txt"] and len(files) <= MOST_FILES
    summary = (out / "summary.txt").read_text()
    assert summary in result.stdout  # printed too
    steps = dict(re.findall(r"^([^:\n]+(?:::\S+)?): (.*)$", (out / "steps.txt").read_text(), re.MULTILINE))
    # every step ran its command line to the end, or was cut by its time box on a busy machine; none refused it
    assert steps["bench"].startswith("exit 0 "), steps
    for name, outcome in steps.items():
        assert re.match(r"exit (0|124|137) |skipped|not on the CPU", outcome), (name, outcome)
    assert any(name.startswith("tests/test_gpu.py::") for name in steps), steps  # one process per GPU test
    # the fast path: the depth beyond DEPTHS runs its default step, and the fused group compiles (on the CPU too);
    # --cuda-graph waits for a GPU
    assert {"deep bench", "deep graph bench", "fused-fast bench"} <= set(steps), steps
    assert steps["deep graph bench"].startswith("not on the CPU")
    assert "bench depth 8: resdepth" in summary and "skipped because: needs a CUDA GPU" in summary
    assert "fast path depth 8: default " in summary
    if steps["fused-fast bench"].startswith("exit 0 "):  # else cut by its time box on a loaded machine
        assert re.search(r"^fast path depth 8: .*; fused-fast K=2 [\d,]+ img/s aggregate", summary, re.MULTILINE)
    for target in ("ResNet-20, 64000 iterations in <= 90 s", "8 fused ResNet-20 >= 3x", "Table 6 (5 seeds x"):
        assert re.search(rf"^target {re.escape(target)}.*: (MET|NOT MET|NOT MEASURED)", summary, re.MULTILINE), target
    with tarfile.open(out / "gpu-bench.tar.gz") as archive:
        names = {Path(name).name for name in archive.getnames()}
    assert {"env.txt", "gpu-tests.log", "bench.json", "deep.json", "deep-graph.log", "fused-fast.log",
            "concurrent.log", "fused.log", "fused-bf16.log", "train.log", "summary.txt"} <= names


# ------------------------------------------------------------------ the summary's targets, from hand-made rows
BATCH = 128


def row(cls, **given):
    """A row as `bench --json` writes it: the dataclass's own fields (a renamed one fails here), the ones the
    test does not care about filled with placeholders of their type."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    assert set(given) <= set(fields), set(given) - set(fields)
    placeholder = {"int": 1, "float": 1.0, "bool": False, "str": "x"}
    values = {name: given.get(name, [] if f.type.startswith("list") else placeholder.get(f.type))
              for name, f in fields.items()}
    return dataclasses.asdict(cls(**values))


def write_bench(folder, name, rates, warmups=None, **flags):
    """rates: {depth: img/s}; warmups: {depth: seconds of set-up and warm-up} (none where not given)."""
    rows = [row(BenchRow, depth=depth, resdepth_images_per_second=rate, precision="tf32",
                warmup_seconds=(warmups or {}).get(depth, 0.0), **flags) for depth, rate in rates.items()]
    (folder / name).write_text(json.dumps({"config": {"batch_size": BATCH}, "rows": rows}))


def write_fused(folder, name, rates, warmup=0.0):
    """rates: {(depth, K): (aggregate img/s of the fused job, img/s of one run)}."""
    rows = [row(FuseRow, depth=depth, models=k, precision="tf32", fused_images_per_second=fused,
                sequence_images_per_second=single, fused_vs_sequence=fused / single, fused_warmup_seconds=warmup)
            for (depth, k), (fused, single) in rates.items()]
    (folder / name).write_text(json.dumps({"config": {"batch_size": BATCH}, "fuse": [], "fused_rows": rows}))


def measured_folder(folder, scale=1.0):
    """Per-step times in ms, batch 128: default 10/20/40/400, --cuda-graph 1.25/5/10/100 at depths 20/56/110/1202,
    --compile 2.5 at 20; fused-fast K=8 5 and 20 ms at 20 and 56, eager fused K=2 12.5 and K=8 25 ms at 20.
    Set-up and warm-up: 2 s for --cuda-graph at 20, 40 s for --compile, 30 s for a fused-fast job; none elsewhere."""
    s = scale
    write_bench(folder, "bench.json", {20: 12800 * s, 56: 6400 * s, 110: 3200 * s})
    write_bench(folder, "deep.json", {1202: 320 * s})
    write_bench(folder, "graph.json", {20: 102400 * s, 56: 25600 * s, 110: 12800 * s}, {20: 2.0}, cuda_graph=True)
    write_bench(folder, "deep-graph.json", {1202: 1280 * s}, cuda_graph=True)
    write_bench(folder, "compile.json", {20: 51200 * s}, {20: 40.0}, compile=True)
    write_fused(folder, "fused-fast.json", {(20, 8): (204800 * s, 51200 * s), (56, 8): (51200 * s, 25600 * s)},
                warmup=30.0)
    write_fused(folder, "fused.json", {(20, 2): (20480 * s, 12800 * s), (20, 8): (40960 * s, 12800 * s)})
    return folder


def summary_of(folder):
    result = subprocess.run([sys.executable, str(SUMMARY), "summary", str(folder), "64000"], capture_output=True,
                            text=True, check=True)
    return result.stdout.splitlines()


def test_the_summary_checks_the_targets_and_extrapolates_table6_at_each_depths_fastest_way(tmp_path):
    lines = summary_of(measured_folder(tmp_path))
    assert ("fast path depth 20: default 12,800 img/s; fast --cuda-graph 102,400 img/s (8.00x default); fused-fast "
            "K=8 204,800 img/s aggregate (16.00x default, 2.00x fast, 4.00x one compiled run)") in lines
    assert "fast path depth 1202: default 320 img/s; fast --cuda-graph 1,280 img/s (4.00x default); fused-fast NOT " \
           "MEASURED" in lines
    # A paper run evaluates 10,000 test images after each of its ceil(64000 / 390) = 165 epochs, estimated at 3x
    # the training rate. ResNet-20 --cuda-graph: 64000 x 128 / 102,400 = 80 s of steps + 2 s warm-up + 1.65M /
    # 307,200 = 5.4 s of evaluation = 87 s; --compile's 160 + 40 + 10.7 s and the default's 640 s are longer
    assert ("target ResNet-20, 64000 iterations in <= 90 s: MET, 87 s EXTRAPOLATED (--cuda-graph, the quickest way): "
            "steps 80 s (64000 x 128 images at 102,400 img/s) + set-up and warm-up 2 s (compiling or capturing "
            "included) + evaluation 5 s (estimated, 165 x 10,000 test images at 3x the training rate)") in lines
    # 204,800 aggregate / 12,800 default; the fused-fast row's own same-way ratio, 204,800 / 51,200
    assert ("target 8 fused ResNet-20 >= 3x one unfused run's img/s (the default step): MET, 16.00x: fused-fast "
            "204,800 img/s aggregate vs 12,800 default; 2.00x one --cuda-graph run (102,400); 4.00x one run the "
            "same way (alternating, one process)") in lines
    # Each depth: 64000 steps + set-up and warm-up + 5 runs' evaluations (8.25M images at 3x the aggregate rate).
    # 20: one fused-fast job of 5 at K=8's 5 ms: 320 + 30 + 13.4 s = 6.1 min, against 5 x (80 + 2 + 5.4) s = 7.3;
    # 32, 44: fused 10, 15 ms interpolated (640 + 30 + 26.9 s; 960 + 30 + 40.3 s); 56: 1280 + 30 + 53.7 s;
    # 110: 5 x (640 + 43.0 s), fused-fast not measured there; 1202: one run, 6400 + 429.7 s. 13,699 s = 228.3 min
    assert [line for line in lines if line.startswith("EXTRAPOLATION Table 6")] == [
        "EXTRAPOLATION Table 6 depth 20: fused-fast jobs of [5] (costed at K=8), 6.1 min",
        "EXTRAPOLATION Table 6 depth 32: fused-fast jobs of [5] (costed at K=8) (per-step time interpolated in "
        "depth), 11.6 min",
        "EXTRAPOLATION Table 6 depth 44: fused-fast jobs of [5] (costed at K=8) (per-step time interpolated in "
        "depth), 17.2 min",
        "EXTRAPOLATION Table 6 depth 56: fused-fast jobs of [5] (costed at K=8), 22.7 min",
        "EXTRAPOLATION Table 6 depth 110: 5 x one --cuda-graph run, 56.9 min",
        "EXTRAPOLATION Table 6 depth 1202: 1 x one --cuda-graph run, 113.8 min"]
    # measured in tf32, while the project's Table 6 sweep file asks for fp32: the line says so
    assert ("target Table 6 (5 seeds x 20/32/44/56/110 + ResNet-1202 once, 64000 iterations each) in <= 45 min: "
            "NOT MET, 228.3 min EXTRAPOLATED (steps, set-up and warm-up, evaluation estimated; one GPU; tf32; "
            "sweeps/table6.toml trains in fp32, not measured here)") in lines
    fastest = subprocess.run([sys.executable, str(SUMMARY), "fastest-step", str(tmp_path)], capture_output=True,
                             text=True, check=True)
    assert fastest.stdout.strip() == "--cuda-graph"


def test_a_cut_resnet20_run_reports_its_training_and_wall_clock_pace(tmp_path):
    # step 4 cut at its time box after 2 epochs (780 iterations) of 30 s each, in 75 s of wall clock
    pd.DataFrame({"epoch": [1, 2], "iteration": [390, 780], "epoch_seconds": [30.0, 30.0],
                  "images_per_second": [1664.0, 1664.0], "test_error": [60.0, 50.0]}).to_csv(tmp_path / "metrics.csv")
    (tmp_path / "train.log").write_text("resdepth train --cuda-graph\ntrain: exit 124 after 75 s (limit 75 s), CUT\n")
    lines = summary_of(tmp_path)
    assert "ResNet-20 run: 780 of 64000 iterations in 60 s of training epochs (1,664 img/s median epoch), test " \
           "error 50.00% at epoch 2" in lines
    assert "EXTRAPOLATION: the whole run would take 82.1 min of training epochs at this pace" in lines  # 64000 / 13 /s
    assert "ResNet-20 run wall clock: 75 s to epoch 2 (start-up, compiling or capturing, evaluations and checkpoints " \
           "included)" in lines
    assert "EXTRAPOLATION: at this wall-clock pace the whole run would take 102.6 min (an upper bound: its start-up " \
           "counted as if it recurred)" in lines  # 64000 x 75 / 780 s


def test_without_fused_fast_or_resnet1202_the_summary_falls_back_or_says_not_measured(tmp_path):
    fast, cut = tmp_path / "fast", tmp_path / "cut"
    fast.mkdir()
    cut.mkdir()
    # 6x the speed with the same warm-ups, which then weigh more: at depth 20, 5 runs of (80 + 5.4) / 6 + 2 s = 81 s
    # beat one fused job of (320 + 13.4) / 6 + 30 = 86 s; the other depths as before, / 6 but their 30 s: 39.6 min
    measured_folder(fast, scale=6)
    lines = summary_of(fast)
    assert "EXTRAPOLATION Table 6 depth 20: 5 x one --cuda-graph run, 1.4 min" in lines
    assert "in <= 45 min: MET, 39.6 min EXTRAPOLATED (steps, set-up and warm-up" in lines[-1]
    measured_folder(cut)
    for step in ("fused-fast.json", "deep.json", "deep-graph.json"):  # refused, and cut before its first row
        (cut / step).unlink()
    lines = summary_of(cut)
    assert ("target 8 fused ResNet-20 >= 3x one unfused run's img/s (the default step): MET, 3.20x: fused eager "
            "40,960 img/s aggregate vs 12,800 default; 0.40x one --cuda-graph run (102,400); 3.20x one run the same "
            "way (alternating, one process)") in lines
    # 32 = 20 + a third of the way to 56: 1.25 + (5 - 1.25) / 3 = 2.5 ms a step, so 160 s of steps, 2 x 2/3 = 1.3 s
    # of warm-up and 1.65M / (3 x 51,200) = 10.7 s of evaluation a run, x 5 seeds = 14.3 min
    assert ("EXTRAPOLATION Table 6 depth 32: 5 x one --cuda-graph run (per-step time interpolated in depth), "
            "14.3 min") in lines
    assert lines[-1].endswith("in <= 45 min: NOT MEASURED (no measured way at depth 1202)")


def test_the_gpu_test_lines_tell_skipped_from_passed_and_name_a_failed_collection(tmp_path):
    # a test that skips (CUDA unusable: a driver too old for the build) exits 0 as a pass does: the summary said
    # "passed" for each; a test module that did not import left no ids and no reason: "none ran"
    ids = "tests/test_gpu.py::test_a\ntests/test_gpu.py::test_b\ntests/test_gpu.py::test_c\ntests/test_gpu.py::test_d"
    (tmp_path / "gpu-tests.log").write_text(
        f"{ids}\n\n4 tests collected in 0.50s\ngpu tests collected: exit 0 (pytest --collect-only)\n"
        "s\nSKIPPED [1] tests/test_gpu.py:31: needs a CUDA GPU\n1 skipped in 0.40s\n"
        "tests/test_gpu.py::test_a: exit 0 after 3 s (limit 90 s)\n"
        ".\n1 passed in 12.00s\ntests/test_gpu.py::test_b: exit 0 after 14 s (limit 90 s)\n"
        "tests/test_gpu.py::test_c: exit 137 after 95 s (limit 90 s), CUT\n"
        "F\n1 failed in 2.00s\ntests/test_gpu.py::test_d: exit 1 after 4 s (limit 90 s)\n")
    lines = summary_of(tmp_path)
    assert [line for line in lines if line.startswith(("gpu test", "  skipped because"))] == [
        "gpu test test_a: skipped in 3 s", "gpu test test_b: passed in 14 s",
        "gpu test test_c: CUT at its time limit in 95 s", "gpu test test_d: FAILED (exit 1) in 4 s",
        "  skipped because: needs a CUDA GPU"]
    (tmp_path / "gpu-tests.log").write_text(
        "ImportError while importing test module 'tests/test_gpu.py'.\nE   ModuleNotFoundError: No module named "
        "'pandas'\n1 error in 0.30s\ngpu tests collected: exit 2 (pytest --collect-only)\n")
    assert [line for line in summary_of(tmp_path) if line.startswith("gpu test")] == [
        "gpu tests: COLLECTION FAILED (exit 2): ModuleNotFoundError: No module named 'pandas'"]
