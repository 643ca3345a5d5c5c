"""Network families: the built-in pre-activation ResNets of He et al. 2016b (their parameter counts, unit order and
protocol), and a user's family by import path and by entry point, swept, resumed, tabled and plotted."""

import json
import math
import os
import subprocess
import sys
from dataclasses import replace

import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from resdepth.errors import UserError
from resdepth.models import PreActBlock, PreActNet, build_model, count_parameters
from resdepth.models.families import (
    PREACT_BOTTLENECK_TABLE,
    build_network,
    builtin_families,
    check_network,
    family_of_run,
    forget_loaded,
    get_family,
    response_layers,
)
from resdepth.results.plots import build_figures
from resdepth.results.runs import load_runs
from resdepth.results.tables import display_table, summarize
from resdepth.sweep.runner import SweepConfig, load_saved_sweep, plan_sweep
from resdepth.sweep.watch import read_folder_status
from resdepth.train.trainer import TrainConfig, run_training

# The common PyTorch port of the authors' code, 10 classes: projection shortcuts where the shape changes.
PREACT_PARAMS = {20: 272_282, 56: 855_578, 110: 1_730_522}
PREACT_BOTTLENECK_PARAMS = {164: 1_703_258, 1001: 10_327_706}
PLAIN_PARAMS = {20: 269_722, 56: 853_018, 110: 1_727_962}


# ---------------------------------------------------------------------------------------------- the built-in families
@pytest.mark.parametrize("depth", sorted(PREACT_PARAMS))
def test_preact_parameter_counts_match_the_common_port_and_option_a_makes_it_the_plain_twin(depth):
    assert count_parameters(build_model("preact", depth)) == PREACT_PARAMS[depth]
    assert count_parameters(build_model("preact", depth, shortcut="A")) == PLAIN_PARAMS[depth]
    assert count_parameters(build_model("plain", depth)) == PLAIN_PARAMS[depth]  # the twin `models` names


@pytest.mark.parametrize("depth", sorted(PREACT_BOTTLENECK_PARAMS))
def test_preact_bottleneck_parameter_counts_match_the_common_port(depth):
    assert count_parameters(build_model("preact-bottleneck", depth)) == PREACT_BOTTLENECK_PARAMS[depth]


def test_named_builders_and_family_builders_agree():
    assert count_parameters(build_model("preact164")) == PREACT_BOTTLENECK_PARAMS[164]  # the paper's ResNet-164
    assert build_model("preact110").kind == "preact" and build_model("preact1001").depth == 1001
    assert build_model("preact26").depth == 26  # any 6n+2 depth of the basic family, registered or not


def test_a_preact_unit_adds_its_branch_to_the_shortcut_with_nothing_after_the_addition():
    torch.manual_seed(0)
    unit = PreActBlock(16, 16, 1, shortcut="B").eval()
    nn.init.zeros_(unit.conv2.weight)  # the branch now adds zero: the unit is the identity, negative values too
    x = torch.randn(2, 16, 8, 8)
    assert torch.equal(unit(x), x)
    nn.init.normal_(unit.conv2.weight)
    branch = unit.conv2(F.relu(unit.bn2(unit.conv1(F.relu(unit.bn1(x))))))  # BN -> ReLU -> conv, twice
    assert torch.allclose(unit(x), x + branch)


def test_the_first_preact_unit_adds_the_activated_stem_output_as_2016b():
    # 2016b puts the first BN-ReLU right after conv1, before the two paths split: the first unit's identity shortcut
    # takes the activated stem output (the authors' "both_preact"); every later identity unit adds its raw input
    torch.manual_seed(0)
    model = build_model("preact", 14).eval()  # n = 2: a first unit and an ordinary one in stage 1
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5), module.running_var.uniform_(0.5, 2.0)
    seen = {}
    hooks = [unit.register_forward_hook(lambda _unit, inputs, output, name=name: seen.update({name: (inputs[0],
                                                                                                       output)}))
             for name, unit in (("first", model.layer1[0]), ("second", model.layer1[1]))]
    model(torch.randn(2, 3, 32, 32))
    for hook in hooks:
        hook.remove()
    for name, unit in (("first", model.layer1[0]), ("second", model.layer1[1])):
        x, output = seen[name]
        activated = F.relu(unit.bn1(x))
        branch = unit.conv2(F.relu(unit.bn2(unit.conv1(activated))))
        expected = branch + (activated if name == "first" else x)
        assert torch.allclose(output, expected, atol=1e-6), name
    assert get_family("preact").version == 2 and get_family("preact-bottleneck").version == 1


