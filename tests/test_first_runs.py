"""A new user's first runs: workers started from any folder, files others can read, failures that say why."""

import os
import signal
import stat
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

import pytest

from resdepth.results.runs import RunStatus
from resdepth.sweep.cell import EXIT_CODES, is_locked


# ---------------------------------------------------------------------------------------------- workers
@pytest.mark.parametrize("decoy", ["package", "namespace"])
def test_a_parallel_sweep_from_a_folder_holding_a_decoy_resdepth_imports_the_installed_package(
        tmp_path, cli_env, resdepth_cli, tiny_args, decoy):
    # the folder a clone lands in: resdepth/ (with results/) beside where the user runs the sweep
    (tmp_path / "resdepth" / "results").mkdir(parents=True)
    if decoy == "package":
        (tmp_path / "resdepth" / "__init__.py").write_text("")
    result = subprocess.run([resdepth_cli, "sweep", "--jobs", "2", "--depths", "8", "--epochs", "1", *tiny_args,
                             "--out", "runs"], cwd=tmp_path, env=cli_env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    for name in ("plain-8-s0", "residual-8-s0"):
        assert RunStatus.read(tmp_path / "runs" / name).state == "done"


def test_a_worker_still_finds_a_family_module_given_by_import_path_on_pythonpath(tmp_path, user_family, resdepth_cli,
                                                                                 tiny_args):
    here = tmp_path / "lab"
    (here / "resdepth").mkdir(parents=True)
    (here / "resdepth" / "__init__.py").write_text("")
    result = subprocess.run([resdepth_cli, "sweep", "--jobs", "2", "--kinds", "tinyfam_nets:gated", "--depths", "2",
                             "--epochs", "1", *tiny_args, "--out", "runs"],
                            cwd=here, env=user_family.env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert RunStatus.read(next((here / "runs").glob("*-2-s0"))).state == "done"


def test_the_safe_start_runs_a_module_without_the_working_folder_on_sys_path(tmp_path):
    from resdepth.sweep.startup import python_command

    (tmp_path / "json").mkdir()
    (tmp_path / "json" / "__init__.py").write_text("raise SystemExit('the decoy was imported')")
    (tmp_path / "probe.py").write_text("import json, sys\nprint(json.dumps(sys.argv[1:]))\n")
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "elsewhere")}
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "probe_mod.py").write_text("import json, sys\nprint(json.dumps(sys.argv[1:]))\n")
    result = subprocess.run(python_command("-u", "-m", "probe_mod", "a", "--b"), cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=60)
    assert (result.returncode, result.stdout.strip()) == (0, '["a", "--b"]'), result.stderr
    assert sys.executable == python_command()[0]


# ---------------------------------------------------------------------------------------------- failures
def test_a_worker_that_crashes_before_training_says_why_and_where_its_log_is(tmp_path, tiny_config):
    from resdepth.results.runs import ERROR_FILE, write_config
    from resdepth.train import load_run_config
    from resdepth.sweep.executors import WORKER_LOG, CellJob, LocalProcessExecutor

    run_dir = tmp_path / "plain-8-s0"
    run_dir.mkdir()
    write_config(run_dir, asdict(tiny_config(kind="plain")))
    load_run_config(run_dir)  # a good config: the worker fails on its command line, before it reads the folder
    job = CellJob(run_dir, "cpu", threads="two")  # type: ignore[arg-type] - what a broken caller might pass
    outcome = LocalProcessExecutor().submit(job).result(timeout=120)
    log = run_dir / WORKER_LOG
    assert outcome.state == "failed"
    assert ("exited with code 2: python -m resdepth.sweep.worker: error: argument --threads: invalid int"
            in outcome.error)
    assert outcome.error.endswith(f"(log: {log})")
    assert (run_dir / ERROR_FILE).read_text().strip() == outcome.error == RunStatus.read(run_dir).error


