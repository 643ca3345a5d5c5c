"""The Ray executor on a real local cluster: same numbers as in-process, a killed worker resumed, interrupts, errors."""

import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import asdict, replace

import pytest

from resdepth.errors import UserError
from resdepth.results.runs import LOCK_FILE, RunStatus, read_json, write_config, write_json
from resdepth.sweep.cluster import TASK_FILE, CellTask, probe_folder
from resdepth.sweep.executors import SequentialExecutor
from resdepth.sweep.runner import SweepProgress, make_executor, plan_sweep


@pytest.fixture(scope="module")
def ray_cluster():
    """A one-node Ray cluster with 2 CPUs, started by this process and stopped with it; yields its address."""
    ray = pytest.importorskip("ray")
    context = ray.init(num_cpus=2, include_dashboard=False, object_store_memory=100 * 2**20, log_to_driver=False,
                       logging_level=logging.WARNING)
    yield context.address_info["gcs_address"]
    ray.shutdown()


# ---------------------------------------------------------------------------------------------- without a cluster
def test_without_ray_installed_the_ray_executor_says_how_to_install_it(tmp_path, monkeypatch, tiny_sweep):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray now raises ImportError
    with pytest.raises(UserError, match=r'--executor ray needs Ray.*pip install "resdepth\[ray\]"'):
        make_executor(tiny_sweep(tmp_path, executor="ray"))


def test_a_gpu_share_outside_zero_to_one_is_refused(tmp_path, tiny_sweep):
    with pytest.raises(UserError, match=r"--gpus-per-job must be in \(0, 1\]"):
        make_executor(tiny_sweep(tmp_path, executor="ray", gpus_per_job=2))


def test_the_folder_probe_tells_a_node_without_the_shared_folder(tmp_path):
    probe = tmp_path / ".ray-probe-abc"
    assert "is not this folder there" in probe_folder(probe, "abc")
    probe.write_text("abc")
    assert probe_folder(probe, "abc") is None and sorted(tmp_path.iterdir()) == [probe]


def test_a_retry_takes_over_the_lock_its_lost_attempt_left_on_another_node(tmp_path, tiny_config):
    run_dir = tmp_path / "plain-8-s0"
    run_dir.mkdir()
    write_config(run_dir, asdict(tiny_config(kind="plain")))
    RunStatus(state="running").write(run_dir)  # fresh progress: the lock does not look stale by age
    lost = {"host": "lost-node", "pid": 4242}
    write_json(run_dir / LOCK_FILE, {**lost, "time": time.time()})
    write_json(run_dir / TASK_FILE, {**lost, "token": "first-submission"})
    assert CellTask(run_dir, "cpu", 1, "another-submission")().state == "busy"  # someone else's lock is respected
    assert CellTask(run_dir, "cpu", 1, "first-submission")().state == "done"
    assert not (run_dir / LOCK_FILE).exists() and not (run_dir / TASK_FILE).exists()


