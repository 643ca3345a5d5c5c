"""The Table 6 style summary from hand-made results folders: best (mean ± std), the test- and val-selected test
errors, the paper's numbers beside ours only where the protocol is the paper's, one row per run, the exports,
and `resdepth table` on good, corrupt and empty folders."""

import json
import math
from pathlib import Path

import pandas as pd
import pytest

from resdepth.results.runs import load_runs
from resdepth.results.tables import (
    PAPER_TABLE6,
    RUN_COLUMNS,
    SUMMARY_COLUMNS,
    display_runs,
    display_table,
    summarize,
    summarize_runs,
    to_markdown,
    write_csv,
)

PAPER = {"iterations": 64_000}  # with write_run's other defaults: the paper's protocol


@pytest.fixture
def results(tmp_path, write_run):
    write_run(tmp_path, "residual", 56, seed=0, test=(30.0, 9.0, 7.0), train=(35.0, 4.0, 1.0), params=853018, **PAPER)
    write_run(tmp_path, "residual", 56, seed=1, test=(31.0, 8.0, 8.0), train=(36.0, 5.0, 2.0), params=853018, **PAPER)
    write_run(tmp_path, "residual", 56, seed=2, test=(32.0, 6.5, 9.0), train=(37.0, 6.0, 3.0), params=853018, **PAPER)
    write_run(tmp_path, "plain", 56, seed=0, test=(40.0, 14.0, 12.5), train=(45.0, 9.0, 8.0), params=853018, **PAPER)
    write_run(tmp_path, "plain", 20, seed=0, test=(35.0, 11.0, 10.0), train=(40.0, 6.0, 5.0), params=269722, **PAPER)
    write_run(tmp_path, "residual", 110, seed=0, test=(30.0, 7.0), train=(40.0, 1.0), state="running",
              planned_epochs=3, params=1727962, warmup_end=("threshold", 400), **PAPER)
    return tmp_path


def rows_by_name(summary: pd.DataFrame) -> dict[str, dict]:
    return {f"{r['kind']}{r['shortcut'] if r['shortcut'] not in ('', 'A') else ''}-{r['depth']}": r
            for r in summary.to_dict("records")}


def test_one_row_per_kind_and_depth_with_hand_computed_means_and_stds(results):
    runs, _ = load_runs(results)
    summary = summarize(runs)
    assert list(summary.columns) == list(SUMMARY_COLUMNS)
    assert [(r.kind, r.depth) for r in summary.itertuples()] == [
        ("plain", 20), ("plain", 56), ("residual", 56), ("residual", 110)]  # plain first, shallow to deep
    row = rows_by_name(summary)["residual-56"]
    assert (row["runs"], row["unfinished"], row["seeds"], row["params"]) == (3, 0, "0,1,2", 853018)
    assert row["final_test_error_best"] == 7.0  # the best final test error of the runs, as the paper's "6.43"
    assert row["final_test_error_mean"] == pytest.approx(8.0)  # (7 + 8 + 9) / 3
    assert row["final_test_error_std"] == pytest.approx(1.0)  # sample std (ddof=1) of 7, 8, 9
    assert row["final_train_error_mean"] == pytest.approx(2.0)
    assert row["min_epoch_test_error_mean"] == pytest.approx((7.0 + 8.0 + 6.5) / 3)  # each run's lowest, then the mean
    assert math.isnan(row["val_selected_test_error_mean"])
    plain = rows_by_name(summary)["plain-56"]
    assert plain["final_test_error_mean"] == 12.5 and math.isnan(plain["final_test_error_std"])  # one run: no std
    assert plain["final_train_error_mean"] > rows_by_name(summary)["plain-20"]["final_train_error_mean"]


