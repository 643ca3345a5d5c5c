"""The Table 6 style summary: one row per dataset x kind x depth, seeds aggregated as the paper reports them
("best (mean ± std)"), beside the paper's numbers where the protocol is the paper's; and one row per run.

The runs are grouped as `groups.group_runs` groups them, as the plots are: a row of the table is a line of a figure.
"""

from __future__ import annotations

import html
import math
from pathlib import Path
from typing import Any

import pandas as pd

from ..errors import UserError
from ..models.families import TABLE6, Family, PaperNumber, family_of_run
from .groups import GroupKey, group_runs, is_complete, on_paper_axes, paper_differences, paper_number, run_precision
from .runs import Run, atomic_write_bytes, printable

# He et al. 2016, Table 6 (the residual family's reference, families.TABLE6): CIFAR-10 test error (%) by depth.
PAPER_TABLE6: dict[int, float] = {number.depth: number.test_error for number in TABLE6.numbers}
# The families of a summary's rows, kept beside its numbers (DataFrame.attrs: not a column of the CSV), so that
# displaying it names each family's paper and shortcut without importing any family's code.
FAMILIES_ATTR = "families"

# Displayed columns of words, not numbers: left-aligned wherever a table is drawn.
TEXT_HEADERS = frozenset({"dataset", "setting", "kind", "state", "counted", "folder", "started from",
                          "paper's statistic", "unfinished, not counted", "warm-up ended"})
SUMMARY_COLUMNS: tuple[str, ...] = (
    "dataset", "setting", "kind", "shortcut", "depth", "params", "runs", "unfinished", "seeds", "unfinished_runs",
    "final_train_error_mean", "final_test_error_best", "final_test_error_mean", "final_test_error_std",
    "final_test_error_median", "min_epoch_test_error_mean", "val_selected_test_error_mean",
    "paper_test_error", "paper_statistic", "compared_with", "paper_protocol", "vs_paper", "protocol_differences",
    "precision", "warmup_still_on",
)
RUN_COLUMNS: tuple[str, ...] = (
    "dataset", "setting", "kind", "shortcut", "depth", "seed", "state", "counted", "epochs", "planned_epochs",
    "iteration",
    "final_train_error", "final_test_error", "min_epoch_test_error", "best_val_epoch", "val_selected_test_error",
    "warmup", "warmup_end_reason", "warmup_end_iteration", "init", "path",
)


def paper_test_error(runs: list[Run]) -> float | None:
    """The number of the group's family's paper that our statistic over seeds compares with (its median of 5 runs for
    2016b, where our median stands beside it; its mean where it gives one, 6.61 for ResNet-110; else its one run);
    None where the paper has no number (plain nets, other depths)."""
    number = group_paper_number(runs)
    return None if number is None else number.compared


def group_paper_number(runs: list[Run]) -> PaperNumber | None:
    return paper_number(runs[0]) if runs else None


def group_differences(runs: list[Run]) -> list[str]:
    """How the group's runs differ from the paper's protocol, each phrase once, in the order first met."""
    return list(dict.fromkeys(phrase for run in runs for phrase in paper_differences(run)))


