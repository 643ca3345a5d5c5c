"""--fuse: K seeds trained as one job are the runs their seeds give alone (up to the order of float sums), in their
own folders; exact resume after SIGKILL; a diverging model is dropped without touching the others; the planner
groups only runnable cells that differ in their seed; every executor runs a group as one job."""

import itertools
import json
import math
import signal
import subprocess
import sys
import time
from dataclasses import asdict, replace

import pandas as pd
import pytest
import torch

from resdepth.errors import UserError
from resdepth.models import build_model
from resdepth.results.runs import RunStatus, load_runs, write_config
from resdepth.results.tables import summarize
from resdepth.sweep.cell import each_cell, run_cells
from resdepth.sweep.executors import CellJob, LocalProcessExecutor, SequentialExecutor
from resdepth.sweep.runner import plan_sweep
from resdepth.train.data import augment_models, load_dataset
from resdepth.train.fused import FusedTrainer, StackedSGD, group_label, run_fused_training
from resdepth.train.trainer import COMPILE_MODES, Trainer, resolve_iterations, run_training, train_to_the_end

CPU = torch.device("cpu")
SEEDS = (0, 1, 2)


@pytest.fixture
def seeds_of(tiny_config):
    """A factory: the tiny config for each of SEEDS (with changes), iterations resolved as a run resolves them."""
    def make(**changes):
        configs = [tiny_config(seed=seed, **changes) for seed in SEEDS]
        return [resolve_iterations(config, config.data.synthetic_train) for config in configs]
    return make


@pytest.fixture
def fused_sweep(tiny_sweep):
    """A factory: residual-8 for SEEDS, fused in one job."""
    return lambda out, **changes: tiny_sweep(out, kinds=["residual"], seeds=list(SEEDS), fuse=3, **changes)


def step_losses_alone(trainer: Trainer, steps: int) -> list[float]:
    """Per-step training losses of a single run, one step at a time (its epoch's running sum, step by step)."""
    losses = []
    for _ in range(steps):
        before = trainer.in_progress.loss_sum.item() if trainer.in_progress else 0.0
        target = trainer.iteration + 1
        sums = trainer.train_epoch(lambda target=target: trainer.iteration >= target)
        total = trainer.in_progress.loss_sum.item() if sums is None else sums["train_loss"] * trainer.batch * \
            trainer.steps_per_epoch
        losses.append((total - before) / trainer.batch)
    return losses


def assert_close_runs(ours: pd.DataFrame, theirs: pd.DataFrame) -> None:
    """The same epochs up to float order (see test_a_fused_group_writes_the_folders_its_runs_write_alone): losses
    within 1e-3 relative, errors within one test image."""
    assert ours[["epoch", "iteration", "lr"]].equals(theirs[["epoch", "iteration", "lr"]])
    for column in ("train_loss", "test_loss"):
        pd.testing.assert_series_equal(ours[column], theirs[column], rtol=1e-3)
    for column in ("train_error", "test_error"):
        assert (ours[column] - theirs[column]).abs().max() <= 100 / 64 + 1e-9, column


def step_losses_fused(trainer: FusedTrainer, steps: int) -> list[list[float]]:
    losses = []
    for _ in range(steps):
        losses.append(trainer.train_step().tolist())
        for member in trainer.ended_members():
            member.close_epoch(trainer.batch)
    return losses


# ---------------------------------------------------------------------------------------------- equivalence
def test_each_fused_model_takes_the_steps_its_seed_takes_alone(tmp_path, seeds_of):
    configs = seeds_of()
    dataset = load_dataset(configs[0].data)
    alone = [step_losses_alone(Trainer(c, tmp_path / f"a{c.seed}", CPU, dataset), 8) for c in configs]
    fused = step_losses_fused(FusedTrainer(configs, [tmp_path / f"f{c.seed}" for c in configs], CPU, dataset), 8)
    for step in range(8):
        for index in range(len(SEEDS)):
            difference = abs(fused[step][index] - alone[index][step]) / alone[index][step]
            # Steps 1-2 see the same init, data order and augmentation and one update: within 1e-5 (measured ~1e-7,
            # the gradients agree within 4e-6). Later steps amplify the float-order noise at lr 0.1 (measured up to
            # 2e-4 by step 8, less than two single runs in NCHW and NHWC differ); a wrong seed, batch or
            # augmentation is off by O(1e-1) from the first step.
            bound = 1e-5 if step < 2 else 1e-3
            assert difference < bound, f"seed {SEEDS[index]} step {step + 1}: losses differ by {difference:.1e}"



