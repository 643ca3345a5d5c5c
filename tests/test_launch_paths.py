"""Every way of starting GPU work, driven on the CPU through its CUDA branch by the fake CUDA
(tests/fakecuda/fake_cuda.py) as far as its first CUDA tensor: each process must get there on one indexed device
that it can see. What happens after that first tensor only a GPU shows (tests/test_gpu.py, benchmarks/gpu_bench.sh).

A record is one process's first CUDA tensor: the device it asked for, the index that means in the process, the
physical GPU behind it (CUDA_VISIBLE_DEVICES) and the process's current device."""

import os
import subprocess
import sys

import pytest
import torch
from fake_cuda import FakeCudaReached

from resdepth.bench.estimate import estimate_plan
from resdepth.bench.fused import ProcessPool, run_fuse_benchmark
from resdepth.bench.throughput import run_benchmark
from resdepth.sweep.runner import plan_sweep
from resdepth.train.fused import run_fused_training
from resdepth.train.trainer import run_training


def where(record: dict) -> tuple[str, int, int]:
    """(the device asked for, the physical GPU, the current device's index)."""
    return record["requested"], record["physical"], record["current"]


def assert_each_process_on(records: list[dict], expected: set[tuple[str, int, int]], processes: int) -> None:
    assert len(records) == processes and len({r["pid"] for r in records}) == processes, records
    assert {where(r) for r in records} == expected, records


# ---------------------------------------------------------------------------------------------- in this process
@pytest.mark.parametrize("device, visible, expected", [
    ("cuda", None, ("cuda:0", 0, 0)),
    ("auto", None, ("cuda:0", 0, 0)),
    ("cuda:3", None, ("cuda:3", 3, 3)),
    ("cuda", "2,3", ("cuda:0", 2, 0)),
    ("cuda:1", "2,3", ("cuda:1", 3, 1)),
])
def test_run_training_sets_and_uses_one_indexed_device(tmp_path, fake_cuda_machine, tiny_config, device, visible,
                                                       expected):
    machine = fake_cuda_machine(4, visible)
    with pytest.raises(FakeCudaReached):
        run_training(tiny_config(device=device), tmp_path / "run")
    assert_each_process_on(machine.records(), {expected}, 1)


def test_run_training_gives_the_caller_its_current_gpu_back(tmp_path, fake_cuda_machine, tiny_config):
    # a run on cuda:3 set the process's current GPU and left it there: a notebook's later "cuda" tensors landed on 3
    fake_cuda_machine(4)
    torch.cuda.set_device(1)
    with pytest.raises(FakeCudaReached):
        run_training(tiny_config(device="cuda:3"), tmp_path / "run")
    assert torch.cuda.current_device() == 1


def test_a_device_past_the_visible_gpus_is_refused_in_one_line(tmp_path, fake_cuda_machine, tiny_config):
    fake_cuda_machine(4, "2,3")
    with pytest.raises(Exception, match=r"device cuda:2 does not exist: this machine has 2 GPU\(s\)"):
        run_training(tiny_config(device="cuda:2"), tmp_path / "run")


def test_the_fake_is_as_strict_as_cuda(fake_cuda_machine):
    fake_cuda_machine(2)
    with pytest.raises(ValueError, match=r"Expected a torch\.device with a specified index"):
        torch.cuda.set_device(torch.device("cuda"))
    with pytest.raises(RuntimeError, match="invalid device ordinal"):
        torch.cuda.set_device(2)
    with pytest.raises(TypeError, match=r"CPU torch\.ByteTensor"):
        torch.cuda.set_rng_state(torch.zeros(16))
    state = torch.cuda.get_rng_state("cuda:1")
    assert state.device.type == "cpu" and state.dtype == torch.uint8
    with pytest.raises(FakeCudaReached):
        torch.zeros(1, device="cuda:1")


