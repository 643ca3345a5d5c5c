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
    # piped, the table is printed again as cells move (it had stayed empty until the end, then cut to 80 columns)
    tables = watch.stdout.split("\n\n")
    assert len(tables) > 2 and any(" running " in table for table in tables[:-1]), watch.stdout
    assert all(" where" in table for table in tables if table.strip()), watch.stdout  # at full width


def test_watch_ends_when_nothing_runs_or_waits_and_says_so(finished_copy, run_cli):
    # a watch of a folder whose sweep was interrupted refreshed forever: nothing would ever change without a resume
    edit_status(finished_copy / "plain-8-s0", state="interrupted", iteration=4)
    code, out, err = run_cli("status", str(finished_copy), "--watch", "--interval", "0.1")
    assert code == 0, err
    assert "nothing runs or waits to start: the cells not ended stay so until the sweep is resumed" in out


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


# ---------------------------------------------------------------------------------------------- planted status files
def edit_status(run_dir: Path, **values) -> None:
    """status.json with these values, as a planter writes it (NaN and Infinity as Python's json writes them)."""
    path = run_dir / "status.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **values}))


@pytest.fixture
def finished_copy(tmp_path, finished_sweep):
    """A copy of a finished sweep of plain-8 and residual-8 (two epochs each), to plant files in."""
    import shutil

    out = tmp_path / "r"
    shutil.copytree(finished_sweep(), out)
    return out


def test_status_json_numbers_no_run_writes_are_read_as_not_known(tmp_path):
    run_dir = tmp_path / "r"
    write_status(run_dir, state="running")
    edit_status(run_dir, started=float("nan"), updated=float("inf"), epoch=10**15, epochs=10**15 + 5, iteration=-3,
                saved_iteration=-1, train_error=float("nan"), images_per_second=float("-inf"))
    status = RunStatus.read(run_dir)
    assert (status.started, status.updated, status.epoch, status.epochs, status.iteration) == (0.0, 0.0, 0, 0, 0)
    assert status.saved_iteration is None and status.train_error is None and status.images_per_second is None
    edit_status(run_dir, started=-5.0, updated=time.time() + 7200)  # before 1970; two hours ahead of this clock
    status = RunStatus.read(run_dir)
    assert (status.started, status.updated) == (0.0, 0.0)
    now = time.time()
    edit_status(run_dir, started=now - 10, updated=now + 600)  # another node's clock ahead, as far as any: kept
    status = RunStatus.read(run_dir)
    assert (status.started, status.updated) == (now - 10, now + 600)


def test_a_progress_line_per_metrics_row_never_a_range_of_status_numbers(tmp_path, capsys):
    # a planted status.json of a quadrillion epochs made the sweep's progress lines loop over range(1, 1e15),
    # deaf to Ctrl-C and SIGTERM; now only epochs metrics.csv has rows for are said
    import pandas as pd

    from resdepth.cli.progress import LiveDisplay, earlier_attempt
    from resdepth.results.runs import METRIC_COLUMNS
    from resdepth.sweep.runner import SweepProgress

    cell = type("Cell", (), {"name": "plain-8-s0", "run_dir": tmp_path})()
    planned = [type("Planned", (), {"cell": cell})()]
    rows = [dict(epoch=e, iteration=4 * e, lr=0.1, train_loss=1.0, train_error=90.0, test_error=95.0, test_loss=1.0,
                 epoch_seconds=0.1, images_per_second=100.0) for e in (1, 2)]
    pd.DataFrame(rows, columns=METRIC_COLUMNS).to_csv(tmp_path / "metrics.csv", index=False)
    huge = RunStatus(state="running", epoch=10**15, epochs=10**15 + 5, iteration=8, iterations=8, started=5.0)

    class TooLong(Exception):
        pass

    def too_long(*_):
        raise TooLong

    previous = signal.signal(signal.SIGALRM, too_long)
    signal.setitimer(signal.ITIMER_REAL, 10)
    ended = True
    try:
        LiveDisplay(total=1).log_lines(SweepProgress(planned, {cell.name: huge}, {}))
    except TooLong:  # its traceback is not kept: a frame cut by a signal handler is one pytest cannot show
        ended = False
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    assert ended, "the progress lines did not end within 10 s"
    assert capsys.readouterr().out.splitlines() == [
        "plain-8-s0: epoch 1/1000000000000005 iteration 4/8 train 90.00% test 95.00% 100 img/s",
        "plain-8-s0: epoch 2/1000000000000005 iteration 8/8 train 90.00% test 95.00% 100 img/s",
        "plain-8-s0: epoch 1000000000000000/1000000000000005 iteration 8/8 train -% test -% - img/s"]
    # a `started` of NaN is one attempt, the earlier one's: NaN is unequal to itself
    nan = RunStatus(state="running", started=float("nan"))
    assert earlier_attempt(SweepProgress(planned, {cell.name: nan}, {}, {cell.name: float("nan")}), cell.name, nan)


