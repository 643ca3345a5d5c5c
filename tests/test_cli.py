"""The command line: one smoke sweep through the real console entry point (its own process, the real exit
path), then help, listings, every user error and the sweep's bookkeeping in this process through CliRunner."""

import json
import os
import subprocess
import time
from pathlib import Path

import pandas as pd
import pytest

from resdepth.cli.sweep import final_states
from resdepth.results.runs import METRIC_COLUMNS, RunStatus
from resdepth.sweep.runner import plan_sweep


def test_smoke_sweep_through_the_console_entry_point(tmp_path, cli_env, resdepth_cli):
    done = subprocess.run([resdepth_cli, "sweep", "--depths", "8,14", "--kind", "plain,residual", "--dataset",
                           "synthetic", "--synthetic-train", "256", "--synthetic-test", "128", "--epochs", "2",
                           "--out", str(tmp_path)], env=cli_env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    names = sorted(p.name for p in tmp_path.iterdir() if p.is_dir())
    assert names == ["plain-14-s0", "plain-8-s0", "residual-14-s0", "residual-8-s0"]
    for name in names:
        config = json.loads((tmp_path / name / "config.json").read_text())
        assert f"{config['kind']}-{config['depth']}-s{config['seed']}" == name
        assert config["resolved"]["iterations"] == 4 and config["environment"]["torch"]
        frame = pd.read_csv(tmp_path / name / "metrics.csv")
        assert list(frame.columns) == list(METRIC_COLUMNS) and len(frame) == 2
        assert frame[["train_error", "test_error"]].stack().between(0, 100).all()
        assert (frame["train_loss"] > 0).all() and (frame["images_per_second"] > 0).all()
        assert json.loads((tmp_path / name / "status.json").read_text())["state"] == "done"
    assert "sweep summary" in done.stdout and done.stdout.count("done") >= 4
    bad = subprocess.run([resdepth_cli, "train", "--depth", "21"], env=cli_env, capture_output=True, text=True,
                         timeout=120)  # the real exit path of a user error: one line, code 2, no traceback
    assert bad.returncode == 2 and bad.stderr.strip().splitlines() == [
        "error: depth 21 is not of the form 6n+2 (n >= 1) for residual nets: try 20 or 26"]


def test_help_shows_panels_defaults_and_units(run_cli):
    for command in (["--help"], ["train", "--help"], ["sweep", "--help"], ["models", "--help"]):
        assert run_cli(*command).code == 0
    text = run_cli("sweep", "--help").out
    for expected in ("[default: 64000]", "[default: 128]", "[default: 0.1]", "[default: 0.0001]", "images"):
        assert expected in text
    panels = [line.strip("╭─ ").split(" ─")[0] for line in text.splitlines() if line.startswith("╭─")]
    assert panels == ["Arguments", "Options", "What to run", "Training protocol", "Data", "Execution",
                      "Cluster (--executor ray or slurm)"]
    assert run_cli("--version").out.startswith("resdepth ")


def test_models_lists_names_params_and_flops(run_cli):
    out = run_cli("models", "resnet*").out
    assert "resnet56" in out and "853,018" in out and "plain20" not in out


def test_dry_run_lists_cells_folders_and_devices_without_training(tmp_path, run_cli):
    code, out, err = run_cli("sweep", str(Path(__file__).parents[1] / "sweeps" / "figure6.toml"), "--dry-run",
                             "--out", str(tmp_path / "f6"), "--device", "cpu")
    assert code == 0, err
    assert out.count(" new ") == 10 and "plain-110-s0" in out and "cpu" in out
    assert not (tmp_path / "f6").exists()


@pytest.mark.parametrize("args, message", [
    (["train", "--depth", "21"], "depth 21 is not of the form 6n+2 (n >= 1) for residual nets: try 20 or 26"),
    (["train", "--kind", "dense"], "unknown kind 'dense'"),
    (["train", "--dataset", "imagenet"], "unknown dataset 'imagenet'"),
    (["train", "--iterations", "0"], "--iterations must be a positive integer"),
    (["train", "--batch-size", "-1"], "--batch-size must be a positive integer"),
    (["train", "--lr", "0"], "--lr must be a positive number"),
    (["train", "--dataset", "folder", "--data-dir", "/nonexistent/data"],
     "--data-dir /nonexistent/data is not a readable folder"),
    (["train", "--dataset", "folder"], "--dataset folder needs --data-dir"),
    (["train", "--dataset", "synthetic", "--out", "/proc/forbidden"], "cannot write results to /proc/forbidden"),
    (["sweep", "--depths", "20,abc"], "comma-separated list of ints"),
    (["sweep", "--depths", "20,,56"], "--depths '20,,56' has an empty item: list the values with one comma between "
                                      "each, e.g. 20,56"),
    (["sweep", "--kinds", ""], "--kind '' has an empty item: list the values with one comma between each, e.g. "
                               "plain,residual"),
    (["sweep", "/nonexistent/sweep.toml"], "cannot read sweep file /nonexistent/sweep.toml"),
    (["sweep", "--resume", "/nonexistent/results"], "holds no sweep.json"),
])
def test_user_errors_are_one_line_with_exit_code_2(tmp_path, run_cli, args, message):
    if "--out" not in args:
        args = [*args, "--out", str(tmp_path / "out")]
    code, out, err = run_cli(*args)
    assert code == 2, (out, err)
    assert message in " ".join(err.split()) and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_cifar_missing_offline_is_a_user_error_and_nothing_is_run(tmp_path, run_cli, monkeypatch):
    monkeypatch.setenv("RESDEPTH_DATA", str(tmp_path / "data"))
    for proxy in ("http_proxy", "https_proxy"):
        monkeypatch.setenv(proxy, "http://127.0.0.1:9")  # nothing listens there: the download fails at once
    code, _, err = run_cli("train", "--depth", "20", "--out", str(tmp_path / "out"))
    assert code == 2 and "cifar-10-python.tar.gz" in err
    assert not (tmp_path / "out").exists()  # a refused command writes nothing, not even the results folder


def test_a_user_error_leaves_finished_results_intact(tmp_path, run_cli, tiny_args):
    args = ["train", "--depth", "8", *tiny_args, "--epochs", "1", "--out", str(tmp_path)]
    assert run_cli(*args).code == 0
    before = {p.name: p.read_bytes() for p in (tmp_path / "residual-8-s0").iterdir() if p.is_file()}
    changed = run_cli(*args, "--lr", "0.2")
    assert changed.code == 2 and "--force" in changed.err
    assert before == {p.name: p.read_bytes() for p in (tmp_path / "residual-8-s0").iterdir() if p.is_file()}


def test_a_diverged_sweep_exits_non_zero(tmp_path, run_cli, tiny_args):
    done = run_cli("train", "--depth", "8", *tiny_args, "--epochs", "1", "--lr", "1e8", "--out", str(tmp_path))
    assert done.code == 3 and "diverged" in done.out


SYNTHETIC = ["--dataset", "synthetic", "--synthetic-train", "128", "--synthetic-test", "64", "--iterations", "2"]


@pytest.mark.parametrize("args, message", [
    (["train", "--device", "tpu"], "unknown device 'tpu': use auto, cpu, cuda or cuda:N"),
    (["train", "--device", "cuda:4096"], "device cuda:4096"),  # no GPU here, or no such GPU on a GPU machine
    (["train", "--device", "cpu", "--cuda-graph"], "--cuda-graph needs a CUDA device"),
    (["train", "--synthetic-train", "0"], "--synthetic-train must be a positive number of images, got 0"),
    (["train", "--synthetic-test", "-1"], "--synthetic-test must be a positive number of images, got -1"),
    (["train", "--train-size", "3000"], "--train-size 3000 is more than the 128 train images of synthetic"),
    (["train", "--train-size", "3"], "--train-size 3 is fewer images than the 10 classes of synthetic"),
    (["train", "--warmup-max-iterations", "0"], "--warmup-max-iterations must be a positive integer, got 0"),
    (["train", "--seed", "-1"], "--seed must be 0 or a positive integer"),
    (["train", "--warmup-min-depth", "-1"], "warm-up settings"),
    (["sweep", "--device", "cpu", "--gpus", "0"],
     "--gpus lists CUDA GPU numbers (0, 1, ...) and needs --device auto or cuda"),
    (["sweep", "--depths", "8,14,8"], "--depths lists 8 more than once"),
    (["sweep", "--seeds", "0,1,0"], "--seeds lists 0 more than once"),
    (["sweep", "--name", ".."], "--name '..' must be a plain folder name"),
])
def test_bad_options_are_refused_before_any_run_folder_is_written(tmp_path, run_cli, args, message):
    out = tmp_path / "out"
    command = [args[0], *SYNTHETIC, "--device", "cpu", "--out", str(out), *args[1:]]  # the case's values come last
    code, _, err = run_cli(*command)
    assert code == 2 and message in " ".join(err.split()) and len(err.strip().splitlines()) == 1, err
    assert not out.exists()
    if args[0] == "sweep":
        assert run_cli(*command, "--dry-run").code == 2  # a dry run refuses what the real run would


def test_bad_files_and_values_outside_the_training_options(tmp_path, run_cli):
    sweep_file = tmp_path / "magic.toml"
    sweep_file.write_text('depths = [8]\nexecutor = "magic"\n')
    code, _, err = run_cli("sweep", str(sweep_file), "--out", str(tmp_path / "m"), "--dry-run")
    assert code == 2 and "unknown executor 'magic'" in err and not (tmp_path / "m").exists()
    (tmp_path / "saved").mkdir()
    for broken in ("[]", "{bad", '{"depths": "x"}'):
        (tmp_path / "saved" / "sweep.json").write_text(broken)
        code, _, err = run_cli("sweep", "--resume", str(tmp_path / "saved"))
        assert code == 2 and "is not a sweep that resdepth can resume" in err and len(err.strip().splitlines()) == 1
    code, _, err = run_cli("models", "--num-classes", "-3")
    assert code == 2 and "--num-classes must be a positive integer" in err
    for widths in ("0", "0,2"):  # 0 had read as no width: width-1 rows, one named as if unwidened
        code, out, err = run_cli("models", "residual", "--depths", "20", "--widths", widths)
        assert code == 2 and out == "" and err.strip() == "error: residual nets' option width must be at least 1, got 0"
    code, out, err = run_cli("models", "xyz*")
    assert code == 2 and out == "" and err.strip() == (
        "error: no network or family matches 'xyz*': try 'resnet*', 'preact*' or leave the pattern out for all")
    code, _, err = run_cli("bench", "--depths", "8", "--json", str(tmp_path))  # a folder
    assert code == 2 and "--json" in err and "name a file" in err


def test_the_command_lines_length_replaces_the_sweep_files(tmp_path, run_cli):
    sweep_file = tmp_path / "short.toml"
    sweep_file.write_text('depths = [8]\nkinds = ["plain"]\n[train]\nepochs = 6\nbatch_size = 32\ndevice = "cpu"\n'
                          '[data]\ndataset = "synthetic"\nsynthetic_train = 64\nsynthetic_test = 32\n')
    code, _, err = run_cli("sweep", str(sweep_file), "--iterations", "3", "--out", str(tmp_path / "r"))
    assert code == 0, err
    saved = json.loads((tmp_path / "r" / "plain-8-s0" / "config.json").read_text())
    assert saved["epochs"] is None and saved["resolved"]["iterations"] == 3  # not the file's 6 epochs (12 iterations)
    code, _, err = run_cli("train", "--iterations", "3", "--epochs", "2", "--out", str(tmp_path / "t"))
    assert code == 2 and "give --iterations or --epochs, not both" in err
    sweep_file.write_text(sweep_file.read_text().replace("epochs = 6", "epochs = 6\niterations = 10"))
    code, _, err = run_cli("sweep", str(sweep_file), "--dry-run")
    assert code == 2 and "sets both iterations and epochs" in err


def test_a_sweep_that_finds_only_busy_cells_changes_nothing_and_says_why(tmp_path, run_cli, tiny_args, live_lock):
    args = ["sweep", "--depths", "8", "--kind", "plain", *tiny_args, "--iterations", "2", "--out", str(tmp_path)]
    assert run_cli(*args).code == 0
    saved = (tmp_path / "sweep.json").read_bytes()
    pid = live_lock(tmp_path / "plain-8-s0")
    since = time.strftime("%H:%M", time.localtime(json.loads((tmp_path / "plain-8-s0" / "lock").read_text())["time"]))
    for extra in ([], ["--lr", "0.05"], ["--lr", "0.05", "--force"]):
        code, out, _ = run_cli(*args, *extra, columns=300)
        assert code == 4 and "busy" in out
        assert f"running elsewhere: pid {pid} on {os.uname().nodename} since {since}" in out
        assert ("its config differs from this sweep's (lr: 0.1 there, 0.05 asked)" in out) == bool(extra)
        assert (tmp_path / "sweep.json").read_bytes() == saved  # neither rewritten nor marked "force"
    assert "force" not in json.loads(saved)


def test_a_busy_cell_that_another_sweep_has_finished_counts_as_done(tmp_path, tiny_sweep, live_lock):
    sweep = tiny_sweep(tmp_path, kinds=["plain"])
    (tmp_path / "plain-8-s0").mkdir(parents=True)
    live_lock(tmp_path / "plain-8-s0")
    [busy] = plan_sweep(sweep)
    assert busy.action == "busy" and final_states([busy], {}) == {"plain-8-s0": "busy"}
    (tmp_path / "plain-8-s0" / "lock").unlink()  # the other sweep finished the cell meanwhile
    RunStatus(state="done").write(tmp_path / "plain-8-s0")
    assert final_states([busy], {}) == {"plain-8-s0": "done"}


def test_progress_lines_say_where_a_resumed_run_starts_and_what_an_epoch_ended_at(capsys):
    from resdepth.cli.progress import LiveDisplay
    from resdepth.sweep.runner import SweepProgress

    display = LiveDisplay(total=1)
    resumed = RunStatus(state="running", epoch=2, epochs=4, iteration=60, iterations=92, train_error=40.0,
                        test_error=45.0, live_train_error=None, images_per_second=None, started_epoch=2,
                        started_iteration=60, started=1.0)
    display.log_lines(SweepProgress([], {"plain-8-s0": resumed}, {}))
    finished = RunStatus(state="running", epoch=3, epochs=4, iteration=69, iterations=92, train_error=30.0,
                         test_error=35.0, images_per_second=512.0, started_epoch=2, started_iteration=60,
                         started=1.0)
    display.log_lines(SweepProgress([], {"plain-8-s0": finished}, {}))
    lines = capsys.readouterr().out.splitlines()
    assert lines == ["plain-8-s0: resumed at iteration 60/92, after epoch 2/4 (train 40.00% test 45.00%)",
                     "plain-8-s0: epoch 3/4 iteration 69/92 train 30.00% test 35.00% 512 img/s"]


def test_the_sweep_summary_says_how_each_warmup_ended(tmp_path, run_cli):
    code, out, err = run_cli("sweep", "--depths", "8", "--kind", "plain", *SYNTHETIC[:-2],
                             "--iterations", "12", "--batch-size", "32", "--device", "cpu", "--warmup", "on",
                             "--warmup-max-iterations", "3", "--out", str(tmp_path))
    assert code == 0, err
    [line] = [line for line in out.splitlines() if "plain-8-s0" in line and "│" in line]  # the summary row
    assert "warm-up ended: cap at iteration 3" in line
    status = json.loads((tmp_path / "plain-8-s0" / "status.json").read_text())
    assert (status["warmup_end_reason"], status["warmup_end_iteration"]) == ("cap", 3)
    # 4 steps an epoch: 0.01 for 3 steps, then 0.1 (the epoch's last step), /10 at the milestones 6 and 9 of 12
    assert pd.read_csv(tmp_path / "plain-8-s0" / "metrics.csv")["lr"].tolist() == [0.1, 0.01, 0.001]
