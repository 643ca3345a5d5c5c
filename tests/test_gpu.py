"""What only a CUDA GPU can show: resume after SIGKILL, CUDA-graph runs and their resume, the last visible GPU,
bf16, two jobs sharing a GPU, memory released when a run ends, --deterministic's same bits, a compiled run and its
resume, and fused seeds (--fuse) on CUDA, eager and with their step compiled or captured. Every test skips without
CUDA; `benchmarks/gpu_bench.sh` runs this module first on a GPU machine.

Tolerances: cuDNN picks convolution algorithms whose backward sums in a varying order (atomics), so two CUDA runs
of one seed are not bit-identical, resumed or not. Resumed runs are compared with an uninterrupted one by their
loss curves, within the bounds the CPU suite measured for fp32 re-ordering (first epoch within 1e-3, mean
difference below 0.025, largest below 0.05); a mistake in the resume (a lost epoch, replayed batches, a reset
optimizer) moves the curve by far more.
"""

import gc
import json
import signal
import subprocess
import sys
import time
from dataclasses import replace

import pandas as pd
import pytest
import torch

from resdepth.results.runs import read_checkpoint
from resdepth.train.devices import clear_cublas_workspaces
from resdepth.train.fused import run_fused_training
from resdepth.train.trainer import run_training

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def assert_close_curves(a, b) -> None:
    difference = (a - b).abs()
    assert len(a) == len(b)
    assert difference.iloc[0] < 1e-3, f"first-epoch losses differ by {difference.iloc[0]}"
    assert difference.mean() < 0.025 and difference.max() < 0.05, f"loss curves differ: {difference.round(4).tolist()}"


def losses(run_dir):
    return pd.read_csv(run_dir / "metrics.csv")["train_loss"]


@pytest.fixture
def gpu_config(tiny_config):
    return tiny_config(device="cuda", epochs=8, precision="fp32")


def test_cuda_interrupted_run_resumes_with_its_rng_on_the_cpu(tmp_path, gpu_config):
    run_training(gpu_config, tmp_path / "ref")
    seen: list[int] = []
    stopped = run_training(gpu_config, tmp_path / "cut", should_stop=lambda: seen.append(1) or len(seen) > 10)
    assert stopped.state == "interrupted"
    state = read_checkpoint(tmp_path / "cut" / "checkpoint.pt")
    assert state["device_type"] == "cuda" and state["generator"].numel() == 16  # a CUDA generator's state
    assert torch.is_tensor(state["cuda_rng"])  # one GPU's state, not one per visible GPU
    assert run_training(gpu_config, tmp_path / "cut").state == "done"
    assert_close_curves(losses(tmp_path / "cut"), losses(tmp_path / "ref"))


