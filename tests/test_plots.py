"""Figures from hand-made results folders: the drawn lines are the CSV numbers, seeds are averaged, the panels,
legends, labels and y range are as the paper's, and `resdepth plot` writes the files or fails in one line."""

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from resdepth.errors import UserError
from resdepth.results.plots import (
    MARKED_POINTS,
    build_figures,
    group_curves,
    paper_tick_notes,
    parse_formats,
    plot_figure1,
    plot_figure6,
    save_figures,
)
from resdepth.results.runs import load_runs


@pytest.fixture
def paper_like(tmp_path, write_run) -> Path:
    """plain and residual at 20 and 56 layers, one seed each, curves ending inside 0-20%."""
    write_run(tmp_path, "plain", 20, test=(40.0, 12.0, 9.0), train=(45.0, 8.0, 4.0))
    write_run(tmp_path, "plain", 56, test=(50.0, 15.0, 12.0), train=(55.0, 10.0, 7.0))
    write_run(tmp_path, "residual", 20, test=(38.0, 11.0, 8.5), train=(43.0, 7.0, 3.0))
    write_run(tmp_path, "residual", 56, test=(36.0, 10.0, 7.0), train=(41.0, 5.0, 1.0))
    return tmp_path


def lines_by_label(axes) -> dict[str, object]:
    return {line.get_label(): line for line in axes.get_lines()}


def curve_lines(axes) -> list:
    """The error curves of a panel, without the marks (unfinished ends, warm-up ends, the paper's ticks)."""
    return [line for line in axes.get_lines() if not line.get_label().startswith("_")]


def no_marker(line) -> bool:
    return line.get_marker() in (None, "None", "")


def legend_texts(figure) -> list[str]:
    """The legend's entries in reading order (left to right, then the next row), as they were given."""
    [legend] = figure.legends
    texts = [text.get_text() for text in legend.get_texts()]
    columns = [list(column) for column in np.array_split(np.array(texts, dtype=object), legend._ncols)]
    return [column[row] for row in range(len(columns[0])) for column in columns if row < len(column)]


def test_figure6_draws_the_csv_numbers_dashed_train_bold_test(paper_like):
    runs, _ = load_runs(paper_like)
    figure = plot_figure6(runs)
    plain, residual = figure.axes
    assert [plain.get_title(), residual.get_title()] == ["plain nets", "residual nets"]
    assert plain.get_xlabel() == residual.get_xlabel() == "iter. (1e4)" and plain.get_ylabel() == "error (%)"
    assert len(curve_lines(plain)) == len(curve_lines(residual)) == 4  # train + test per depth
    assert legend_texts(figure) == ["20-layer", "56-layer", "training error",
                                    "test error"]  # one legend for both panels
    csv = pd.read_csv(paper_like / "plain-56-s0" / "metrics.csv")
    test, train = lines_by_label(plain)["plain-56 test_error"], lines_by_label(plain)["plain-56 train_error"]
    assert test.get_xdata().tolist() == (csv["iteration"] / 1e4).tolist() == [1.0, 2.0, 3.0]
    assert test.get_ydata().tolist() == csv["test_error"].tolist()
    assert train.get_ydata().tolist() == csv["train_error"].tolist() and train.get_linestyle() == "--"
    assert test.get_linestyle() == "-" and test.get_linewidth() > train.get_linewidth()
    assert test.get_color() == lines_by_label(residual)["residual-56 test_error"].get_color()  # a colour per depth
    assert test.get_color() != lines_by_label(plain)["plain-20 test_error"].get_color()
    assert plain.get_ylim() == residual.get_ylim() == (0.0, 20.0)  # the paper's range: every curve ends below 20%
    assert not plain.collections  # one seed: no spread band


