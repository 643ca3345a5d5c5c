"""Sweeps over other axes than depth (`--grid`, `[grid]`): the cells and their configs, their folder names, resume,
the network width option, and the table, figures and report grouped by the axes."""

import json
import sys
from dataclasses import replace

import pytest
import torch

from resdepth.errors import UserError
from resdepth.models import count_parameters
from resdepth.models.families import build_network
from resdepth.results.plots import build_figures
from resdepth.results.report import build_report
from resdepth.results.runs import load_runs
from resdepth.results.tables import display_table, summarize, summarize_runs
from resdepth.sweep.runner import load_saved_sweep, load_sweep_file, make_cells, plan_sweep
from resdepth.train.trainer import run_training

GRID_CELLS = ["residual-8-lr0.1-w1-s0", "residual-8-lr0.1-w2-s0", "residual-8-lr0.05-w1-s0", "residual-8-lr0.05-w2-s0"]


@pytest.fixture
def grid_sweep(tmp_path, tiny_sweep):
    """residual-8 on the tiny config, lr 0.1/0.05 x width 1/2: four cells."""
    return lambda out: tiny_sweep(out, kinds=["residual"], grid={"lr": [0.1, 0.05], "width": [1, 2]})


# ---------------------------------------------------------------------------------------------- cells
def test_a_2x2_grid_gives_four_cells_with_their_configs_and_resumes_exactly(tmp_path, grid_sweep, run_sweep_now,
                                                                              assert_same_run):
    planned, outcomes = run_sweep_now(grid_sweep(tmp_path / "a"))
    assert [p.cell.name for p in planned] == GRID_CELLS and {o.state for o in outcomes.values()} == {"done"}
    configs = {name: json.loads((tmp_path / "a" / name / "config.json").read_text()) for name in GRID_CELLS}
    assert [(c["lr"], c["options"]) for c in configs.values()] == [
        (0.1, {}), (0.1, {"width": 2}), (0.05, {}), (0.05, {"width": 2})]  # width 1 is the paper's net: not stored
    assert [c["resolved"]["params"] for c in configs.values()] == [
        count_parameters(build_network("residual", 8, net_options={"width": w})) for w in (1, 2, 1, 2)]
    assert configs[GRID_CELLS[0]]["resolved"]["params"] < configs[GRID_CELLS[1]]["resolved"]["params"]
    # the grid is saved with the sweep: --resume rebuilds the same cells
    assert [c.name for c in make_cells(load_saved_sweep(tmp_path / "a"))] == GRID_CELLS
    # one cell stopped after a few steps, then the sweep again: the others start, it resumes, all as in "a"
    cut = grid_sweep(tmp_path / "b")
    cell = plan_sweep(cut)[3].cell
    steps = []
    assert run_training(cell.config, cell.run_dir, should_stop=lambda: steps.append(1) or len(steps) > 3).state == \
        "interrupted"
    planned, outcomes = run_sweep_now(cut)
    assert [p.action for p in planned] == ["new", "new", "new", "resume"]
    for name in GRID_CELLS:
        assert_same_run(tmp_path / "a" / name, tmp_path / "b" / name)
    assert [p.action for p in plan_sweep(cut)] == ["skip-done"] * 4


def test_a_grid_given_out_of_alphabetical_order_resumes_its_own_cells(tmp_path, tiny_sweep, run_sweep_now):
    # sweep.json had saved the grid's keys sorted, so --resume and status named every cell lr...-w... and planned
    # all of them again beside the finished w...-lr... folders
    sweep = tiny_sweep(tmp_path, kinds=["residual"], grid={"width": [2], "lr": [0.05, 0.1]})
    planned, _ = run_sweep_now(sweep)
    names = ["residual-8-w2-lr0.05-s0", "residual-8-w2-lr0.1-s0"]
    assert [p.cell.name for p in planned] == names
    assert list(json.loads((tmp_path / "sweep.json").read_text())["grid"]) == ["width", "lr"]
    assert [(p.cell.name, p.action) for p in plan_sweep(load_saved_sweep(tmp_path))] == [
        (name, "skip-done") for name in names]
    # a sweep.json written sorted (before the order was kept), or the same grid given in the other order
    for grid in ({"lr": [0.05, 0.1], "width": [2]}, {"width": [2], "lr": [0.05, 0.1]}):
        again = replace(sweep, grid=grid)
        assert sorted((p.cell.name, p.action) for p in plan_sweep(again)) == [(n, "skip-done") for n in names]


