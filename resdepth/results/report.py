"""One self-contained HTML page about a results folder, for `resdepth report`: the Table-6 summary beside the
paper, the Figure 1 and 6 curves (and the figures of `resdepth analyze`, `lesion` and `landscape` where they were
made), each group's config and environment, and links to every run's files.

Figures are embedded in the page (SVG, or PNG for the analysis figures, as data: URLs) and there is no script,
font or style sheet to fetch, so the file opens anywhere without a network; only the links to the runs' CSV
files point outside it, relative to where the page is written. It returns the page as text; the CLI writes it.
"""

from __future__ import annotations

import base64
import html
import json
import os
import stat
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any
from urllib.parse import quote

from .._version import __version__
from ..errors import UserError
from .runs import (
    CONFIG_FILE,
    ERROR_FILE,
    MAX_FIGURE_BYTES,
    METRICS_FILE,
    STATUS_FILE,
    WORKER_LOG,
    Run,
    load_runs,
    read_folder_file,
    recorded_attempts,
)

# what `resdepth analyze`, `lesion` and `landscape` write into RESULTS_DIR/analysis/, lesion/ and landscape/
FIGURE_SECTIONS = (("analyze", "analysis", "Analysis", ("figure7-*.png", "gradients-*.png")),
                   ("lesion", "lesion", "Lesion studies (Veit et al. 2016)", ("lesion-blocks-*.png", "lesion-k-*.png")),
                   ("landscape", "landscape", "Loss landscapes (Li et al. 2018)",
                    ("landscape-2d-*.png", "landscape-1d-*.png")))
NOT_CONFIG = ("resolved", "environment", "attempts")  # shown apart from the training config

STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 2em auto; max-width: 1100px;
       padding: 0 1em; color: #1b1b1b; background: #fff; line-height: 1.4; }