def test_runs_of_the_preact_nets_before_the_first_unit_fix_are_kept_apart_and_not_resumed(tmp_path, tiny_config,
                                                                                             write_run):
    config = tiny_config(kind="preact", depth=8, epochs=1)
    run_training(config, tmp_path / "new")
    saved = json.loads((tmp_path / "new" / "config.json").read_text())
    assert saved["resolved"]["family"]["version"] == 2  # config.json records the network version
    # an interrupted run of an earlier resdepth: its config.json names no version (1), its checkpoint is version 1's
    old = tmp_path / "old"
    old.mkdir()
    for name in ("checkpoint.pt", "metrics.csv"):
        (old / name).write_bytes((tmp_path / "new" / name).read_bytes())
    del saved["resolved"]["family"]["version"]
    (old / "config.json").write_text(json.dumps(saved))
    (old / "status.json").write_text(json.dumps({"state": "interrupted"}))
    with pytest.raises(UserError, match=r"began training on version 1 of the preact networks .* now builds version 2"):
        run_training(replace(config, epochs=2), old)
    # the table and the figures never average the two nets as seeds: the version splits them
    results = tmp_path / "results"
    write_run(results, "preact", 20, seed=0, resolved={"family": {"version": 2}})
    write_run(results, "preact", 20, seed=1)
    summary = summarize(load_runs(results)[0])
    assert summary["setting"].tolist() == ["network_version 1", "network_version 2"] and summary["runs"].tolist() == [
        1, 1]


def test_a_sweep_plans_a_checkpoint_of_an_earlier_network_version_as_another_run_not_a_resume(tmp_path, tiny_config):
    sweep = SweepConfig(depths=[8], kinds=["preact"], seeds=[0], out=str(tmp_path / "out"),
                        train=tiny_config(epochs=2))
    [cell] = plan_sweep(sweep)
    run_training(cell.cell.config, cell.cell.run_dir)
    saved = json.loads((cell.cell.run_dir / "config.json").read_text())
    del saved["resolved"]["family"]["version"]  # written before versions were: version 1
    (cell.cell.run_dir / "config.json").write_text(json.dumps(saved))
    (cell.cell.run_dir / "status.json").write_text(json.dumps({"state": "interrupted"}))
    # before: planned as a resume, which then failed the cell; now refused at planning, with the difference
    with pytest.raises(UserError, match=r"holds a run with a different config \(network version 1 there, 2 now\)"):
        plan_sweep(sweep)
    [forced] = plan_sweep(replace(sweep, force=True))
    assert forced.action == "replace"
    # a failed one is kept unless retried, and a retry cannot resume it either
    (cell.cell.run_dir / "status.json").write_text(json.dumps({"state": "failed"}))
    assert plan_sweep(sweep)[0].action == "skip-failed"
    with pytest.raises(UserError, match=r"network version 1 there, 2 now"):
        plan_sweep(replace(sweep, retry_failed=True))
    # a finished run of version 1 is read as it is, never resumed: nothing to plan against it
    (cell.cell.run_dir / "status.json").write_text(json.dumps({"state": "done"}))
    assert plan_sweep(sweep)[0].action == "skip-done"


class TorchBottleneck(nn.Module):
    """The bottleneck unit of KaimingHe/resnet-1k-layers (resnet-pre-act.lua), written from the Lua independently of
    resdepth: where the shape changes a common BN-ReLU feeds both the convs and the 1x1 projection; elsewhere the
    input is added as it is."""

    def __init__(self, n_in, n_out, stride):
        super().__init__()
        mid = n_out // 4
        self.changes = n_in != n_out
        self.common = nn.BatchNorm2d(n_in)
        self.c1 = nn.Conv2d(n_in, mid, 1, stride, 0, bias=False)
        self.b2, self.c2 = nn.BatchNorm2d(mid), nn.Conv2d(mid, mid, 3, 1, 1, bias=False)
        self.b3, self.c3 = nn.BatchNorm2d(mid), nn.Conv2d(mid, n_out, 1, 1, 0, bias=False)
        self.project = nn.Conv2d(n_in, n_out, 1, stride, 0, bias=False) if self.changes else None

    def forward(self, x):
        pre = F.relu(self.common(x))
        convs = self.c3(F.relu(self.b3(self.c2(F.relu(self.b2(self.c1(pre)))))))
        return convs + (self.project(pre) if self.changes else x)


