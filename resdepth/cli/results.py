"""Reading a results folder: `plot` (Figures 1 and 6), `table` (Table 6), `report` (one HTML page) and `status`
(each cell's progress, also while the sweep runs elsewhere). matplotlib and the report's code load only when their
command runs, so that `resdepth --help` and `status` start fast."""

from __future__ import annotations

import shlex
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich import box
from rich.console import Group
from rich.table import Table
from rich.text import Text

from ..errors import UserError
from ..results.runs import atomic_write_bytes, check_writable_dir, ensure_writable_dir, own_output_dir, printable
from ..sweep.runner import SweepConfig
from .console import console, duration, errors, pct, print_full_width, rate, read_runs, thousands, warn
from .options import check_output_file


def plot(
    results_dir: Annotated[Path, typer.Argument(help="Results folder; every run folder under it is read "
                                                     "(recursively).")],
    out: Annotated[Path | None, typer.Option(help="Folder for the figures. \\[default: RESULTS_DIR/plots]")] = None,
    x: Annotated[str, typer.Option(help="x axis: iterations (in 1e4, as the paper) or epochs.")] = "iterations",
    formats: Annotated[str, typer.Option("--format", help="Comma-separated file formats: png, pdf, svg.")] = "png",
    paper: Annotated[bool, typer.Option("--paper", help="Mark each family's paper's test errors on Figure 6 (Table 6 "
                                                        "for residual nets; a tick at the end of each curve), for "
                                                        "runs that follow that paper's protocol.")] = False,
) -> None:
    """Figure 1 (train | test error per kind) and Figure 6 (a panel per kind) style curves, seeds averaged."""
    from ..results.plots import (  # matplotlib: only when drawing
        build_figures,
        paper_tick_notes,
        parse_formats,
        save_figures,
    )

    chosen_formats = parse_formats(formats)
    runs = read_runs(results_dir)
    figures = build_figures(runs, x=x, paper=paper)
    for line in paper_tick_notes(runs) if paper else ():
        errors.print(f"note: --paper: {line}", markup=False, highlight=False, soft_wrap=True)
    out_dir = out or own_output_dir(results_dir / "plots")
    ensure_writable_dir(out_dir)
    for path in save_figures(figures, out_dir, chosen_formats):
        console.print(str(path), markup=False, highlight=False, soft_wrap=True)


def table(
    results_dir: Annotated[Path, typer.Argument(help="Results folder; every run folder under it is read "
                                                     "(recursively).")],
    csv: Annotated[Path | None, typer.Option("--csv", help="Also write the numbers (4 decimals, where the "
                                                              "printed table has 2) to this CSV file; - prints "
                                                              "the CSV instead of the table.")] = None,
    markdown: Annotated[bool, typer.Option("--markdown", help="Print a Markdown table (for papers and READMEs) "
                                                              "instead.")] = False,
    runs: Annotated[bool, typer.Option("--runs", help="One row per run instead (seed, state, epochs, final errors, "
                                                      "best-val epoch, how the warm-up ended); --csv writes these "
                                                      "rows.")] = False,
) -> None:
    """Table 6 style summary: one row per dataset x kind x depth, seeds as best (mean ± std), beside the paper."""
    from ..results.tables import display_runs, display_table, summarize, summarize_runs, table_csv, to_markdown
    from ..results.tables import write_csv

    found = read_runs(results_dir)
    summary = summarize_runs(found) if runs else summarize(found)
    if csv is not None and str(csv) == "-":  # the CSV alone on stdout, for a pipe
        sys.stdout.buffer.write(table_csv(summary))
        return
    if csv is not None:
        write_csv(summary, csv)
        errors.print(f"wrote {csv}", markup=False, highlight=False, soft_wrap=True)  # stdout stays the table
    if markdown:
        print(printable(to_markdown(summary, runs=runs)), end="")
        return
    headers, rows, notes = display_runs(summary) if runs else display_table(summary)
    datasets = ", ".join(summary["dataset"].unique())
    print_full_width(render_text_table(f"{results_dir} ({datasets}): {'runs' if runs else 'errors by depth'}",
                                       headers, rows))
    for note in notes:
        console.print(Text(note, style="dim"), highlight=False)


