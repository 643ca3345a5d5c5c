"""Figure 1 and Figure 6 style error curves, seeds averaged, as matplotlib Figures (the CLI saves them).

Figures are built on the Agg canvas directly, without pyplot: headless, and nothing global is changed for a
caller's own plots (a notebook can still show the returned Figure).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator

from .errors import UserError
from .groups import GroupKey, group_runs, is_complete
from .results import Run

X_AXES = ("iterations", "epochs")
FORMATS = ("png", "pdf", "svg")
METRIC_WORDS = {"train_error": "train", "test_error": "test"}
PAPER_Y_MAX = 20.0  # the paper's figures show 0-20% error and clip the first, higher iterations
# A page's text width (7 in) at 9-10 pt text and thick lines: legible printed at that size, still readable at
# half of it (a single column). Test error is the bold line, as in the paper's Figure 6.
FIG_WIDTH, FIG_HEIGHT, FONT, TITLE_FONT = 7.0, 3.2, 9, 10
TRAIN_WIDTH, TEST_WIDTH, BAND_ALPHA = 1.3, 2.2, 0.18
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf")


@dataclass
class SeedCurves:
    """The seeds of one setting averaged: one row per logged iteration, mean and range of the errors (%)."""

    key: GroupKey
    runs: list[Run]
    frame: pd.DataFrame  # iteration, epoch, runs, {train,test}_error_{mean,min,max}

    @property
    def finished(self) -> bool:
        return all(is_complete(run) for run in self.runs)

    def label(self, metric: str) -> str:
        """Names the line for code that inspects a figure (e.g. 'plain-20 test_error'); legends name depths."""
        return f"{self.key.variant}-{self.key.depth} {metric}"


def group_curves(runs: list[Run]) -> list[SeedCurves]:
    """One SeedCurves per dataset x kind (x shortcut) x depth. Where a seed has stopped early the mean goes on over the
    seeds that reached that iteration (the `runs` column says how many)."""
    return [SeedCurves(key, group, average_seeds(group)) for key, group in group_runs(runs).items()]


def average_seeds(runs: list[Run]) -> pd.DataFrame:
    metrics = pd.concat([run.metrics[["iteration", "epoch", "train_error", "test_error"]] for run in runs])
    grouped = metrics.groupby("iteration", sort=True)
    frame = grouped[["train_error", "test_error"]].agg(["mean", "min", "max"])
    frame.columns = [f"{metric}_{stat}" for metric, stat in frame.columns]
    frame.insert(0, "runs", grouped.size())
    frame.insert(0, "epoch", grouped["epoch"].first())
    return frame.reset_index()


def build_figures(runs: list[Run], x: str = "iterations") -> dict[str, Figure]:
    """Every figure for the runs, by file stem: figure1-<kind>-<dataset> per kind, figure6-<dataset>."""
    check_axis(x)
    suffix = "" if x == "iterations" else "-epochs"
    figures: dict[str, Figure] = {}
    every = group_curves(runs)
    for study in dict.fromkeys((curve.key.dataset, curve.key.setting) for curve in every):
        curves = [c for c in every if (c.key.dataset, c.key.setting) == study]
        name = "-".join(filter(None, (study[0], file_slug(study[1]))))
        for variant in dict.fromkeys(c.key.variant for c in curves):
            figures[f"figure1-{variant}-{name}{suffix}"] = figure1(curves, variant, x)
        figures[f"figure6-{name}{suffix}"] = figure6(curves, x)
    return figures


def file_slug(setting: str) -> str:
    """'iterations 400, lr 0.05' -> 'iterations400_lr0.05': a setting as part of a file name."""
    return re.sub(r"[^A-Za-z0-9._]+", "", setting.replace(", ", "_"))


def study_title(key: GroupKey) -> str:
    return f"{key.dataset} ({key.setting})" if key.setting else key.dataset


def plot_figure1(runs: list[Run], kind: str = "plain", x: str = "iterations") -> Figure:
    """Figure 1 style for one dataset's runs of one kind: training error (left), test error (right)."""
    return figure1(one_dataset(group_curves(runs)), kind, x)


