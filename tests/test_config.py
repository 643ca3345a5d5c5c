"""One strict way from files to configs (sweep files, sweep.json, config.json), and one declaration per option."""

import json
from dataclasses import asdict, fields

import pytest

from resdepth.config import cli_fields, flag, flag_name, from_dict
from resdepth.errors import UserError
from resdepth.train import load_run_config
from resdepth.sweep.cluster import SlurmConfig
from resdepth.sweep.runner import SweepConfig, load_saved_sweep, plan_sweep
from resdepth.train.data import DataConfig
from resdepth.train.trainer import TrainConfig, run_training

# config.json as resdepth 0.1.0 wrote it before this change (TrainConfig fields, data, resolved, environment):
# every later version must keep reading it.
EARLIER_CONFIG = {
    "kind": "plain", "depth": 20, "shortcut": "A", "seed": 1, "iterations": 64000, "epochs": None, "batch_size": 128,
    "lr": 0.1, "lr_milestones": [0.5, 0.75], "lr_decay": 0.1, "momentum": 0.9, "weight_decay": 0.0001,
    "warmup": "auto", "warmup_min_depth": 110, "warmup_lr": 0.01, "warmup_until_error": 80.0,
    "data": {"dataset": "cifar10", "data_dir": None, "train_size": None, "test_size": None, "val_size": 0,
             "split_seed": 0, "augment": True, "synthetic_train": 1500, "synthetic_test": 500},
    "device": "auto", "threads": None, "precision": "auto", "channels_last": None, "compile": None,
    "cuda_graph": False, "eval_batch_size": 1000,
    "resolved": {"iterations": 64000, "params": 269722}, "environment": {"torch": "2.4.0"},
}


def test_a_config_json_of_an_earlier_version_still_loads(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(EARLIER_CONFIG))
    config = load_run_config(tmp_path)
    assert (config.kind, config.depth, config.seed, config.lr_milestones) == ("plain", 20, 1, (0.5, 0.75))
    assert config.data == DataConfig()


def test_what_a_run_writes_reads_back_as_the_same_config(tmp_path, tiny_config):
    config = tiny_config(lr=0.05, lr_milestones=(0.4, 0.8))
    run_training(config, tmp_path)
    resolved = config.for_family()  # config.json holds the family's values where the config left them open
    assert load_run_config(tmp_path) == resolved and (resolved.shortcut, resolved.warmup_max_iterations) == ("A", 4000)


@pytest.mark.parametrize("change, message", [
    ({"colour": 3}, "config.json: unknown key colour"),
    ({"data": {"dataset": "synthetic", "flavour": 1}}, "config.json: unknown key data.flavour"),
    ({"lr": "fast"}, "config.json: key lr: expected float, got 'fast'"),
    ({"lr_milestones": [0.5, "x"]}, "config.json: key lr_milestones: expected float, got 'x'"),
])
def test_a_config_json_with_unknown_keys_or_wrong_types_is_refused_by_name(tmp_path, tiny_sweep, change, message):
    sweep = tiny_sweep(tmp_path, kinds=["plain"])
    (tmp_path / "plain-8-s0").mkdir(parents=True)
    (tmp_path / "plain-8-s0" / "config.json").write_text(json.dumps({**asdict(sweep.train), **change}))
    with pytest.raises(UserError, match=message):
        plan_sweep(sweep)


def test_a_saved_sweep_with_an_unknown_key_is_refused_and_one_of_an_earlier_version_resumes(tmp_path):
    earlier = {**asdict(SweepConfig(depths=[8], kinds=["plain"])), "retry_failed": True, "force": True}
    (tmp_path / "sweep.json").write_text(json.dumps(earlier))
    resumed = load_saved_sweep(tmp_path)  # earlier versions saved the invocation's flags: never replayed
    assert resumed.depths == [8] and not resumed.force and not resumed.retry_failed
    (tmp_path / "sweep.json").write_text(json.dumps({**earlier, "nodes": 4}))
    with pytest.raises(UserError, match=r"is not a sweep that resdepth can resume .*unknown key nodes"):
        load_saved_sweep(tmp_path)


def test_nested_configs_load_from_nested_tables_or_ready_made():
    config = from_dict(TrainConfig, {"lr": 1, "data": {"dataset": "synthetic"}}, "here")
    assert config.lr == 1.0 and isinstance(config.lr, float) and config.data.dataset == "synthetic"
    assert from_dict(TrainConfig, {"data": DataConfig(val_size=5)}, "here").data.val_size == 5
    with pytest.raises(UserError, match="here: data must be a table of keys"):
        from_dict(TrainConfig, {"data": 3}, "here")


@pytest.mark.parametrize("cls", [TrainConfig, DataConfig, SweepConfig, SlurmConfig])
def test_every_option_is_declared_once_with_its_help(cls, run_cli):
    for field in fields(cls):
        assert field.metadata.get("help"), f"{cls.__name__}.{field.name} has no help"
    command = "train" if cls in (TrainConfig, DataConfig) else "sweep"
    text = run_cli(command, "--help", columns=200).out
    for field in cli_fields(cls):
        assert flag_name(field).split("/")[0] in text, f"{flag_name(field)} is missing from {command} --help"
    assert flag(TrainConfig, "batch_size") == "--batch-size" and flag(SlurmConfig, "cpus_per_job") == "--slurm-cpus"


@pytest.mark.parametrize("cls", [TrainConfig, DataConfig, SweepConfig, SlurmConfig])
def test_help_of_a_config_class_in_python_shows_each_field_and_its_help(cls):
    text = " ".join(cls.__doc__.split())  # unwrapped, as the words stand
    for field in fields(cls):
        assert f" {field.name}: " in text, f"help({cls.__name__}) does not show {field.name}"
        assert " ".join(field.metadata["help"].split()) in text
    assert "(--batch-size)" in " ".join(TrainConfig.__doc__.split())