def render_text_table(title: str, headers: list[str], rows: list[list[str]]) -> Table:
    """Rows of text under headers; numbers never wrap, long headers wrap onto two lines at most."""
    from ..results.tables import TEXT_HEADERS

    view = Table(title=Text(title), box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, collapse_padding=True)
    for i, header in enumerate(headers):
        width = max([len(row[i]) for row in rows] + [len(word) for word in header.split()] + [min(len(header), 11)])
        left = header in TEXT_HEADERS
        view.add_column(Text(header), justify="left" if left else "right", width=width)
    for row in rows:
        view.add_row(*map(Text, row))  # text from a folder, never markup
    return view


def report(
    results_dir: Annotated[Path, typer.Argument(help="Results folder; every run folder under it is read "
                                                     "(recursively).")],
    out: Annotated[Path | None, typer.Option(help="The HTML file to write. "
                                                  "\\[default: RESULTS_DIR/report.html]")] = None,
) -> None:
    """One self-contained HTML page: the Table-6 summary beside the paper, Figures 1 and 6 (and the analysis
    figures), each group's config and environment, and links to every run's CSV."""
    from ..results.report import build_report

    out = out or results_dir / "report.html"
    if results_dir.is_dir():  # refused before the page is built; a new folder is made, as plot --out makes its own
        check_writable_dir(out.parent)
        if out.parent.is_dir():
            check_output_file(out, "--out", "report.html")
    page, warnings = build_report(results_dir, out)
    warn(warnings)
    ensure_writable_dir(out.parent)
    atomic_write_bytes(out, page.encode("utf-8", "backslashreplace"))  # a folder name no UTF-8 can hold, escaped
    console.print(f"wrote {out} ({len(page) / 1e6:.1f} MB, self-contained): open it in a browser", markup=False,
                  highlight=False, soft_wrap=True)


def status(
    results_dir: Annotated[Path, typer.Argument(help="Results folder of a sweep (or a folder of sweeps); every run "
                                                     "folder under it is read.")],
    watch: Annotated[bool, typer.Option("--watch", help="Refresh in place until no cell runs or waits to start "
                                                        "(piped: the table again at each change); Ctrl-C stops "
                                                        "watching.")] = False,
    interval: Annotated[float, typer.Option(help="Seconds between refreshes with --watch.")] = 2.0,
) -> None:
    """Each cell's state, epoch, iteration, errors, img/s, elapsed time and ETA, read from the results folder
    (works while the sweep runs in another terminal or on a cluster, and after it ended)."""
    from rich.live import Live

    from ..sweep.watch import read_folder_status

    if not 0 < interval <= MAX_INTERVAL:  # NaN and inf too: sleep() takes neither
        raise UserError(f"--interval must be a positive number of seconds, at most {MAX_INTERVAL:,}, got {interval}")
    folder = read_folder_status(results_dir)
    warn(folder.warnings)
    if not watch:  # piped or logged, every column: no terminal's width to fit
        print_full_width(status_view(folder, console.width if console.is_terminal else 10_000))
        return
    try:
        if console.is_terminal:
            with Live(status_view(folder, console.width), console=console, auto_refresh=False) as live:
                while not folder.at_rest:
                    time.sleep(interval)
                    folder = read_folder_status(results_dir)
                    live.update(status_view(folder, console.width), refresh=True)
        else:
            folder = watch_in_lines(results_dir, folder, interval)
    except KeyboardInterrupt:
        pass  # stopping the watch is not an error: the last table stays on the screen
    if folder.at_rest and not folder.ended:
        console.print("nothing runs or waits to start: the cells not ended stay so until the sweep is resumed",
                      markup=False, highlight=False, soft_wrap=True)


def watch_in_lines(results_dir: Path, folder: Any, interval: float) -> Any:
    """--watch piped or logged: the whole table, at full width, each time a cell's state, epoch or iteration
    changes (a log gets each step as it happens, not one table at the end). Returns the folder's last status."""
    from ..sweep.watch import read_folder_status

    shown = None
    while True:
        seen = [(cell.name, cell.state, cell.epoch, cell.iteration) for cell in folder.cells]
        if seen != shown:
            if shown is not None:
                console.print()
            print_full_width(status_view(folder, 10_000))
            shown = seen
        if folder.at_rest:
            return folder
        time.sleep(interval)
        folder = read_folder_status(results_dir)


MAX_INTERVAL = 86_400  # a day between refreshes: more is no watch

