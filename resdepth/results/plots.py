"""Figure 1 and Figure 6 style error curves, seeds averaged, as matplotlib Figures (the CLI saves them).

Figures are built on the Agg canvas directly, without pyplot: headless, and nothing global is changed for a
caller's own plots (a notebook can still show the returned Figure).
"""

from __future__ import annotations

import io
import math
import re
import textwrap
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.text import Text
from matplotlib.ticker import MaxNLocator, MultipleLocator

from ..errors import UserError
from ..models.families import builtin_families, file_name
from .groups import GroupKey, axes_text, group_runs, is_complete, setting_order
from .runs import Run, atomic_write_bytes, printable
from .tables import csv_bytes, group_differences, nets_by_difference, paper_test_error, summarize

X_AXES = ("iterations", "epochs")
FORMATS = ("png", "pdf", "svg")
METRICS = ("train_error", "test_error", "val_error")
METRIC_WORDS = {"train_error": "train", "test_error": "test", "val_error": "val"}
PAPER_Y_MAX = 20.0  # the paper's figures show 0-20% error and clip the first, higher iterations
# A page's text width (7 in) at 9-10 pt text and thick lines: legible printed at that size, still readable at
# half of it (a single column). Test error is the bold line, as in the paper's Figure 6.
FIG_WIDTH, FIG_HEIGHT, FONT, TITLE_FONT = 7.0, 3.2, 9, 10
TRAIN_WIDTH, TEST_WIDTH, VAL_WIDTH, BAND_ALPHA = 1.3, 2.2, 1.6, 0.18
STOPPED_WIDTH = 0.8  # a run that stopped beside finished seeds: thin, apart from their mean
# Line style, width and point marker per metric in Figure 6 (dashed training, bold test, dotted validation); the
# point markers are drawn only on curves with few points (short runs), where overlapping lines would hide each other.
STYLES = {"train_error": ("--", TRAIN_WIDTH, "s"), "test_error": ("-", TEST_WIDTH, "o"),
          "val_error": (":", VAL_WIDTH, "^")}
STYLE_WORDS = {"train_error": "training error", "test_error": "test error", "val_error": "validation error"}
MARKED_POINTS = 30  # curves with at most this many points show them
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf")
# A depth's colour wherever it is drawn, so figures of different folders compare by colour: the paper's depths in
# its order, 164 and 1001 (2016b), the test depths 8 and 14 as 20 and 32 (they seldom share a figure with them).
# Depths are served in this order; one without a colour, or whose colour a figure already gave, takes the first
# colour the figure leaves free.
DEPTH_COLOURS = {20: 0, 32: 1, 44: 2, 56: 3, 110: 4, 1202: 5, 164: 6, 1001: 7, 8: 0, 14: 1}
MAX_SETTING_COLUMNS = 4  # panels side by side in a by-setting figure: each stays legible on a page
PANEL_TITLE_CHARS = 44  # what a 3.5 in panel's title holds on a line at TITLE_FONT
DEEPEST_PAIR = (110, 1202)  # Figure 6, right: ResNet-110 against ResNet-1202, in a panel of their own
# Inches a legend entry takes at FONT: its key and gaps, and each character of its label (measured on DejaVu Sans:
# "warm-up end (cap)" takes 1.7)
LEGEND_KEY_WIDTH, LEGEND_CHAR_WIDTH = 0.55, 0.068
PAPER_TICK_WIDTH = 0.05  # the paper's final test error: a tick this share of the x range long, after the curve's end


@dataclass
class SeedCurves:
    """The seeds of one setting averaged: one row per logged iteration, mean and range of the errors (%). The mean
    is over the finished runs, as the table's is; runs that stopped early are drawn apart (`stopped`), each to where
    it stopped. Only where no run finished is the mean over the stopped ones."""

    key: GroupKey
    runs: list[Run]  # the runs the mean is over
    frame: pd.DataFrame  # iteration, epoch, runs, {train,test[,val]}_error_{mean,min,max}
    stopped: list[Run] = field(default_factory=list)  # unfinished runs beside finished ones: drawn one by one

    @property
    def finished(self) -> bool:
        return all(is_complete(run) for run in self.runs)

    @property
    def all_runs(self) -> list[Run]:
        return self.runs + self.stopped

    @property
    def metrics(self) -> list[str]:
        """The metrics the runs logged: training and test error, and validation error with a held-out split."""
        return [m for m in METRICS if f"{m}_mean" in self.frame and self.frame[f"{m}_mean"].notna().any()]

    @property
    def paper_protocol(self) -> bool:
        return not group_differences(self.runs)

    def label(self, metric: str) -> str:
        """Names the line for code that inspects a figure (e.g. 'plain-20 test_error'); legends name depths."""
        return f"{self.key.variant}-{self.key.depth} {metric}"


