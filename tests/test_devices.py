"""The device logic of the GPU paths, run on the CPU: how checkpoints are read and what they restore, which GPU a
worker process gets, what preparing a CUDA-graph capture does to the optimizer, the precision the benchmark's naive
recipe runs at, that a Ray task starts in a fresh process, that resumed momentum buffers are laid out like their
params, and that a closed Trainer holds no tensors. test_launch_paths.py follows every launch path to its first CUDA
tensor on a fake CUDA; test_gpu.py holds what only a GPU can show."""

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from resdepth.results.runs import read_checkpoint
from resdepth.sweep.executors import SequentialExecutor, worker_device
from resdepth.train.data import load_dataset
from resdepth.train.devices import (
    cudnn_benchmark,
    device_label,
    pytorch_default_precision,
    restore_training_state,
    set_cudnn_mode,
    snapshot_training_state,
)
from resdepth.train.trainer import Trainer, run_training

CPU = torch.device("cpu")


@pytest.fixture
def interrupted_run(tiny_config):
    """A factory: a tiny run stopped mid-way in run_dir; returns its checkpoint."""
    def make(run_dir: Path, steps: int = 6) -> Path:
        seen: list[int] = []
        stopped = run_training(tiny_config(epochs=4), run_dir, should_stop=lambda: seen.append(1) or len(seen) > steps)
        assert stopped.state == "interrupted"
        return run_dir / "checkpoint.pt"
    return make


def test_checkpoints_are_read_safely_onto_the_cpu(tmp_path, monkeypatch, interrupted_run):
    checkpoint = interrupted_run(tmp_path)
    calls = []
    real_load = torch.load
    monkeypatch.setattr(torch, "load", lambda *a, **k: calls.append(k) or real_load(*a, **k))
    state = read_checkpoint(checkpoint)
    # on the CPU whatever the training device: Generator.set_state takes only CPU byte tensors
    assert calls == [{"map_location": "cpu", "weights_only": True}]
    assert all(state[key].device == CPU and state[key].dtype == torch.uint8 for key in ("generator", "torch_rng"))
    assert state["device_type"] == "cpu" and state["cuda_rng"] is None  # a CPU run uses no CUDA RNG


def test_a_run_resumes_from_a_checkpoint_of_an_older_layout(tmp_path, monkeypatch, tiny_config, interrupted_run):
    reference = tmp_path / "ref"
    run_training(tiny_config(epochs=4), reference)
    checkpoint = interrupted_run(tmp_path / "old")
    state = read_checkpoint(checkpoint)
    del state["device_type"]  # versions before it saved it, and one CUDA state per visible GPU
    state["cuda_rng"] = [torch.zeros(16, dtype=torch.uint8)] * 8
    torch.save(state, checkpoint)
    assert run_training(tiny_config(epochs=4), tmp_path / "old").state == "done"
    rows = [len((folder / "metrics.csv").read_text().splitlines()) for folder in (tmp_path / "old", reference)]
    assert rows[0] == rows[1]


@pytest.mark.parametrize("layout", ["current", "older"])
def test_resuming_on_another_kind_of_device_is_refused_naming_both(tmp_path, layout, tiny_config, tiny_sweep,
                                                                   run_sweep_now):
    train = tiny_config(kind="plain", epochs=4)
    seen: list[int] = []
    run_training(train, tmp_path / "plain-8-s0", should_stop=lambda: seen.append(1) or len(seen) > 6)
    checkpoint = tmp_path / "plain-8-s0" / "checkpoint.pt"
    state = read_checkpoint(checkpoint)
    if layout == "current":
        state["device_type"] = "cuda"
    else:  # no device_type: a CUDA generator's state is 16 bytes
        del state["device_type"]
        state["generator"] = torch.zeros(16, dtype=torch.uint8)
    torch.save(state, checkpoint)
    planned, outcomes = run_sweep_now(tiny_sweep(tmp_path, kinds=["plain"], train=train), SequentialExecutor())
    assert planned[0].action == "resume" and outcomes["plain-8-s0"].state == "failed"
    error = outcomes["plain-8-s0"].error
    assert "trained on cuda and is now asked to resume on cpu" in error and "--device cuda" in error
    assert read_checkpoint(checkpoint)["iteration"] == state["iteration"]  # the checkpoint is left as it was


@pytest.mark.parametrize("slot, visible, device, gets", [
    ("cpu", None, "cpu", None),
    ("cuda:0", None, "cuda:0", "0"),
    ("cuda:3", None, "cuda:0", "3"),
    ("cuda:1", "4,6", "cuda:0", "6"),  # slots count the GPUs this process sees
    ("cuda:0", "GPU-8a1b,GPU-77c2", "cuda:0", "GPU-8a1b"),
])
def test_a_worker_process_sees_only_its_gpu(slot, visible, device, gets):
    environ = {"PATH": "/bin"} | ({"CUDA_VISIBLE_DEVICES": visible} if visible else {})
    worker, env = worker_device(slot, environ)
    assert worker == device and env.get("CUDA_VISIBLE_DEVICES") == gets and env["PATH"] == "/bin"