def summarize_group(key: GroupKey, runs: list[Run]) -> dict[str, object]:
    """The group's row: every statistic (best, mean, std, Δ) over its finished runs only; its unfinished runs (an
    interrupted run's error after 2 epochs is not a result) are counted and described apart."""
    finished = [run for run in runs if is_complete(run)]
    unfinished = [run for run in runs if not is_complete(run)]
    final = pd.DataFrame([run.metrics.iloc[-1] for run in finished], columns=["train_error", "test_error"])
    lowest = [run.metrics["test_error"].min() for run in finished]
    val_selected = [v for v in (val_selected_test_error(run) for run in finished) if v is not None]
    # the paper's number only beside the paper's values of the axes (lr 0.1, width 1), never beside lr 0.05
    axes = [name for name, _ in key.axes]
    number = group_paper_number(runs) if all(on_paper_axes(run, axes) for run in runs) else None
    differences = group_differences(runs)
    test_mean = float(final["test_error"].mean()) if finished else math.nan
    test_median = float(final["test_error"].median()) if finished else math.nan
    ours = test_median if number is not None and number.ours == "median" else test_mean
    return {
        "dataset": key.dataset, "setting": key.setting, "kind": key.kind, "shortcut": key.shortcut, "depth": key.depth,
        "params": run_params(runs), "runs": len(finished), "unfinished": len(unfinished),
        "seeds": seeds_of(finished), "unfinished_runs": "; ".join(unfinished_progress(run) for run in unfinished),
        "final_train_error_mean": float(final["train_error"].mean()) if finished else math.nan,
        "final_test_error_best": float(final["test_error"].min()) if finished else math.nan,
        "final_test_error_mean": test_mean,
        "final_test_error_std": float(final["test_error"].std(ddof=1)) if len(finished) > 1 else math.nan,
        "final_test_error_median": test_median,
        "min_epoch_test_error_mean": float(sum(lowest) / len(lowest)) if lowest else math.nan,
        "val_selected_test_error_mean": sum(val_selected) / len(val_selected) if val_selected else math.nan,
        "paper_test_error": number.compared if number is not None else math.nan,
        "paper_statistic": number.compared_words if number is not None else "",
        "compared_with": number.ours if number is not None else "",
        "paper_protocol": not differences,
        "vs_paper": ours - number.compared if number is not None and not differences else math.nan,
        "protocol_differences": "; ".join(differences),
        "precision": "/".join(dict.fromkeys(run_precision(run) for run in runs)),  # one: precision splits groups
        "warmup_still_on": sum(warmed_up_to_the_end(run) for run in finished),
    }


def warmed_up_to_the_end(run: Run) -> bool:
    """A run that warmed up and ended before its warm-up did: it never trained at lr 0.1, at most at the warm-up's
    0.01 (lower once a milestone divides the schedule's lr below it)."""
    # without a status.json (copied results) how the warm-up ended is unknown: never said to be still on
    return bool(run.config.get("resolved", {}).get("warmup")) and run.status != "unknown" and \
        run.warmup_end_reason is None


def seeds_of(runs: list[Run]) -> str:
    return ",".join(str(run.setting("seed", "?")) for run in runs)


def unfinished_progress(run: Run) -> str:
    """'seed 1 interrupted at epoch 2/164, test err 35.00': where an unfinished run stands (not a result)."""
    last, planned = run.metrics.iloc[-1], run.config.get("resolved", {}).get("epochs")
    epoch = f"{int(last['epoch'])}/{planned}" if planned else str(int(last["epoch"]))
    return f"seed {run.setting('seed', '?')} {run.status} at epoch {epoch}, test err {float(last['test_error']):.2f}"


def val_selected_test_error(run: Run) -> float | None:
    """Test error at the epoch of the lowest validation error (the honest model selection), if the run had one."""
    epoch = best_val_row(run)
    return None if epoch is None else float(run.metrics.loc[epoch, "test_error"])


def best_val_row(run: Run) -> int | None:
    if "val_error" not in run.metrics or run.metrics["val_error"].isna().all():
        return None
    return int(run.metrics["val_error"].idxmin())


def run_params(runs: list[Run]) -> int | None:
    counts = {run.config.get("resolved", {}).get("params") for run in runs} - {None}
    return int(counts.pop()) if len(counts) == 1 else None  # unknown (not started) or ambiguous: leave blank


def summarize(runs: list[Run]) -> pd.DataFrame:
    """One row per dataset x kind x shortcut x depth: final errors over finished seeds (best, mean, sample std), the
    test-selected and val-selected test error, and the paper's Table 6 value with our difference where the
    protocol is the paper's (`protocol_differences` says what differs otherwise)."""
    groups = group_runs(runs)
    rows = [{**summarize_group(key, group), **axis_cells(key)} for key, group in groups.items()]
    frame = pd.DataFrame(rows, columns=with_axis_columns(SUMMARY_COLUMNS, groups))
    frame = frame.astype({"params": "Int64", "depth": int, "runs": int, "unfinished": int, "paper_protocol": bool})
    frame.attrs[FAMILIES_ATTR] = {key.kind: key.family for key in groups}
    return frame


