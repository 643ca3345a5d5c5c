"""Loss landscapes (Li et al. 2018): directions are filter-normalised and leave BN and biases alone, the grid's
centre is the run's own loss, a grid is saved as it fills and resumes to the same values, and the command writes
its CSV and figures or fails in one line without writing anything."""

import io
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from resdepth.analysis.landscape import (
    GRID_SUFFIX,
    LANDSCAPE_COLUMNS,
    Grid,
    LandscapeConfig,
    directions,
    fill_grid,
    filter_normalized_direction,
    move_to,
    perturbed,
)
from resdepth.analysis.responses import DataCache
from resdepth.analysis.trained import load_trained, split_images
from resdepth.errors import UserError
from resdepth.models import build_model
from resdepth.results.groups import group_key
from resdepth.results.runs import load_runs

CPU = torch.device("cpu")
TINY = LandscapeConfig(resolution=3, span=0.5, images=32, batch_size=16)


@pytest.fixture
def results(finished_sweep, tmp_path) -> Path:
    """A private copy of a finished sweep of plain-8 and residual-8 (3 epochs, the one test_analysis reads)."""
    return Path(shutil.copytree(finished_sweep(depth=8, epochs=3), tmp_path / "results"))


def load(run_dir: Path):
    run = load_runs(run_dir)[0][0]
    return load_trained(run, group_key(run), DataCache(), CPU)


# ---------------------------------------------------------------------------------------------- directions
@pytest.mark.parametrize("kind", ["plain", "residual", "preact"])
def test_each_filter_of_a_direction_has_the_norm_of_the_same_filter_of_the_weights(kind):
    torch.manual_seed(0)
    model = build_model(kind, 14)
    direction = filter_normalized_direction(model, torch.Generator().manual_seed(3))
    moved = dict(perturbed(model))
    assert set(direction) == set(moved)
    assert {name for name, p in model.named_parameters() if p.dim() == 1} == {
        name for name, _ in model.named_parameters()} - set(direction)  # BN scales, shifts and biases: never moved
    for name, values in direction.items():
        weights = moved[name].detach()
        assert weights.dim() in (2, 4)  # conv filters and FC rows
        torch.testing.assert_close(values.flatten(1).norm(dim=1), weights.flatten(1).norm(dim=1), rtol=1e-5, atol=0)
        assert not torch.allclose(values / values.norm(), weights / weights.norm())  # random, not the weights


def test_twins_draw_the_same_raw_directions_and_other_seeds_other_ones():
    plain, residual = build_model("plain", 8), build_model("residual", 8)
    residual.load_state_dict(plain.state_dict())  # option A: the same parameters
    (p1, p2), (r1, r2) = directions(plain, 0), directions(residual, 0)
    assert all(torch.equal(p1[name], r1[name]) and torch.equal(p2[name], r2[name]) for name in p1)
    assert not all(torch.equal(p1[name], p2[name]) for name in p1)
    assert not torch.equal(directions(plain, 1)[0]["conv1.weight"], p1["conv1.weight"])


def test_moving_changes_only_the_perturbed_parameters_and_moving_back_restores_them():
    model = build_model("residual", 8)
    before = {name: value.clone() for name, value in model.state_dict().items()}
    origin = {name: p.detach().clone() for name, p in perturbed(model)}
    d1, d2 = directions(model, 0)
    move_to(model, origin, d1, d2, 0.3, -0.2)
    after = model.state_dict()
    changed = {name for name in before if not torch.equal(before[name], after[name])}
    assert changed == set(origin)
    torch.testing.assert_close(after["conv1.weight"], origin["conv1.weight"] + 0.3 * d1["conv1.weight"]
                               - 0.2 * d2["conv1.weight"])
    move_to(model, origin, d1, d2, 0.0, 0.0)
    assert all(torch.equal(before[name], value) for name, value in model.state_dict().items())


# ---------------------------------------------------------------------------------------------- the grid
def test_the_centre_of_the_grid_is_the_runs_own_loss_on_the_same_images(results, tmp_path):
    trained = load(results / "residual-8-s0")
    grid = fill_grid(trained, TINY, tmp_path / "g.json", CPU)
    assert grid.a == grid.b == [-0.5, 0.0, 0.5] and not np.isnan(grid.loss).any()
    # independently: the checkpoint's net in evaluation mode on the same 32 training images, one batch
    inputs, labels = split_images(load(results / "residual-8-s0"), "train", 32, CPU)
    fresh = load(results / "residual-8-s0").model.eval()
    with torch.no_grad():
        logits = fresh(inputs)
    assert grid.loss[1, 1] == pytest.approx(float(F.cross_entropy(logits, labels)), rel=1e-5)
    assert grid.error[1, 1] == pytest.approx(float((logits.argmax(1) != labels).float().mean() * 100))
    assert grid.loss[0, 0] != pytest.approx(grid.loss[1, 1])
    assert len(labels) == 32 and labels.bincount().max() - labels.bincount().min() <= 1  # class-balanced


