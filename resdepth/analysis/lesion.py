"""Lesion studies of trained runs: Veit, Wilber and Belongie, *Residual Networks Behave Like Ensembles of
Relatively Shallow Networks* (NeurIPS 2016).

At test time a block is deleted (a residual block leaves its shortcut's path; a plain block, where the shape
stays, the identity) or blocks are swapped, and the test error is measured. Which blocks a net has and what is
left without each is the network's own answer (`families.lesion_blocks`, see models/nets.py). Per run: the intact net,
each single block deleted, k random shape-keeping blocks deleted and k random pairs of shape-keeping blocks of one
stage swapped (k = 1 .. max_k, `draws` seeded draws each; twins of one depth draw the same blocks). Evaluation
only: BN in evaluation mode, the run's own normalisation, fp32. `build_figures` draws the paper's Figures 3 and 5
(error against the deleted block; error against k), plain and residual twins side by side. Nothing here prints.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator

from ..errors import UserError
from ..models.families import lesion_blocks
from ..models.nets import LesionBlock
from ..results.groups import group_runs, is_complete
from ..results.plots import (
    BAND_ALPHA,
    FIG_WIDTH,
    FONT,
    TITLE_FONT,
    as_written,
    figure_title,
    save_outputs,
    study_name,
    study_title,
)
from ..results.runs import Run
from .responses import IDENTITY_COLUMNS, DataCache, Net, nets_of, rows_of, studies, study_rows, with_axes
from .trained import EvalProgress, OnEvalProgress, TrainedRun, load_trained, loss_and_error, split_images

LESIONS = ("none", "delete-one", "delete-k", "swap-k")
LESION_COLUMNS = (*IDENTITY_COLUMNS, "lesion", "k", "draw", "block", "name", "stage", "downsampling", "residual",
                  "deletable", "deleted", "swapped", "test_error", "test_loss", "images", "epoch", "finished")
LESION_CSV = "lesion.csv"


@dataclass(frozen=True)
class LesionConfig:
    """What `resdepth lesion` evaluates (Veit et al. 2016): blocks deleted and swapped, k at a time."""

    images: int | None = None  # test images per net; None: the run's whole test split (Veit et al.: all 10k)
    max_k: int = 10  # Veit et al. Figure 5 go to 20 of ResNet-110's 54 blocks; 10 of ResNet-56's 27 here
    draws: int = 5  # random draws per k (the paper's bands)
    seed: int = 0  # of the draws: the same seed draws the same blocks for twins of one depth
    batch_size: int = 500  # images per forward pass

    def check(self) -> None:
        for name in ("max_k", "draws", "batch_size") + (("images",) if self.images is not None else ()):
            if getattr(self, name) < 1:
                raise UserError(f"--{name.replace('_', '-')} must be a positive integer, got {getattr(self, name)}")


@dataclass(frozen=True)
class Lesion:
    """One evaluation: the blocks deleted and the pairs swapped (0-based indices into the net's blocks)."""

    kind: str  # one of LESIONS
    k: int = 0
    draw: int = 0
    deleted: tuple[int, ...] = ()
    swaps: tuple[tuple[int, int], ...] = ()


@dataclass
class LesionResult:
    """What lesion_runs measured: one row per run and lesion, and a note for each run it could not lesion."""

    table: pd.DataFrame  # LESION_COLUMNS, one row per run x lesion
    notes: list[str] = field(default_factory=list)


# ---------------------------------------------------------------------------------------------- which lesions
def shape_keeping(blocks: list[LesionBlock]) -> list[int]:
    """Blocks that keep the shape and can be deleted: those the random draws choose from (the same for twins)."""
    return [i for i, block in enumerate(blocks) if block.without is not None and not block.downsampling]


def swappable_pairs(blocks: list[LesionBlock]) -> list[tuple[int, int]]:
    """Pairs of shape-keeping blocks of one stage (blocks of different stages see other shapes)."""
    keeping = [i for i, block in enumerate(blocks) if not block.downsampling]
    return [(i, j) for n, i in enumerate(keeping) for j in keeping[n + 1:] if blocks[i].stage == blocks[j].stage]


def plan_lesions(blocks: list[LesionBlock], config: LesionConfig) -> list[Lesion]:
    """The intact net, each block deleted alone (those that cannot be are recorded, not evaluated), then per k the
    seeded draws of k deleted blocks and of k swapped pairs."""
    plan = [Lesion("none")]
    plan += [Lesion("delete-one", 1, 0, (i,)) for i in range(len(blocks))]
    keeping, pairs = shape_keeping(blocks), swappable_pairs(blocks)
    for k in range(1, min(config.max_k, len(keeping)) + 1):
        for draw in range(config.draws):
            chosen = random.Random(f"{config.seed}:delete:{k}:{draw}").sample(keeping, k)
            plan.append(Lesion("delete-k", k, draw, tuple(sorted(chosen))))
    for k in range(1, min(config.max_k, len(pairs)) + 1):
        for draw in range(config.draws):
            plan.append(Lesion("swap-k", k, draw, swaps=tuple(random.Random(f"{config.seed}:swap:{k}:{draw}")
                                                               .sample(pairs, k))))
    return plan


def can_run(lesion: Lesion, blocks: list[LesionBlock]) -> bool:
    return all(blocks[i].without is not None for i in lesion.deleted)


@contextlib.contextmanager
def lesioned(blocks: list[LesionBlock], lesion: Lesion) -> Iterator[None]:
    """The net with the lesion's blocks deleted and pairs swapped (in order), put back afterwards."""
    arrangement = [block.container[block.position] for block in blocks]
    for i in lesion.deleted:
        arrangement[i] = blocks[i].without
    for i, j in lesion.swaps:
        arrangement[i], arrangement[j] = arrangement[j], arrangement[i]
    changed = [i for i, block in enumerate(blocks) if arrangement[i] is not block.container[block.position]]
    originals = {i: blocks[i].container[blocks[i].position] for i in changed}
    try:
        for i in changed:
            blocks[i].container[blocks[i].position] = arrangement[i]
        yield
    finally:
        for i, module in originals.items():
            blocks[i].container[blocks[i].position] = module


# ---------------------------------------------------------------------------------------------- evaluation
def lesion_runs(runs: list[Run], config: LesionConfig, device: torch.device | None = None,
                on_progress: OnEvalProgress = lambda _: None) -> LesionResult:
    """Every lesion of every run with a checkpoint (finished runs' final weights; unfinished runs' latest, marked).
    A UserError when no run is finished or none could be lesioned."""
    config.check()
    device = device or torch.device("cpu")
    if not any(is_complete(run) for run in runs):
        raise UserError(f"none of the {len(runs)} run(s) has finished training: lesion needs trained weights "
                        "(finish the sweep, e.g. by running its command again)")
    rows: list[dict[str, Any]] = []
    notes: list[str] = []
    refused: set[str] = set()  # families that cannot say what a block is: one line each, not one per run
    capped: dict[str, tuple[int, int]] = {}  # nets with fewer blocks to lesion than --max-k: the k each kind reaches
    data = DataCache()
    groups = group_runs(runs)
    for key, group in groups.items():
        for run in (run for run in group if key.kind not in refused):
            try:
                trained = load_trained(run, key, data, device)
            except UserError as exc:
                notes.append(f"skipped {run.path}: {exc}")
                continue
            try:
                blocks = lesion_blocks(trained.model, key.kind)
            except UserError as exc:
                notes.append(f"skipped the {key.kind} runs: {exc}")
                refused.add(key.kind)
                continue
            rows += lesion_run(trained, blocks, config, device, on_progress)
            deletions, swaps = len(shape_keeping(blocks)), len(swappable_pairs(blocks))
            if min(deletions, swaps) < config.max_k:
                capped[trained.label] = (min(deletions, config.max_k), min(swaps, config.max_k))
    notes += [f"{label}: --max-k {config.max_k} reaches k = {deletions} for deletions and {swaps} for swaps (only "
              "so many blocks keep their shape)" for label, (deletions, swaps) in capped.items()]
    if not rows:
        raise UserError(f"no run could be lesioned ({notes[0]})" if notes else "no run could be lesioned")
    table = pd.DataFrame(rows, columns=with_axes(LESION_COLUMNS, groups))
    table = table.astype({"block": "Int64", "stage": "Int64"})
    return LesionResult(table, notes)


def lesion_run(trained: TrainedRun, blocks: list[LesionBlock], config: LesionConfig, device: torch.device,
               on_progress: OnEvalProgress) -> list[dict[str, Any]]:
    """Every lesion of one run's net on its test images (or a class-balanced subset), one row each."""
    inputs, labels = split_images(trained, "test", config.images, device)
    plan = plan_lesions(blocks, config)
    rows = []
    on_progress(EvalProgress(trained.label, 0, len(plan)))
    for done, lesion in enumerate(plan, start=1):
        loss, error = float("nan"), float("nan")
        if can_run(lesion, blocks):
            with lesioned(blocks, lesion):
                loss, error = loss_and_error(trained.model, inputs, labels, config.batch_size)
        rows.append(lesion_row(trained, blocks, lesion, error, loss, len(labels)))
        on_progress(EvalProgress(trained.label, done, len(plan)))
    return rows


def lesion_row(trained: TrainedRun, blocks: list[LesionBlock], lesion: Lesion, error: float, loss: float,
               images: int) -> dict[str, Any]:
    block = blocks[lesion.deleted[0]] if lesion.kind == "delete-one" else None
    return {**trained.identity, "lesion": lesion.kind, "k": lesion.k, "draw": lesion.draw,
            "block": lesion.deleted[0] + 1 if block else None, "name": block.name if block else "",
            "stage": block.stage if block else None, "downsampling": block.downsampling if block else None,
            "residual": block.residual if block else None, "deletable": block.without is not None if block else None,
            "deleted": " ".join(str(i + 1) for i in lesion.deleted),
            "swapped": " ".join(f"{i + 1}-{j + 1}" for i, j in lesion.swaps),
            "test_error": error, "test_loss": loss, "images": images, "epoch": trained.epoch,
            "finished": trained.finished}


# ---------------------------------------------------------------------------------------------- figures
def build_figures(result: LesionResult) -> dict[str, Figure]:
    """lesion-blocks-<study> (Veit et al. Figure 3) and lesion-k-<study> (Figure 5) per dataset and setting."""
    figures = {}
    for study in studies(result.table):
        rows = study_rows(result.table, study)
        figures[f"lesion-blocks-{study_name(study)}"] = blocks_figure(rows, study)
        if rows["lesion"].isin(["delete-k", "swap-k"]).any():
            figures[f"lesion-k-{study_name(study)}"] = k_figure(rows, study)
    return as_written(figures)


Panel = tuple[Axes, Net | None, int, str]  # axes, the net it shows (None: no runs), depth, variant


def twin_grid(frame: pd.DataFrame, height: float, xlabel: str) -> tuple[Figure, list[Panel]]:
    """A row per depth, a column per variant (plain, then residual, ...), one y axis for all panels."""
    nets = nets_of(frame)
    depths = sorted({n.depth for n in nets})
    variants = list(dict.fromkeys(n.variant for n in nets))
    figure = Figure(figsize=(FIG_WIDTH, 1.2 + height * len(depths)), layout="constrained")
    FigureCanvasAgg(figure)
    grid = figure.subplots(len(depths), len(variants), sharey=True, squeeze=False)
    panels = []
    for row, depth in enumerate(depths):
        for column, variant in enumerate(variants):
            net = next((n for n in nets if n.depth == depth and n.variant == variant), None)
            axes = grid[row][column]
            axes.set_title(f"{variant}-{depth}", fontsize=FONT)
            axes.tick_params(labelsize=FONT - 1)
            axes.grid(True, linewidth=0.5, alpha=0.4)
            axes.xaxis.set_major_locator(MaxNLocator(integer=True))
            if row == len(depths) - 1:
                axes.set_xlabel(xlabel, fontsize=FONT)
            if column == 0:
                axes.set_ylabel("test error (%)", fontsize=FONT)
            if net is None:
                axes.text(0.5, 0.5, "no runs", transform=axes.transAxes, ha="center", va="center", fontsize=FONT)
            panels.append((axes, net, depth, variant))
    return figure, [panel for panel in panels if panel[1] is not None]


def baseline(rows: pd.DataFrame) -> float:
    return float(rows[rows["lesion"] == "none"]["test_error"].mean())


def blocks_figure(frame: pd.DataFrame, study: tuple[str, str]) -> Figure:
    """Test error with each single block deleted, against the block's index: the mean over seeds, their range a
    band; downsampling blocks marked; the intact net's error dashed; blocks that cannot be deleted marked x."""
    figure, panels = twin_grid(frame, 2.0, "deleted block")
    for axes, net, _, _ in panels:
        assert net is not None
        rows = rows_of(frame, net)
        single = rows[rows["lesion"] == "delete-one"]
        by_block = single.groupby("block")["test_error"]
        mean, low, high = by_block.mean(), by_block.min(), by_block.max()
        axes.plot(mean.index, mean.values, color="C0", linewidth=1.6, marker="o", markersize=3)
        axes.fill_between(mean.index, low.values, high.values, color="C0", alpha=BAND_ALPHA, linewidth=0)
        down = single[single["downsampling"].astype(bool)].groupby("block")["test_error"].mean().dropna()
        axes.plot(down.index, down.values, linestyle="none", marker="s", markersize=6, color="C3")
        blocked = sorted(single[~single["deletable"].astype(bool)]["block"].unique())
        axes.plot(blocked, [0] * len(blocked), linestyle="none", marker="x", color="0.3", markersize=6)
        axes.axhline(baseline(rows), color="0.35", linestyle="--", linewidth=1)
        axes.set_title(net.label + finished_mark(rows), fontsize=FONT)
    top_axis(panels, frame)
    images = int(frame["images"].max())
    figure_title(figure, f"{study_title(study)}: test error with one block deleted (Veit et al. 2016, Fig. 3)\n"
                    f"{images:,} test images per net, evaluation mode; mean over seeds, range as a band",
                    fontsize=TITLE_FONT)
    handles = [Line2D([], [], color="C0", marker="o", markersize=3, label="one block deleted"),
               Line2D([], [], color="C3", marker="s", linestyle="none", label="downsampling block"),
               Line2D([], [], color="0.3", marker="x", linestyle="none", label="cannot be deleted"),
               Line2D([], [], color="0.35", linestyle="--", label="intact net")]
    figure.legend(handles=handles, loc="outside lower center", ncol=4, fontsize=FONT, frameon=False)
    return figure


def k_figure(frame: pd.DataFrame, study: tuple[str, str]) -> Figure:
    """Test error against k, with k random blocks deleted and k random pairs swapped: the mean over draws and
    seeds, their range a band; k = 0 is the intact net."""
    figure, panels = twin_grid(frame, 2.0, "k")
    styles = {"delete-k": ("C0", "-", "k random blocks deleted"), "swap-k": ("C2", "--", "k random pairs swapped")}
    for axes, net, _, _ in panels:
        assert net is not None
        rows = rows_of(frame, net)
        for lesion, (colour, style, _) in styles.items():
            chosen = rows[rows["lesion"] == lesion]
            if chosen.empty:
                continue
            errors = chosen.groupby("k")["test_error"]
            ks = [0, *errors.mean().index]
            start = baseline(rows)
            axes.plot(ks, [start, *errors.mean().values], color=colour, linestyle=style, linewidth=1.6, marker="o",
                      markersize=3)
            axes.fill_between(ks, [start, *errors.min().values], [start, *errors.max().values], color=colour,
                              alpha=BAND_ALPHA, linewidth=0)
        axes.set_title(net.label + finished_mark(rows), fontsize=FONT)
    top_axis(panels, frame)
    draws = int(frame["draw"].max()) + 1
    figure_title(figure, f"{study_title(study)}: test error with k blocks deleted or k pairs swapped (Veit et al. "
                 f"2016, Fig. 5)\n{draws} seeded draws per k, bands over draws and seeds", fontsize=TITLE_FONT)
    handles = [Line2D([], [], color=c, linestyle=s, marker="o", markersize=3, label=label)
               for c, s, label in styles.values()]
    figure.legend(handles=handles, loc="outside lower center", ncol=2, fontsize=FONT, frameon=False)
    return figure


def top_axis(panels: list[Panel], frame: pd.DataFrame) -> None:
    """0 to a little above the worst error (chance is 90% on 10 classes): every panel shares the y axis."""
    worst = frame["test_error"].max()
    if panels:
        panels[0][0].set_ylim(0, min(100.0, float(worst) * 1.08 + 1) if pd.notna(worst) else 100.0)


def finished_mark(rows: pd.DataFrame) -> str:
    return "" if rows["finished"].all() else " (unfinished)"


# ---------------------------------------------------------------------------------------------- files
def write_lesion(result: LesionResult, figures: dict[str, Figure], out_dir: Path, formats: Sequence[str]) -> list[Path]:
    """lesion.csv and every figure in every format into out_dir; returns the paths written."""
    return save_outputs({LESION_CSV: result.table}, figures, out_dir, formats)