def summarize_runs(runs: list[Run]) -> pd.DataFrame:
    """One row per run, in the table's group order then by seed: where it stands, its final errors, the epoch of
    its lowest validation error (when it held out a split) and how its warm-up ended (when it warmed up)."""
    rows = []
    groups = group_runs(runs)
    for key, group in groups.items():
        for run in sorted(group, key=lambda r: (seed_order(r), str(r.path))):
            rows.append({**run_row(key, run), **axis_cells(key)})
    frame = pd.DataFrame(rows, columns=with_axis_columns(RUN_COLUMNS, groups))
    frame = frame.astype({"depth": int, "epochs": int, "iteration": int, "planned_epochs": "Int64",
                          "best_val_epoch": "Int64", "warmup_end_iteration": "Int64"})
    frame.attrs[FAMILIES_ATTR] = {key.kind: key.family for key in groups}
    return frame


TABLE_COLUMNS = frozenset({*SUMMARY_COLUMNS, *RUN_COLUMNS})


def axis_column(key: str, taken: frozenset[str] = TABLE_COLUMNS) -> str:
    """The column of a setting's key (an axis of the runs: lr, width, ...): the key, or axis_<key> where a column
    of the table (taken) already has that name."""
    return f"axis_{key}" if key in taken else key


def axis_cells(key: GroupKey, taken: frozenset[str] = TABLE_COLUMNS) -> dict[str, str]:
    return {axis_column(name, taken): value for name, value in key.axes}


def with_axis_columns(columns: tuple[str, ...], groups: dict[GroupKey, list[Run]],
                      taken: frozenset[str] = TABLE_COLUMNS) -> list[str]:
    """The columns with one per axis of the runs (in key order) between setting and kind: a setting's values."""
    axes = sorted({axis_column(name, taken) for key in groups for name, _ in key.axes})
    at = columns.index("kind")
    return [*columns[:at], *axes, *columns[at:]]


def axis_names(frame: pd.DataFrame) -> list[str]:
    """The axis columns of a summary or runs frame: those between setting and kind."""
    names = list(frame.columns)
    return names[names.index("setting") + 1:names.index("kind")]


def seed_order(run: Run) -> tuple[int, str]:
    seed = run.setting("seed")
    return (seed, "") if isinstance(seed, int) else (0, str(seed))  # 2 before 10; a hand-written seed after


def run_row(key: GroupKey, run: Run) -> dict[str, object]:
    last, resolved = run.metrics.iloc[-1], run.config.get("resolved", {})
    best_val = best_val_row(run)
    return {
        "dataset": key.dataset, "setting": key.setting, "kind": key.kind, "shortcut": key.shortcut,
        "depth": key.depth, "seed": run.setting("seed"), "state": run.status, "counted": is_complete(run),
        "epochs": int(last["epoch"]), "planned_epochs": resolved.get("epochs"), "iteration": int(last["iteration"]),
        "final_train_error": float(last["train_error"]), "final_test_error": float(last["test_error"]),
        "min_epoch_test_error": float(run.metrics["test_error"].min()),
        "best_val_epoch": None if best_val is None else int(run.metrics.loc[best_val, "epoch"]),
        "val_selected_test_error": val_selected_test_error(run),
        "warmup": bool(resolved.get("warmup", False)), "warmup_end_reason": run.warmup_end_reason,
        "warmup_end_iteration": run.warmup_end_iteration, "init": str(run.config.get("init") or ""),
        "path": str(run.path),
    }


def describe_warmup_end(reason: str | None, iteration: int | None) -> str:
    """'threshold at iteration 410' (the training error fell below the bound, §4.2) or 'cap at iteration 4,000'."""
    if reason is None:
        return "still on"
    return f"{reason} at iteration {iteration:,}" if iteration is not None else reason


# ---------------------------------------------------------------------------------------------- displays
def families_of(frame: pd.DataFrame) -> dict[str, Family]:
    """The family of each kind in a summary: as `summarize` recorded it, else a built-in one by name (never an
    import)."""
    known = frame.attrs.get(FAMILIES_ATTR, {})
    return {kind: known.get(kind) or family_of_run({"kind": kind}) for kind in frame["kind"].unique()}


