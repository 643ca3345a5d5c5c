"""benchmarks/gpu_bench.sh rehearsed on the CPU (`--rehearse`: its steps, commands and files at tiny sizes), so a
renamed option or helper fails here on every change, not on a lent GPU machine that returns only a few files."""

import os
import re
import subprocess
import sys
import tarfile
from pathlib import Path

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "gpu_bench.sh"
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
    assert "bench depth 8: resdepth" in summary and "skipped because: needs a CUDA GPU" in summary
    with tarfile.open(out / "gpu-bench.tar.gz") as archive:
        names = {Path(name).name for name in archive.getnames()}
    assert {"env.txt", "gpu-tests.log", "bench.json", "concurrent.log", "fused.log", "fused-bf16.log", "train.log",
            "summary.txt"} <= names