def test_bottleneck_nets_compute_what_the_authors_torch_code_computes():
    n, stages = 2, (16, 64, 128, 256)  # depth 9n+2 = 20
    layers, planes = [nn.Conv2d(3, 16, 3, 1, 1, bias=False)], 16
    for index, out in enumerate(stages[1:]):
        for unit in range(n):
            layers.append(TorchBottleneck(planes, out, 2 if index > 0 and unit == 0 else 1))
            planes = out
    reference = nn.Sequential(*layers, nn.BatchNorm2d(256), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                              nn.Linear(256, 10))
    torch.manual_seed(3)
    for module in reference.modules():  # BN statistics and affine values that are not the identity: the test can fail
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5), module.running_var.uniform_(0.5, 2.0)
            module.weight.data.uniform_(0.5, 1.5), module.bias.data.uniform_(-0.2, 0.2)
    ours = build_model("preact-bottleneck", 20)
    values, keys = list(reference.state_dict().values()), list(ours.state_dict())
    assert [v.shape for v in values] == [ours.state_dict()[k].shape for k in keys]
    ours.load_state_dict(dict(zip(keys, values, strict=True)))
    x = torch.randn(3, 3, 32, 32)
    assert torch.allclose(reference.eval()(x), ours.eval()(x), atol=1e-5)


def test_preact_init_follows_the_authors_code():
    torch.manual_seed(0)
    model = PreActNet(164, bottleneck=True)
    conv = model.layer3[5].conv2  # 3x3, 64 -> 64: std sqrt(2 / (9 * 64))
    assert conv.weight.std().item() == pytest.approx(math.sqrt(2 / (9 * 64)), rel=0.05)
    assert torch.equal(model.linear.bias, torch.zeros(10)) and model.bn.weight.eq(1).all()


@pytest.mark.parametrize("family", [f.name for f in builtin_families()])
def test_every_family_trains_answers_its_responses_and_builds_the_same_net_from_a_seed(family):
    depth = {"preact-bottleneck": 11}.get(family, 8)
    nets = []
    for _ in range(2):  # deterministic from the seed, as a fused multi-seed run needs
        torch.manual_seed(7)
        nets.append(build_network(family, depth))
    assert all(torch.equal(a, b) for a, b in zip(nets[0].state_dict().values(), nets[1].state_dict().values(),
                                                 strict=True))
    model = nets[0]
    seen = []
    modules = [layer.module for layer in response_layers(model)]
    handles = [m.register_forward_hook(lambda m, i, o: seen.append(o.shape)) for m in modules]
    out = model(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 10) and torch.isfinite(out).all()
    if family.startswith("preact"):  # a response per unit: its residual function, as wide as the unit's output
        assert len(seen) == sum(len(stage) for stage in model.stages()) == 3
        assert seen[0] == (2, 64 if family == "preact-bottleneck" else 16, 32, 32)
    else:
        assert len(seen) == depth - 1 and seen[0] == (2, 16, 32, 32)  # a response per weight layer but the FC
    F.cross_entropy(out, torch.tensor([1, 2])).backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    for handle in handles:
        handle.remove()


@pytest.mark.parametrize("kind, depth, hint", [("preact-bottleneck", 21, "20 or 29"), ("preact-bottleneck", 5, "11"),
                                               ("preact", 164 + 1, "164 or 170")])
def test_a_depth_the_family_does_not_build_names_the_family_and_the_nearest_depths(kind, depth, hint):
    with pytest.raises(UserError, match=f"not of the form .* for {kind} nets: try {hint}$"):
        check_network(kind, depth)


def test_shortcuts_default_per_family_and_a_family_refuses_one_it_has_not():
    resolved = {kind: TrainConfig(kind=kind, depth=20).for_family().shortcut
                for kind in ("plain", "residual", "preact", "preact-bottleneck")}
    assert resolved == {"plain": None, "residual": "A", "preact": "B", "preact-bottleneck": "B"}
    assert TrainConfig(kind="plain", shortcut="B").for_family().shortcut == "B"  # kept, ignored: plain has none
    with pytest.raises(UserError, match="preact-bottleneck nets take --shortcut B, not A"):
        TrainConfig(kind="preact-bottleneck", depth=164, shortcut="A").for_family()


