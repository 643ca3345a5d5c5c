"""`resdepth status [--watch]` read from a results folder alone, the next commands a sweep prints when it ends,
and `resdepth --version`."""

import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from resdepth.results.runs import RunStatus
from resdepth.sweep.runner import make_executor, plan_sweep, run_sweep
from resdepth.sweep.watch import read_folder_status


@pytest.fixture
def half_run_sweep(tiny_sweep):
    """A factory: a sweep of four cells whose first two ran; the other two were never started."""
    def make(out: Path):
        sweep = tiny_sweep(out, depths=[8, 14])
        planned = plan_sweep(sweep)
        run_sweep(sweep, make_executor(sweep), planned[:2], poll_seconds=0.05)
        return sweep
    return make


def test_status_shows_finished_cells_and_the_sweeps_cells_not_started(tmp_path, run_cli, half_run_sweep):
    half_run_sweep(tmp_path)
    folder = read_folder_status(tmp_path)
    assert [(c.name, c.state) for c in folder.cells] == [
        ("plain-8-s0", "done"), ("residual-8-s0", "done"), ("plain-14-s0", "not started"), ("residual-14-s0",
                                                                                            "not started")]
    assert [c.iterations for c in folder.cells] == [8] * 4  # 2 epochs of 128/32 steps, known from a started cell
    assert folder.iterations_done == 16 and folder.iterations_planned == 32 and not folder.ended
    done = folder.cells[0]
    assert done.epoch == done.epochs == 2 and done.test_error is not None
    assert done.where == f"{socket.gethostname()} cpu"
    code, out, err = run_cli("status", str(tmp_path))
    assert code == 0, err
    assert "plain-14-s0" in out and "not started" in out and "4 cell(s): 2 done, 2 not started" in out
    assert "iterations 16/32 (50%)" in out


@pytest.mark.parametrize("width", [60, 80, 200])
def test_a_narrow_terminal_leaves_columns_out_instead_of_cutting_names_and_numbers(tmp_path, width, half_run_sweep):
    from rich.console import Console

    from resdepth.cli.results import status_view

    half_run_sweep(tmp_path)
    console = Console(width=width, record=True, file=io.StringIO())
    console.print(status_view(read_folder_status(tmp_path), width))
    text = console.export_text()
    assert max(len(line) for line in text.splitlines()) <= width and "…" not in text
    assert "residual-14-s0" in text and "not started" in text and "iteration" in text
    assert ("where" in text) == (width == 200)


def test_status_piped_or_logged_keeps_every_column_whatever_columns_says(tmp_path, half_run_sweep, run_cli):
    half_run_sweep(tmp_path)
    code, out, err = run_cli("status", str(tmp_path), columns=60)  # not a terminal: no width to fit
    assert code == 0 and "where" in out and "elapsed" in out and "…" not in out, err


def write_status(run_dir: Path, **fields) -> None:
    run_dir.mkdir(parents=True)
    (run_dir / "config.json").write_text(json.dumps({"kind": "plain", "depth": 8, "batch_size": 32, "iterations": 100,
                                                     "epochs": None, "data": {"dataset": "synthetic"}}))
    RunStatus(**fields).write(run_dir)


def dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_a_running_cell_gets_an_eta_and_one_whose_process_is_gone_is_stopped(tmp_path):
    now = time.time()
    write_status(tmp_path / "live", state="running", iteration=40, iterations=100, images_per_second=64.0,
                 pid=os.getpid(), started=now - 30)
    write_status(tmp_path / "killed", state="running", iteration=40, iterations=100, pid=dead_pid())
    write_status(tmp_path / "remote", state="running", iteration=1, iterations=100, host="node7", pid=1)
    write_status(tmp_path / "lost", state="running", iteration=1, iterations=100, host="node8", pid=1)
    lost = json.loads((tmp_path / "lost" / "status.json").read_text())
    lost["updated"] = now - 3600  # a node that stopped writing an hour ago, without a live lock
    (tmp_path / "lost" / "status.json").write_text(json.dumps(lost))
    cells = {c.name: c for c in read_folder_status(tmp_path).cells}
    assert cells["live"].state == "running" and cells["live"].eta == pytest.approx(60 * 32 / 64.0)
    assert cells["live"].elapsed == pytest.approx(30, abs=5)
    assert cells["killed"].state == "stopped" and cells["killed"].eta is None
    assert cells["remote"].state == "running" and cells["remote"].where.startswith("node7")
    assert cells["lost"].state == "stopped"


def test_status_of_a_folder_without_runs_is_one_line_and_exit_2(tmp_path, run_cli):
    code, _, err = run_cli("status", str(tmp_path / "missing"))
    assert code == 2 and "does not exist" in err and len(err.strip().splitlines()) == 1
    code, _, err = run_cli("status", str(tmp_path))
    assert code == 2 and "no runs or sweep under" in err


