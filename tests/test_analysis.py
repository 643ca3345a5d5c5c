"""Layer responses (Figure 7), gradient norms per layer, the constructed deeper net and --init: the hooks measure
the pre-ReLU/pre-addition BN outputs, the construction computes the source's function, and the commands write
their files or fail in one line without writing anything."""

import copy
import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from resdepth.analysis.responses import (
    GRADIENT_TABLE_COLUMNS,
    RESPONSE_COLUMNS,
    Analysis,
    build_figures,
    gradient_figure,
    hooked_responses,
    layer_responses,
    training_points,
)
from resdepth.errors import UserError
from resdepth.models import build_model
from resdepth.models.families import get_family, weight_layers
from resdepth.results.runs import GRADIENT_COLUMNS, load_runs
from resdepth.sweep.runner import load_sweep_file
from resdepth.train.construct import construct_deeper, construct_from_run, read_saved_net
from resdepth.train.data import make_synthetic
from resdepth.train.gradients import GRADIENT_EVERY, GradientLog
from resdepth.train.trainer import Trainer, run_training

CPU = torch.device("cpu")


@pytest.fixture
def results(finished_sweep, tmp_path) -> Path:
    """A private copy of a finished sweep of plain-8 and residual-8 (3 epochs of the tiny synthetic set)."""
    return Path(shutil.copytree(finished_sweep(depth=8, epochs=3), tmp_path / "results"))