def test_cuda_sigkill_then_resume_matches_an_uninterrupted_run(tmp_path, cli_env, wait_for_rows):
    # `python -m resdepth.cli`, not the console script: on a GPU machine resdepth runs from the checkout, uninstalled.
    # A checkpoint at each epoch: CUDA's auto cadence (a minute) would leave this seconds-long run none to resume
    # from, and the rerun would start over and match trivially.
    train = [sys.executable, "-m", "resdepth.cli", "train", "--depth", "8", "--epochs", "12", "--dataset", "synthetic",
             "--synthetic-train", "1024", "--synthetic-test", "256", "--batch-size", "32", "--device", "cuda",
             "--precision", "fp32", "--checkpoint-every", "epoch"]
    assert subprocess.run([*train, "--out", str(tmp_path / "ref")], env=cli_env,
                          timeout=300).returncode == 0
    victim = subprocess.Popen([*train, "--out", str(tmp_path / "cut")], env=cli_env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    run_dir = tmp_path / "cut" / "residual-8-s0"
    wait_for_rows(run_dir / "metrics.csv", 3)
    time.sleep(0.1)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    assert len(pd.read_csv(run_dir / "metrics.csv")) < 12, "the run finished before it could be killed"
    saved = read_checkpoint(run_dir / "checkpoint.pt")["iteration"]
    assert saved > 0, "no checkpoint to resume from"
    assert subprocess.run([*train, "--out", str(tmp_path / "cut")], env=cli_env,
                          timeout=300).returncode == 0
    attempts = json.loads((run_dir / "config.json").read_text())["attempts"]
    assert [attempt["from_iteration"] for attempt in attempts] == [0, saved]  # resumed from it, not started over
    assert_close_curves(losses(run_dir), losses(tmp_path / "ref" / "residual-8-s0"))


def assert_fast_run_follows_eager_and_resumes(tmp_path, gpu_config, **fast) -> None:
    """The run with `fast` stopped after 10 steps and resumed, so it captures (or compiles) twice, on a fresh
    optimizer and on a loaded one; its curve against the eager run's."""
    run_training(gpu_config, tmp_path / "eager")
    config = replace(gpu_config, **fast)
    seen: list[int] = []
    stopped = run_training(config, tmp_path / "fast", should_stop=lambda: seen.append(1) or len(seen) > 10)
    assert stopped.state == "interrupted"
    assert run_training(config, tmp_path / "fast").state == "done"
    assert losses(tmp_path / "fast").iloc[-1] < losses(tmp_path / "fast").iloc[0] - 0.5
    assert_close_curves(losses(tmp_path / "fast"), losses(tmp_path / "eager"))


def test_cuda_graph_run_matches_the_eager_run_and_resumes(tmp_path, gpu_config):
    assert_fast_run_follows_eager_and_resumes(tmp_path, gpu_config, cuda_graph=True)


def test_cuda_graph_on_the_last_visible_gpu(tmp_path, gpu_config):
    last = f"cuda:{torch.cuda.device_count() - 1}"
    run_training(replace(gpu_config, device=last), tmp_path / "eager")
    result = run_training(replace(gpu_config, device=last, cuda_graph=True), tmp_path / "graph")
    assert result.state == "done"
    assert_close_curves(losses(tmp_path / "graph"), losses(tmp_path / "eager"))  # replays that did nothing would not


def test_cuda_bf16_trains_and_resumes(tmp_path, gpu_config):
    config = replace(gpu_config, precision="bf16")
    seen: list[int] = []
    assert run_training(config, tmp_path, should_stop=lambda: seen.append(1) or len(seen) > 10).state == "interrupted"
    assert run_training(config, tmp_path).state == "done"
    curve = losses(tmp_path)
    assert curve.notna().all() and curve.iloc[-1] < curve.iloc[0] - 0.5


def test_cuda_memory_is_released_when_a_run_ends(tmp_path, gpu_config):
    # cuBLAS's per-stream scratch buffers (32 MiB each on an H100) are torch's process-wide cache, reused by the next
    # run, not the run's: freed before each count (the capture frees those it made itself, CapturedStep)
    torch.cuda.synchronize()
    clear_cublas_workspaces()
    before = torch.cuda.memory_allocated()
    gc.disable()  # what the cyclic collector would free does not count: the run must let go itself
    try:
        run_training(replace(gpu_config, cuda_graph=True, epochs=2), tmp_path)
        torch.cuda.synchronize()
        clear_cublas_workspaces()
        held = torch.cuda.memory_allocated() - before
    finally:
        gc.enable()
    assert held < 2**20, f"{held / 2**20:.1f} MiB still allocated after the run ended"


def test_cuda_sweep_with_two_jobs_per_gpu(tmp_path, tiny_config, tiny_sweep, run_sweep_now):
    last = torch.cuda.device_count() - 1
    sweep = tiny_sweep(tmp_path, seeds=[0, 1], gpus=[last], jobs_per_gpu=2, executor="local",
                       train=tiny_config(device="cuda", threads=None))
    planned, outcomes = run_sweep_now(sweep)
    assert {p.device for p in planned} == {f"cuda:{last}"}
    assert len(outcomes) == 4 and {o.state for o in outcomes.values()} == {"done"}
    from resdepth.results.runs import RunStatus

    assert {RunStatus.read(p.cell.run_dir).device for p in planned} == {f"cuda:{last}"}  # the machine's number


def test_cuda_fused_seeds_follow_their_own_runs_resume_and_free_their_memory(tmp_path, gpu_config):
    configs = [replace(gpu_config, seed=seed) for seed in (0, 1)]
    for config in configs:
        run_training(config, tmp_path / f"alone-{config.seed}")
    fused = [tmp_path / f"fused-{config.seed}" for config in configs]
    seen: list[int] = []
    stopped = run_fused_training(configs, fused, should_stop=lambda: seen.append(1) or len(seen) > 10)
    assert [r.state for r in stopped] == ["interrupted"] * 2
    state = read_checkpoint(fused[1] / "checkpoint.pt")
    assert state["device_type"] == "cuda" and state["generator"].numel() == 16 and torch.is_tensor(state["cuda_rng"])
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    gc.disable()
    try:
        assert [r.state for r in run_fused_training(configs, fused)] == ["done"] * 2
        torch.cuda.synchronize()
        held = torch.cuda.memory_allocated() - before
    finally:
        gc.enable()
    assert held < 2**20, f"{held / 2**20:.1f} MiB still allocated after the fused job ended"
    for config, run_dir in zip(configs, fused, strict=True):
        assert_close_curves(losses(run_dir), losses(tmp_path / f"alone-{config.seed}"))
    bf16 = [replace(config, precision="bf16") for config in configs]
    assert [r.state for r in run_fused_training(bf16, [tmp_path / "bf16-0", tmp_path / "bf16-1"])] == ["done"] * 2
    curve = losses(tmp_path / "bf16-1")
    assert curve.notna().all() and curve.iloc[-1] < curve.iloc[0] - 0.5


def test_cuda_deterministic_runs_are_bit_identical(tmp_path, gpu_config):
    # --deterministic promises the same bits in every process: cuDNN's deterministic algorithms in place of the
    # fastest ones cudnn.benchmark times
    config = replace(gpu_config, deterministic=True, epochs=3)
    for name in ("a", "b"):
        assert run_training(config, tmp_path / name).state == "done"
    columns = ["train_loss", "train_error", "test_loss", "test_error"]
    metrics = [pd.read_csv(tmp_path / name / "metrics.csv")[columns] for name in ("a", "b")]
    pd.testing.assert_frame_equal(metrics[0], metrics[1], check_exact=True)
    weights = [read_checkpoint(tmp_path / name / "checkpoint.pt")["model"] for name in ("a", "b")]
    assert all(torch.equal(weights[0][key], weights[1][key]) for key in weights[0])


def test_cuda_compiled_run_matches_the_eager_run_and_resumes(tmp_path, gpu_config):
    # --compile alone: torch.compile's CUDA-graph mode for forward and backward, the foreach SGD update compiled
    # (among the last tests: compiling is slow)
    assert_fast_run_follows_eager_and_resumes(tmp_path, gpu_config, compile=True)


@pytest.mark.parametrize("fast", [{"compile": True}, {"cuda_graph": True, "precision": "bf16"}],
                         ids=["compile", "cuda-graph-bf16"])
def test_cuda_fast_fused_group_follows_the_eager_one_as_a_member_drops_out(tmp_path, gpu_config, fast):
    # the group's step compiled in torch.compile's CUDA-graph mode (--compile, and --cuda-graph for a group, here
    # with bf16 autocast inside the graph), the stacks marked static; seed 1 starts 10 steps ahead, so it finishes
    # first and the step compiles again for K = 1
    configs = [replace(gpu_config, seed=seed, precision=fast.get("precision", "fp32")) for seed in (0, 1)]
    seen: list[int] = []
    for way in ("fast", "eager"):
        seen.clear()
        run_training(configs[1], tmp_path / way / "s1", should_stop=lambda: seen.append(1) or len(seen) > 10)
    fast_configs = [replace(config, **fast) for config in configs]
    fast_results = run_fused_training(fast_configs, [tmp_path / "fast" / f"s{seed}" for seed in (0, 1)])
    run_fused_training(configs, [tmp_path / "eager" / f"s{seed}" for seed in (0, 1)])
    assert [r.state for r in fast_results] == ["done"] * 2
    for seed in (0, 1):
        ours, theirs = losses(tmp_path / "fast" / f"s{seed}"), losses(tmp_path / "eager" / f"s{seed}")
        if "precision" in fast:  # bf16 rounds where the compiled kernels fuse, not where eager's do: both learn
            assert ours.notna().all() and ours.iloc[-1] < ours.iloc[0] - 0.5 and len(ours) == len(theirs)
        else:
            assert_close_curves(ours, theirs)