def figure_title(figure: Figure, text: str, fontsize: float = TITLE_FONT, **options: object) -> None:
    """The figure's title, each line wrapped to the figure's width: a setting's label (`(init -, iterations 22)`)
    had pushed a one-line title past both edges, cut off there."""
    chars = max(40, int(figure.get_figwidth() * 72 / (fontsize * 0.6)))  # a character is about 0.6 em wide
    lines = [textwrap.fill(line, chars) for line in text.split("\n")]
    figure.suptitle("\n".join(lines), fontsize=fontsize, **options)


def group_curves(runs: list[Run]) -> list[SeedCurves]:
    """One SeedCurves per dataset x kind (x shortcut) x depth: the mean over its finished runs, its unfinished ones
    apart. Where no run finished, the mean over them all goes on over the seeds that reached each iteration (the
    `runs` column says how many)."""
    curves = []
    for key, group in group_runs(runs).items():
        finished = [run for run in group if is_complete(run)]
        stopped = [run for run in group if not is_complete(run)] if finished else []
        averaged = finished or group
        curves.append(SeedCurves(key, averaged, average_seeds(averaged), stopped))
    return curves


def average_seeds(runs: list[Run]) -> pd.DataFrame:
    logged = [m for m in METRICS if any(m in run.metrics for run in runs)]
    metrics = pd.concat([run.metrics.reindex(columns=["iteration", "epoch", *logged]) for run in runs])
    grouped = metrics.groupby("iteration", sort=True)
    frame = grouped[logged].agg(["mean", "min", "max"])
    frame.columns = [f"{metric}_{stat}" for metric, stat in frame.columns]
    frame.insert(0, "runs", grouped.size())
    frame.insert(0, "epoch", grouped["epoch"].first())
    return frame.reset_index()


def build_figures(runs: list[Run], x: str = "iterations", paper: bool = False) -> dict[str, Figure]:
    """Every figure for the runs, by file stem: figure1-<kind>-<dataset> per kind, figure6-<dataset>. With paper,
    Figure 6 marks the test errors of each family's paper (Table 6 for residual nets) beside the curves of runs
    that follow that paper's protocol."""
    check_axis(x)
    suffix = "" if x == "iterations" else "-epochs"
    figures: dict[str, Figure] = {}
    every = group_curves(runs)
    for study in dict.fromkeys(curve.key.study for curve in every):
        curves = [c for c in every if c.key.study == study]
        name = study_name(study)
        for variant in dict.fromkeys(c.key.variant for c in curves):
            figures[f"figure1-{file_name(variant)}-{name}{suffix}"] = figure1(curves, variant, x)
        figures[f"figure6-{name}{suffix}"] = figure6(curves, x, paper=paper)
    for dataset in dict.fromkeys(curve.key.dataset for curve in every):
        curves = [c for c in every if c.key.dataset == dataset]
        keys = list(dict.fromkeys(name for c in curves for name, _ in c.key.axes))
        if len({c.key.axes for c in curves}) > 1:
            figures[f"figure6-{study_name((dataset, ''))}-by-{file_slug('_'.join(keys))}{suffix}"] = \
                figure6_by_setting(curves, x, paper=paper)
    return as_written(figures)


def paper_tick_notes(runs: list[Run]) -> list[str]:
    """Why `--paper` leaves nets its family's paper has a number for without a tick: one line per way their protocol
    differs from the paper's (or one line when no run is such a net); empty when every such net got its tick."""
    summary = summarize(runs)
    eligible = summary[summary["paper_test_error"].notna()]
    if eligible.empty:
        return [f"no net here that its family's paper gives a number for ({papers_known()}): nothing to mark"]
    several = summary["dataset"].nunique() > 1 or summary["setting"].ne("").any()
    return [f"no tick for {nets}: not the paper's protocol ({differences})"
            for nets, differences in nets_by_difference(eligible[~eligible["paper_protocol"]], several)]


def papers_known() -> str:
    """'residual 20, 32, 44, 56, 110, 1202; preact 110; ...': the nets of the built-in families' paper tables."""
    return "; ".join(f"{f.name} {', '.join(map(str, f.reference.depths()))}"
                     for f in builtin_families() if f.reference)


def file_slug(setting: str) -> str:
    """'iterations 400, lr 0.05' -> 'iterations400_lr0.05': a setting as part of a file name."""
    return re.sub(r"[^A-Za-z0-9._]+", "", setting.replace(", ", "_"))