def test_a_plain_110_stuck_above_60_percent_keeps_the_papers_axis_and_is_named(paper_like, tmp_path, write_run):
    write_run(paper_like, "plain", 110, test=(90.0, 70.0, 65.0), train=(90.0, 68.0, 63.0))  # as §4.2's plain-110
    write_run(paper_like, "residual", 110, test=(40.0, 10.0, 7.0), train=(45.0, 5.0, 1.0))
    figure = plot_figure6(load_runs(paper_like)[0])
    plain, residual = figure.axes
    assert plain.get_ylim() == residual.get_ylim() == (0.0, 20.0)  # 5 of 6 curves end inside: the paper's range
    assert [t.get_text() for t in plain.texts] == ["plain-110 ends above the axis:\ntrain 63.0%, test 65.0%"]
    assert not residual.texts and "plain-110 test_error" in lines_by_label(plain)  # still drawn (clipped)
    figure.savefig(tmp_path / "f6.png")  # the note fits the figure as drawn


def test_figure1_training_error_left_test_error_right_for_each_kind(paper_like):
    runs, _ = load_runs(paper_like)
    figure = plot_figure1(runs, "plain")
    train_axes, test_axes = figure.axes
    assert "training error" in train_axes.get_title() and "test error" in test_axes.get_title()
    assert legend_texts(figure) == ["20-layer", "56-layer"]  # one metric per panel: no line-style key
    assert train_axes.get_xlabel() == "iter. (1e4)" and train_axes.get_ylabel() == "error (%)"
    csv = pd.read_csv(paper_like / "plain-20-s0" / "metrics.csv")
    assert lines_by_label(train_axes)["plain-20 train_error"].get_ydata().tolist() == csv["train_error"].tolist()
    assert lines_by_label(test_axes)["plain-20 test_error"].get_ydata().tolist() == csv["test_error"].tolist()
    assert len(curve_lines(train_axes)) == len(curve_lines(test_axes)) == 2
    residual_titles = [axes.get_title() for axes in plot_figure1(runs, "residual").axes]
    assert residual_titles == ["residual nets: training error", "residual nets: test error"]


def test_seeds_are_averaged_with_a_band_for_their_range(tmp_path, write_run):
    write_run(tmp_path, "plain", 20, seed=0, test=(60.0, 30.0, 10.0), train=(70.0, 40.0, 20.0))
    write_run(tmp_path, "plain", 20, seed=1, test=(80.0, 40.0, 14.0), train=(90.0, 50.0, 30.0))
    runs, _ = load_runs(tmp_path)
    [curve] = group_curves(runs)
    assert curve.frame["test_error_mean"].tolist() == [70.0, 35.0, 12.0]
    assert curve.frame["runs"].tolist() == [2, 2, 2]
    panel = plot_figure6(runs).axes[0]
    assert lines_by_label(panel)["plain-20 test_error"].get_ydata().tolist() == [70.0, 35.0, 12.0]
    assert lines_by_label(panel)["plain-20 train_error"].get_ydata().tolist() == [80.0, 45.0, 25.0]
    assert len(panel.collections) == 2  # a band for train and one for test
    band = panel.collections[1].get_paths()[0].vertices
    assert {60.0, 80.0, 30.0, 40.0, 10.0, 14.0} <= set(band[:, 1].round(6))
    assert panel.get_ylim() == (0.0, 100.0)  # curves end above 20%: automatic range (next 10% above the max)