def test_cudas_compile_settings_trace_and_step_as_the_eager_group_on_the_cpu(tmp_path, seeds_of, monkeypatch):
    # On CUDA a compiled group runs in torch.compile's CUDA-graph mode with its stacks marked as static addresses:
    # no GPU test machine is at hand, so the CPU compiles with the same settings (the mode graphs nothing here, but
    # traces, partitions and guards as it does there) and must step as the eager group does
    monkeypatch.setitem(COMPILE_MODES, "cpu", "reduce-overhead")
    configs = seeds_of()[:2]
    compiled = FusedTrainer([replace(c, compile=True) for c in configs], [tmp_path / f"c{c.seed}" for c in configs],
                            CPU, load_dataset(configs[0].data))
    eager = FusedTrainer(configs, [tmp_path / f"e{c.seed}" for c in configs], CPU, load_dataset(configs[0].data))
    stacks = [*compiled.params.values(), *compiled.buffers.values()]
    assert all(getattr(t, "_dynamo_static_input_type", None) == "unguarded" for t in stacks)
    ours, theirs = step_losses_fused(compiled, 4), step_losses_fused(eager, 4)
    # float order only (see test_each_fused_model_takes_the_steps_its_seed_takes_alone): measured 1.1e-4 apart by
    # step 4; a wrong lr or batch is off by O(1e-2) and more
    torch.testing.assert_close(torch.tensor(ours), torch.tensor(theirs), rtol=1e-3, atol=0)

def test_a_fused_group_writes_the_folders_its_runs_write_alone(tmp_path, tiny_config, metrics_of):
    configs = [tiny_config(seed=seed) for seed in SEEDS]
    for config in configs:
        run_training(config, tmp_path / "alone" / f"residual-8-s{config.seed}")
    dirs = [tmp_path / "fused" / f"residual-8-s{seed}" for seed in SEEDS]
    results = run_fused_training(configs, dirs)
    assert [r.state for r in results] == ["done"] * 3 and [r.iterations_done for r in results] == [8] * 3
    for run_dir, config in zip(dirs, configs, strict=True):
        alone, fused = metrics_of(tmp_path / "alone" / run_dir.name), metrics_of(run_dir)
        assert fused[["epoch", "iteration", "lr"]].equals(alone[["epoch", "iteration", "lr"]])
        # 2 epochs, 8 steps: float-order differences of ~1e-6 in the gradients grow to ~1e-4 in the losses
        # (measured); a test image whose two top logits are that close may flip, so errors may differ by one
        # image (100/64 % of the test set, 100/128 % of an epoch's training batches).
        pd.testing.assert_series_equal(fused["train_loss"], alone["train_loss"], rtol=1e-3)
        pd.testing.assert_series_equal(fused["test_loss"], alone["test_loss"], rtol=1e-3)
        assert (fused["test_error"] - alone["test_error"]).abs().max() <= 100 / 64 + 1e-9
        assert (fused["train_error"] - alone["train_error"]).abs().max() <= 100 / 128 + 1e-9
        saved = json.loads((run_dir / "config.json").read_text())
        assert saved["fused"] == {"group": "residual-8-s0+s1+s2", "models": 3,
                                  "fused_with": [d.name for d in dirs if d != run_dir]}
        assert saved["seed"] == config.seed and saved["resolved"]["params"] == 75290
        assert RunStatus.read(run_dir).state == "done"
        model = build_model("residual", 8)  # the single model loads alone from its folder's checkpoint
        model.load_state_dict(torch.load(run_dir / "checkpoint.pt", weights_only=True)["model"])
        assert_close_gradients(pd.read_csv(run_dir / "gradients.csv"),
                               pd.read_csv(tmp_path / "alone" / run_dir.name / "gradients.csv"))
    summary = summarize(load_runs(tmp_path / "fused")[0])
    assert len(summary) == 1 and summary["runs"].iloc[0] == 3  # the table sees three seeds of one setting


def assert_close_gradients(ours: pd.DataFrame, theirs: pd.DataFrame) -> None:
    """gradients.csv of a fused model against its run alone: the same rows. Epoch 1 samples the first step (the same
    init and batch: measured 8e-7); epoch 2 samples step 5, after the float-order noise has grown (measured up to
    1.3e-2 relative: one batch's gradient is more sensitive than the epoch's mean loss). Another seed's model
    differs by 25-60% (measured)."""
    keys = ["epoch", "iteration", "layer", "name", "sampled_steps"]
    assert ours[keys].equals(theirs[keys]) and len(ours) == 2 * 8
    first = ours["epoch"] == 1
    for column in ("grad_norm", "weight_norm"):
        pd.testing.assert_series_equal(ours[column][first], theirs[column][first], rtol=1e-5)
        pd.testing.assert_series_equal(ours[column][~first], theirs[column][~first], rtol=5e-2)