def display_table(summary: pd.DataFrame) -> tuple[list[str], list[list[str]], list[str]]:
    """Headers, rows of text and footnotes for a terminal or Markdown table; columns nobody filled are left out."""
    families = families_of(summary)
    seeds = bool((summary["runs"] > 1).any())  # with one run per group there is no best, mean or std to tell apart
    columns = [("kind", kind_label(families)), ("depth", _text("depth")), ("params", _params), ("runs", _runs),
               ("train err %", _mean("final_train_error_mean")),
               ("test err % best (mean±std)" if seeds else "test err %", _best_mean_std),
               ("min over epochs (test-selected)†", _mean("min_epoch_test_error_mean"))]
    columns[:0] = _study_columns(summary)
    notes = ["train/test err: at the last epoch of each run (seed)" + (
                 "; best (mean±std): the lowest of the runs' final test errors, then their mean and sample std "
                 "(ddof=1), as the paper's Table 6 gives 110 layers." if seeds else "."),
             "† min over epochs: each run's lowest test error over its epochs, averaged; it is selected on the test "
             "set, so optimistic, and not the paper's \"best\"."]
    notes.append(precision_note(summary, families))
    if summary["val_selected_test_error_mean"].notna().any():
        columns.append(("test err % at best val", _mean("val_selected_test_error_mean")))
        notes.append("at best val: the test error at the epoch of the lowest validation error (held-out split).")
    columns_paper, notes_paper = paper_columns(summary, families)
    columns += columns_paper
    notes += notes_paper
    still_on = summary[summary["warmup_still_on"] > 0]
    if not still_on.empty:
        nets = ", ".join(dict.fromkeys(f"{row.kind}-{row.depth}" for row in still_on.itertuples()))
        notes.append(f"warm-up: {nets} ended still warming up, so never trained at lr 0.1, at most 0.01 (a run "
                     "shorter than its warm-up; the paper's numbers need the whole schedule).")
    if summary["unfinished"].any():
        columns.append(("unfinished, not counted", _text("unfinished_runs")))
        notes.append("runs: the finished runs, which every number of the row (and Δ) is over; unfinished runs "
                     "(running, interrupted, failed or diverged) are left out of them and shown apart, with where "
                     "they stopped.")
    rows = [[render(row) for _, render in columns] for row in summary.to_dict("records")]
    return [header for header, _ in columns], rows, notes


# How each precision computes, for the table's note: the paper trained in fp32.
PRECISION_WORDS = {
    "fp32": "as the paper trained",
    "tf32": "TF32: convolutions and the FC layer round their inputs to a 10-bit mantissa and sum in fp32 (CUDA's "
            "default, --precision auto); the paper trained in fp32. An execution detail, not marked ‡: "
            "--precision fp32 trains in the paper's numerics",
    "bf16": "bf16 autocast (BN and the loss in fp32): not the paper's numerics, marked ‡",
}


def precision_note(summary: pd.DataFrame, families: dict[str, Family]) -> str:
    """Which precision produced the numbers: one phrase for the whole table, else the nets of each."""
    label = kind_label(families)
    by_precision: dict[str, list[str]] = {}
    for row in summary.to_dict("records"):
        by_precision.setdefault(str(row["precision"]), []).append(f"{label(row)} {row['depth']}")
    if len(by_precision) == 1:
        [precision] = by_precision
        return f"precision: {precision} ({PRECISION_WORDS.get(precision, 'as recorded')})."
    return "precision: " + "; ".join(f"{precision} for {', '.join(dict.fromkeys(nets))} "
                                     f"({PRECISION_WORDS.get(precision, 'as recorded')})"
                                     for precision, nets in by_precision.items()) + "."