def test_preact_nets_warm_up_for_their_first_400_iterations_at_every_depth():
    preact = TrainConfig(kind="preact", depth=20).for_family()
    assert preact.uses_warmup() and (preact.warmup_until_error, preact.warmup_max_iterations) == (0.0, 400)
    assert not TrainConfig(kind="preact", depth=20, warmup="off").uses_warmup()
    assert not TrainConfig(kind="residual", depth=56).uses_warmup() and not TrainConfig(kind="plain").uses_warmup()
    given = TrainConfig(kind="preact", warmup_max_iterations=50, warmup_until_error=80.0).for_family()
    assert (given.warmup_until_error, given.warmup_max_iterations) == (80.0, 50)  # what is given wins


def test_a_fixed_warmup_runs_at_the_warmup_lr_for_exactly_its_iterations(tmp_path, tiny_config):
    config = tiny_config(kind="preact", depth=8, epochs=3, warmup_max_iterations=6, lr_milestones=(0.99,))
    result = run_training(config, tmp_path)
    assert (result.warmup_end_reason, result.warmup_end_iteration) == ("cap", 6)
    lrs = [float(line.split(",")[2]) for line in (tmp_path / "metrics.csv").read_text().splitlines()[1:]]
    assert lrs == [0.01, 0.1, 0.1]  # 4 steps per epoch: the first 6 at 0.01, then 0.1 (the milestone at 12)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert (saved["shortcut"], saved["warmup_until_error"], saved["resolved"]["warmup"]) == ("B", 0.0, True)
    assert saved["resolved"]["family"]["source"]["distribution"] == "resdepth"


# ---------------------------------------------------------------------------------------------- tables and figures
PAPER = {"iterations": 64_000}


def test_preact_rows_stand_beside_their_papers_numbers(tmp_path, write_run):
    preact = {**PAPER, "shortcut": "B", "warmup_until_error": 0.0, "warmup_max_iterations": 400}
    for seed in (0, 1):
        write_run(tmp_path, "preact-bottleneck", 164, seed=seed, test=(30.0, 6.0 + seed), warmup_end=("cap", 400),
                  **preact)
    write_run(tmp_path, "preact-bottleneck", 1001, test=(30.0, 5.0), warmup_end=("cap", 400), batch_size=64, **preact)
    write_run(tmp_path, "preact", 110, test=(30.0, 7.0), **preact)  # never warmed up
    write_run(tmp_path, "residual", 56, test=(30.0, 7.5), **PAPER)
    write_run(tmp_path, "preact", 20, test=(30.0, 9.0), warmup_end=("cap", 400), **preact)
    summary = summarize(load_runs(tmp_path)[0])
    rows = {(r["kind"], r["depth"]): r for r in summary.to_dict("records")}
    assert list(rows)[:2] == [("residual", 56), ("preact", 20)]  # the built-in families' order, then by depth
    deep = rows[("preact-bottleneck", 164)]
    assert deep["paper_test_error"] == 5.46 and deep["paper_protocol"] and deep["vs_paper"] == pytest.approx(1.04)
    # batch 64: the authors' Torch code's median, which trained another schedule: never shown as a like-for-like
    deep_64 = rows[("preact-bottleneck", 1001)]
    assert deep_64["paper_test_error"] == 4.62
    assert deep_64["protocol_differences"] == ("64,000 iterations, lr /10 at 50%, 75% (paper: the authors' Torch "
                                               "code: 200 epochs, lr /10 at epochs 81 and 122, no warm-up)")
    assert rows[("preact", 110)]["protocol_differences"] == "no warm-up (paper: lr 0.01 for the first 400 iterations)"
    headers, table, notes = display_table(summary)
    column = [row[headers.index("paper")] for row in table]
    assert column == ["6.97", "none", "6.37‡", "5.46", "4.62 (4.69±0.20)‡"]
    assert "paper (residual): He et al. 2016, Table 6" in " ".join(notes)
    assert any(n.startswith("paper (preact-bottleneck): He et al. 2016b") for n in notes)
    assert "none: 2016b has no 20-layer preact net, only 110 layers." in notes


