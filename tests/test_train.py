import itertools
import json
import math
import os
from dataclasses import replace
from pathlib import Path

import pandas as pd
import pytest
import torch

from resdepth.errors import UserError
from resdepth.results.runs import METRIC_COLUMNS, VAL_COLUMNS, RunStatus, metric_columns, recorded_attempts
from resdepth.train.data import DataConfig
from resdepth.train.fused import run_fused_training
from resdepth.train.protocol import learning_rate
from resdepth.train.trainer import Cadence, TrainConfig, load_run_config, resolve_iterations, run_training


def test_paper_defaults():
    config = TrainConfig().for_family()  # the residual family's defaults where the config leaves them open
    paper = (64_000, 128, 0.1, 0.9, 1e-4)
    assert (config.iterations, config.batch_size, config.lr, config.momentum, config.weight_decay) == paper
    assert config.shortcut == "A" and config.data.augment and config.data.val_size == 0


@pytest.mark.parametrize("iteration, lr", [(0, 0.1), (31_999, 0.1), (32_000, 0.01), (47_999, 0.01), (48_000, 0.001),
                                           (63_999, 0.001)])
def test_lr_schedule_divides_by_ten_at_32k_and_48k(iteration, lr):
    assert learning_rate(TrainConfig(), iteration, warming_up=False) == pytest.approx(lr)


def test_shorter_runs_scale_the_milestones():
    config = TrainConfig(iterations=1000)
    assert learning_rate(config, 499, False) == pytest.approx(0.1)
    assert learning_rate(config, 500, False) == pytest.approx(0.01)
    assert learning_rate(config, 750, False) == pytest.approx(0.001)
    assert learning_rate(config, 10, True) == pytest.approx(0.01)  # warm-up lr
    assert learning_rate(config, 750, True) == pytest.approx(0.001)  # a milestone passed: the schedule's lower lr


def test_epochs_convert_to_iterations():
    assert resolve_iterations(TrainConfig(epochs=3), 50_000).iterations == 3 * 390
    assert resolve_iterations(TrainConfig(epochs=3), 45_000).iterations == 3 * 351


def test_warmup_is_the_papers_for_residual_nets_of_110_layers_and_deeper():
    assert TrainConfig(depth=110).uses_warmup() and TrainConfig(depth=1202).uses_warmup()
    assert not TrainConfig(depth=56).uses_warmup()
    assert not TrainConfig(depth=110, warmup="off").uses_warmup() and TrainConfig(depth=20, warmup="on").uses_warmup()
    # §4.2 warms up ResNet-110 and says nothing of plain-110: plain nets start at 0.1 unless asked (--warmup deep)
    assert not TrainConfig(kind="plain", depth=110).uses_warmup()
    assert TrainConfig(kind="plain", depth=110, warmup="deep").uses_warmup()
    assert not TrainConfig(kind="plain", depth=56, warmup="deep").uses_warmup()
    assert TrainConfig().for_family().warmup_max_iterations == 4000  # 10x the paper's "about 400 iterations"


def read(run_dir):
    return pd.read_csv(run_dir / "metrics.csv")


def test_run_writes_one_row_per_epoch_with_the_schema(tmp_path, tiny_config):
    result = run_training(tiny_config(epochs=3), tmp_path)
    frame = read(tmp_path)
    assert list(frame.columns) == list(METRIC_COLUMNS)
    assert result.state == "done" and frame["epoch"].tolist() == [1, 2, 3]
    assert frame["iteration"].tolist() == [4, 8, 12]  # 128 images / batch 32
    assert frame[["train_error", "test_error"]].stack().between(0, 100).all()
    assert (frame["images_per_second"] > 0).all() and (frame["train_loss"] > 0).all()
    assert frame["lr"].tolist() == pytest.approx([0.1, 0.01, 0.001])  # milestones at 6 and 9 of 12


def test_validation_split_adds_val_columns(tmp_path, tiny_config):
    config = tiny_config(data=DataConfig(dataset="synthetic", synthetic_train=160, synthetic_test=64, val_size=32))
    run_training(config, tmp_path)
    frame = read(tmp_path)
    assert list(frame.columns) == metric_columns(True) and set(VAL_COLUMNS) <= set(frame.columns)
    assert frame["val_error"].between(0, 100).all()


def test_same_seed_same_numbers_other_seed_other_numbers(tmp_path, tiny_config, metrics_of):
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        (tmp_path / name).mkdir()
        run_training(tiny_config(seed=seed), tmp_path / name)
    a, b, c = (metrics_of(tmp_path / n) for n in "abc")
    pd.testing.assert_frame_equal(a, b)
    assert not a.equals(c)


