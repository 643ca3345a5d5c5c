"""Sweeps: planning against existing folders, resume, kill-and-resume exactness, locks, failure isolation."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pandas as pd
import pytest
import torch

from resdepth.errors import UserError
from resdepth.results.runs import atomic_write_bytes, read_checkpoint
from resdepth.sweep.cell import RunLock, run_cell
from resdepth.sweep.executors import LocalProcessExecutor
from resdepth.sweep.runner import SweepConfig, load_sweep_file, plan_sweep, run_sweep


def test_sequential_sweep_runs_every_cell_and_resume_skips_finished(tmp_path, tiny_sweep, run_sweep_now):
    sweep = tiny_sweep(tmp_path)
    planned, outcomes = run_sweep_now(sweep)
    assert [p.action for p in planned] == ["new", "new"]
    assert {o.state for o in outcomes.values()} == {"done"}
    before = {p.cell.name: (p.cell.run_dir / "metrics.csv").read_bytes() for p in planned}
    planned, outcomes = run_sweep_now(sweep)
    assert [p.action for p in planned] == ["skip-done", "skip-done"] and outcomes == {}
    assert before == {p.cell.name: (p.cell.run_dir / "metrics.csv").read_bytes() for p in planned}
    assert json.loads((tmp_path / "sweep.json").read_text())["depths"] == [8]


def test_two_parallel_processes_give_the_same_metrics_as_sequential(tmp_path, tiny_sweep, run_sweep_now,
                                                                    assert_same_run):
    run_sweep_now(tiny_sweep(tmp_path / "seq"))
    _, parallel = run_sweep_now(tiny_sweep(tmp_path / "par", jobs=2), LocalProcessExecutor())
    assert {o.state for o in parallel.values()} == {"done"}
    for name in ("plain-8-s0", "residual-8-s0"):
        assert_same_run(tmp_path / "seq" / name, tmp_path / "par" / name)


def test_a_changed_config_is_refused_unless_forced(tmp_path, tiny_config, tiny_sweep, run_sweep_now):
    run_sweep_now(tiny_sweep(tmp_path, kinds=["plain"]))
    changed = tiny_sweep(tmp_path, kinds=["plain"], train=replace(tiny_config(), lr=0.05))
    with pytest.raises(UserError, match=r"different config.*lr: 0\.1 there, 0\.05 asked.*--force"):
        plan_sweep(changed)
    # a data setting is named by its own key, not as the whole data table of each side
    other_data = tiny_sweep(tmp_path, kinds=["plain"], train=tiny_config(data=replace(tiny_config().data,
                                                                                      synthetic_train=96)))
    with pytest.raises(UserError, match=r"different config \(data\.synthetic_train: 128 there, 96 asked\)"):
        plan_sweep(other_data)
    planned, outcomes = run_sweep_now(replace(changed, force=True))
    assert planned[0].action == "replace" and outcomes["plain-8-s0"].state == "done"
    kept = [p for p in tmp_path.iterdir() if p.name.startswith("plain-8-s0.replaced-")]
    assert len(kept) == 1 and (kept[0] / "metrics.csv").exists()  # nothing lost


def test_a_diverging_cell_is_isolated_and_not_retried(tmp_path, tiny_config, run_sweep_now):
    sweep = SweepConfig(depths=[8], kinds=["plain"], seeds=[0, 1], out=str(tmp_path), train=tiny_config())
    run_sweep_now(sweep)
    diverging = replace(sweep, out=str(tmp_path / "d"), train=replace(tiny_config(), lr=1e8))
    planned, outcomes = run_sweep_now(diverging)
    assert {o.state for o in outcomes.values()} == {"diverged"}
    planned, outcomes = run_sweep_now(diverging)
    assert {p.action for p in planned} == {"skip-diverged"} and outcomes == {}
    planned, _ = run_sweep_now(replace(diverging, retry_failed=True))
    assert {p.action for p in planned} == {"retry"}


def test_a_crashing_cell_is_marked_failed_with_its_error_and_others_finish(tmp_path, tiny_config, tiny_sweep):
    sweep = tiny_sweep(tmp_path, jobs=2)
    planned = plan_sweep(sweep)
    broken = planned[0].cell.run_dir
    broken.mkdir(parents=True)
    (broken / "config.json").write_text(json.dumps({**json.loads(json.dumps(tiny_config().__dict__, default=vars)),
                                                    "kind": "plain"}))
    (broken / "checkpoint.pt").write_bytes(b"not a checkpoint")  # resuming from it raises inside the worker
    planned = plan_sweep(sweep)
    assert planned[0].action == "resume"
    outcomes = run_sweep(sweep, LocalProcessExecutor(), planned, poll_seconds=0.05)
    assert outcomes["plain-8-s0"].state == "failed" and outcomes["residual-8-s0"].state == "done"
    assert (broken / "error.txt").read_text().strip()
    assert json.loads((broken / "status.json").read_text())["state"] == "failed"


def test_lock_keeps_a_second_process_out_and_stale_locks_are_taken_over(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        (tmp_path / "lock").write_text(json.dumps({"pid": holder.pid, "host": os.uname().nodename,
                                                   "time": time.time()}))
        (tmp_path / "config.json").write_text(json.dumps({"data": {"dataset": "synthetic"}}))
        outcome = run_cell(tmp_path, "cpu", 1, lambda: False)
        assert outcome.state == "busy" and not (tmp_path / "metrics.csv").exists()
    finally:
        holder.kill()
        holder.wait()
    assert RunLock(tmp_path).acquire()  # the owner is dead: the lock is stale and taken over


def test_a_second_sweep_process_does_not_run_a_running_cell(tmp_path, cli_env, resdepth_cli, tiny_args, metrics_of,
                                                            wait_for_rows):
    # 400 epochs: still running whatever the machine's pace when the second process looks; killed at the end
    args = [resdepth_cli, "train", "--depth", "8", "--epochs", "400", "--out", str(tmp_path), *tiny_args]
    first = subprocess.Popen(args, env=cli_env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_rows(tmp_path / "residual-8-s0" / "metrics.csv", 1)
        second = subprocess.run(args, env=cli_env, capture_output=True, text=True, timeout=120)
        assert "busy" in second.stdout and second.returncode == 4  # not all cells done: not 0
    finally:
        first.kill()
        first.wait()
    rows = metrics_of(tmp_path / "residual-8-s0")
    assert rows["epoch"].is_unique


@pytest.mark.parametrize("rows_before_kill", [1, 3])
def test_sigkill_then_resume_gives_identical_metrics_and_weights(tmp_path, cli_env, rows_before_kill, resdepth_cli,
                                                                 tiny_args, assert_same_run, wait_for_rows):
    args = ["train", "--depth", "8", "--epochs", "20", *tiny_args]
    reference = subprocess.run([resdepth_cli, *args, "--out", str(tmp_path / "ref")], env=cli_env, capture_output=True,
                               timeout=300)
    assert reference.returncode == 0, reference.stderr
    victim = subprocess.Popen([resdepth_cli, *args, "--out", str(tmp_path / "cut")], env=cli_env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    run_dir = tmp_path / "cut" / "residual-8-s0"
    wait_for_rows(run_dir / "metrics.csv", rows_before_kill)
    time.sleep(0.05 * rows_before_kill)  # land somewhere inside a later epoch
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    killed_rows = len(pd.read_csv(run_dir / "metrics.csv"))
    assert killed_rows < 20, "the run finished before it could be killed"
    resumed = subprocess.run([resdepth_cli, *args, "--out", str(tmp_path / "cut")], env=cli_env, capture_output=True,
                             text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert_same_run(tmp_path / "ref" / "residual-8-s0", run_dir)


def test_sigint_checkpoints_mid_epoch_and_resume_is_exact(tmp_path, cli_env, resdepth_cli, tiny_args, assert_same_run,
                                                          wait_for_rows):
    args = ["train", "--depth", "8", "--epochs", "3", *tiny_args, "--synthetic-train", "2048"]
    subprocess.run([resdepth_cli, *args, "--out", str(tmp_path / "ref")], env=cli_env, check=True, capture_output=True,
                   timeout=300)
    victim = subprocess.Popen([resdepth_cli, *args, "--out", str(tmp_path / "cut")], env=cli_env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    run_dir = tmp_path / "cut" / "residual-8-s0"
    wait_for_rows(run_dir / "metrics.csv", 1)
    time.sleep(0.3)
    victim.send_signal(signal.SIGINT)
    assert victim.wait(timeout=60) == 130
    assert json.loads((run_dir / "status.json").read_text())["state"] == "interrupted"
    assert read_checkpoint(run_dir / "checkpoint.pt")["partial"] is not None  # stopped inside an epoch
    subprocess.run([resdepth_cli, *args, "--out", str(tmp_path / "cut")], env=cli_env, check=True, capture_output=True,
                   timeout=300)
    assert_same_run(tmp_path / "ref" / "residual-8-s0", run_dir)


KILL_INSIDE_A_WRITE = """
import os, signal, sys
from pathlib import Path
from resdepth.results import runs as results