def paper_columns(summary: pd.DataFrame, families: dict[str, Family]) -> tuple[list[tuple[str, object]], list[str]]:
    """The column of each family's paper numbers (‡ where our protocol differs, with a note naming how), Δ only
    where it is the paper's protocol, and a word for the nets the paper gives no number for."""
    has_number = summary["paper_test_error"].notna()
    matching = has_number & summary["paper_protocol"]
    if not has_number.any():
        labels = labels_of(families, summary["kind"])
        what = f"{labels[0]} number" if len(labels) == 1 else "paper number"
        return [], [f"paper: no {what} for these nets: " + no_number_reason(summary, families) + "."]
    kinds = list(summary.loc[has_number, "kind"].unique())
    labels = labels_of(families, kinds)
    columns: list[tuple[str, object]] = [(f"paper {labels[0]}" if len(labels) == 1 else "paper", paper_text(families)),
                                         ("paper's statistic", _text("paper_statistic"))]
    references = {families[kind].reference.citation: kind for kind in kinds}  # type: ignore[union-attr]
    notes = [f"paper: {citation}." if len(references) == 1 else f"paper ({kind}): {citation}."
             for citation, kind in references.items()]
    if (summary["compared_with"] == "median").any():
        columns.append(("our median", _our_median))
    if matching.any():
        columns.append(("Δ vs paper", _delta))
        notes.append(delta_note(summary[matching]))
    differing = summary[has_number & ~summary["paper_protocol"]]
    several = len(_study_columns(summary)) > 0
    for nets, differences in nets_by_difference(differing, several_studies=several, families=families):
        notes.append(f"‡ {nets}: not the paper's protocol, so no Δ: {differences}.")
    if (~has_number).any():
        notes.append("none: " + no_number_reason(summary[~has_number], families) + ".")
    return columns, notes


def delta_note(rows: pd.DataFrame) -> str:
    """What Δ subtracts, like from like: our median from the paper's median, our mean from its mean or one run."""
    pairs = dict.fromkeys(f"our {ours} minus its {words}" for ours, words in
                          rows[["compared_with", "paper_statistic"]].itertuples(index=False))
    return (f"Δ: {'; '.join(pairs)}; only where every run followed its paper's protocol (its dataset, shortcut "
            "and warm-up, 64k iterations, batch 128, lr 0.1, all 50k training images, augmentation, He init).")


def labels_of(families: dict[str, Family], kinds) -> list[str]:
    return list(dict.fromkeys(families[k].reference.label for k in kinds  # type: ignore[union-attr]
                              if families[k].reference is not None))


def no_number_reason(rows: pd.DataFrame, families: dict[str, Family]) -> str:
    """Why the paper gives no number: the family's word where its paper has no table (plain nets: only curves),
    else the depths its table lacks."""
    reasons = []
    with_tables = [kind for kind in families if families[kind].reference is not None]
    for kind in rows["kind"].unique():
        family = families[kind]
        if family.reference is None:
            reasons.append(family.no_reference or f"{kind} nets come with no paper numbers")
            continue
        known = family.reference.depths()
        depths = set(rows.loc[rows["kind"] == kind, "depth"])
        other = sorted(depths - set(known))
        if depths & set(known) and axis_names(rows):
            reasons.append(f"{family.reference.label} gives numbers at its own values of "
                           f"{', '.join(axis_names(rows))} only")
        if other:
            net = f"{kind} net" if len(with_tables) > 1 else "net"
            reasons.append(f"{family.reference.label} has no {' or '.join(map(str, other))}-layer {net}, only "
                           f"{', '.join(map(str, known))} layers")
    return "; ".join(dict.fromkeys(reasons))


def nets_by_difference(rows: pd.DataFrame, several_studies: bool,
                       families: dict[str, Family] | None = None) -> list[tuple[str, str]]:
    """(the nets, what differs) per distinct deviation: a sweep's common deviation is named once, for all its depths."""
    label = kind_label(families or families_of(rows))
    found: dict[str, dict[tuple[str, str], list[str]]] = {}
    for row in rows.to_dict("records"):
        study = ", ".join(filter(None, (row["dataset"], row["setting"]))) if several_studies else ""
        found.setdefault(row["protocol_differences"], {}).setdefault((label(row), study), []).append(str(row["depth"]))
    return [("; ".join(f"{kind} {', '.join(depths)}" + (f" ({study})" if study else "")
                       for (kind, study), depths in nets.items()), differences.replace("; ", ", "))
            for differences, nets in found.items()]