def test_warmup_switches_when_the_training_error_falls_below_the_threshold(tmp_path, tiny_config):
    (tmp_path / "switch").mkdir(), (tmp_path / "never").mkdir()
    switch = run_training(tiny_config(warmup="on", warmup_until_error=100.0, epochs=6), tmp_path / "switch")
    never = run_training(tiny_config(warmup="on", warmup_until_error=0.0, epochs=6), tmp_path / "never")
    assert (switch.warmup_end_iteration, switch.warmup_end_reason) == (10, "threshold")  # the first check, 10 in
    assert never.warmup_end_iteration is None and never.warmup_end_reason is None  # 24 iterations: before the cap
    # 4 iterations per epoch: the switch at iteration 10 falls in epoch 3; the first milestone is at 12
    assert read(tmp_path / "switch")["lr"].tolist()[:3] == pytest.approx([0.01, 0.01, 0.1])
    # a warm-up still on at a milestone gives way to the schedule: the milestones at 12 and 18 apply
    assert read(tmp_path / "never")["lr"].tolist() == [0.01, 0.01, 0.01, 0.01, 0.001, 0.001]


def test_an_epoch_whose_last_step_ends_the_warmup_logs_the_warmup_lr(tmp_path, tiny_config):
    # 5 iterations per epoch: the switch after iteration 10 is epoch 2's last step, which ran at 0.01
    data = DataConfig(dataset="synthetic", synthetic_train=160, synthetic_test=64)
    result = run_training(tiny_config(warmup="on", warmup_until_error=100.0, epochs=8, data=data), tmp_path)
    assert result.warmup_end_iteration == 10
    assert read(tmp_path)["lr"].tolist()[:3] == pytest.approx([0.01, 0.01, 0.1])  # milestones at 20 and 30


ONE_STEP_EPOCHS = DataConfig(dataset="synthetic", synthetic_train=32, synthetic_test=32)  # batch 32: a CSV row per step


def test_a_warmup_that_never_reaches_the_threshold_ends_at_the_cap_then_follows_the_milestones(tmp_path, tiny_config):
    config = tiny_config(warmup="on", warmup_until_error=0.0, warmup_max_iterations=7, epochs=24, data=ONE_STEP_EPOCHS)
    result = run_training(config, tmp_path)
    assert (result.warmup_end_reason, result.warmup_end_iteration) == ("cap", 7)  # not a multiple of the 10-step check
    # one iteration per row: 7 steps at the warm-up lr, 0.1 from the cap on, /10 at 12 and 18 of 24
    assert read(tmp_path)["lr"].tolist() == [0.01] * 7 + [0.1] * 5 + [0.01] * 6 + [0.001] * 6
    status = json.loads((tmp_path / "status.json").read_text())
    assert (status["warmup_end_reason"], status["warmup_end_iteration"]) == ("cap", 7)
    assert "0.0010000000000000002" not in (tmp_path / "metrics.csv").read_text()  # the lr as the schedule states it
    assert ",0.001," in (tmp_path / "metrics.csv").read_text()


def test_resuming_in_the_middle_of_a_warmup_is_exact(tmp_path, tiny_config, assert_same_run):
    # 4 steps per epoch, 32 in all; stopped after 6 steps: inside epoch 2 and inside the warm-up's first 10-step
    # window. The threshold (85%) is near where these nets start, so a window not carried over would show.
    config = tiny_config(warmup="on", warmup_until_error=85.0, warmup_max_iterations=13, epochs=8)
    (tmp_path / "straight").mkdir(), (tmp_path / "resumed").mkdir()
    straight = run_training(config, tmp_path / "straight")
    calls = iter(range(1000))
    stopped = run_training(config, tmp_path / "resumed", should_stop=lambda: next(calls) == 6)
    assert stopped.state == "interrupted" and stopped.iterations_done == 6 and stopped.warmup_end_reason is None
    resumed = run_training(config, tmp_path / "resumed")
    assert (resumed.warmup_end_reason, resumed.warmup_end_iteration) == (straight.warmup_end_reason,
                                                                         straight.warmup_end_iteration)
    assert_same_run(tmp_path / "straight", tmp_path / "resumed")


