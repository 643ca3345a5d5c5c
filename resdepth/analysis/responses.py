"""Why deep plain nets degrade: layer responses (§4.2, Figure 7) and per-layer gradient norms (§1, §4.1).

`analyze(runs)` runs each trained net over a split's images in evaluation mode and streams, per 3x3 layer, float64
sums and sums of squares of its response (the BN output, before the ReLU or the addition; for pre-activation nets,
per unit, its residual function F(x); which modules those are is the network's own answer,
`model.response_layers()`, and what they measure its `response_measure`); it never keeps activation tensors. It
also gathers the gradients.csv that training logged. `build_figures` draws Figure 7 (once per quantity measured) and
the gradient-norm figure per dataset, as matplotlib Figures on the Agg canvas (no pyplot); `write_analysis` writes
them and the CSVs. Nothing here prints.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
from collections.abc import Callable, Iterator, Sequence
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
from torch import nn

from ..errors import UserError
from ..models.families import NoResponseLayers, family_order, is_plain_twin, known_family, response_layers
from ..results.groups import GroupKey, group_runs, is_complete
from ..results.plots import (
    BAND_ALPHA,
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
from ..results.runs import GRADIENT_COLUMNS, GRADIENTS_FILE, MAX_CSV_BYTES, Run, read_folder_file
from ..results.tables import axis_cells, with_axis_columns
from ..train.construct import check_same_data, full_fp32, input_batches, read_saved_net, run_dataset
from ..train.data import Dataset, balanced_subset

SPLITS = ("test", "train", "val")
STDS = {"std": "std over all elements", "channel_std": "mean over channels of the per-channel std"}
IDENTITY_COLUMNS = ("dataset", "setting", "kind", "shortcut", "depth", "seed")
RESPONSE_COLUMNS = (*IDENTITY_COLUMNS, "layer", "stage", "std", "channel_std", "name", "measure", "split", "images",
                    "epoch", "finished")
GRADIENT_TABLE_COLUMNS = (*IDENTITY_COLUMNS, "epoch", "iteration", "lr", "layer", "name", "grad_norm",
                          "weight_norm", "sampled_steps", "finished")
# A grid's axis takes a column of its name in every analysis CSV, axis_<name> where that name is taken (the epoch's
# lr of gradients.csv is not the lr axis), so the same axis has the same column in responses, gradients, lesions
ANALYSIS_COLUMNS = frozenset({*RESPONSE_COLUMNS, *GRADIENT_TABLE_COLUMNS, "run", "a", "b", "images", "epoch", "lesion",
                              "k", "draw", "block", "stage"})
IMAGE_SUBSET_SEED = 0  # --images N: the same class-balanced subset for every run of a dataset
EVAL_BATCH = 500



@dataclass(frozen=True)
class Measure:
    """A quantity Figure 7 can draw: what a network's `response_measure` names (one figure per measure)."""

    title: str  # what the figure's title says is measured
    unit: str  # what one point on the x axis is


MEASURES = {
    # §4.2's Figure 7: "the outputs of each 3x3 layer, after BN and before other nonlinearity (ReLU/addition)"
    "bn_output": Measure("each 3x3 layer's response (after BN, before ReLU/addition)", "layer"),
    # pre-activation nets have no BN there: what their units add to the shortcut (2016b's nets)
    "residual_function": Measure("each unit's residual function F(x) (its last conv's output, before the addition)",
                                 "unit"),
    "layer_output": Measure("the output of each module the network names in response_layers()", "layer"),
}


def response_measure(model: nn.Module) -> str:
    """What the net's response layers measure (MEASURES' key); a user's net that does not say: its modules' outputs."""
    measure = getattr(model, "response_measure", "layer_output")
    return measure if measure in MEASURES else "layer_output"


# Figures: results/plots.py's size, fonts and colours (Figures 1 and 6). A plain twin dashed, every other family bold:
# twins of one depth share a colour
TWIN_STYLE, FAMILY_STYLE = ("--", 1.4), ("-", 2.0)