def test_paper_table6_beside_cifar10_residual_rows_only(results, tmp_path, write_run):
    write_run(results / "b", "residual", 56, shortcut="B", **PAPER)
    write_run(results / "syn", "residual", 56, dataset="synthetic", **PAPER)
    summary = summarize(load_runs(results)[0])
    rows = rows_by_name(summary[summary["dataset"] == "cifar10"])
    residual = rows["residual-56"]
    assert residual["paper_test_error"] == PAPER_TABLE6[56] == 6.97 and residual["paper_protocol"]
    assert residual["vs_paper"] == pytest.approx(8.0 - 6.97) and residual["protocol_differences"] == ""
    assert rows["residual-110"]["paper_test_error"] == 6.61  # a mean compares with the paper's mean of 5 runs
    assert rows["residual-110"]["unfinished"] == 1 and rows["residual-110"]["runs"] == 0  # a running run: no result
    assert math.isnan(rows["residual-110"]["final_test_error_mean"]) and math.isnan(rows["residual-110"]["vs_paper"])
    assert math.isnan(rows["plain-56"]["paper_test_error"]) and math.isnan(rows["plain-56"]["vs_paper"])
    option_b = rows["residualB-56"]  # Table 6 used option A shortcuts: its number, marked, and no Δ
    assert not option_b["paper_protocol"] and math.isnan(option_b["vs_paper"])
    assert option_b["protocol_differences"] == "shortcut B (paper: A, zero-padding)"
    [synthetic] = summary[summary["dataset"] == "synthetic"].to_dict("records")
    assert math.isnan(synthetic["vs_paper"])
    assert "dataset synthetic (paper: CIFAR-10)" in synthetic["protocol_differences"]


@pytest.mark.parametrize("changes, named", [
    ({"iterations": 400}, "trained 400 iterations (paper: 64k)"),
    ({"val": (31.0, 9.0, 7.5)}, "5,000 training images held out for validation (paper: trained on all 50k)"),
    ({"data": {"train_size": 10_000}}, "a 10,000-image training subset (paper: all 50k)"),
    ({"data": {"augment": False}}, "no augmentation (paper: pad 4, random crop, flip)"),
    ({"batch_size": 64, "lr": 0.05}, "batch 64 (paper: 128), lr 0.05 (paper: 0.1)"),
    ({"dataset": "folder", "data": {"data_dir": "/data/cifar10-jpeg"}},
     "dataset cifar10-jpeg (an image folder) (paper: CIFAR-10)"),
])
def test_a_protocol_other_than_the_papers_gets_no_delta_and_a_note_naming_the_difference(tmp_path, changes, named,
                                                                                         write_run):
    write_run(tmp_path, "residual", 20, seed=0, **{**PAPER, **changes})
    write_run(tmp_path, "residual", 20, seed=1, **{**PAPER, **changes})
    [row] = summarize(load_runs(tmp_path)[0]).to_dict("records")
    assert not row["paper_protocol"] and math.isnan(row["vs_paper"]) and row["paper_test_error"] == 8.75
    headers, rows, notes = display_table(summarize(load_runs(tmp_path)[0]))
    assert rows[0][headers.index("paper Table 6")] == "8.75‡" and "Δ vs paper" not in headers
    [note] = [n for n in notes if n.startswith("‡")]
    assert note.startswith("‡ residual 20: not the paper's protocol, so no Δ:") and named in note


def test_a_warmup_ended_by_its_cap_is_not_the_papers_protocol(tmp_path, write_run):
    write_run(tmp_path, "residual", 110, seed=0, warmup_end=("threshold", 410), **PAPER)
    write_run(tmp_path, "residual", 110, seed=1, warmup_end=("cap", 4000), **PAPER)
    write_run(tmp_path / "no-warmup", "residual", 56, seed=0, warmup_end=None, **PAPER)
    summary = summarize(load_runs(tmp_path)[0])
    rows = rows_by_name(summary)
    assert rows["residual-110"]["protocol_differences"] == (
        "warm-up ended at its cap, iteration 4,000 (paper: at < 80% training error)")
    assert rows["residual-56"]["paper_protocol"]  # the paper warms up 110 layers and deeper only
    write_run(tmp_path / "no-warmup", "residual", 110, seed=2, **PAPER)  # 110 layers that never warmed up
    rows = rows_by_name(summarize(load_runs(tmp_path / "no-warmup")[0]))
    assert rows["residual-110"]["protocol_differences"] == "no warm-up (paper: lr 0.01 until training error < 80%)"