def test_a_run_begun_before_its_layout_was_recorded_resumes_in_that_layout_exactly(tmp_path, tiny_config,
                                                                                    assert_same_run):
    # until 2026-11-28 auto meant channels-last off on the CPU and config.json did not record it: a resume took
    # today's auto (on) and its numbers drifted from the first resumed epoch on
    straight = tmp_path / "straight"
    run_training(tiny_config(epochs=4, channels_last=False), straight)
    old = tmp_path / "old"
    calls = iter(range(1000))
    run_training(tiny_config(epochs=4, channels_last=False), old, should_stop=lambda: next(calls) == 6)
    record = json.loads((old / "config.json").read_text())
    record["channels_last"] = None  # as that version wrote it: auto, resolved nowhere
    record["resolved"].pop("channels_last")
    record.pop("attempts")
    (old / "config.json").write_text(json.dumps(record))
    run_training(tiny_config(epochs=4), old)  # auto, as a resume of that folder asks
    assert_same_run(straight, old)
    assert [a["execution"]["channels_last"] for a in recorded_attempts(json.loads((old / "config.json").read_text()))
            if a.get("execution")] == [False]


def test_config_json_records_each_attempt_and_a_finished_run_asked_again_keeps_its_record(tmp_path, tiny_config):
    # config.json had held the last attempt's machine only, and a finished run asked again from another machine
    # (or with other threads) took that machine as its own, though it trained nothing
    config = tiny_config(epochs=4, threads=1)
    calls = iter(range(1000))
    run_training(config, tmp_path, should_stop=lambda: next(calls) == 6)
    run_training(replace(config, threads=2), tmp_path)
    record = json.loads((tmp_path / "config.json").read_text())
    attempts = record["attempts"]
    assert [a["from_iteration"] for a in attempts] == [0, 6]
    assert [a["environment"]["threads"] for a in attempts] == [1, 2] and record["environment"] == attempts[-1][
        "environment"]
    assert attempts[0]["execution"] == {key: record["resolved"][key] for key in attempts[0]["execution"]}
    written = (tmp_path / "config.json").read_bytes()
    assert run_training(replace(config, threads=1), tmp_path).state == "done"
    assert (tmp_path / "config.json").read_bytes() == written
    assert load_run_config(tmp_path) == replace(config, threads=2).for_family()
    from resdepth.results import load_runs
    from resdepth.results.report import trained_on

    host = attempts[0]["environment"]["host"]
    assert trained_on(load_runs(tmp_path)[0][0]) == f"{host} (cpu) from 0; {host} (cpu) from 6"


def test_a_run_begun_before_attempts_were_recorded_keeps_its_first_machine(tmp_path, tiny_config):
    config = tiny_config(epochs=4)
    calls = iter(range(1000))
    run_training(config, tmp_path, should_stop=lambda: next(calls) == 6)
    record = json.loads((tmp_path / "config.json").read_text())
    first = record.pop("attempts")[0]["environment"]
    (tmp_path / "config.json").write_text(json.dumps(record))  # as an earlier version wrote it
    run_training(config, tmp_path)
    attempts = json.loads((tmp_path / "config.json").read_text())["attempts"]
    assert (attempts[0]["from_iteration"], attempts[0]["environment"]) == (None, first)
    assert attempts[1]["from_iteration"] == 6


def test_resuming_before_the_cap_still_ends_the_warmup_there(tmp_path, tiny_config):
    config = tiny_config(warmup="on", warmup_until_error=0.0, warmup_max_iterations=10, epochs=8)
    calls = iter(range(1000))
    run_training(config, tmp_path, should_stop=lambda: next(calls) == 6)
    resumed = run_training(config, tmp_path)
    assert (resumed.warmup_end_reason, resumed.warmup_end_iteration) == ("cap", 10)
    # epochs end at steps 4, 8, ... 32: 0.01 up to the cap, 0.1 until the milestone at 16, then /10 at 16 and 24
    assert read(tmp_path)["lr"].tolist() == [0.01, 0.01, 0.1, 0.1, 0.01, 0.01, 0.001, 0.001]


def test_synthetic_dataset_is_learnable(tmp_path, tiny_config):
    config = tiny_config(data=DataConfig(dataset="synthetic", synthetic_train=1000, synthetic_test=300),
                         batch_size=64, epochs=6)
    run_training(config, tmp_path)
    assert read(tmp_path)["test_error"].iloc[-1] < 70  # chance is 90%


def test_absurd_lr_diverges_as_a_result(tmp_path, tiny_config):
    result = run_training(tiny_config(lr=1e8), tmp_path)
    assert result.state == "diverged"
    assert not math.isfinite(read(tmp_path)["train_loss"].iloc[-1])