def test_without_a_grid_names_are_unchanged_and_only_seeds_fuse(tmp_path, tiny_sweep):
    assert [c.name for c in make_cells(tiny_sweep(tmp_path))] == ["plain-8-s0", "residual-8-s0"]
    # a width other than 1 is in the name like a shortcut other than the default, grid or not
    wide = tiny_sweep(tmp_path, train=replace(tiny_sweep(tmp_path).train, options={"width": 2}))
    assert [c.name for c in make_cells(wide)] == ["plain-8-w2-s0", "residual-8-w2-s0"]
    fused = tiny_sweep(tmp_path, kinds=["residual"], seeds=[0, 1], fuse="4", grid={"lr": [0.1, 0.05]})
    groups = [p.group for p in plan_sweep(fused)]
    assert groups == ["residual-8-lr0.1-s0+s1"] * 2 + ["residual-8-lr0.05-s0+s1"] * 2  # never lr 0.1 with 0.05


def test_an_axis_a_family_does_not_take_makes_its_cells_once(tmp_path, tiny_sweep):
    # plain nets have no shortcut: one plain cell, residual ones with A (the default, unnamed) and B
    sweep = tiny_sweep(tmp_path, grid={"shortcut": ["A", "B"]})
    assert [c.name for c in make_cells(sweep)] == ["plain-8-s0", "residual-8-s0", "residual-8-B-s0"]


def test_data_fields_and_strings_are_axes_too(tmp_path, tiny_sweep, tiny_config):
    sweep = tiny_sweep(tmp_path, kinds=["plain"], grid={"val_size": [0, 32], "precision": ["fp32", "bf16"]})
    cells = make_cells(sweep)
    assert [c.name for c in cells] == ["plain-8-val0-fp32-s0", "plain-8-val0-bf16-s0", "plain-8-val32-fp32-s0",
                                       "plain-8-val32-bf16-s0"]
    assert [(c.config.data.val_size, c.config.precision) for c in cells] == [
        (0, "fp32"), (0, "bf16"), (32, "fp32"), (32, "bf16")]


