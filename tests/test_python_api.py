"""The Python API as a script or a notebook uses it: values numpy gives, string paths, folders reused, Ctrl-C."""

import json
import signal
import subprocess
import sys
import textwrap
from dataclasses import replace

import numpy as np
import pytest

from resdepth.errors import UserError
from resdepth.results.runs import RunStatus
from resdepth.train import run_fused_training, run_training


def test_numpy_numbers_train_and_the_run_reads_back_with_python_types(tmp_path, tiny_config):
    # np.int64 was written to config.json as the string "8", which the library's own reader then refused
    config = tiny_config(depth=np.int64(8), batch_size=np.int64(32), seed=np.int64(1), lr=np.float32(0.5), epochs=1)
    result = run_training(config, str(tmp_path / "r"))  # a string path, as a notebook writes one
    saved = json.loads((tmp_path / "r" / "config.json").read_text())
    assert result.state == "done" and (saved["depth"], saved["batch_size"], saved["seed"]) == (8, 32, 1)
    assert saved["lr"] == pytest.approx(0.5)
    from resdepth.results import load_runs

    runs, notes = load_runs(tmp_path)
    assert len(runs) == 1 and not notes


@pytest.mark.parametrize("change, message", [
    (dict(epochs=1.5), "TrainConfig.epochs: expected int or nothing, got 1.5"),
    (dict(lr="0.1"), "TrainConfig.lr: expected float, got '0.1'"),
    (dict(depth="8"), "TrainConfig.depth: expected int, got '8'"),
    (dict(data={"dataset": "synthetic"}), "TrainConfig.data: expected a DataConfig, got {'dataset': 'synthetic'}"),
])
def test_a_value_of_the_wrong_type_is_one_line_before_any_folder_is_made(tmp_path, tiny_config, change, message):
    with pytest.raises(UserError, match="^" + message.replace("(", r"\(").replace(")", r"\)") + "$"):
        run_training(tiny_config(**change), tmp_path / "r")
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("change, message", [(dict(kinds="residual"), "SweepConfig.kinds: expected list, got"),
                                             (dict(depths=8), "SweepConfig.depths: expected list, got 8")])
def test_a_sweep_given_one_value_where_it_takes_a_list_says_so(tmp_path, tiny_sweep, change, message):
    with pytest.raises(UserError, match=message):
        replace(tiny_sweep(tmp_path), **change).validate()
    sweep = replace(tiny_sweep(tmp_path), depths=list(np.array([8])))
    sweep.validate()
    assert sweep.depths == [8] and type(sweep.depths[0]) is int


def test_a_folder_holding_a_run_of_another_config_is_refused_not_relabelled(tmp_path, tiny_config):
    # it returned the old run's result and rewrote config.json to the new config: weights of one, record of another
    config = tiny_config(epochs=1)
    run_training(config, tmp_path / "r")
    before = (tmp_path / "r" / "config.json").read_bytes()
    for other, named in ((replace(config, kind="plain", lr=0.5), "kind: residual there, plain asked"),
                         (replace(config, epochs=3), "epochs: 1 there, 3 asked")):
        with pytest.raises(UserError, match=f"holds a run with a different config \\({named}"):
            run_training(other, tmp_path / "r")
    assert (tmp_path / "r" / "config.json").read_bytes() == before
    assert run_training(replace(config, threads=2), tmp_path / "r").state == "done"  # how it runs is no difference


def test_a_fused_group_needs_one_folder_per_config(tmp_path, tiny_config):
    configs = [tiny_config(seed=0), tiny_config(seed=1)]
    with pytest.raises(UserError, match="is given twice: each run needs its own folder"):
        run_fused_training(configs, [tmp_path / "f", tmp_path / "f"])
    with pytest.raises(UserError, match="got 2 config\\(s\\) and 1 folder\\(s\\)"):
        run_fused_training(configs, [tmp_path / "g"])
    assert not (tmp_path / "f").exists() and not (tmp_path / "g").exists()


def test_missing_data_or_init_leave_no_folder(tmp_path, tiny_config):
    with pytest.raises(UserError, match="does not exist"):
        run_training(tiny_config(init=str(tmp_path / "nothing")), tmp_path / "r")
    with pytest.raises(UserError, match="could not be downloaded"):
        run_training(tiny_config(data=replace(tiny_config().data, dataset="cifar10", data_dir=str(tmp_path / "d"))),
                     tmp_path / "s")
    assert not (tmp_path / "r").exists() and not (tmp_path / "s").exists()


SCRIPT = """
import sys
from pathlib import Path
from resdepth.train import DataConfig, TrainConfig, run_training
from resdepth.sweep import SweepConfig, plan_sweep, run_sweep
from resdepth.sweep.runner import make_executor
config = TrainConfig(depth=8, epochs=400, batch_size=32, device="cpu", threads=1,
                     data=DataConfig(dataset="synthetic", synthetic_train=128, synthetic_test=64))
try:
    if sys.argv[1] == "run":
        run_training(config, Path("r"))
    else:
        sweep = SweepConfig(depths=[8], kinds=["residual"], seeds=[0], out="s", train=config)
        run_sweep(sweep, make_executor(sweep), plan_sweep(sweep))
except KeyboardInterrupt:
    print("KeyboardInterrupt")
"""


@pytest.mark.parametrize("how, folder", [("run", "r"), ("sweep", "s/residual-8-s0")])
def test_ctrl_c_in_a_script_checkpoints_the_run_and_raises_keyboard_interrupt(tmp_path, cli_env, wait_for_rows, how,
                                                                             folder):
    # status.json said running for good and the epoch's steps were lost; a sweep's cell trained on in its thread
    script = subprocess.Popen([sys.executable, "-c", textwrap.dedent(SCRIPT), how], cwd=tmp_path, env=cli_env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for_rows(tmp_path / folder / "metrics.csv", 1, timeout=240)
        script.send_signal(signal.SIGINT)
        out, err = script.communicate(timeout=120)
    finally:
        script.kill()
    assert (script.returncode, out) == (0, "KeyboardInterrupt\n"), err
    status = RunStatus.read(tmp_path / folder)
    assert (status.state, status.error) == ("interrupted", None) and 0 < status.epoch < 400
    assert (tmp_path / folder / "checkpoint.pt").exists()
    rows = (tmp_path / folder / "metrics.csv").read_text().splitlines()
    assert len(rows) == status.epoch + 1  # the header, then each epoch the checkpoint holds


def test_a_run_leaves_the_callers_random_state_and_threads_as_they_were(tmp_path, tiny_config):
    # it seeded torch's global generator with the run's seed and left it there, and kept --threads for the process
    import torch

    threads = torch.get_num_threads()
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    run_training(tiny_config(epochs=1, threads=threads + 1), tmp_path / "r")
    run_fused_training([tiny_config(epochs=1, seed=s) for s in (0, 1)], [tmp_path / "f0", tmp_path / "f1"])
    assert torch.equal(torch.rand(3), expected) and torch.get_num_threads() == threads
