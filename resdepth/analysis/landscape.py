"""Loss landscapes of trained runs: Li, Xu, Taylor, Studer and Goldstein, *Visualizing the Loss Landscape of Neural
Nets* (NeurIPS 2018), Figure 5 (ResNet-56 with and without shortcuts).

Two seeded random directions d1, d2 in weight space, filter-normalised (each filter of a direction scaled to the
norm of the matching filter of the weights; BN parameters and biases left at zero, i.e. unperturbed, as the
paper's `--xignore biasbn`); the training loss and error of theta + a d1 + b d2 over a grid of (a, b) in
[-span, span]^2, on a fixed class-balanced subset of the training split (un-augmented), BN in evaluation mode.
Twins of one depth (plain and residual under option A have the same parameter shapes) draw the same raw
directions. The grid is saved as it fills (atomically) and a partial grid is resumed. Nothing here prints.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator
from torch import nn

from ..errors import UserError
from ..models.families import family_named_by_folder
from ..results.groups import group_runs
from ..results.plots import (
    FIG_WIDTH,
    FONT,
    TITLE_FONT,
    as_written,
    depth_colours,
    figure_title,
    save_outputs,
    study_name,
    study_title,
)
from ..results.runs import CHECKPOINT_FILE, CONFIG_FILE, atomic_write_bytes, ensure_writable_dir, load_runs, read_json
from ..train.construct import finished_run
from .responses import IDENTITY_COLUMNS, DataCache, nets_of, rows_of, studies, study_rows, with_axes
from .trained import EvalProgress, OnEvalProgress, TrainedRun, load_trained, loss_and_error, split_images

LANDSCAPE_COLUMNS = (*IDENTITY_COLUMNS, "run", "a", "b", "train_loss", "train_error", "images", "epoch")
LANDSCAPE_CSV = "landscape.csv"
GRID_SUFFIX = ".grid.json"  # per run: its settings and the values filled so far (null: not yet)
LOSS_LEVELS_MAX = 10.0  # Li et al.'s contour plots stop at loss 10 (plot_2D.py: vmax=10)


@dataclass(frozen=True)
class LandscapeConfig:
    """What `resdepth landscape` evaluates (Li et al. 2018): the loss on a grid of two filter-normalised directions."""

    resolution: int = 21  # points per axis; Li et al. use 51 (2601 evaluations per 2D plot)
    span: float = 1.0  # a and b from -span to span: Li et al.'s [-1, 1]
    images: int = 2000  # a fixed class-balanced subset of the training split (Li et al. use all 50k)
    dims: int = 2  # 2: the grid (contours); 1: only the b = 0 line (a 1D slice)
    seed: int = 0  # of the directions: the same seed draws the same raw directions for twins
    batch_size: int = 500  # images per forward pass: on 2 CPU cores 1.5x as fast as 2,000 (BENCHMARKS.md)

    def check(self) -> None:
        if self.resolution < 2:
            raise UserError(f"--resolution must be at least 2 points per axis, got {self.resolution}")
        if not (self.span > 0 and math.isfinite(self.span)):
            raise UserError(f"--span must be a positive number, got {self.span}")
        if self.images < 1 or self.batch_size < 1:
            raise UserError(f"--images and --batch-size must be positive integers, got {self.images} and "
                            f"{self.batch_size}")
        if self.dims not in (1, 2):
            raise UserError(f"--dims must be 1 (a slice) or 2 (a grid), got {self.dims}")

    def axis(self) -> list[float]:
        return [float(x) for x in np.linspace(-self.span, self.span, self.resolution)]

    def b_axis(self) -> list[float]:
        return self.axis() if self.dims == 2 else [0.0]


# ---------------------------------------------------------------------------------------------- directions
def perturbed(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """The parameters a direction moves: weights of convs and FC layers (more than one dimension); BN scales and
    shifts and every bias (one dimension) stay where training left them (Li et al.: ignore biasbn)."""
    return [(name, param) for name, param in model.named_parameters() if param.dim() > 1]


def filter_normalized_direction(model: nn.Module, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """A Gaussian direction over the perturbed parameters with each filter (slice along the first dimension: a
    conv's output channel, a row of the FC) rescaled to the norm of the same filter of the weights."""
    direction = {}
    for name, param in perturbed(model):
        raw = torch.randn(param.shape, generator=generator, dtype=torch.float32).to(param.device)
        weight_norms = param.detach().flatten(1).norm(dim=1)
        raw_norms = raw.flatten(1).norm(dim=1)
        scale = weight_norms / (raw_norms + 1e-10)  # Li et al.'s normalize_direction
        direction[name] = raw * scale.view(-1, *[1] * (param.dim() - 1))
    return direction


def directions(model: nn.Module, seed: int) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    generator = torch.Generator().manual_seed(seed)
    return filter_normalized_direction(model, generator), filter_normalized_direction(model, generator)


@torch.no_grad()
def move_to(model: nn.Module, origin: dict[str, torch.Tensor], d1: dict[str, torch.Tensor],
            d2: dict[str, torch.Tensor], a: float, b: float) -> None:
    """Set the perturbed parameters to origin + a d1 + b d2 (from the origin each time: no drift)."""
    for name, param in perturbed(model):
        param.copy_(origin[name] + a * d1[name] + b * d2[name])


# ---------------------------------------------------------------------------------------------- the grid
@dataclass
class Grid:
    """One run's grid: what it was computed with, and the values so far (NaN: not yet), indexed [b][a]."""

    settings: dict[str, Any]
    a: list[float]
    b: list[float]
    loss: np.ndarray
    error: np.ndarray

    @classmethod
    def empty(cls, settings: dict[str, Any], config: LandscapeConfig) -> Grid:
        shape = (len(config.b_axis()), config.resolution)
        return cls(settings, config.axis(), config.b_axis(), np.full(shape, np.nan), np.full(shape, np.nan))

    def todo(self) -> list[tuple[int, int]]:
        return [(i, j) for i in range(len(self.b)) for j in range(len(self.a)) if np.isnan(self.loss[i, j])]

    def to_json(self) -> bytes:
        def values(array: np.ndarray) -> list[list[float | None]]:
            return [[None if np.isnan(v) else float(v) for v in row] for row in array]
        return json.dumps({"settings": self.settings, "a": self.a, "b": self.b, "train_loss": values(self.loss),
                           "train_error": values(self.error)}).encode()

    @classmethod
    def read(cls, path: Path) -> Grid | None:
        """The grid saved at path, or None when it is missing or not a grid file (then it is computed anew)."""
        saved = read_json(path)
        try:
            loss = np.array(saved["train_loss"], dtype=float)  # type: ignore[index]
            error = np.array(saved["train_error"], dtype=float)  # type: ignore[index]
            grid = cls(dict(saved["settings"]), [float(x) for x in saved["a"]],  # type: ignore[index]
                       [float(x) for x in saved["b"]], loss, error)  # type: ignore[index]
        except (TypeError, KeyError, ValueError):
            return None
        return grid if loss.shape == error.shape == (len(grid.b), len(grid.a)) else None


def grid_settings(trained: TrainedRun, config: LandscapeConfig) -> dict[str, Any]:
    """What a saved grid must match to be resumed: the run's weights (a hash of its checkpoint) and data, and the
    grid's own settings."""
    digest = hashlib.sha256((trained.run.path / CHECKPOINT_FILE).read_bytes()).hexdigest()
    return {"run": str(trained.run.path.resolve()), "checkpoint_sha256": digest,
            "data_fingerprint": trained.dataset.fingerprint(),
            **{key: value for key, value in asdict(config).items() if key != "batch_size"}}


def fill_grid(trained: TrainedRun, config: LandscapeConfig, path: Path, device: torch.device,
              on_progress: OnEvalProgress = lambda _: None, force: bool = False) -> Grid:
    """The run's grid, resumed from path where it holds a partial grid of the same settings; each point is saved
    to path (atomically) as soon as it is computed. A UserError when path holds another grid (unless force)."""
    settings = grid_settings(trained, config)
    grid = Grid.read(path) if path.exists() else None
    # the axes too: a grid file edited to other points than its settings say would be drawn as these settings'
    same = grid is not None and grid.settings == settings and (grid.a, grid.b) == (config.axis(), config.b_axis())
    if grid is not None and not same and not force:
        raise UserError(f"{path} holds a grid of other settings or weights: remove it, choose another --out, or "
                        "pass --force to compute it anew")
    if grid is None or not same:
        grid = Grid.empty(settings, config)
    inputs, labels = split_images(trained, "train", config.images, device)
    model = trained.model
    origin = {name: param.detach().clone() for name, param in perturbed(model)}
    d1, d2 = directions(model, config.seed)
    total, todo = grid.loss.size, grid.todo()
    on_progress(EvalProgress(trained.label, total - len(todo), total))
    try:
        for done, (i, j) in enumerate(todo, start=total - len(todo) + 1):
            move_to(model, origin, d1, d2, grid.a[j], grid.b[i])
            grid.loss[i, j], grid.error[i, j] = loss_and_error(model, inputs, labels, config.batch_size)
            atomic_write_bytes(path, grid.to_json())
            on_progress(EvalProgress(trained.label, done, total))
    finally:
        move_to(model, origin, d1, d2, 0.0, 0.0)
    return grid


@dataclass
class Landscape:
    """What landscape_runs measured: one row per run and grid point, and a note for each run it left out."""

    table: pd.DataFrame  # LANDSCAPE_COLUMNS, one row per run x grid point
    notes: list[str] = field(default_factory=list)


def landscape_runs(run_dirs: Sequence[Path | str], config: LandscapeConfig, out_dir: Path | str,
                   device: torch.device | None = None, on_progress: OnEvalProgress = lambda _: None,
                   force: bool = False) -> Landscape:
    """Each finished run's grid, saved as out_dir/<run folder>.grid.json while it fills."""
    config.check()
    run_dirs, out_dir = [Path(run_dir) for run_dir in run_dirs], Path(out_dir)
    device = device or torch.device("cpu")
    runs = []
    for run_dir in run_dirs:
        finished_run(run_dir)  # a finished run folder, or a UserError saying what it is instead
        runs += load_runs(run_dir)[0]
    names = [run.path.name for run in runs]
    if len(set(names)) < len(names):
        twice = next(name for name in names if names.count(name) > 1)
        raise UserError(f"two run folders are named {twice}: their grids would share a file; run landscape on "
                        "each with its own --out")
    for run in runs:  # a family the folder names by import path is refused before anything is written
        family_named_by_folder(run.config.get("kind"), str(run.path / CONFIG_FILE))
    frames, data, groups = [], DataCache(), group_runs(runs)
    for key, group in groups.items():
        for run in group:
            trained = load_trained(run, key, data, device)
            # made once a run's weights have loaded: a refused checkpoint leaves no empty folder behind
            ensure_writable_dir(out_dir)
            grid = fill_grid(trained, config, out_dir / f"{run.path.name}{GRID_SUFFIX}", device, on_progress, force)
            frames.append(grid_rows(trained, grid, config))
    table = pd.concat(frames, ignore_index=True).reindex(columns=with_axes(LANDSCAPE_COLUMNS, groups))
    return Landscape(table, earlier_grids_note(out_dir, names))


def earlier_grids_note(out_dir: Path, names: list[str], most: int = 6) -> list[str]:
    """A note naming the grids an earlier call left in out_dir: landscape.csv and the figures are rewritten from the
    runs given, so a run landscaped on its own replaces the last one's. Only file names are read: a grid file
    names a run folder, and following it would let a planted file choose what is loaded."""
    others = sorted({path.name.removesuffix(GRID_SUFFIX) for path in out_dir.glob(f"*{GRID_SUFFIX}")} - set(names))
    if not others:
        return []
    shown = ", ".join(others[:most]) + (f" and {len(others) - most} more" if len(others) > most else "")
    return [f"{out_dir} also holds the grids of {shown} from an earlier call; landscape.csv and the figures now "
            "cover only the runs given: name all the run folders in one call to draw them together (a finished "
            "grid of the same settings is read, not computed again)"]


def grid_rows(trained: TrainedRun, grid: Grid, config: LandscapeConfig) -> pd.DataFrame:
    b, a = np.meshgrid(grid.b, grid.a, indexing="ij")
    frame = pd.DataFrame({"a": a.ravel(), "b": b.ravel(), "train_loss": grid.loss.ravel(),
                          "train_error": grid.error.ravel()})
    for column, value in {**trained.identity, "run": trained.label, "images": config.images,
                          "epoch": trained.epoch}.items():
        frame[column] = value
    return frame


# ---------------------------------------------------------------------------------------------- figures
def build_figures(landscape: Landscape) -> dict[str, Figure]:
    """landscape-1d-<study> (the b = 0 slice) and, for 2D grids, landscape-2d-<study> and landscape-2d-error-<study>
    (contours of the loss and of the error), per dataset."""
    figures = {}
    for study in studies(landscape.table):
        rows = study_rows(landscape.table, study)
        figures[f"landscape-1d-{study_name(study)}"] = slice_figure(rows, study)
        if rows["b"].nunique() > 1:
            figures[f"landscape-2d-{study_name(study)}"] = contour_figure(rows, study)
            figures[f"landscape-2d-error-{study_name(study)}"] = contour_figure(rows, study, "train_error")
    return as_written(figures)


def mean_grid(rows: pd.DataFrame, value: str) -> pd.DataFrame:
    """The value over (b rows, a columns), the mean over seeds."""
    return rows.pivot_table(index="b", columns="a", values=value, aggfunc="mean")


def contour_levels(values: np.ndarray, value: str = "train_loss") -> np.ndarray:
    """Li et al.'s levels for the loss (plot_2D.py: from 0.1 to 10 in steps of 0.5), started at the smallest loss
    the twins reach and stopped at the largest below 10; for the error, every 5% from the smallest to the largest.
    The same levels for every panel of one depth."""
    if value == "train_error":
        return np.arange(math.floor(np.nanmin(values) / 5) * 5, min(np.nanmax(values), 100) + 2.5, 5.0)
    low = max(0.1, math.floor(np.nanmin(values) * 10) / 10)
    high = min(LOSS_LEVELS_MAX, float(np.nanmax(values)))
    step = 0.5 if high - low > 2 else max((high - low) / 8, 1e-3)
    return np.arange(low, high + step / 2, step)


def contour_figure(frame: pd.DataFrame, study: tuple[str, str], value: str = "train_loss") -> Figure:
    """Contours of the training loss (or error), a row per depth, plain and residual twins side by side with the
    same levels (Li et al. 2018, Figure 5)."""
    nets = nets_of(frame)
    depths = sorted({n.depth for n in nets})
    variants = list(dict.fromkeys(n.variant for n in nets))
    figure = Figure(figsize=(FIG_WIDTH, 1.0 + 3.0 * len(depths)), layout="constrained")
    FigureCanvasAgg(figure)
    grid = figure.subplots(len(depths), len(variants), squeeze=False)
    what = "training loss" if value == "train_loss" else "training error (%)"
    for row, depth in enumerate(depths):
        twins = [n for n in nets if n.depth == depth]
        levels = contour_levels(np.concatenate([mean_grid(rows_of(frame, n), value).to_numpy().ravel()
                                                for n in twins]), value)
        drawn = None
        for column, variant in enumerate(variants):
            axes = grid[row][column]
            net = next((n for n in twins if n.variant == variant), None)
            axes.set_title(f"{variant}-{depth}", fontsize=FONT)
            axes.set_aspect("equal")
            axes.tick_params(labelsize=FONT - 1)
            axes.xaxis.set_major_locator(MaxNLocator(5))
            axes.yaxis.set_major_locator(MaxNLocator(5))
            if row == len(depths) - 1:
                axes.set_xlabel("a (first direction)", fontsize=FONT - 1)
            if column == 0:
                axes.set_ylabel("b (second direction)", fontsize=FONT - 1)
            if net is None:
                axes.text(0.5, 0.5, "no run", transform=axes.transAxes, ha="center", va="center", fontsize=FONT)
                continue
            values = mean_grid(rows_of(frame, net), value)
            drawn = axes.contour(values.columns, values.index, values.to_numpy(), levels=levels, cmap="summer",
                                 linewidths=0.9)
            # dark labels: summer's light end is unreadable as text on white
            axes.clabel(drawn, drawn.levels[::4], fontsize=FONT - 3, inline=True, colors="0.15", fmt="%g")
            axes.plot([0], [0], marker="+", color="black", markersize=7)
        if drawn is not None and len(drawn.levels) > 1:  # one scale per row, the twins' levels (one level: no scale)
            scale = figure.colorbar(drawn, ax=list(grid[row]), shrink=0.85, aspect=30)
            scale.set_label(what, fontsize=FONT - 1)
            scale.ax.tick_params(labelsize=FONT - 1)
    images = int(frame["images"].max())
    figure_title(figure, f"{study_title(study)}: {what} around the trained weights (Li et al. 2018, Fig. 5)\n"
                    f"filter-normalised random directions, {images:,} training images, evaluation mode;\n"
                    "the same contour levels for each depth's twins", fontsize=TITLE_FONT)
    return figure


def slice_figure(frame: pd.DataFrame, study: tuple[str, str]) -> Figure:
    """The b = 0 slice: training loss (top) and error (bottom) against a, a column per depth, twins as lines
    (plain dashed), the mean over seeds."""
    nets = nets_of(frame)
    depths = sorted({n.depth for n in nets})
    colours = depth_colours(depths)
    figure = Figure(figsize=(FIG_WIDTH, 4.6), layout="constrained")
    FigureCanvasAgg(figure)
    grid = figure.subplots(2, len(depths), squeeze=False, sharex=True)
    for column, depth in enumerate(depths):
        for net in (n for n in nets if n.depth == depth):
            rows = rows_of(frame, net)
            line = rows[np.isclose(rows["b"], 0.0)].groupby("a")[["train_loss", "train_error"]].mean()
            style, width = net.style
            for row, value in enumerate(("train_loss", "train_error")):
                grid[row][column].plot(line.index, line[value], color=colours[depth], linestyle=style,
                                       linewidth=width, label=net.label)
        grid[0][column].set_title(f"depth {depth}", fontsize=FONT)
        grid[0][column].set_yscale("log")
        plain_numbers(grid[0][column])
        grid[1][column].set_ylim(0, 100)
        grid[1][column].set_xlabel("a (along direction 1)", fontsize=FONT)
        for row in range(2):
            grid[row][column].tick_params(labelsize=FONT - 1)
            grid[row][column].grid(True, linewidth=0.5, alpha=0.4)
    grid[0][0].set_ylabel("training loss (log)", fontsize=FONT)
    grid[1][0].set_ylabel("training error (%)", fontsize=FONT)
    figure_title(figure, f"{study_title(study)}: 1D slice of the training loss (Li et al. 2018), filter-normalised "
                    "direction", fontsize=TITLE_FONT)
    handles = [Line2D([], [], color=colours[n.depth], linestyle=n.style[0], linewidth=n.style[1], label=n.label)
               for n in nets]
    figure.legend(handles=handles, loc="outside lower center", ncol=min(len(handles), 4), fontsize=FONT,
                  frameon=False)
    return figure


def plain_numbers(axes: Axes) -> None:
    """A log axis labelled 1, 2, 5, 10, 20, 50 ... in plain numbers (matplotlib's 6x10^1 minor labels crowd it)."""
    axes.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    axes.yaxis.set_minor_locator(LogLocator(subs="auto"))
    axes.yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    axes.yaxis.set_minor_formatter(FuncFormatter(lambda _value, _: ""))


# ---------------------------------------------------------------------------------------------- files
def write_landscape(landscape: Landscape, figures: dict[str, Figure], out_dir: Path,
                    formats: Sequence[str]) -> list[Path]:
    """landscape.csv (every run's grid) and every figure in every format into out_dir; returns the paths."""
    return save_outputs({LANDSCAPE_CSV: landscape.table}, figures, out_dir, formats)