def test_plain_nets_say_the_paper_gives_no_table_number(results, tmp_path, write_run):
    headers, rows, notes = display_table(summarize(load_runs(results)[0]))
    assert rows[0][:2] == ["plain", "20"] and rows[0][headers.index("paper Table 6")] == "none"
    assert any(n.startswith("none:") and "plain nets only as curves (Figure 6)" in n for n in notes)
    write_run(tmp_path / "small", "plain", 8, **PAPER)
    write_run(tmp_path / "small", "residual", 14, **PAPER)
    headers, rows, notes = display_table(summarize(load_runs(tmp_path / "small")[0]))
    assert "paper Table 6" not in headers  # no row has a number: a note says why instead of a column of blanks
    assert notes[-1] == ("paper: no Table 6 number for these nets: the paper gives plain nets only as curves "
                         "(Figure 6), in no table; Table 6 has no 14-layer net, only 20, 32, 44, 56, 110, 1202 layers.")


def test_val_selected_test_error_is_taken_at_the_lowest_validation_error(tmp_path, write_run):
    write_run(tmp_path, "residual", 20, seed=0, test=(30.0, 9.0, 10.0), val=(31.0, 12.0, 11.0))
    write_run(tmp_path, "residual", 20, seed=1, test=(30.0, 9.5, 8.5), val=(31.0, 10.0, 11.0))
    summary = summarize(load_runs(tmp_path)[0])
    assert summary.loc[0, "val_selected_test_error_mean"] == pytest.approx((10.0 + 9.5) / 2)
    assert summary.loc[0, "min_epoch_test_error_mean"] == pytest.approx((9.0 + 8.5) / 2)
    headers, rows, _notes = display_table(summary)
    assert "test err % at best val" in headers and rows[0][headers.index("test err % at best val")] == "9.75"


def test_display_and_markdown_give_best_mean_std_as_the_paper_and_name_the_test_selected_column(results):
    summary = summarize(load_runs(results)[0])
    headers, rows, notes = display_table(summary)
    assert "min over epochs (test-selected)†" in headers and "dataset" not in headers  # one dataset: in the title
    assert "test err % at best val" not in headers  # no run held out a validation split
    residual = rows[2]
    assert residual[:5] == ["residual", "56", "0.85M", "3", "2.00"]
    # as the paper's "6.43 (6.61±0.16)"
    assert residual[headers.index("test err % best (mean±std)")] == "7.00 (8.00±1.00)"
    assert residual[headers.index("paper Table 6")] == "6.97" and residual[headers.index("Δ vs paper")] == "+1.03"
    assert rows[3][headers.index("paper Table 6")] == "6.43 (6.61±0.16)"
    assert rows[3][headers.index("Δ vs paper")] == "-"  # its only run is still running
    assert rows[0][headers.index("test err % best (mean±std)")] == "10.00"  # one run: no spread to give
    assert rows[3][headers.index("runs")] == "0 (+1 unfinished)" and any("unfinished" in note for note in notes)
    assert rows[3][headers.index("unfinished, not counted")] == "seed 0 running at epoch 2/3, test err 7.00"
    markdown = to_markdown(summary).splitlines()
    assert markdown[0].startswith("| kind | depth | params | runs |") and markdown[1].startswith("|---|---:|")
    assert len([line for line in markdown if line.startswith("| ")]) == 1 + len(summary)
    assert "| residual | 56 | 0.85M | 3 | 2.00 | 7.00 (8.00±1.00) |" in markdown[4]
    assert any(line.startswith("- †") and "selected on the test set" in line for line in markdown)
    assert "- dataset: cifar10" in markdown  # one dataset: no column for it, so a pasted table names it below


def test_csv_export_holds_the_unrounded_numbers(results, tmp_path):
    summary = summarize(load_runs(results)[0])
    path = tmp_path / "exports" / "table6.csv"
    write_csv(summary, path)
    back = pd.read_csv(path)
    assert list(back.columns) == list(SUMMARY_COLUMNS) and len(back) == len(summary)
    assert back["final_test_error_mean"].tolist() == pytest.approx(summary["final_test_error_mean"].tolist(), abs=1e-4,
                                                                   nan_ok=True)
    assert back.loc[2, "params"] == 853018 and back.loc[2, "seeds"] == "0,1,2"