def test_a_resumed_grid_equals_an_uninterrupted_one_and_was_saved_as_it_filled(results, tmp_path):
    config = LandscapeConfig(resolution=4, span=1.0, images=32, batch_size=16)
    whole = fill_grid(load(results / "plain-8-s0"), config, tmp_path / "whole.json", CPU)
    path = tmp_path / "cut.json"

    def interrupt_after_five(event):
        if event.done == 5:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fill_grid(load(results / "plain-8-s0"), config, path, CPU, interrupt_after_five)
    partial = Grid.read(path)
    assert partial is not None and (~np.isnan(partial.loss)).sum() == 5
    seen = []
    resumed = fill_grid(load(results / "plain-8-s0"), config, path, CPU, seen.append)
    assert seen[0].done == 5 and seen[-1].done == seen[-1].total == 16 and len(seen) == 1 + 11
    np.testing.assert_array_equal(resumed.loss, whole.loss)
    np.testing.assert_array_equal(resumed.error, whole.error)
    np.testing.assert_array_equal(Grid.read(path).loss, whole.loss)


def test_a_grid_file_whose_points_were_edited_is_another_grid(results, tmp_path):
    config = LandscapeConfig(resolution=3, span=1.0, images=32, batch_size=16)
    path = tmp_path / "g.json"
    fill_grid(load(results / "plain-8-s0"), config, path, CPU)
    saved = json.loads(path.read_text())
    edited = {"a": [5.0], "train_loss": [[1], [2], [None]], "train_error": [[1], [2], [None]]}
    path.write_text(json.dumps({**saved, **edited}))
    with pytest.raises(UserError, match="holds a grid of other settings"):
        fill_grid(load(results / "plain-8-s0"), config, path, CPU)
    grid = fill_grid(load(results / "plain-8-s0"), config, path, CPU, force=True)
    assert grid.a == config.axis() and not np.isnan(grid.loss).any()


def test_a_grid_of_other_settings_is_refused_unless_forced(results, tmp_path):
    trained = load(results / "plain-8-s0")
    path = tmp_path / "g.json"
    fill_grid(trained, TINY, path, CPU)
    other = LandscapeConfig(resolution=3, span=0.25, images=32, batch_size=16)
    with pytest.raises(UserError, match="holds a grid of other settings or weights: remove it"):
        fill_grid(trained, other, path, CPU)
    assert Grid.read(path).a == [-0.5, 0.0, 0.5]
    assert fill_grid(trained, other, path, CPU, force=True).a == [-0.25, 0.0, 0.25]


# ---------------------------------------------------------------------------------------------- the command
def test_landscape_writes_grids_csv_and_figures(results, run_cli):
    runs = [str(results / "plain-8-s0"), str(results / "residual-8-s0")]
    code, out, err = run_cli("landscape", *runs, "--resolution", "3", "--images", "32", "--span", "0.5")
    assert code == 0, err
    folder = results / "landscape"
    table = pd.read_csv(folder / "landscape.csv")
    assert list(table.columns) == list(LANDSCAPE_COLUMNS) and len(table) == 2 * 9
    assert sorted(table["kind"].unique()) == ["plain", "residual"] and not table["train_loss"].isna().any()
    grid = json.loads((folder / f"plain-8-s0{GRID_SUFFIX}").read_text())
    assert grid["settings"]["resolution"] == 3 and grid["settings"]["images"] == 32
    for name in ("landscape-1d-synthetic.png", "landscape-2d-synthetic.png", "landscape-2d-error-synthetic.png"):
        assert (folder / name).stat().st_size > 10_000 and str(folder / name) in out
    before = (folder / "landscape.csv").read_text()
    code, out, err = run_cli("landscape", *runs, "--resolution", "3", "--images", "32", "--span", "0.5")
    assert code == 0 and "plain-8-s0: 9 grid points, 9 already saved" in out  # nothing left to compute
    assert (folder / "landscape.csv").read_text() == before
    code, out, err = run_cli("landscape", *runs, "--resolution", "3", "--images", "32", "--span", "0.5", "--dims",
                             "1")
    assert code == 2 and "holds a grid of other settings" in err and len(err.strip().splitlines()) == 1


def test_a_run_landscaped_alone_says_the_folder_holds_an_earlier_calls_grids(results, run_cli):
    small = ("--resolution", "2", "--images", "16", "--dims", "1")
    assert run_cli("landscape", str(results / "plain-8-s0"), *small)[0] == 0
    code, out, err = run_cli("landscape", str(results / "residual-8-s0"), *small)
    assert code == 0, err
    text = " ".join(out.split())
    assert "also holds the grids of plain-8-s0 from an earlier call" in text and "in one call" in text
    assert pd.read_csv(results / "landscape" / "landscape.csv")["kind"].unique().tolist() == ["residual"]
    code, out, err = run_cli("landscape", str(results / "plain-8-s0"), str(results / "residual-8-s0"), *small)
    assert code == 0 and "plain-8-s0: 2 grid points, 2 already saved" in out and "earlier call" not in out
    assert sorted(pd.read_csv(results / "landscape" / "landscape.csv")["kind"].unique()) == ["plain", "residual"]