def test_a_worker_stopped_while_it_still_imports_is_interrupted_not_failed(tmp_path, tiny_config, run_sweep_now,
                                                                           tiny_sweep):
    from resdepth.results.runs import write_config
    from resdepth.sweep.executors import CellJob, LocalProcessExecutor

    # Ctrl-C in a sweep's first seconds reaches its workers while they import torch, before their stop handler
    run_dir = tmp_path / "plain-8-s0"
    run_dir.mkdir()
    write_config(run_dir, asdict(tiny_config(kind="plain", epochs=1)))
    executor = LocalProcessExecutor()
    future = executor.submit(CellJob(run_dir, "cpu", threads=1))
    executor.interrupt()  # at once: torch's import alone takes over a second
    outcome = future.result(timeout=120)
    assert (outcome.state, outcome.error) == ("interrupted", None)
    assert RunStatus.read(run_dir).state == "interrupted" and not (run_dir / "error.txt").exists()
    planned, outcomes = run_sweep_now(tiny_sweep(tmp_path, kinds=["plain"], train=tiny_config(epochs=1)))
    assert [p.action for p in planned] == ["new"] and outcomes["plain-8-s0"].state == "done"  # not a --retry-failed
    # a worker killed otherwise still failed, saying how
    from resdepth.sweep.cell import outcome_from_status

    RunStatus(state="running").write(run_dir)
    assert outcome_from_status(run_dir, exit_code=-9).error.startswith("worker process died (signal 9)")


def test_the_gist_of_a_log_is_its_last_unindented_line(tmp_path):
    from resdepth.sweep.cell import log_gist

    log = tmp_path / "worker.log"
    log.write_text("epoch 1/2\nTraceback (most recent call last):\n  File \"x.py\", line 1\n    import y\n"
                   "ImportError: cannot import name 'CONFIG_FILE' from 'resdepth.results.runs'\n\n")
    assert log_gist(log) == f": ImportError: cannot import name 'CONFIG_FILE' from 'resdepth.results.runs' (log: {log})"
    assert log_gist(tmp_path / "missing.log") == log_gist(None) == ""


# ---------------------------------------------------------------------------------------------- file modes
@pytest.fixture
def umask():
    """Set the process's umask for one test; the one before comes back after it."""
    before = os.umask(0o022)
    os.umask(before)
    yield lambda mask: os.umask(mask)
    os.umask(before)


@pytest.mark.parametrize("mask", [0o022, 0o077])
def test_every_file_a_sweep_and_its_report_write_gets_the_mode_open_gives_under_the_umask(
        tmp_path, tiny_sweep, run_sweep_now, run_cli, umask, mask):
    from resdepth.results.runs import atomic_write_bytes

    umask(mask)
    out = tmp_path / "runs"
    _, outcomes = run_sweep_now(tiny_sweep(out, seeds=[0], kinds=["plain"]))
    assert {o.state for o in outcomes.values()} == {"done"}
    assert run_cli("report", str(out)).code == 0
    assert run_cli("table", str(out), "--csv", str(out / "table.csv")).code == 0
    atomic_write_bytes(tmp_path / "one.bin", b"x")
    files = [path for path in tmp_path.rglob("*") if path.is_file()]
    names = {path.name for path in files}
    assert {"config.json", "metrics.csv", "status.json", "checkpoint.pt", "sweep.json", "report.html"} <= names
    modes = {str(path.relative_to(tmp_path)): oct(stat.S_IMODE(path.stat().st_mode)) for path in files}
    assert modes == dict.fromkeys(modes, oct(0o666 & ~mask))
    assert not [path for path in tmp_path.rglob(".*.tmp")]  # no temp file left behind


# ---------------------------------------------------------------------------------------------- help, names
def test_no_help_page_shows_a_type_after_a_flag(run_cli):
    from resdepth.cli.app import app

    commands = [command.name or command.callback.__name__ for command in app.registered_commands]
    assert {"train", "sweep", "models", "status"} <= set(commands)
    for command in ["", *commands]:
        code, out, _ = run_cli(*filter(None, [command, "--help"]))
        assert code == 0 and "--help" in out and "<bool>" not in out, command
    assert "<int>" in run_cli("train", "--help").out  # options that take a value still show its type


# ---------------------------------------------------------------------------------------------- foreign folders
def test_status_refuses_a_folder_from_something_else_as_table_plot_and_report_do(tmp_path, run_cli, write_run):
    (tmp_path / "run1").mkdir()
    (tmp_path / "run1" / "config.json").write_text("{}")
    for command in ("status", "table", "plot", "report"):
        code, out, err = run_cli(command, str(tmp_path))
        assert code == 2 and out == "" and err.count("\n") == 1, (command, out, err)
        assert err.startswith(f"error: no readable runs under {tmp_path}: 1 run folder(s), all skipped"), command
    (tmp_path / "ours").mkdir()
    (tmp_path / "ours" / "config.json").write_text('{"kind": "plain", "depth": 8, "data": {}}')
    code, out, err = run_cli("status", str(tmp_path))  # a run not started yet beside it: shown, the other said
    assert code == 0 and "ours" in out and "pending" in out and "run1" not in out
    assert "skipped" in err and "run1" in err