def test_cli_table_prints_the_rich_table_and_exports(results, tmp_path, run_cli):
    code, out, err = run_cli("table", str(results), "--csv", str(tmp_path / "t.csv"))
    assert code == 0, err
    assert "7.00 (8.00±1.00)" in out and "+1.03" in out and "selected on the test set" in out
    assert (tmp_path / "t.csv").stat().st_size > 0 and "t.csv" in err
    # --csv - : the CSV itself on stdout, for a pipe (it had written a file named -)
    code, out, err = run_cli("table", str(results), "--csv", "-")
    assert code == 0 and err == "" and out.encode() == (tmp_path / "t.csv").read_bytes()
    assert not Path("-").exists()
    code, out, err = run_cli("table", str(results), "--markdown")
    assert code == 0 and out.startswith("| kind | depth |") and "| residual | 56 | 0.85M | 3 |" in out


def test_cli_table_warns_about_corrupt_runs_and_fails_on_empty_folders(results, tmp_path, run_cli):
    (results / "plain-20-s0" / "metrics.csv").write_text("epoch,iteration\n1,10\n")  # lacks the schema's columns
    (results / "plain-56-s0" / "config.json").write_text("{not json")
    code, out, err = run_cli("table", str(results), "--markdown")
    warnings = err.strip().splitlines()
    assert code == 0 and len(warnings) == 2
    assert "plain-20-s0" in warnings[0] and "lacks the columns" in warnings[0]
    assert "plain-56-s0" in warnings[1] and "config.json is not valid JSON" in warnings[1]
    assert "| plain |" not in out and "| residual | 56 |" in out
    empty = tmp_path / "empty"
    empty.mkdir()
    code, out, err = run_cli("table", str(empty))
    assert code == 2 and err.startswith("error: no runs found under") and len(err.strip().splitlines()) == 1


def test_hand_broken_configs_and_a_last_line_cut_short(results, run_cli):
    (results / "plain-20-s0" / "config.json").write_text("[]")
    config = json.loads((results / "plain-56-s0" / "config.json").read_text())
    (results / "plain-56-s0" / "config.json").write_text(json.dumps({**config, "depth": "abc"}))
    with (results / "residual-56-s2" / "metrics.csv").open("a") as handle:
        handle.write("4,40000,0.001,0.6\n")  # a write killed midway: kept epochs stay, the torn line goes
    code, out, err = run_cli("table", str(results), "--markdown")
    assert code == 0, err
    warnings = err.strip().splitlines()
    assert any("plain-20-s0" in w and "not a resdepth config" in w for w in warnings)
    assert any("plain-56-s0" in w and "key depth: expected int, got 'abc'" in w for w in warnings)
    assert any("residual-56-s2" in w and "4 of 9 fields, cut short" in w for w in warnings)
    assert "| residual | 56 | 0.85M | 3 | 2.00 | 7.00 (8.00±1.00) |" in out  # the torn line did not count
    (results / "residual-56-s1" / "metrics.csv").write_text(
        (results / "residual-56-s0" / "metrics.csv").read_text().replace("\n2,", "\n2,9,", 1))  # a broken middle line
    _, warnings = load_runs(results)
    assert any("residual-56-s1" in w and "line 3 has 10 fields, not 9" in w for w in warnings)


def test_runs_that_sweep_force_replaced_are_left_out_with_a_note(results, write_run):
    replaced = write_run(results / "old", "residual", 56, seed=0, test=(90.0,))
    replaced.rename(replaced.with_name("residual-56-s0.replaced-20260101-000000"))
    runs, warnings = load_runs(results)
    assert not any("replaced" in str(run.path) for run in runs)
    assert len(warnings) == 1 and "sweep --force replaced" in warnings[0]
    named, _ = load_runs(results / "old" / "residual-56-s0.replaced-20260101-000000")  # named: read
    assert len(named) == 1


def test_runs_trained_differently_are_kept_apart_not_averaged_as_seeds(tmp_path, write_run, run_cli):
    # two sweeps in one folder: A at depths 20 and 56 with the default lr, B at depth 20 with another lr
    for sweep, lr, depths in (("a", 0.1, (20, 56)), ("b", 0.05, (20,))):
        for depth in depths:
            run_dir = write_run(tmp_path / sweep, "plain", depth, test=(30.0, 10.0 if sweep == "a" else 20.0))
            config = json.loads((run_dir / "config.json").read_text())
            (run_dir / "config.json").write_text(json.dumps({**config, "lr": lr}))
    summary = summarize(load_runs(tmp_path)[0])
    assert [(r.setting, r.depth, r.runs, r.final_test_error_mean) for r in summary.itertuples()] == [
        ("lr 0.05", 20, 1, 20.0), ("lr 0.1", 20, 1, 10.0), ("lr 0.1", 56, 1, 10.0)]
    code, out, _ = run_cli("table", str(tmp_path), "--markdown")
    # a column per key that differs (the axes of the runs), here lr
    assert code == 0 and out.startswith("| lr | kind | depth |") and "| 0.05 | plain | 20 |" in out
    # a folder of one sweep has nothing to tell apart: no setting column
    code, out, _ = run_cli("table", str(tmp_path / "a"), "--markdown")
    assert code == 0 and out.startswith("| kind | depth |")