def test_a_user_family_declares_its_own_option_and_sweeps_it(tmp_path, tiny_sweep, monkeypatch):
    (tmp_path / "wide_nets.py").write_text(
        "from torch import nn\n"
        "from resdepth.models.families import DepthRule, Family, NetOption\n\n"
        "def build(depth, num_classes=10, channels=8):\n"
        "    return nn.Sequential(nn.Conv2d(3, channels, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(),\n"
        "                         nn.Linear(channels, num_classes))\n\n"
        "family = Family('wide', build, DepthRule(2, 2), net_options=(NetOption('channels', 8, 'Filters.', 1),))\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        sweep = tiny_sweep(tmp_path / "out", kinds=["wide_nets:family"], depths=[4], grid={"channels": [4, 8]})
        cells = make_cells(sweep)
        assert [c.name for c in cells] == ["wide_nets.family-4-channels4-s0", "wide_nets.family-4-channels8-s0"]
        plan_sweep(sweep)  # each option value built and checked
        with pytest.raises(UserError, match="option channels must be at least 1, got 0"):
            plan_sweep(tiny_sweep(tmp_path / "out", kinds=["wide_nets:family"], depths=[4], grid={"channels": [0]}))
    finally:
        sys.modules.pop("wide_nets", None)


# ---------------------------------------------------------------------------------------------- width
def test_a_width_2_net_has_the_wide_resnet_parameter_count():
    # residual-20 (option A) at k = 2: stem 3x3x3x16 + BN; stage 1: 16->32 then 32->32 convs; stages 2 and 3 as
    # stage 1 at 64 and 128 filters (3 blocks of two 3x3 convs each, BN after each); FC 128 -> 10
    stage = [(16, 32), (32, 64), (64, 128)]
    expected = 3 * 16 * 9 + 2 * 16 + 128 * 10 + 10
    for inner, planes in stage:
        expected += inner * planes * 9 + planes * planes * 9 * 5 + 6 * 2 * planes
    assert expected == 1_068_890
    assert count_parameters(build_network("residual", 20, net_options={"width": 2})) == expected
    assert count_parameters(build_network("plain", 20, net_options={"width": 2})) == expected  # twins under A
    assert count_parameters(build_network("residual", 20)) == 269_722  # the paper's 0.27M, unchanged


def test_widths_as_wide_resnets_build_and_run(tmp_path):
    for kind in ("residual", "preact"):
        net = build_network(kind, 8, shortcut="B", net_options={"width": 4}).eval()
        assert net(torch.zeros(2, 3, 32, 32)).shape == (2, 10)
        assert net.layer3[0].conv2.out_channels == 256
    with pytest.raises(UserError, match="option width must be at least 1, got 0"):
        build_network("residual", 8, net_options={"width": 0})


# ---------------------------------------------------------------------------------------------- refusals
@pytest.mark.parametrize(("args", "message"), [
    (["--grid", "lrr=0.1,0.05"], "--grid lrr: unknown key: did you mean lr? sweep a training or data field"),
    (["--grid", "lr=0.1,fast"], "--grid lr: expected float, got 'fast'"),
    (["--grid", "batch_size=64,0.5"], "--grid batch_size: expected int, got '0.5'"),
    (["--grid", "depth=20,56"], "--grid depth: depth is a sweep axis of its own: give its values with --depths"),
    (["--grid", "threads=1,2"], "--grid threads: threads says how a run executes"),
    (["--grid", "lr=0.1,,0.05"], "has an empty value"),
    (["--grid", "lr=0.1,0.1"], "--grid lr lists 0.1 more than once"),
    (["--grid", "lr=-0.1"], "--lr must be a positive number, got -0.1"),
    (["--grid", "precision=fp64"], "unknown precision 'fp64'"),
    (["--grid", "width=1,0"], "option width must be at least 1, got 0"),
    (["--grid", "lr"], "--grid 'lr': write KEY=V1,V2"),
    (["--width", "0"], "option width must be at least 1, got 0"),
])
def test_a_bad_grid_key_or_value_is_one_line_and_exit_2(tmp_path, run_cli, tiny_args, args, message):
    code, _, err = run_cli("sweep", "--depths", "8", *tiny_args, "--out", str(tmp_path / "r"), "--dry-run", *args)
    assert code == 2 and err.count("\n") == 1 and message in err, err
    assert not (tmp_path / "r").exists()


def test_a_sweep_file_grid_is_typed_like_its_fields(tmp_path):
    good = tmp_path / "good.toml"
    good.write_text('depths = [8]\nkinds = ["plain"]\n[grid]\nlr = [0.1, 0.05]\nwidth = [1, 2]\n[data]\n'
                    'dataset = "synthetic"\n')
    sweep = load_sweep_file(good)
    assert [c.name for c in make_cells(sweep)][:2] == ["plain-8-lr0.1-w1-s0", "plain-8-lr0.1-w2-s0"]
    bad = tmp_path / "bad.toml"
    bad.write_text('depths = [8]\n[grid]\nlr = ["0.1"]\n')
    with pytest.raises(UserError, match=r"--grid lr: expected float, got '0\.1'"):
        make_cells(load_sweep_file(bad))


# ---------------------------------------------------------------------------------------------- reading
def test_a_grid_is_grouped_by_its_axes_in_table_csv_figures_and_report(tmp_path, grid_sweep, run_sweep_now, run_cli):
    run_sweep_now(grid_sweep(tmp_path))
    runs = load_runs(tmp_path)[0]
    summary = summarize(runs)
    assert list(summary.columns[:4]) == ["dataset", "setting", "lr", "width"]
    assert [(r.lr, r.width, r.runs) for r in summary.itertuples()] == [
        ("0.05", "1", 1), ("0.05", "2", 1), ("0.1", "1", 1), ("0.1", "2", 1)]
    assert summary["params"].tolist()[:2] == [count_parameters(build_network("residual", 8, net_options={"width": w}))
                                              for w in (1, 2)]
    assert "width 2 (paper: 1)" in summary["protocol_differences"].iloc[1]
    assert list(summarize_runs(runs).columns[:4]) == ["dataset", "setting", "lr", "width"]
    headers, rows, _ = display_table(summary)
    assert headers[:3] == ["lr", "width", "kind"] and rows[0][:3] == ["0.05", "1", "residual"]
    code, _, err = run_cli("table", str(tmp_path), "--csv", str(tmp_path / "t.csv"))
    assert code == 0, err
    assert (tmp_path / "t.csv").read_text().splitlines()[0].startswith("dataset,setting,lr,width,kind,")
    figures = build_figures(runs)
    facets = figures["figure6-synthetic-by-lr_width"]
    assert [axes.get_title() for axes in facets.axes] == [
        "residual nets: lr 0.05, width 1", "residual nets: lr 0.05, width 2", "residual nets: lr 0.1, width 1",
        "residual nets: lr 0.1, width 2"]
    assert "figure6-synthetic-lr0.05_width2" in figures  # and each setting's own Figure 6, as before
    page, _ = build_report(tmp_path, tmp_path / "report.html")
    assert "<th class='num'>lr</th>" in page and "<th class='num'>width</th>" in page and "lr 0.05, width 2" in page
    code, out, err = run_cli("status", str(tmp_path))  # status and a dry run of --resume see the grid's cells
    assert code == 0 and all(name in out for name in GRID_CELLS) and "4 done" in out, err
    code, out, err = run_cli("sweep", "--resume", str(tmp_path), "--dry-run")
    assert code == 0 and out.count("skip-done") == 4, err


def test_a_wide_run_is_loaded_back_and_constructed_at_its_width(tmp_path, tiny_config):
    from resdepth.train.construct import construct_from_run, read_saved_net

    run_dir = tmp_path / "residual-8-w2-s0"
    assert run_training(tiny_config(options={"width": 2}), run_dir).state == "done"
    assert read_saved_net(run_dir).load(torch.device("cpu")).layer3[0].conv2.out_channels == 128
    built = construct_from_run(run_dir, 14, tmp_path / "c", torch.device("cpu"))
    assert all(c.disagreements == 0 for c in built.comparisons)
    assert "--width=2" in built.train_args
    assert read_saved_net(built.out_dir).load(torch.device("cpu")).layer1[0].conv1.out_channels == 32


def test_models_shows_parameters_and_flops_by_depth_and_width(run_cli):
    code, out, err = run_cli("models", "residual", "--depths", "20", "--widths", "1,2")
    assert code == 0, err
    assert "residual-20-w1" in out and "269,722" in out and "residual-20-w2" in out and "1,068,890" in out
    assert "width (default 1)" in out  # the family table names its options
    code, _, err = run_cli("models", "residual", "--widths", "1,x")
    assert code == 2 and "--widths expects a comma-separated list of ints" in err


def test_two_values_that_read_the_same_in_a_folder_name_are_refused(tmp_path, tiny_sweep):
    with pytest.raises(UserError, match=r"two cells of the grid would share the folder plain-8-inita\.b-s0"):
        make_cells(tiny_sweep(tmp_path, kinds=["plain"], grid={"init": ["a b", "a/b"]}))


def test_a_dry_run_times_each_width_apart(tmp_path, tiny_sweep):
    from resdepth.bench.estimate import estimate_plan, read_speeds

    sweep = tiny_sweep(tmp_path, kinds=["residual"], grid={"width": [1, 4]})
    plan = estimate_plan(sweep, plan_sweep(sweep))
    narrow, wide = (plan.cells[name].speed for name in ("residual-8-w1-s0", "residual-8-w4-s0"))
    assert narrow.images_per_second > wide.images_per_second  # each probed with its own net
    keys = [json.loads(key) for key in read_speeds()]
    assert sorted(key.get("options", {}).get("width", 1) for key in keys) == [1, 4]


def test_the_paper_number_and_delta_stand_only_beside_the_papers_axis_values(tmp_path, write_run, run_cli):
    for lr in (0.1, 0.05):  # residual-20 on CIFAR-10 at the paper's protocol, but for the lr
        write_run(tmp_path / f"lr{lr}", "residual", 20, test=(50.0, 9.0), iterations=64000, lr=lr)
    summary = summarize(load_runs(tmp_path)[0])
    assert [(r.lr, r.paper_test_error, r.vs_paper) for r in summary.fillna(-1).itertuples()] == [
        ("0.05", -1, -1), ("0.1", 8.75, pytest.approx(0.25))]
    headers, rows, notes = display_table(summary)
    paper = headers.index("paper Table 6")
    assert [row[paper] for row in rows] == ["none", "8.75"]
    assert any("Table 6 gives numbers at its own values of lr only" in note for note in notes)


def test_analyze_and_lesion_csvs_have_a_column_per_axis_as_the_table_has(tmp_path, grid_sweep, run_sweep_now):
    from resdepth.analysis.lesion import LesionConfig, lesion_runs
    from resdepth.analysis.responses import analyze

    run_sweep_now(grid_sweep(tmp_path))
    runs = load_runs(tmp_path)[0]
    analysis = analyze(runs, images=16)
    lesions = lesion_runs(runs, LesionConfig(images=16, max_k=1, draws=1, seed=0, batch_size=16))
    for frame in (analysis.responses, analysis.gradients, lesions.table):  # lr: the epoch's lr in gradients
        assert list(frame.columns[:5]) == ["dataset", "setting", "axis_lr", "width", "kind"]
        rows = frame.drop_duplicates(["axis_lr", "width"])
        assert sorted(zip(rows["axis_lr"], rows["width"], strict=True)) == [
            ("0.05", "1"), ("0.05", "2"), ("0.1", "1"), ("0.1", "2")]
    top = analysis.gradients.groupby("axis_lr")["lr"].max()  # the epochs' lr starts at the axis's value
    assert {axis: float(axis) for axis in top.index} == top.to_dict()


def test_a_grid_value_the_dataset_cannot_give_is_refused_before_any_cell_starts(tmp_path, run_cli, tiny_args):
    # --train-size 2000 alone was refused, but as a grid value its cell failed after the others had trained; and
    # the dry run estimated every cell from the sweep's own split sizes
    args = ["sweep", "--kind", "residual", "--depths", "8", "--epochs", "1", *tiny_args, "--out", str(tmp_path / "r")]
    for dry in (["--dry-run"], []):
        code, out, err = run_cli(*args, "--grid", "train_size=64,2000", *dry)
        assert code == 2 and err.strip() == ("error: cell residual-8-train2000-s0: --train-size 2000 is more than the "
                                             "128 train images of synthetic: ask for at most 128, or leave it out for "
                                             "all"), (out, err)
        assert not (tmp_path / "r").exists()
    code, out, _ = run_cli(*args, "--grid", "train_size=64,96", "--dry-run", columns=200)
    assert code == 0 and "residual-8-train64-s0" in out
    iterations = {line.split("│")[1].strip(): line.split("│")[4].strip() for line in out.splitlines()
                  if "train64" in line or "train96" in line}
    assert iterations == {"residual-8-train64-s0": "2", "residual-8-train96-s0": "3"}, out


def test_the_grids_own_axes_count_toward_the_cell_limit(tmp_path, tiny_sweep):
    values = [round(0.001 * i, 3) for i in range(1, 121)]
    sweep = tiny_sweep(tmp_path, grid={"lr": values, "momentum": values})  # 28,800 cells: minutes to plan
    with pytest.raises(UserError, match=r"the sweep has 28,800 cells \(1 depths x 2 kinds x 1 seeds x 120 lr values x "
                                        r"120 momentum values\): at most 10,000"):
        sweep.validate()
