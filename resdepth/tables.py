"""The Table 6 style summary: one row per dataset x kind x depth, seeds aggregated, beside the paper's numbers.

Also the grouping of runs into seed groups, which the plots share: a row of the table is a line of a figure.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from .errors import UserError
from .results import EXECUTION_FIELDS, Run

# He et al. 2016, Table 6: CIFAR-10 test error (%) of the residual nets (option A shortcuts, 64k iterations).
# One run per depth, except 110 layers: 6.43 is the best of 5 runs, whose mean and std are below.
PAPER_TABLE6: dict[int, float] = {20: 8.75, 32: 7.51, 44: 7.17, 56: 6.97, 110: 6.43, 1202: 7.93}
PAPER_TABLE6_110_MEAN_STD: tuple[float, float] = (6.61, 0.16)

SUMMARY_COLUMNS: tuple[str, ...] = (
    "dataset", "setting", "kind", "shortcut", "depth", "params", "runs", "unfinished", "seeds",
    "final_train_error_mean", "final_test_error_mean", "final_test_error_std",
    "best_test_error_mean", "val_selected_test_error_mean", "paper_test_error", "vs_paper",
)
KIND_ORDER = {"plain": 0, "residual": 1}


@dataclass(frozen=True, order=True)
class GroupKey:
    """What the seeds of one group share. shortcut is '' for plain nets, which have none. setting is '' unless
    runs of one dataset x kind x depth were trained differently (e.g. two sweeps with other --iterations in one
    folder): then it names what differs ('iterations 400, lr 0.05'), so those are never averaged as seeds."""

    dataset: str
    kind: str
    shortcut: str
    depth: int
    setting: str = ""

    @property
    def variant(self) -> str:
        """The kind as figures and tables name it: 'residual', or 'residual-B' for projection shortcuts."""
        return self.kind if self.shortcut in ("", "A") else f"{self.kind}-{self.shortcut}"


def group_key(run: Run, setting: str = "") -> GroupKey:
    kind = str(run.setting("kind", "unknown"))
    shortcut = str(run.setting("shortcut", "A")) if kind == "residual" else ""
    return GroupKey(str(run.setting("dataset", "unknown")), kind, shortcut, int(run.setting("depth", 0)), setting)


def group_runs(runs: list[Run]) -> dict[GroupKey, list[Run]]:
    """Runs grouped by dataset, kind, shortcut and depth (the seeds of one setting), plain before residual;
    runs of one such group that were trained differently are kept apart by their setting."""
    groups: dict[GroupKey, list[Run]] = {}
    for run, setting in zip(runs, setting_labels(runs)):
        groups.setdefault(group_key(run, setting), []).append(run)
    order = lambda key: (key.dataset, key.setting, KIND_ORDER.get(key.kind, 2), key.kind, key.shortcut, key.depth)  # noqa: E731
    return {key: groups[key] for key in sorted(groups, key=order)}


# Saved config keys that do not make runs different experiments: the group key, the seed, how a run executed,
# where its data lives, and raw values that "resolved" holds as they took effect (--epochs -> iterations).
NOT_PROTOCOL = {"kind", "depth", "shortcut", "seed", "epochs", "iterations", "precision", "resolved", "environment",
                "data", *EXECUTION_FIELDS}
NOT_DATA_PROTOCOL = {"dataset", "data_dir", "train_size", "test_size", "val_size"}


def run_protocol(run: Run) -> dict[str, str]:
    """What a run computed beyond its group key and seed, as text: equal protocols make seeds of one setting."""
    config, resolved = run.config, run.config.get("resolved", {})
    values = {key: value for key, value in config.items() if key not in NOT_PROTOCOL}
    data = config.get("data", {})
    values.update({key: value for key, value in data.items() if key not in NOT_DATA_PROTOCOL
                   and (data.get("dataset") == "synthetic" or not key.startswith("synthetic_"))})
    if data.get("dataset") == "folder":
        values["data_dir"] = data.get("data_dir")  # for image folders the path is what names the dataset
    for key in ("iterations", "train_size", "test_size", "val_size"):
        values[key] = resolved.get(key, config.get(key, data.get(key)))
    precision = config.get("precision", "auto")
    device = str(config.get("environment", {}).get("device", ""))
    values["precision"] = resolved.get("precision") or (precision if precision != "auto" else
                                                        "tf32" if device.startswith("cuda") else "fp32")
    return {key: json.dumps(value) for key, value in values.items()}


def setting_labels(runs: list[Run]) -> list[str]:
    """Per run, '' or the values of the settings that differ between runs of one dataset x kind x depth.

    Only keys that actually split such a group count, and every run of that dataset is labelled by them, so
    each sweep's depths stay together in one figure and one block of the table."""
    protocols = [run_protocol(run) for run in runs]
    by_group: dict[GroupKey, list[dict[str, str]]] = {}
    for run, protocol in zip(runs, protocols):
        by_group.setdefault(group_key(run), []).append(protocol)
    split_keys: dict[str, set[str]] = {}  # dataset -> keys that differ inside one of its groups
    for key, members in by_group.items():
        differing = {k for k in set().union(*members) if len({m.get(k) for m in members}) > 1}
        split_keys.setdefault(key.dataset, set()).update(differing)
    labels = []
    for run, protocol in zip(runs, protocols):
        keys = sorted(split_keys.get(group_key(run).dataset, ()))
        labels.append(", ".join(f"{k} {shown(protocol.get(k))}" for k in keys))
    return labels


def shown(value: str | None) -> str:
    """A protocol value as a label shows it: strings without their JSON quotes, a missing key as '-'."""
    if value is None:
        return "-"
    decoded = json.loads(value)
    return decoded if isinstance(decoded, str) else value


def is_complete(run: Run) -> bool:
    """Done by its status, or (no status.json, e.g. copied results) its CSV reached the planned iterations."""
    planned = run.config.get("resolved", {}).get("iterations")
    reached = planned is not None and run.metrics["iteration"].iloc[-1] >= planned
    return run.finished or (run.status == "unknown" and reached)


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