def test_a_boolean_setting_reads_on_and_off_as_in_folder_names(tmp_path, write_run):
    for augment in (True, False):
        run_dir = write_run(tmp_path / f"augment-{augment}", "plain", 20)
        config = json.loads((run_dir / "config.json").read_text())
        (run_dir / "config.json").write_text(json.dumps({**config, "data": {**config["data"], "augment": augment}}))
    summary = summarize(load_runs(tmp_path)[0])
    assert sorted(summary["setting"]) == ["augment off", "augment on"]


def test_image_folders_are_named_by_their_folder_and_two_are_two_datasets(tmp_path, write_run):
    for name in ("jpeg-a", "jpeg-b"):
        final = 20.0 if name == "jpeg-a" else 30.0
        run_dir = write_run(tmp_path / name, "residual", 8, dataset="folder", test=(50.0, final))
        config = json.loads((run_dir / "config.json").read_text())
        config["data"]["data_dir"] = f"/data/{name}/"
        (run_dir / "config.json").write_text(json.dumps(config))
    summary = summarize(load_runs(tmp_path)[0])
    assert summary["dataset"].tolist() == ["jpeg-a", "jpeg-b"] and summary["runs"].tolist() == [1, 1]
    assert summary["setting"].tolist() == ["", ""]  # the folder's name already tells them apart
    assert display_table(summary)[0][0] == "dataset"


def test_runs_lists_one_row_per_run_with_best_val_epoch_and_warmup_end(tmp_path, write_run, run_cli):
    write_run(tmp_path, "residual", 110, seed=0, test=(30.0, 9.0, 10.0), val=(31.0, 12.0, 11.0),
              warmup_end=("threshold", 410))
    write_run(tmp_path, "residual", 110, seed=1, test=(30.0, 9.5, 8.5), val=(31.0, 10.0, 11.0),
              warmup_end=("cap", 4000))
    write_run(tmp_path, "residual", 56, seed=0, test=(40.0, 20.0), val=(41.0, 21.0), state="running", planned_epochs=3)
    frame = summarize_runs(load_runs(tmp_path)[0])
    assert list(frame.columns) == list(RUN_COLUMNS)
    assert [(r.depth, r.seed, r.state, r.epochs, r.planned_epochs) for r in frame.itertuples()] == [
        (56, 0, "running", 2, 3), (110, 0, "done", 3, 3), (110, 1, "done", 3, 3)]
    assert frame["best_val_epoch"].tolist() == [2, 3, 2] and frame["val_selected_test_error"].tolist() == [20.0, 10.0,
                                                                                                           9.5]
    headers, rows, _notes = display_runs(frame)
    assert headers[:6] == ["kind", "depth", "seed", "state", "counted", "epochs"] and headers[-1] == "folder"
    assert [row[headers.index("warm-up ended")] for row in rows] == ["-", "threshold at 410", "cap at 4,000"]
    assert rows[0][headers.index("epochs")] == "2/3" and rows[2][headers.index("test err %")] == "8.50"
    code, out, err = run_cli("table", str(tmp_path), "--runs", "--csv", str(tmp_path / "runs.csv"))
    assert code == 0, err
    assert "cap at 4,000" in out and "residual-110-s1" in out and "best val epoch" in out
    back = pd.read_csv(tmp_path / "runs.csv")
    assert list(back.columns) == list(RUN_COLUMNS) and len(back) == 3
    assert back["warmup_end_reason"].tolist()[1:] == ["threshold", "cap"] and back["seed"].tolist() == [0, 0, 1]
    code, out, _ = run_cli("table", str(tmp_path), "--runs", "--markdown")
    assert code == 0 and out.startswith("| kind | depth | seed | state | counted | epochs |")
    assert "| cap at 4,000 |" in out