# ---------------------------------------------------------------------------------------------- layer responses
@contextlib.contextmanager
def hooked_responses(model: nn.Module, record: Callable[[int, torch.Tensor], None]) -> Iterator[None]:
    """Call record(layer index, response) for every response layer the model names, on every forward pass."""
    def hook(index: int) -> Callable[..., None]:
        return lambda _module, _inputs, output: record(index, output)

    handles = [layer.module.register_forward_hook(hook(index))
               for index, layer in enumerate(response_layers(model))]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


class ResponseStats:
    """Per layer and channel, float64 sums of the response and of its square, and the element count per channel."""

    def __init__(self, layers: int):
        self.sums: list[torch.Tensor | None] = [None] * layers
        self.squares: list[torch.Tensor | None] = [None] * layers
        self.count = [0] * layers

    def add(self, index: int, response: torch.Tensor) -> None:
        sums = response.sum((0, 2, 3), dtype=torch.float64)
        squares = response.square().sum((0, 2, 3), dtype=torch.float64)
        self.sums[index] = sums if self.sums[index] is None else self.sums[index] + sums
        self.squares[index] = squares if self.squares[index] is None else self.squares[index] + squares
        self.count[index] += response.numel() // response.shape[1]

    def stds(self, index: int) -> tuple[float, float]:
        """(std over all elements, mean over channels of the per-channel std); population std (ddof 0)."""
        sums, squares, count = self.sums[index], self.squares[index], self.count[index]
        assert sums is not None and squares is not None, "no images went through the net"
        channel_mean = sums / count
        channel_var = (squares / count - channel_mean.square()).clamp_min(0)
        mean = sums.sum() / (count * len(sums))
        var = (squares.sum() / (count * len(sums)) - mean.square()).clamp_min(0)
        return math.sqrt(float(var)), float(channel_var.sqrt().mean())


@dataclass
class LayerResponse:
    layer: int  # 1-based, forward order
    name: str
    stage: int  # 0: the stem; 1-3: the stages
    std: float
    channel_std: float


@torch.no_grad()
def layer_responses(model: nn.Module, images: torch.Tensor, mean: torch.Tensor, device: torch.device,
                    batch_size: int = EVAL_BATCH) -> list[LayerResponse]:
    """The std of each response layer's output over uint8 `images` minus the training `mean`, in evaluation
    mode (BN running statistics) and fp32. Only per-channel sums are kept, so any number of images fits."""
    layers = response_layers(model)
    stats = ResponseStats(len(layers))
    model.eval()
    with full_fp32(device), hooked_responses(model, stats.add):
        for batch in input_batches(images, mean, device, batch_size):
            model(batch)
    return [LayerResponse(index + 1, layer.name, layer.stage, *stats.stds(index)) for index, layer in enumerate(layers)]


def choose_images(images: torch.Tensor, labels: torch.Tensor, count: int | None) -> torch.Tensor:
    """All of a split's images, or a seeded class-balanced subset of `count` of them (the same for every run)."""
    if count is None or count >= len(labels):
        return images
    return images[balanced_subset(labels, count, IMAGE_SUBSET_SEED)]


# ---------------------------------------------------------------------------------------------- runs
@dataclass
class Analysis:
    """What `analyze` found: one row per run and response layer, one row per run, epoch and weight layer of
    gradients.csv, and one line per run or file left out (or other things a user should know)."""

    responses: pd.DataFrame
    gradients: pd.DataFrame
    notes: list[str] = field(default_factory=list)
    split: str = "test"


class DataCache:
    """Each dataset a run names, loaded and fingerprinted once for all the runs that share it."""

    def __init__(self) -> None:
        self.loaded: dict[str, Dataset | UserError] = {}

    def get(self, config: dict[str, Any]) -> Dataset:
        key = json.dumps(config.get("data", {}), sort_keys=True)
        if key not in self.loaded:
            try:
                self.loaded[key] = run_dataset(config)
            except UserError as exc:
                self.loaded[key] = exc
        found = self.loaded[key]
        if isinstance(found, UserError):
            raise found
        return found


