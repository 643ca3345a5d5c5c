"""The fast CPU training path computes what the plain eager fp32 NCHW path computes, and the benchmark runs.

No timing assertions: the machines that run these tests are shared.
"""

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

from resdepth.bench.throughput import BenchRow, run_benchmark
from resdepth.errors import UserError
from resdepth.train.data import load_dataset
from resdepth.train.devices import compile_fails, compile_unavailable, torch_cache_folder, trial_compile
from resdepth.train.trainer import COMPILE_MIN_ITERATIONS, COMPILE_MODES, Trainer, run_training

CPU = torch.device("cpu")


@pytest.fixture
def trainer(tiny_config):
    """A factory: a Trainer of the tiny config (with changes) in a folder."""
    def make(run_dir, **changes) -> Trainer:
        config = tiny_config(**changes)
        return Trainer(config, run_dir, CPU, load_dataset(config.data))
    return make


def assert_same_step(fast: Trainer, eager: Trainer) -> None:
    """One training step on the same batch: the same loss and, parameter by parameter, the same gradients."""
    index = torch.arange(fast.batch)
    fast_loss, fast_wrong = fast.step_on(index, fast.lr())
    eager_loss, eager_wrong = eager.step_on(index, eager.lr())
    torch.testing.assert_close(fast_loss, eager_loss, rtol=1e-5, atol=1e-6)
    assert fast_wrong == eager_wrong
    for (name, a), (_, b) in zip(fast.model.named_parameters(), eager.model.named_parameters(), strict=True):
        assert a.grad is not None, name
        # Measured against fp64: NCHW gradients are within ~1e-6 (relative norm), channels-last ones within ~2e-3,
        # because the CPU channels-last BN backward sums in fp32 in another order (TF32-like noise, no other math).
        # A real mistake (wrong layout, missed augmentation) is off by O(1).
        difference = ((a.grad - b.grad).norm() / b.grad.norm()).item()
        assert difference < 1e-2, f"{name}: gradients differ by {difference:.1e} (relative norm)"


def test_cpu_default_is_the_fast_path(tmp_path, trainer):
    assert trainer(tmp_path).channels_last  # the measured CPU default (BENCHMARKS.md); the guards below test it


def test_channels_last_step_matches_eager_nchw(tmp_path, trainer):
    assert_same_step(trainer(tmp_path / "fast", channels_last=True), trainer(tmp_path / "eager", channels_last=False))


@pytest.mark.parametrize("mode", [None, "reduce-overhead"], ids=["cpu-mode", "cuda-graph-mode"])
def test_compiled_step_matches_eager_nchw(tmp_path, trainer, monkeypatch, mode):
    # also in CUDA's compile mode (no GPU test machine: on the CPU the mode graphs nothing, but traces as there)
    monkeypatch.setitem(COMPILE_MODES, "cpu", mode)
    assert_same_step(trainer(tmp_path / "fast", channels_last=True, compile=True),
                     trainer(tmp_path / "eager", channels_last=False))


def test_compiled_steps_follow_the_eager_ones_through_lr_changes_without_recompiling(tmp_path, trainer):
    # forward, backward and the SGD update compiled, the lr in a device tensor: 8 iterations put the milestones at
    # steps 4 and 6, so the lr changes twice within the 6 steps taken, each time without a recompile
    compiled = trainer(tmp_path / "compiled", compile=True, epochs=None, iterations=8)
    eager = trainer(tmp_path / "eager", compile=False, epochs=None, iterations=8)
    for run in (compiled, eager):
        run.train_epoch(lambda run=run: run.iteration >= 2)  # the first steps compile, and the momentum is born
    losses = []
    with torch._dynamo.config.patch(error_on_recompile=True):
        for run in (compiled, eager):
            run.train_epoch(lambda run=run: run.iteration >= 4)  # to the end of epoch 1 (4 steps per epoch)
            losses.append(run.train_epoch(lambda run=run: run.iteration >= 6) or run.in_progress.loss_sum.item())
    assert compiled.lr_tensor.item() == pytest.approx(0.01) and compiled.last_step_lr() == pytest.approx(0.01)
    # steps 5-6 after 4 of float-order noise at lr 0.1: measured 1.4e-4 apart (fused models drift alike, test_fused);
    # a wrong lr or a stale compiled constant is off by O(1e-2) and more
    assert losses[0] == pytest.approx(losses[1], rel=1e-3)
    # 6 steps of float-order noise (fused kernels, other reduction orders) at lr 0.1: all weights measured 3.9e-4
    # apart (relative norm of the difference), as far as two eager runs in NCHW and channels-last are (3.6e-4)
    ours, theirs = (torch.cat([p.detach().flatten() for p in run.model.parameters()]) for run in (compiled, eager))
    assert ((ours - theirs).norm() / theirs.norm()).item() < 2e-3


