"""Measuring trained runs: `analyze` (Figure 7's layer responses, gradient norms), `construct` (the paper's
constructed deeper net), `lesion` (Veit et al. 2016) and `landscape` (Li et al. 2018). analyze, lesion and
landscape load their code and matplotlib only when they run."""

from __future__ import annotations

import json
import shlex
from dataclasses import fields
from pathlib import Path
from typing import Annotated, Any

import typer
from rich import box
from rich.table import Table

from ..config import PROTOCOL, config_args
from ..results.runs import check_writable_dir, ensure_writable_dir, own_output_dir
from ..train.construct import ConstructionMismatch, construct_from_run
from ..train.devices import resolve_device
from ..train.trainer import TrainConfig
from .console import console, errors, print_full_width, read_runs, warn
from .options import DEVICE, FAMILY_PATHS, FIGURE_FORMATS, import_named_families
from .progress import EvalDisplay


def analyze(
    results_dir: Annotated[Path, typer.Argument(help="Results folder; every run folder under it is read "
                                                     "(recursively).")],
    split: Annotated[str, typer.Option(help="Images the nets see: test, train (un-augmented) or val (runs with "
                                            "--val-size).")] = "test",
    images: Annotated[int | None, typer.Option(help="A class-balanced subset of this many images of the split, the "
                                                    "same for every run. \\[default: all]")] = None,
    out: Annotated[Path | None, typer.Option(help="Folder for the CSVs and figures. "
                                                  "\\[default: RESULTS_DIR/analysis]")] = None,
    formats: FIGURE_FORMATS = "png",
    std: Annotated[str, typer.Option(help="The std Figure 7 draws: std (over all elements of a response) or "
                                          "channel_std (mean over channels of the per-channel std). The CSV holds "
                                          "both.")] = "std",
    device: DEVICE = None,
    batch_size: Annotated[int, typer.Option(help="Images per forward pass (the statistics do not depend on "
                                                 "it).")] = 500,
    kinds: FAMILY_PATHS = None,
) -> None:
    """Figure 7 (std of each 3x3 layer's response, eval mode) and per-layer gradient norms of trained runs."""
    from ..analysis.responses import analyze as analyze_runs
    from ..analysis.responses import build_figures, check_options, check_std, write_analysis
    from ..results.plots import parse_formats  # matplotlib: only when drawing

    chosen_formats = parse_formats(formats)
    check_std(std)  # before the long analysis, not after it
    check_options(split, images, batch_size)
    import_named_families(kinds)
    runs = read_runs(results_dir)
    out_dir = out or own_output_dir(results_dir / "analysis")
    check_writable_dir(out_dir)  # made only once there is something to write
    where = resolve_device(device or "auto")
    count = "all images" if images is None else f"{images:,} images (class-balanced)"
    console.print(f"layer responses: {split} split, {count} per run, evaluation mode (BN running statistics), fp32, "
                  f"on {where}", markup=False, highlight=False, soft_wrap=True)
    analysis = analyze_runs(runs, split, images, where, batch_size)
    warn(analysis.notes)
    figures = build_figures(analysis, std)
    ensure_writable_dir(out_dir)
    for path in write_analysis(analysis, figures, out_dir, chosen_formats):
        console.print(str(path), markup=False, highlight=False, soft_wrap=True)


WHAT_FIELDS = frozenset({"kind", "depth", "shortcut", "seed", "init"})  # what a run trains, not how: not carried over