def plot_figure6(runs: list[Run], x: str = "iterations") -> Figure:
    """Figure 6 style for one dataset's runs: a panel per kind, dashed training error, bold test error."""
    return figure6(one_dataset(group_curves(runs)), x)


def figure1(curves: list[SeedCurves], variant: str, x: str) -> Figure:
    check_axis(x)
    chosen = [c for c in curves if c.key.variant == variant]
    if not chosen:
        raise ValueError(f"no {variant} runs to plot")
    colours = depth_colours(curves)
    figure, (train_axes, test_axes) = new_figure(2)
    xaxis = XAxis.choose(x, chosen)
    for axes, metric, title in ((train_axes, "train_error", "training error"), (test_axes, "test_error", "test error")):
        for curve in chosen:
            draw(axes, curve, metric, xaxis, colours[curve.key.depth], TEST_WIDTH, "-")
        style_axes(axes, f"{variant} nets: {title}", xaxis, ylabel=axes is train_axes)
    top = set_error_range([train_axes, test_axes], chosen)
    for axes, metric in ((train_axes, "train_error"), (test_axes, "test_error")):
        note_off_axis(axes, chosen, (metric,), top)
    figure.suptitle(f"{study_title(chosen[0].key)}: {variant} nets by depth", fontsize=TITLE_FONT)
    add_depth_legend(figure, chosen, colours)
    return figure


def figure6(curves: list[SeedCurves], x: str) -> Figure:
    check_axis(x)
    if not curves:
        raise ValueError("no runs to plot")
    variants = list(dict.fromkeys(c.key.variant for c in curves))
    colours = depth_colours(curves)
    xaxis = XAxis.choose(x, curves)
    figure, panels = new_figure(len(variants))
    for axes, variant in zip(panels, variants, strict=True):
        for curve in (c for c in curves if c.key.variant == variant):
            draw(axes, curve, "train_error", xaxis, colours[curve.key.depth], TRAIN_WIDTH, "--")
            draw(axes, curve, "test_error", xaxis, colours[curve.key.depth], TEST_WIDTH, "-")
        style_axes(axes, f"{variant} nets", xaxis, ylabel=axes is panels[0])
    top = set_error_range(panels, curves)
    for axes, variant in zip(panels, variants, strict=True):
        note_off_axis(axes, [c for c in curves if c.key.variant == variant], ("train_error", "test_error"), top)
    figure.suptitle(f"{study_title(curves[0].key)}: dashed = training error, bold = test error", fontsize=TITLE_FONT)
    add_depth_legend(figure, curves, colours)
    return figure


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
    figure = Figure(figsize=(max(FIG_WIDTH, 3.5 * panels), FIG_HEIGHT), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(1, panels, sharey=True, squeeze=False)[0]
    return figure, list(axes)


def draw(axes: Axes, curve: SeedCurves, metric: str, xaxis: XAxis, colour: str, width: float, style: str) -> None:
    """The mean over seeds as a line; the range over seeds as a band where there are several; an open circle
    at the end of an unfinished curve."""
    xs, frame = curve.frame[xaxis.column] / xaxis.divisor, curve.frame
    axes.plot(xs, frame[f"{metric}_mean"], color=colour, linewidth=width, linestyle=style, label=curve.label(metric),
              marker=None if curve.finished else "o", markevery=[-1], markerfacecolor="white", markersize=4)
    if len(curve.runs) > 1:
        axes.fill_between(xs, frame[f"{metric}_min"], frame[f"{metric}_max"], color=colour, alpha=BAND_ALPHA,
                          linewidth=0)


def style_axes(axes: Axes, title: str, xaxis: XAxis, ylabel: bool) -> None:
    axes.set_title(title, fontsize=TITLE_FONT)
    axes.set_xlabel(xaxis.label, fontsize=FONT)
    if ylabel:  # the panels share the y axis: one label and one set of tick labels, on the left
        axes.set_ylabel("error (%)", fontsize=FONT)
    axes.tick_params(labelsize=FONT - 1)
    axes.grid(True, linewidth=0.5, alpha=0.4)
    axes.set_xlim(left=0)
    if xaxis.column == "epoch":
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))  # no half epochs on short runs