@pytest.mark.parametrize("change, message", [
    ({"batch_size": 0}, "--batch-size"), ({"iterations": -5}, "--iterations"), ({"lr": 0.0}, "--lr"),
    ({"epochs": 0}, "--epochs"), ({"kind": "dense"}, "unknown kind"), ({"depth": 21}, "6n\\+2"),
    ({"precision": "fp8"}, "precision"), ({"device": "tpu"}, "device"),
    ({"warmup": "sometimes"}, "warm-up mode"), ({"warmup_max_iterations": 0}, "--warmup-max-iterations"),
    ({"checkpoint_every": "often"}, "--checkpoint-every"), ({"checkpoint_every": "0"}, "--checkpoint-every"),
])
def test_bad_configs_are_user_errors(tmp_path, change, message, tiny_config):
    with pytest.raises(UserError, match=message):
        run_training(replace(tiny_config(), **change), tmp_path)


def test_cuda_asked_without_gpu_is_a_user_error(tmp_path, tiny_config):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(UserError, match="no CUDA GPU"):
        run_training(tiny_config(device="cuda"), tmp_path)


def test_config_json_holds_resolved_settings_and_versions(tmp_path, tiny_config):
    run_training(tiny_config(), tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["kind"] == "residual" and saved["data"]["dataset"] == "synthetic"
    assert saved["resolved"]["iterations"] == 8 and saved["resolved"]["params"] == 75_290
    assert saved["resolved"]["precision"] == "fp32" and not saved["resolved"]["cudnn_benchmark"]  # the CPU
    assert saved["environment"]["torch"] == torch.__version__ and "resdepth" in saved["environment"]


def test_the_python_api_records_how_a_run_ended_and_returns_a_finished_runs_result(tmp_path, tiny_config):
    first = run_training(tiny_config(epochs=3), tmp_path)
    status = RunStatus.read(tmp_path)
    assert first.state == status.state == "done" and first.final_test_error is not None
    before = (tmp_path / "metrics.csv").read_bytes()
    again = run_training(tiny_config(epochs=3), tmp_path)  # nothing left to train: the same result, no new rows
    assert (again.state, again.final_test_error, again.epochs_done) == ("done", first.final_test_error, 3)
    assert (tmp_path / "metrics.csv").read_bytes() == before


def test_an_interrupted_run_reports_its_last_finished_epoch_not_the_partial_one(tmp_path, tiny_config):
    steps: list[int] = []  # 4 steps per epoch: stop 2 steps into the second epoch
    result = run_training(tiny_config(epochs=3), tmp_path, should_stop=lambda: steps.append(1) or len(steps) > 6)
    status, rows = RunStatus.read(tmp_path), pd.read_csv(tmp_path / "metrics.csv")
    assert result.state == status.state == "interrupted" and len(rows) == 1
    assert (status.epoch, status.iteration) == (1, 6)
    assert status.train_error == rows["train_error"].iloc[-1] and status.live_train_error is None


# ---------------------------------------------------------------------------------------------- checkpoint cadence
class Killed(Exception):
    """A kill: the run stops where it stands and writes nothing more."""


def kill_before_step(step: int):
    calls = itertools.count(1)

    def hook() -> bool:
        if next(calls) >= step:
            raise Killed
        return False
    return hook


def train(engine: str, config, run_dir, **kwargs):
    """The run in run_dir alone, or fused with seed 1's in a folder beside it."""
    if engine == "single":
        return run_training(config, run_dir, **kwargs)
    return run_fused_training([config, replace(config, seed=1)], [run_dir, run_dir.with_name("seed1")], **kwargs)[0]


@pytest.mark.parametrize("engine", ["single", "fused"])
@pytest.mark.parametrize("every, kept", [("3", 6), ("epoch", 4), ("5", 5)])
def test_a_kill_loses_only_the_steps_since_the_last_checkpoint_of_the_cadence(tmp_path, tiny_config, assert_same_run,
                                                                            engine, every, kept):
    # 4 steps per epoch, 16 in all, killed before step 8: "3" last saved at 6 (inside epoch 2), "5" at 5, "epoch" at
    # the end of epoch 1; each resumes to the run that was never killed, bit for bit
    config = tiny_config(epochs=4, checkpoint_every=every)
    (tmp_path / "straight").mkdir(), (tmp_path / "killed").mkdir()
    train(engine, config, tmp_path / "straight" / "s0")
    with pytest.raises(Killed):
        train(engine, config, tmp_path / "killed" / "s0", should_stop=kill_before_step(8))
    assert torch.load(tmp_path / "killed" / "s0" / "checkpoint.pt", weights_only=True)["iteration"] == kept
    assert train(engine, config, tmp_path / "killed" / "s0").state == "done"
    assert_same_run(tmp_path / "straight" / "s0", tmp_path / "killed" / "s0")


def test_a_kill_between_a_fused_groups_checkpoint_writes_leaves_every_member_at_one_iteration(
        tmp_path, tiny_config, assert_same_run, monkeypatch):
    # each member's checkpoint was written and renamed in turn: a kill between two left them at two iterations, and
    # the resumed group's member behind trained its last steps alone, in another float order than the group
    from resdepth.results import runs

    config = tiny_config(epochs=4, checkpoint_every="3")
    configs = [config, replace(config, seed=1)]
    straight = [tmp_path / "straight" / name for name in ("s0", "s1")]
    killed = [tmp_path / "killed" / name for name in ("s0", "s1")]
    run_fused_training(configs, straight)
    writes = itertools.count(1)
    real = runs.write_temp_beside

    def kill_at_the_fourth(path, data):  # the group's second checkpoint (iteration 6), once s0's file is written
        if path.name == "checkpoint.pt" and next(writes) == 4:
            raise Killed
        return real(path, data)

    monkeypatch.setattr(runs, "write_temp_beside", kill_at_the_fourth)
    with pytest.raises(Killed):
        run_fused_training(configs, killed)
    monkeypatch.undo()
    saved = [torch.load(run_dir / "checkpoint.pt", weights_only=True)["iteration"] for run_dir in killed]
    assert saved == [3, 3] and not list((tmp_path / "killed").rglob(".*.tmp"))
    run_fused_training(configs, killed)
    for a, b in zip(straight, killed, strict=True):
        assert_same_run(a, b)


def test_checkpoint_cadences_read_as_epochs_iterations_or_minutes():
    assert Cadence.parse("epoch").per_epoch and Cadence.parse(" Epoch ") == Cadence()
    assert Cadence.parse("2000") == Cadence(iterations=2000) and Cadence.parse("5min") == Cadence(seconds=300.0)
    assert Cadence.parse("0.5min") == Cadence(seconds=30.0)
    assert Cadence.parse("auto").per_epoch and Cadence.parse("auto", "cuda") == Cadence(seconds=60.0)
    assert Cadence(iterations=3).due(3, 0.0) and not Cadence(iterations=3).due(2, 1e9)
    assert Cadence(seconds=60.0).due(1, 60.0) and not Cadence(seconds=60.0).due(10**6, 59.0)
    for bad in ("0", "-3", "min", "0min", "5 minutes", "1e3", "\u00b2", "\u00b9min", "\uff15"):  # digits int() refuses
        with pytest.raises(UserError, match="--checkpoint-every"):
            Cadence.parse(bad)
    from resdepth.train.devices import check_device_name
    from resdepth.train.fused import parse_fuse

    for refused, named in ((lambda: check_device_name("cuda:\u00b2"), "unknown device"),
                           (lambda: parse_fuse("\u00b2"), "--fuse must be")):
        with pytest.raises(UserError, match=named):
            refused()


@pytest.mark.parametrize("cadence, metric_syncs", [("epoch", 4), ("1000", 1)])
def test_rows_are_made_durable_before_each_checkpoint_that_counts_them_and_not_after_every_epoch(
        tmp_path, tiny_config, monkeypatch, cadence, metric_syncs):
    synced: list[str] = []
    real_fsync = os.fsync

    def recording_fsync(fd: int) -> None:
        synced.append(Path(os.readlink(f"/proc/self/fd/{fd}")).name)
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    assert run_training(tiny_config(epochs=4, checkpoint_every=cadence), tmp_path / "run").state == "done"
    checkpoints = [i for i, name in enumerate(synced) if name.startswith(".checkpoint.pt")]
    rows = [i for i, name in enumerate(synced) if name == "metrics.csv"]
    assert len(rows) == metric_syncs and len(checkpoints) == metric_syncs  # 4 epochs: 4 checkpoints, or the last
    for checkpoint in checkpoints:  # each checkpoint comes after the rows it counts, and gradients.csv's
        assert any(row < checkpoint for row in rows)
    assert synced.count("gradients.csv") == metric_syncs