STATE_STYLES = {"done": "green", "running": "cyan", "failed": "red", "diverged": "red", "unreadable": "red",
                "stopped": "yellow", "interrupted": "yellow", "pending": "dim", "not started": "dim"}


STATUS_COLUMNS = ("cell", "state", "epoch", "iteration", "train\nerr %", "test\nerr %", "img/s", "elapsed", "ETA",
                  "where", "note")
STATUS_DROP_ORDER = ("note", "where", "elapsed", "img/s", "epoch")  # left out in this order where a terminal is narrow


def status_view(folder: Any, width: int) -> Any:
    """The status table: a row per cell, then the totals and how to resume stopped cells. Nothing wraps: in a
    terminal narrower than the table, the columns of STATUS_DROP_ORDER are left out, in that order. Text from the
    folder (names, state, where, note) is measured as it is shown: controls left out, a lone surrogate escaped."""
    rows = [dict(zip(STATUS_COLUMNS, (
        printable(cell.name), printable(cell.state), f"{cell.epoch}/{cell.epochs}" if cell.epochs else "-",
        f"{cell.iteration:,}/{thousands(cell.iterations)}", pct(cell.train_error), pct(cell.test_error),
        rate(cell.images_per_second) if cell.state == "running" else "-", duration(cell.elapsed),
        duration(cell.eta), printable(cell.where) or "-", printable(status_note(cell))), strict=True))
        for cell in folder.cells]
    shown = [c for c in STATUS_COLUMNS if c != "note" or any(row["note"] for row in rows)]
    for column in STATUS_DROP_ORDER:
        if table_width(rows, shown) <= width:
            break
        if column in shown:
            shown.remove(column)
    sweeps = "; ".join(f"sweep {path.relative_to(folder.root) if path != folder.root else path.name}: "
                       f"executor {executor}" for path, executor in folder.sweeps.items())
    table = Table(title=Text(f"{folder.root}" + (f" ({sweeps})" if sweeps else "")), box=box.SIMPLE_HEAD,
                  show_edge=False, pad_edge=False, collapse_padding=True,
                  caption=time.strftime("read at %H:%M:%S", time.localtime(folder.read_at)))
    for column in shown:
        table.add_column(column, justify="left" if column in ("cell", "state", "where", "note") else "right",
                         no_wrap=column != "note")
    for row in rows:
        cells = {**{column: Text(value) for column, value in row.items()},  # text from a folder, never markup
                 "state": Text(row["state"], style=STATE_STYLES.get(row["state"], "")),
                 "note": Text(row["note"], style="dim")}
        table.add_row(*(cells[column] for column in shown))
    counts = ", ".join(f"{n} {state}" for state, n in folder.counts().items())
    planned = folder.iterations_planned
    progress = f"iterations {folder.iterations_done:,}" + (
        f"/{planned:,} ({folder.iterations_done / planned:.0%})" if planned else "")
    eta = f" · longest ETA {duration(folder.longest_eta)}" if folder.longest_eta is not None else ""
    lines = [Text(f"{len(folder.cells)} cell(s): {counts} · {progress}{eta}")]
    stopped = {cell.run_dir.parent for cell in folder.cells if cell.state in ("stopped", "interrupted")}
    for sweep_dir, executor in ((path, e) for path, e in folder.sweeps.items() if path in stopped):
        how = ("" if executor == SweepConfig().executor else  # --resume never takes it from sweep.json: say it
               f" --executor {shlex.quote(executor)} (and the other execution options it ran with)")
        lines.append(Text(f"resume: resdepth sweep --resume {shlex.quote(str(sweep_dir))}{how}", style="dim"))
    return Group(table, *lines)


def table_width(rows: list[dict[str, str]], columns: list[str]) -> int:
    """Characters a table of these text rows takes: each column as wide as its widest line, plus padding."""
    return sum(max([len(row[c]) for row in rows] + [len(line) for line in c.split("\n")]) + 2 for c in columns)


def status_note(cell: Any) -> str:
    if cell.state == "stopped":
        known = cell.resumes_from is not None
        resumes = f", from iteration {cell.resumes_from:,} (its last checkpoint)" if known else ""
        return f"its process is gone (killed, or its node lost): resume the sweep{resumes}"
    if cell.error:
        return cell.error
    if cell.state == "running" and cell.updated_ago is not None and cell.updated_ago > 120:
        return f"no update for {duration(cell.updated_ago)}"
    return ""