h1 { font-size: 1.6em; margin-bottom: 0.2em; } h2 { margin-top: 1.8em; border-bottom: 1px solid #ddd; }
.meta, .notes, figcaption { color: #555; font-size: 0.9em; }
table { border-collapse: collapse; margin: 0.6em 0; font-size: 0.92em; }
th, td { padding: 0.25em 0.7em; border-bottom: 1px solid #e4e4e4; text-align: left; vertical-align: top; }
th { background: #f3f5f7; } td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
.scroll { overflow-x: auto; max-width: 100%; }
figure { margin: 1em 0 2em; } figure img { width: 100%; height: auto; border: 1px solid #eee; }
details { margin: 0.5em 0; } summary { cursor: pointer; font-weight: 600; }
code { background: #f3f5f7; padding: 0 0.25em; }
.columns { display: flex; flex-wrap: wrap; gap: 0 2.5em; } h4 { margin: 0.8em 0 0.2em; }
"""


def build_report(results_dir: Path, out: Path) -> tuple[str, list[str]]:
    """The report page for every run under results_dir, with links relative to the page's file `out`;
    and the warnings about run folders that were skipped. A UserError when there is no readable run."""
    from .plots import build_figures
    from .tables import display_table, summarize

    runs, warnings = load_runs(results_dir)
    summary = summarize(runs)
    headers, rows, notes = display_table(summary)
    figures = build_figures(runs)
    sections = [
        section("table", "Test error by depth (Table 6)", summary_table(headers, rows) + bullet_list(notes, "notes")),
        section("figures", "Error curves (Figures 1 and 6)",
                "".join(svg_figure(name, fig) for name, fig in figures.items())),
        *(figures_section(results_dir, *part, warnings) for part in FIGURE_SECTIONS),
        section("groups", "Groups: config, environment and runs", groups_html(runs, out.parent)),
    ]
    if warnings:
        sections.append(section("warnings", "Left out", bullet_list(warnings, "notes")))
    datasets = ", ".join(map(str, summary["dataset"].unique()))
    head = (f"<h1>resdepth report: {esc(results_dir)}</h1><p class='meta'>{len(runs)} run(s) of {esc(datasets)} · "
            f"written {time.strftime('%Y-%m-%d %H:%M')} by resdepth {__version__} · {papers_cited(runs)}</p>")
    page = (f"<!doctype html>\n<html lang='en'><head><meta charset='utf-8'><title>resdepth report: {esc(results_dir)}"
            f"</title><meta name='viewport' content='width=device-width, initial-scale=1'><style>{STYLE}</style>"
            f"</head><body>{head}{''.join(sections)}</body></html>\n")
    return page, warnings


PAPERS = {"2016b": "He et al. 2016b, <i>Identity Mappings in Deep Residual Networks</i>"}
SECTION_4_2 = "He et al. 2016, <i>Deep Residual Learning for Image Recognition</i>, section 4.2"


def papers_cited(runs: list[Run]) -> str:
    """§4.2, and the papers of the other families the runs belong to (2016b for pre-activation nets)."""
    from ..models.families import family_of_run

    labels = {family.reference.label for family in map(family_of_run, (run.config for run in runs))
              if family.reference}
    return " · ".join([SECTION_4_2, *(PAPERS[label] for label in sorted(labels) if label in PAPERS)])


# A figure's caption by its file name's start (the file name follows it)
CAPTIONS = (("figure1-", "Figure 1 style: training error (left) and test error (right) by depth"),
            ("figure6-", "Figure 6 style: dashed training error, bold test error, a panel per family"),
            ("figure7-", "Figure 7 style: std of each layer's response, in order (top) and sorted (bottom)"),
            ("gradients-", "gradient norm of each layer's weights at points of training"),
            ("lesion-blocks-", "test error with one block deleted at a time"),
            ("lesion-k-", "test error with k random blocks deleted or k pairs swapped"),
            ("landscape-2d-error-", "training error around the trained weights, 2D contours"),
            ("landscape-2d-", "training loss around the trained weights, 2D contours"),
            ("landscape-1d-", "training loss and error along random directions, 1D slices"))


def caption(name: str) -> str:
    words = next((words for start, words in CAPTIONS if name.startswith(start)), "")
    return f"{esc(words)} <code>{esc(name)}</code>" if words else f"<code>{esc(name)}</code>"


def section(anchor: str, title: str, body: str) -> str:
    return f"<section id='{anchor}'><h2>{esc(title)}</h2>{body}</section>" if body else ""


def summary_table(headers: list[str], rows: list[list[str]]) -> str:
    from .tables import TEXT_HEADERS

    numeric = [i for i, h in enumerate(headers) if h not in TEXT_HEADERS]
    head = "".join(f"<th class='num'>{esc(h)}</th>" if i in numeric else f"<th>{esc(h)}</th>"
                   for i, h in enumerate(headers))
    cell = lambda i, v: f"<td class='{'num' if i in numeric else ''}'>{esc(v)}</td>"  # noqa: E731
    body = "".join("<tr>" + "".join(cell(i, v) for i, v in enumerate(row)) + "</tr>" for row in rows)
    return (f"<div class='scroll'><table class='summary' id='summary'><thead><tr>{head}</tr></thead><tbody>{body}"
            "</tbody></table></div>")


def bullet_list(lines: Iterable[str], css: str) -> str:
    items = "".join(f"<li>{esc(line)}</li>" for line in lines)
    return f"<ul class='{css}'>{items}</ul>" if items else ""


def svg_figure(name: str, figure: Any) -> str:
    from .plots import figure_bytes

    # matplotlib draws the text as paths: no font to fetch
    return embedded_figure(name, "image/svg+xml", figure_bytes(figure, "svg"))


def embedded_figure(name: str, mime: str, data: bytes) -> str:
    url = f"data:{mime};base64,{base64.b64encode(data).decode()}"
    return (f"<figure><img class='figure' src='{url}' alt='{esc(name)}'><figcaption>{caption(name)}</figcaption>"
            "</figure>")


def is_regular_file(path: Path) -> bool:
    """A file the page may link: a regular file, not a link (which may lead out of the folder, to a private file
    that anyone opening the shared page would then open) nor a FIFO."""
    try:
        return stat.S_ISREG(path.lstat().st_mode)
    except OSError:
        return False


def figures_section(results_dir: Path, command: str, folder_name: str, title: str, patterns: tuple[str, ...],
                    warnings: list[str]) -> str:
    """The figures `resdepth <command>` wrote into RESULTS_DIR/<folder_name>/, embedded: regular files inside the
    folder only (a link named like a figure could ship a private file inside a page meant for sharing); one
    warning per file left out."""
    folder = results_dir / folder_name
    if folder.is_symlink():
        warnings.append(f"left out {folder}: a link (the page embeds only files inside the results folder)")
        return ""
    figures = ""
    for path in (path for pattern in patterns for path in sorted(folder.glob(pattern))):
        try:
            figures += embedded_figure(path.stem, "image/png", read_folder_file(path, MAX_FIGURE_BYTES))
        except (UserError, OSError) as exc:
            warnings.append(f"left out {path}: {exc}")
    intro = f"<p class='notes'>Written by <code>resdepth {esc(command)}</code> into {esc(folder)}.</p>"
    return section(folder_name, title, intro + figures) if figures else ""


# ---------------------------------------------------------------------------------------------- groups
def groups_html(runs: list[Run], page_dir: Path) -> str:
    from .groups import group_runs

    parts = []
    for key, members in group_runs(runs).items():
        title = " · ".join(str(part) for part in (key.dataset, key.setting, f"{key.variant}-{key.depth}") if part)
        seeds = ", ".join(str(run.setting("seed", "?")) for run in members)
        parts.append(f"<details><summary>{esc(title)} ({len(members)} run(s), seeds {esc(seeds)})</summary>"
                     f"{runs_table(members, page_dir)}<div class='columns'>"
                     f"<div><h4>config</h4>{values_table(members, config_values)}</div>"
                     f"<div><h4>resolved (latest attempt)</h4>{values_table(members, section_of('resolved'))}</div>"
                     f"<div><h4>environment</h4>{values_table(members, section_of('environment'))}</div>"
                     "</div></details>")
    return "".join(parts)


def trained_on(run: Run) -> str:
    """Each attempt's machine and the iteration it started from (config.json's attempts; before they were recorded,
    the last machine): 'vm (cpu) from 0; node7 (cuda:0) from 32,000'."""
    attempts = recorded_attempts(run.config)
    if not attempts:
        return machine_of(run.config.get("environment"))
    return "; ".join(f"{machine_of(attempt.get('environment'))} from {attempt.get('from_iteration', '?'):,}"
                     if isinstance(attempt.get("from_iteration"), int) else machine_of(attempt.get("environment"))
                     for attempt in attempts)


def machine_of(environment: Any) -> str:
    if not isinstance(environment, dict):
        return "?"
    return f"{environment.get('host', '?')} ({environment.get('device', '?')})"


def section_of(name: str) -> Callable[[Run], dict[str, Any]]:
    """A run's config.json section (resolved, environment) as flat key-value pairs."""
    return lambda run: flat(run.config.get(name, {}))


def runs_table(runs: list[Run], page_dir: Path) -> str:
    rows = []
    for run in runs:
        last = run.metrics.iloc[-1]
        links = " ".join(f"<a href='{esc(link(run.path / name, page_dir))}'>{name}</a>"
                         for name in (METRICS_FILE, CONFIG_FILE, STATUS_FILE, ERROR_FILE, WORKER_LOG)
                         if is_regular_file(run.path / name))
        state = f"{run.status}: {run.error}" if run.error and run.status in ("failed", "diverged") else run.status
        rows.append(f"<tr><td>{esc(run.path.name)}</td><td>{esc(state)}</td>"
                    f"<td class='num'>{int(last['epoch'])}</td>"
                    f"<td class='num'>{int(last['iteration']):,}</td><td class='num'>{last['train_error']:.2f}</td>"
                    f"<td class='num'>{last['test_error']:.2f}</td><td>{esc(trained_on(run))}</td>"
                    f"<td>{links}</td></tr>")
    head = ("<table class='runs'><thead><tr><th>run</th><th>state</th><th>epochs</th><th>iterations</th>"
            "<th>train err %</th><th>test err %</th><th>trained on</th><th>files</th></tr></thead><tbody>")
    return "<div class='scroll'>" + head + "".join(rows) + "</tbody></table></div>"


def link(path: Path, page_dir: Path) -> str:
    """A relative URL from the page to a run's file (an absolute file: URL where no relative path exists)."""
    try:
        return quote(os.path.relpath(path, page_dir).replace(os.sep, "/"))
    except ValueError:  # another drive on Windows
        return path.resolve().as_uri()


def config_values(run: Run) -> dict[str, Any]:
    return flat({k: v for k, v in run.config.items() if k not in NOT_CONFIG})


def flat(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested sections as dotted keys: {'data': {'dataset': 'x'}} -> {'data.dataset': 'x'}."""
    result: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, dict):
            result.update(flat(value, f"{prefix}{key}."))
        else:
            result[f"{prefix}{key}"] = value
    return result


def values_table(runs: list[Run], values_of: Any) -> str:
    """One row per key; where the runs differ (the seed, a host), each run's value in run order."""
    per_run = [values_of(run) for run in runs]
    keys = list(dict.fromkeys(key for values in per_run for key in values))
    rows = []
    for key in keys:
        shown = [json.dumps(values.get(key), default=str, ensure_ascii=False) for values in per_run]
        value = shown[0] if len(set(shown)) == 1 else ", ".join(shown)
        rows.append(f"<tr><td>{esc(key)}</td><td>{esc(value)}</td></tr>")
    return "<div class='scroll'><table class='config'><tbody>" + "".join(rows) + "</tbody></table></div>"


def esc(value: Any) -> str:
    """Text for the page: markup escaped, and what UTF-8 cannot hold (a lone surrogate from a folder's JSON) shown as
    its escape rather than failing the page."""
    return html.escape(str(value).encode("utf-8", "backslashreplace").decode("utf-8"), quote=True)