def display_runs(frame: pd.DataFrame) -> tuple[list[str], list[list[str]], list[str]]:
    """Headers, rows and footnotes for `resdepth table --runs`: one row per run."""
    columns = [("kind", kind_label(families_of(frame))), ("depth", _text("depth")), ("seed", _text("seed")),
               ("state", _text("state")), *([] if frame["counted"].all() else [("counted", _counted)]),
               ("epochs", _epochs), ("train err %", _mean("final_train_error")),
               ("test err %", _mean("final_test_error")), ("min over epochs†", _mean("min_epoch_test_error"))]
    columns[:0] = _study_columns(frame)
    notes = ["train/test err: at the run's last epoch. † min over epochs: its lowest test error over the epochs "
             "(selected on the test set)."]
    medians = [f.reference.label for f in families_of(frame).values() if f.reference and
               any(n.is_median for n in f.reference.numbers)]
    if medians:
        notes.append(f"{' and '.join(dict.fromkeys(medians))}: its numbers are medians of 5 runs; `resdepth table` "
                     "sets our median over the finished seeds beside them, not one run.")
    if not frame["counted"].all():
        notes.append("counted: whether the run's numbers enter the table's statistics (best, mean, std, Δ); an "
                     "unfinished run's (running, interrupted, failed or diverged) do not.")
    if frame["best_val_epoch"].notna().any():
        columns += [("best val epoch", _optional("best_val_epoch")),
                    ("test err % at best val", _mean("val_selected_test_error"))]
        notes.append("best val epoch: the epoch of the lowest validation error; the test error there beside it.")
    if frame["warmup"].any():
        columns.append(("warm-up ended", _warmup))
        notes.append("warm-up ended: threshold (training error below 80% at lr 0.01, §4.2) or cap "
                     "(--warmup-max-iterations reached: the bound on §4.2's warm-up, or the end of a fixed one as "
                     "2016b's 400 iterations; then lr 0.1 anyway), at that iteration; still on: the run has not "
                     "left it yet.")
    if frame["init"].ne("").any():
        columns.append(("started from", lambda row: Path(row["init"]).name if row["init"] else "He init"))
        notes.append("started from: the weights a run trained from (--init), not the paper's He init: such runs are "
                     "not the paper's protocol (‡ in the table).")
    columns.append(("folder", lambda row: Path(row["path"]).name))
    rows = [[render(row) for _, render in columns] for row in frame.to_dict("records")]
    return [header for header, _ in columns], rows, notes