def analyze(runs: list[Run], split: str = "test", images: int | None = None,
            device: torch.device | None = None, batch_size: int = EVAL_BATCH) -> Analysis:
    """Layer responses of every run with a checkpoint (the finished runs' final weights; unfinished runs' latest,
    marked) and the gradient norms their training logged. A UserError when no run is finished."""
    check_options(split, images, batch_size)
    device = device or torch.device("cpu")
    if not any(is_complete(run) for run in runs):
        raise UserError(f"none of the {len(runs)} run(s) has finished training: analyze needs trained weights "
                        "(finish the sweep, e.g. by running its command again)")
    notes: list[str] = []
    response_rows: list[dict[str, Any]] = []
    gradient_frames: list[pd.DataFrame] = []
    without_gradients: list[Path] = []
    without_layers = 0  # runs of a net that names no response layers (a family of yours may not)
    data = DataCache()
    groups = group_runs(runs)
    for key, group in groups.items():
        for run in group:
            identity = run_identity(key, run)
            try:
                response_rows += run_responses(run, identity, data, split, images, device, batch_size)
            except NoResponseLayers as exc:
                notes.append(f"skipped {run.path}: {exc}")
                without_layers += 1
            except UserError as exc:
                notes.append(f"skipped {run.path}: {exc}")
            if not (run.path / GRADIENTS_FILE).is_file():
                without_gradients.append(run.path)
                continue
            gradients, note = run_gradients(run, identity)
            if note:
                notes.append(note)
            if gradients is not None:
                gradient_frames.append(gradients)
    if not response_rows and not (gradient_frames and without_layers):  # such a net still has its gradients
        raise UserError(f"no run could be analysed ({notes[0]})" if notes else "no run could be analysed")
    if without_gradients:
        notes.append(f"{len(without_gradients)} run(s) have no {GRADIENTS_FILE} (trained before resdepth logged "
                     f"gradient norms), e.g. {without_gradients[0]}")
    gradients = pd.concat(gradient_frames, ignore_index=True) if gradient_frames else pd.DataFrame()
    return Analysis(pd.DataFrame(response_rows, columns=with_axes(RESPONSE_COLUMNS, groups)),
                    gradients.reindex(columns=with_axes(GRADIENT_TABLE_COLUMNS, groups)), notes, split)


def with_axes(columns: tuple[str, ...], groups: dict[GroupKey, list[Run]]) -> list[str]:
    """An analysis CSV's columns, with one per axis of the runs' grid between setting and kind."""
    return with_axis_columns(columns, groups, ANALYSIS_COLUMNS)


def run_identity(key: GroupKey, run: Run) -> dict[str, Any]:
    """The CSV columns that say which run a row is of: IDENTITY_COLUMNS, and a column per axis of a grid (lr, width:
    the same columns as `table --csv`), so that a grid's rows can be told apart without parsing `setting`."""
    return {"dataset": key.dataset, "setting": key.setting, "kind": key.kind, "shortcut": key.shortcut,
            "depth": key.depth, "seed": int(run.setting("seed", 0)), **axis_cells(key, ANALYSIS_COLUMNS)}


def run_responses(run: Run, identity: dict[str, Any], data: DataCache, split: str, count: int | None,
                  device: torch.device, batch_size: int) -> list[dict[str, Any]]:
    saved = read_saved_net(run.path)
    dataset = data.get(run.config)
    check_same_data(dataset, saved.checkpoint, run.path)
    chosen = dataset.splits().get(split)
    if chosen is None:
        raise UserError(f"it has no {split} split (trained without --val-size)")
    images = choose_images(*chosen, count)
    model = saved.load(device)
    rows = layer_responses(model, images, dataset.pixel_mean(), device, batch_size)
    epoch, measure = saved.checkpoint.get("epoch"), response_measure(model)
    return [{**identity, "layer": row.layer, "stage": row.stage, "std": row.std, "channel_std": row.channel_std,
             "name": row.name, "measure": measure, "split": split, "images": len(images), "epoch": epoch,
             "finished": is_complete(run)}
            for row in rows]