def test_a_compiled_run_on_cuda_takes_the_foreach_sgd_that_dynamo_compiles():
    # dynamo never traces into torch's fused SGD kernel (it breaks the graph around it): a compiled CUDA run kept its
    # update eager and outside the CUDA graph while gpu_bench.sh and the docs called it compiled
    from resdepth.train.trainer import TrainConfig, sgd_optimizer

    params = [torch.nn.Parameter(torch.zeros(3))]
    groups = {compiled: sgd_optimizer(params, TrainConfig(), torch.device("cuda"), compiled).param_groups[0]
              for compiled in (False, True)}
    assert groups[False]["fused"] and not groups[False]["foreach"]  # eager CUDA: one fused kernel
    assert groups[True]["foreach"] and not groups[True]["fused"]
    assert sgd_optimizer(params, TrainConfig(), torch.device("cpu")).param_groups[0]["foreach"]


def test_a_process_keeps_compiling_the_runs_it_trains_one_after_another(tmp_path, trainer):
    # each compiled run compiles its SGD update anew (2 graphs: before and after its momentum is born); at dynamo's
    # default limit of 8 recompiles per function, the 5th compiled run of a process (an in-process sweep) stepped
    # eagerly, silently
    torch._dynamo.reset()
    limit = "recompile_limit" if hasattr(torch._dynamo.config, "recompile_limit") else "cache_size_limit"  # < 2.6
    with torch._dynamo.config.patch(**{limit: 8}):
        for seed in range(6):
            graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
            run = trainer(tmp_path / f"s{seed}", compile=True, seed=seed)
            run.train_epoch(lambda run=run: run.iteration >= 2)
            assert torch._dynamo.utils.counters["stats"]["unique_graphs"] > graphs, f"run {seed + 1} ran eagerly"
            run.close()


def test_fast_path_trains_like_eager_nchw(tmp_path, tiny_config):
    # 8 epochs x 4 steps on 128 images. fp32 rounding differences grow as training goes on, so the curves agree
    # closely at first and within noise later: measured, channels-last vs NCHW differ by 0.008 on average and
    # 0.02 at most, while another seed differs by 0.07 on average and 0.12 at most.
    curves = {}
    for name, channels_last in (("fast", True), ("eager", False)):
        (tmp_path / name).mkdir()
        result = run_training(tiny_config(epochs=8, channels_last=channels_last), tmp_path / name)
        assert result.state == "done" and result.iterations_done == 32
        curves[name] = pd.read_csv(tmp_path / name / "metrics.csv")["train_loss"]
    difference = (curves["fast"] - curves["eager"]).abs()
    assert curves["fast"].iloc[-1] < curves["fast"].iloc[0] - 0.5  # both learn
    assert difference.iloc[0] < 1e-3, f"first-epoch losses differ by {difference.iloc[0]}"
    assert difference.mean() < 0.025 and difference.max() < 0.05, f"loss curves differ: {difference.round(4).tolist()}"


def test_cuda_graph_is_refused_on_the_cpu_and_beside_compile(tmp_path, tiny_config, trainer):
    with pytest.raises(UserError, match="--cuda-graph needs a CUDA device, not cpu"):
        trainer(tmp_path, cuda_graph=True)
    with pytest.raises(UserError, match=r"--cuda-graph and --compile .* choose one"):
        tiny_config(cuda_graph=True, compile=True).validate()