def test_epochs_finished_between_two_polls_past_twenty_are_counted_in_one_line(tmp_path, capsys):
    # a planted metrics.csv of a million rows printed a million lines in one poll
    import pandas as pd

    from resdepth.cli.progress import EPOCH_LINES_AT_ONCE, LiveDisplay
    from resdepth.results.runs import METRIC_COLUMNS
    from resdepth.sweep.runner import SweepProgress

    cell = type("Cell", (), {"name": "plain-8-s0", "run_dir": tmp_path})()
    planned = [type("Planned", (), {"cell": cell})()]
    epochs = 5000
    rows = [dict(epoch=e, iteration=e, lr=0.1, train_loss=1.0, train_error=90.0, test_error=95.0, test_loss=1.0,
                 epoch_seconds=0.1, images_per_second=100.0) for e in range(1, epochs + 1)]
    pd.DataFrame(rows, columns=METRIC_COLUMNS).to_csv(tmp_path / "metrics.csv", index=False)
    status = RunStatus(state="running", epoch=epochs, epochs=epochs + 1, iteration=epochs, iterations=epochs + 1,
                       started=5.0)
    LiveDisplay(total=1).log_lines(SweepProgress(planned, {cell.name: status}, {}))
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == EPOCH_LINES_AT_ONCE + 1
    assert lines[0] == f"plain-8-s0: epochs 1-{epochs - 20} finished ({epochs - 20:,} epochs; their numbers are in " \
                       "metrics.csv)"
    assert lines[1].startswith(f"plain-8-s0: epoch {epochs - 19}/{epochs + 1} ") and \
        lines[-1].startswith(f"plain-8-s0: epoch {epochs}/{epochs + 1} ")