def test_2016b_medians_stand_beside_our_median_and_table6_beside_our_mean(tmp_path, write_run, run_cli):
    preact = {**PAPER, "shortcut": "B", "warmup_until_error": 0.0, "warmup_max_iterations": 400}
    for seed, final in enumerate((6.0, 6.5, 9.5)):  # median 6.50, mean 7.33
        write_run(tmp_path, "preact", 110, seed=seed, test=(30.0, final), warmup_end=("cap", 400), **preact)
        write_run(tmp_path, "residual", 56, seed=seed, test=(30.0, final), **PAPER)
    summary = summarize(load_runs(tmp_path)[0])
    rows = {r["kind"]: r for r in summary.to_dict("records")}
    assert rows["preact"]["final_test_error_median"] == 6.5 and rows["preact"]["compared_with"] == "median"
    assert rows["preact"]["paper_statistic"] == "median of 5 runs"
    assert rows["preact"]["vs_paper"] == pytest.approx(6.5 - 6.37)  # like with like: medians
    assert rows["residual"]["compared_with"] == "mean" and rows["residual"]["paper_statistic"] == "one run"
    assert rows["residual"]["vs_paper"] == pytest.approx(22 / 3 - 6.97)
    headers, table, notes = display_table(summary)
    preact_row = table[[r[0] for r in table].index("preact")]
    assert preact_row[headers.index("paper's statistic")] == "median of 5 runs"
    assert preact_row[headers.index("our median")] == "6.50" and preact_row[headers.index("Δ vs paper")] == "+0.13"
    assert table[0][headers.index("our median")] == ""  # Table 6's numbers stand beside our mean
    [delta] = [n for n in notes if n.startswith("Δ:")]
    assert "our mean minus its one run" in delta and "our median minus its median of 5 runs" in delta
    code, out, _ = run_cli("table", str(tmp_path), "--csv", str(tmp_path / "t.csv"))
    assert code == 0 and "median of 5 runs" in out
    assert pd.read_csv(tmp_path / "t.csv")["compared_with"].tolist() == ["mean", "median"]
    code, out, _ = run_cli("table", str(tmp_path), "--runs")
    assert code == 0 and "medians of 5 runs" in out


def test_cifar100_and_the_warmup_length_are_part_of_the_preact_protocol(tmp_path, write_run):
    preact = {**PAPER, "shortcut": "B", "warmup_until_error": 0.0}
    write_run(tmp_path / "c100", "preact-bottleneck", 164, dataset="cifar100", warmup_end=("cap", 400),
              warmup_max_iterations=400, **preact)
    write_run(tmp_path / "long", "preact-bottleneck", 164, warmup_end=("cap", 4000), warmup_max_iterations=4000,
              **preact)
    rows = {r["dataset"] + r["setting"]: r for r in summarize(load_runs(tmp_path)[0]).to_dict("records")}
    assert rows["cifar100"]["paper_test_error"] == 24.33 and rows["cifar100"]["paper_protocol"]
    assert rows["cifar10"]["protocol_differences"] == (
        "warm-up lr 0.01 until training error < 0% or iteration 4,000 (paper: lr 0.01 for the first 400 iterations)")
    assert PREACT_BOTTLENECK_TABLE.lookup("synthetic", 164).test_error == 5.46  # other data: CIFAR-10's, marked


def test_figures_get_a_panel_per_family_and_name_files_by_it(tmp_path, write_run):
    for kind, shortcut in (("residual", "A"), ("preact", "B")):
        for depth in (20, 56):
            write_run(tmp_path, kind, depth, dataset="synthetic", test=(50.0, 30.0, 20.0 + depth / 10),
                      shortcut=shortcut)
    write_run(tmp_path, "preact", 56, shortcut="A", dataset="synthetic", test=(50.0, 30.0, 21.0))
    figures = build_figures(load_runs(tmp_path)[0])
    assert sorted(figures) == ["figure1-preact-A-synthetic", "figure1-preact-synthetic", "figure1-residual-synthetic",
                               "figure6-synthetic"]
    assert [axes.get_title() for axes in figures["figure6-synthetic"].axes] == [
        "residual nets", "preact nets", "preact-A nets"]