# ---------------------------------------------------------------------------------------------- resdepth models
@pytest.mark.parametrize("kind", ["plain", "residual", "preact", "preact-bottleneck"])
def test_a_built_in_familys_counts_without_building_equal_the_built_nets(kind):
    from resdepth.models import count_multiply_adds, count_network, count_parameters
    from resdepth.models.families import build_network, get_family

    rule = get_family(kind).depths
    for n in (3, 4):
        depth = rule.smallest + (n - 1) * rule.step
        for classes, shortcut, width in ((10, None, None), (100, "B", None), (10, None, 2)):
            options = {"width": width} if width else None
            model = build_network(kind, depth, num_classes=classes, shortcut=shortcut, net_options=options)
            expected = (count_parameters(model), count_multiply_adds(model))
            assert count_network(kind, depth, classes, shortcut, options) == expected, (kind, depth, shortcut, width)


def test_resdepth_models_lists_the_deepest_nets_without_building_them_with_the_readmes_counts(run_cli, monkeypatch):
    from resdepth import models

    built = []
    real_build = models.build_network

    def recording_build(kind, depth, *args, **kwargs):
        built.append(depth)
        return real_build(kind, depth, *args, **kwargs)

    monkeypatch.setattr(models, "build_network", recording_build)
    models.built_counts.cache_clear()
    rows = {row["name"]: row for row in models.describe_models()}
    assert built and max(built) < 100  # building resnet1202, plain1202 and preact1001 took 2.5 minutes on 2 cores
    assert (rows["resnet1202"]["params"], rows["preact1001"]["params"]) == (19_421_274, 10_327_706)
    assert (rows["preact1001"]["kind"], rows["preact1001"]["depth"]) == ("preact-bottleneck", 1001)
    assert "19,421,274" in run_cli("models", "resnet12*").out


# ---------------------------------------------------------------------------------------------- names
@pytest.mark.parametrize(("name", "family", "depth"), [("resnet20", "residual", 20), ("plain56", "plain", 56),
                                                       ("preact1001", "preact-bottleneck", 1001),
                                                       ("resnet26", "residual", 26)])
def test_a_network_name_given_as_a_kind_says_which_kind_and_depth_it_means(run_cli, tiny_args, tmp_path, name,
                                                                           family, depth):
    for command in (["train", "--kind", name, "--depth", "20"], ["sweep", "--kinds", name, "--depths", "8"]):
        code, _, err = run_cli(*command, *tiny_args, "--out", str(tmp_path / "r"))
        assert code == 2 and err.count("\n") == 1, (command, err)
        assert f"--kind {name} names a network, not a family: it is the {family} family at depth {depth}" in err
        assert f"--kind {family} --depth {depth} (a sweep: --kinds {family} --depths {depth})" in err
    assert not (tmp_path / "r").exists()


def test_resnet_as_a_kind_suggests_the_residual_family(run_cli, tiny_args, tmp_path):
    code, _, err = run_cli("train", "--kind", "resnet", "--depth", "20", *tiny_args, "--out", str(tmp_path))
    assert code == 2 and "unknown kind 'resnet': did you mean residual?" in err


# ---------------------------------------------------------------------------------------------- dry runs
@pytest.mark.parametrize("refused", [["--train-size", "5"], ["--out", "FILE/sub"], ["--val-size", "128"],
                                     ["--test-size", "65"]])
def test_a_dry_run_refuses_what_the_run_refuses_with_the_same_line(tmp_path, run_cli, tiny_args, refused):
    (tmp_path / "FILE").write_text("a file, not a folder")
    refused = [arg.replace("FILE", str(tmp_path / "FILE")) for arg in refused]
    out = [] if "--out" in refused else ["--out", str(tmp_path / "runs")]
    command = ["sweep", "--depths", "8", "--kinds", "plain", *tiny_args, *out, *refused]
    dry, real = run_cli(*command, "--dry-run"), run_cli(*command)
    assert (dry.code, real.code) == (2, 2) and dry.err == real.err and dry.err.count("\n") == 1, (dry, real)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["FILE"]  # nothing written


