"""`resdepth report`: one self-contained HTML page from a real sweep (nothing fetched from a network), checked in
a real headless Chromium: the table and every figure are on the screenshot and not blank."""

import html
import json
import os
import shutil
import subprocess
import warnings
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from resdepth.results.plots import build_figures
from resdepth.results.report import build_report
from resdepth.results.runs import load_runs

BROWSERS = ("chromium-headless-shell", "chromium", "chromium-browser", "google-chrome", "headless_shell")
WIDTH = 1280


@pytest.fixture(scope="module")
def swept(tmp_path_factory, tiny_config, tiny_sweep, run_sweep_now) -> Path:
    """plain-8 and residual-8, three epochs each, trained for real."""
    out = tmp_path_factory.mktemp("swept")
    run_sweep_now(tiny_sweep(out, train=tiny_config(epochs=3)))
    return out


class Links(HTMLParser):
    """Every src and href of a page, and the tags seen."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[tuple[str, str]] = []
        self.tags: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        self.urls += [(tag, value or "") for name, value in attrs if name in ("src", "href")]


def test_the_page_embeds_every_figure_and_links_every_runs_files(swept, tmp_path):
    page, warnings = build_report(swept, swept / "report.html")
    parsed = Links()
    parsed.feed(page)
    images = [url for tag, url in parsed.urls if tag == "img"]
    assert len(images) == len(build_figures(load_runs(swept)[0])) == 3  # figure1 per kind, figure6
    assert all(url.startswith("data:image/svg+xml;base64,") for url in images)
    assert "script" not in parsed.tags and "link" not in parsed.tags and not warnings  # nothing to fetch
    links = [url for tag, url in parsed.urls if tag == "a"]
    assert not [url for url in links if "://" in url]
    for name in ("plain-8-s0", "residual-8-s0"):
        assert f"{name}/metrics.csv" in links and (swept / f"{name}/metrics.csv").is_file()
    text = html.unescape(page)
    assert "plain-8 (1 run(s), seeds 0)" in text and '<td>data.dataset</td><td>"synthetic"</td>' in text
    assert "<td>python</td>" in text and "<td>params</td>" in text  # config, resolved and environment per group


def test_the_cli_writes_the_page_with_the_analysis_figures(swept, tmp_path, run_cli):
    results = tmp_path / "results"
    shutil.copytree(swept, results)
    (results / "analysis").mkdir()
    Image.new("RGB", (40, 30), (200, 30, 30)).save(results / "analysis" / "figure7-synthetic.png")
    Image.new("RGB", (40, 30), (30, 30, 200)).save(results / "analysis" / "gradients-synthetic.png")
    code, out, err = run_cli("report", str(results))
    assert code == 0, err
    page = (results / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 2 and "figure7-synthetic" in page and "gradients-synthetic" in page
    assert f"wrote {results / 'report.html'}" in " ".join(out.split())
    code, _, err = run_cli("report", str(results), "--out", str(tmp_path / "elsewhere" / "r.html"))
    assert code == 0 and (tmp_path / "elsewhere" / "r.html").is_file(), err  # its folder made, as plot --out's is
    code, _, err = run_cli("report", str(results), "--out", str(tmp_path / "elsewhere"))
    assert code == 2 and "--out" in err and "such as report.html" in err
    code, _, err = run_cli("report", str(tmp_path / "none"))
    assert code == 2 and "does not exist" in err


def browser() -> str:
    for name in BROWSERS:
        if shutil.which(name):
            return shutil.which(name)
    pytest.skip("no Chromium here (Debian: apt-get install chromium-headless-shell): the report is not checked in "
                "a browser")


LAYOUT_PROBE = """<script>
window.addEventListener('load', () => {
  const box = e => {
    const r = e.getBoundingClientRect();
    return [r.left + scrollX, r.top + scrollY, r.width, r.height];
  };
  const figures = [...document.querySelectorAll('img.figure')];
  const layout = {height: document.documentElement.scrollHeight, table: box(document.querySelector('table.summary')),
                  figures: figures.map(i => ({box: box(i), loaded: i.complete && i.naturalWidth > 0}))};
  const out = document.createElement('pre'); out.id = 'layout'; out.textContent = JSON.stringify(layout);
  document.body.appendChild(out);
});
</script>"""


def chromium(binary: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([binary, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                           "--force-device-scale-factor=1", *args], capture_output=True, text=True, timeout=120)


def drawn(pixels: np.ndarray) -> tuple[float, float]:
    """The share of pixels that are not white, and the spread of their grey levels."""
    grey = pixels.mean(axis=2)
    return float((grey < 240).mean()), float(grey.std())


def test_the_table_and_figures_render_in_a_real_browser(swept, tmp_path):
    binary = browser()
    page, _ = build_report(swept, tmp_path / "report.html")
    (tmp_path / "report.html").write_text(page)
    (tmp_path / "probe.html").write_text(page.replace("</body>", LAYOUT_PROBE + "</body>"))
    dom = chromium(binary, "--virtual-time-budget=10000", f"--window-size={WIDTH},2000", "--dump-dom",
                   (tmp_path / "probe.html").as_uri())
    assert dom.returncode == 0, dom.stderr[-2000:]
    layout = json.loads(dom.stdout.split("<pre id=\"layout\">", 1)[1].split("</pre>", 1)[0].replace("&quot;", '"'))
    assert len(layout["figures"]) == 3 and all(figure["loaded"] for figure in layout["figures"])
    height = int(layout["height"]) + 10
    shot = chromium(binary, f"--window-size={WIDTH},{height}", f"--screenshot={tmp_path / 'shot.png'}",
                    (tmp_path / "report.html").as_uri())
    assert shot.returncode == 0 and (tmp_path / "shot.png").exists(), shot.stderr[-2000:]
    pixels = np.asarray(Image.open(tmp_path / "shot.png").convert("RGB")).astype(float)
    regions = {"table": layout["table"], **{f"figure {i}": f["box"] for i, f in enumerate(layout["figures"])}}
    for name, (left, top, width, height_) in regions.items():
        assert width > 200 and height_ > 50, (name, width, height_)
        ink, spread = drawn(pixels[int(top):int(top + height_), int(left):int(left + width)])
        assert ink > 0.02 and spread > 15, f"{name} looks blank on the screenshot: {ink:.3f} ink, spread {spread:.1f}"


def test_cifar10_residual_nets_stand_beside_the_papers_table_6(tmp_path):
    from resdepth.results.runs import metric_columns

    run_dir = tmp_path / "residual-20-s0"
    run_dir.mkdir()
    config = {"kind": "residual", "depth": 20, "seed": 0, "shortcut": "A", "data": {"dataset": "cifar10"},
              "resolved": {"iterations": 64000}}
    (run_dir / "config.json").write_text(json.dumps(config))
    (run_dir / "metrics.csv").write_text(",".join(metric_columns(False)) + "\n1,64000,0.001,0.1,1.0,0.3,9.25,60,800\n")
    (run_dir / "status.json").write_text(json.dumps({"state": "done"}))
    page, _ = build_report(tmp_path, tmp_path / "report.html")
    text = html.unescape(page)
    assert "<th class='num'>paper Table 6</th><th>paper&#x27;s statistic</th><th class='num'>Δ vs paper</th>" in page
    assert "<td class='num'>8.75</td><td class=''>one run</td><td class='num'>+0.50</td>" in text


def test_the_page_reads_on_a_phone_says_why_a_run_failed_and_cites_each_familys_paper(tmp_path, write_run):
    write_run(tmp_path, "residual", 20, seed=0)
    write_run(tmp_path, "residual", 20, seed=1, test=(50.0,), state="failed", planned_epochs=3)
    status = json.loads((tmp_path / "residual-20-s1" / "status.json").read_text())
    status["error"] = "worker process died (signal 9)"
    (tmp_path / "residual-20-s1" / "status.json").write_text(json.dumps(status))
    (tmp_path / "residual-20-s1" / "error.txt").write_text("Traceback ...")
    write_run(tmp_path, "preact", 110, resolved={"summary": "§4.2", "odd": "a\ud800b"})  # no UTF-8 holds it
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        page, _ = build_report(tmp_path, tmp_path / "report.html")
    # the failed run's end, far above the 0-20% axis, had been drawn unclipped and collapsed the figures' layout
    assert not [w for w in caught if "constrained_layout" in str(w.message)]
    assert "<meta name='viewport' content='width=device-width, initial-scale=1'>" in page
    assert page.count("<div class='scroll'><table") >= 3  # wide tables scroll inside a narrow screen
    assert "failed: worker process died (signal 9)" in page and "href='residual-20-s1/error.txt'" in page
    assert "Identity Mappings in Deep Residual Networks" in page and "section 4.2" in page
    assert "Figure 6 style: dashed training error" in page
    assert "\\u00a7" not in page and "§4.2" in page  # config values as written, not JSON's escapes
    assert "a\\ud800b" in page and page.encode()  # shown escaped: the page had failed to be written


def test_the_page_links_a_runs_logs_only_where_they_are_regular_files(tmp_path, write_run):
    secret = tmp_path / "secret.txt"
    secret.write_text("private")
    results = tmp_path / "r"
    run_dir = write_run(results, "residual", 20, seed=0, test=(50.0,), state="failed", planned_epochs=3)
    (run_dir / "error.txt").symlink_to(secret)  # anyone opening the shared page would open the private file
    os.mkfifo(run_dir / "worker.log")
    page, _ = build_report(results, results / "report.html")
    assert "error.txt" not in page and "worker.log" not in page and "private" not in page
    (run_dir / "error.txt").unlink()
    (run_dir / "error.txt").write_text("Traceback ...")
    page, _ = build_report(results, results / "report.html")
    assert "href='residual-20-s0/error.txt'" in page