def study_name(study: tuple[str, str]) -> str:
    """(dataset, setting) as part of a file name: 'cifar10', or 'cifar10-iterations400' for a named setting."""
    # the dataset is a config.json's text: never a '/' (a path out of the folder) in a file name
    return "-".join(filter(None, (file_name(study[0]), file_slug(study[1]))))


def study_title(study: tuple[str, str]) -> str:
    """(dataset, setting) as a figure's title names it: 'cifar10', or 'cifar10 (iterations 400)'."""
    return f"{study[0]} ({study[1]})" if study[1] else study[0]


def plot_figure1(runs: list[Run], kind: str = "plain", x: str = "iterations") -> Figure:
    """Figure 1 style for one dataset's runs of one kind: training error (left), test error (right)."""
    return literal_texts(figure1(one_dataset(group_curves(runs)), kind, x))


def plot_figure6(runs: list[Run], x: str = "iterations", paper: bool = False) -> Figure:
    """Figure 6 style for one dataset's runs: a panel per kind, dashed training error, bold test error, dotted
    validation error; ResNet-110 vs ResNet-1202 in a third panel when both are there."""
    return literal_texts(figure6(one_dataset(group_curves(runs)), x, paper=paper))


def figure1(curves: list[SeedCurves], variant: str, x: str) -> Figure:
    """Training error left, test (and validation) error right, one colour per depth. The y range is the one every
    kind's Figure 1 of this study gets (from all its curves), so the plain and residual files compare side by side."""
    check_axis(x)
    chosen = [c for c in curves if c.key.variant == variant]
    if not chosen:
        raise ValueError(f"no {variant} runs to plot")
    colours = depth_colours(c.key.depth for c in curves)
    figure, (train_axes, test_axes) = new_figure(2)
    xaxis = XAxis.choose(x, chosen)
    with_val = any("val_error" in c.metrics for c in chosen)
    panels = ((train_axes, ("train_error",), "training error"),
              (test_axes, ("test_error", "val_error"), "test and validation error" if with_val else "test error"))
    for axes, metrics, title in panels:
        for curve in chosen:
            for metric in (m for m in metrics if m in curve.metrics):
                style = "-" if metric != "val_error" else ":"
                width = TEST_WIDTH if style == "-" else VAL_WIDTH
                draw(axes, curve, metric, xaxis, colours[curve.key.depth], width, style)
            mark_warmup_ends(axes, curve, xaxis, colours[curve.key.depth])
        style_axes(axes, f"{variant} nets: {title}", xaxis, ylabel=axes is train_axes)
    top = set_error_range([train_axes, test_axes], curves)
    for axes, metrics, _ in panels:
        note_off_axis(axes, chosen, metrics, top)
    figure_title(figure, f"{study_title(chosen[0].key.study)}: {variant} nets by depth", fontsize=TITLE_FONT)
    styles = [("test_error", "-"), ("val_error", ":")] if with_val else []
    add_legend(figure, chosen, colours, styles)
    return figure


def figure6(curves: list[SeedCurves], x: str, paper: bool = False) -> Figure:
    check_axis(x)
    if not curves:
        raise ValueError("no runs to plot")
    panels = figure6_panels(curves)
    colours = depth_colours(c.key.depth for c in curves)
    xaxis = XAxis.choose(x, curves)
    figure, axes_list = new_figure(len(panels))
    ticked: set[str] = set()
    for axes, (title, members) in zip(axes_list, panels, strict=True):
        ticked |= draw_panel(axes, members, xaxis, colours, paper)
        style_axes(axes, title, xaxis, ylabel=axes is axes_list[0])
    top = set_error_range(axes_list, curves)
    for axes, (_, members) in zip(axes_list, panels, strict=True):
        note_off_axis(axes, members, METRICS, top)
    figure_title(figure, f"{study_title(curves[0].key.study)}: {style_words(curves)}", fontsize=TITLE_FONT)
    finish_figure6(figure, curves, colours, ticked)
    return figure