def test_benchmark_runs_end_to_end(tiny_bench):
    lines: list[str] = []
    rows = run_benchmark(tiny_bench(), on_progress=lines.append)
    assert len(rows) == 1 and isinstance(rows[0], BenchRow) and lines
    row = rows[0]
    assert row.depth == 8 and row.device == "cpu" and row.threads == 1 and len(row.resdepth_windows) == 2
    for value in (row.resdepth_images_per_second, row.naive_images_per_second, row.speedup, row.achieved_gflops,
                  row.matmul_gflops, row.peak_fraction, row.forward_multiply_adds, row.warmup_seconds):
        assert value is not None and value > 0
    assert row.resdepth_peak_memory_mb >= 0 and row.naive_peak_memory_mb is not None


def test_benchmark_without_the_naive_recipe(tiny_bench):
    row = run_benchmark(tiny_bench(naive=False, rounds=1))[0]
    assert row.naive_images_per_second is None and row.speedup is None and row.resdepth_images_per_second > 0


@pytest.mark.parametrize("changes, message", [
    ({"depths": (9,)}, "depth 9 is not of the form 6n\\+2"), ({"kind": "dense"}, "unknown kind 'dense'"),
    ({"iterations": 0}, "--iterations must be a positive integer, got 0"),
    ({"num_workers": -1}, "--warmup and --num-workers must be 0 or more"),
])
def test_benchmark_refuses_bad_configs(changes, message, tiny_bench):
    with pytest.raises(UserError, match=message):
        run_benchmark(tiny_bench(**changes))


def test_bench_command_prints_the_table(tmp_path, run_cli):
    # one loader worker process: the naive recipe's real DataLoader path, started and shut down
    out = tmp_path / "bench.json"
    result = run_cli("bench", "--depths", "8", "--iterations", "2", "--warmup", "1", "--rounds", "1", "--batch-size",
                     "16", "--synthetic-train", "64", "--num-workers", "1", "--device", "cpu", "--threads", "1",
                     "--json", str(out), columns=80)
    assert result.code == 0, result.err
    table = result.out[result.out.index("training throughput"):]
    assert "…" not in table, "a header or number was cut to fit 80 columns"  # what rich does to a cramped column
    assert max(len(line) for line in table.splitlines()) <= 80
    assert "resdepth" in table and "% of" in table and "matmul" in table
    assert out.exists() and '"rows"' in out.read_text()


def test_bench_fuse_times_a_fused_job_against_one_run_and_k_processes(tmp_path, run_cli):
    out = tmp_path / "fused.json"
    result = run_cli("bench", "--depths", "8", "--fuse", "1,2", "--iterations", "2", "--warmup", "1", "--rounds",
                     "2", "--batch-size", "16", "--synthetic-train", "64", "--device", "cpu", "--threads", "1",
                     "--json", str(out), columns=80)
    assert result.code == 0, result.err
    table = result.out[result.out.index("fused vs separate"):]
    assert "…" not in table and max(len(line) for line in table.splitlines()) <= 80
    rows = json.loads(out.read_text())["fused_rows"]
    assert [(r["depth"], r["models"]) for r in rows] == [(8, 1), (8, 2)]
    for row in rows:
        assert len(row["fused_windows"]) == len(row["sequence_windows"]) == len(row["processes_windows"]) == 2
        for key in ("fused_images_per_second", "sequence_images_per_second", "processes_images_per_second",
                    "fused_peak_memory_mb", "single_peak_memory_mb", "processes_peak_memory_mb"):
            assert row[key] > 0, key
        assert row["fused_vs_sequence"] == pytest.approx(row["fused_images_per_second"] /
                                                         row["sequence_images_per_second"])
    assert rows[1]["process_threads"] == 1  # --threads, as `sweep --jobs K --threads 1` gives each job


def test_bench_fuse_refuses_bad_sizes(run_cli):
    code, _, err = run_cli("bench", "--fuse", "0,2", "--device", "cpu")
    assert code == 2 and "--fuse '0,2': give numbers of models per fused job" in err