def construct(
    run_dir: Annotated[Path, typer.Argument(help="A finished run folder, e.g. results/figure6/plain-20-s0.")],
    depth: Annotated[int, typer.Option(help="Depth of the constructed net: 6n+2, larger than the run's.")],
    out: Annotated[Path, typer.Option(help="Folder for the constructed net's folder "
                                           "<kind>-<depth>-from-<run folder>.")] = Path("results/constructed"),
    identity_bn: Annotated[str, typer.Option(help="Plain nets: the added BNs' running statistics: data (measured on "
                                                  "the training images: near-identity in training mode too) or unit "
                                                  "(mean 0, variance 1).")] = "data",
    device: DEVICE = None,
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing constructed net of the same "
                                                        "name.")] = False,
) -> None:
    """The paper's constructed deeper solution: a trained run's layers copied, identity blocks added at the end of
    each stage."""
    try:
        result = construct_from_run(run_dir, depth, out, resolve_device(device or "auto"), identity_bn, force)
    except ConstructionMismatch as exc:
        errors.print(f"error: {exc}", markup=False, highlight=False, soft_wrap=True)
        raise typer.Exit(1) from None
    view = Table(title=f"{result.source} -> {result.target}: evaluation mode", box=box.SIMPLE_HEAD)
    for column in ("split", "images", f"{result.source} err %", f"{result.target} err %", "same predictions"):
        view.add_column(column, justify="left" if column == "split" else "right")
    for row in result.comparisons:
        view.add_row(row.split, f"{row.images:,}", f"{row.source_error:.2f}", f"{row.constructed_error:.2f}",
                     f"{row.images - row.disagreements:,}/{row.images:,}")
    print_full_width(view)
    console.print(str(result.out_dir), markup=False, highlight=False, soft_wrap=True)
    protocol, unset = config_args(TrainConfig, changed_by_run(result.source_config), PROTOCOL, skip=WHAT_FIELDS)
    console.print(f"train from it with the source run's protocol: resdepth train "
                  f"{shlex.join([*result.train_args, *protocol])} --out DIR", markup=False, highlight=False,
                  soft_wrap=True)
    options = result.source_config.get("options")
    if "options" in unset and isinstance(options, dict) and set(options) <= {"width"}:  # --width=K above says it
        unset.remove("options")
    if unset:
        values = ", ".join(f"{name} = {json.dumps(result.source_config.get(name))}" for name in unset)
        console.print(f"note: the source run also set {values}, which only a sweep file sets (no option): give "
                      "them in one to train exactly as it did", markup=False, highlight=False, soft_wrap=True)


def changed_by_run(config: dict[str, Any]) -> dict[str, Any]:
    """A run's config.json settings less the values its family filled in where the options left them open (the
    warm-up's threshold and length, `TrainConfig.for_family`): those are defaults, which the new run's family fills
    in again."""
    left_open = TrainConfig(kind=config["kind"], depth=config["depth"])
    filled = left_open.for_family()
    defaults = {f.name: getattr(filled, f.name) for f in fields(TrainConfig)
                if getattr(left_open, f.name) != getattr(filled, f.name)}
    return {key: value for key, value in config.items() if not (key in defaults and value == defaults[key])}