def figure6_by_setting(curves: list[SeedCurves], x: str, paper: bool = False) -> Figure:
    """One dataset's Figure 6 across its settings (a sweep's grid axes: lr, width, ...): a row of panels per kind,
    a column per setting, titled with its values; one colour per depth and one y range throughout, so depth reads
    along a row and the axis down a column."""
    check_axis(x)
    settings = sorted(dict.fromkeys(c.key.axes for c in curves), key=setting_order)
    variants = list(dict.fromkeys(c.key.variant for c in curves))
    colours = depth_colours(c.key.depth for c in curves)
    xaxis = XAxis.choose(x, curves)
    columns = min(len(settings), MAX_SETTING_COLUMNS)  # more settings wrap onto further rows of the same kind
    per_variant = math.ceil(len(settings) / columns)
    figure, grid = new_grid(len(variants) * per_variant, columns)
    panels = [(grid[v * per_variant + i // columns][i % columns], variant, setting,
               [c for c in curves if c.key.variant == variant and c.key.axes == setting])
              for v, variant in enumerate(variants) for i, setting in enumerate(settings)]
    used = {id(axes) for axes, _, _, _ in panels}
    for spare in (axes for row in grid for axes in row if id(axes) not in used):
        spare.set_visible(False)  # the last row of a kind, where its settings do not fill it
    ticked: set[str] = set()
    for axes, variant, setting, members in panels:
        ticked |= draw_panel(axes, members, xaxis, colours, paper)
        title = textwrap.fill(f"{variant} nets: {axes_text(setting)}", PANEL_TITLE_CHARS)  # several keys: lines
        style_axes(axes, title, xaxis, ylabel=axes in [row[0] for row in grid])
        if not members:  # the grid is not full: say so rather than leave a blank the eye reads as a result
            axes.text(0.5, 0.5, "no runs", transform=axes.transAxes, ha="center", va="center", fontsize=FONT,
                      color="0.5")
    top = set_error_range([axes for axes, _, _, _ in panels], curves)
    for axes, _, _, members in panels:
        note_off_axis(axes, members, METRICS, top)
    keys = ", ".join(dict.fromkeys(name for setting in settings for name, _ in setting))
    figure_title(figure, f"{curves[0].key.dataset} by {keys}: {style_words(curves)}", fontsize=TITLE_FONT)
    finish_figure6(figure, curves, colours, ticked)
    return figure


def draw_panel(axes: Axes, members: list[SeedCurves], xaxis: XAxis, colours: dict[int, str], paper: bool) -> set[str]:
    """A Figure 6 panel's curves (every metric in its style, a colour per depth) and warm-up marks; with paper, the
    paper's errors beside them. Returns the labels of the papers it marked."""
    for curve in members:
        for metric in curve.metrics:
            style, width, _ = STYLES[metric]
            draw(axes, curve, metric, xaxis, colours[curve.key.depth], width, style)
        mark_warmup_ends(axes, curve, xaxis, colours[curve.key.depth])
    return mark_paper_errors(axes, members, xaxis, colours) if paper else set()


def style_words(curves: list[SeedCurves]) -> str:
    with_val = any("val_error" in c.metrics for c in curves)
    return "dashed = training error, bold = test error" + (", dotted = validation error" if with_val else "")


def finish_figure6(figure: Figure, curves: list[SeedCurves], colours: dict[int, str], ticked: set[str]) -> None:
    with_val = any("val_error" in c.metrics for c in curves)
    styles = [(m, STYLES[m][0]) for m in METRICS if with_val or m != "val_error"]
    add_legend(figure, curves, colours, styles, paper_ticks=sorted(ticked))


def figure6_panels(curves: list[SeedCurves]) -> list[tuple[str, list[SeedCurves]]]:
    """A panel per kind, as the paper's left and middle panels; a kind with both 110 and 1202 layers gets the
    paper's right panel, ResNet-110 vs ResNet-1202, and its 1202-layer curve moves there."""
    panels = []
    for variant in dict.fromkeys(c.key.variant for c in curves):
        members = [c for c in curves if c.key.variant == variant]
        pair = [c for c in members if c.key.depth in DEEPEST_PAIR]
        if len(pair) == len(DEEPEST_PAIR):
            panels.append((f"{variant} nets", [c for c in members if c.key.depth != DEEPEST_PAIR[1]]))
            panels.append((f"{variant} nets: {DEEPEST_PAIR[0]} vs {DEEPEST_PAIR[1]} layers", pair))
        else:
            panels.append((f"{variant} nets", members))
    return panels


@dataclass(frozen=True)
class XAxis:
    column: str
    divisor: float
    label: str

    @classmethod
    def choose(cls, x: str, curves: list[SeedCurves]) -> XAxis:
        """Iterations in units of 1e4 as the paper; plain iterations for runs too short for that unit to read."""
        if x == "epochs":
            return cls("epoch", 1.0, "epoch")
        longest = max(c.frame["iteration"].max() for c in curves)
        return cls("iteration", 1e4, "iter. (1e4)") if longest >= 1e4 else cls("iteration", 1.0, "iterations")


def new_figure(panels: int) -> tuple[Figure, list[Axes]]:
    figure, grid = new_grid(1, panels)
    return figure, grid[0]


def new_grid(rows: int, columns: int) -> tuple[Figure, list[list[Axes]]]:
    """Rows of panels side by side, all sharing the y axis; a row is a page's width (or 3.5 in a panel) wide."""
    height = FIG_HEIGHT if rows == 1 else 0.4 + (FIG_HEIGHT - 0.6) * rows
    figure = Figure(figsize=(max(FIG_WIDTH, 3.5 * columns), height), layout="constrained")
    FigureCanvasAgg(figure)
    return figure, [list(row) for row in figure.subplots(rows, columns, sharey=True, squeeze=False)]


def draw(axes: Axes, curve: SeedCurves, metric: str, xaxis: XAxis, colour: str, width: float, style: str) -> None:
    """The mean over seeds as a line (with its points marked when there are few); the range over seeds as a band
    where there are several; an open circle at the end of an unfinished curve."""
    frame = curve.frame.dropna(subset=[f"{metric}_mean"])
    xs = frame[xaxis.column] / xaxis.divisor
    few = len(frame) <= MARKED_POINTS
    axes.plot(xs, frame[f"{metric}_mean"], color=colour, linewidth=width, linestyle=style, label=curve.label(metric),
              marker=STYLES[metric][2] if few else None, markersize=3.5 if metric == "test_error" else 3)
    if not curve.finished:
        mark_end(axes, xs.iloc[-1], frame[f"{metric}_mean"].iloc[-1], colour, end_kind(curve.runs),
                 f"{curve.label(metric)}")
    if len(curve.runs) > 1 and metric != "val_error":  # a third band would mostly repeat the test error's
        axes.fill_between(xs, frame[f"{metric}_min"], frame[f"{metric}_max"], color=colour, alpha=BAND_ALPHA,
                          linewidth=0)
    for run in curve.stopped:
        draw_stopped(axes, run, curve, metric, xaxis, colour, style)


# How an unfinished curve ends: an open circle where it stopped and may resume (interrupted, stopped, running), a
# cross where it cannot go on as it is (diverged, failed)
END_MARKS = {"unfinished": ("o", "unfinished (resumable)"), "broken": ("X", "diverged or failed")}


def end_kind(runs: list[Run]) -> str:
    return "broken" if any(run.status in ("diverged", "failed") for run in runs) else "unfinished"


def mark_end(axes: Axes, x: float, y: float, colour: str, kind: str, label: str) -> None:
    marker = END_MARKS[kind][0]
    axes.plot([x], [y], color=colour, marker=marker, markerfacecolor="white", markersize=6, linestyle="none",
              label=f"_{kind} {label}", zorder=3)  # clipped: an end above the axis is named in the panel


def draw_stopped(axes: Axes, run: Run, curve: SeedCurves, metric: str, xaxis: XAxis, colour: str,
                 style: str) -> None:
    """A run of a finished setting that stopped early: its own thin line, to where it stopped, and its end mark;
    it is not in the mean (the table leaves it out too)."""
    if metric not in run.metrics:
        return
    frame = run.metrics.dropna(subset=[metric])
    if frame.empty:
        return
    xs = frame[xaxis.column] / xaxis.divisor
    axes.plot(xs, frame[metric], color=colour, linewidth=STOPPED_WIDTH, linestyle=style, alpha=0.7,
              label=f"_stopped {curve.label(metric)}")
    mark_end(axes, xs.iloc[-1], frame[metric].iloc[-1], colour, end_kind([run]), curve.label(metric))


def mark_warmup_ends(axes: Axes, curve: SeedCurves, xaxis: XAxis, colour: str) -> None:
    """A small triangle on the x axis, in the depth's colour, where each run's warm-up ended: filled when the
    training error fell below the threshold (§4.2), open when the cap ended it. On the axis rather than on the
    curve: in the paper's 0-20% range a curve is still far above the top at the end of a warm-up. Marks of other
    depths at the same spot stack upwards, so none hides another (two depths often end at the same iteration)."""
    for run in curve.all_runs:
        if run.warmup_end_iteration is None:
            continue
        x = warmup_end_x(run, xaxis)
        if x is None:
            continue
        axes.plot([x], [warmup_mark_height(axes, x, colour)], transform=axes.get_xaxis_transform(), clip_on=False,
                  linestyle="none", marker="^",
                  markersize=6, color=colour, markerfacecolor=colour if run.warmup_end_reason != "cap" else "white",
                  label=f"_warm-up end {curve.label(run.warmup_end_reason or '')}", zorder=3)  # above the spine


WARMUP_MARK_Y, WARMUP_MARK_STEP = 0.025, 0.05  # in axes heights: on the x axis, then one marker higher per depth


def warmup_mark_height(axes: Axes, x: float, colour: str) -> float:
    """Where a warm-up mark of this colour goes at x: beside its own colour's marks there (seeds of one net), or
    above the marks of the other colours within 1% of the curves' width."""
    near = 0.01 * axes.dataLim.width if axes.dataLim.width > 0 else 0.0
    nearby = [(line.get_color(), float(line.get_ydata()[0])) for line in axes.get_lines()
              if str(line.get_label()).startswith("_warm-up end") and abs(float(line.get_xdata()[0]) - x) <= near]
    own = [height for other, height in nearby if other == colour]
    return own[0] if own else WARMUP_MARK_Y + WARMUP_MARK_STEP * len({other for other, _ in nearby})


def warmup_end_x(run: Run, xaxis: XAxis) -> float | None:
    if xaxis.column == "iteration":
        return run.warmup_end_iteration / xaxis.divisor
    steps = run.config.get("resolved", {}).get("steps_per_epoch")
    return run.warmup_end_iteration / steps if steps else None


def mark_paper_errors(axes: Axes, curves: list[SeedCurves], xaxis: XAxis, colours: dict[int, str]) -> set[str]:
    """A short horizontal tick just after the end of each curve at its family's paper's test error for that depth
    (where the paper gives a mean over runs, that mean, as our line is a mean: ResNet-110's 6.61), only for curves
    whose every run followed the paper's protocol. Returns the labels of the papers it marked."""
    chosen = [(c, paper_test_error(c.runs)) for c in curves if c.paper_protocol]
    chosen = [(c, value) for c, value in chosen if value is not None]
    if not chosen:
        return set()
    right = max(c.frame[xaxis.column].max() for c in curves) / xaxis.divisor
    for curve, value in chosen:
        end = curve.frame[xaxis.column].iloc[-1] / xaxis.divisor
        start = end + 0.01 * right
        axes.plot([start, start + PAPER_TICK_WIDTH * right], [value, value], color=colours[curve.key.depth],
                  linewidth=3.0, solid_capstyle="butt", label=f"_paper {curve.label('test_error')}")
    axes.set_xlim(right=right * (1.02 + PAPER_TICK_WIDTH))
    return {c.key.family.reference.label for c, _ in chosen if c.key.family.reference}


def style_axes(axes: Axes, title: str, xaxis: XAxis, ylabel: bool) -> None:
    axes.set_title(title, fontsize=TITLE_FONT)
    axes.set_xlabel(xaxis.label, fontsize=FONT)
    if ylabel:  # the panels share the y axis: one label and one set of tick labels, on the left
        axes.set_ylabel("error (%)", fontsize=FONT)
    axes.tick_params(labelsize=FONT - 1)
    axes.grid(True, linewidth=0.5, alpha=0.4)
    axes.set_xlim(left=0)
    if xaxis.divisor == 1:
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))  # no half epochs or iterations on short runs