def to_markdown(summary: pd.DataFrame, runs: bool = False) -> str:
    """The summary (or, with runs, a `summarize_runs` frame) as a Markdown table with its notes below."""
    headers, rows, notes = display_runs(summary) if runs else display_table(summary)
    if summary["dataset"].nunique() == 1:  # a terminal table says it in its title; a pasted table must too
        notes.insert(0, f"dataset: {summary['dataset'].iloc[0]}")
    numeric = set(headers) - TEXT_HEADERS
    lines = ["| " + " | ".join(map(markdown_text, headers)) + " |",
             "|" + "|".join("---:" if h in numeric else "---" for h in headers) + "|"]
    lines += ["| " + " | ".join(markdown_text(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines + [""] + [f"- {markdown_text(note)}" for note in notes]) + "\n"


def markdown_text(text: str) -> str:
    """A cell's or a note's text as Markdown shows it, not as markup, for a folder's names are anyone's: a '|' would
    start a column, a '<' an HTML tag, a '[' a link or an image."""
    escaped = html.escape(printable(text), quote=False).replace("\n", " ")
    for mark in "|[]":
        escaped = escaped.replace(mark, "\\" + mark)
    return escaped


FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")  # a spreadsheet runs a cell that starts so as a formula


def csv_bytes(frame: pd.DataFrame, **options: Any) -> bytes:
    """A frame as CSV for a spreadsheet as much as for pandas: a text cell from a folder that a spreadsheet would
    take for a formula (=HYPERLINK(...)) gets a leading ', and what UTF-8 cannot hold (a lone surrogate) is
    escaped. Numbers and the '-' of a missing value are left as they are."""
    def defused(value: Any) -> Any:
        if isinstance(value, str) and value.startswith(FORMULA_STARTS) and value != "-" and not is_number(value):
            return "'" + value
        return value
    text = frame.copy()
    for name in text.columns:
        if text[name].dtype == object or pd.api.types.is_string_dtype(text[name]):
            text[name] = text[name].map(defused)
    return text.to_csv(index=False, **options).encode("utf-8", "backslashreplace")


def is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def table_csv(frame: pd.DataFrame) -> bytes:
    """`table --csv`'s bytes: the numbers to 4 decimals, where the printed table has 2."""
    return csv_bytes(frame, float_format="%.4f")


def write_csv(frame: pd.DataFrame, path: Path) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, table_csv(frame))
    except OSError as exc:
        raise UserError(f"cannot write {path} ({exc.strerror or exc}): choose another --csv file") from None


def _study_columns(frame: pd.DataFrame) -> list[tuple[str, object]]:
    columns: list[tuple[str, object]] = []
    if frame["dataset"].nunique() > 1:
        columns.append(("dataset", _text("dataset")))
    axes = axis_names(frame)
    if frame["setting"].ne("").any():  # a column per axis (lr, width, ...); a frame made elsewhere: its setting
        columns += [(name, _axis_value(name)) for name in axes] or [("setting", _text("setting"))]
    return columns


def _axis_value(column: str):
    return lambda row: "-" if pd.isna(row[column]) else str(row[column])


def _text(column: str):
    return lambda row: str(row[column])


def _optional(column: str):
    return lambda row: "-" if pd.isna(row[column]) else str(row[column])


def kind_label(families: dict[str, Family]):
    """The kind as a table shows it: 'residual', 'residual (B)' for the shortcut that is not its family's default."""
    def label(row: dict) -> str:
        family = families.get(row["kind"]) or family_of_run({"kind": row["kind"]})
        return row["kind"] if row["shortcut"] in ("", family.default_shortcut) else f"{row['kind']} ({row['shortcut']})"
    return label


def _params(row: dict) -> str:
    return "-" if pd.isna(row["params"]) else f"{row['params'] / 1e6:.2f}M"  # as the paper's Table 6; CSV: exact


def _runs(row: dict) -> str:
    return f"{row['runs']} (+{row['unfinished']} unfinished)" if row["unfinished"] else str(row["runs"])


def _counted(row: dict) -> str:
    return "yes" if row["counted"] else "no"


def _epochs(row: dict) -> str:
    return str(row["epochs"]) if pd.isna(row["planned_epochs"]) else f"{row['epochs']}/{row['planned_epochs']}"


def _mean(column: str):
    return lambda row: "-" if pd.isna(row[column]) else f"{row[column]:.2f}"


def _best_mean_std(row: dict) -> str:
    best, mean, std = row["final_test_error_best"], row["final_test_error_mean"], row["final_test_error_std"]
    if pd.isna(mean):
        return "-"  # no finished run yet
    return f"{mean:.2f}" if pd.isna(std) else f"{best:.2f} ({mean:.2f}±{std:.2f})"  # the paper's "6.43 (6.61±0.16)"


def paper_text(families: dict[str, Family]):
    """The paper's number as it prints it ('6.43 (6.61±0.16)' for ResNet-110), ‡ where the protocol differs."""
    def text(row: dict) -> str:
        value = row["paper_test_error"]
        if pd.isna(value):
            return "none"
        reference = families[row["kind"]].reference
        numbers = reference.numbers if reference else ()
        number = next((n for n in numbers if n.depth == row["depth"] and math.isclose(n.compared, value)), None)
        shown = number.shown() if number else f"{value:.2f}"
        return shown if row["paper_protocol"] else f"{shown}‡"
    return text


def _our_median(row: dict) -> str:
    """Our median over finished seeds, beside a paper's median only (elsewhere the mean is what is compared)."""
    return _mean("final_test_error_median")(row) if row["compared_with"] == "median" else ""


def _delta(row: dict) -> str:
    return "-" if pd.isna(row["vs_paper"]) else f"{row['vs_paper']:+.2f}"


def _warmup(row: dict) -> str:
    if not row["warmup"]:
        return "-"
    iteration = None if pd.isna(row["warmup_end_iteration"]) else int(row["warmup_end_iteration"])
    return describe_warmup_end(row["warmup_end_reason"], iteration).replace(" iteration", "")