# ---------------------------------------------------------------------------------------------- a user's family
def test_a_family_by_path_is_swept_resumed_tabled_and_plotted_without_importing_it_to_read(
        tmp_path, user_family, tiny_config, run_sweep_now, assert_same_run):
    sweep = SweepConfig(depths=[4, 6], kinds=["tinyfam_nets:gated", "residual"], seeds=[0], out=str(tmp_path / "a"),
                        train=tiny_config(depth=8))
    with pytest.raises(UserError, match=r"depth 4 is not of the form 6n\+2 .* for residual nets"):
        plan_sweep(sweep)
    sweep = replace(sweep, kinds=["tinyfam_nets:gated"])
    planned, outcomes = run_sweep_now(sweep)
    assert [p.cell.name for p in planned] == ["tinyfam_nets.gated-4-s0", "tinyfam_nets.gated-6-s0"]
    assert {o.state for o in outcomes.values()} == {"done"}
    config = json.loads((tmp_path / "a" / "tinyfam_nets.gated-4-s0" / "config.json").read_text())
    assert config["kind"] == "tinyfam_nets:gated"
    assert config["resolved"]["params"] == 8 * 27 + 2 * (8 * 72 + 16 + 1) + 90  # stem, 2 x (conv, BN, gate), FC
    assert config["resolved"]["family"]["source"] == {"module": "tinyfam_nets", "attribute": "gated",
                                                      "distribution": "tinyfam-nets", "version": "0.1",
                                                      "file": str(user_family.folder / "tinyfam_nets.py")}
    cut = replace(sweep, out=str(tmp_path / "b"))
    cell = plan_sweep(cut)[1].cell
    seen = []
    assert run_training(cell.config, cell.run_dir, should_stop=lambda: seen.append(1) or len(seen) > 5).state == \
        "interrupted"
    planned, outcomes = run_sweep_now(cut)
    assert [p.action for p in planned] == ["new", "resume"] and outcomes[cell.name].state == "done"
    assert_same_run(tmp_path / "a" / cell.name, cell.run_dir)
    sys.modules.pop("tinyfam_nets")
    sys.path.remove(str(user_family.folder))  # reading results imports nothing: the module is gone
    runs, _ = load_runs(tmp_path / "a")
    summary = summarize(runs)
    assert list(summary["kind"]) == ["tinyfam_nets:gated"] * 2 and "tinyfam_nets" not in sys.modules
    _, rows, notes = display_table(summary)
    assert rows[0][0] == "tinyfam_nets:gated" and notes[-1] == (
        "paper: no paper number for these nets: tinyfam_nets:gated nets come with no paper numbers.")
    assert sorted(build_figures(runs)) == ["figure1-tinyfam_nets.gated-synthetic", "figure6-synthetic"]
    assert family_of_run(runs[0].config).source.version == "0.1" and "tinyfam_nets" not in sys.modules
    forget_loaded()  # status names the sweep's cells, started or not, from the runs' records, importing nothing
    saved = json.loads((tmp_path / "a" / "sweep.json").read_text())
    (tmp_path / "a" / "sweep.json").write_text(json.dumps({**saved, "seeds": [0, 1]}))
    status = read_folder_status(tmp_path / "a")
    assert status.warnings == [] and "tinyfam_nets" not in sys.modules
    assert [(cell.name, cell.state) for cell in status.cells] == [
        ("tinyfam_nets.gated-4-s0", "done"), ("tinyfam_nets.gated-4-s1", "not started"),
        ("tinyfam_nets.gated-6-s0", "done"), ("tinyfam_nets.gated-6-s1", "not started")]
    # --resume asks the user to name the family, and --kind then sets the sweep's kinds: the message names them all
    (tmp_path / "a" / "sweep.json").write_text(json.dumps({**saved, "kinds": ["tinyfam_nets:gated", "residual"]}))
    with pytest.raises(UserError, match=r"name the sweep's kinds yourself, --kind tinyfam_nets:gated,residual$"):
        load_saved_sweep(tmp_path / "a")
    from resdepth.cli.sweep import resume_command

    assert resume_command(replace(sweep, kinds=["tinyfam_nets:gated", "residual"])).endswith(
        "--kind tinyfam_nets:gated,residual")


