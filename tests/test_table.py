"""The Table 6 style summary from hand-made results folders: means, sample stds, best and val-selected test
error, the paper's numbers beside ours, the exports, and `resdepth table` on good, corrupt and empty folders."""

import json
import math

import pandas as pd
import pytest

from resdepth.results import load_runs
from resdepth.tables import PAPER_TABLE6, SUMMARY_COLUMNS, display_table, summarize, to_markdown, write_csv


@pytest.fixture
def results(tmp_path, write_run):
    write_run(tmp_path, "residual", 56, seed=0, test=(30.0, 9.0, 7.0), train=(35.0, 4.0, 1.0), params=853018)
    write_run(tmp_path, "residual", 56, seed=1, test=(31.0, 8.0, 8.0), train=(36.0, 5.0, 2.0), params=853018)
    write_run(tmp_path, "residual", 56, seed=2, test=(32.0, 6.5, 9.0), train=(37.0, 6.0, 3.0), params=853018)
    write_run(tmp_path, "plain", 56, seed=0, test=(40.0, 14.0, 12.5), train=(45.0, 9.0, 8.0), params=853018)
    write_run(tmp_path, "plain", 20, seed=0, test=(35.0, 11.0, 10.0), train=(40.0, 6.0, 5.0), params=269722)
    write_run(tmp_path, "residual", 110, seed=0, test=(30.0, 7.0), train=(40.0, 1.0), state="running",
              planned_epochs=3, params=1727962)
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
    assert row["final_test_error_mean"] == pytest.approx(8.0)  # (7 + 8 + 9) / 3
    assert row["final_test_error_std"] == pytest.approx(1.0)  # sample std (ddof=1) of 7, 8, 9
    assert row["final_train_error_mean"] == pytest.approx(2.0)
    assert row["best_test_error_mean"] == pytest.approx((7.0 + 8.0 + 6.5) / 3)  # each run's lowest, then the mean
    assert math.isnan(row["val_selected_test_error_mean"])
    plain = rows_by_name(summary)["plain-56"]
    assert plain["final_test_error_mean"] == 12.5 and math.isnan(plain["final_test_error_std"])  # one run: no std
    assert plain["final_train_error_mean"] > rows_by_name(summary)["plain-20"]["final_train_error_mean"]


def test_paper_table6_beside_cifar10_residual_rows_only(results, tmp_path, write_run):
    write_run(results / "b", "residual", 56, shortcut="B")
    write_run(results / "syn", "residual", 56, dataset="synthetic")
    summary = summarize(load_runs(results)[0])
    rows = rows_by_name(summary[summary["dataset"] == "cifar10"])
    residual = rows["residual-56"]
    assert residual["paper_test_error"] == PAPER_TABLE6[56] == 6.97
    assert residual["vs_paper"] == pytest.approx(8.0 - 6.97)
    assert rows["residual-110"]["paper_test_error"] == 6.61  # a mean compares with the paper's mean of 5 runs
    assert rows["residual-110"]["unfinished"] == 1 and rows["residual-110"]["final_test_error_mean"] == 7.0
    assert math.isnan(rows["plain-56"]["paper_test_error"]) and math.isnan(rows["plain-56"]["vs_paper"])
    assert math.isnan(rows["residualB-56"]["paper_test_error"])  # Table 6 used option A shortcuts
    synthetic = [r for r in summary.itertuples() if r.dataset == "synthetic"]
    assert len(synthetic) == 1 and math.isnan(synthetic[0].paper_test_error)


def test_val_selected_test_error_is_taken_at_the_lowest_validation_error(tmp_path, write_run):
    write_run(tmp_path, "residual", 20, seed=0, test=(30.0, 9.0, 10.0), val=(31.0, 12.0, 11.0))
    write_run(tmp_path, "residual", 20, seed=1, test=(30.0, 9.5, 8.5), val=(31.0, 10.0, 11.0))
    summary = summarize(load_runs(tmp_path)[0])
    assert summary.loc[0, "val_selected_test_error_mean"] == pytest.approx((10.0 + 9.5) / 2)
    assert summary.loc[0, "best_test_error_mean"] == pytest.approx((9.0 + 8.5) / 2)
    headers, rows, _ = display_table(summary)
    assert "test err % at best val" in headers and rows[0][headers.index("test err % at best val")] == "9.75"


