"""The Slurm executor: submitit's local executor always, a real one-node Slurm cluster when one answers.

`.ci/slurm-loopback` starts slurmctld + slurmd on this machine (CI runs it); without it the real-Slurm tests
skip, unless RESDEPTH_REQUIRE_SLURM=1 turns that skip into a failure.
"""

import os
import pickle
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import asdict, replace
from pathlib import Path

import pytest

from resdepth.errors import UserError
from resdepth.results.runs import LOCK_FILE, RunStatus, read_json, write_config
from resdepth.sweep.cluster import SLURM_LOGS, TASK_FILE, CellTask, SlurmConfig, queue_states
from resdepth.sweep.executors import SequentialExecutor
from resdepth.sweep.runner import (
    SweepProgress,
    load_saved_sweep,
    load_sweep_file,
    make_executor,
    plan_sweep,
    read_saved_sweep,
)

pytest.importorskip("submitit")


@pytest.fixture
def slurm_sweep(tiny_sweep):
    """A factory: the tiny sweep on the Slurm executor, submitit's local cluster or a real one."""
    def make(out: Path, cluster: str, **changes):
        return tiny_sweep(out, executor="slurm", slurm=SlurmConfig(cluster=cluster, time=10, poll_seconds=0.2),
                          **changes)
    return make


@pytest.fixture
def sequential_reference(tmp_path, tiny_sweep, run_sweep_now):
    """A factory: the same cells run in this process, for comparison; returns their results folder."""
    def make(**changes) -> Path:
        run_sweep_now(tiny_sweep(tmp_path / "seq", **changes), SequentialExecutor())
        return tmp_path / "seq"
    return make


@pytest.fixture
def preempt_once_two_epochs_are_in(logged_epochs):
    """A factory of progress callbacks that preempt a cell's job once, after two logged epochs; returns (record,
    callback)."""
    def make(run_dir: Path, preempt) -> tuple[list, callable]:
        sent: list[dict] = []

        def callback(_: SweepProgress) -> None:
            task = read_json(run_dir / TASK_FILE)
            if not sent and task and logged_epochs(run_dir) >= 2:
                preempt(task)
                sent.append({**task, "rows": logged_epochs(run_dir)})

        return sent, callback
    return make


# ---------------------------------------------------------------------------------------------- set-up errors
def test_without_submitit_the_slurm_executor_says_how_to_install_it(tmp_path, monkeypatch, slurm_sweep):
    monkeypatch.setitem(sys.modules, "submitit", None)
    with pytest.raises(UserError, match=r'--executor slurm needs submitit.*pip install "resdepth\[slurm\]"'):
        make_executor(slurm_sweep(tmp_path, "slurm"))


def test_without_sbatch_the_slurm_executor_says_where_to_run(tmp_path, monkeypatch, slurm_sweep):
    monkeypatch.setenv("PATH", str(tmp_path))  # no sbatch here
    with pytest.raises(UserError, match="needs Slurm's sbatch on PATH: run the sweep from a login node"):
        make_executor(slurm_sweep(tmp_path, "slurm"))


def test_a_gpu_share_is_refused_on_slurm_which_gives_whole_gpus(tmp_path, tiny_config, slurm_sweep):
    sweep = slurm_sweep(tmp_path, "local", gpus_per_job=0.5, train=tiny_config(device="auto"))
    with pytest.raises(UserError, match=r"whole GPUs.*--gpus-per-job 1, not 0.5.*--executor ray"):
        make_executor(sweep)