def set_error_range(panels: list[Axes], curves: list[SeedCurves]) -> float:
    """0-20% as the paper when at least half the curves end inside it (early iterations are clipped, as there;
    a curve that stays above, like the paper's plain-110 at over 60%, is named in its panel instead of drawn in
    range); otherwise 0 up to the next 10% above the highest curve (short runs sit higher). Returns the top."""
    inside = [all(final <= PAPER_Y_MAX for final in final_errors(c, ("train_error", "test_error")).values())
              for c in curves]
    highest = pd.concat([c.frame[f"{m}_max"] for c in curves for m in c.metrics]).max()
    if inside and 2 * sum(inside) >= len(inside):
        top = PAPER_Y_MAX
    else:  # NaN-proof: a diverged run may have logged non-finite numbers
        top = min(100.0, 10 * math.ceil(highest / 10 + 1e-9)) if math.isfinite(highest) else 100.0
    for axes in panels:
        axes.set_ylim(0, top)
        axes.yaxis.set_major_locator(MultipleLocator(5 if top <= PAPER_Y_MAX else 10))  # one step in every figure
    return top


def final_errors(curve: SeedCurves, metrics: Sequence[str]) -> dict[str, float]:
    """The last logged mean of each metric (metrics a curve never logged are left out)."""
    return last_logged({m: curve.frame[f"{m}_mean"] for m in metrics if f"{m}_mean" in curve.frame})