def test_resume_of_a_planted_running_status_of_a_quadrillion_epochs_ends(finished_copy, resdepth_cli, cli_env):
    edit_status(finished_copy / "plain-8-s0", state="running", pid=999999, started=float("nan"), epoch=10**15,
                epochs=10**15 + 5)
    result = subprocess.run([resdepth_cli, "sweep", "--resume", str(finished_copy), "--device", "cpu", "--threads",
                             "1"], env=cli_env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stdout + result.stderr
    assert len([line for line in result.stdout.splitlines() if line.startswith("plain-8-s0:")]) <= 3, result.stdout


@pytest.mark.parametrize("watch", [False, True])
def test_status_json_updated_infinity_shows_the_cell_without_its_time(finished_copy, run_cli, watch):
    # duration() raised OverflowError on an elapsed time of inf
    edit_status(finished_copy / "plain-8-s0", updated=float("inf"))
    code, out, err = run_cli("status", str(finished_copy), *(["--watch", "--interval", "0.1"] if watch else []))
    assert code == 0, err
    [row] = [line.split() for line in out.splitlines() if line.startswith("plain-8-s0")]
    assert row[1] == "done" and row[6] == "-"  # elapsed: not known
    assert "2 cell(s): 2 done" in out


@pytest.mark.parametrize("task", ["[1, 2, 3]", '"job"', "null", '{"slurm_job": {"a": 1}}', '{"slurm_job": 7}'])
def test_a_task_json_that_is_not_an_object_names_no_slurm_job(finished_copy, run_cli, task):
    # where() called .get on a list: AttributeError
    (finished_copy / "plain-8-s0" / "task.json").write_text(task)
    code, out, err = run_cli("status", str(finished_copy))
    assert code == 0, err
    [row] = [line for line in out.splitlines() if line.startswith("plain-8-s0")]
    assert " done " in row and ("slurm job 7" in row) == (task == '{"slurm_job": 7}') and "{" not in row


def test_a_task_json_that_is_a_fifo_names_no_slurm_job(finished_copy, run_cli):
    os.mkfifo(finished_copy / "plain-8-s0" / "task.json")
    code, out, err = run_cli("status", str(finished_copy))
    assert code == 0 and "2 cell(s): 2 done" in out, err


@pytest.mark.parametrize("plant, with_sweep", [("link", True), ("fifo", True), ("not json", True), ("link", False),
                                               ("fifo", False)])
def test_a_config_json_that_is_a_link_or_a_fifo_shows_that_cell_unreadable(finished_copy, run_cli, plant,
                                                                           with_sweep):
    # status ended with exit 2 for the whole folder (outside a sweep, a config.json that is not JSON is a folder of
    # something else, skipped with a warning, as before)
    victim = finished_copy / "plain-8-s0" / "config.json"
    outside = finished_copy.parent / "outside.json"
    outside.write_text(victim.read_text())
    victim.unlink()
    if plant == "link":
        victim.symlink_to(outside)
    elif plant == "fifo":
        os.mkfifo(victim)
    else:
        victim.write_text("[1, 2")
    if not with_sweep:
        (finished_copy / "sweep.json").unlink()
    code, out, err = run_cli("status", str(finished_copy))
    assert code == 0, err
    rows = {line.split()[0]: line for line in out.splitlines() if line.startswith(("plain-8", "residual-8"))}
    assert " unreadable " in rows["plain-8-s0"] and " done " in rows["residual-8-s0"], out
    assert "2 cell(s): 1 unreadable, 1 done" in out and "left out" not in err
    why = {"link": "is a link", "fifo": "is not a regular file", "not json": "is not valid JSON"}[plant]
    assert why in " ".join(out.split())


def test_an_updated_far_in_the_future_keeps_no_foreign_lock_fresh(finished_copy, run_cli):
    from resdepth.results.runs import writer_gone
    from resdepth.sweep.cell import RunLock, is_locked

    run_dir = finished_copy / "plain-8-s0"
    (run_dir / "lock").write_text(json.dumps({"pid": 12345, "host": "node7", "time": time.time()}))
    edit_status(run_dir, state="running", host="node7", pid=12345, updated=1e11)  # the year 5138
    assert RunLock(run_dir).is_stale() and not is_locked(run_dir)
    assert writer_gone(RunStatus(host="node7", updated=1e11), time.time())  # made in memory, not read: the same
    [cell] = [c for c in read_folder_status(finished_copy).cells if c.name == "plain-8-s0"]
    assert cell.state == "stopped"
    code, out, err = run_cli("status", str(finished_copy))
    assert code == 0 and "1 stopped" in out, err


def test_status_escapes_a_lone_surrogate_in_status_json_text(finished_copy, resdepth_cli, cli_env):
    # printing raised UnicodeEncodeError ("surrogates not allowed")
    path = finished_copy / "plain-8-s0" / "status.json"
    status = json.loads(path.read_text())
    status.update(state="failed", error="boom \ud800", host="node\ud800", device="cpu\ud800")
    path.write_text(json.dumps(status))  # \ud800 escaped in the JSON, a lone surrogate once read
    result = subprocess.run([resdepth_cli, "status", str(finished_copy)], env=cli_env, capture_output=True,
                            timeout=120)
    out = result.stdout.decode()
    assert result.returncode == 0 and b"Traceback" not in result.stderr, result.stderr
    assert "boom \\ud800" in out and "node\\ud800 cpu\\ud800" in out


@pytest.mark.parametrize("interval", ["inf", "nan", "1e300"])
def test_a_watch_interval_no_clock_sleeps_is_one_line(tmp_path, run_cli, half_run_sweep, interval):
    half_run_sweep(tmp_path)
    code, _, err = run_cli("status", str(tmp_path), "--watch", "--interval", interval)
    assert code == 2 and "--interval must be" in err and len(err.strip().splitlines()) == 1