def run_gradients(run: Run, identity: dict[str, Any]) -> tuple[pd.DataFrame | None, str | None]:
    """The run's gradients.csv with its identity and each epoch's lr, for the epochs metrics.csv holds; epochs
    cut short by a kill (fewer rows than layers, a torn last line) are left out."""
    path = run.path / GRADIENTS_FILE
    try:
        frame = pd.read_csv(io.BytesIO(read_folder_file(path, MAX_CSV_BYTES)))
    except UserError as exc:
        return None, f"left out {exc}"
    except (OSError, ValueError) as exc:
        return None, f"left out {path}: not a readable CSV ({type(exc).__name__})"
    missing = [c for c in GRADIENT_COLUMNS if c not in frame.columns]
    if missing:
        return None, f"left out {path}: it lacks the columns {', '.join(missing)}"
    numeric = [c for c in GRADIENT_COLUMNS if c != "name"]
    frame[numeric] = frame[numeric].apply(pd.to_numeric, errors="coerce")
    frame = frame.dropna(subset=["epoch", "layer", "sampled_steps"])
    layers = frame["layer"].max()
    complete = frame.groupby("epoch")["layer"].transform("count") == layers
    lrs = run.metrics.set_index("epoch")["lr"]
    frame = frame[complete & frame["epoch"].isin(lrs.index)].copy()
    if frame.empty:
        return None, None
    frame["lr"] = frame["epoch"].map(lrs)
    for column, value in {**identity, "finished": is_complete(run)}.items():
        frame[column] = value
    return frame, None  # analyze keeps the columns of its table (with_axes) once the runs' frames are joined


# ---------------------------------------------------------------------------------------------- figures
@dataclass(frozen=True)
class Net:
    """One line of a figure: a family (with its shortcut) and depth, over its seeds."""

    kind: str
    shortcut: str
    depth: int

    @property
    def label(self) -> str:
        """plain-20, residual-56, residual-B-56 (the shortcut where it is not the family's default)."""
        return f"{known_family(self.kind).variant(self.shortcut)}-{self.depth}"

    @property
    def variant(self) -> str:
        return known_family(self.kind).variant(self.shortcut)

    @property
    def style(self) -> tuple[str, float]:
        return TWIN_STYLE if is_plain_twin(self.kind) else FAMILY_STYLE


def nets_of(frame: pd.DataFrame) -> list[Net]:
    """The nets in a study's rows, in the families' order (plain first), shallow to deep."""
    found = {Net(str(k), str(s) if isinstance(s, str) else "", int(d))
             for k, s, d in frame[["kind", "shortcut", "depth"]].itertuples(index=False)}
    return sorted(found, key=lambda n: (family_order(n.kind), n.kind, n.shortcut, n.depth))


def rows_of(frame: pd.DataFrame, net: Net) -> pd.DataFrame:
    shortcut = frame["shortcut"].fillna("").astype(str)
    return frame[(frame["kind"] == net.kind) & (shortcut == net.shortcut) & (frame["depth"] == net.depth)]


def studies(frame: pd.DataFrame) -> list[tuple[str, str]]:
    """(dataset, setting) pairs in order of appearance: one figure each, as `plot` draws one Figure 6 each."""
    setting = frame["setting"].fillna("").astype(str)
    return list(dict.fromkeys(zip(frame["dataset"].astype(str), setting, strict=True)))


def study_rows(frame: pd.DataFrame, study: tuple[str, str]) -> pd.DataFrame:
    """The study's rows that its figures average: of a net with finished runs, only theirs (as `plot` and `table`
    leave its unfinished seeds out of the mean); of a net with none finished, all (marked unfinished)."""
    rows = frame[(frame["dataset"].astype(str) == study[0]) & (frame["setting"].fillna("").astype(str) == study[1])]
    if "finished" not in rows:  # a landscape's rows: finished runs only
        return rows
    net = [rows["kind"], rows["shortcut"].fillna("").astype(str), rows["depth"]]
    any_finished = rows["finished"].astype(bool).groupby(net).transform("any")
    return rows[rows["finished"].astype(bool) | ~any_finished]