def last_logged(series: dict[str, pd.Series]) -> dict[str, float]:
    """Each metric's last value that is not missing (a metric with none is left out)."""
    values = {m: s.dropna() for m, s in series.items()}
    return {m: float(v.iloc[-1]) for m, v in values.items() if not v.empty}


def note_off_axis(axes: Axes, curves: list[SeedCurves], metrics: Sequence[str], top: float) -> None:
    """Name the curves that end above the axis, with where they end, in the panel's top right corner."""
    lines = []
    for curve in curves:
        ends = [(f"{curve.key.variant}-{curve.key.depth}", final_errors(curve, metrics))]
        ends += [(f"{curve.key.variant}-{curve.key.depth} seed {run.setting('seed', '?')} (stopped)",
                  last_logged({m: run.metrics[m] for m in metrics if m in run.metrics})) for run in curve.stopped]
        for name, finals in ends:
            above = {m: v for m, v in finals.items() if v > top}
            if above:
                words = ", ".join(f"{METRIC_WORDS[m]} {v:.1f}%" for m, v in above.items())
                lines.append(f"{name} ends above the axis:\n{words}")
    if lines:
        axes.text(0.98, 0.97, "\n".join(lines), transform=axes.transAxes, ha="right", va="top", fontsize=FONT - 1,
                  bbox={"facecolor": "white", "alpha": 0.8, "edgecolor": "0.7", "boxstyle": "round,pad=0.3"})