def lesion(
    results_dir: Annotated[Path, typer.Argument(help="Results folder; every run folder under it is read "
                                                     "(recursively).")],
    images: Annotated[int | None, typer.Option(help="A class-balanced subset of this many test images, the same for "
                                                    "every run. \\[default: the run's whole test split]")] = None,
    max_k: Annotated[int, typer.Option(help="Delete up to k random blocks and swap up to k random pairs, "
                                            "k = 1 .. this.")] = 10,
    draws: Annotated[int, typer.Option(help="Random draws per k (seeded; twins draw the same blocks).")] = 5,
    seed: Annotated[int, typer.Option(help="Seed of the draws.")] = 0,
    out: Annotated[Path | None, typer.Option(help="Folder for lesion.csv and the figures. "
                                                  "\\[default: RESULTS_DIR/lesion]")] = None,
    formats: FIGURE_FORMATS = "png",
    device: DEVICE = None,
    batch_size: Annotated[int, typer.Option(help="Images per forward pass.")] = 500,
    kinds: FAMILY_PATHS = None,
) -> None:
    """Veit et al. 2016: test error of trained runs with single blocks deleted, k random blocks deleted and k random
    pairs swapped (evaluation mode)."""
    from ..analysis.lesion import LesionConfig, build_figures, lesion_runs, write_lesion
    from ..results.plots import parse_formats  # matplotlib: only when drawing

    chosen_formats = parse_formats(formats)
    config = LesionConfig(images, max_k, draws, seed, batch_size)
    config.check()  # before reading anything
    import_named_families(kinds)
    runs = read_runs(results_dir)
    out_dir = out or own_output_dir(results_dir / "lesion")  # before minutes of lesions, not after
    check_writable_dir(out_dir)  # made only once there is something to write
    where = resolve_device(device or "auto")
    console.print(f"lesions: test split, {'all images' if images is None else f'{images:,} images'} per run, "
                  f"evaluation mode, fp32, on {where}", markup=False, highlight=False, soft_wrap=True)
    with EvalDisplay("lesions") as display:
        result = lesion_runs(runs, config, where, on_progress=display)
    warn(result.notes)
    ensure_writable_dir(out_dir)
    for path in write_lesion(result, build_figures(result), out_dir, chosen_formats):
        console.print(str(path), markup=False, highlight=False, soft_wrap=True)


def landscape(
    run_dirs: Annotated[list[Path], typer.Argument(help="Finished run folders, e.g. results/figure6/plain-56-s0 "
                                                        "results/figure6/residual-56-s0.")],
    resolution: Annotated[int, typer.Option(help="Grid points per axis (Li et al.: 51).")] = 21,
    span: Annotated[float, typer.Option(help="The grid covers -span .. span along each direction.")] = 1.0,
    images: Annotated[int, typer.Option(help="A fixed class-balanced subset of this many training images "
                                             "(un-augmented).")] = 2000,
    dims: Annotated[int, typer.Option(help="2: a grid over two directions (contours); 1: a slice along "
                                           "one.")] = 2,
    seed: Annotated[int, typer.Option(help="Seed of the random directions (twins draw the same).")] = 0,
    out: Annotated[Path | None, typer.Option(help="Folder for the grids, landscape.csv and the figures. "
                                                  "\\[default: landscape/ beside the first run folder]")] = None,
    formats: FIGURE_FORMATS = "png",
    device: DEVICE = None,
    batch_size: Annotated[int, typer.Option(help="Images per forward pass.")] = 500,
    force: Annotated[bool, typer.Option("--force", help="Compute grids anew where --out holds grids of other "
                                                        "settings or weights.")] = False,
    kinds: FAMILY_PATHS = None,
) -> None:
    """Li et al. 2018: training loss and error of trained runs around their weights, along filter-normalised
    random directions (1D slices, 2D contours); a partial grid is resumed."""
    from ..analysis.landscape import LandscapeConfig, build_figures, landscape_runs, write_landscape
    from ..results.plots import parse_formats  # matplotlib: only when drawing

    chosen_formats = parse_formats(formats)
    config = LandscapeConfig(resolution, span, images, dims, seed, batch_size)
    config.check()
    import_named_families(kinds)
    out_dir = out or own_output_dir(run_dirs[0].parent / "landscape")
    where = resolve_device(device or "auto")
    console.print(f"landscape: {resolution}{f'x{resolution}' if dims == 2 else ''} points in [-{span:g}, {span:g}], "
                  f"{images:,} training images per point, evaluation mode, fp32, on {where}; saved as it fills in "
                  f"{out_dir}", markup=False, highlight=False, soft_wrap=True)
    with EvalDisplay("grid points") as display:
        result = landscape_runs(run_dirs, config, out_dir, where, on_progress=display, force=force)
    for path in write_landscape(result, build_figures(result), out_dir, chosen_formats):
        console.print(str(path), markup=False, highlight=False, soft_wrap=True)
    for note in result.notes:
        console.print(f"note: {note}", markup=False, highlight=False, soft_wrap=True)