def test_bench_fuse_times_the_compiled_steps_when_asked_without_torchs_empty_notices(tmp_path, resdepth_cli,
                                                                                     cli_env):
    # a fresh process, as a user runs it: compiling on a machine without CUDA, torch logs "No CUDA runtime is
    # found" and dynamo "Profiler record function ... will be ignored"; neither may reach the terminal
    result = subprocess.run([resdepth_cli, "bench", "--fuse", "2", "--compile", "--no-processes", "--device", "cpu",
                             "--depths", "8", "--iterations", "2", "--warmup", "1", "--rounds", "1", "--batch-size",
                             "32", "--synthetic-train", "128", "--threads", "1", "--json", str(tmp_path / "rows.json")],
                            env=cli_env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    rows = json.loads((tmp_path / "rows.json").read_text())["fused_rows"]
    assert [(row["models"], row["compile"], row["cuda_graph"]) for row in rows] == [(2, True, False)]
    assert rows[0]["fused_images_per_second"] > 0 and "steps compiled" in result.stdout
    assert "No CUDA runtime" not in result.stderr + result.stdout and "Profiler" not in result.stderr


@pytest.mark.parametrize("script", sorted((Path(__file__).parent.parent / "benchmarks").glob("*.py")),
                         ids=lambda path: path.name)
def test_every_benchmark_script_imports_against_the_library_as_it_is(script):
    """The scripts run only by hand (and on a GPU machine): a name the library renamed must fail here, not there."""
    spec = importlib.util.spec_from_file_location(f"benchmark_{script.stem}", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # defines its functions; main() runs only under __main__
    assert callable(getattr(module, "main", None)), f"{script.name} has no main()"


@pytest.mark.parametrize("fuse", [None, "1,2"])
def test_bench_json_holds_each_row_as_it_is_measured(tmp_path, run_cli, monkeypatch, fuse):
    # gpu_bench.sh stops a step at its time limit: the rows measured by then must be in the file
    from resdepth.bench import fused as fusebench
    from resdepth.bench import throughput as bench

    module, name = (bench, "bench_depth") if fuse is None else (fusebench, "bench_size")
    measured = getattr(module, name)
    calls: list[int] = []

    def second_is_cut(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt  # what a time limit's signal leaves: no return, no later code
        return measured(*args, **kwargs)

    monkeypatch.setattr(module, name, second_is_cut)
    out = tmp_path / "bench.json"
    args = ["--depths", "8,14"] if fuse is None else ["--depths", "8", "--fuse", fuse, "--no-processes"]
    code, _, _ = run_cli("bench", *args, "--iterations", "2", "--warmup", "1", "--rounds", "1", "--batch-size", "16",
                         "--synthetic-train", "64", "--num-workers", "0", "--device", "cpu", "--threads", "1",
                         "--json", str(out))
    assert code != 0 and len(calls) == 2
    saved = json.loads(out.read_text())
    rows = saved["rows"] if fuse is None else saved["fused_rows"]
    assert [(r["depth"], r.get("models")) for r in rows] == [(8, None if fuse is None else 1)]


def test_bench_without_the_naive_recipe_needs_no_torchvision(monkeypatch, tiny_bench):
    # a bare GPU machine (gpu_bench.sh) may have torch without torchvision
    for name in [n for n in sys.modules if n == "torchvision" or n.startswith("torchvision.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "torchvision", None)  # import torchvision now raises ImportError
    [row] = run_benchmark(tiny_bench(naive=False))
    assert row.resdepth_images_per_second > 0 and row.naive_images_per_second is None


@pytest.fixture
def no_compiler(tmp_path_factory, monkeypatch):
    """A PATH without g++, gcc or clang (slim container images, some cluster nodes); torch's cached compiler
    search is cleared before and after, so the machine's own compiler is found again for the tests that follow."""
    from torch._inductor.cpp_builder import cpp_compiler_search

    bare = tmp_path_factory.mktemp("bare-path")
    monkeypatch.setenv("PATH", str(bare))
    for name in ("CC", "CXX"):
        monkeypatch.delenv(name, raising=False)
    cpp_compiler_search.cache_clear()
    yield bare
    cpp_compiler_search.cache_clear()


def test_without_a_working_compiler_auto_trains_eagerly_and_compile_is_refused(tmp_path, trainer, no_compiler,
                                                                              monkeypatch):
    # the CPU's auto rule compiles paper-length runs: where nothing can build torch.compile's code it trains eagerly
    # instead of failing at its first step with a page of torch's text; an asked-for --compile is refused in a line
    assert "C++ compiler" in compile_unavailable("cpu")
    assert not trainer(tmp_path / "auto", epochs=None, iterations=COMPILE_MIN_ITERATIONS).compiled
    with pytest.raises(UserError, match=r"^--compile: torch.compile's CPU code needs a C\+\+ compiler.*apt install"):
        trainer(tmp_path / "asked", compile=True)
    plain_cc = no_compiler / "cc"  # Triton looks for $CC, gcc or clang, never for cc
    plain_cc.write_text("#!/bin/sh\nexit 0\n")
    plain_cc.chmod(0o755)
    assert "C compiler" in compile_unavailable("cuda")  # Triton builds its launchers with one
    monkeypatch.setenv("CC", "/opt/cc")
    assert compile_unavailable("cuda") is None


@pytest.fixture
def compiler_that_cannot_build(tmp_path_factory, monkeypatch):
    """A g++ that answers --version but fails every build, as one does where Python's headers are missing: the
    compiler check passes, only compiling shows the failure."""
    from torch._inductor.cpp_builder import cpp_compiler_search

    real = shutil.which("g++")
    if real is None:
        pytest.skip("no g++ on this machine to answer --version")
    folder = tmp_path_factory.mktemp("broken-gxx")
    (folder / "g++").write_text(f'#!/bin/sh\nif [ "$1" = "--version" ]; then exec {real} --version; fi\n'
                                'echo "fatal error: Python.h: No such file or directory" >&2\nexit 1\n')
    (folder / "g++").chmod(0o755)
    monkeypatch.setenv("PATH", f"{folder}:{os.environ['PATH']}")
    monkeypatch.delenv("CXX", raising=False)
    cpp_compiler_search.cache_clear()
    yield folder
    cpp_compiler_search.cache_clear()


def test_where_compiling_fails_though_a_compiler_answers_auto_trains_eagerly_and_compile_is_refused(
        tmp_path, trainer, compiler_that_cannot_build, resdepth_cli, cli_env, tiny_args):
    assert compile_unavailable("cpu") is None  # what the compiler check alone concluded
    leftovers = set(Path(torch_cache_folder()).glob("resdepth-trial-*"))
    assert "torch.compile fails on this machine" in compile_fails("cpu")
    assert "fatal error: Python.h: No such file or directory" in compile_fails("cpu")  # the compiler's own words
    assert set(Path(torch_cache_folder()).glob("resdepth-trial-*")) == leftovers  # its build folder removed
    assert not trainer(tmp_path / "auto", epochs=None, iterations=COMPILE_MIN_ITERATIONS).compiled
    with pytest.raises(UserError, match=r"^--compile: torch.compile fails on this machine \(.*docs/install.md"):
        trainer(tmp_path / "asked", compile=True)
    env = {**cli_env, "PATH": os.environ["PATH"]}
    result = subprocess.run([resdepth_cli, "train", "--depth", "8", *tiny_args, "--epochs", "1", "--compile", "--out",
                             str(tmp_path / "cli")], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith("error: --compile: torch.compile fails on this machine (")
    assert "or train without --compile" in result.stderr and not (tmp_path / "cli").exists()


def test_a_trial_compile_that_works_leaves_nothing_behind():
    before = set(Path(torch_cache_folder()).iterdir())
    assert trial_compile("cpu", ("this test's own settings",)) is None  # a key no other trial has: it compiles
    assert set(Path(torch_cache_folder()).iterdir()) == before


def test_the_cli_refuses_compile_without_a_compiler_before_any_run_starts(tmp_path, resdepth_cli, cli_env, tiny_args,
                                                                          no_compiler):
    env = {**cli_env, "PATH": str(no_compiler)}
    for command in (["train", "--depth", "8"], ["sweep", "--depths", "8", "--kind", "plain,residual"]):
        result = subprocess.run([resdepth_cli, *command, *tiny_args, "--epochs", "1", "--compile", "--out",
                                 str(tmp_path / command[0])], env=env, capture_output=True, text=True, timeout=120)
        assert result.returncode == 2, result.stderr
        assert result.stderr.count("\n") == 1 and "--compile: torch.compile's CPU code needs a C++ compiler" in \
            result.stderr
        assert not (tmp_path / command[0]).exists() or not any((tmp_path / command[0]).iterdir())