# ---------------------------------------------------------------------------------------------- construct
def test_the_train_command_construct_prints_trains_with_the_source_runs_protocol(tmp_path, tiny_sweep, tiny_config,
                                                                                 run_sweep_now, run_cli):
    import json
    import shlex

    from resdepth.config import PROTOCOL, config_args
    from resdepth.train.trainer import TrainConfig

    train = tiny_config(epochs=2, lr=0.05, weight_decay=5e-4, warmup="on")
    run_sweep_now(tiny_sweep(tmp_path / "src", kinds=["plain"], train=train))
    code, out, err = run_cli("construct", str(tmp_path / "src" / "plain-8-s0"), "--depth", "14", "--out",
                             str(tmp_path / "c"), "--device", "cpu")
    assert code == 0, err
    line = next(line for line in out.splitlines() if "resdepth train" in line)
    args = shlex.split(line.split("resdepth train ", 1)[1].removesuffix(" --out DIR"))
    for option in (["--epochs", "2"], ["--lr", "0.05"], ["--weight-decay", "0.0005"], ["--warmup", "on"],
                   ["--batch-size", "32"], ["--synthetic-train", "128"]):
        assert " ".join(option) in " ".join(args), (option, line)
    code, _, err = run_cli("train", *args, "--out", str(tmp_path / "again"), "--device", "cpu", "--threads", "1")
    assert code == 0, err
    source, again = (json.loads(next((tmp_path / folder).glob("*/config.json")).read_text())
                     for folder in ("src", "again"))
    for key in ("iterations", "epochs", "lr_milestone_iterations", "warmup", "train_size"):
        assert again["resolved"][key] == source["resolved"][key], key
    assert config_args(TrainConfig, {"lr_decay": 0.2, "lr": 0.1}, PROTOCOL) == ([], ["lr_decay"])  # sweep file only


# ---------------------------------------------------------------------------------------------- dataset name
def test_a_dataset_display_name_is_recorded_and_names_tables_and_figures(tmp_path, tiny_config, run_cli,
                                                                         run_sweep_now):
    import json

    from resdepth.sweep.runner import load_sweep_file

    sweep_file = tmp_path / "named.toml"
    sweep_file.write_text(f'depths = [8]\nkinds = ["plain"]\nseeds = [0]\nout = "{tmp_path / "runs"}"\n[train]\n'
                          'epochs = 1\nbatch_size = 32\ndevice = "cpu"\nthreads = 1\n[data]\ndataset = "synthetic"\n'
                          'synthetic_train = 128\nsynthetic_test = 64\ndataset_name = "lab-set"\n')
    sweep = load_sweep_file(sweep_file)
    assert sweep.train.data.dataset_name == "lab-set"
    run_sweep_now(sweep)
    saved = json.loads((tmp_path / "runs" / "plain-8-s0" / "config.json").read_text())
    assert saved["data"]["dataset_name"] == "lab-set"
    code, out, err = run_cli("table", str(tmp_path / "runs"))
    assert code == 0 and "(lab-set)" in out and "synthetic" not in out, out + err
    code, out, err = run_cli("plot", str(tmp_path / "runs"))
    assert code == 0 and "figure6-lab-set.png" in out, out + err
    # the option gives it too, and a name that cannot title a figure file is refused in one line
    code, _, err = run_cli("sweep", str(sweep_file), "--dataset-name", "my data/1", "--dry-run")
    assert code == 2 and "--dataset-name 'my data/1' must be 1 to 64 letters" in err and err.count("\n") == 1
    code, out, _ = run_cli("sweep", str(sweep_file), "--dataset-name", "renamed", "--dry-run")
    assert code == 0 and "skip-done" in out  # a label: renaming does not make the runs differ


# ---------------------------------------------------------------------------------------------- progress lines
def cell_lines(out: str, name: str) -> list[str]:
    return [line for line in out.splitlines() if line.startswith(f"{name}: ")]