def test_analyze_draws_the_gradients_of_a_family_without_response_layers(tmp_path, user_family, tiny_config,
                                                                        run_sweep_now, monkeypatch):
    # analyze gave nothing for such a family, not even the gradient norms its training had logged
    from resdepth.analysis.responses import analyze, build_figures, write_analysis

    sweep = SweepConfig(depths=[4], kinds=["tinyfam_nets:gated"], seeds=[0], out=str(tmp_path / "a"),
                        train=tiny_config())
    _, outcomes = run_sweep_now(sweep)
    assert {o.state for o in outcomes.values()} == {"done"}
    import tinyfam_nets

    monkeypatch.delattr(tinyfam_nets.Gated, "response_layers")
    analysis = analyze(load_runs(tmp_path / "a")[0])
    assert analysis.responses.empty and not analysis.gradients.empty
    assert any("has no response_layers() method" in note for note in analysis.notes)
    figures = build_figures(analysis)
    assert sorted(figures) == ["gradients-synthetic"]
    (tmp_path / "analysis").mkdir()
    written = write_analysis(analysis, figures, tmp_path / "analysis", ["png"])
    assert sorted(path.name for path in written) == ["gradients-synthetic.png", "gradients.csv"]


def test_a_family_by_entry_point_runs_through_the_command_line_with_its_paper_numbers(tmp_path, user_family,
                                                                                      run_cli, tiny_args):
    code, out, err = run_cli("models", "gated", "--depths", "4,5")
    assert code == 0, err
    assert "gated" in out and "2n+2 (n >= 1)" in out and "Lab 2025: 4" in out and "tinyfam-nets 0.1" in out
    assert "gated-4" in out and "gated: no 5-layer net (depths 2n+2 (n >= 1): try 4 or 6)" in out
    code, out, err = run_cli("models", "gated", "--depths", "5")  # nothing to list: a user error, as train's
    assert code == 2 and err == "error: gated: no 5-layer net (depths 2n+2 (n >= 1): try 4 or 6)\n", err
    args = ["sweep", "--kind", "gated", "--depths", "4,8", *tiny_args, "--epochs", "1", "--out", str(tmp_path)]
    code, _, err = run_cli(*args)
    assert code == 0, err
    config = json.loads((tmp_path / "gated-8-s0" / "config.json").read_text())
    assert config["resolved"]["family"]["source"]["distribution"] == "tinyfam-nets"
    assert config["resolved"]["family"]["reference"]["label"] == "Lab 2025"
    code, out, err = run_cli("table", str(tmp_path), "--markdown")
    assert code == 0 and "| kind | depth | params | runs |" in out and "paper Lab 2025 |" in out, err
    assert "| gated | 4 |" in out and "| 50.00‡ |" in out and "| gated | 8 |" in out and "| none |" in out
    assert "- paper: Lab et al. 2025, Table 1 (CIFAR-10)." in out and "- none: Lab 2025 has no 8-layer net" in out
    assert "‡ gated 4: not the paper's protocol, so no Δ: dataset synthetic (paper: CIFAR-10)" in out
    code, out, err = run_cli("plot", str(tmp_path))
    assert code == 0 and "figure1-gated-synthetic.png" in out and "figure6-synthetic.png" in out
    assert run_cli(*args).code == 0  # run again: every cell is skipped as done, nothing differs


