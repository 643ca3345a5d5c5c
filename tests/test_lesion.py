"""Lesion studies (Veit et al. 2016): a deleted block leaves exactly what the net computes without it, lesions
are put back afterwards, the draws are seeded and shared by twins, and the command writes its CSV and figures or
fails in one line without writing anything."""

import json
import shutil
from dataclasses import replace
from pathlib import Path

import pandas as pd
import pytest
import torch
from torch import nn

from resdepth.analysis.lesion import LESION_COLUMNS, Lesion, LesionConfig, lesioned, plan_lesions, shape_keeping
from resdepth.errors import UserError
from resdepth.models import build_model
from resdepth.models.families import lesion_blocks
from resdepth.train.construct import construct_deeper, unit_moments

CPU = torch.device("cpu")


@pytest.fixture
def results(finished_sweep, tmp_path) -> Path:
    """A private copy of a finished sweep of plain-14 and residual-14 (2 epochs of the tiny synthetic set)."""
    return Path(shutil.copytree(finished_sweep(depth=14, epochs=2), tmp_path / "results"))


# ---------------------------------------------------------------------------------------------- what a deletion leaves
def zero_branch(block: nn.Module) -> None:
    """The residual branch computes 0: the post-activation block's last BN at scale and shift 0, the
    pre-activation unit's last conv at 0."""
    with torch.no_grad():
        if hasattr(block, "bn2") and hasattr(block, "residual"):
            block.bn2.weight.zero_()
            block.bn2.bias.zero_()
        else:
            block.branch_convs()[-1].weight.zero_()


@pytest.mark.parametrize("kind, shortcut", [("residual", "A"), ("residual", "B"), ("preact", "B"), ("preact", "A")])
@pytest.mark.parametrize("name", ["layer1.1", "layer2.0", "layer3.1"])  # layer2.0 downsamples
def test_deleting_a_residual_block_whose_branch_is_zeroed_changes_nothing(kind, shortcut, name, randomized):
    torch.manual_seed(0)
    model = randomized(build_model(kind, 14, shortcut=shortcut))
    blocks = {block.name: block for block in lesion_blocks(model, kind)}
    block = blocks[name]
    assert block.residual and block.downsampling == (name == "layer2.0") and block.without is not None
    zero_branch(block.container[block.position])
    x = torch.randn(8, 3, 32, 32)
    with torch.no_grad():
        intact = model(x)
        with lesioned(list(blocks.values()), Lesion("delete-one", 1, 0, (list(blocks).index(name),))):
            assert block.container[block.position] is block.without
            deleted = model(x)
    torch.testing.assert_close(deleted, intact, rtol=0, atol=1e-6)


def test_deleting_a_block_whose_branch_is_not_zero_changes_the_output_and_is_put_back(randomized):
    torch.manual_seed(0)
    model = randomized(build_model("residual", 14))
    blocks = lesion_blocks(model, "residual")
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        intact = model(x)
        with lesioned(blocks, Lesion("delete-k", 2, 0, (1, 4))):
            assert not torch.allclose(model(x), intact)
        first, second = model.layer1[0], model.layer1[1]
        with lesioned(blocks, Lesion("swap-k", 1, 0, swaps=((0, 1),))):
            assert model.layer1[0] is second and model.layer1[1] is first
            swapped = model(x)
        assert not torch.allclose(swapped, intact)
        torch.testing.assert_close(model(x), intact, rtol=0, atol=0)  # every block back in its place