def check_options(split: str, images: int | None, batch_size: int) -> None:
    """The options `analyze` takes, refused in one line before any run is read."""
    if split not in SPLITS:
        raise UserError(f"unknown split {split!r}: use one of {', '.join(SPLITS)}")
    if images is not None and images < 1:
        raise UserError(f"--images must be a positive number of images, got {images}")
    if batch_size < 1:
        raise UserError(f"--batch-size must be a positive integer, got {batch_size}")


def check_std(std: str) -> None:
    if std not in STDS:
        raise UserError(f"unknown --std {std!r}: use std (all elements) or channel_std (mean of per-channel stds)")


def build_figures(analysis: Analysis, std: str = "std") -> dict[str, Figure]:
    """figure7-<study> and gradients-<study> per dataset (and setting), by file stem; Figure 7 once per quantity
    measured (figure7-<study>-residual_function for pre-activation nets): different quantities never share a panel."""
    check_std(std)
    figures = {}
    for study in studies(analysis.responses):
        rows = study_rows(analysis.responses, study)
        measures = list(dict.fromkeys(rows["measure"]))
        for measure in measures:
            suffix = "" if measure == "bn_output" or len(measures) == 1 else f"-{measure.replace('_', '-')}"
            figures[f"figure7-{study_name(study)}{suffix}"] = figure7(rows[rows["measure"] == measure], study, std,
                                                                      measure)
    for study in studies(analysis.gradients) if not analysis.gradients.empty else []:
        figures[f"gradients-{study_name(study)}"] = gradient_figure(study_rows(analysis.gradients, study), study)
    return as_written(figures)


def figure7(frame: pd.DataFrame, study: tuple[str, str], std: str = "std", measure: str = "bn_output") -> Figure:
    """The paper's Figure 7 layout: the std of each layer's response (or each unit's residual function: `measure`)
    in forward order (top) and sorted by magnitude, descending (bottom); one line per net, the mean over seeds,
    their range as a band."""
    what = MEASURES[measure]
    figure = Figure(figsize=(FIG_WIDTH, 5.6), layout="constrained")
    FigureCanvasAgg(figure)
    original, ranked = figure.subplots(2, 1)
    nets = nets_of(frame)
    colours = depth_colours(net.depth for net in nets)
    for net in nets:
        rows = rows_of(frame, net)
        by_seed = rows.pivot_table(index="layer", columns="seed", values=std)
        ordered = pd.DataFrame({seed: sorted(by_seed[seed].dropna(), reverse=True) for seed in by_seed.columns},
                               index=by_seed.index)  # each seed sorted on its own, then averaged by rank
        unfinished = not rows["finished"].all()
        for axes, values in ((original, by_seed), (ranked, ordered)):
            draw_band_line(axes, values, colours[net.depth], net, unfinished)
    images, split = int(frame["images"].max()), str(frame["split"].iloc[0])
    # Linear from 0 as the paper; a log axis when one net's responses are 10x another's, which would flatten the
    # rest into one line at the bottom (a plain net whose first layers blew up early in training).
    values = frame[std][frame[std] > 0]
    logarithmic = not values.empty and values.max() > 10 * values.min()
    label = "std (all elements)" if std == "std" else "std (mean over channels)"
    label += ", log scale" if logarithmic else ""
    for axes, title in ((original, f"{what.unit}s in their original order"),
                        (ranked, f"{what.unit}s sorted by std, descending")):
        axes.set_title(title, fontsize=TITLE_FONT)
        axes.set_xlabel(f"{what.unit} index" if axes is original else "rank", fontsize=FONT)
        axes.set_ylabel(label, fontsize=FONT)
        axes.set_xlim(left=0)
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))  # layers and units are counted
        if logarithmic:
            axes.set_yscale("log")
        else:
            axes.set_ylim(bottom=0)
        axes.tick_params(labelsize=FONT - 1)
        axes.grid(True, linewidth=0.5, alpha=0.4)
    figure_title(figure, f"{study_title(study)}: std of {what.title}\n"
                    f"{split} split, {images:,} images per net, evaluation mode", fontsize=TITLE_FONT)
    handles = [Line2D([], [], color=colours[n.depth], linestyle=n.style[0], linewidth=n.style[1],
                      label=n.label + ("" if rows_of(frame, n)["finished"].all() else " (unfinished)"))
               for n in nets]
    figure.legend(handles=handles, loc="outside lower center", ncol=min(len(handles), 5), fontsize=FONT, frameon=False)
    return figure