def test_a_family_by_path_in_worker_processes_found_on_pythonpath_not_in_the_working_folder(
        tmp_path, user_family, resdepth_cli, tiny_args):
    out = tmp_path / "runs"
    env = dict(user_family.env)  # the folder is not on the path: only the working folder holds the module
    env["PYTHONPATH"] = os.pathsep.join(p for p in env["PYTHONPATH"].split(os.pathsep) if p != str(user_family.folder))
    command = [resdepth_cli, "sweep", "--kind", "tinyfam_nets:gated", "--depths", "4,6", *tiny_args, "--epochs", "1",
               "--jobs", "2", "--out", str(out)]
    refused = subprocess.run(command, cwd=user_family.folder, env=env, capture_output=True, text=True, timeout=300)
    assert refused.returncode == 2 and "cannot import family tinyfam_nets:gated" in refused.stderr
    assert not out.exists()  # the working folder may be a results folder others write: it is never searched
    env["PYTHONPATH"] = os.pathsep.join([".", env["PYTHONPATH"]])  # the user says where the module is
    done = subprocess.run(command, cwd=user_family.folder, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert all(json.loads((out / f"tinyfam_nets.gated-{d}-s0" / "status.json").read_text())["state"] == "done"
               for d in (4, 6))
    assert (out / "tinyfam_nets.gated-4-s0" / "worker.log").exists()  # it ran in a worker process


@pytest.mark.parametrize("kind, message", [
    ("preakt", "unknown kind 'preakt': did you mean preact? the families are plain, residual, preact, "
               "preact-bottleneck, gated (see `resdepth models`), or a builder by path, module.path:function"),
    ("tinyfam_broken:gated", "cannot import family tinyfam_broken:gated: ModuleNotFoundError: No module named "
                             "'tinyfam_no_such_module'"),
    ("tinyfam_nets:missing", "cannot load family tinyfam_nets:missing: module tinyfam_nets has no attribute 'missing'"),
    ("tinyfam_nets:broken", "family tinyfam_nets:broken could not build its 8-layer net: ValueError: no 8-layer "
                            "gated net today"),
    ("tinyfam_nets:wrong_shape", "family tinyfam_nets:wrong_shape at depth 8: one 32x32 image gives (1, 7), not 10 "
                                 "logits (shape (1, 10)): the builder must use its num_classes argument"),
    ("tinyfam_nets:not_a_builder", "family tinyfam_nets:not_a_builder is a int, not a network builder"),
    ("not a path:x", "--kind 'not a path:x' is not a family path: write module.path:function"),
])
def test_a_bad_family_is_one_line_exit_2_and_nothing_written(tmp_path, user_family, run_cli, kind, message):
    code, _, err = run_cli("sweep", "--kind", kind, "--depths", "8", "--dataset", "synthetic", "--out",
                             str(tmp_path / "never"))
    assert code == 2 and len(err.strip().splitlines()) == 1 and message in err, err
    assert not (tmp_path / "never").exists()


def test_an_entry_point_family_refuses_depths_its_rule_does_not_allow(tmp_path, user_family, run_cli):
    code, _, err = run_cli("train", "--kind", "gated", "--depth", "7", "--dataset", "synthetic", "--out",
                           str(tmp_path / "never"))
    assert code == 2 and "depth 7 is not of the form 2n+2 (n >= 1) for gated nets: try 6 or 8" in err
    assert get_family("gated").source.distribution == "tinyfam-nets" and not (tmp_path / "never").exists()


def test_results_of_an_earlier_version_plan_as_done_and_group_as_before(tmp_path, tiny_sweep, run_sweep_now):
    sweep = tiny_sweep(tmp_path)
    run_sweep_now(sweep)
    for name in ("plain-8-s0", "residual-8-s0"):  # as resdepth wrote them before families: shortcut A, no record
        path = tmp_path / name / "config.json"
        config = json.loads(path.read_text())
        config["shortcut"] = "A"
        del config["resolved"]["family"]
        path.write_text(json.dumps(config))
    assert [p.action for p in plan_sweep(sweep)] == ["skip-done", "skip-done"]
    summary = summarize(load_runs(tmp_path)[0])
    assert list(zip(summary["kind"], summary["shortcut"], strict=True)) == [("plain", ""), ("residual", "A")]


def test_a_broken_installed_family_is_a_warning_in_the_listing_and_records_never_break_reading(
        tmp_path, user_family, run_cli):
    dist = user_family.folder / "tinyfam_more-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: tinyfam-more\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[resdepth.families]\nbroken = tinyfam_broken:gated\n"
                                           "gated = tinyfam_nets:gated\n")
    code, _, err = run_cli("models", "broken")
    assert code == 2 and "warning: broken: cannot load family broken (tinyfam_broken:gated, tinyfam-more 0.1): " \
                         "ModuleNotFoundError" in err
    code, _, err = run_cli("train", "--kind", "gated", "--dataset", "synthetic", "--out", str(tmp_path / "never"))
    assert code == 2 and "family 'gated' is registered by several installed packages" in err
    with pytest.raises(UserError, match="Linear has no response_layers"):
        response_layers(nn.Linear(2, 2))
    broken = family_of_run({"kind": "mine:net", "resolved": {"family": {"reference": {"numbers": "x"}}}})
    assert broken.name == "mine:net" and broken.reference is None
    assert family_of_run({"kind": "residual"}).reference.label == "Table 6"  # a built-in one: by name