def test_cli_slurm_errors_are_one_line_and_exit_2(tmp_path, cli_env, resdepth_cli, tiny_args):
    env = {**cli_env, "PATH": str(Path(sys.executable).parent)}  # the venv's tools, but no sbatch
    result = subprocess.run([resdepth_cli, "sweep", "--executor", "slurm", "--depths", "8", "--epochs", "2",
                             *tiny_args, "--out", "r"], cwd=tmp_path,
                            env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [
        "error: --executor slurm needs Slurm's sbatch on PATH: run the sweep from a login node of the cluster"]


@pytest.mark.parametrize("dry_run", [False, True])
def test_a_slurm_that_does_not_answer_is_refused_before_any_folder_is_made(tmp_path, cli_env, resdepth_cli, tiny_args,
                                                                         dry_run):
    # sbatch refused every job only once the cells' folders had been prepared; the dry run said all was well
    tools = tmp_path / "bin"
    tools.mkdir()
    (tools / "sbatch").write_text("#!/bin/sh\nexit 1\n")
    (tools / "sinfo").write_text("#!/bin/sh\necho 'sinfo: error: resolve_ctls_from_dns_srv: res_nsearch error' >&2\n"
                                 "echo 'sinfo: fatal: Could not establish a configuration source' >&2\nexit 1\n")
    for tool in tools.iterdir():
        tool.chmod(0o755)
    env = {**cli_env, "PATH": f"{tools}{os.pathsep}{Path(sys.executable).parent}"}
    result = subprocess.run([resdepth_cli, "sweep", "--executor", "slurm", "--depths", "8", "--epochs", "2", *tiny_args,
                             "--out", "r", *(["--dry-run"] if dry_run else [])], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and not (tmp_path / "r").exists()
    assert result.stderr.strip().splitlines() == [
        "error: Slurm does not answer here (sinfo: fatal: Could not establish a configuration source): run the sweep "
        "from a login node of the cluster, where `sinfo` lists its partitions"]


def test_bad_slurm_values_are_refused_while_planning(tmp_path, cli_env, resdepth_cli, tiny_args):
    result = subprocess.run([resdepth_cli, "sweep", "--executor", "slurm", "--slurm-time", "0", "--depths", "8",
                             "--epochs", "2", *tiny_args, "--out", "r"],
                            cwd=tmp_path, env=cli_env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and not (tmp_path / "r").exists()
    assert result.stderr.strip() == "error: --slurm-time (or [slurm] time) must be at least 1, got 0"


@pytest.mark.parametrize("gres, device, message", [
    ("gpu:2", "cuda", r"--slurm-gres must name one GPU .* got 'gpu:2': a cell trains on one GPU"),
    ("gpu:a100:1\n#SBATCH --x", "cuda", r"--slurm-gres must name one GPU"),  # it becomes an #SBATCH line
    ("gpu 1", "auto", r"--slurm-gres must name one GPU"),
    ("gpu:1", "cpu", r"--slurm-gres asks Slurm for each cell's GPU, but --device cpu trains on the CPU"),
])
def test_a_slurm_gres_other_than_one_gpu_is_refused_while_planning(tmp_path, tiny_config, slurm_sweep, gres, device,
                                                                    message):
    sweep = slurm_sweep(tmp_path / "r", "local", train=tiny_config(device=device))
    with pytest.raises(UserError, match=message):
        plan_sweep(replace(sweep, slurm=replace(sweep.slurm, gres=gres)))
    assert not (tmp_path / "r").exists()
    for good in ("gpu", "gpu:1", "gpu:a100:1", "gpu:nvidia_h100_80gb_hbm3:1"):
        plan_sweep(replace(sweep, train=tiny_config(device="cuda"), slurm=replace(sweep.slurm, gres=good)))


def test_the_slurm_table_of_a_sweep_file_is_typed_saved_and_restored(tmp_path, tiny_config, run_sweep_now):
    good = tmp_path / "gpu.toml"
    good.write_text('executor = "slurm"\ndepths = [8]\n[slurm]\npartition = "gpu"\ntime = 90\n'
                    'setup = ["module load cuda"]\ncluster = "local"\npoll_seconds = 0.2\n')
    sweep = load_sweep_file(good)
    assert (sweep.slurm.partition, sweep.slurm.time, sweep.slurm.setup) == ("gpu", 90, ["module load cuda"])
    bad = tmp_path / "bad.toml"
    bad.write_text('[slurm]\ntime = "two hours"\n')
    with pytest.raises(UserError, match=r"bad.toml: key slurm.time: expected int, got 'two hours'"):
        load_sweep_file(bad)
    bad.write_text('[slurm]\nnodes = 2\n')
    with pytest.raises(UserError, match=r"unknown key slurm.nodes"):
        load_sweep_file(bad)
    sweep = replace(sweep, out=str(tmp_path / "out"), train=tiny_config(epochs=1))
    run_sweep_now(sweep)
    assert read_saved_sweep(tmp_path / "out").slurm == sweep.slurm  # saved, to be seen ...
    assert load_saved_sweep(tmp_path / "out").slurm == SlurmConfig()  # ... but --resume takes it only from the user
    assert load_saved_sweep(tmp_path / "out", execution=sweep).slurm == sweep.slurm



def test_a_slurm_gpu_job_trains_on_the_gpu_it_is_given_whatever_index_was_asked(tmp_path, fake_cuda_machine,
                                                                                 tiny_config, slurm_sweep,
                                                                                 run_sweep_now):
    # --device cuda:1 names a GPU of the submitting machine; the job sees only the one Slurm gave it (submitit's local
    # cluster gives CUDA_VISIBLE_DEVICES=0 as Slurm would give a node's), so it must train on cuda:0, not fail there
    machine = fake_cuda_machine(2)
    sweep = slurm_sweep(tmp_path, "local", kinds=["plain"], train=tiny_config(device="cuda:1"))
    _, outcomes = run_sweep_now(sweep)
    [outcome] = outcomes.values()
    assert outcome.state == "failed" and "does not exist" not in str(outcome.error), outcome  # failed at the fake
    [record] = machine.records()
    assert (record["requested"], record["current"], record["visible"]) == ("cuda:0", 0, "0"), record

def test_a_task_refuses_a_run_folder_it_cannot_see(tmp_path):
    with pytest.raises(RuntimeError, match=r"is not visible on .*: the results folder must be on a filesystem"):
        CellTask(tmp_path / "elsewhere", "cpu", 1, "t")()


def test_a_task_checkpoints_into_a_requeue_of_itself_and_pickles_for_the_node(tmp_path, tiny_config, logged_epochs):
    run_dir = tmp_path / "plain-8-s0"
    run_dir.mkdir()
    write_config(run_dir, asdict(tiny_config(kind="plain", epochs=40)))
    task = CellTask(run_dir, "cpu", 1, "token-1")
    again = pickle.loads(pickle.dumps(task))
    assert vars(again).keys() == vars(task).keys() and again.token == "token-1"
    stopper = CellTask(run_dir, "cpu", 1, "token-1")

    def preempt_after_an_epoch() -> None:  # on a node submitit calls checkpoint() from its SIGUSR2 handler
        while logged_epochs(run_dir) < 1:
            time.sleep(0.01)
        stopper.requeue = stopper.checkpoint()

    preempter = threading.Thread(target=preempt_after_an_epoch)
    preempter.start()
    outcome = stopper()
    preempter.join()
    assert outcome.state == "interrupted"
    status = RunStatus.read(run_dir)
    assert 0 < status.iteration < status.iterations and (run_dir / "checkpoint.pt").exists()
    requeued = stopper.requeue.function
    assert isinstance(requeued, CellTask) and (requeued.run_dir, requeued.token) == (run_dir, "token-1")
    assert not (run_dir / LOCK_FILE).exists()


def test_a_task_preempted_before_it_trains_requeues_at_once(tmp_path):
    requeue = CellTask(tmp_path / "plain-8-s0", "cpu", 1, "token-2").checkpoint()  # would hang if it waited
    assert requeue.function.token == "token-2"


def test_a_failing_squeue_is_not_taken_for_finished_jobs(tmp_path, monkeypatch):
    squeue = tmp_path / "squeue"  # a stand-in answering as Slurm's squeue does when its controller is busy
    squeue.write_text("#!/bin/sh\necho 'slurm_load_jobs error: Socket timed out on send/recv operation' >&2\nexit 1\n")
    squeue.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    with pytest.raises(OSError, match="Socket timed out"):
        queue_states(["12_0"])
    squeue.write_text("#!/bin/sh\necho 'slurm_load_jobs error: Invalid job id specified' >&2\nexit 1\n")
    assert queue_states(["12_0"]) == {}  # forgotten by Slurm: ended


# ------------------------------------------------------------------------------------------ submitit's local executor
def test_local_slurm_sweep_gives_the_sequential_executors_numbers(tmp_path, run_sweep_now, assert_same_run, slurm_sweep,
                                                                  sequential_reference, monkeypatch):
    reference = sequential_reference()
    (tmp_path / "resdepth").mkdir()  # a clone's folder where the sweep starts: the jobs import the installed package
    (tmp_path / "resdepth" / "__init__.py").write_text("")
    monkeypatch.chdir(tmp_path)
    _, outcomes = run_sweep_now(slurm_sweep(tmp_path / "slurm", "local"))
    assert {o.state for o in outcomes.values()} == {"done"}
    for name in ("plain-8-s0", "residual-8-s0"):
        assert_same_run(reference / name, tmp_path / "slurm" / name)
        assert not (tmp_path / "slurm" / name / TASK_FILE).exists()
    assert len(list((tmp_path / "slurm" / SLURM_LOGS).glob("*/*_result.pkl"))) == 2
    assert not (tmp_path / "slurm" / SLURM_LOGS / "%j").exists()  # only the jobs' own folders


def test_a_local_slurm_dry_run_says_what_each_task_gets_here(tmp_path, run_cli):
    sweep_file = tmp_path / "local.toml"
    sweep_file.write_text('executor = "slurm"\ndepths = [8, 14]\nkinds = ["plain"]\n[train]\ndevice = "cpu"\n'
                          '[slurm]\ncluster = "local"\n')
    code, out, err = run_cli("sweep", str(sweep_file), "--dry-run", "--out", str(tmp_path / "r"))
    assert code == 0, err
    cores = len(os.sched_getaffinity(0))
    assert f"one slurm task per cell, {max(1, cores // 2)} thread(s) each" in " ".join(out.split())  # both run here
    assert out.count("slurm: cpu") == 2 and not (tmp_path / "r").exists()


def test_local_preemption_checkpoints_requeues_and_ends_identical(tmp_path, tiny_config, run_sweep_now, assert_same_run,
                                                                  slurm_sweep, sequential_reference,
                                                                  preempt_once_two_epochs_are_in):
    train = tiny_config(kind="plain", epochs=24)
    reference = sequential_reference(kinds=["plain"], train=train)
    run_dir = tmp_path / "slurm" / "plain-8-s0"
    sent, preempt = preempt_once_two_epochs_are_in(run_dir, lambda task: os.kill(task["pid"], signal.SIGUSR2))
    _, outcomes = run_sweep_now(slurm_sweep(tmp_path / "slurm", "local", kinds=["plain"], train=train),
                                on_progress=preempt)
    assert sent and sent[0]["rows"] < 24, "the run finished before it could be preempted"
    assert outcomes["plain-8-s0"].state == "done"
    assert RunStatus.read(run_dir).pid != sent[0]["pid"]  # finished by the requeued job's process
    logs = "".join(p.read_text() for p in (tmp_path / "slurm" / SLURM_LOGS).glob("*/*_log.*"))
    assert "Calling checkpoint method" in logs and "Requeued job" in logs
    assert_same_run(reference / "plain-8-s0", run_dir)


def test_local_interrupt_checkpoints_running_cells_and_a_rerun_resumes_them(tmp_path, tiny_config, run_sweep_now,
                                                                            logged_epochs, slurm_sweep):
    sweep = slurm_sweep(tmp_path, "local", train=tiny_config(epochs=60))
    cells = [tmp_path / "plain-8-s0", tmp_path / "residual-8-s0"]
    _, outcomes = run_sweep_now(sweep, stop_requested=lambda: all(logged_epochs(cell) >= 1 for cell in cells))
    assert {o.state for o in outcomes.values()} == {"interrupted"}
    for cell in cells:
        status = RunStatus.read(cell)
        assert status.state == "interrupted" and 0 < status.iteration < status.iterations
        assert not (cell / LOCK_FILE).exists()
    planned, outcomes = run_sweep_now(sweep)
    assert [p.action for p in planned] == ["resume", "resume"]
    assert {o.state for o in outcomes.values()} == {"done"}


def test_a_fused_group_is_one_array_task_preempted_requeued_and_identical(tmp_path, tiny_config, run_sweep_now,
                                                                          assert_same_run, slurm_sweep,
                                                                          sequential_reference,
                                                                          preempt_once_two_epochs_are_in):
    fused = {"kinds": ["residual"], "seeds": [0, 1], "fuse": 2, "train": tiny_config(epochs=24)}
    reference = sequential_reference(**fused)
    first = tmp_path / "slurm" / "residual-8-s0"
    sent, preempt = preempt_once_two_epochs_are_in(first, lambda task: os.kill(task["pid"], signal.SIGUSR2))
    _, outcomes = run_sweep_now(slurm_sweep(tmp_path / "slurm", "local", **fused), on_progress=preempt)
    assert sent and sent[0]["rows"] < 24, "the group finished before it could be preempted"
    assert {o.state for o in outcomes.values()} == {"done"} and len(outcomes) == 2
    assert len({p.parent for p in (tmp_path / "slurm" / SLURM_LOGS).glob("*/*_submitted.pkl")}) == 1  # one task
    for name in ("residual-8-s0", "residual-8-s1"):
        assert_same_run(reference / name, tmp_path / "slurm" / name)
        assert not (tmp_path / "slurm" / name / TASK_FILE).exists()


# ---------------------------------------------------------------------------------------------- a real Slurm cluster
def slurm_answers() -> bool:
    if shutil.which("sinfo") is None:
        return False
    try:
        listing = subprocess.run(["sinfo", "--noheader", "--states=idle,mixed,allocated"], capture_output=True,
                                 text=True, timeout=20)
    except subprocess.TimeoutExpired:
        return False
    return listing.returncode == 0 and bool(listing.stdout.strip())


@pytest.fixture(scope="module")
def slurm_cluster():
    if not slurm_answers():
        message = "no Slurm cluster answers here: start one with .ci/slurm-loopback and export the SLURM_CONF it prints"
        if os.environ.get("RESDEPTH_REQUIRE_SLURM") == "1":
            pytest.fail(message)
        pytest.skip(message)


def release_requeued(job_id: str) -> None:
    """Slurm holds a requeued job back about two minutes before it may start; let it start in a few seconds.

    Not at once: a job restarted while its node still cleans up the old run is killed ("Job credential revoked").
    So it waits while any node or job is completing, and at least 5 s (enough on the machines measured), at most 60.
    """
    for _ in range(100):
        state = subprocess.run(["squeue", "--noheader", "--format=%T", "--jobs", job_id], capture_output=True,
                               text=True).stdout.strip()
        if state == "PENDING":
            pending = time.monotonic()
            while time.monotonic() - pending < 60 and (time.monotonic() - pending < 5 or slurm_completing()):
                time.sleep(0.5)
            # no check: a job that Slurm has let start meanwhile is no longer pending, which is what this is for
            subprocess.run(["scontrol", "update", f"JobId={job_id}", "StartTime=now"], capture_output=True)
            return
        time.sleep(0.2)


def slurm_completing() -> bool:
    """Whether a node or job is still cleaning up after a job (Slurm's COMPLETING)."""
    nodes = subprocess.run(["sinfo", "--noheader", "--states=completing"], capture_output=True, text=True).stdout
    jobs = subprocess.run(["squeue", "--noheader", "--states=CG"], capture_output=True, text=True).stdout
    return bool(nodes.strip() or jobs.strip())


def test_cli_slurm_sweep_runs_one_job_array_with_the_sequential_numbers(slurm_cluster, tmp_path, cli_env, resdepth_cli,
                                                                        tiny_args, assert_same_run,
                                                                        sequential_reference):
    reference = sequential_reference()
    command = [resdepth_cli, "sweep", "--executor", "slurm", "--slurm-time", "10", "--depths", "8", "--epochs", "2",
               *tiny_args, "--out", "slurm"]
    result = subprocess.run(command, cwd=tmp_path, env=cli_env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    for name in ("plain-8-s0", "residual-8-s0"):
        assert RunStatus.read(tmp_path / "slurm" / name).state == "done"
        assert_same_run(reference / name, tmp_path / "slurm" / name)
    jobs = [p.name for p in (tmp_path / "slurm" / SLURM_LOGS).iterdir() if re.fullmatch(r"\d+_\d+", p.name)]
    assert len(jobs) == 2 and len({job.split("_")[0] for job in jobs}) == 1  # two tasks of one array
    assert read_json(tmp_path / "slurm" / "sweep.json")["slurm"]["time"] == 10


def test_cli_sbatch_refusal_is_one_line_and_keeps_the_folders(slurm_cluster, tmp_path, cli_env, resdepth_cli, tiny_args,
                                                              slurm_sweep):
    command = [resdepth_cli, "sweep", "--executor", "slurm", "--slurm-partition", "no-such-partition", "--depths", "8",
               "--epochs", "2", *tiny_args,
               "--out", "slurm"]
    result = subprocess.run(command, cwd=tmp_path, env=cli_env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("error: Slurm refused the jobs (") and "partition" in line.lower()
    planned = plan_sweep(slurm_sweep(tmp_path / "slurm", "slurm"))
    assert [p.action for p in planned] == ["new", "new"]  # nothing ran; a corrected command starts them


def test_slurm_preemption_signal_checkpoints_requeues_and_ends_identical(slurm_cluster, tmp_path, tiny_config,
                                                                         run_sweep_now, assert_same_run, slurm_sweep,
                                                                         sequential_reference,
                                                                         preempt_once_two_epochs_are_in):
    train = tiny_config(kind="plain", epochs=24)
    reference = sequential_reference(kinds=["plain"], train=train)
    run_dir = tmp_path / "slurm" / "plain-8-s0"

    def preempt(task: dict) -> None:  # what Slurm sends before preempting a job or at its time limit
        subprocess.run(["scancel", "--signal=USR2", task["slurm_job"]], check=True)
        release_requeued(task["slurm_job"])

    sent, callback = preempt_once_two_epochs_are_in(run_dir, preempt)
    deadline = time.monotonic() + 600  # a requeued job that never restarts fails the test (interrupted), not hangs it
    _, outcomes = run_sweep_now(slurm_sweep(tmp_path / "slurm", "slurm", kinds=["plain"], train=train),
                                on_progress=callback, stop_requested=lambda: time.monotonic() > deadline)
    assert sent and sent[0]["rows"] < 24, "the run finished before it could be preempted"
    assert outcomes["plain-8-s0"].state == "done"
    assert RunStatus.read(run_dir).pid != sent[0]["pid"]
    assert_same_run(reference / "plain-8-s0", run_dir)


def test_slurm_interrupt_signals_running_cells_which_checkpoint(slurm_cluster, tmp_path, tiny_config, run_sweep_now,
                                                                logged_epochs, slurm_sweep):
    sweep = slurm_sweep(tmp_path, "slurm", train=tiny_config(epochs=60))
    cells = [tmp_path / "plain-8-s0", tmp_path / "residual-8-s0"]
    _, outcomes = run_sweep_now(sweep, stop_requested=lambda: all(logged_epochs(cell) >= 1 for cell in cells))
    assert {o.state for o in outcomes.values()} == {"interrupted"}
    assert all(0 < RunStatus.read(cell).iteration < RunStatus.read(cell).iterations for cell in cells)
    planned, outcomes = run_sweep_now(sweep)
    assert [p.action for p in planned] == ["resume", "resume"]
    assert {o.state for o in outcomes.values()} == {"done"}


def slurm_gpus() -> int:
    """The GPUs the real cluster's node offers (the loopback cluster: two stand-ins, where device nodes can be made)."""
    shown = subprocess.run(["sinfo", "--noheader", "--format=%G"], capture_output=True, text=True).stdout
    match = re.search(r"gpu(?::[\w-]+)?:(\d+)", shown)
    return int(match.group(1)) if match else 0


@pytest.mark.parametrize("gres", [None, "gpu:1"], ids=["gpus-per-node", "gres"])
def test_a_real_slurm_gpu_job_uses_the_gpu_slurm_gave_it(slurm_cluster, tmp_path, fake_cuda_machine, tiny_config,
                                                         slurm_sweep, run_sweep_now, gres):
    """The GPU launch path through sbatch: Slurm hands each job its CUDA_VISIBLE_DEVICES, and the job's process must
    end on one indexed device it can see (the fake CUDA records where; the first CUDA tensor then fails the cell).
    Asked for as --gpus-per-node=1, or as a generic resource (--slurm-gres, for clusters that know GPUs only so)."""
    if slurm_gpus() < 1:
        pytest.skip("the Slurm cluster here offers no GPUs (the loopback one does where it can make device nodes)")
    machine = fake_cuda_machine(2)
    sweep = slurm_sweep(tmp_path, "slurm", train=tiny_config(device="cuda"))  # one thread: the node has 2 CPUs
    sweep = replace(sweep, slurm=replace(sweep.slurm, gres=gres))
    _, outcomes = run_sweep_now(sweep)
    assert {o.state for o in outcomes.values()} == {"failed"}, outcomes
    records = machine.records()
    assert len(records) == 2 and len({r["pid"] for r in records}) == 2, records
    assert all(r["requested"] == "cuda:0" and r["current"] == 0 for r in records), records
    assert all(r["visible"] in ("0", "1") and r["physical"] == int(r["visible"]) for r in records), records
    scripts = [path.read_text() for path in tmp_path.rglob("*_submission.sh")]
    asked = "#SBATCH --gres=gpu:1\n" if gres else "#SBATCH --gpus-per-node=1\n"
    gpu_lines = [[line for line in script.splitlines() if line.startswith(("#SBATCH --gres", "#SBATCH --gpu"))]
                 for script in scripts]
    assert scripts and all(lines == [asked.strip()] for lines in gpu_lines), gpu_lines