def set_error_range(panels: list[Axes], curves: list[SeedCurves]) -> float:
    """0-20% as the paper when at least half the curves end inside it (early iterations are clipped, as there;
    a curve that stays above, like the paper's plain-110 at over 60%, is named in its panel instead of drawn in
    range); otherwise 0 up to the next 10% above the highest curve (short runs sit higher). Returns the top."""
    inside = [all(final <= PAPER_Y_MAX for final in final_errors(c, ("train_error", "test_error")).values())
              for c in curves]
    highest = pd.concat([c.frame[f"{m}_max"] for c in curves for m in ("train_error", "test_error")]).max()
    if inside and 2 * sum(inside) >= len(inside):
        top = PAPER_Y_MAX
    else:  # NaN-proof: a diverged run may have logged non-finite numbers
        top = min(100.0, 10 * math.ceil(highest / 10 + 1e-9)) if math.isfinite(highest) else 100.0
    for axes in panels:
        axes.set_ylim(0, top)
    return top


def final_errors(curve: SeedCurves, metrics: Sequence[str]) -> dict[str, float]:
    """The last logged mean of each metric (metrics a curve never logged are left out)."""
    means = {m: curve.frame[f"{m}_mean"].dropna() for m in metrics}
    return {m: float(values.iloc[-1]) for m, values in means.items() if not values.empty}


def note_off_axis(axes: Axes, curves: list[SeedCurves], metrics: Sequence[str], top: float) -> None:
    """Name the curves that end above the axis, with where they end, in the panel's top right corner."""
    lines = []
    for curve in curves:
        above = {m: v for m, v in final_errors(curve, metrics).items() if v > top}
        if above:
            ends = ", ".join(f"{METRIC_WORDS[m]} {v:.1f}%" for m, v in above.items())
            lines.append(f"{curve.key.variant}-{curve.key.depth} ends above the axis:\n{ends}")
    if lines:
        axes.text(0.98, 0.97, "\n".join(lines), transform=axes.transAxes, ha="right", va="top", fontsize=FONT - 1,
                  bbox={"facecolor": "white", "edgecolor": "0.7", "boxstyle": "round,pad=0.3"})


def add_depth_legend(figure: Figure, curves: list[SeedCurves], colours: dict[int, str]) -> None:
    """One entry per depth (its colour is the same in every panel), and the open-circle key if a curve is
    unfinished; below the panels, where it never covers a curve."""
    depths = sorted({c.key.depth for c in curves})
    handles = [Line2D([], [], color=colours[depth], linewidth=TEST_WIDTH, label=f"{depth}-layer") for depth in depths]
    if not all(c.finished for c in curves):
        handles.append(Line2D([], [], color="0.4", marker="o", markerfacecolor="white", markersize=5,
                              linestyle="none", label="unfinished runs"))
    figure.legend(handles=handles, loc="outside lower center", ncol=min(len(handles), 6), fontsize=FONT,
                  frameon=False)


def depth_colours(curves: list[SeedCurves]) -> dict[int, str]:
    """The same colour for a depth in every panel and figure of a dataset, shallow to deep."""
    depths = sorted({c.key.depth for c in curves})
    return {depth: PALETTE[i % len(PALETTE)] for i, depth in enumerate(depths)}


def one_dataset(curves: list[SeedCurves]) -> list[SeedCurves]:
    studies = sorted({study_title(c.key) for c in curves})
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
    paths = []
    for stem, figure in figures.items():
        for fmt in formats:
            path = out_dir / f"{stem}.{fmt}"
            try:
                figure.savefig(path, dpi=200)
            except OSError as exc:
                raise UserError(f"cannot write {path} ({exc.strerror or exc}): choose another --out folder") from None
            paths.append(path)
    return paths
