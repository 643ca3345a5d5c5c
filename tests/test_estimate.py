"""The dry run's estimate: iterations per cell, time from this machine's measured speed (a probe of the real
Trainer, or an earlier `resdepth bench`), the total over the job slots, and whether the data is here."""

import json
import os

import pytest

from resdepth.bench.estimate import estimate_plan, fit_image_cost, read_speeds, speeds_path, wall_time
from resdepth.models import build_model, count_multiply_adds
from resdepth.sweep.runner import plan_sweep


def test_probe_then_cache_gives_each_cells_iterations_and_time(tmp_path, tiny_config, tiny_sweep):
    sweep = tiny_sweep(tmp_path / "r", depths=[8, 14, 20], kinds=["plain"], train=tiny_config(epochs=3))
    first = estimate_plan(sweep, plan_sweep(sweep))
    speeds = {name: cell.speed for name, cell in first.cells.items()}
    assert [speeds[f"plain-{d}-s0"].source for d in (8, 14, 20)] == ["probe", "interpolated", "probe"]
    assert speeds["plain-8-s0"].now and speeds["plain-8-s0"].images_per_second > 0
    for cell in first.cells.values():
        assert cell.iterations == 3 * (128 // 32)  # --epochs over the synthetic training split
        # the training steps at the cell's speed, plus 3 evaluations of the 64 test images at 3x that speed
        ips = cell.speed.images_per_second
        assert cell.seconds == pytest.approx(12 * 32 / ips + 3 * 64 / (3 * ips))
    assert first.total_seconds == pytest.approx(sum(c.seconds for c in first.cells.values()))  # one job slot
    assert first.data.ready and any("probed (a few eager training steps) now" in line for line in first.basis)
    assert len(read_speeds()) == 2 and str(speeds_path()).startswith(str(tmp_path.parent))  # the test's own cache
    again = estimate_plan(sweep, plan_sweep(sweep))
    assert not again.cells["plain-8-s0"].speed.now  # read back, not measured again
    assert again.cells["plain-8-s0"].speed.images_per_second == speeds["plain-8-s0"].images_per_second


def test_finished_cells_cost_nothing_and_a_resumed_one_only_what_is_left(tmp_path, tiny_config, tiny_sweep,
                                                                         run_sweep_now):
    sweep = tiny_sweep(tmp_path, kinds=["plain"], train=tiny_config(epochs=2))
    run_sweep_now(sweep)
    status = json.loads((tmp_path / "plain-8-s0" / "status.json").read_text())
    status.update(state="interrupted", iteration=5, saved_iteration=5)  # as a run stopped at 5 writes it
    (tmp_path / "plain-8-s0" / "status.json").write_text(json.dumps(status))
    planned = plan_sweep(sweep)
    assert planned[0].action == "resume"
    assert estimate_plan(sweep, planned).cells["plain-8-s0"].iterations == 8 - 5
    status["state"] = "done"
    (tmp_path / "plain-8-s0" / "status.json").write_text(json.dumps(status))
    done = estimate_plan(sweep, plan_sweep(sweep))
    assert done.cells["plain-8-s0"].seconds is None and done.total_seconds == 0


def test_per_image_cost_is_fixed_plus_per_multiply_add():
    macs = {d: count_multiply_adds(build_model("residual", d)) for d in (20, 56, 110)}
    fixed, per_mac = 1e-4, 2e-11
    cost = fit_image_cost({20: fixed + per_mac * macs[20], 110: fixed + per_mac * macs[110]}, "residual")
    assert cost(56) == pytest.approx(fixed + per_mac * macs[56])
    one = fit_image_cost({20: 0.002}, "residual")  # one measured depth: proportional to the multiply-adds
    assert one(110) == pytest.approx(0.002 * macs[110] / macs[20])


def test_job_slots_take_the_cells_in_plan_order():
    assert wall_time([3, 1, 1, 1], slots=2) == 3
    assert wall_time([1, 1, 1, 1], slots=2) == 2
    assert wall_time([2, 2], slots=1) == 4


def test_an_earlier_bench_is_preferred_and_named(tmp_path, run_cli, tiny_args):
    code, _, err = run_cli("bench", "--depths", "8", "--kind", "plain", "--iterations", "2", "--warmup", "1",
                           "--rounds", "1",
                       "--no-naive", "--no-compile", "--batch-size", "32", "--synthetic-train", "64", "--threads", "1",
                       "--device", "cpu")
    assert code == 0, err
    code, out, err = run_cli("sweep", "--depths", "8", "--kinds", "plain", "--iterations", "40", *tiny_args,
                             "--dry-run",
                         "--out", str(tmp_path / "r"))
    assert code == 0, err
    text = " ".join(out.split())
    assert "img/s of depth 8 from `resdepth bench` of" in text and "measuring" not in err
    assert "estimated time:" in text and "data ready: synthetic" in text


def test_the_dry_run_says_the_data_is_missing_and_the_cluster_is_not_estimated(tmp_path, run_cli, monkeypatch):
    monkeypatch.setenv("RESDEPTH_DATA", str(tmp_path / "nothing"))
    code, out, err = run_cli("sweep", "--depths", "20", "--kinds", "plain", "--device", "cpu", "--threads", "1",
                             "--dry-run",
                         "--out", str(tmp_path / "r"))
    assert code == 0, err
    text = " ".join(out.split())
    assert "64,000" in text and "data not ready: cifar10 is not in" in text and "cifar-10-python.tar.gz" in text
    assert not (tmp_path / "r").exists() and not (tmp_path / "nothing").exists()
    pytest.importorskip("submitit", reason="the slurm extra is not installed")
    tools = tmp_path / "bin"  # a login node: sbatch, and a controller that answers sinfo
    tools.mkdir()
    for tool, script in (("sbatch", "exit 0"), ("sinfo", "echo debug")):
        (tools / tool).write_text(f"#!/bin/sh\n{script}\n")
        (tools / tool).chmod(0o755)
    monkeypatch.setenv("PATH", f"{tools}{os.pathsep}{os.environ['PATH']}")
    code, out, err = run_cli("sweep", "--depths", "20", "--kinds", "plain", "--device", "cpu", "--executor", "slurm",
                         "--dry-run", "--out", str(tmp_path / "r"))
    assert code == 0, err
    assert "no time estimate: the cells run on slurm nodes" in " ".join(out.split())


def test_a_probe_on_a_busy_machine_says_so(tmp_path, monkeypatch, tiny_sweep):
    import os

    monkeypatch.setattr(os, "getloadavg", lambda: (64.0, 64.0, 64.0))
    sweep = tiny_sweep(tmp_path / "r", kinds=["plain"])
    estimate = estimate_plan(sweep, plan_sweep(sweep))
    assert estimate.cells["plain-8-s0"].speed.load >= 1
    assert any("probed while other processes kept this machine busy" in line for line in estimate.basis)
    busy_again = estimate_plan(sweep, plan_sweep(sweep))  # still busy: the busy probe is used, not redone
    assert busy_again.cells["plain-8-s0"].speed.source == "probe" and not busy_again.cells["plain-8-s0"].speed.now
    monkeypatch.setattr(os, "getloadavg", lambda: (0.0, 0.0, 0.0))
    quiet = estimate_plan(sweep, plan_sweep(sweep))  # quiet now: the busy probe is measured again, and replaced
    assert quiet.cells["plain-8-s0"].speed.load == 0 and quiet.cells["plain-8-s0"].speed.now
    assert not any("busy" in line for line in quiet.basis)


@pytest.mark.parametrize("changes, fuse, caveat", [
    ({"epochs": 3}, 1, None),  # --epochs: 12 iterations, below the compile threshold
    ({"epochs": None, "iterations": 2000}, 1, "which these runs use: on the CPU expect them ~14% faster"),
    ({"epochs": None, "iterations": 2000}, 2, None),  # a fused job compiles only when asked (slower on the CPU)
    ({"epochs": None, "iterations": 2000, "compile": True}, 2, "which the fused jobs use (--compile): on 2 CPU cores"),
])
def test_the_compile_caveat_is_given_only_for_runs_that_compile(tmp_path, tiny_config, tiny_sweep, changes, fuse,
                                                                 caveat):
    sweep = tiny_sweep(tmp_path, kinds=["plain"], seeds=[0, 1], fuse=fuse, train=tiny_config(**changes))
    basis = estimate_plan(sweep, plan_sweep(sweep)).basis
    caveats = [line for line in basis if "measured without torch.compile" in line]
    assert (caveats == []) if caveat is None else (len(caveats) == 1 and caveat in caveats[0]), caveats


def test_a_killed_cell_is_estimated_from_its_last_checkpoint(tmp_path, tiny_sweep):
    from dataclasses import replace

    from resdepth.bench.estimate import cell_iterations
    from resdepth.results.runs import RunStatus
    from resdepth.train import run_training
    from resdepth.train.data import check_data_present

    sweep = replace(tiny_sweep(tmp_path), kinds=["residual"])
    sweep = replace(sweep, train=replace(sweep.train, epochs=4))  # 16 iterations
    cell = plan_sweep(sweep)[0].cell
    steps = iter(range(10**6))
    run_training(cell.config, cell.run_dir, should_stop=lambda: next(steps) >= 6)
    RunStatus.read(cell.run_dir).update(cell.run_dir, state="running", iteration=9)  # reported after it, then killed
    [item] = plan_sweep(sweep)
    assert item.action == "resume" and cell_iterations(item, check_data_present(sweep.train.data)) == 16 - 6
    # --retry-failed goes on from the checkpoint too (it was estimated from 0); without a checkpoint it starts over
    RunStatus.read(cell.run_dir).update(cell.run_dir, state="diverged", iteration=9)
    [retried] = plan_sweep(replace(sweep, retry_failed=True))
    assert retried.action == "retry" and cell_iterations(retried, check_data_present(sweep.train.data)) == 16 - 6
    (cell.run_dir / "checkpoint.pt").unlink()
    [again] = plan_sweep(replace(sweep, retry_failed=True))
    assert cell_iterations(again, check_data_present(sweep.train.data)) == 16


def test_a_family_whose_depths_all_cost_the_same_is_estimated_flat(monkeypatch):
    # a user's family that ignores the depth: the fit divided by a zero spread (a traceback in the dry run)
    monkeypatch.setattr("resdepth.bench.estimate.count_multiply_adds", lambda network: 5_000_000)
    cost = fit_image_cost({20: 0.002, 56: 0.004}, "residual")
    assert cost(110) == pytest.approx(0.003)
    monkeypatch.setattr("resdepth.bench.estimate.count_multiply_adds", lambda network: 0)
    assert fit_image_cost({20: 0.002}, "residual")(56) == pytest.approx(0.002)