def test_models_resume_from_their_own_positions_in_either_format(tmp_path, tiny_config, metrics_of):
    configs = [tiny_config(seed=seed, epochs=3) for seed in SEEDS]
    alone = tmp_path / "alone-s0"
    calls = itertools.count(1)
    run_training(configs[0], alone, should_stop=lambda: next(calls) == 6)  # after 5 steps: one into epoch 2
    checkpoint = torch.load(alone / "checkpoint.pt", weights_only=True)
    assert checkpoint["epoch"] == 1 and checkpoint["partial"] is not None
    dirs = [alone, tmp_path / "new-s1", tmp_path / "new-s2"]  # seed 0 ahead of the others, mid-epoch
    assert [r.state for r in run_fused_training(configs, dirs)] == ["done"] * 3
    run_training(configs[0], tmp_path / "reference-s0")
    assert metrics_of(alone)["epoch"].tolist() == [1, 2, 3]
    assert_close_runs(metrics_of(alone), metrics_of(tmp_path / "reference-s0"))
    fused = [tmp_path / "again-s0", tmp_path / "again-s1"]  # and a fused checkpoint resumes alone
    run_fused_training(configs[:2], fused, should_stop=lambda: (fused[1] / "checkpoint.pt").exists())
    assert torch.load(fused[0] / "checkpoint.pt", weights_only=True)["epoch"] == 1
    assert run_training(configs[0], fused[0]).state == "done"
    assert_close_runs(metrics_of(fused[0]), metrics_of(tmp_path / "reference-s0"))


# ---------------------------------------------------------------------------------------------- isolation
def test_a_diverging_model_is_dropped_and_its_nan_never_reaches_the_others(tmp_path, seeds_of, metrics_of,
                                                                          weights_of):
    configs = seeds_of(epochs=3)
    dataset = load_dataset(configs[0].data)
    clean = [tmp_path / "clean" / f"s{seed}" for seed in SEEDS]
    run_fused_training(configs, clean, dataset=dataset)
    poisoned = [tmp_path / "poisoned" / f"s{seed}" for seed in SEEDS]
    for run_dir in poisoned:
        run_dir.mkdir(parents=True)
    trainer = FusedTrainer(configs, poisoned, CPU, dataset)

    def poison_seed_1_at_step_2() -> bool:  # the stop hook runs before every step: a NaN enters seed 1's weights
        if trainer.members[1].iteration == 2 and trainer.members[1] in trainer.active:
            with torch.no_grad():
                trainer.params["layer1.0.conv1.weight"][1].fill_(math.nan)
        return False

    results = train_to_the_end(trainer, poison_seed_1_at_step_2)
    assert [r.state for r in results] == ["done", "diverged", "done"]
    assert RunStatus.read(poisoned[1]).state == "diverged" and math.isnan(metrics_of(poisoned[1])["train_loss"][0])
    assert len(metrics_of(poisoned[1])) == 1 and not (poisoned[1] / "checkpoint.pt").exists()  # as a single run
    for index in (0, 2):
        ours, theirs = metrics_of(poisoned[index]), metrics_of(clean[index])
        # Epoch 1 ran with the NaN model still in the group: the others' numbers are bit-identical to the clean
        # group's, so no NaN gradient reached them. Then the group trains on as 2 (float order may change).
        pd.testing.assert_series_equal(ours.iloc[0], theirs.iloc[0], check_exact=True)
        assert_close_runs(ours, theirs)
        assert all(torch.isfinite(w).all() for w in weights_of(poisoned[index]).values())


# stacking the K models runs out of memory too; and recording a CUDA graph, which ends in the capture's own error
@pytest.mark.parametrize("where", ["train_step", "__init__", "capture"])
def test_out_of_memory_in_a_fused_job_names_a_smaller_fuse(tmp_path, tiny_config, monkeypatch, where):
    dirs = [tmp_path / f"residual-8-s{seed}" for seed in SEEDS]
    for run_dir, seed in zip(dirs, SEEDS, strict=True):
        run_dir.mkdir()
        write_config(run_dir, asdict(tiny_config(seed=seed)))

    def out_of_memory(self, *_):
        try:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        finally:
            if where == "capture":  # what torch.cuda.graph's exit raises when an allocation failed inside it
                raise RuntimeError("CUDA error: operation not permitted when stream is capturing")


    monkeypatch.setattr(FusedTrainer, "train_step" if where == "capture" else where, out_of_memory)
    outcomes = each_cell(run_cells(dirs, "cpu", 1, lambda: False))
    assert [o.state for o in outcomes] == ["failed"] * 3
    assert "out of memory training 3 models fused" in outcomes[0].error
    assert "--fuse 1" in outcomes[0].error and "--retry-failed" in outcomes[0].error
    assert RunStatus.read(dirs[2]).state == "failed"