def add_legend(figure: Figure, curves: list[SeedCurves], colours: dict[int, str],
               styles: list[tuple[str, str]] = (), paper_ticks: Sequence[str] = ()) -> None:
    """One entry per depth (its colour is the same in every panel), the line styles where a figure mixes metrics,
    and the keys of the marks it uses (unfinished runs, warm-up ends, the paper's errors); below the panels,
    where it never covers a curve."""
    depths = sorted({c.key.depth for c in curves})
    handles = [Line2D([], [], color=colours[depth], linewidth=TEST_WIDTH, label=f"{depth}-layer") for depth in depths]
    grey = "0.35"
    points = any(len(c.frame) <= MARKED_POINTS for c in curves)  # the keys show the point markers the curves do
    handles += [Line2D([], [], color=grey, linestyle=style, linewidth=STYLES[metric][1], label=STYLE_WORDS[metric],
                       marker=STYLES[metric][2] if points else None, markersize=3.5) for metric, style in styles]
    banded = [c for c in curves if len(c.runs) > 1]
    if banded:
        handles.append(Patch(color=grey, alpha=BAND_ALPHA * 2, linewidth=0, label=f"range of {seeds_words(banded)}"))
    if any(c.stopped for c in curves):
        handles.append(Line2D([], [], color=grey, linewidth=STOPPED_WIDTH, label="stopped run (not averaged)"))
    ends = {end_kind(c.runs) for c in curves if not c.finished} | {end_kind([r]) for c in curves for r in c.stopped}
    for kind in ("unfinished", "broken"):
        if kind in ends:
            marker, words = END_MARKS[kind]
            handles.append(Line2D([], [], color=grey, marker=marker, markerfacecolor="white", markersize=6,
                                  linestyle="none", label=words))
    reasons = {run.warmup_end_reason for c in curves for run in c.all_runs if run.warmup_end_iteration is not None}
    fixed = any(c.key.family.protocol.fixed_warmup for c in curves)  # 2016b: a fixed 400 iterations, ended as a cap
    cap_words = "warm-up end (cap, fixed)" if fixed else "warm-up end (cap)"
    for reason, face, words in (("threshold", grey, "warm-up end (threshold)"), ("cap", "white", cap_words)):
        if reason in reasons:
            handles.append(Line2D([], [], color=grey, marker="^", markerfacecolor=face, markersize=6,
                                  linestyle="none", label=words))
    if paper_ticks:
        handles.append(Line2D([], [], color=grey, marker="_", markersize=12, markeredgewidth=3, linestyle="none",
                              label=f"paper ({', '.join(paper_ticks)})"))
    longest = max(len(handle.get_label()) for handle in handles)
    columns = min(len(handles), max(2, int(figure.get_figwidth() / (LEGEND_KEY_WIDTH + LEGEND_CHAR_WIDTH * longest))))
    if len(depths) % columns and len(handles) > columns:  # the depths fill their own row(s), the keys start anew
        handles[len(depths):len(depths)] = [blank_entry()] * (columns - len(depths) % columns)
    figure.legend(handles=row_major(handles, columns), loc="outside lower center", ncol=columns, fontsize=FONT,
                  frameon=False)


