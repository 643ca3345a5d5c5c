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


def write_bench(folder, name, rates, **flags):
    rows = [row(BenchRow, depth=depth, resdepth_images_per_second=rate, precision="tf32", **flags)
            for depth, rate in rates.items()]
    (folder / name).write_text(json.dumps({"config": {"batch_size": BATCH}, "rows": rows}))


def write_fused(folder, name, rates):
    """rates: {(depth, K): (aggregate img/s of the fused job, img/s of one run)}."""
    rows = [row(FuseRow, depth=depth, models=k, precision="tf32", fused_images_per_second=fused,
                sequence_images_per_second=single, fused_vs_sequence=fused / single)
            for (depth, k), (fused, single) in rates.items()]
    (folder / name).write_text(json.dumps({"config": {"batch_size": BATCH}, "fuse": [], "fused_rows": rows}))


def measured_folder(folder, scale=1.0):
    """Per-step times in ms, batch 128: default 10/20/40/400, --cuda-graph 1.25/5/10/100 at depths 20/56/110/1202,
    --compile 2.5 at 20; fused-fast K=8 5 and 20 ms at 20 and 56, eager fused K=2 12.5 and K=8 25 ms at 20."""
    s = scale
    write_bench(folder, "bench.json", {20: 12800 * s, 56: 6400 * s, 110: 3200 * s})
    write_bench(folder, "deep.json", {1202: 320 * s})
    write_bench(folder, "graph.json", {20: 102400 * s, 56: 25600 * s, 110: 12800 * s}, cuda_graph=True)
    write_bench(folder, "deep-graph.json", {1202: 1280 * s}, cuda_graph=True)
    write_bench(folder, "compile.json", {20: 51200 * s}, compile=True)
    write_fused(folder, "fused-fast.json", {(20, 8): (204800 * s, 51200 * s), (56, 8): (51200 * s, 25600 * s)})
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
    # 64000 x 128 images at 102,400 img/s; 204,800 aggregate / 12,800 default
    assert ("target ResNet-20, 64000 iterations in <= 90 s: MET, 80 s EXTRAPOLATED: 64000 x 128 images at 102,400 "
            "img/s (--cuda-graph, the fastest single step; training steps only)") in lines
    assert ("target 8 fused ResNet-20 >= 3x one unfused run's img/s (the default step): MET, 16.00x: fused-fast "
            "204,800 img/s aggregate vs 12,800 default; 2.00x one --cuda-graph run (102,400)") in lines
    # 64000 steps each: 20: fused 5 ms (320 s) beats 5 x 1.25 ms (400 s); 32, 44: fused 10, 15 ms interpolated;
    # 56: fused 20 ms; 110: 5 x 10 ms, fused-fast not measured there; 1202: one 100 ms run: 12800 s = 213.3 min
    assert [line for line in lines if line.startswith("EXTRAPOLATION Table 6")] == [
        "EXTRAPOLATION Table 6 depth 20: fused-fast jobs of [5] (costed at K=8), 5.3 min",
        "EXTRAPOLATION Table 6 depth 32: fused-fast jobs of [5] (costed at K=8) (per-step time interpolated in "
        "depth), 10.7 min",
        "EXTRAPOLATION Table 6 depth 44: fused-fast jobs of [5] (costed at K=8) (per-step time interpolated in "
        "depth), 16.0 min",
        "EXTRAPOLATION Table 6 depth 56: fused-fast jobs of [5] (costed at K=8), 21.3 min",
        "EXTRAPOLATION Table 6 depth 110: 5 x one --cuda-graph run, 53.3 min",
        "EXTRAPOLATION Table 6 depth 1202: 1 x one --cuda-graph run, 106.7 min"]
    assert ("target Table 6 (5 seeds x 20/32/44/56/110 + ResNet-1202 once, 64000 iterations each) in <= 45 min: "
            "NOT MET, 213.3 min EXTRAPOLATED (training steps only, one GPU)") in lines
    fastest = subprocess.run([sys.executable, str(SUMMARY), "fastest-step", str(tmp_path)], capture_output=True,
                             text=True, check=True)
    assert fastest.stdout.strip() == "--cuda-graph"


def test_without_fused_fast_or_resnet1202_the_summary_falls_back_or_says_not_measured(tmp_path):
    fast, cut = tmp_path / "fast", tmp_path / "cut"
    fast.mkdir()
    cut.mkdir()
    measured_folder(fast, scale=5)
    assert "in <= 45 min: MET, 42.7 min EXTRAPOLATED (training steps only, one GPU)" in summary_of(fast)[-1]
    measured_folder(cut)
    for step in ("fused-fast.json", "deep.json", "deep-graph.json"):  # refused, and cut before its first row
        (cut / step).unlink()
    lines = summary_of(cut)
    assert ("target 8 fused ResNet-20 >= 3x one unfused run's img/s (the default step): MET, 3.20x: fused eager "
            "40,960 img/s aggregate vs 12,800 default; 0.40x one --cuda-graph run (102,400)") in lines
    # 32 = 20 + a third of the way to 56: 1.25 + (5 - 1.25) / 3 = 2.5 ms a step, x 5 seeds x 64000
    assert ("EXTRAPOLATION Table 6 depth 32: 5 x one --cuda-graph run (per-step time interpolated in depth), "
            "13.3 min") in lines
    assert lines[-1].endswith("in <= 45 min: NOT MEASURED (no measured way at depth 1202)")