# ---------------------------------------------------------------------------------------------- planning
def test_fuse_groups_only_runnable_cells_that_differ_in_their_seed(tmp_path, tiny_sweep, run_sweep_now):
    out = tmp_path / "grid"
    run_sweep_now(tiny_sweep(out, kinds=["residual"], seeds=[2]))  # seed 2 done alone first
    done = {p.name: p.read_bytes() for p in (out / "residual-8-s2").iterdir()}
    failed = out / "residual-8-s3"
    failed.mkdir()
    write_config(failed, asdict(replace(tiny_sweep(out).train, seed=3, kind="residual")))
    RunStatus(state="failed", error="it broke").write(failed)
    sweep = tiny_sweep(out, seeds=[0, 1, 2, 3, 4], fuse=2)
    planned = plan_sweep(sweep)
    groups = {p.cell.name: (p.action, p.group) for p in planned}
    assert groups["residual-8-s0"] == groups["residual-8-s1"] == ("new", "residual-8-s0+s1")
    assert groups["residual-8-s2"] == ("skip-done", "") and groups["residual-8-s3"] == ("skip-failed", "")
    assert groups["residual-8-s4"] == ("new", "")  # the one left over trains alone
    assert groups["plain-8-s2"][1] == "plain-8-s2+s3" and groups["plain-8-s4"][1] == ""
    _, outcomes = run_sweep_now(sweep)
    assert len(outcomes) == 8 and {o.state for o in outcomes.values()} == {"done"}
    assert {p.name: p.read_bytes() for p in (out / "residual-8-s2").iterdir()} == done  # never trained again
    assert RunStatus.read(failed).state == "failed" and not (failed / "metrics.csv").exists()
    assert "fused" not in json.loads((out / "residual-8-s4" / "config.json").read_text())


def test_a_compiled_fused_group_stopped_mid_epoch_resumes_bit_identically(tmp_path, tiny_config, assert_same_run):
    # compiled, with a 3-iteration checkpoint cadence, stopped inside epoch 2 and resumed (its momentum loaded, not
    # born: the SGD update's other compiled form): the same rows, gradients and weights, bit for bit, as the
    # compiled group trained through
    configs = [tiny_config(seed=seed, compile=True, checkpoint_every="3", epochs=3) for seed in (0, 1)]
    through, cut = ([tmp_path / way / f"s{seed}" for seed in (0, 1)] for way in ("through", "cut"))
    run_fused_training(configs, through)
    stopped = run_fused_training(configs, cut, should_stop=stop_after(5))
    assert [r.state for r in stopped] == ["interrupted"] * 2 and [r.iterations_done for r in stopped] == [5, 5]
    assert [r.state for r in run_fused_training(configs, cut)] == ["done"] * 2
    for ours, theirs in zip(cut, through, strict=True):
        assert_same_run(ours, theirs)


def test_a_compiled_fused_sweep_compiles_its_groups_and_the_cell_left_to_train_alone(tmp_path, tiny_sweep,
                                                                                    run_sweep_now):
    # --fuse with --compile (refused before): the group of two compiles its fused step, and seed 2, left over,
    # takes the single run's compiled step; all in one process (the sequential executor)
    out = tmp_path / "grid"
    sweep = tiny_sweep(out, kinds=["residual"], seeds=[0, 1, 2], fuse=2, executor="sequential")
    sweep = replace(sweep, train=replace(sweep.train, compile=True))
    assert [p.group for p in plan_sweep(sweep)] == ["residual-8-s0+s1", "residual-8-s0+s1", ""]
    _, outcomes = run_sweep_now(sweep)
    assert {o.state for o in outcomes.values()} == {"done"}
    for seed, fused in ((0, True), (1, True), (2, False)):
        saved = json.loads((out / f"residual-8-s{seed}" / "config.json").read_text())
        assert saved["resolved"]["compile"] and ("fused" in saved) == fused, seed


@pytest.mark.parametrize("fuse, changes, message", [
    ("0", {}, "--fuse must be a number of models per job (1: no fusing) or auto, got '0'"),
    ("many", {}, "--fuse must be a number of models per job"),
    ("-2", {}, "--fuse must be a number of models per job"),
])
def test_bad_fuse_values_are_refused_in_one_line(tmp_path, tiny_sweep, fuse, changes, message):
    sweep = tiny_sweep(tmp_path, fuse=fuse)
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)")):
        plan_sweep(replace(sweep, train=replace(sweep.train, **changes)))