def test_a_run_from_before_init_existed_is_a_seed_of_todays_setting(tmp_path, write_run):
    # configs of 2026-11 have no "init"; today's say "init": null: the same He init, so one setting of two seeds
    write_run(tmp_path / "new", "residual", 20, seed=0, init=None)
    old = write_run(tmp_path / "old", "residual", 20, seed=1)
    config = json.loads((old / "config.json").read_text())
    config.pop("init", None)
    (old / "config.json").write_text(json.dumps(config))
    summary = summarize(load_runs(tmp_path)[0])
    assert [(r.setting, r.runs) for r in summary.itertuples()] == [("", 2)]


def test_warmup_settings_split_seeds_only_of_runs_that_warmed_up(tmp_path, write_run):
    # runs that never warmed up compute the same whatever their warm-up settings (an older config lacks the cap)
    write_run(tmp_path / "new", "residual", 20, seed=0, warmup="auto", warmup_max_iterations=4000)
    write_run(tmp_path / "old", "residual", 20, seed=1, warmup="off")
    write_run(tmp_path / "new", "residual", 110, seed=0, warmup_end=("threshold", 400), warmup_max_iterations=4000)
    write_run(tmp_path / "old", "residual", 110, seed=1, warmup_end=("threshold", 400), warmup_max_iterations=1000)
    summary = summarize(load_runs(tmp_path)[0])
    assert [(r.depth, r.setting, r.runs) for r in summary.itertuples()] == [
        (20, "warmup_max_iterations -", 2), (110, "warmup_max_iterations 1000", 1), (110, "warmup_max_iterations 4000",
                                                                                     1)]


def test_a_run_trained_from_init_is_not_the_papers_protocol(tmp_path, write_run, run_cli):
    # docs/plots-tables-report.md's example: two ResNet-56 runs started from a constructed net, alone in their folder
    start = "/results/constructed/residual-56-from-20"
    record = {"path": start, "net": "residual-56", "sha256": "ab"}
    for seed in (0, 1):
        write_run(tmp_path, "residual", 56, seed=seed, test=(30.0, 7.1), init=start, resolved={"init": record}, **PAPER)
    [row] = summarize(load_runs(tmp_path)[0]).to_dict("records")
    assert not row["paper_protocol"] and math.isnan(row["vs_paper"])
    assert row["protocol_differences"] == ("initialized from residual-56 weights in residual-56-from-20 "
                                           "(paper: He init)")
    code, out, _ = run_cli("table", str(tmp_path), "--markdown")
    assert code == 0 and "| 6.97‡ |" in out and "Δ vs paper" not in out
    assert "initialized from residual-56 weights" in out
    write_run(tmp_path, "residual", 56, seed=2, **PAPER)  # one from He init: another setting, named as such
    headers, rows, notes = display_runs(summarize_runs(load_runs(tmp_path)[0]))
    assert [row[headers.index("started from")] for row in rows] == ["He init", "residual-56-from-20",
                                                                    "residual-56-from-20"]
    assert any(note.startswith("started from:") for note in notes)


def test_unfinished_runs_are_left_out_of_every_statistic_and_shown_apart(tmp_path, write_run, run_cli):
    # one finished run and one interrupted after 2 epochs: "7.00 (21.00±19.80)" and "Δ +14.03" before
    write_run(tmp_path, "residual", 56, seed=0, test=(30.0, 9.0, 7.0), **PAPER)
    write_run(tmp_path, "residual", 56, seed=1, test=(40.0, 35.0), state="interrupted", planned_epochs=3, **PAPER)
    summary = summarize(load_runs(tmp_path)[0])
    [row] = summary.to_dict("records")
    assert (row["runs"], row["unfinished"], row["seeds"]) == (1, 1, "0")
    assert (row["final_test_error_best"], row["final_test_error_mean"]) == (7.0, 7.0)
    assert math.isnan(row["final_test_error_std"]) and row["min_epoch_test_error_mean"] == 7.0
    assert row["paper_protocol"] and row["vs_paper"] == pytest.approx(7.0 - 6.97)
    assert row["unfinished_runs"] == "seed 1 interrupted at epoch 2/3, test err 35.00"
    headers, rows, _ = display_table(summary)
    assert rows[0][headers.index("runs")] == "1 (+1 unfinished)" and rows[0][headers.index("Δ vs paper")] == "+0.03"
    assert rows[0][headers.index("test err %")] == "7.00"
    code, out, _ = run_cli("table", str(tmp_path), "--csv", str(tmp_path / "t.csv"))
    assert code == 0 and "seed 1 interrupted at epoch 2/3" in out and "21.00" not in out
    assert pd.read_csv(tmp_path / "t.csv")["unfinished_runs"].tolist() == [row["unfinished_runs"]]
    runs = summarize_runs(load_runs(tmp_path)[0])
    assert runs["counted"].tolist() == [True, False]
    headers, rows, notes = display_runs(runs)
    assert [r[headers.index("counted")] for r in rows] == ["yes", "no"] and any(n.startswith("counted:") for n in notes)


