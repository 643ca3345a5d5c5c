"""Figures from hand-made results folders: the drawn lines are the CSV numbers, seeds are averaged, the panels,
legends, labels and y range are as the paper's, and `resdepth plot` writes the files or fails in one line."""

import json
from pathlib import Path

import pandas as pd
import pytest

from resdepth.errors import UserError
from resdepth.plots import build_figures, group_curves, parse_formats, plot_figure1, plot_figure6, save_figures
from resdepth.results import load_runs


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


def legend_texts(figure) -> list[str]:
    [legend] = figure.legends
    return [text.get_text() for text in legend.get_texts()]


def test_figure6_draws_the_csv_numbers_dashed_train_bold_test(paper_like):
    runs, _ = load_runs(paper_like)
    figure = plot_figure6(runs)
    plain, residual = figure.axes
    assert [plain.get_title(), residual.get_title()] == ["plain nets", "residual nets"]
    assert plain.get_xlabel() == residual.get_xlabel() == "iter. (1e4)" and plain.get_ylabel() == "error (%)"
    assert len(plain.get_lines()) == len(residual.get_lines()) == 4  # train + test per depth
    assert legend_texts(figure) == ["20-layer", "56-layer"]  # one legend, by depth, for both panels
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
    assert legend_texts(figure) == ["20-layer", "56-layer"]
    assert train_axes.get_xlabel() == "iter. (1e4)" and train_axes.get_ylabel() == "error (%)"
    csv = pd.read_csv(paper_like / "plain-20-s0" / "metrics.csv")
    assert lines_by_label(train_axes)["plain-20 train_error"].get_ydata().tolist() == csv["train_error"].tolist()
    assert lines_by_label(test_axes)["plain-20 test_error"].get_ydata().tolist() == csv["test_error"].tolist()
    assert len(train_axes.get_lines()) == len(test_axes.get_lines()) == 2
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


def test_unfinished_runs_are_drawn_with_what_they_have_and_marked(tmp_path, write_run):
    write_run(tmp_path, "residual", 20, seed=0, test=(40.0, 12.0, 8.0))
    write_run(tmp_path, "residual", 20, seed=1, test=(42.0,), state="running", planned_epochs=3)
    write_run(tmp_path, "residual", 32, seed=0, test=(30.0, 10.0, 7.0), state=None)  # copied: no status.json
    runs, _ = load_runs(tmp_path)
    figure = plot_figure6(runs)
    assert legend_texts(figure) == ["20-layer", "32-layer", "unfinished runs"]
    line = lines_by_label(figure.axes[0])["residual-20 test_error"]
    assert line.get_ydata().tolist() == [41.0, 12.0, 8.0]  # the mean over the seeds that reached each point
    assert line.get_marker() == "o"  # an open circle ends an unfinished curve
    assert lines_by_label(figure.axes[0])["residual-32 test_error"].get_marker() in (None, "None", "")
    assert legend_texts(plot_figure6([r for r in runs if r.setting("depth") == 32])) == ["32-layer"]


def test_epoch_axis_and_plain_iterations_for_short_runs(tmp_path, write_run):
    write_run(tmp_path, "plain", 8, test=(80.0, 70.0), step=11, dataset="synthetic")
    runs, _ = load_runs(tmp_path)
    by_epoch = plot_figure6(runs, x="epochs").axes[0]
    assert by_epoch.get_xlabel() == "epoch" and by_epoch.get_lines()[1].get_xdata().tolist() == [1, 2]
    by_iteration = plot_figure6(runs).axes[0]
    assert by_iteration.get_xlabel() == "iterations" and by_iteration.get_lines()[1].get_xdata().tolist() == [11, 22]
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
        "figure6-cifar10-iterations30000", "figure6-cifar10-iterations60000"]
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