# ---------------------------------------------------------------------------------------------- on a local cluster
def test_cli_ray_sweep_gives_the_sequential_executors_numbers(ray_cluster, tmp_path, cli_env, tiny_sweep, run_sweep_now,
                                                              resdepth_cli, tiny_args, assert_same_run):
    run_sweep_now(tiny_sweep(tmp_path / "seq"), SequentialExecutor())
    (tmp_path / "resdepth").mkdir()  # a clone's folder where the sweep starts: the tasks import the installed package
    (tmp_path / "resdepth" / "__init__.py").write_text("")
    command = [resdepth_cli, "sweep", "--executor", "ray", "--address", ray_cluster, "--depths", "8", "--epochs", "2",
               *tiny_args, "--out", "ray"]
    result = subprocess.run(command, cwd=tmp_path, env=cli_env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    for name in ("plain-8-s0", "residual-8-s0"):
        assert RunStatus.read(tmp_path / "ray" / name).state == "done"
        assert_same_run(tmp_path / "seq" / name, tmp_path / "ray" / name)
        assert not (tmp_path / "ray" / name / TASK_FILE).exists()
    saved = read_json(tmp_path / "ray" / "sweep.json")
    assert (saved["executor"], saved["ray_address"]) == ("ray", ray_cluster)
    again = plan_sweep(replace(tiny_sweep(tmp_path / "ray"), executor="ray"))
    assert [p.action for p in again] == ["skip-done", "skip-done"]


def test_a_fused_group_is_one_ray_task_with_the_in_process_numbers(ray_cluster, tmp_path, tiny_sweep, run_sweep_now,
                                                                   assert_same_run):
    fused = {"kinds": ["residual"], "seeds": [0, 1], "fuse": 2}
    run_sweep_now(tiny_sweep(tmp_path / "seq", **fused), SequentialExecutor())
    _, outcomes = run_sweep_now(tiny_sweep(tmp_path / "ray", executor="ray", **fused))
    assert {o.state for o in outcomes.values()} == {"done"} and len(outcomes) == 2
    pids = {RunStatus.read(tmp_path / "ray" / name).pid for name in ("residual-8-s0", "residual-8-s1")}
    assert len(pids) == 1 and os.getpid() not in pids  # one task trained both
    for name in ("residual-8-s0", "residual-8-s1"):
        assert_same_run(tmp_path / "seq" / name, tmp_path / "ray" / name)
        assert not (tmp_path / "ray" / name / TASK_FILE).exists()


def test_a_killed_worker_is_run_again_from_its_checkpoint_and_ends_identical(ray_cluster, tmp_path, tiny_config,
                                                                             tiny_sweep, run_sweep_now, logged_epochs,
                                                                             assert_same_run):
    train = tiny_config(kind="plain", epochs=8)
    run_sweep_now(tiny_sweep(tmp_path / "seq", kinds=["plain"], train=train), SequentialExecutor())
    sweep = tiny_sweep(tmp_path / "ray", kinds=["plain"], train=train, executor="ray")
    run_dir = tmp_path / "ray" / "plain-8-s0"
    killed: list[tuple[int, int]] = []  # (pid, rows written when killed)

    def kill_once_two_epochs_are_in(_: SweepProgress) -> None:
        owner = read_json(run_dir / LOCK_FILE)
        if not killed and owner and logged_epochs(run_dir) >= 2:
            os.kill(owner["pid"], signal.SIGKILL)  # the Ray worker process training the cell
            killed.append((owner["pid"], logged_epochs(run_dir)))

    _, outcomes = run_sweep_now(sweep, on_progress=kill_once_two_epochs_are_in)
    assert killed and killed[0][1] < 8, "the run finished before it could be killed"
    assert outcomes["plain-8-s0"].state == "done"
    assert RunStatus.read(run_dir).pid != killed[0][0]  # finished by another worker
    assert_same_run(tmp_path / "seq" / "plain-8-s0", run_dir)


def test_interrupt_checkpoints_the_running_cell_and_cancels_waiting_ones(ray_cluster, tmp_path, tiny_config, tiny_sweep,
                                                                         run_sweep_now, logged_epochs):
    train = tiny_config(epochs=6, threads=2)  # each task asks for 2 CPUs: one cell runs, three wait
    sweep = tiny_sweep(tmp_path, seeds=[0, 1], train=train, executor="ray")
    cells = [tmp_path / f"{kind}-8-s{seed}" for kind in ("plain", "residual") for seed in (0, 1)]
    _, outcomes = run_sweep_now(sweep, stop_requested=lambda: any(logged_epochs(cell) >= 1 for cell in cells))
    assert {o.state for o in outcomes.values()} == {"interrupted"} and len(outcomes) == 4
    assert sorted(o.error or "" for o in outcomes.values()) == ["", *["cancelled before it started"] * 3]
    [started] = [cell for cell in cells if (cell / "checkpoint.pt").exists()]
    status = RunStatus.read(started)
    assert status.state == "interrupted" and 0 < status.iteration < status.iterations
    assert not any((cell / LOCK_FILE).exists() for cell in cells)
    # the cancelled ones too, as `status` reads them: interrupted (with how to resume), not pending for good
    assert {RunStatus.read(cell).state for cell in cells if cell != started} == {"interrupted"}
    planned, outcomes = run_sweep_now(sweep)  # the same command again: resume the one, start the other three
    assert sorted(p.action for p in planned) == ["new", "new", "new", "resume"]
    assert {o.state for o in outcomes.values()} == {"done"}


def test_every_cell_starts_in_a_fresh_worker_process(ray_cluster, tmp_path, tiny_config, tiny_sweep, run_sweep_now):
    # Each task asks for both CPUs, so the cells run one after another; a reused worker would have initialised
    # CUDA for the first cell's GPU and kept it for the next (a process keeps its first CUDA_VISIBLE_DEVICES).
    sweep = tiny_sweep(tmp_path, train=tiny_config(epochs=1, threads=2), executor="ray")
    _, outcomes = run_sweep_now(sweep)
    assert {o.state for o in outcomes.values()} == {"done"}
    pids = {RunStatus.read(tmp_path / name).pid for name in ("plain-8-s0", "residual-8-s0")}
    assert len(pids) == 2 and os.getpid() not in pids


@pytest.mark.parametrize("given", ["--address", "$RAY_ADDRESS"])
def test_a_cluster_address_that_nothing_answers_is_one_line_before_ray_starts(monkeypatch, given):
    # with $RAY_ADDRESS Ray itself retried for minutes, printing its own warnings
    import socket

    from resdepth.sweep.cluster import connect_ray

    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{closed.getsockname()[1]}"  # bound, never listening: the connection is refused
        ray = type("Ray", (), {"init": lambda **kwargs: pytest.fail("Ray was started")})
        monkeypatch.setenv("RAY_ADDRESS", address)
        with pytest.raises(UserError, match=f"no Ray cluster answers at \\{given} {address} "):
            connect_ray(ray, address if given == "--address" else None)


@pytest.mark.parametrize("server", ["web", "silent"])
def test_a_port_that_answers_but_not_as_ray_does_is_one_line_before_ray_starts(monkeypatch, server):
    # an HTTP server at the address: Ray retried for minutes, printing GCS time-outs
    import http.server
    import socket
    import threading

    from resdepth.sweep import cluster

    monkeypatch.setattr(cluster, "PROBE_SECONDS", 1)
    ray = type("Ray", (), {"init": lambda **kwargs: pytest.fail("Ray was started")})
    if server == "web":
        listener = http.server.HTTPServer(("127.0.0.1", 0), http.server.BaseHTTPRequestHandler)
        threading.Thread(target=listener.serve_forever, daemon=True).start()
        message = "--address 127.0.0.1:[0-9]+ answers, but not as a Ray cluster does"
    else:
        listener = socket.create_server(("127.0.0.1", 0))  # accepts, never says anything
        message = "no Ray cluster answers at --address 127.0.0.1:[0-9]+ \\(no answer in 1 s\\)"
    port = listener.socket.getsockname()[1] if server == "web" else listener.getsockname()[1]
    with listener:
        with pytest.raises(UserError, match=message):
            cluster.connect_ray(ray, f"127.0.0.1:{port}")
        if server == "web":
            listener.shutdown()


def test_a_ray_clusters_own_address_passes_the_probe(ray_cluster):
    from resdepth.sweep.cluster import check_ray_address

    check_ray_address(ray_cluster)  # its GCS answers the HTTP/2 opening with a SETTINGS frame