def seeds_words(curves: list[SeedCurves]) -> str:
    """How many seeds the means are over: '3 seeds', or '2-5 seeds' where settings differ."""
    counts = sorted({len(c.runs) for c in curves})
    return f"{counts[-1]} seeds" if len(counts) == 1 else f"{counts[0]}-{counts[-1]} seeds"


def blank_entry() -> Line2D:
    return Line2D([], [], linestyle="none", label=" ")


def row_major(handles: list[Line2D], columns: int) -> list[Line2D]:
    """Matplotlib fills a legend column by column; reordered, the entries read left to right, depths first."""
    rows = math.ceil(len(handles) / columns)
    grid = [handles[r * columns:(r + 1) * columns] for r in range(rows)]
    return [grid[r][c] for c in range(columns) for r in range(rows) if c < len(grid[r])]


def depth_colours(depths: Iterable[int]) -> dict[int, str]:
    """The same colour for a depth in every panel and figure (DEPTH_COLOURS), and different depths of a figure in
    different colours, shallow to deep."""
    present = set(depths)
    colours: dict[int, str] = {}
    for depth in [d for d in DEPTH_COLOURS if d in present] + sorted(present - set(DEPTH_COLOURS)):
        preferred = DEPTH_COLOURS.get(depth)
        free = [c for c in PALETTE if c not in colours.values()] or list(PALETTE)
        wanted = PALETTE[preferred] if preferred is not None else None
        colours[depth] = wanted if wanted in free else free[0]
    return colours


def one_dataset(curves: list[SeedCurves]) -> list[SeedCurves]:
    studies = sorted({study_title(c.key.study) for c in curves})
    if len(studies) > 1:
        raise ValueError(f"runs of several datasets or settings ({'; '.join(studies)}): pass one study's runs")
    return curves


def check_axis(x: str) -> None:
    if x not in X_AXES:
        raise UserError(f"unknown x axis {x!r}: choose {' or '.join(X_AXES)}")


def parse_formats(text: str) -> list[str]:
    formats = [part.strip().lower().lstrip(".") for part in text.split(",") if part.strip()]
    unknown = [f for f in formats if f not in FORMATS]
    if unknown or not formats:
        raise UserError(f"unknown figure format {', '.join(unknown) or repr(text)}: choose from {', '.join(FORMATS)}")
    return list(dict.fromkeys(formats))


def save_figures(figures: dict[str, Figure], out_dir: Path, formats: Sequence[str] = ("png",)) -> list[Path]:
    """Write every figure in every format as out_dir/<stem>.<format>; returns the paths written."""
    return [write_output(out_dir / f"{stem}.{fmt}", figure_bytes(figure, fmt))
            for stem, figure in figures.items() for fmt in formats]


def figure_bytes(figure: Figure, fmt: str) -> bytes:
    """The figure drawn in a format (png at 200 dpi)."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format=fmt, dpi=200)
    return buffer.getvalue()


def as_written(figures: dict[str, Figure]) -> dict[str, Figure]:
    """Each figure with its texts shown as written (`literal_texts`): as every build_figures returns them, saved
    here or by a caller of the Python API."""
    return {stem: literal_texts(figure) for stem, figure in figures.items()}


def literal_texts(figure: Figure) -> Figure:
    """Titles, labels, legends and notes shown as written: kind, dataset and setting names come from folders, where
    a '$' would be parsed as mathtext (or fail the drawing) and a control character reach the terminal in a
    missing-glyph warning. Tick labels keep matplotlib's own mathtext (10^k)."""
    ticks = {axis.offsetText for axes in figure.axes for axis in (axes.xaxis, axes.yaxis)}
    ticks |= {text for axes in figure.axes for axis in (axes.xaxis, axes.yaxis)
              for tick in axis.get_major_ticks() + axis.get_minor_ticks() for text in (tick.label1, tick.label2)}
    for text in figure.findobj(Text):
        if text not in ticks:
            text.set_parse_math(False)
            text.set_text(printable(text.get_text()))
    return figure


def save_outputs(tables: dict[str, pd.DataFrame], figures: dict[str, Figure], out_dir: Path,
                 formats: Sequence[str]) -> list[Path]:
    """A command's CSVs (out_dir/<name>) and every figure in every format; returns the paths written."""
    paths = [write_output(out_dir / name, csv_bytes(frame)) for name, frame in tables.items()]
    return paths + save_figures(figures, out_dir, formats)


def write_output(path: Path, data: bytes) -> Path:
    """Whole or not at all (a kill mid-write leaves the old file), and never through a link in its place."""
    try:
        atomic_write_bytes(path, data)
    except OSError as exc:
        raise UserError(f"cannot write {path} ({exc.strerror or exc}): choose another --out folder") from None
    return path