def test_display_and_markdown_label_best_as_picked_on_test(results):
    summary = summarize(load_runs(results)[0])
    headers, rows, notes = display_table(summary)
    assert "best test err %†" in headers and "dataset" not in headers  # one dataset: in the title
    assert "test err % at best val" not in headers  # no run held out a validation split
    residual = rows[2]
    assert residual[:5] == ["residual", "56", "0.85M", "3", "2.00"]
    assert residual[headers.index("test err %")] == "8.00 ± 1.00"
    assert residual[headers.index("paper Table 6 (Δ)")] == "6.97 (+1.03)"
    assert rows[3][headers.index("runs")] == "1*" and any("unfinished" in note for note in notes)
    markdown = to_markdown(summary).splitlines()
    assert markdown[0].startswith("| kind | depth | params | runs |") and markdown[1].startswith("|---|---:|")
    assert len([line for line in markdown if line.startswith("| ")]) == 1 + len(summary)
    assert "| residual | 56 | 0.85M | 3 | 2.00 | 8.00 ± 1.00 |" in markdown[4]
    assert any(line.startswith("- ") and "selected on the test set" in line for line in markdown)
    assert "- dataset: cifar10" in markdown  # one dataset: no column for it, so a pasted table names it below


def test_csv_export_holds_the_unrounded_numbers(results, tmp_path):
    summary = summarize(load_runs(results)[0])
    path = tmp_path / "exports" / "table6.csv"
    write_csv(summary, path)
    back = pd.read_csv(path)
    assert list(back.columns) == list(SUMMARY_COLUMNS) and len(back) == len(summary)
    assert back["final_test_error_mean"].tolist() == pytest.approx(summary["final_test_error_mean"].tolist(), abs=1e-4)
    assert back.loc[2, "params"] == 853018 and back.loc[2, "seeds"] == "0,1,2"


def test_cli_table_prints_the_rich_table_and_exports(results, tmp_path, run_cli):
    code, out, err = run_cli("table", str(results), "--csv", str(tmp_path / "t.csv"))
    assert code == 0, err
    assert "8.00 ± 1.00" in out and "6.97 (+1.03)" in out and "selected on the test set" in out
    assert (tmp_path / "t.csv").stat().st_size > 0 and "t.csv" in err
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
    assert any("plain-56-s0" in w and "'abc', not a whole number" in w for w in warnings)
    assert any("residual-56-s2" in w and "4 of 9 fields, cut short" in w for w in warnings)
    assert "| residual | 56 | 0.85M | 3 | 2.00 | 8.00 ± 1.00 |" in out  # the torn line did not count
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
    assert code == 0 and out.startswith("| setting | kind | depth |") and "| lr 0.05 | plain | 20 |" in out
    # a folder of one sweep has nothing to tell apart: no setting column
    code, out, _ = run_cli("table", str(tmp_path / "a"), "--markdown")
    assert code == 0 and out.startswith("| kind | depth |")


def test_two_image_folders_are_two_datasets_even_with_one_seed_each(tmp_path, write_run):
    for name in ("jpeg-a", "jpeg-b"):
        final = 20.0 if name == "jpeg-a" else 30.0
        run_dir = write_run(tmp_path / name, "residual", 8, dataset="folder", test=(50.0, final))
        config = json.loads((run_dir / "config.json").read_text())
        config["data"]["data_dir"] = f"/data/{name}"
        (run_dir / "config.json").write_text(json.dumps(config))
    summary = summarize(load_runs(tmp_path)[0])
    assert summary["runs"].tolist() == [1, 1]
    assert summary["setting"].tolist() == ["data_dir /data/jpeg-a", "data_dir /data/jpeg-b"]