def draw_band_line(axes: Axes, values: pd.DataFrame, colour: str, net: Net, unfinished: bool) -> None:
    """values: one column per seed, indexed by layer (or rank): the mean as a line, the range as a band."""
    style, width = net.style
    xs = values.index.to_numpy()
    axes.plot(xs, values.mean(axis=1), color=colour, linestyle=style, linewidth=width, label=net.label,
              marker=None if not unfinished else "o", markevery=[-1], markerfacecolor="white", markersize=4)
    if values.shape[1] > 1:
        axes.fill_between(xs, values.min(axis=1), values.max(axis=1), color=colour, alpha=BAND_ALPHA, linewidth=0)


def training_points(metrics: pd.DataFrame) -> list[tuple[str, int]]:
    """(role, epoch) pairs to draw: the first epoch and the last epoch at each lr, largest lr first (a warm-up's
    lr 0.01 epochs come before those of the 0.01 stage, so 'end of lr 0.01' is the stage's end)."""
    frame = metrics.dropna(subset=["epoch", "lr"])
    lr = frame["lr"].map(lambda value: float(f"{value:.6g}"))  # 0.1 * 0.1 is 0.010000000000000002, warm-up's 0.01
    ends = frame.groupby(lr)["epoch"].max().sort_index(ascending=False)
    points = [(f"end of lr {lr:g}", int(epoch)) for lr, epoch in ends.items()]
    first = int(frame["epoch"].min())
    if first not in ends.values:
        points.insert(0, ("first epoch", first))
    return points


def gradient_figure(frame: pd.DataFrame, study: tuple[str, str]) -> Figure:
    """Gradient norm per weight layer (log y, shared by every panel), one row per depth, plain and residual side
    by side; a line per point of training, the mean over seeds. Vanishing gradients would fall towards layer 1."""
    nets = nets_of(frame)
    depths = sorted({n.depth for n in nets})
    variants = list(dict.fromkeys(n.variant for n in nets))
    figure = Figure(figsize=(FIG_WIDTH, 1.0 + 1.75 * len(depths)), layout="constrained")
    FigureCanvasAgg(figure)
    grid = figure.subplots(len(depths), len(variants), sharey=True, squeeze=False)
    roles = gradient_roles(frame)
    colours = role_colours(roles)
    for row, depth in enumerate(depths):
        for column, variant in enumerate(variants):
            axes = grid[row][column]
            net = next((n for n in nets if n.depth == depth and n.variant == variant), None)
            boundaries = known_family(net.kind if net else nets[0].kind).stage_boundaries(depth)
            style_gradient_axes(axes, depth, boundaries, bottom=row == len(depths) - 1, left=column == 0)
            if net is None:
                axes.text(0.5, 0.5, "no runs", transform=axes.transAxes, ha="center", va="center", fontsize=FONT)
                axes.set_title(f"{variant}-{depth}", fontsize=FONT)
                continue
            rows = rows_of(frame, net)
            for role, epochs in roles_of(rows).items():
                wanted = set(epochs.items())
                at = rows[[(int(s), int(e)) in wanted for s, e in zip(rows["seed"], rows["epoch"], strict=True)]]
                means = at.groupby("layer")["grad_norm"].mean()
                axes.plot(means.index, means.values, color=colours[role], linewidth=1.5, marker="o", markersize=2)
            finished = "" if rows["finished"].all() else " (unfinished)"
            axes.set_title(f"{net.label}{finished}", fontsize=FONT)
    figure_title(figure, f"{study_title(study)}: L2 norm of each layer's weight gradient, mean over the sampled "
                 "steps of an epoch", fontsize=TITLE_FONT)
    epochs = role_epochs(frame)
    handles = [Line2D([], [], color=colours[role], linewidth=2,
                      label=role + (f" (epoch {epochs[role]})" if epochs.get(role) and role != "first epoch" else ""))
               for role in roles]
    figure.legend(handles=handles, loc="outside lower center", ncol=len(handles) if len(handles) <= 3 else 2,
                  fontsize=FONT, frameon=False)
    return figure