def test_unfinished_runs_are_drawn_apart_from_the_finished_seeds_mean_and_marked_by_how_they_ended(tmp_path,
                                                                                                      write_run):
    # the mean had taken a stopped seed in for its first epochs (a kink where it left) and the circle sat at the
    # finished seed's end; the table counts finished runs only, and now the figure does too
    write_run(tmp_path, "residual", 20, seed=0, test=(40.0, 12.0, 8.0))
    write_run(tmp_path, "residual", 20, seed=1, test=(42.0,), state="running", planned_epochs=3)
    write_run(tmp_path, "residual", 32, seed=0, test=(30.0, 10.0, 7.0), state=None)  # copied: no status.json
    write_run(tmp_path, "residual", 44, seed=0, test=(45.0, 30.0), state="interrupted", planned_epochs=3)
    write_run(tmp_path, "residual", 44, seed=1, test=(47.0,), state="interrupted", planned_epochs=3)
    write_run(tmp_path, "residual", 56, seed=0, test=(50.0, math.nan), state="diverged", planned_epochs=3)
    runs, _ = load_runs(tmp_path)
    figure = plot_figure6(runs)
    texts = legend_texts(figure)
    assert texts[:4] == ["20-layer", "32-layer", "44-layer", "56-layer"]
    assert {"stopped run (not averaged)", "unfinished (resumable)", "diverged or failed", "range of 2 seeds"} <= set(
        texts)
    panel = lines_by_label(figure.axes[0])
    assert panel["residual-20 test_error"].get_ydata().tolist() == [40.0, 12.0, 8.0]  # the finished seed alone
    assert "_unfinished residual-20 test_error" in panel  # the stopped seed's own end, not the mean's
    stopped = [line for line in figure.axes[0].get_lines() if line.get_label() == "_stopped residual-20 test_error"]
    assert [line.get_ydata().tolist() for line in stopped] == [[42.0]]
    end = panel["_unfinished residual-20 test_error"]
    assert end.get_marker() == "o" and end.get_markerfacecolor() == "white" and end.get_ydata().tolist() == [42.0]
    assert panel["residual-44 test_error"].get_ydata().tolist() == [46.0, 30.0]  # none finished: the mean of all
    assert panel["_unfinished residual-44 test_error"].get_ydata().tolist() == [30.0]
    assert panel["_broken residual-56 test_error"].get_marker() == "X"  # diverged: it cannot go on as it is
    assert "_unfinished residual-32 test_error" not in panel
    only_32 = legend_texts(plot_figure6([r for r in runs if r.setting("depth") == 32]))
    assert not {"unfinished (resumable)", "stopped run (not averaged)", "range of 2 seeds"} & set(only_32)


def test_a_depth_has_one_colour_in_every_folders_figures(tmp_path, write_run):
    # colours went by position among a folder's depths: 14 layers were orange in one folder and blue in another
    for depth in (14, 20, 56):
        write_run(tmp_path / "all", "residual", depth)
    write_run(tmp_path / "some", "residual", 56)
    write_run(tmp_path / "some", "residual", 14)
    colours = {}
    for folder in ("all", "some"):
        panel = lines_by_label(plot_figure6(load_runs(tmp_path / folder)[0]).axes[0])
        colours[folder] = {depth: panel[f"residual-{depth} test_error"].get_color() for depth in (14, 56)}
    assert colours["all"] == colours["some"] and len(set(colours["all"].values())) == 2


def test_epoch_axis_and_plain_iterations_for_short_runs(tmp_path, write_run):
    write_run(tmp_path, "plain", 8, test=(80.0, 70.0), step=11, dataset="synthetic")
    runs, _ = load_runs(tmp_path)
    by_epoch = plot_figure6(runs, x="epochs").axes[0]
    assert by_epoch.get_xlabel() == "epoch" and by_epoch.get_lines()[1].get_xdata().tolist() == [1, 2]
    by_iteration = plot_figure6(runs).axes[0]
    assert by_iteration.get_xlabel() == "iterations" and by_iteration.get_lines()[1].get_xdata().tolist() == [11, 22]
    assert by_iteration.get_lines()[0].get_marker() == "s" and by_iteration.get_lines()[1].get_marker() == "o"
    with pytest.raises(UserError, match="unknown x axis"):
        plot_figure6(runs, x="seconds")


def test_build_figures_names_one_set_per_dataset_and_save_writes_every_format(tmp_path, paper_like, write_run):
    write_run(paper_like / "other", "plain", 8, dataset="synthetic")
    runs, _ = load_runs(paper_like)
    figures = build_figures(runs)
    assert sorted(figures) == ["figure1-plain-cifar10", "figure1-plain-synthetic", "figure1-residual-cifar10",
                               "figure6-cifar10", "figure6-synthetic"]
    assert len(figures["figure6-synthetic"].axes) == 1  # only the kinds that have runs
    assert sorted(build_figures(runs, x="epochs")) == sorted(f"{name}-epochs" for name in figures)
    out = tmp_path / "out"
    out.mkdir()
    paths = save_figures({"figure6-cifar10": figures["figure6-cifar10"]}, out, parse_formats("png, PDF,svg"))
    assert [p.name for p in paths] == ["figure6-cifar10.png", "figure6-cifar10.pdf", "figure6-cifar10.svg"]
    assert all(p.stat().st_size > 1000 for p in paths)
    assert paths[0].read_bytes().startswith(b"\x89PNG")
    with pytest.raises(UserError, match="unknown figure format jpg"):
        parse_formats("png,jpg")
    with pytest.raises(ValueError, match="several datasets"):
        plot_figure6(runs)  # the single-figure builders take one dataset's runs


