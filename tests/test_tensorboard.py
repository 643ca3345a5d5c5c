"""--tensorboard: each run's metrics.csv as TensorBoard scalars, read back with TensorBoard's own reader; a
resumed run never shows an epoch twice; without the package, one line and exit 2."""

import shutil
import sys
from pathlib import Path

import pandas as pd
import pytest

from resdepth.train.fused import run_fused_training
from resdepth.train.trainer import run_training

event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator",
                                        reason="the tensorboard extra is not installed")


def scalars(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar TensorBoard shows for the run folder: tag -> [(step, value)]."""
    reader = event_accumulator.EventAccumulator(str(run_dir))
    reader.Reload()
    return {tag: [(e.step, e.value) for e in reader.Scalars(tag)] for tag in reader.Tags()["scalars"]}


def assert_events_mirror_csv(run_dir: Path) -> None:
    frame = pd.read_csv(run_dir / "metrics.csv")
    shown = scalars(run_dir)
    for column, tag in (("test_error", "error/test"), ("train_error", "error/train"), ("train_loss", "loss/train"),
                        ("lr", "lr"), ("images_per_second", "speed/images_per_second")):
        steps, values = zip(*shown[tag], strict=True)
        assert list(steps) == frame["iteration"].tolist(), tag  # each epoch once, at its iteration
        assert values == pytest.approx(frame[column].tolist(), rel=1e-6), tag


def test_events_hold_each_epochs_metrics_at_its_iteration(tmp_path, tiny_config):
    run_dir = tmp_path / "r"
    run_training(tiny_config(epochs=3, tensorboard=True), run_dir)
    assert len(list(run_dir.glob("events.out.tfevents.*"))) == 1
    assert_events_mirror_csv(run_dir)
    assert len(pd.read_csv(run_dir / "metrics.csv")) == 3


def test_a_resume_after_a_kill_shows_no_epoch_twice(tmp_path, tiny_config):
    """A kill after an epoch's row and events were written but before its checkpoint: the resumed run redoes that
    epoch, and TensorBoard must show it once, as metrics.csv does."""
    run_dir = tmp_path / "r"
    calls = []
    first = run_training(tiny_config(epochs=5, tensorboard=True), run_dir,
                         should_stop=lambda: calls.append(1) or len(calls) > 9)
    assert first.state == "interrupted" and 1 <= first.epochs_done < 5
    early_checkpoint = (run_dir / "checkpoint.pt").read_bytes()
    assert run_training(tiny_config(epochs=5, tensorboard=True), run_dir).state == "done"
    (run_dir / "checkpoint.pt").write_bytes(early_checkpoint)  # as if killed before the later checkpoints were written
    (run_dir / "status.json").unlink()
    assert run_training(tiny_config(epochs=5, tensorboard=True), run_dir).state == "done"
    assert len(pd.read_csv(run_dir / "metrics.csv")) == 5
    assert_events_mirror_csv(run_dir)
    assert len(list(run_dir.glob("events.out.tfevents.*"))) == 1


def test_the_sweep_file_key_and_a_resume_that_turns_it_on_are_not_a_different_config(tmp_path, run_cli):
    sweep_file = tmp_path / "tb.toml"
    sweep_file.write_text('depths = [8]\nkinds = ["residual"]\n[train]\nepochs = 2\nbatch_size = 32\n'
                          'device = "cpu"\ntensorboard = true\n[data]\ndataset = "synthetic"\nsynthetic_train = 64\n'
                          'synthetic_test = 32\n')
    code, _, err = run_cli("sweep", str(sweep_file), "--out", str(tmp_path / "r"))
    assert code == 0, err
    assert_events_mirror_csv(tmp_path / "r" / "residual-8-s0")
    # an execution choice, not the protocol: the same sweep without it finds its cells done, not "different config"
    code, out, err = run_cli("sweep", str(sweep_file), "--no-tensorboard", "--out", str(tmp_path / "r"))
    assert code == 0 and "skip-done" in out, err


def test_every_cell_of_a_sweep_is_a_run_tensorboard_shows(tmp_path, tiny_config, tiny_sweep, run_sweep_now):
    from tensorboard.backend.event_processing.event_multiplexer import EventMultiplexer

    run_sweep_now(tiny_sweep(tmp_path, train=tiny_config(tensorboard=True)))
    board = EventMultiplexer()
    board.AddRunsFromDirectory(str(tmp_path))  # what `tensorboard --logdir RESULTS_DIR` does
    board.Reload()
    assert sorted(board.Runs()) == ["plain-8-s0", "residual-8-s0"]


def test_without_the_package_one_line_with_the_install_hint_and_exit_2(tmp_path, run_cli, monkeypatch):
    for name in ("tensorboard", "tensorboard.compat.proto.event_pb2", "tensorboard.summary.writer.record_writer"):
        monkeypatch.setitem(sys.modules, name, None)  # `import` of these now raises ImportError
    code, _, err = run_cli("train", "--depth", "8", "--dataset", "synthetic", "--iterations", "2", "--device", "cpu",
                       "--tensorboard", "--out", str(tmp_path / "r"))
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert 'pip install "resdepth[tensorboard]"' in err and "Traceback" not in err
    assert not (tmp_path / "r").exists() or not any((tmp_path / "r").iterdir())
    shutil.rmtree(tmp_path / "r", ignore_errors=True)


def test_each_model_of_a_fused_group_gets_its_own_events(tmp_path, tiny_config):
    dirs = [tmp_path / f"residual-8-s{seed}" for seed in (0, 1)]
    run_fused_training([tiny_config(seed=seed, epochs=3, tensorboard=True) for seed in (0, 1)], dirs)
    for run_dir in dirs:
        assert len(list(run_dir.glob("events.out.tfevents.*"))) == 1
        assert_events_mirror_csv(run_dir)