class Handle:  # the temp file's handle: writes the first `cut` bytes, makes them durable, then SIGKILLs itself
    def __init__(self, handle): self.handle = handle
    def __enter__(self): return self
    def __exit__(self, *exc): return self.handle.__exit__(*exc)
    def write(self, data):
        self.handle.write(data[:int(sys.argv[2])]); self.handle.flush(); os.fsync(self.handle.fileno())
        os.kill(os.getpid(), signal.SIGKILL)
    def __getattr__(self, name): return getattr(self.handle, name)

real_fdopen = os.fdopen
results.os.fdopen = lambda *args, **kwargs: Handle(real_fdopen(*args, **kwargs))
results.atomic_write_bytes(Path(sys.argv[1]), b"x" * 1_000_000)
"""


def test_a_kill_during_a_checkpoint_write_leaves_the_previous_checkpoint_usable(tmp_path):
    target = tmp_path / "checkpoint.pt"
    atomic_write_bytes(target, b"previous checkpoint")
    killed = subprocess.run([sys.executable, "-c", KILL_INSIDE_A_WRITE, str(target), "4096"], timeout=60)
    assert killed.returncode == -signal.SIGKILL
    [torn] = tmp_path.glob(".checkpoint.pt.*.tmp")
    assert torn.stat().st_size == 4096  # the kill landed inside the write, at the chosen byte
    assert target.read_bytes() == b"previous checkpoint"  # the checkpoint itself is never torn


def test_sweep_files_load_and_bad_ones_name_path_key_and_expectation(tmp_path):
    shipped = Path(__file__).parents[1] / "sweeps"
    for path in shipped.glob("*.toml"):
        sweep = load_sweep_file(path)
        sweep.validate()
    assert load_sweep_file(shipped / "table6.toml").depths == [20, 32, 44, 56, 110, 1202]
    bad = tmp_path / "bad.toml"
    bad.write_text('depths = [20]\n[train]\nlr = "fast"\n')
    with pytest.raises(UserError, match=r"bad.toml: key train.lr: expected float, got 'fast'"):
        load_sweep_file(bad)
    bad.write_text("depths = [20]\ncolour = 3\n")
    with pytest.raises(UserError, match="unknown key colour") as raised:
        load_sweep_file(bad)
    known = str(raised.value).partition("(known: ")[2].rstrip(")").split(", ")
    assert {"data", "train", "slurm"} <= set(known)  # the tables are keys too
    # a cell's depth, kind and seed come from the sweep's lists: in [train] they would be overwritten unseen
    for key, value in (("depth", "14"), ("kind", '"residual"'), ("seed", "7")):
        bad.write_text(f"depths = [20]\n[train]\n{key} = {value}\n")
        with pytest.raises(UserError, match=rf"\[train\] sets {key}, .* top-level list, {key}s = \[...\]"):
            load_sweep_file(bad)
    bad.write_text("depths = [20\n")
    with pytest.raises(UserError, match="not valid TOML"):
        load_sweep_file(bad)


def test_force_never_moves_a_folder_that_a_live_run_holds(tmp_path, tiny_sweep, run_sweep_now):
    sweep = tiny_sweep(tmp_path, kinds=["plain"])
    run_sweep_now(sweep)
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:  # another sweep process is running plain-8-s0 right now
        (tmp_path / "plain-8-s0" / "lock").write_text(json.dumps({"pid": holder.pid, "host": os.uname().nodename,
                                                                  "time": time.time()}))
        before = (tmp_path / "plain-8-s0" / "config.json").read_bytes()
        changed = replace(sweep, train=replace(sweep.train, lr=0.05), force=True)
        planned, outcomes = run_sweep_now(changed)
        assert [p.action for p in planned] == ["busy"] and not outcomes
        assert not list(tmp_path.glob("*.replaced-*"))
        assert (tmp_path / "plain-8-s0" / "config.json").read_bytes() == before
    finally:
        holder.kill()
        holder.wait()


def test_a_corrupt_checkpoint_or_changed_data_fails_the_cell_with_what_to_do(tmp_path, tiny_sweep, run_sweep_now):
    sweep = tiny_sweep(tmp_path, kinds=["plain"])
    run_sweep_now(sweep)
    status = tmp_path / "plain-8-s0" / "status.json"
    status.write_text(json.dumps({**json.loads(status.read_text()), "state": "interrupted"}))  # to be resumed
    checkpoint = tmp_path / "plain-8-s0" / "checkpoint.pt"
    good = checkpoint.read_bytes()
    checkpoint.write_bytes(os.urandom(3000))
    _, outcomes = run_sweep_now(sweep)
    assert outcomes["plain-8-s0"].state == "failed"
    error = outcomes["plain-8-s0"].error
    assert "checkpoint.pt cannot be read" in error and "--retry-failed" in error
    checkpoint.write_bytes(good)
    state = read_checkpoint(checkpoint)
    state["data_fingerprint"] = "0" * 16  # a checkpoint of other images (an image folder changed in between)
    atomic_write_bytes(checkpoint, _saved(state))
    _, outcomes = run_sweep_now(replace(sweep, retry_failed=True))
    assert outcomes["plain-8-s0"].state == "failed" and "training data is not what" in outcomes["plain-8-s0"].error
    checkpoint.unlink()
    _, outcomes = run_sweep_now(replace(sweep, retry_failed=True))
    assert outcomes["plain-8-s0"].state == "done"  # deleted, as the message says: started over


def _saved(state: dict) -> bytes:
    import io

    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()


def test_a_cell_whose_folder_cannot_be_written_fails_alone(tmp_path, tiny_sweep, run_sweep_now):
    tmp_path.joinpath("plain-8-s0").write_text("a stray file where the run folder goes")  # as a read-only mount would
    _, outcomes = run_sweep_now(tiny_sweep(tmp_path))
    assert outcomes["plain-8-s0"].state == "failed" and "cannot write results to" in outcomes["plain-8-s0"].error
    assert outcomes["residual-8-s0"].state == "done"


def test_a_resumed_cell_runs_with_the_execution_settings_asked_now(tmp_path, tiny_sweep):
    # --checkpoint-every, --compile, --tensorboard given to a resume were silently dropped: the cell read its first
    # attempt's config.json
    from resdepth.sweep import make_cells, make_executor
    from resdepth.train import load_run_config, run_training

    sweep = replace(tiny_sweep(tmp_path), kinds=["residual"])
    sweep = replace(sweep, train=replace(sweep.train, epochs=3))
    cell = make_cells(sweep)[0]
    steps = iter(range(10**6))
    assert run_training(cell.config, cell.run_dir, should_stop=lambda: next(steps) >= 5).state == "interrupted"
    resumed = replace(sweep, train=replace(sweep.train, checkpoint_every="2", eval_batch_size=16))
    planned = plan_sweep(resumed)
    assert [item.action for item in planned] == ["resume"]
    assert run_sweep(resumed, make_executor(resumed), planned)[cell.name].state == "done"
    config = load_run_config(cell.run_dir)
    assert (config.checkpoint_every, config.eval_batch_size) == ("2", 16)
    assert "resolved" in json.loads((cell.run_dir / "config.json").read_text())


def test_a_resume_removes_the_temp_files_of_any_write_a_kill_cut_short(tmp_path, tiny_config):
    # only the checkpoint's were removed: a kill inside a status.json write left its .tmp for good
    from resdepth.train import run_training

    steps = iter(range(10**6))
    run_training(tiny_config(epochs=3), tmp_path, should_stop=lambda: next(steps) >= 5)
    for name in (".status.json.0a1b2c3d.tmp", ".checkpoint.pt.deadbeef.tmp", ".metrics.csv.00000000.tmp"):
        (tmp_path / name).write_bytes(b"half")
    (tmp_path / "mine.tmp").write_bytes(b"a user's file")  # not one of resdepth's: left alone
    assert run_training(tiny_config(epochs=3), tmp_path).state == "done"
    assert sorted(path.name for path in tmp_path.glob("*.tmp")) == ["mine.tmp"]
    assert not list(tmp_path.glob(".*.tmp"))


def test_a_sweep_file_may_give_the_checkpoint_cadence_as_a_number(tmp_path):
    path = tmp_path / "cadence.toml"
    path.write_text("depths = [8]\n[train]\ncheckpoint_every = 2000\n")  # was refused: expected str, got 2000
    assert load_sweep_file(path).train.checkpoint_every == "2000"


@pytest.mark.parametrize("damage, message", [
    (lambda text: text.splitlines()[0] + "\ngarbage\n\x00\x01,,,\n", "is damaged at line 2 \\(garbage\\)"),
    (lambda text: "".join(text.splitlines(keepends=True)[:2]), "holds 1 of the 2 rows its checkpoint counts"),
    (None, "holds 0 of the 2 rows its checkpoint counts"),  # deleted: a bare header had replaced it
])
def test_a_damaged_metrics_csv_is_refused_at_resume_not_carried_into_the_results(tmp_path, tiny_config, damage,
                                                                                   message):
    # its garbage lines were kept as rows; `table` then left the finished run out
    from resdepth.train import run_training

    steps = iter(range(10**6))
    run_training(tiny_config(epochs=4), tmp_path, should_stop=lambda: next(steps) >= 9)  # after epoch 2
    metrics = tmp_path / "metrics.csv"
    if damage is None:
        metrics.unlink()
    else:
        metrics.write_text(damage(metrics.read_text()))
    with pytest.raises(UserError, match=f"metrics.csv {message}: restore it, or delete checkpoint.pt and rerun"):
        run_training(tiny_config(epochs=4), tmp_path)


def test_a_checkpoint_without_its_config_is_not_resumed_as_a_new_cell(tmp_path, tiny_sweep, tiny_config):
    # planned as "new", its config.json was written afresh and the worker resumed the unknown checkpoint under it
    from resdepth.train import run_training

    sweep = replace(tiny_sweep(tmp_path), kinds=["residual"])
    cell = plan_sweep(sweep)[0].cell
    steps = iter(range(10**6))
    run_training(cell.config, cell.run_dir, should_stop=lambda: next(steps) >= 3)
    (cell.run_dir / "config.json").unlink()
    with pytest.raises(UserError, match=r"holds a run with a different config \(no config.json beside its "
                                        r"checkpoint.pt\); 1 folder\(s\) differ"):
        plan_sweep(sweep)
    with pytest.raises(UserError, match=r"holds a checkpoint\.pt but no config\.json: what it trained cannot be told"):
        run_training(cell.config, cell.run_dir)
    assert [item.action for item in plan_sweep(replace(sweep, force=True))] == ["replace"]


def test_a_run_folder_that_is_a_link_is_refused_and_never_written_through(tmp_path, tiny_sweep, run_sweep_now,
                                                                          run_cli):
    out = tmp_path / "r"
    run_sweep_now(tiny_sweep(out))
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "metrics.csv").write_text("PRECIOUS")
    shutil.rmtree(out / "residual-8-s0")
    (out / "residual-8-s0").symlink_to(outside)  # planted in a shared folder: training would write outside it
    with pytest.raises(UserError, match="residual-8-s0 is a link: resdepth writes a run only into a folder of its own"):
        plan_sweep(tiny_sweep(out))
    assert sorted(p.name for p in outside.iterdir()) == ["metrics.csv"]
    assert (outside / "metrics.csv").read_text() == "PRECIOUS"
    code, _, err = run_cli("table", str(out))
    assert code == 0 and "left out" in err and "residual-8-s0: a link to a folder" in " ".join(err.split())


def test_the_sweep_summary_shows_a_folders_text_not_markup(tmp_path, tiny_sweep):
    from rich.console import Console

    from resdepth.cli.sweep import render_summary
    from resdepth.sweep.runner import PlannedCell, make_cells

    cell = make_cells(tiny_sweep(tmp_path))[0]
    item = PlannedCell(cell, "busy", note="running elsewhere: on [bold red]H[/][link=http://evil.example]C[/link]")
    console = Console(record=True, width=300, force_terminal=True)
    console.print(render_summary([item], {}, {cell.name: "busy"}))
    assert "[bold red]H[/][link=http://evil.example]C[/link]" in console.export_text()
    assert "evil.example" not in console.export_text(styles=True).replace("[link=http://evil.example]", "")