def test_fuse_auto_keeps_cpu_cells_apart_as_measured(tmp_path, tiny_sweep):
    planned = plan_sweep(tiny_sweep(tmp_path, seeds=[0, 1, 2], fuse="auto"))
    assert [p.group for p in planned] == [""] * 6  # BENCHMARKS.md: no K > 1 beat separate runs on the CPU


def test_dry_run_shows_the_fused_jobs(tmp_path, run_cli, tiny_args):
    code, out, err = run_cli("sweep", "--depths", "8,14", "--kind", "residual", "--seeds", "0,1,2", "--fuse", "2",
                             *tiny_args, "--out", str(tmp_path / "r"), "--dry-run")
    assert code == 0, err
    assert "fused job" in out and out.count("residual-8-s0+s1") == 2 and out.count("residual-14-s0+s1") == 2
    assert not (tmp_path / "r").exists()


def test_group_labels_name_the_seeds():
    assert group_label(["residual-20-s0", "residual-20-s1", "residual-20-s12"]) == "residual-20-s0+s1+s12"
    assert group_label(["residual-56-B-s3", "residual-56-B-s4"]) == "residual-56-B-s3+s4"
    assert group_label(["a", "b"]) == "a+b"


# ---------------------------------------------------------------------------------------------- executors, resume
def test_a_fused_group_is_one_worker_process_with_the_in_process_numbers(tmp_path, fused_sweep, run_sweep_now,
                                                                         assert_same_run):
    run_sweep_now(fused_sweep(tmp_path / "seq"), SequentialExecutor())
    _, outcomes = run_sweep_now(fused_sweep(tmp_path / "proc", executor="local"), LocalProcessExecutor())
    assert {o.state for o in outcomes.values()} == {"done"} and len(outcomes) == 3
    assert (tmp_path / "proc" / "residual-8-s0" / "worker.log").exists()  # one worker, logging in the first folder
    assert not (tmp_path / "proc" / "residual-8-s1" / "worker.log").exists()
    for seed in SEEDS:
        assert_same_run(tmp_path / "seq" / f"residual-8-s{seed}", tmp_path / "proc" / f"residual-8-s{seed}")


def test_a_busy_member_is_left_alone_and_the_rest_of_its_group_trains(tmp_path, fused_sweep, live_lock):
    sweep = fused_sweep(tmp_path)
    planned = plan_sweep(sweep)
    for item in planned:
        item.cell.run_dir.mkdir(parents=True)
        write_config(item.cell.run_dir, asdict(item.cell.config))
    busy = planned[1].cell.run_dir
    live_lock(busy)
    executor = LocalProcessExecutor()
    job = CellJob(planned[0].cell.run_dir, "cpu", 1, tuple(p.cell.run_dir for p in planned[1:]))
    outcomes = each_cell(executor.submit(job).result(timeout=300))
    assert [o.state for o in outcomes] == ["done", "busy", "done"]
    assert "running elsewhere: pid" in outcomes[1].error and not (busy / "metrics.csv").exists()
    assert json.loads((planned[2].cell.run_dir / "config.json").read_text())["fused"]["fused_with"] == [
        "residual-8-s0"]  # the two that were free trained together


@pytest.mark.parametrize("damaged_file", ["checkpoint.pt", "metrics.csv"])
def test_a_members_damaged_files_fail_that_cell_alone_and_the_rest_train_on(tmp_path, fused_sweep, damaged_file):
    # the whole group failed, each healthy cell's error naming the other's file
    from resdepth.sweep.cell import run_cells

    planned = plan_sweep(fused_sweep(tmp_path))
    run_dirs = [item.cell.run_dir for item in planned]
    for item in planned:
        item.cell.run_dir.mkdir(parents=True)
        write_config(item.cell.run_dir, asdict(item.cell.config))
    steps = iter(range(10**6))
    interrupted = each_cell(run_cells(run_dirs, "cpu", 1, lambda: next(steps) >= 5))  # inside its second epoch
    assert [o.state for o in interrupted] == ["interrupted"] * 3
    damaged = run_dirs[1] / damaged_file
    damaged.write_bytes(b"PK\x03\x04 cut short" if damaged_file == "checkpoint.pt" else b"epoch\ngarbage\n")
    outcomes = each_cell(run_cells(run_dirs, "cpu", 1, lambda: False))
    assert [o.state for o in outcomes] == ["done", "failed", "done"]
    assert str(damaged) in outcomes[1].error
    assert json.loads((run_dirs[2] / "config.json").read_text())["fused"]["fused_with"] == [run_dirs[0].name]