@pytest.mark.parametrize("jobs", ["1", "2"])
def test_progress_lines_say_each_epoch_once_and_done_with_the_last_epochs_numbers(tmp_path, cli_env, resdepth_cli,
                                                                                  tiny_args, jobs):
    result = subprocess.run([resdepth_cli, "sweep", "--jobs", jobs, "--depths", "8", "--epochs", "2", *tiny_args,
                             "--out", "runs"], cwd=tmp_path, env=cli_env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    for name in ("plain-8-s0", "residual-8-s0"):
        lines = cell_lines(result.stdout, name)
        assert len(lines) == len(set(lines)), lines  # no line twice
        assert lines[-1].startswith(f"{name}: done: epoch 2/2 iteration 8/8 train "), lines
        assert sum(" epoch 2/2 " in line for line in lines) == 1, lines
        # a fresh run: never "resumed", whenever the first poll found it; epoch 1 said once, before the end
        assert len(lines) == 2 and lines[0].startswith(f"{name}: epoch 1/2 iteration 4/8 train "), lines


def test_a_fresh_run_first_seen_epochs_in_is_not_called_resumed_and_each_epoch_says_its_own_numbers(tmp_path, capsys):
    import pandas as pd

    from resdepth.cli.progress import LiveDisplay
    from resdepth.results.runs import METRIC_COLUMNS
    from resdepth.sweep.runner import SweepProgress

    # short epochs finish between two polls: the first poll of a run started from scratch finds it at epoch 2
    cell = type("Cell", (), {"name": "plain-8-s0", "run_dir": tmp_path})()
    planned = [type("Planned", (), {"cell": cell})()]
    rows = [dict(epoch=e, iteration=4 * e, lr=0.1, train_loss=1.0, train_error=90.0 - e, test_error=95.0 - e,
                 test_loss=1.0, epoch_seconds=0.1, images_per_second=100.0 * e) for e in (1, 2, 3)]
    pd.DataFrame(rows, columns=METRIC_COLUMNS).to_csv(tmp_path / "metrics.csv", index=False)
    display = LiveDisplay(total=1)
    at = dict(epochs=5, iterations=20, started_epoch=0, started_iteration=0, images_per_second=200.0, started=1.0)
    # status.json's iteration has moved on into the next epoch when a poll reads it: each line is its epoch's row
    display.log_lines(SweepProgress(planned, {cell.name: RunStatus(state="running", epoch=2, iteration=9,
                                                                   train_error=88.0, test_error=93.0, **at)}, {}))
    display.log_lines(SweepProgress(planned, {cell.name: RunStatus(state="running", epoch=3, iteration=13,
                                                                   train_error=87.0, test_error=92.0, **at)}, {}))
    assert capsys.readouterr().out.splitlines() == [
        "plain-8-s0: epoch 1/5 iteration 4/20 train 89.00% test 94.00% 100 img/s",
        "plain-8-s0: epoch 2/5 iteration 8/20 train 88.00% test 93.00% 200 img/s",
        "plain-8-s0: epoch 3/5 iteration 12/20 train 87.00% test 92.00% 300 img/s"]
    # then interrupted in epoch 4: the end line says where, and epoch 3's numbers are not said again
    from resdepth.sweep.cell import CellOutcome

    RunStatus(state="interrupted", epoch=3, iteration=14, train_error=87.0, test_error=92.0, **at).write(tmp_path)
    display.log_lines(SweepProgress(planned, {}, {cell.name: CellOutcome(tmp_path, "interrupted")}))
    assert capsys.readouterr().out.splitlines() == ["plain-8-s0: interrupted at iteration 14/20, after epoch 3/5"]
    # a run that diverged in epoch 4 after a last poll at epoch 2: epoch 3 (its last finite epoch) is said first
    other = LiveDisplay(total=1)
    other.log_lines(SweepProgress(planned, {cell.name: RunStatus(state="running", epoch=2, iteration=9,
                                                                 train_error=88.0, test_error=93.0, **at)}, {}))
    RunStatus(state="diverged", epoch=3, iteration=15, train_error=87.0, test_error=92.0, **at).write(tmp_path)
    other.log_lines(SweepProgress(planned, {}, {cell.name: CellOutcome(tmp_path, "diverged")}))
    assert capsys.readouterr().out.splitlines()[2:] == [
        "plain-8-s0: epoch 3/5 iteration 12/20 train 87.00% test 92.00% 300 img/s",
        "plain-8-s0: diverged at iteration 15/20, after epoch 3/5"]


def test_an_earlier_attempts_status_prints_no_epochs_and_each_new_attempt_says_where_it_resumed(tmp_path, capsys):
    import pandas as pd

    from resdepth.cli.progress import LiveDisplay
    from resdepth.results.runs import METRIC_COLUMNS
    from resdepth.sweep.cell import CellOutcome
    from resdepth.sweep.runner import SweepProgress

    cell = type("Cell", (), {"name": "plain-8-s0", "run_dir": tmp_path})()
    planned = [type("Planned", (), {"cell": cell})()]
    rows = [dict(epoch=e, iteration=4 * e, lr=0.1, train_loss=1.0, train_error=90.0 - e, test_error=95.0 - e,
                 test_loss=1.0, epoch_seconds=0.1, images_per_second=100.0) for e in (1, 2, 3, 4, 5)]
    pd.DataFrame(rows, columns=METRIC_COLUMNS).to_csv(tmp_path / "metrics.csv", index=False)
    # a run killed at epoch 5 (its status.json still says running), resumed by this sweep
    old = RunStatus(state="running", epoch=5, epochs=10, iteration=20, iterations=40, train_error=85.0,
                    test_error=90.0, started=1.0)
    display = LiveDisplay(total=1)
    display.log_lines(SweepProgress(planned, {cell.name: old}, {}, {cell.name: 1.0}))
    assert capsys.readouterr().out == ""  # the earlier attempt's epochs are not this sweep's to say
    # the new attempt, then Slurm requeues it: each says where it resumed
    new = dict(state="running", epochs=10, iterations=40, train_error=85.0, test_error=90.0, started_epoch=5,
               started_iteration=20)
    display.log_lines(SweepProgress(planned, {cell.name: RunStatus(epoch=5, iteration=21, started=2.0, **new)}, {},
                                    {cell.name: 1.0}))
    requeued = dict(new, started_iteration=21)
    display.log_lines(SweepProgress(planned, {cell.name: RunStatus(epoch=5, iteration=22, started=3.0,
                                                                   **requeued)}, {}, {cell.name: 1.0}))
    assert capsys.readouterr().out.splitlines() == [
        "plain-8-s0: resumed at iteration 20/40, after epoch 5/10 (train 85.00% test 90.00%)",
        "plain-8-s0: resumed at iteration 21/40, after epoch 5/10 (train 85.00% test 90.00%)"]
    # stopped again before its worker wrote a status: the end line alone
    RunStatus(state="interrupted", epoch=5, epochs=10, iteration=20, iterations=40, train_error=85.0,
              test_error=90.0, started=1.0).write(tmp_path)
    other = LiveDisplay(total=1)
    other.log_lines(SweepProgress(planned, {}, {cell.name: CellOutcome(tmp_path, "interrupted")}, {cell.name: 1.0}))
    assert capsys.readouterr().out.splitlines() == [
        "plain-8-s0: interrupted at iteration 20/40, after epoch 5/10 (train 85.00% test 90.00%)"]


def test_fused_cells_each_say_done(tmp_path, cli_env, resdepth_cli, tiny_args):
    result = subprocess.run([resdepth_cli, "sweep", "--kinds", "residual", "--depths", "8", "--seeds", "0,1",
                             "--fuse", "2", "--jobs", "2", "--epochs", "1", *tiny_args, "--out", "runs"], cwd=tmp_path,
                            env=cli_env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    for seed in (0, 1):
        lines = [line for line in result.stdout.splitlines() if f"-s{seed}: " in line]
        assert lines and ": done: epoch 1/1 " in lines[-1], result.stdout


@pytest.mark.parametrize("jobs, bars", [(1, False), (2, False), (2, True)])
def test_a_sweep_whose_reader_goes_stops_its_cells_as_on_ctrl_c_and_exits_141(tmp_path, cli_env, resdepth_cli,
                                                                            tiny_args, wait_for_rows, jobs, bars):
    # `resdepth sweep ... | head -1`: rich's own way out (exit 1 at the next line) left --jobs 2's workers training;
    # with bars (a terminal, or TTY_COMPATIBLE=1 in CI) their own thread writes, and the closing must reach the sweep
    env = {**cli_env, "TTY_COMPATIBLE": "1"} if bars else cli_env
    sweep = subprocess.Popen([resdepth_cli, "sweep", "--kinds", "plain", "--depths", "8", "--seeds", "0,1", "--jobs",
                              str(jobs), "--epochs", "400", *tiny_args, "--out", "runs"], cwd=tmp_path, env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert b"runs" in sweep.stdout.readline()
        wait_for_rows(tmp_path / "runs" / "plain-8-s0" / "metrics.csv", 1, timeout=240)  # training, and printing
        sweep.stdout.close()  # the reader goes; the next epoch line (or bar) finds no one
        assert sweep.wait(timeout=300) == 141, sweep.stderr.read().decode()
    finally:
        sweep.kill()
    assert b"Traceback" not in sweep.stderr.read()
    states = {cell.name: RunStatus.read_or_none(cell) for cell in (tmp_path / "runs").iterdir() if cell.is_dir()}
    assert {status.state for status in states.values() if status} <= {"interrupted"} and "plain-8-s0" in states
    assert not any(is_locked(tmp_path / "runs" / name) for name in states)  # no worker left behind


@pytest.mark.skipif(not hasattr(signal, "SIGHUP"), reason="no SIGHUP on this system")
def test_a_closed_terminal_stops_the_sweep_and_its_workers_as_ctrl_c_does(tmp_path, cli_env, resdepth_cli, tiny_args,
                                                                          wait_for_rows):
    # a hangup reaches the terminal's whole process group: the workers died of it, their cells failed
    sweep = subprocess.Popen([resdepth_cli, "sweep", "--kinds", "plain", "--depths", "8", "--seeds", "0,1", "--jobs",
                              "2", "--epochs", "400", *tiny_args, "--out", "runs"], cwd=tmp_path, env=cli_env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    try:
        for seed in (0, 1):
            wait_for_rows(tmp_path / "runs" / f"plain-8-s{seed}" / "metrics.csv", 1, timeout=240)
        os.killpg(sweep.pid, signal.SIGHUP)
        assert sweep.wait(timeout=300) == 129, sweep.stderr.read().decode()
    finally:
        sweep.kill()
    for seed in (0, 1):
        status = RunStatus.read(tmp_path / "runs" / f"plain-8-s{seed}")
        assert (status.state, status.error) == ("interrupted", None) and status.iteration > 0
    # each worker stops itself, checkpointing where it is, rather than dying of the hangup
    worker = subprocess.Popen([sys.executable, "-m", "resdepth.sweep.worker", "runs/plain-8-s0", "--device", "cpu"],
                              cwd=tmp_path, env=cli_env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        rows = len((tmp_path / "runs" / "plain-8-s0" / "metrics.csv").read_text().splitlines())
        wait_for_rows(tmp_path / "runs" / "plain-8-s0" / "metrics.csv", rows, timeout=240)
        worker.send_signal(signal.SIGHUP)
        assert worker.wait(timeout=300) == EXIT_CODES["interrupted"], worker.stderr.read().decode()
    finally:
        worker.kill()


def test_workers_of_a_killed_sweep_checkpoint_and_stop_rather_than_train_on_unwatched(tmp_path, cli_env,
                                                                                       resdepth_cli, tiny_args,
                                                                                       wait_for_rows):
    # SIGKILL (or the OOM killer) gives the sweep no chance to stop them: they noticed nothing, and held their cells
    sweep = subprocess.Popen([resdepth_cli, "sweep", "--kinds", "plain", "--depths", "8", "--seeds", "0,1", "--jobs",
                              "2", "--epochs", "400", *tiny_args, "--out", "runs"], cwd=tmp_path, env=cli_env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for seed in (0, 1):
            wait_for_rows(tmp_path / "runs" / f"plain-8-s{seed}" / "metrics.csv", 1, timeout=240)
        sweep.kill()
        sweep.wait(timeout=60)
        deadline = time.monotonic() + 120
        cells = [tmp_path / "runs" / f"plain-8-s{seed}" for seed in (0, 1)]
        while any(is_locked(cell) for cell in cells):
            assert time.monotonic() < deadline, "the workers went on training"
            time.sleep(0.2)
    finally:
        sweep.kill()
    for cell in cells:
        status = RunStatus.read(cell)
        assert (status.state, status.error) == ("interrupted", None) and status.iteration > 0
        assert status.epoch < 400


def test_ctrl_c_while_the_commands_load_is_exit_130_not_a_traceback(cli_env, resdepth_cli):
    # torch takes seconds to import, on the first command a new user types; Python printed the import's traceback
    # SIGINT as a terminal delivers it, even where this test runs in a background job (whose SIGINT is ignored,
    # and a child inherits that)
    command = subprocess.Popen([resdepth_cli, "models"], env=cli_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    time.sleep(0.3)
    command.send_signal(signal.SIGINT)
    out, err = command.communicate(timeout=120)
    assert (command.returncode, out, err) == (130, "", "")


@pytest.mark.parametrize("args, line", [
    (["sweep", "--depht", "20"], "error: No such option: --depht (Possible options: --depths, --epochs). Try "
                                 "'resdepth sweep --help' for help."),
    (["swep"], "error: No such command 'swep'. Did you mean 'sweep'? Try 'resdepth --help' for help."),
    (["train", "--epochs", "two"], "error: Invalid value for '--epochs': "),
    (["table"], "error: Missing argument 'results_dir'. Try 'resdepth table --help' for help."),
])
def test_a_mistyped_command_line_is_one_line_and_exit_2_not_a_usage_box(cli_env, resdepth_cli, args, line):
    result = subprocess.run([resdepth_cli, *args], env=cli_env, capture_output=True, text=True, timeout=120)
    assert (result.returncode, result.stdout, len(result.stderr.splitlines())) == (2, "", 1), result.stderr
    assert result.stderr.startswith(line)


def test_ctrl_c_inside_a_command_is_exit_130_and_says_nothing(run_cli, monkeypatch):
    from resdepth.models import families

    def interrupted(pattern):
        raise KeyboardInterrupt

    monkeypatch.setattr(families, "list_families", interrupted)
    code, out, err = run_cli("models")
    assert (code, out, err) == (130, "", "")


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="no /dev/full (a file that is always full) here")
def test_output_that_cannot_be_written_is_one_line_on_stderr_not_a_traceback(tmp_path, cli_env, resdepth_cli):
    with open("/dev/full", "w") as full:
        result = subprocess.run([resdepth_cli, "models"], env=cli_env, stdout=full, stderr=subprocess.PIPE, text=True,
                                timeout=120)
    assert result.returncode == 1 and result.stderr == "error: cannot write the output (No space left on device)\n"


def test_a_resumed_run_prints_no_stale_line_and_ends_with_done_and_its_numbers(tmp_path, capsys):
    from resdepth.cli.progress import LiveDisplay
    from resdepth.sweep.runner import SweepProgress

    cell = type("Cell", (), {"name": "plain-8-s0", "run_dir": tmp_path})()
    planned = [type("Planned", (), {"cell": cell})()]
    display = LiveDisplay(total=1)
    before = dict(epoch=4, epochs=5, iteration=52, iterations=55, train_error=40.0, test_error=45.0, started=1.0)
    display.log_lines(SweepProgress(planned, {cell.name: RunStatus(state="interrupted", **before)}, {}))  # stale
    before.update(started_epoch=4, started_iteration=52, started=2.0)
    display.log_lines(SweepProgress(planned, {cell.name: RunStatus(state="running", **before)}, {}))
    display.log_lines(SweepProgress(planned, {cell.name: RunStatus(state="running", **before)}, {}))
    last = dict(before, epoch=5, iteration=55, train_error=30.0, test_error=35.0, images_per_second=512.0)
    # the last epoch caught by a poll before the run ends, and then its process not gone yet: the end line says it
    display.log_lines(SweepProgress(planned, {cell.name: RunStatus(state="running", **last)}, {}))
    display.log_lines(SweepProgress(planned, {cell.name: RunStatus(state="done", **last)}, {}))
    RunStatus(state="done", **last).write(tmp_path)
    from resdepth.sweep.cell import CellOutcome

    display.log_lines(SweepProgress(planned, {}, {cell.name: CellOutcome(tmp_path, "done")}))
    display.log_lines(SweepProgress(planned, {}, {cell.name: CellOutcome(tmp_path, "done")}))
    assert capsys.readouterr().out.splitlines() == [
        "plain-8-s0: resumed at iteration 52/55, after epoch 4/5 (train 40.00% test 45.00%)",
        "plain-8-s0: done: epoch 5/5 iteration 55/55 train 30.00% test 35.00% 512 img/s"]


def test_cells_queued_by_retry_failed_show_as_pending_not_with_the_old_error(tmp_path, tiny_sweep, run_sweep_now):
    from dataclasses import replace

    from resdepth.sweep.executors import SequentialExecutor
    from resdepth.sweep.watch import read_folder_status

    sweep = tiny_sweep(tmp_path, train=replace(tiny_sweep(tmp_path).train, epochs=1))
    run_sweep_now(sweep)
    for name in ("plain-8-s0", "residual-8-s0"):
        RunStatus.read(tmp_path / name).update(tmp_path / name, state="failed", error="the old error")
    seen = []

    def look(_snapshot) -> None:
        if not seen:
            seen.extend((cell.name, cell.state, cell.error) for cell in read_folder_status(tmp_path).cells)

    _, outcomes = run_sweep_now(replace(sweep, retry_failed=True), SequentialExecutor(), on_progress=look)
    assert {o.state for o in outcomes.values()} == {"done"}
    waiting = [cell for cell in seen if cell[1] not in ("running", "done")]  # a sequential sweep may finish one first
    assert waiting and all(state == "pending" and error is None for _, state, error in waiting), seen