def roles_of(rows: pd.DataFrame) -> dict[str, dict[int, int]]:
    """Per role, the epoch each seed drew it at (seeds of one setting share the schedule, but may stop apart)."""
    result: dict[str, dict[int, int]] = {}
    for seed, seed_rows in rows.groupby("seed"):
        metrics = seed_rows[["epoch", "lr"]].drop_duplicates()
        for role, epoch in training_points(metrics):
            result.setdefault(role, {})[int(seed)] = epoch  # type: ignore[arg-type]
    return result


def role_epochs(frame: pd.DataFrame) -> dict[str, int | None]:
    """Per role, its epoch where every net and seed of the study drew it at the same one (else None)."""
    seen: dict[str, set[int]] = {}
    for _, rows in frame.groupby(["kind", "shortcut", "depth", "seed"], dropna=False):
        for role, epoch in training_points(rows[["epoch", "lr"]].drop_duplicates()):
            seen.setdefault(role, set()).add(epoch)
    return {role: next(iter(epochs)) if len(epochs) == 1 else None for role, epochs in seen.items()}


def gradient_roles(frame: pd.DataFrame) -> list[str]:
    """Every role in the study, in training order: first epoch, then the lrs from largest to smallest."""
    roles: set[str] = set()
    for (_k, _s, _d, _seed), rows in frame.groupby(["kind", "shortcut", "depth", "seed"], dropna=False):
        roles.update(role for role, _ in training_points(rows[["epoch", "lr"]].drop_duplicates()))
    return sorted(roles, key=lambda r: (r != "first epoch", -float(r.rsplit(" ", 1)[-1]) if r != "first epoch" else 0))


def role_colours(roles: list[str]) -> dict[str, Any]:
    from matplotlib import colormaps

    cmap = colormaps["viridis"]
    return {role: cmap(0.85 * i / max(len(roles) - 1, 1)) for i, role in enumerate(roles)}


def style_gradient_axes(axes: Axes, depth: int, boundaries: list[float], bottom: bool, left: bool) -> None:
    """Log y, the weight layers on x, dotted lines where the family's stages end (stage 1 | stage 2 | stage 3 | FC)."""
    axes.set_yscale("log")
    axes.set_xlim(0.5, depth + 0.5)
    for boundary in boundaries:
        axes.axvline(boundary, color="0.75", linewidth=0.7, linestyle=":")
    axes.tick_params(labelsize=FONT - 1)
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.grid(True, which="major", linewidth=0.5, alpha=0.4)
    if bottom:
        axes.set_xlabel("layer (1 = first conv, last = FC)", fontsize=FONT)
    if left:
        axes.set_ylabel("gradient norm", fontsize=FONT)


# ---------------------------------------------------------------------------------------------- files
RESPONSES_CSV, GRADIENTS_CSV = "layer_responses.csv", "gradients.csv"


def write_analysis(analysis: Analysis, figures: dict[str, Figure], out_dir: Path, formats: Sequence[str]) -> list[Path]:
    """The CSVs and every figure in every format into out_dir; returns the paths written."""
    tables = {RESPONSES_CSV: analysis.responses} if not analysis.responses.empty else {}
    if not analysis.gradients.empty:
        tables[GRADIENTS_CSV] = analysis.gradients
    return save_outputs(tables, figures, out_dir, formats)