def test_run_fused_training_sets_and_uses_one_indexed_device(tmp_path, fake_cuda_machine, tiny_config):
    machine = fake_cuda_machine(2)
    configs = [tiny_config(device="cuda", seed=seed) for seed in (0, 1)]
    with pytest.raises(FakeCudaReached):
        run_fused_training(configs, [tmp_path / "s0", tmp_path / "s1"])
    assert_each_process_on(machine.records(), {("cuda:0", 0, 0)}, 1)


def test_bench_uses_one_indexed_device(fake_cuda_machine, tiny_bench):
    machine = fake_cuda_machine(2, "1")
    with pytest.raises(FakeCudaReached):
        run_benchmark(tiny_bench(device="cuda"))
    assert_each_process_on(machine.records(), {("cuda:0", 1, 0)}, 1)


def test_bench_fuse_and_its_processes_each_use_one_indexed_device(fake_cuda_machine, tiny_bench):
    machine = fake_cuda_machine(2)
    config = tiny_bench(device="cuda")
    with pytest.raises(FakeCudaReached):  # the parent: its own warm-up, then the fused job
        run_fuse_benchmark(config, (2,), processes=True)
    [parent] = machine.records()
    # the K processes it starts beside the fused job (spawned: a fresh interpreter each) are given its device; one
    # here, as the pool stops at the first that fails (a second may not have read its arguments by then)
    with pytest.raises(RuntimeError, match="a benchmark process failed: FakeCudaReached"):
        ProcessPool(config, 8, 1, torch.device(parent["requested"]))
    [child] = machine.records()[1:]
    assert where(parent) == where(child) == ("cuda:0", 0, 0) and parent["pid"] == os.getpid() != child["pid"]


def test_the_dry_runs_speed_probe_uses_one_indexed_device(tmp_path, fake_cuda_machine, tiny_config, tiny_sweep):
    machine = fake_cuda_machine(2)
    for device, gpus in (("cuda", [1]), ("cuda", None), ("cuda:1", None)):  # a GPU slot, all GPUs, one device
        sweep = tiny_sweep(tmp_path / "r", kinds=["plain"], train=tiny_config(device=device, threads=None), gpus=gpus)
        with pytest.raises(FakeCudaReached):
            estimate_plan(sweep, plan_sweep(sweep))
    assert [where(r) for r in machine.records()] == [("cuda:1", 1, 0), ("cuda:0", 0, 0), ("cuda:1", 1, 0)]


def test_planning_a_compiled_cuda_sweep_touches_no_gpu(tmp_path, fake_cuda_machine, tiny_config, tiny_sweep,
                                                       monkeypatch):
    # its compile check looks for Triton's compiler; a trial compile here would start CUDA in the planning process
    monkeypatch.setenv("CC", "gcc")  # the compiler the check looks for, whatever this machine's PATH holds
    machine = fake_cuda_machine(2)
    sweep = tiny_sweep(tmp_path / "r", kinds=["plain"], train=tiny_config(device="cuda", threads=None, compile=True))
    assert [item.device for item in plan_sweep(sweep)] == ["cuda:0"]
    assert machine.records() == []


@pytest.mark.parametrize("command", ["analyze", "construct"])
def test_analyze_and_construct_use_one_indexed_device(tmp_path, fake_cuda_machine, tiny_config, run_cli, command):
    run_training(tiny_config(kind="plain"), tmp_path / "results" / "plain-8-s0")  # on the CPU, before the fake
    machine = fake_cuda_machine(2)
    args = [str(tmp_path / "results")] if command == "analyze" else \
        [str(tmp_path / "results" / "plain-8-s0"), "--depth", "14", "--out", str(tmp_path / "c")]
    with pytest.raises(FakeCudaReached):
        run_cli(command, *args, "--device", "cuda")
    assert_each_process_on(machine.records(), {("cuda:0", 0, 0)}, 1)