def test_the_table_says_which_precision_produced_its_numbers(tmp_path, write_run, run_cli):
    # CUDA's default (auto) is TF32: an execution detail, named in the notes, not a ‡; fp32 is the paper's
    write_run(tmp_path, "residual", 56, seed=0, resolved={"precision": "tf32"}, precision="auto", **PAPER)
    write_run(tmp_path, "residual", 20, seed=0, resolved={"precision": "fp32"}, **PAPER)
    summary = summarize(load_runs(tmp_path)[0])
    assert summary["precision"].tolist() == ["fp32", "tf32"] and summary["paper_protocol"].all()
    _, _, notes = display_table(summary)
    [note] = [n for n in notes if n.startswith("precision:")]
    assert note.startswith("precision: fp32 for residual 20 (as the paper trained); tf32 for residual 56 (TF32:")
    assert "--precision fp32" in note
    code, out, _ = run_cli("table", str(tmp_path / "residual-20-s0"))
    assert code == 0 and "precision: fp32 (as the paper trained)." in out


def test_a_markdown_cell_shows_a_folders_text_not_markup():
    from resdepth.results.tables import markdown_text

    # a '|' would add a column to the pasted table, a tag would be HTML in a README, a control character raw bytes
    assert markdown_text("a|b<img src=x>\x1b[2J\nc") == "a\\|b&lt;img src=x&gt;\\[2J c"
    assert markdown_text("![x](http://a/b)") == "!\\[x\\](http://a/b)"  # no image fetched where it is pasted


def test_a_run_whose_process_is_gone_is_stopped_in_the_table_as_in_status(tmp_path, write_run):
    # table and report said "seed 3 running at epoch 5/20" for a run killed long ago; status said stopped
    import json
    import subprocess
    import sys

    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    run_dir = write_run(tmp_path, "residual", 20, seed=3, test=(50.0, 30.0), planned_epochs=20, state="running")
    status = json.loads((run_dir / "status.json").read_text())
    (run_dir / "status.json").write_text(json.dumps({**status, "pid": int(gone.stdout)}))
    write_run(tmp_path, "residual", 20, seed=4, test=(50.0, 30.0), planned_epochs=20, state="running")  # this pid
    _, rows, _ = display_table(summarize(load_runs(tmp_path)[0]))
    assert "seed 3 stopped at epoch 2/20" in rows[0][-1] and "seed 4 running at epoch 2/20" in rows[0][-1]


def test_one_experiment_trained_twice_is_one_seed_not_two(tmp_path, write_run):
    # the same config and seed under two folder names (a grid axis naming the default's value, w1, beside an earlier
    # run without the axis) had been averaged as two seeds: "77.20 (77.20±0.00)" over 2 runs
    write_run(tmp_path, "residual", 20, seed=0, test=(50.0, 20.0, 9.0))
    copy = write_run(tmp_path / "again", "residual", 20, seed=0, test=(50.0, 20.0, 9.5))
    write_run(tmp_path, "residual", 20, seed=1, test=(50.0, 20.0, 10.0))
    longer = write_run(tmp_path / "longer", "residual", 20, seed=0, test=(50.0, 20.0, 8.0))
    config = json.loads((longer / "config.json").read_text())  # trained longer on other data: not a repeat
    (longer / "config.json").write_text(json.dumps({**config, "resolved": {**config["resolved"], "iterations": 1}}))
    bf16 = write_run(tmp_path / "bf16", "residual", 20, seed=0, test=(50.0, 20.0, 8.5))
    config = json.loads((bf16 / "config.json").read_text())  # another precision: another setting, not a repeat
    (bf16 / "config.json").write_text(json.dumps({**config, "resolved": {**config["resolved"], "precision": "bf16"}}))
    runs, notes = load_runs(tmp_path)
    assert sorted(str(run.path.relative_to(tmp_path)) for run in runs) == [
        "bf16/residual-20-s0", "longer/residual-20-s0", "residual-20-s0", "residual-20-s1"]
    assert notes == [f"left out {copy}: the same config and seed as {tmp_path / 'residual-20-s0'} (trained twice, or "
                     "a copy), counted once"]