@pytest.mark.parametrize("args, message", [
    (["--resolution", "1"], "--resolution must be at least 2"),
    (["--span", "0"], "--span must be a positive number"),
    (["--span", "nan"], "--span must be a positive number"),
    (["--images", "0"], "--images and --batch-size must be positive"),
    (["--dims", "3"], "--dims must be 1 (a slice) or 2 (a grid)"),
    (["--format", "gif"], "unknown figure format gif"),
])
def test_landscape_bad_options_are_one_line_and_write_nothing(results, args, message, run_cli):
    code, _, err = run_cli("landscape", str(results / "plain-8-s0"), *args)
    assert code == 2 and message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not (results / "landscape").exists()


def test_landscape_refuses_what_is_not_a_finished_run_in_one_line(results, run_cli):
    code, _, err = run_cli("landscape", str(results))
    assert code == 2 and "is not a run folder" in err
    (results / "plain-8-s0" / "status.json").write_text(json.dumps({"state": "running"}))
    code, _, err = run_cli("landscape", str(results / "plain-8-s0"), "--resolution", "3")
    assert code == 2 and "has not finished training" in err and "Traceback" not in err
    assert not (results / "landscape").exists()


def test_the_report_shows_the_lesion_and_landscape_figures(results, run_cli, tmp_path):
    assert run_cli("lesion", str(results), "--max-k", "1", "--draws", "1")[0] == 0
    assert run_cli("landscape", str(results / "plain-8-s0"), str(results / "residual-8-s0"), "--resolution", "3",
                   "--images", "16")[0] == 0
    outside = tmp_path / "outside.png"
    outside.write_bytes((results / "lesion" / "lesion-k-synthetic.png").read_bytes())
    (results / "landscape" / "landscape-1d-linked.png").symlink_to(outside)  # a link is never followed
    code, _, err = run_cli("report", str(results))
    assert code == 0, err
    page = (results / "report.html").read_text()
    assert "Lesion studies (Veit et al. 2016)" in page and "Loss landscapes (Li et al. 2018)" in page
    for stem in ("lesion-blocks-synthetic", "lesion-k-synthetic", "landscape-2d-synthetic",
                 "landscape-2d-error-synthetic", "landscape-1d-synthetic"):
        assert f"<code>{stem}</code></figcaption>" in page
    assert "<code>landscape-1d-linked" not in page and "landscape-1d-linked.png is a link" in page  # a warning
    assert page.count("data:image/png;base64,") == 5


def test_a_run_of_a_family_by_import_path_is_drawn_only_when_the_user_names_it(
        tmp_path, user_family, tiny_config, run_sweep_now, run_cli, monkeypatch):
    from resdepth.models import families
    from resdepth.sweep.runner import SweepConfig

    gated = SweepConfig(depths=[4], kinds=["tinyfam_nets:gated"], seeds=[0], out=str(tmp_path / "gated"),
                        train=tiny_config(depth=8, epochs=1))
    _, outcomes = run_sweep_now(gated)
    assert {o.state for o in outcomes.values()} == {"done"}
    (run,) = [path for path in (tmp_path / "gated").iterdir() if (path / "config.json").exists()]
    monkeypatch.setattr(families, "_LOADED", {})  # as a new command starts: no family imported yet
    args = ["landscape", str(run), "--resolution", "3", "--images", "32", "--dims", "1"]
    code, _, err = run_cli(*args)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "--kind tinyfam_nets:gated" in err, err
    assert not (tmp_path / "gated" / "landscape").exists()
    code, _, err = run_cli(*args, "--kind", "tinyfam_nets:gated")
    assert code == 0, err
    assert len(pd.read_csv(tmp_path / "gated" / "landscape" / "landscape.csv")) == 3


@pytest.mark.parametrize("value", ["train_loss", "train_error"])
def test_a_flat_landscape_of_one_contour_level_or_none_is_still_drawn(value):
    from resdepth.analysis.landscape import LANDSCAPE_COLUMNS, contour_figure

    # a well-trained net over a small span: losses below Li et al.'s lowest level (0.1), errors in one 5% step
    rows = [dict(dataset="synthetic", setting="", kind=kind, shortcut="A" if kind == "residual" else None, depth=8,
                 seed=0, run=f"{kind}-8-s0", a=a, b=b, train_loss=0.01 + 0.001 * abs(a), train_error=1.0 + abs(b),
                 images=64, epoch=2) for kind in ("plain", "residual") for a in (-1, 0, 1) for b in (-1, 0, 1)]
    figure = contour_figure(pd.DataFrame(rows, columns=list(LANDSCAPE_COLUMNS)), ("synthetic", ""), value)
    figure.savefig(io.BytesIO(), format="png")  # the colour scale of one level was an IndexError here
