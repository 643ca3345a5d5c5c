"""The Table 6 style summary: one row per dataset x kind x depth, seeds aggregated, beside the paper's numbers.

The runs are grouped as `groups.group_runs` groups them, as the plots are: a row of the table is a line of a figure.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from .errors import UserError
from .groups import GroupKey, group_runs, is_complete
from .results import Run

# He et al. 2016, Table 6: CIFAR-10 test error (%) of the residual nets (option A shortcuts, 64k iterations).
# One run per depth, except 110 layers: 6.43 is the best of 5 runs, whose mean and std are below.
PAPER_TABLE6: dict[int, float] = {20: 8.75, 32: 7.51, 44: 7.17, 56: 6.97, 110: 6.43, 1202: 7.93}
PAPER_TABLE6_110_MEAN_STD: tuple[float, float] = (6.61, 0.16)

SUMMARY_COLUMNS: tuple[str, ...] = (
    "dataset", "setting", "kind", "shortcut", "depth", "params", "runs", "unfinished", "seeds",
    "final_train_error_mean", "final_test_error_mean", "final_test_error_std",
    "best_test_error_mean", "val_selected_test_error_mean", "paper_test_error", "vs_paper",
)
def paper_test_error(key: GroupKey) -> float | None:
    """The Table 6 number a mean over seeds compares with: for 110 layers the paper's mean of 5 runs."""
    if key.dataset != "cifar10" or key.variant != "residual":
        return None
    return PAPER_TABLE6_110_MEAN_STD[0] if key.depth == 110 else PAPER_TABLE6.get(key.depth)


def summarize_group(key: GroupKey, runs: list[Run]) -> dict[str, object]:
    final = pd.DataFrame([run.metrics.iloc[-1] for run in runs])
    best = [run.metrics["test_error"].min() for run in runs]
    val_selected = [val_selected_test_error(run) for run in runs]
    val_selected = [v for v in val_selected if v is not None]
    paper = paper_test_error(key)
    test_mean = float(final["test_error"].mean())
    return {
        "dataset": key.dataset, "setting": key.setting, "kind": key.kind, "shortcut": key.shortcut, "depth": key.depth,
        "params": run_params(runs), "runs": len(runs), "unfinished": sum(not is_complete(run) for run in runs),
        "seeds": ",".join(str(run.setting("seed", "?")) for run in runs),
        "final_train_error_mean": float(final["train_error"].mean()),
        "final_test_error_mean": test_mean,
        "final_test_error_std": float(final["test_error"].std(ddof=1)) if len(runs) > 1 else float("nan"),
        "best_test_error_mean": float(sum(best) / len(best)),
        "val_selected_test_error_mean": sum(val_selected) / len(val_selected) if val_selected else float("nan"),
        "paper_test_error": paper if paper is not None else float("nan"),
        "vs_paper": test_mean - paper if paper is not None else float("nan"),
    }


def val_selected_test_error(run: Run) -> float | None:
    """Test error at the epoch of the lowest validation error (the honest model selection), if the run had one."""
    if "val_error" not in run.metrics or run.metrics["val_error"].isna().all():
        return None
    return float(run.metrics.loc[run.metrics["val_error"].idxmin(), "test_error"])


def run_params(runs: list[Run]) -> int | None:
    counts = {run.config.get("resolved", {}).get("params") for run in runs} - {None}
    return int(counts.pop()) if len(counts) == 1 else None  # unknown (not started) or ambiguous: leave blank


def summarize(runs: list[Run]) -> pd.DataFrame:
    """One row per dataset x kind x shortcut x depth: final errors over seeds (mean, sample std), best and
    val-selected test error, and for CIFAR-10 residual nets the paper's Table 6 value and our difference."""
    rows = [summarize_group(key, group) for key, group in group_runs(runs).items()]
    frame = pd.DataFrame(rows, columns=list(SUMMARY_COLUMNS))
    return frame.astype({"params": "Int64", "depth": int, "runs": int, "unfinished": int})


def display_table(summary: pd.DataFrame) -> tuple[list[str], list[list[str]], list[str]]:
    """Headers, rows of text and footnotes for a terminal or Markdown table; columns nobody filled are left out."""
    columns = [("kind", _kind), ("depth", _text("depth")), ("params", _params), ("runs", _runs),
               ("train err %", _mean("final_train_error_mean")), ("test err %", _mean_std),
               ("best test err %†", _mean("best_test_error_mean"))]
    if summary["setting"].ne("").any():
        columns.insert(0, ("setting", _text("setting")))
    if summary["dataset"].nunique() > 1:
        columns.insert(0, ("dataset", _text("dataset")))
    notes = ["train/test err: at the last epoch, mean ± sample std over the runs (seeds). †best: the lowest test "
             "error over the epochs, i.e. selected on the test set (optimistic)."]
    if summary["val_selected_test_error_mean"].notna().any():
        columns.append(("test err % at best val", _mean("val_selected_test_error_mean")))
        notes.append("at best val: the test error at the epoch of the lowest validation error (held-out split).")
    if summary["paper_test_error"].notna().any():
        columns.append(("paper Table 6 (Δ)", _paper))
        notes.append(f"paper: He et al. 2016, Table 6 (CIFAR-10); for 110 layers the mean of 5 runs "
                     f"({PAPER_TABLE6_110_MEAN_STD[0]} ± {PAPER_TABLE6_110_MEAN_STD[1]}; best {PAPER_TABLE6[110]}). "
                     "Δ: our test err mean minus the paper's.")
    if summary["unfinished"].any():
        notes.append("runs marked * include unfinished runs (running, interrupted, failed or diverged), "
                     "counted with the epochs they have.")
    rows = [[render(row) for _, render in columns] for row in summary.to_dict("records")]
    return [header for header, _ in columns], rows, notes


def to_markdown(summary: pd.DataFrame) -> str:
    headers, rows, notes = display_table(summary)
    if summary["dataset"].nunique() == 1:  # a terminal table says it in its title; a pasted table must too
        notes.insert(0, f"dataset: {summary['dataset'].iloc[0]}")
    numeric = {"depth", "params", "runs"} | {h for h in headers if "%" in h or "paper" in h}
    lines = ["| " + " | ".join(headers) + " |",
             "|" + "|".join("---:" if h in numeric else "---" for h in headers) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines + [""] + [f"- {note}" for note in notes]) + "\n"


def write_csv(summary: pd.DataFrame, path: Path) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        summary.to_csv(path, index=False, float_format="%.4f")
    except OSError as exc:
        raise UserError(f"cannot write {path} ({exc.strerror or exc}): choose another --csv file") from None


def _text(column: str):
    return lambda row: str(row[column])


def _kind(row: dict) -> str:
    return row["kind"] if row["shortcut"] in ("", "A") else f"{row['kind']} ({row['shortcut']})"


def _params(row: dict) -> str:
    return "-" if pd.isna(row["params"]) else f"{row['params'] / 1e6:.2f}M"  # as the paper's Table 6; CSV: exact


def _runs(row: dict) -> str:
    return f"{row['runs']}*" if row["unfinished"] else str(row["runs"])


def _mean(column: str):
    return lambda row: "-" if pd.isna(row[column]) else f"{row[column]:.2f}"


def _mean_std(row: dict) -> str:
    mean, std = row["final_test_error_mean"], row["final_test_error_std"]
    return f"{mean:.2f}" if pd.isna(std) else f"{mean:.2f} ± {std:.2f}"


def _paper(row: dict) -> str:
    return "-" if pd.isna(row["paper_test_error"]) else f"{row['paper_test_error']:.2f} ({row['vs_paper']:+.2f})"