def test_a_warm_up_is_said_to_be_still_on_only_where_status_json_says_so_and_a_null_section_reads(tmp_path,
                                                                                                   write_run):
    write_run(tmp_path, "residual", 110, seed=0, iterations=40, warmup_end=None, resolved={"warmup": True})
    copied = write_run(tmp_path, "residual", 110, seed=1, iterations=40, state=None, resolved={"warmup": True})
    summary = summarize(load_runs(tmp_path)[0])
    assert summary["warmup_still_on"].tolist() == [1]  # the copy without status.json: not known, not counted
    _, _, notes = display_table(summary)
    assert any(note.startswith("warm-up: residual-110 ended still warming up") for note in notes)
    config = json.loads((copied / "config.json").read_text())
    (copied / "config.json").write_text(json.dumps({**config, "resolved": None}))  # had crashed table and plot
    assert len(summarize(load_runs(tmp_path)[0])) >= 1


def test_a_folders_text_reaches_no_terminal_markup_markdown_or_spreadsheet_formula(tmp_path, write_run, run_cli):
    payload = "<img src=x onerror=alert(1)>[bold red]X[/][link=http://evil.example]L[/link]"
    write_run(tmp_path, "residual", 20)
    other = write_run(tmp_path / "b", "residual", 20)
    config = json.loads((other / "config.json").read_text())
    config["kind"] = '=HYPERLINK("http://evil.example","x\u202e\ud800")'  # a formula, a bidi control, a surrogate
    (other / "config.json").write_text(json.dumps(config))
    code, out, err = run_cli("table", str(tmp_path), "--csv", str(tmp_path / "t.csv"))
    assert code == 0, err
    assert "\u202e" not in out and "\\ud800" in out  # the bidi control left out, the surrogate escaped
    csv_text = (tmp_path / "t.csv").read_text()
    assert "'=HYPERLINK(" in csv_text and ",=HYPERLINK" not in csv_text and "\\ud800" in csv_text
    assert pd.read_csv(tmp_path / "t.csv")["depth"].tolist() == [20, 20]  # numbers stay numbers
    from resdepth.results.runs import load_runs
    from resdepth.results.tables import markdown_text, to_markdown
    runs = load_runs(tmp_path)[0]
    summary = summarize(runs)
    assert "\u202e" not in to_markdown(summary) and markdown_text(payload).startswith("&lt;img")


def test_a_family_label_from_a_folder_is_shown_as_text_in_every_table_header(tmp_path, write_run, run_cli):
    from resdepth.results import tables

    payload = "<img src=x onerror=alert(1)>[bold red]X[/][link=http://evil.example]L[/link]"
    headers, _, _ = tables.display_table(summarize(load_runs(_runs_with_a_label(tmp_path, write_run, payload))[0]))
    assert any(payload in header for header in headers)  # the planted label does reach the header...
    code, out, _ = run_cli("table", str(tmp_path), "--markdown")
    assert code == 0 and "<img" not in out and "&lt;img" in out and "\\[link=http://evil.example\\]" in out
    code, out, _ = run_cli("table", str(tmp_path), columns=400)
    assert code == 0 and "[bold" in out and "[/link]" in out  # ...as its text, not as markup


def _runs_with_a_label(tmp_path, write_run, label):
    run_dir = write_run(tmp_path, "mylab.nets:fam", 8, dataset="synthetic")
    config = json.loads((run_dir / "config.json").read_text())
    config.setdefault("resolved", {})["family"] = {"reference": {"label": label, "citation": "c", "numbers": [
        {"depth": 8, "dataset": "synthetic", "test_error": 5.0}]}}
    (run_dir / "config.json").write_text(json.dumps(config))
    return tmp_path