def test_sigkill_then_resume_of_a_fused_sweep_is_bit_identical(tmp_path, cli_env, resdepth_cli, tiny_args,
                                                              assert_same_run, wait_for_rows, run_cli):
    args = ["sweep", "--depths", "8", "--kind", "residual", "--seeds", "0,1,2", "--fuse", "3", "--epochs", "12",
            *tiny_args]
    reference = subprocess.run([resdepth_cli, *args, "--out", str(tmp_path / "ref")], env=cli_env,
                               capture_output=True, text=True, timeout=600)
    assert reference.returncode == 0, reference.stderr
    victim = subprocess.Popen([resdepth_cli, *args, "--out", str(tmp_path / "cut")], env=cli_env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for_rows(tmp_path / "cut" / "residual-8-s2" / "metrics.csv", 2)
    time.sleep(0.1)  # somewhere inside a later epoch
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    assert len(pd.read_csv(tmp_path / "cut" / "residual-8-s0" / "metrics.csv")) < 12, "finished before the kill"
    resumed = subprocess.run([resdepth_cli, *args, "--out", str(tmp_path / "cut")], env=cli_env,
                             capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    for seed in SEEDS:
        assert_same_run(tmp_path / "ref" / f"residual-8-s{seed}", tmp_path / "cut" / f"residual-8-s{seed}")
    code, out, err = run_cli("table", str(tmp_path / "cut"), "--runs")  # and the tools read the folders as any
    assert code == 0 and out.count("done") == 3, err
    code, out, err = run_cli("plot", str(tmp_path / "cut"))
    assert code == 0 and "figure6-synthetic.png" in out, err



# ---------------------------------------------------------------------------------------------- what a run can do
def test_fused_models_start_from_init_weights_as_a_run_alone_does(tmp_path, tiny_config):
    source = tmp_path / "source"
    run_training(tiny_config(seed=7), source)
    start = torch.load(source / "checkpoint.pt", weights_only=True)["model"]
    configs = [tiny_config(seed=seed, epochs=1, lr=1e-9, weight_decay=0.0, init=str(source)) for seed in (0, 1)]
    dirs = [tmp_path / f"residual-8-s{seed}" for seed in (0, 1)]
    assert [r.state for r in run_fused_training(configs, dirs)] == ["done"] * 2
    for run_dir in dirs:
        trained = torch.load(run_dir / "checkpoint.pt", weights_only=True)["model"]
        for key in ("conv1.weight", "linear.weight"):
            torch.testing.assert_close(trained[key], start[key], rtol=0, atol=1e-7)  # lr 1e-9: barely moved
        assert trained["bn1.num_batches_tracked"] == start["bn1.num_batches_tracked"] + 4  # BN state loaded too
        record = json.loads((run_dir / "config.json").read_text())
        assert record["resolved"]["init"]["net"] == "residual-8" and record["fused"]["models"] == 2


def test_a_fused_preact_group_matches_its_runs_alone(tmp_path, tiny_config, metrics_of):
    configs = [tiny_config(kind="preact", seed=seed) for seed in (0, 1)]
    for config in configs:
        run_training(config, tmp_path / "alone" / f"preact-8-s{config.seed}")
    dirs = [tmp_path / "fused" / f"preact-8-s{seed}" for seed in (0, 1)]
    assert [r.state for r in run_fused_training(configs, dirs)] == ["done"] * 2
    for run_dir in dirs:
        assert_close_runs(metrics_of(run_dir), metrics_of(tmp_path / "alone" / run_dir.name))
        resolved = json.loads((run_dir / "config.json").read_text())["resolved"]
        alone = json.loads((tmp_path / "alone" / run_dir.name / "config.json").read_text())["resolved"]
        assert resolved["params"] == alone["params"] and resolved["warmup"] == alone["warmup"]


def test_a_fused_trainer_fills_in_its_familys_protocol(tmp_path, seeds_of):
    configs = seeds_of(kind="preact")  # as `bench --fuse` builds them: the family's defaults not yet filled in
    trainer = FusedTrainer(configs, [tmp_path / f"p{c.seed}" for c in configs], CPU, load_dataset(configs[0].data))
    trainer.train_step()
    assert all(member.warming_up for member in trainer.members)  # 2016b: lr 0.01 for the first 400 iterations


def test_one_gather_augments_every_model_as_its_run_alone_does(tiny_config):
    # a fused step's K batches in one gather: each model's crops and flips from its own generator, the same images
    # (bit for bit) and the same generator state after as K calls of the single run's augmentation
    dataset = load_dataset(tiny_config().data)
    mean, images = dataset.pixel_mean(), dataset.train_images[:3 * 16]
    alone = [torch.Generator().manual_seed(seed) for seed in SEEDS]
    expected = torch.stack([augment_models(images[16 * k:16 * (k + 1)], mean, [alone[k]], channels_last=False)[0]
                            for k in range(3)])
    for channels_last in (False, True):
        together = [torch.Generator().manual_seed(seed) for seed in SEEDS]
        batches = augment_models(images, mean, together, channels_last)
        assert torch.equal(batches, expected)
        assert all(torch.equal(a.get_state(), b.get_state()) for a, b in zip(alone, together, strict=True))
        # NHWC: the memory of (B, K*3, H, W) in channels-last, what the grouped convolutions read without a copy
        assert batches.permute(1, 0, 2, 3, 4).reshape(16, 9, 32, 32).is_contiguous(
            memory_format=torch.channels_last if channels_last else torch.contiguous_format)


def test_the_fused_update_is_torchs_sgd_for_each_model_at_its_own_lr():
    # the (K,) lr tensor that a compiled update reads: model 0's slices end bit-identical to torch's SGD (foreach, the
    # single run's CPU optimizer) over 4 steps and an lr change, while model 1 trains at another lr
    torch.manual_seed(0)
    alone = [torch.randn(8, 4, 3, 3, requires_grad=True), torch.randn(8, requires_grad=True)]
    stacked = [torch.stack([p.detach(), p.detach() + 1]).requires_grad_() for p in alone]
    sgd = torch.optim.SGD(alone, lr=0.1, momentum=0.9, weight_decay=1e-4, foreach=True)
    fused = StackedSGD(stacked, momentum=0.9, weight_decay=1e-4)
    for step, lr in enumerate((0.1, 0.1, 0.01, 0.01)):
        grads = [torch.randn_like(p) for p in alone]
        for param, stack, grad in zip(alone, stacked, grads, strict=True):
            param.grad, stack.grad = grad.clone(), torch.stack([grad, grad.flip(0)])
        sgd.param_groups[0]["lr"] = lr
        sgd.step()
        fused.step(torch.tensor([lr, 0.5]))
        assert all(torch.equal(param, stack[0]) for param, stack in zip(alone, stacked, strict=True)), step
    assert not torch.equal(stacked[0][1], alone[0] + 1)


def test_compiled_fused_steps_follow_eager_ones_and_runs_alone_as_models_drop_out(tmp_path, tiny_config, metrics_of):
    # --compile in a fused group: the batched forward, backward and the SGD update with the (K,) lr tensor compiled.
    # Seeds 1 and 2 start 2 and 4 steps ahead, so the group trains K = 3, then 2, then 1 (each drop recompiles), and
    # the models' lrs differ at the milestones (steps 4 and 6 of 8). Each model must end as its eager fused twin and
    # as its run alone do, up to float order.
    configs = [tiny_config(seed=seed) for seed in SEEDS]
    ahead = {1: 2, 2: 4}
    for way in ("compiled", "eager"):
        for seed, steps in ahead.items():
            run_training(configs[seed], tmp_path / way / f"s{seed}", should_stop=stop_after(steps))
    torch._dynamo.reset()  # graphs another test compiled for these shapes would be reused, and not counted below
    captured = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    compiled = run_fused_training([replace(c, compile=True) for c in configs],
                                  [tmp_path / "compiled" / f"s{seed}" for seed in SEEDS])
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] >= captured + 6  # steps and updates for K = 3, 2, 1
    eager = run_fused_training([replace(c, compile=False) for c in configs],
                               [tmp_path / "eager" / f"s{seed}" for seed in SEEDS])
    assert [r.state for r in compiled + eager] == ["done"] * 6
    for seed, config in zip(SEEDS, configs, strict=True):
        run_training(config, tmp_path / "alone" / f"s{seed}")
        ours = metrics_of(tmp_path / "compiled" / f"s{seed}")
        assert_close_runs(ours, metrics_of(tmp_path / "eager" / f"s{seed}"))
        assert_close_runs(ours, metrics_of(tmp_path / "alone" / f"s{seed}"))
        assert json.loads((tmp_path / "compiled" / f"s{seed}" / "config.json").read_text())["resolved"]["compile"]


# ---------------------------------------------------------------------------------------------- one engine
def assert_same_state(ours, theirs, where: str = "checkpoint") -> None:
    """Two checkpoints hold the same keys, values and tensors (dtype, shape, strides and bits)."""
    if isinstance(theirs, dict):
        assert isinstance(ours, dict) and set(ours) == set(theirs), where
        for key in theirs:
            assert_same_state(ours[key], theirs[key], f"{where}[{key!r}]")
    elif torch.is_tensor(theirs):
        assert torch.is_tensor(ours) and (ours.dtype, ours.shape, ours.stride()) == (
            theirs.dtype, theirs.shape, theirs.stride()), where
        assert torch.equal(ours, theirs), where
    else:
        assert ours == theirs, where


def stop_after(steps: int):
    calls = itertools.count(1)
    return lambda: next(calls) > steps


def test_a_checkpoint_passes_between_a_fused_group_and_a_single_run_unchanged(tmp_path, tiny_config):
    # One format, written and read by one engine: a group's checkpoint (inside epoch 2, with momentum, warming up)
    # read by a single run and written again is the same, bit for bit and stride for stride; and the other way.
    configs = [tiny_config(seed=seed, epochs=3, warmup="on", channels_last=True) for seed in (0, 1)]
    dataset = load_dataset(configs[0].data)
    resolved = [resolve_iterations(c, len(dataset.train_labels)) for c in configs]
    group_dirs = [tmp_path / "group-s0", tmp_path / "group-s1"]
    run_fused_training(configs, group_dirs, should_stop=stop_after(6))
    written = torch.load(group_dirs[0] / "checkpoint.pt", weights_only=True)
    assert written["partial"] is not None and written["warming_up"] and written["optimizer"]["state"]
    alone = Trainer(resolved[0], group_dirs[0], CPU, dataset)
    assert alone.try_resume() == []
    assert_same_state(alone.checkpoint(alone), written)

    run_training(configs[1], tmp_path / "alone-s1", should_stop=stop_after(5))
    written = torch.load(tmp_path / "alone-s1" / "checkpoint.pt", weights_only=True)
    group = FusedTrainer(resolved, [tmp_path / "new-s0", tmp_path / "alone-s1"], CPU, dataset)
    assert group.try_resume() == [group.members[0]]
    assert_same_state(group.checkpoint(group.members[1]), written)


def test_a_single_run_and_a_fused_group_follow_one_warmup_rule(tmp_path, tiny_config, metrics_of):
    # the cap at 7 (not a multiple of the 10-step check), then the milestones: the protocol's one implementation
    config = tiny_config(warmup="on", warmup_until_error=0.0, warmup_max_iterations=7, epochs=4)
    alone = run_training(config, tmp_path / "alone")
    fused = run_fused_training([config, replace(config, seed=1)], [tmp_path / "f0", tmp_path / "f1"])
    assert {(r.warmup_end_reason, r.warmup_end_iteration) for r in [alone, *fused]} == {("cap", 7)}
    assert metrics_of(tmp_path / "alone")["lr"].tolist() == metrics_of(tmp_path / "f0")["lr"].tolist() == [
        0.01, 0.1, 0.01, 0.001]


UNUSED_PARAMETER_FAMILY = '''
import torch
from torch import nn


class Spare(nn.Module):
    """A net holding a parameter its forward never uses: it never gets a gradient."""

    def __init__(self, num_classes):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.norm = nn.BatchNorm2d(8)
        self.spare = nn.Parameter(torch.ones(4))
        self.fc = nn.Linear(8, num_classes)

    def forward(self, x):
        return self.fc(torch.relu(self.norm(self.conv(x))).mean((2, 3)))


def spare(depth, num_classes=10, **options):
    return Spare(num_classes)
'''


def test_a_fused_net_with_a_parameter_that_gets_no_gradient_trains_as_alone(tmp_path, tiny_config, monkeypatch,
                                                                             metrics_of):
    from resdepth.models.families import forget_loaded

    (tmp_path / "spare_nets.py").write_text(UNUSED_PARAMETER_FAMILY)
    monkeypatch.syspath_prepend(str(tmp_path))
    forget_loaded()
    try:
        configs = [tiny_config(kind="spare_nets:spare", depth=3, seed=seed) for seed in (0, 1)]
        run_training(configs[0], tmp_path / "alone-s0")
        results = run_fused_training(configs, [tmp_path / "s0", tmp_path / "s1"], should_stop=stop_after(5))
        assert [r.state for r in results] == ["interrupted"] * 2
        state = torch.load(tmp_path / "s0" / "checkpoint.pt", weights_only=True)
        spare = list(dict(build_model("spare_nets:spare", 3).named_parameters())).index("spare")
        assert spare not in state["optimizer"]["state"] and torch.equal(state["model"]["spare"], torch.ones(4))
        assert [r.state for r in run_fused_training(configs, [tmp_path / "s0", tmp_path / "s1"])] == ["done"] * 2
        assert_close_runs(metrics_of(tmp_path / "s0"), metrics_of(tmp_path / "alone-s0"))
    finally:
        forget_loaded()
        sys.modules.pop("spare_nets", None)