def test_progress_names_the_gpu_as_the_machine_numbers_it():
    assert device_label(torch.device("cuda:0"), {"CUDA_VISIBLE_DEVICES": "3"}) == "cuda:3"
    assert device_label(torch.device("cuda:1"), {"CUDA_VISIBLE_DEVICES": "2,5"}) == "cuda:5"
    assert device_label(torch.device("cuda:1"), {}) == "cuda:1"
    assert device_label(CPU, {"CUDA_VISIBLE_DEVICES": "3"}) == "cpu"


def test_preparing_a_capture_leaves_the_run_as_if_it_had_not_happened(tmp_path, tiny_config):
    # What CapturedStep does around its warm-up steps, on the CPU: steps taken with lr 0 (BN statistics and
    # momentum move) are undone, so the next real step is the step a fresh trainer takes.
    config = tiny_config(channels_last=False, compile=False)  # as --cuda-graph runs: never compiled
    fresh, prepared = (Trainer(config, tmp_path, CPU, load_dataset(config.data)) for _ in range(2))
    index = torch.arange(fresh.batch)
    saved = snapshot_training_state(prepared.model, prepared.optimizer)
    for group in prepared.optimizer.param_groups:
        group["lr"] = 0.0
    inputs, labels = prepared.data.train_images[index].float(), prepared.data.train_labels[index]
    for _ in range(3):
        prepared.sgd_step(inputs, labels, zero_grad=True)
    assert any(s.get("momentum_buffer") is not None for s in prepared.optimizer.state.values())
    restore_training_state(prepared.model, prepared.optimizer, saved)
    assert all(torch.count_nonzero(s["momentum_buffer"]) == 0 for s in prepared.optimizer.state.values())
    fresh.step_on(index, 0.1)
    prepared.step_on(index, 0.1)
    for (name, a), b in zip(fresh.model.state_dict().items(), prepared.model.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


def test_the_benchmarks_naive_recipe_runs_at_pytorchs_own_precision(monkeypatch, tiny_bench):
    from resdepth.bench import throughput as bench

    seen = []
    real_run = bench.NaivePath.run
    monkeypatch.setattr(bench.NaivePath, "run", lambda self, steps: seen.append(
        (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)) or real_run(self, steps))
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = True, False  # as a Trainer may leave them
    try:
        row = bench.run_benchmark(tiny_bench(rounds=1))[0]
        after = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved
    assert seen and set(seen) == {(False, True)}  # PyTorch's defaults, in set-up and in every window
    assert after == (True, False) and row.naive_precision == "fp32"
    with pytest.raises(RuntimeError):
        with pytorch_default_precision():
            raise RuntimeError("restored on the way out too")


def test_one_sweep_process_loads_its_dataset_once(tmp_path, monkeypatch, run_cli):
    from resdepth.train import data
    loads = []
    real = data._load_raw
    monkeypatch.setattr(data, "_load_raw", lambda config: loads.append(config) or real(config))
    data._load_cached.cache_clear()
    code, _, err = run_cli("sweep", "--depths", "8", "--kind", "plain,residual", "--dataset",
                           "synthetic", "--synthetic-train", "96", "--synthetic-test", "32", "--batch-size", "32",
                           "--iterations", "2", "--device", "cpu", "--out", str(tmp_path))
    assert code == 0, err
    assert len(loads) == 1  # the fail-fast check and both in-process cells share it


def test_concurrent_throughput_keeps_the_rows_measured_before_a_failure(tmp_path):
    out = tmp_path / "c.json"
    script = Path(__file__).parents[1] / "benchmarks" / "concurrent_throughput.py"
    done = subprocess.run([sys.executable, str(script), "--device", "cpu", "--jobs", "1,0", "--depths", "8",
                           "--steps", "1", "--warmup", "0", "--batch-size", "8", "--train-images", "16",
                           "--timeout", "120", "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert done.returncode != 0  # 0 jobs cannot be measured: the script dies on the second job count
    rows = json.loads(out.read_text())["rows"]
    assert [(row["jobs"], row["depth"]) for row in rows] == [(1, 8)]


# ---------------------------------------------------------------------------------------------- momentum layout
def stop_after(steps: int):
    seen: list[int] = []
    return lambda: seen.append(1) or len(seen) > steps


def resumed_trainer(config, run_dir: Path, fused_kernel: bool) -> Trainer:
    """A single run's Trainer resumed from run_dir's checkpoint, its SGD the CUDA one (fused kernel) or the CPU's."""
    from resdepth.train import trainer as train

    dataset = load_dataset(config.data)
    trainer = Trainer(train.resolve_iterations(config, len(dataset.train_labels)), run_dir, CPU, dataset)
    assert trainer.try_resume() == []  # no model starts afresh: it resumed
    for group in trainer.optimizer.param_groups:  # what a CUDA run's SGD is and saves; the CPU has the same kernel
        group.update(fused=fused_kernel, foreach=not fused_kernel)
    return trainer


def one_step(trainer: Trainer) -> dict[str, torch.Tensor]:
    """The weights after one SGD step on gradients that are the same for every trainer of this run."""
    generator = torch.Generator().manual_seed(7)
    for param in trainer.model.parameters():
        param.grad = torch.empty_like(param).copy_(torch.randn(param.shape, generator=generator))  # as autograd's
    trainer.optimizer.step()
    return {name: p.detach().clone() for name, p in trainer.model.named_parameters()}


@pytest.mark.parametrize("source, saved_layout, resumed_layout", [
    ("single", True, True), ("single", True, False), ("single", False, True), ("fused", True, True),
    ("fused", False, False),
])
def test_momentum_buffers_resume_laid_out_like_their_params(tmp_path, tiny_config, source, saved_layout,
                                                            resumed_layout):
    # A single run's conv weights are channels_last; the fused SGD kernel of CUDA needs its momentum buffers in the
    # same strides and computes a wrong update otherwise, silently (--fuse 1 on a group's checkpoint, a group left
    # with one model, --channels-last toggled across a resume).
    config = tiny_config(epochs=4, channels_last=saved_layout)
    if source == "single":
        run_training(config, tmp_path / "run", should_stop=stop_after(6))
    else:
        from resdepth.train.fused import run_fused_training

        run_fused_training([config, replace(config, seed=1)], [tmp_path / "run", tmp_path / "other"],
                           should_stop=stop_after(6))
    resumed = replace(config, channels_last=resumed_layout)
    trainer = resumed_trainer(resumed, tmp_path / "run", fused_kernel=True)
    for param, state in trainer.optimizer.state.items():
        buffer = state["momentum_buffer"]
        assert (buffer.shape, buffer.stride()) == (param.shape, param.stride())
    reference = one_step(resumed_trainer(resumed, tmp_path / "run", fused_kernel=False))  # foreach: any layout
    stepped = one_step(trainer)
    assert all(torch.allclose(stepped[name], reference[name], rtol=0, atol=1e-6) for name in reference)


def test_a_fused_group_resumes_its_momentum_laid_out_like_its_params(tmp_path, tiny_config):
    from resdepth.train.fused import FusedTrainer, run_fused_training
    from resdepth.train.trainer import resolve_iterations

    configs = [tiny_config(epochs=4, seed=seed) for seed in (0, 1)]
    run_dirs = [tmp_path / "s0", tmp_path / "s1"]
    run_fused_training(configs, run_dirs, should_stop=stop_after(6))
    dataset = load_dataset(configs[0].data)
    group = FusedTrainer([resolve_iterations(c, len(dataset.train_labels)) for c in configs], run_dirs, CPU, dataset)
    group.try_resume()
    for param, buffer in zip(group.params.values(), group.sgd.buffers, strict=True):
        assert (buffer.shape, buffer.stride()) == (param.shape, param.stride())


def test_a_closed_trainer_holds_no_weights_or_gradients(tmp_path, tiny_config):
    # bench and the fused bench keep their Trainer referenced: close() alone must let its tensors go (on CUDA, the
    # gradients live in a CUDA graph's memory pool under --cuda-graph)
    import gc
    import weakref

    from resdepth.train.trainer import resolve_iterations

    dataset = load_dataset(tiny_config().data)
    trainer = Trainer(resolve_iterations(tiny_config(), len(dataset.train_labels)), tmp_path, CPU, dataset)
    trainer.train_epoch(lambda: False)
    weights = [weakref.ref(p) for p in trainer.model.parameters()]
    gc.disable()  # what only the cyclic collector would free does not count
    try:
        trainer.close()
        assert not any(ref() is not None for ref in weights)
    finally:
        gc.enable()


# ---------------------------------------------------------------------------------------------- cuDNN's algorithms
@pytest.mark.parametrize("device, deterministic, benchmark", [
    ("cuda:0", False, True), ("cuda:1", True, False), ("cpu", False, False), ("cpu", True, False),
])
def test_cudnn_benchmarks_its_algorithms_on_cuda_unless_deterministic_is_asked(device, deterministic, benchmark):
    saved = torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic
    torch.backends.cudnn.benchmark = torch.backends.cudnn.deterministic = False  # a process that never touched them
    try:
        assert cudnn_benchmark(torch.device(device), deterministic) == benchmark
        set_cudnn_mode(torch.device(device), deterministic)  # the switches alone: no GPU is needed to set them
        assert torch.backends.cudnn.benchmark == benchmark
        assert torch.backends.cudnn.deterministic == (deterministic and device != "cpu")  # the CPU's left alone
    finally:
        torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = saved