def test_deleting_a_plain_block_of_a_constructed_net_changes_nothing(randomized):
    torch.manual_seed(0)
    source = randomized(build_model("plain", 8))
    constructed, _ = construct_deeper(source, 14, unit_moments(source))  # identity blocks: layer<s>.1
    blocks = lesion_blocks(constructed, "plain")
    added = [i for i, block in enumerate(blocks) if block.position == 1]
    assert [blocks[i].name for i in added] == ["layer1.1", "layer2.1", "layer3.1"]
    x = torch.randn(8, 3, 32, 32)
    with torch.no_grad():
        intact = constructed(x)
        with lesioned(blocks, Lesion("delete-k", 3, 0, tuple(added))):
            deleted = constructed(x)
    torch.testing.assert_close(deleted, intact, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(deleted, source(x), rtol=1e-5, atol=1e-5)


def test_a_plain_block_that_changes_the_shape_cannot_be_deleted_a_residual_one_leaves_its_shortcut():
    plain = {b.name: b for b in lesion_blocks(build_model("plain", 14), "plain")}
    residual = {b.name: b for b in lesion_blocks(build_model("residual", 14), "residual")}
    assert list(plain) == list(residual) == [f"layer{s}.{i}" for s in (1, 2, 3) for i in (0, 1)]
    assert [n for n, b in plain.items() if b.without is None] == ["layer2.0", "layer3.0"]
    assert [n for n, b in plain.items() if b.downsampling] == ["layer2.0", "layer3.0"]
    assert all(b.without is not None for b in residual.values())


def test_a_network_that_cannot_say_what_a_block_is_is_refused_in_one_line():
    with pytest.raises(UserError, match="mylab nets cannot be lesioned: their network \\(Sequential\\) has no "
                                        "lesion_blocks"):
        lesion_blocks(nn.Sequential(nn.Conv2d(3, 4, 3)), "mylab")


# ---------------------------------------------------------------------------------------------- the plan
def test_draws_are_seeded_shape_keeping_and_the_same_for_twins():
    config = LesionConfig(max_k=3, draws=4, seed=7)
    plain = lesion_blocks(build_model("plain", 20), "plain")
    residual = lesion_blocks(build_model("residual", 20), "residual")
    plain_plan, residual_plan = plan_lesions(plain, config), plan_lesions(residual, config)
    assert plain_plan == residual_plan == plan_lesions(plain, config)
    assert plan_lesions(plain, replace(config, seed=8)) != plain_plan
    keeping = set(shape_keeping(plain))
    assert len(keeping) == 9 - 2  # 3 stages x 3 blocks, less the two downsampling ones
    for lesion in plain_plan:
        if lesion.kind == "delete-k":
            assert len(set(lesion.deleted)) == lesion.k and set(lesion.deleted) <= keeping
        if lesion.kind == "swap-k":
            assert len(set(lesion.swaps)) == lesion.k
            assert all(plain[i].stage == plain[j].stage and {i, j} <= keeping for i, j in lesion.swaps)
    kinds = [lesion.kind for lesion in plain_plan]
    assert kinds.count("none") == 1 and kinds.count("delete-one") == 9
    assert kinds.count("delete-k") == kinds.count("swap-k") == 3 * 4


# ---------------------------------------------------------------------------------------------- the command
def test_lesion_writes_one_row_per_run_and_lesion_and_both_figures(results, run_cli):
    code, out, err = run_cli("lesion", str(results), "--max-k", "2", "--draws", "2")
    assert code == 0, err
    table = pd.read_csv(results / "lesion" / "lesion.csv")
    assert list(table.columns) == list(LESION_COLUMNS)
    assert sorted(table["kind"].unique()) == ["plain", "residual"]
    per_run = table.groupby("kind")["lesion"].value_counts().unstack()
    # depth 14: 4 shape-keeping blocks, one pair of them in one stage (layer1.0, layer1.1)
    assert per_run.loc["plain"].to_dict() == {"delete-k": 4, "delete-one": 6, "none": 1, "swap-k": 2}
    assert per_run.loc["plain"].equals(per_run.loc["residual"])
    # --max-k 2 where only one pair can swap: said, where it had been left to the figure to show
    assert "plain-14-s0: --max-k 2 reaches k = 2 for deletions and 1 for swaps" in " ".join((out + err).split())
    single = table[(table["lesion"] == "delete-one")]
    cannot = single[single["test_error"].isna()]
    assert sorted(zip(cannot["kind"], cannot["name"], strict=True)) == [("plain", "layer2.0"), ("plain", "layer3.0")]
    assert not single[single["kind"] == "residual"]["test_error"].isna().any()
    assert (table["images"] == 64).all()
    intact = table[table["lesion"] == "none"].set_index("kind")["test_error"]
    finals = {kind: json.loads((results / f"{kind}-14-s0" / "status.json").read_text()) for kind in intact.index}
    for kind, status in finals.items():  # the intact net's error is the run's own final test error
        assert intact[kind] == pytest.approx(status["test_error"], abs=1e-6)
    for name in ("lesion-blocks-synthetic.png", "lesion-k-synthetic.png"):
        assert (results / "lesion" / name).stat().st_size > 10_000
        assert str(results / "lesion" / name) in out


@pytest.mark.parametrize("args, message", [
    (["--max-k", "0"], "--max-k must be a positive integer"),
    (["--draws", "-1"], "--draws must be a positive integer"),
    (["--images", "0"], "--images must be a positive integer"),
    (["--format", "jpg"], "unknown figure format jpg"),
])
def test_lesion_bad_options_are_one_line_and_write_nothing(results, args, message, run_cli):
    code, _, err = run_cli("lesion", str(results), *args)
    assert code == 2 and message in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    assert not (results / "lesion").exists()


def test_lesion_without_a_finished_run_or_checkpoints_is_one_line(results, run_cli):
    run_dirs = [results / "plain-14-s0", results / "residual-14-s0"]
    for run_dir in run_dirs:
        (run_dir / "checkpoint.pt").write_bytes(b"not a checkpoint")
    code, _, err = run_cli("lesion", str(results))
    assert code == 2 and "no run could be lesioned" in err and "Traceback" not in err
    for run_dir in run_dirs:
        (run_dir / "status.json").write_text(json.dumps({"state": "running"}))
    code, _, err = run_cli("lesion", str(results))
    assert code == 2 and "has finished training" in err
    assert not (results / "lesion").exists()


def test_a_family_that_cannot_say_what_a_block_is_is_one_line_and_the_others_are_lesioned(
        tmp_path, user_family, tiny_config, tiny_sweep, run_sweep_now, run_cli):
    from resdepth.sweep.runner import SweepConfig

    gated = SweepConfig(depths=[4, 6], kinds=["tinyfam_nets:gated"], seeds=[0], out=str(tmp_path / "r" / "gated"),
                        train=tiny_config(depth=8, epochs=1))
    _, outcomes = run_sweep_now(gated)
    _, more = run_sweep_now(tiny_sweep(tmp_path / "r" / "paper", kinds=["residual"]))
    assert {o.state for o in [*outcomes.values(), *more.values()]} == {"done"}
    code, out, err = run_cli("lesion", str(tmp_path / "r"), "--max-k", "1", "--draws", "1")
    assert code == 0, err
    refusals = [line for line in err.splitlines() if "cannot be lesioned" in line]
    assert len(refusals) == 1 and refusals[0].startswith("warning: skipped the tinyfam_nets:gated runs: ")
    assert set(pd.read_csv(tmp_path / "r" / "lesion" / "lesion.csv")["kind"]) == {"residual"}
    assert "residual-8-s0: 5 lesions" in out and "residual-8-s0: done" in out