def test_watch_follows_a_sweep_running_in_another_process_until_it_ends(tmp_path, cli_env, resdepth_cli, tiny_args):
    out = tmp_path / "r"
    command = [resdepth_cli, "sweep", "--depths", "8", "--kinds", "plain,residual", "--epochs", "30", *tiny_args,
               "--out", str(out)]
    sweep = subprocess.Popen(command, env=cli_env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not (out / "sweep.json").exists() and time.time() < deadline:
        time.sleep(0.05)
    watch = subprocess.run([resdepth_cli, "status", str(out), "--watch", "--interval", "0.2"], env=cli_env,
                           capture_output=True, text=True, timeout=300)
    assert sweep.wait(timeout=300) == 0, sweep.stderr.read()
    assert watch.returncode == 0, watch.stderr
    assert "2 cell(s): 2 done" in watch.stdout  # it ended by itself once every cell had ended


def test_a_finished_sweep_prints_where_its_results_are_and_the_next_commands(tmp_path, run_cli, tiny_args):
    code, out, err = run_cli("sweep", "--depths", "8", "--kinds", "plain", "--iterations", "2", *tiny_args, "--out",
                             str(tmp_path))
    assert code == 0, err
    lines = [" ".join(line.split()) for line in out.splitlines()]
    assert f"results: {tmp_path}" in lines and f"table: resdepth table {tmp_path}" in lines
    assert f"figures: resdepth plot {tmp_path}" in lines and f"report: resdepth report {tmp_path}" in lines
    assert not any(line.startswith("resume:") for line in lines)


@pytest.mark.parametrize("stop, code", [(signal.SIGINT, 130), (signal.SIGHUP, 129)])
def test_an_interrupted_sweep_prints_how_to_resume(tmp_path, cli_env, resdepth_cli, tiny_args, stop, code):
    # SIGHUP: the terminal closed; it ended the sweep at once, its --jobs workers training on unwatched
    out = tmp_path / "r"
    victim = subprocess.Popen([resdepth_cli, "sweep", "--depths", "8", "--kinds", "plain,residual", "--epochs", "40",
                               *tiny_args,
                               "--synthetic-train", "1024", "--out", str(out)], env=cli_env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    metrics = out / "plain-8-s0" / "metrics.csv"
    while not metrics.exists() or len(metrics.read_text().splitlines()) < 2:
        assert time.time() < deadline, "no epoch ended"
        time.sleep(0.05)
    victim.send_signal(stop)
    stdout, stderr = victim.communicate(timeout=120)
    assert victim.returncode == code, stderr
    assert f"resume: resdepth sweep --resume {out}" in " ".join(stdout.split())
    code = subprocess.run([resdepth_cli, "status", str(out)], env=cli_env, capture_output=True, text=True, timeout=120)
    assert "interrupted" in code.stdout and "not started" in code.stdout
    assert f"resume: resdepth sweep --resume {out}" in " ".join(code.stdout.split())
    assert "--executor" not in code.stdout
    saved = json.loads((out / "sweep.json").read_text())  # as a Slurm sweep would have saved it
    (out / "sweep.json").write_text(json.dumps({**saved, "executor": "slurm"}))
    code = subprocess.run([resdepth_cli, "status", str(out)], env=cli_env, capture_output=True, text=True, timeout=120)
    assert f"resume: resdepth sweep --resume {out} --executor slurm" in " ".join(code.stdout.split())  # not taken


def test_version(run_cli):
    from resdepth import __version__

    code, out, _ = run_cli("--version")
    assert code == 0 and out.startswith(f"resdepth {__version__} (torch ")


def test_a_killed_cell_says_which_checkpoint_its_resume_starts_from(tmp_path, tiny_config, run_cli):
    # status showed the live iteration (33), the dry run planned from it, and the resume started from 30
    from resdepth.train import run_training

    class Killed(Exception):
        pass

    steps = iter(range(10**6))

    def kill_before_step_8() -> bool:
        if next(steps) >= 7:
            raise Killed
        return False

    with pytest.raises(Killed):
        run_training(tiny_config(epochs=4, checkpoint_every="3"), tmp_path / "r", should_stop=kill_before_step_8)
    status = RunStatus.read(tmp_path / "r")
    assert status.saved_iteration == 6  # written with the checkpoint of iteration 6
    status.update(tmp_path / "r", iteration=7, pid=dead_pid())  # a progress report after it, then the kill
    [cell] = read_folder_status(tmp_path).cells
    assert (cell.state, cell.iteration, cell.resumes_from) == ("stopped", 7, 6)
    code, out, _ = run_cli("status", str(tmp_path))
    assert code == 0 and "resume the sweep, from iteration 6 (its last checkpoint)" in " ".join(out.split())