# ---------------------------------------------------------------------------------------------- worker processes
def test_a_local_sweep_with_two_jobs_per_gpu_gives_each_worker_its_gpu(tmp_path, fake_cuda_machine, tiny_config,
                                                                       tiny_sweep, run_sweep_now):
    machine = fake_cuda_machine(4)
    sweep = tiny_sweep(tmp_path, seeds=[0, 1], gpus=[1, 3], jobs_per_gpu=2, executor="local",
                       train=tiny_config(device="cuda", threads=None))
    planned, outcomes = run_sweep_now(sweep)
    assert sorted(p.device for p in planned) == ["cuda:1", "cuda:1", "cuda:3", "cuda:3"]
    assert {o.state for o in outcomes.values()} == {"failed"}  # each stopped at its first CUDA tensor
    records = machine.records()
    assert_each_process_on(records, {("cuda:0", 1, 0), ("cuda:0", 3, 0)}, 4)  # each sees only its GPU, as its 0
    assert sorted(r["physical"] for r in records) == [1, 1, 3, 3]


def test_a_ray_task_uses_the_gpu_ray_gave_it(tmp_path, fake_cuda_machine, tiny_config, tiny_sweep, run_sweep_now,
                                            monkeypatch):
    ray = pytest.importorskip("ray")
    machine = fake_cuda_machine(2)
    # the fake goes to the task workers only (Ray's own agents would start slowly, each importing torch for it)
    fake = {name: os.environ[name] for name in ("PYTHONPATH", "RESDEPTH_FAKE_CUDA", "RESDEPTH_FAKE_CUDA_RECORD")}
    for name in fake:
        monkeypatch.delenv(name)
    ray.init(num_cpus=2, num_gpus=2, include_dashboard=False, object_store_memory=100 * 2**20, log_to_driver=False,
             runtime_env={"env_vars": fake})
    try:
        sweep = tiny_sweep(tmp_path, executor="ray", train=tiny_config(device="cuda", threads=None))
        _, outcomes = run_sweep_now(sweep)
    finally:
        ray.shutdown()
    assert {o.state for o in outcomes.values()} == {"failed"}
    records = machine.records()
    assert len(records) == 2 and {r["requested"] for r in records} == {"cuda:0"}
    assert all(r["visible"] in ("0", "1") and r["physical"] == int(r["visible"]) for r in records), records


def test_a_slurm_task_uses_the_gpu_slurm_gave_it(tmp_path, fake_cuda_machine, tiny_config, tiny_sweep, run_sweep_now):
    pytest.importorskip("submitit")
    from resdepth.sweep.cluster import SlurmConfig

    machine = fake_cuda_machine(2)
    sweep = tiny_sweep(tmp_path, executor="slurm", slurm=SlurmConfig(cluster="local", time=10, poll_seconds=0.2),
                       train=tiny_config(device="cuda", threads=None))
    _, outcomes = run_sweep_now(sweep)  # submitit's local cluster: CUDA_VISIBLE_DEVICES=0 for a job of one GPU
    assert {o.state for o in outcomes.values()} == {"failed"}
    assert_each_process_on(machine.records(), {("cuda:0", 0, 0)}, 2)


def test_the_fake_acts_only_where_a_test_sets_its_variable(fake_cuda_machine, monkeypatch):
    fake_cuda_machine(2)
    probe = "import sitecustomize, torch; print(sitecustomize.__file__, torch.cuda.set_device.__module__)"
    faked = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    monkeypatch.delenv("RESDEPTH_FAKE_CUDA")
    real = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert faked.stdout.split()[1] == "fake_cuda" and real.stdout.split()[1] == "torch.cuda", (faked, real)
    assert faked.stdout.split()[0].endswith("tests/fakecuda/sitecustomize.py")


def test_cli_train_in_a_subprocess_sets_its_device(tmp_path, fake_cuda_machine, tiny_args, cli_env):
    machine = fake_cuda_machine(2)
    args = [a if a != "cpu" else "cuda:1" for a in tiny_args]
    result = subprocess.run([sys.executable, "-m", "resdepth.cli", "train", "--depth", "8", *args, "--out",
                             str(tmp_path)], env={**os.environ, "COLUMNS": "200"}, capture_output=True, text=True,
                            timeout=120)
    assert "FakeCudaReached" in result.stderr + result.stdout
    assert_each_process_on(machine.records(), {("cuda:1", 1, 1)}, 1)