def test_two_sweeps_trained_differently_get_figures_of_their_own(paper_like, write_run):
    other = write_run(paper_like / "longer", "plain", 20, test=(40.0, 12.0, 9.0))
    config = json.loads((other / "config.json").read_text())
    (other / "config.json").write_text(json.dumps({**config, "resolved": {**config["resolved"], "iterations": 60000}}))
    figures = build_figures(load_runs(paper_like)[0])
    assert sorted(n for n in figures if n.startswith("figure6")) == [
        "figure6-cifar10-by-iterations", "figure6-cifar10-iterations30000", "figure6-cifar10-iterations60000"]
    # and both side by side: a panel column per setting, titled with its value
    assert [axes.get_title() for axes in figures["figure6-cifar10-by-iterations"].axes] == [
        "plain nets: iterations 30000", "plain nets: iterations 60000", "residual nets: iterations 30000",
        "residual nets: iterations 60000"]
    assert "no runs" in [text.get_text() for text in figures["figure6-cifar10-by-iterations"].axes[3].texts]
    assert "(iterations 60000)" in figures["figure6-cifar10-iterations60000"]._suptitle.get_text()
    assert len(figures["figure6-cifar10-iterations30000"].axes[0].lines) >= 4  # plain-20 and -56, train and test


def test_cli_plot_writes_and_prints_the_files_and_warns_about_a_corrupt_run(paper_like, run_cli):
    corrupt = paper_like / "plain-32-s0"
    corrupt.mkdir()
    (corrupt / "config.json").write_text(json.dumps({"kind": "plain", "depth": 32}))
    (corrupt / "metrics.csv").write_bytes(b"\x00\xff garbage")
    code, out, err = run_cli("plot", str(paper_like), "--format", "png,pdf")
    assert code == 0, err
    printed = [Path(line) for line in out.split()]
    assert len(printed) == 6 and all(p.parent == paper_like / "plots" and p.stat().st_size > 0 for p in printed)
    assert (paper_like / "plots" / "figure6-cifar10.pdf") in printed
    warnings = [line for line in err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "plain-32-s0" in warnings[0]


@pytest.mark.parametrize("setup, message", [
    ("empty", "no runs found under"),
    ("all corrupt", "no readable runs under"),
    ("missing", "does not exist"),
])
def test_cli_plot_without_readable_runs_is_one_line_and_exit_2(tmp_path, setup, message, write_run, run_cli):
    root = tmp_path / "results"
    if setup != "missing":
        root.mkdir()
    if setup == "all corrupt":
        write_run(root, "plain", 20)
        (root / "plain-20-s0" / "metrics.csv").write_text("")
    code, out, err = run_cli("plot", str(root))
    assert code == 2 and message in err and "Traceback" not in err and out == ""
    assert not (root / "plots").exists()


def test_cli_plot_rejects_an_unknown_format_or_axis_before_reading(paper_like, run_cli):
    code, _, err = run_cli("plot", str(paper_like), "--format", "bmp")
    assert code == 2 and "unknown figure format bmp" in err
    code, _, err = run_cli("plot", str(paper_like), "--x", "time", "--out", str(paper_like / "f"))
    assert code == 2 and "unknown x axis 'time'" in err


def test_few_points_are_marked_so_a_short_runs_lines_stay_visible_and_long_runs_are_plain_lines(tmp_path, write_run):
    write_run(tmp_path, "plain", 8, test=(80.0, 70.0, 60.0), train=(80.0, 70.0, 60.0), dataset="synthetic")  # on top
    write_run(tmp_path / "long", "plain", 8, test=tuple(np.linspace(80, 40, MARKED_POINTS + 1)), dataset="synthetic")
    short = lines_by_label(plot_figure6(load_runs(tmp_path / "plain-8-s0")[0]).axes[0])
    assert short["plain-8 train_error"].get_marker() == "s" and short["plain-8 test_error"].get_marker() == "o"
    long = lines_by_label(plot_figure6(load_runs(tmp_path / "long")[0]).axes[0])
    assert no_marker(long["plain-8 train_error"]) and no_marker(long["plain-8 test_error"])


def test_validation_error_is_a_dotted_third_line_in_figures_1_and_6(tmp_path, write_run):
    for seed, val in ((0, (45.0, 14.0, 10.0)), (1, (47.0, 16.0, 12.0))):
        write_run(tmp_path, "plain", 20, seed=seed, test=(40.0, 12.0, 9.0), val=val)
    write_run(tmp_path, "residual", 20, test=(40.0, 12.0, 9.0), val=(44.0, 13.0, 9.5))
    runs, _ = load_runs(tmp_path)
    figure = plot_figure6(runs)
    val = lines_by_label(figure.axes[0])["plain-20 val_error"]
    assert val.get_linestyle() == ":" and val.get_ydata().tolist() == [46.0, 15.0, 11.0]  # the mean over seeds
    assert len(figure.axes[0].collections) == 2  # bands for training and test error only
    assert legend_texts(figure)[-4:] == ["training error", "test error", "validation error", "range of 2 seeds"]
    assert "dotted = validation error" in figure._suptitle.get_text()
    train_axes, test_axes = plot_figure1(runs, "plain").axes
    assert lines_by_label(test_axes)["plain-20 val_error"].get_linestyle() == ":"
    assert "plain-20 val_error" not in lines_by_label(train_axes) and "validation" in test_axes.get_title()
    assert legend_texts(plot_figure1(runs, "plain"))[-3:] == ["test error", "validation error", "range of 2 seeds"]


def test_resnet_110_and_1202_get_the_papers_third_panel(tmp_path, write_run):
    for depth in (20, 56, 110, 1202):
        write_run(tmp_path, "residual", depth, test=(40.0, 10.0, 7.0))
    write_run(tmp_path, "plain", 20, test=(40.0, 10.0, 8.0))
    figure = plot_figure6(load_runs(tmp_path)[0])
    plain, residual, deepest = figure.axes
    assert deepest.get_title() == "residual nets: 110 vs 1202 layers"
    assert {line.get_label().split()[0] for line in curve_lines(residual)} == {"residual-20", "residual-56",
                                                                               "residual-110"}
    assert {line.get_label().split()[0] for line in curve_lines(deepest)} == {"residual-110", "residual-1202"}
    assert deepest.get_ylim() == residual.get_ylim() == plain.get_ylim()
    colour = lambda axes, name: lines_by_label(axes)[f"{name} test_error"].get_color()  # noqa: E731
    assert colour(residual, "residual-110") == colour(deepest, "residual-110")
    without_110 = [run for run in load_runs(tmp_path)[0] if run.setting("depth") != 110]
    assert len(plot_figure6(without_110).axes) == 2  # 1202 alone stays in the residual panel
    assert "residual-1202 test_error" in lines_by_label(plot_figure6(without_110).axes[1])


@pytest.fixture
def paper_protocol_runs(tmp_path, write_run) -> Path:
    """Residual nets at 20, 56, 110 and 1202 layers as the paper trained them (64k iterations, all of CIFAR-10's
    training images, option A, the warm-up for 110 layers and deeper), and a plain-20."""
    for depth, final in ((20, 8.5), (56, 7.0), (110, 6.7), (1202, 8.0)):
        warmup = ("threshold", 400) if depth >= 110 else None
        write_run(tmp_path, "residual", depth, test=(40.0, 10.0, final), step=64_000 // 3 + 1, iterations=64_000,
                  warmup_end=warmup)
    write_run(tmp_path, "plain", 20, test=(40.0, 10.0, 9.0), iterations=64_000)
    return tmp_path


def ticks(axes) -> dict[str, object]:
    marks = lines_by_label(axes).items()
    return {label.removeprefix("_paper "): line for label, line in marks if label.startswith("_paper")}


def test_paper_ticks_mark_table6_beside_runs_that_follow_the_papers_protocol(paper_protocol_runs):
    runs, _ = load_runs(paper_protocol_runs)
    plain, residual, deepest = plot_figure6(runs, paper=True).axes
    assert set(ticks(residual)) == {"residual-20 test_error", "residual-56 test_error", "residual-110 test_error"}
    assert set(ticks(deepest)) == {"residual-110 test_error", "residual-1202 test_error"} and not ticks(plain)
    tick = ticks(residual)["residual-56 test_error"]
    curve = lines_by_label(residual)["residual-56 test_error"]
    assert tick.get_ydata().tolist() == [6.97, 6.97] and tick.get_color() == curve.get_color()
    assert curve.get_xdata()[-1] < tick.get_xdata()[0] < tick.get_xdata()[1] <= residual.get_xlim()[1]  # after the end
    assert ticks(residual)["residual-110 test_error"].get_ydata()[0] == 6.61  # the paper's mean of 5, as our line
    assert "paper (Table 6)" in legend_texts(plot_figure6(runs, paper=True))
    assert not ticks(plot_figure6(runs).axes[1]) and paper_tick_notes(runs) == []


def test_paper_ticks_leave_out_runs_of_another_protocol_and_say_why(tmp_path, write_run, paper_protocol_runs):
    write_run(tmp_path / "short", "residual", 56, test=(40.0, 10.0, 9.0), iterations=400)  # another sweep
    runs, _ = load_runs(tmp_path)
    figures = build_figures(runs, paper=True)
    assert not any(ticks(axes) for axes in figures["figure6-cifar10-iterations400"].axes)
    assert ticks(figures["figure6-cifar10-iterations64000"].axes[1])
    # iterations sets the two sweeps apart (an axis): the paper has no number at 400, so nothing to explain there
    assert paper_tick_notes(runs) == []
    alone, _ = load_runs(tmp_path / "short")  # on its own, 400 iterations is a deviation of every run: said
    assert paper_tick_notes(alone) == [
        "no tick for residual 56: not the paper's protocol (trained 400 iterations (paper: 64k))"]
    synthetic, _ = load_runs(write_run(tmp_path / "syn", "plain", 8, dataset="synthetic"))
    assert paper_tick_notes(synthetic) == [
        "no net here that its family's paper gives a number for (residual 20, 32, 44, 56, 110, 1202; preact 110; "
        "preact-bottleneck 164, 1001): nothing to mark"]


def test_warmup_ends_are_marked_on_the_x_axis_filled_for_threshold_open_for_cap(tmp_path, write_run):
    write_run(tmp_path, "residual", 110, seed=0, test=(40.0, 10.0, 7.0), warmup_end=("threshold", 400))
    write_run(tmp_path, "residual", 110, seed=1, test=(40.0, 10.0, 7.0), warmup_end=("cap", 4000))
    write_run(tmp_path, "residual", 20, test=(40.0, 10.0, 8.0))
    runs, _ = load_runs(tmp_path)
    figure = plot_figure6(runs)
    marks = {label: line for label, line in lines_by_label(figure.axes[0]).items() if label.startswith("_warm-up")}
    threshold, cap = marks["_warm-up end residual-110 threshold"], marks["_warm-up end residual-110 cap"]
    assert threshold.get_xdata().tolist() == [0.04] and cap.get_xdata().tolist() == [0.4]  # iterations in 1e4
    assert threshold.get_markerfacecolor() != "white" and cap.get_markerfacecolor() == "white"
    assert threshold.get_color() == lines_by_label(figure.axes[0])["residual-110 test_error"].get_color()
    assert legend_texts(figure)[-2:] == ["warm-up end (threshold)", "warm-up end (cap)"]
    by_epoch = lines_by_label(plot_figure6(runs, x="epochs").axes[0])
    assert by_epoch["_warm-up end residual-110 cap"].get_xdata().tolist() == [0.4]  # 4000 of 10000 steps per epoch
    for axes in plot_figure1(runs, "residual").axes:
        assert "_warm-up end residual-110 cap" in lines_by_label(axes)


def test_warmup_ends_of_two_depths_at_one_iteration_stack_and_seeds_of_one_share_a_height(tmp_path, write_run):
    # 8 and 14 layers ending their warm-up at iteration 30 drew one triangle over the other: one depth hidden
    for depth in (8, 14):
        for seed in (0, 1):
            write_run(tmp_path, "residual", depth, seed=seed, test=(40.0, 10.0, 7.0), warmup_end=("cap", 30))
    runs, _ = load_runs(tmp_path)
    marks = [line for line in plot_figure6(runs).axes[0].get_lines() if line.get_label().startswith("_warm-up")]
    heights = {(line.get_color(), float(line.get_ydata()[0])) for line in marks}
    assert len(marks) == 4 and len(heights) == 2 and len({height for _, height in heights}) == 2, heights


def test_figure1_of_each_kind_shares_one_y_range_to_compare_side_by_side(tmp_path, write_run):
    write_run(tmp_path, "plain", 20, test=(90.0, 60.0, 50.0), train=(90.0, 55.0, 45.0), dataset="synthetic")
    write_run(tmp_path, "plain", 56, test=(90.0, 70.0, 60.0), train=(90.0, 65.0, 55.0), dataset="synthetic")
    write_run(tmp_path, "residual", 20, test=(50.0, 20.0, 15.0), train=(40.0, 15.0, 10.0), dataset="synthetic")
    figures = build_figures(load_runs(tmp_path)[0])
    plain, residual = figures["figure1-plain-synthetic"], figures["figure1-residual-synthetic"]
    # the residual curves alone would get the paper's 0-20%, the plain ones 0-100%: both get the study's range
    assert plain.axes[0].get_ylim() == residual.axes[0].get_ylim() == residual.axes[1].get_ylim() == (0.0, 100.0)


def test_image_folder_runs_are_named_by_the_folder_in_titles_and_file_names(tmp_path, write_run):
    write_run(tmp_path, "plain", 20, dataset="folder", data={"data_dir": "/tmp/cifar10-jpeg"})
    figures = build_figures(load_runs(tmp_path)[0])
    assert sorted(figures) == ["figure1-plain-cifar10-jpeg", "figure6-cifar10-jpeg"]
    assert figures["figure6-cifar10-jpeg"]._suptitle.get_text().startswith("cifar10-jpeg:")


def test_a_figure_by_setting_wraps_many_settings_onto_rows_of_legible_panels(tmp_path, write_run):
    # eight settings had made one row of eight panels, 28 inches wide, their titles overlapping
    for lr in (0.2, 0.1, 0.05, 0.02, 0.01, 0.005):
        write_run(tmp_path / f"lr{lr}", "residual", 20, lr=lr)
    figure = build_figures(load_runs(tmp_path)[0])["figure6-cifar10-by-lr"]
    shown = [axes for axes in figure.axes if axes.get_visible()]
    assert len(shown) == 6 and len(figure.axes) == 8 and figure.get_figwidth() <= 4 * 3.5
    assert len({round(axes.get_position().y0, 3) for axes in shown}) == 2  # two rows of panels


def test_a_long_figure_title_wraps_inside_the_figure():
    # a setting's label had pushed the gradient figure's one-line title past both edges, cut off there
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from resdepth.results.plots import figure_title

    figure = Figure(figsize=(7.0, 3.2), layout="constrained")
    FigureCanvasAgg(figure)
    figure.add_subplot()
    figure_title(figure, "synthetic (init -, iterations 22): L2 norm of each layer's weight gradient, mean over the "
                         "sampled steps of an epoch\nsecond line")
    figure.canvas.draw()
    [title] = [text for text in figure.texts if text.get_text() == figure.get_suptitle()]
    box = title.get_window_extent()
    assert box.x0 >= 0 and box.x1 <= figure.bbox.width and figure.get_suptitle().count("\n") == 2