# ---------------------------------------------------------------------------------------------- hooks
@pytest.mark.parametrize("kind", ["plain", "residual"])
@pytest.mark.parametrize("depth", [8, 20, 56])
def test_one_response_per_3x3_layer_in_forward_order(kind, depth):
    model = build_model(kind, depth, shortcut="B" if kind == "residual" else "A").eval()
    layers = model.response_layers()
    assert len(layers) == depth - 1
    assert all(isinstance(layer.module, nn.BatchNorm2d) for layer in layers)
    assert not any("shortcut" in layer.name for layer in layers)  # option-B projection BNs are not 3x3 layers
    called: list[int] = []
    with hooked_responses(model, lambda index, _: called.append(index)), torch.no_grad():
        model(torch.randn(2, 3, 32, 32))
    assert called == list(range(depth - 1))  # each once, in the order the forward pass reaches them
    assert [layer.stage for layer in layers] == [0] + [s for s in (1, 2, 3) for _ in range(2 * ((depth - 2) // 6))]
    assert len(model.weight_layers()) == depth and model.weight_layers()[-1][0] == "linear"


def test_the_hooked_response_is_the_bn_output_before_the_addition_and_the_relu(randomized):
    torch.manual_seed(0)
    model = randomized(build_model("residual", 8))
    block = model.layer1[0]
    x = torch.randn(4, 3, 32, 32)
    captured: dict[int, torch.Tensor] = {}
    with hooked_responses(model, lambda index, out: captured.setdefault(index, out.clone())), torch.no_grad():
        model(x)
        stem = F.relu(F.batch_norm(F.conv2d(x, model.conv1.weight, padding=1), model.bn1.running_mean,
                                   model.bn1.running_var, model.bn1.weight, model.bn1.bias, False, 0.0, model.bn1.eps))
        inner = F.relu(F.batch_norm(F.conv2d(stem, block.conv1.weight, padding=1), block.bn1.running_mean,
                                    block.bn1.running_var, block.bn1.weight, block.bn1.bias, False, 0.0, block.bn1.eps))
        by_hand = F.batch_norm(F.conv2d(inner, block.conv2.weight, padding=1), block.bn2.running_mean,
                               block.bn2.running_var, block.bn2.weight, block.bn2.bias, False, 0.0, block.bn2.eps)
    index = [layer.name for layer in model.response_layers()].index("layer1.0.bn2")
    torch.testing.assert_close(captured[index], by_hand)
    assert (captured[index] < 0).any()  # before the ReLU
    assert not torch.allclose(captured[index], F.relu(by_hand + stem))  # and before the addition
    torch.testing.assert_close(captured[0], F.batch_norm(F.conv2d(x, model.conv1.weight, padding=1),
                               model.bn1.running_mean, model.bn1.running_var, model.bn1.weight, model.bn1.bias,
                               False, 0.0, model.bn1.eps))


@pytest.mark.parametrize("kind, depth", [("preact", 14), ("preact-bottleneck", 20)])
def test_a_preact_nets_response_is_each_units_residual_function(kind, depth, randomized):
    # inside a pre-activation unit every conv but the last feeds a BN (its scale is its weight norm's): Figure 7
    # measures F(x), what the unit adds to its shortcut
    model = randomized(build_model(kind, depth))
    units = [unit for stage in model.stages() for unit in stage]
    assert model.response_measure == "residual_function" and len(model.response_layers()) == len(units)
    captured: dict[int, torch.Tensor] = {}
    ends: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
    hooks = [unit.register_forward_hook(lambda _m, inputs, out, i=i: ends.update({i: (inputs[0], out)}))
             for i, unit in enumerate(units)]
    with hooked_responses(model, lambda index, out: captured.setdefault(index, out.clone())), torch.no_grad():
        model(torch.randn(2, 3, 32, 32))
    for hook in hooks:
        hook.remove()
    for index, unit in enumerate(units):
        x, out = ends[index]
        if unit.shortcut is None and index > 0:  # an identity unit: F(x) = unit(x) - x
            torch.testing.assert_close(captured[index], out - x)
        assert captured[index].shape == out.shape


def test_figure7_draws_each_quantity_apart_and_says_what_it_measures():
    def rows(kind, depth, measure, layers):
        return [{"dataset": "synthetic", "setting": "", "kind": kind, "shortcut": "A" if kind == "plain" else "B",
                 "depth": depth, "seed": 0, "layer": layer, "stage": 1, "std": 1.0 + layer / 10, "channel_std": 1.0,
                 "name": f"l{layer}", "measure": measure, "split": "test", "images": 64, "epoch": 2, "finished": True}
                for layer in range(1, layers + 1)]
    both = pd.DataFrame(rows("plain", 8, "bn_output", 7) + rows("preact", 8, "residual_function", 3),
                        columns=list(RESPONSE_COLUMNS))
    empty = pd.DataFrame(columns=list(GRADIENT_TABLE_COLUMNS))
    figures = build_figures(Analysis(both, empty))
    assert sorted(figures) == ["figure7-synthetic", "figure7-synthetic-residual-function"]
    plain, preact = figures["figure7-synthetic"], figures["figure7-synthetic-residual-function"]
    assert "3x3 layer's response (after BN" in plain.get_suptitle() and "F(x)" not in plain.get_suptitle()
    assert "each unit's residual function F(x)" in preact.get_suptitle()
    assert preact.axes[0].get_xlabel() == "unit index" and plain.axes[0].get_xlabel() == "layer index"
    assert [len(figure.axes[0].lines) for figure in (plain, preact)] == [1, 1]  # one net each: never mixed
    alone = build_figures(Analysis(both[both["kind"] == "preact"], empty))
    assert list(alone) == ["figure7-synthetic"] and "F(x)" in alone["figure7-synthetic"].get_suptitle()


def test_streamed_statistics_equal_those_of_the_whole_response_tensors(randomized):
    model = randomized(build_model("plain", 8), seed=1)
    data = make_synthetic(40, 8)
    mean = data.train_images.float().mean(0) / 255
    captured: dict[int, list[torch.Tensor]] = {}
    with hooked_responses(model, lambda index, out: captured.setdefault(index, []).append(out.double())):
        rows = layer_responses(model, data.train_images, mean, CPU, batch_size=16)
    for row in rows:
        whole = torch.cat(captured[row.layer - 1])
        assert row.std == pytest.approx(whole.std(unbiased=False).item(), rel=1e-6)
        per_channel = whole.transpose(0, 1).flatten(1).std(1, unbiased=False)
        assert row.channel_std == pytest.approx(per_channel.mean().item(), rel=1e-6)
        assert row.std != pytest.approx(row.channel_std, rel=1e-3)  # two different numbers, both reported


def test_evaluation_statistics_do_not_depend_on_the_batch_size_or_change_the_net(randomized):
    model = randomized(build_model("residual", 14), seed=2)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    data = make_synthetic(50, 8)
    mean = data.train_images.float().mean(0) / 255
    small = layer_responses(model, data.train_images, mean, CPU, batch_size=7)
    large = layer_responses(model, data.train_images, mean, CPU, batch_size=50)
    for a, b in zip(small, large, strict=True):
        assert a.std == pytest.approx(b.std, rel=1e-5) and a.channel_std == pytest.approx(b.channel_std, rel=1e-5)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # BN running statistics untouched
    model.train()
    in_training_mode = layer_responses(model, data.train_images, mean, CPU, batch_size=7)
    assert in_training_mode[3].std == pytest.approx(small[3].std, rel=1e-5)  # it switches to evaluation mode itself


# ---------------------------------------------------------------------------------------------- gradients.csv
def test_gradient_log_samples_every_kth_step_and_averages_on_the_device(tmp_path):
    model = build_model("plain", 8)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    log = GradientLog(model.weight_layers(), CPU)
    log.open(tmp_path / "gradients.csv")
    grads, weights = [], []
    for step in range(2 * GRADIENT_EVERY + 1):
        optimizer.zero_grad()
        F.cross_entropy(model(torch.randn(4, 3, 32, 32)), torch.tensor([0, 1, 2, 3])).backward()
        optimizer.step()  # as in training: sampled after the step, the weights already moved
        if step % GRADIENT_EVERY == 0:
            grads.append(torch.stack([m.weight.grad.norm() for _, m in model.weight_layers()]).double())
            weights.append(torch.stack([m.weight.norm() for _, m in model.weight_layers()]).double())
        log.sample(step)
    log.end_epoch(1, 21)
    frame = pd.read_csv(tmp_path / "gradients.csv")
    assert list(frame.columns) == list(GRADIENT_COLUMNS) and len(frame) == 8
    assert frame["sampled_steps"].eq(3).all() and frame["layer"].tolist() == list(range(1, 9))
    for column, expected in (("grad_norm", grads), ("weight_norm", weights)):
        torch.testing.assert_close(torch.tensor(frame[column].to_numpy()), torch.stack(expected).mean(0), rtol=1e-5,
                                   atol=0)
    assert len({round(w.sum().item(), 3) for w in weights}) == 3  # the weights moved between the sampled steps
    assert log.steps == 0 and log.rows == 8 and not log.sums.any()


def test_training_logs_one_gradient_row_per_epoch_and_layer(tmp_path, tiny_config):
    run_training(tiny_config(kind="plain", epochs=3), tmp_path)
    frame = pd.read_csv(tmp_path / "gradients.csv")
    assert list(frame.columns) == list(GRADIENT_COLUMNS) and len(frame) == 3 * 8
    assert frame.groupby("epoch")["layer"].apply(list).tolist() == [list(range(1, 9))] * 3
    assert frame["iteration"].unique().tolist() == [4, 8, 12] and frame["sampled_steps"].eq(1).all()
    assert (frame["grad_norm"] > 0).all() and frame["name"].iloc[-1] == "linear"
    state = torch.load(tmp_path / "checkpoint.pt", weights_only=True)["gradients"]
    assert state["rows"] == 24 and state["steps"] == 0


class Killed(Exception):
    """Stands for SIGKILL: the process ends where it is, nothing else runs."""


def test_gradient_rows_written_after_the_last_checkpoint_are_redone_on_resume_not_repeated(tmp_path, monkeypatch,
                                                                                           tiny_config):
    config = tiny_config(kind="plain", epochs=4)
    run_training(config, tmp_path / "reference")
    checkpoint_bytes = Trainer.checkpoint_bytes

    def killed_before_the_third_checkpoint(trainer: Trainer, member: Trainer) -> bytes:
        if member.epoch == 3:
            raise Killed  # epoch 3's rows are in both CSVs; the checkpoint on disk is epoch 2's
        return checkpoint_bytes(trainer, member)

    monkeypatch.setattr(Trainer, "checkpoint_bytes", killed_before_the_third_checkpoint)
    with pytest.raises(Killed):
        run_training(config, tmp_path / "cut")
    assert len(pd.read_csv(tmp_path / "cut" / "gradients.csv")) == 3 * 8
    monkeypatch.setattr(Trainer, "checkpoint_bytes", checkpoint_bytes)
    run_training(config, tmp_path / "cut")
    reference, resumed = (pd.read_csv(tmp_path / name / "gradients.csv") for name in ("reference", "cut"))
    assert resumed["epoch"].tolist() == [e for e in (1, 2, 3, 4) for _ in range(8)]
    pd.testing.assert_frame_equal(reference, resumed)


# ---------------------------------------------------------------------------------------------- analyze
def test_analyze_writes_figure7_gradients_and_csvs(results, run_cli):
    code, out, err = run_cli("analyze", str(results))
    assert code == 0, err
    assert "test split" in out and "evaluation mode" in out
    folder = results / "analysis"
    assert sorted(p.name for p in folder.iterdir()) == ["figure7-synthetic.png", "gradients-synthetic.png",
                                                         "gradients.csv", "layer_responses.csv"]
    responses = pd.read_csv(folder / "layer_responses.csv")
    assert list(responses.columns) == list(RESPONSE_COLUMNS)
    assert responses.groupby("kind")["layer"].apply(list).to_dict() == {"plain": list(range(1, 8)),
                                                                        "residual": list(range(1, 8))}
    assert (responses["std"] > 0).all() and responses["images"].eq(64).all() and responses["finished"].all()
    gradients = pd.read_csv(folder / "gradients.csv")
    assert len(gradients) == 2 * 3 * 8 and sorted(set(gradients["lr"])) == pytest.approx([0.001, 0.01, 0.1])
    assert all((folder / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for name in ("figure7-synthetic.png",
                                                                                     "gradients-synthetic.png"))


def test_analyze_on_a_subset_of_the_training_split(results, tmp_path, run_cli):
    code, _, err = run_cli("analyze", str(results), "--split", "train", "--images", "30",
                         "--out", str(tmp_path / "a"), "--format", "png,pdf", "--std", "channel_std")
    assert code == 0, err
    responses = pd.read_csv(tmp_path / "a" / "layer_responses.csv")
    assert responses["split"].eq("train").all() and responses["images"].eq(30).all()
    assert (tmp_path / "a" / "figure7-synthetic.pdf").exists()


def test_a_run_without_its_checkpoint_is_skipped_in_one_line_and_the_others_analysed(results, run_cli):
    (results / "plain-8-s0" / "checkpoint.pt").unlink()
    (results / "residual-8-s0" / "gradients.csv").unlink()  # as a run trained before gradients were logged
    code, _, err = run_cli("analyze", str(results))
    assert code == 0 and "skipped" in err and "plain-8-s0" in err and "checkpoint.pt is missing" in err
    assert "1 run(s) have no gradients.csv" in err and len(err.strip().splitlines()) == 2
    responses = pd.read_csv(results / "analysis" / "layer_responses.csv")
    assert set(responses["kind"]) == {"residual"}
    gradients = pd.read_csv(results / "analysis" / "gradients.csv")
    assert set(gradients["kind"]) == {"plain"}  # the skipped run's training still logged its gradients


def test_an_unfinished_run_is_analysed_from_its_latest_checkpoint_and_marked(results, run_cli):
    status = results / "plain-8-s0" / "status.json"
    status.write_text(json.dumps({**json.loads(status.read_text()), "state": "interrupted"}))
    assert run_cli("analyze", str(results))[0] == 0
    responses = pd.read_csv(results / "analysis" / "layer_responses.csv")
    assert responses.groupby("kind")["finished"].all().to_dict() == {"plain": False, "residual": True}


@pytest.mark.parametrize("change, args, message", [
    ("unfinish", [], "none of the 2 run(s) has finished training"),
    ("none", ["--split", "val"], "no run could be analysed"),
    ("none", ["--split", "dev"], "unknown split 'dev'"),
    ("none", ["--images", "0"], "--images must be a positive number"),
    ("none", ["--std", "var"], "unknown --std 'var'"),
    ("none", ["--format", "jpg"], "unknown figure format jpg"),
    ("corrupt", [], "no run could be analysed"),
])
def test_analyze_bad_input_is_one_line_and_writes_nothing(results, change, args, message, run_cli):
    for run_dir in (results / "plain-8-s0", results / "residual-8-s0"):
        if change == "unfinish":
            (run_dir / "status.json").write_text(json.dumps({"state": "running"}))
        if change == "corrupt":
            (run_dir / "checkpoint.pt").write_bytes(b"not a checkpoint")
    code, _, err = run_cli("analyze", str(results), *args)
    assert code == 2 and message in err and "Traceback" not in err
    assert [line for line in err.splitlines() if line.startswith("error:")] == [err.splitlines()[-1]]
    assert not (results / "analysis").exists()


@pytest.mark.parametrize("command", ["analyze", "lesion"])
@pytest.mark.parametrize("args, message", [(["--out", "a-file"], "a-file is not a folder"),
                                           (["--images", "0"], "--images must be")])
def test_analyze_and_lesion_refuse_their_options_before_any_work(results, run_cli, command, args, message):
    # a file given as --out was refused only once every layer response (or lesion) had been computed: minutes of
    # work on a real run, thrown away; --images 0 was refused after the start line had been printed
    (results.parent / "a-file").write_text("")
    args = [str(results.parent / arg) if arg == "a-file" else arg for arg in args]
    code, out, err = run_cli(command, str(results), *args)
    assert code == 2 and message in err and out == "", out
    assert not (results / "analysis").exists() and not (results / "lesion").exists()


@pytest.mark.parametrize("kind, depth", [("residual", 20), ("preact-bottleneck", 1001), ("preact-bottleneck", 29)])
def test_the_gradient_figure_draws_each_familys_stage_boundaries(kind, depth):
    # 9n+2 nets with odd n (1001: n = 111) have 3n layers a stage: a 6n+2 rule put the lines one layer off
    names = [name for name, _ in weight_layers(build_model(kind, depth))] if depth < 1000 else [
        f"layer{i}" for i in range(1, depth + 1)]
    frame = pd.DataFrame([{"dataset": "synthetic", "setting": "", "kind": kind, "shortcut": "B" if "preact" in kind
                           else "A", "depth": depth, "seed": 0, "epoch": 1, "iteration": 10, "lr": 0.1, "layer": layer,
                           "name": name, "grad_norm": 1.0, "weight_norm": 1.0, "sampled_steps": 1, "finished": True}
                          for layer, name in enumerate(names, start=1)], columns=list(GRADIENT_TABLE_COLUMNS))
    axes = gradient_figure(frame, ("synthetic", "")).axes[0]
    lines = sorted(line.get_xdata()[0] for line in axes.lines if len(set(line.get_xdata())) == 1)
    stage_ends = [index + 1.5 for index, name in enumerate(names[:-1])
                  if name.split(".")[0] != names[index + 1].split(".")[0]][1:]  # layerK -> layerK+1, then the FC
    per_stage = (depth - 2) // 3
    assert lines == [1.5 + per_stage, 1.5 + 2 * per_stage, 1.5 + 3 * per_stage] == get_family(kind).stage_boundaries(
        depth)
    if depth < 1000:
        assert lines == stage_ends  # where the net's own layer names change stage


def test_training_points_are_the_first_epoch_and_the_end_of_each_lr_stage():
    stage2, stage3 = 0.1 * 0.1, 0.1 * 0.1 * 0.1  # as the schedule computes them: not exactly 0.01 and 0.001
    metrics = pd.DataFrame({"epoch": range(1, 9), "lr": [0.01, 0.1, 0.1, 0.1, stage2, stage2, stage3, stage3]})
    assert training_points(metrics) == [("first epoch", 1), ("end of lr 0.1", 4), ("end of lr 0.01", 6),
                                        ("end of lr 0.001", 8)]
    short = pd.DataFrame({"epoch": [1, 2, 3], "lr": [0.1, 0.01, 0.001]})
    assert training_points(short) == [("end of lr 0.1", 1), ("end of lr 0.01", 2), ("end of lr 0.001", 3)]


# ---------------------------------------------------------------------------------------------- construct
def logits(model: nn.Module, images: torch.Tensor, mean: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(images.float() / 255 - mean)


@pytest.mark.parametrize("kind, identity_bn", [("plain", "data"), ("plain", "unit"), ("residual", "data")])
def test_the_constructed_net_predicts_as_its_source(results, tmp_path, kind, identity_bn):
    source_dir = results / f"{kind}-8-s0"
    built = construct_from_run(source_dir, 20, tmp_path / "c", CPU, identity_bn=identity_bn)
    assert [c.split for c in built.comparisons] == ["train", "test"]
    for comparison in built.comparisons:
        assert comparison.disagreements == 0 and comparison.source_error == comparison.constructed_error
    assert built.out_dir == tmp_path / "c" / f"{kind}-20-from-{kind}-8-s0"
    source, target = (read_saved_net(path).load(CPU) for path in (source_dir, built.out_dir))
    data = make_synthetic(128, 64)
    mean = data.train_images.float().mean(0) / 255
    torch.testing.assert_close(logits(target, data.test_images, mean), logits(source, data.test_images, mean),
                               rtol=1e-5, atol=1e-5)
    for stage in range(3):  # the trained blocks come first in each stage (the downsampling block included)
        for key, value in source.stages()[stage][0].state_dict().items():
            assert torch.equal(target.stages()[stage][0].state_dict()[key], value)
    config = json.loads((built.out_dir / "config.json").read_text())
    assert config["depth"] == 20 and config["constructed_from"]["run"] == str(source_dir.resolve())


def test_a_residual_construction_is_the_identity_in_training_mode_too_a_plain_one_only_near_it(randomized):
    torch.manual_seed(0)
    x = torch.randn(64, 3, 32, 32)
    residual = calibrated(randomized(build_model("residual", 8)), x)
    deeper = construct_deeper(residual, 20, [])[0]
    torch.testing.assert_close(logits_of(deeper, x), logits_of(residual, x))
    torch.testing.assert_close(logits_of(copy.deepcopy(deeper).train(), x), logits_of(copy.deepcopy(residual).train(),
                                                                                      x))
    plain = calibrated(randomized(build_model("plain", 8)), x)
    stats = stage_output_moments(plain, x)
    errors = {}
    for name, moments in (("data", stats), ("unit", [(torch.zeros(m.shape), torch.ones(v.shape)) for m, v in stats])):
        deeper = construct_deeper(plain, 20, moments)[0]
        torch.testing.assert_close(logits_of(deeper, x), logits_of(plain, x), rtol=1e-5, atol=1e-5)
        in_training = logits_of(copy.deepcopy(deeper).train(), x) - logits_of(copy.deepcopy(plain).train(), x)
        errors[name] = in_training.abs().max().item()
    assert errors["data"] < 0.1 * errors["unit"]  # measured statistics keep training-mode BN near the identity


def calibrated(model: nn.Module, x: torch.Tensor) -> nn.Module:
    """Running statistics set to the batch statistics of x, as training makes them (close to the batches')."""
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.reset_running_stats()
            module.momentum = None  # a cumulative average: after one batch, that batch's statistics
    logits_of(model.train(), x)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.momentum = 0.1
    return model.eval()


def logits_of(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x)


def stage_output_moments(model: nn.Module, x: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
    outputs = []
    handles = [stage.register_forward_hook(lambda _m, _i, out: outputs.append(out)) for stage in model.stages()]
    logits_of(model.eval(), x)
    for handle in handles:
        handle.remove()
    return [(out.mean((0, 2, 3)), out.var((0, 2, 3), unbiased=False)) for out in outputs]


def test_construct_prints_both_errors_and_how_to_train_from_it(results, tmp_path, run_cli):
    code, out, err = run_cli("construct", str(results / "plain-8-s0"), "--depth", "14",
                         "--out", str(tmp_path / "c"), "--device", "cpu")
    assert code == 0, err
    assert "plain-8 err %" in out and "plain-14 err %" in out and "128/128" in out and "64/64" in out
    assert "--kind plain --depth 14 --dataset synthetic" in out and "--init" in out
    # the warm-up's threshold and length in config.json are the family's, filled in: not carried over as changed
    assert "--warmup-max-iterations" not in out and "warmup_until_error" not in out, out
    assert "note:" not in out


def test_construct_names_the_values_only_a_sweep_file_sets(results, tmp_path, run_cli):
    # the note said "the source run also set options" and named no value (a width run's --width=2 was already given)
    source = tmp_path / "src" / "plain-8-s0"
    shutil.copytree(results / "plain-8-s0", source)
    config = json.loads((source / "config.json").read_text())
    (source / "config.json").write_text(json.dumps({**config, "lr_decay": 0.2}))
    code, out, err = run_cli("construct", str(source), "--depth", "14", "--out", str(tmp_path / "c"), "--device",
                             "cpu", columns=300)
    assert code == 0, err
    assert "note: the source run also set lr_decay = 0.2, which only a sweep file sets" in " ".join(out.split())


@pytest.mark.parametrize("args, message", [
    (["--depth", "8"], "--depth 8 is not deeper than the source's 8 layers"),
    (["--depth", "15"], "depth 15 is not of the form 6n+2"),
    (["--depth", "14", "--identity-bn", "ones"], "unknown --identity-bn 'ones'"),
])
def test_construct_bad_depths_are_refused_and_nothing_written(results, tmp_path, args, message, run_cli):
    code, _, err = run_cli("construct", str(results / "plain-8-s0"), *args, "--out", str(tmp_path / "c"))
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "c").exists()


def test_construct_refuses_an_unfinished_run_and_an_existing_folder(results, tmp_path, run_cli):
    (results / "plain-8-s0" / "status.json").write_text(json.dumps({"state": "interrupted"}))
    code, _, err = run_cli("construct", str(results / "plain-8-s0"), "--depth", "14", "--out", str(tmp_path / "c"))
    assert code == 2 and "has not finished training" in err and not (tmp_path / "c").exists()
    args = ["construct", str(results / "residual-8-s0"), "--depth", "14", "--out", str(tmp_path / "c")]
    assert run_cli(*args)[0] == 0
    written = (tmp_path / "c" / "residual-14-from-residual-8-s0" / "checkpoint.pt").read_bytes()
    code, _, err = run_cli(*args)
    assert code == 2 and "already exists" in err and "--force" in err
    assert (tmp_path / "c" / "residual-14-from-residual-8-s0" / "checkpoint.pt").read_bytes() == written
    assert run_cli(*args, "--force")[0] == 0


def test_constructed_nets_are_not_runs_to_plot_or_analyze(results):
    construct_from_run(results / "plain-8-s0", 14, results / "constructed", CPU)
    runs, warnings = load_runs(results)
    assert len(runs) == 2 and any("left out 1 constructed net" in w for w in warnings)
    with pytest.raises(UserError, match="only nets built by `resdepth construct`"):
        load_runs(results / "constructed")


# ---------------------------------------------------------------------------------------------- --init
def test_train_from_a_constructed_net_starts_from_its_weights_and_records_them(results, tmp_path, tiny_config):
    built = construct_from_run(results / "plain-8-s0", 14, tmp_path / "c", CPU)
    config = tiny_config(kind="plain", depth=14, epochs=1, lr=1e-9, weight_decay=0.0, init=str(built.out_dir))
    run_training(config, tmp_path / "run")
    start = read_saved_net(built.out_dir).checkpoint["model"]
    trained = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)["model"]
    for key in (k for k in start if k.endswith("conv1.weight") or k == "linear.weight"):
        torch.testing.assert_close(trained[key], start[key], rtol=0, atol=1e-7)  # lr 1e-9: the weights barely move
    record = json.loads((tmp_path / "run" / "config.json").read_text())
    assert record["init"] == str(built.out_dir) and record["resolved"]["init"]["net"] == "plain-14"
    assert record["resolved"]["init"]["constructed_from"]["net"] == "plain-8"
    he_init = tiny_config(kind="plain", depth=14, epochs=1, lr=1e-9, weight_decay=0.0)
    run_training(he_init, tmp_path / "he")
    other = torch.load(tmp_path / "he" / "checkpoint.pt", weights_only=True)["model"]
    assert not torch.allclose(other["conv1.weight"], start["conv1.weight"])


def write_foreign_checkpoint(path: Path, classes: int) -> Path:
    model = build_model("plain", 8, num_classes=classes)
    path.mkdir(parents=True)
    net = {"kind": "plain", "depth": 8, "shortcut": "A", "num_classes": classes}
    torch.save({"model": model.state_dict(), "net": net}, path / "weights.pt")
    return path / "weights.pt"


@pytest.mark.parametrize("weights, kind, depth, message", [
    ("constructed", "plain", 20,
     "holds a plain-14 net, not the plain-20 this run trains: pass --kind plain --depth 14"),
    ("constructed", "residual", 14, "holds a plain-14 net, not the residual-14 this run trains"),
    ("three classes", "plain", 8, "holds a net with 3 classes; this run's dataset has 10"),
    ("missing", "plain", 8, "does not exist"),
])
def test_init_of_another_net_is_refused_in_one_line_before_anything_is_written(results, tmp_path,
                                                                             weights, kind, depth, message, run_cli):
    init = {"constructed": lambda: construct_from_run(results / "plain-8-s0", 14, tmp_path / "c", CPU).out_dir,
            "three classes": lambda: write_foreign_checkpoint(tmp_path / "foreign", 3),
            "missing": lambda: tmp_path / "nothing"}[weights]()
    out = tmp_path / "out"
    common = ["--init", str(init), "--dataset", "synthetic", "--device", "cpu", "--out", str(out)]
    code, _, err = run_cli("train", "--kind", kind, "--depth", str(depth), *common)
    assert code == 2 and message in " ".join(err.split()) and len(err.strip().splitlines()) == 1, err
    assert not out.exists() or not any(out.iterdir())
    code, _, err = run_cli("sweep", "--kinds", kind, "--depths", str(depth), "--dry-run", *common)
    assert code == 2 and message in " ".join(err.split()), err  # a dry run counts the classes it would load


def test_sweep_files_take_init_under_train(tmp_path):
    path = tmp_path / "from.toml"
    path.write_text('depths = [14]\nkinds = ["plain"]\n[train]\n'
                    'init = "results/constructed/plain-14-from-plain-8-s0"\n')
    assert load_sweep_file(path).train.init == "results/constructed/plain-14-from-plain-8-s0"


def test_construct_refuses_a_family_whose_blocks_cannot_be_made_the_identity(tmp_path, run_cli, tiny_args):
    code, _, err = run_cli("train", "--kind", "preact", "--depth", "8", *tiny_args, "--epochs", "1", "--out",
                           str(tmp_path / "runs"))
    assert code == 0, err
    code, _, err = run_cli("construct", str(tmp_path / "runs" / "preact-8-s0"), "--depth", "14", "--out",
                           str(tmp_path / "built"))
    assert code == 2 and "holds a preact net: construct adds identity blocks to the paper's plain and residual" in err
    assert not (tmp_path / "built").exists()


def test_a_constructed_nets_folder_name_is_made_of_safe_characters(results, tmp_path, run_cli):
    source = tmp_path / "plain-8\x1b]0;title\x07\n\u202eweird"
    shutil.copytree(results / "plain-8-s0", source)
    code, _, err = run_cli("construct", str(source), "--depth", "14", "--out", str(tmp_path / "c"), "--device", "cpu")
    assert code == 0, err
    assert [p.name for p in (tmp_path / "c").iterdir()] == ["plain-14-from-plain-8.0.title.weird"]
