"""The manual holds: every relative link in README.md, BENCHMARKS.md and docs/*.md names a file of the repository,
and every anchor (#section) a heading of the page it points into, as GitHub makes anchors from headings; every
`resdepth` command line names real options; the Python API page runs."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", ROOT / "BENCHMARKS.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\]\(([^)\s]+)\)")
FENCE = re.compile(r"^```.*?^```", re.MULTILINE | re.DOTALL)


def anchors(page: Path) -> set[str]:
    """GitHub's anchors of a page's headings: lower case, punctuation dropped, spaces as hyphens."""
    text = FENCE.sub("", page.read_text())
    headings = re.findall(r"^#{1,6}\s+(.+?)\s*$", text, re.MULTILINE)
    return {re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-") for heading in headings}


def links(page: Path) -> list[str]:
    return [link for link in LINK.findall(FENCE.sub("", page.read_text())) if not re.match(r"[a-z]+:", link)]


def broken_links(page: Path, root: Path) -> list[str]:
    """'link: why' for each relative link of the page that names no file inside root, or no heading of its page."""
    broken = []
    for link in links(page):
        target, _, anchor = link.partition("#")
        path = (page.parent / target).resolve() if target else page
        if not path.exists() or root not in path.parents:
            broken.append(f"{link}: no such file in the repository")
        elif anchor and path.suffix == ".md" and anchor not in anchors(path):
            broken.append(f"{link}: no heading with that anchor in {path.name}")
    return broken


@pytest.mark.parametrize("page", PAGES, ids=lambda page: page.name)
def test_every_relative_link_and_anchor_resolves(page):
    assert not broken_links(page, ROOT)


def test_the_checker_finds_a_broken_link_and_anchor(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("# A title\n\n## Where it lives\n\n[ok](#where-it-lives) [bad](#nowhere) [gone](missing.md) "
                    "[web](https://example.org/x)\n\n```\n## not a heading [nor](a-link.md)\n```\n")
    assert anchors(page) == {"a-title", "where-it-lives"}
    assert links(page) == ["#where-it-lives", "#nowhere", "missing.md"]
    assert broken_links(page, tmp_path) == ["#nowhere: no heading with that anchor in page.md",
                                            "missing.md: no such file in the repository"]


# ------------------------------------------------------------------------- the commands the pages show
COMMAND_BLOCK = re.compile(r"^```(?:bash|sh|console)[ \t]*\n(.*?)^```", re.MULTILINE | re.DOTALL)
SEPARATORS = {"&&", "||", ";"}


def command_lines(text: str) -> list[str]:
    """Every `resdepth ...` command of the page's bash/sh/console code blocks, comments cut off; an indented line
    that goes on with options (`    [--rounds 3] ...`, a usage line too long for one) is part of the line above."""
    commands = []
    for block in COMMAND_BLOCK.findall(text):
        previous = None
        for raw in block.splitlines():
            line = re.sub(r"(^|\s)#.*$", "", raw.removeprefix("$ ")).rstrip()
            if previous is not None and raw[:1].isspace() and line.lstrip()[:1] in ("[", "-"):
                commands[previous] += " " + line.strip()
                continue
            previous = None
            if re.search(r"(^|[\s/])resdepth(\s|$)", line):
                commands.append(line.strip())
                previous = len(commands) - 1
    return commands


def cli_options() -> tuple[set[str], dict[str, set[str]]]:
    """The app's own options (--version) and each command's options, as click sees them."""
    import typer

    from resdepth.cli.app import app

    group = typer.main.get_command(app)

    def options(command) -> set[str]:
        return {opt for param in command.params for opt in [*param.opts, *param.secondary_opts] if opt[:1] == "-"}

    return options(group) | {"--help"}, {name: options(cmd) | {"--help"} for name, cmd in group.commands.items()}


def bad_commands(line: str, top: set[str], commands: dict[str, set[str]]) -> list[str]:
    """What in one docs line is not resdepth's: an unknown command, or an option its command does not have."""
    words = line.replace("[", " ").replace("]", " ").replace("|", " | ").split()
    bad = []
    for start, word in enumerate(words):
        if not re.fullmatch(r"(.*/)?resdepth", word):
            continue
        command = None
        for token in words[start + 1:]:
            if token in SEPARATORS or re.fullmatch(r"(.*/)?resdepth", token):
                break
            token = token.strip("'\"(),")
            if token.startswith("-") and token != "-":
                for option in token.split("=", 1)[0].split("/"):  # --channels-last/--no-channels-last
                    known = commands[command] if command else top
                    if option and option not in known:
                        bad.append(f"{option} is not an option of resdepth{' ' + command if command else ''}")
            elif command is None and re.fullmatch(r"[a-z][a-z-]*", token):
                if token not in commands:
                    bad.append(f"{token} is not a resdepth command")
                    break
                command = token
    return bad


@pytest.mark.parametrize("page", PAGES, ids=lambda page: page.name)
def test_every_resdepth_command_in_the_docs_is_real(page):
    top, commands = cli_options()
    lines = command_lines(page.read_text())
    assert not [f"{line}: {why}" for line in lines for why in bad_commands(line, top, commands)]


def test_the_pages_show_commands_the_checker_reads():
    found = [line for page in PAGES for line in command_lines(page.read_text())]
    assert any(line.startswith("resdepth sweep ") for line in found)
    assert any(line.startswith("resdepth bench ") and "--matmul-size" in line for line in found)  # a continued usage


def test_the_command_checker_finds_a_made_up_command_and_option():
    top, commands = cli_options()
    page = ("```bash\nresdepth sweep --depths 20,56 --made-up 3   # a comment --not-an-option\n"
            "resdepth frobnicate results/\n.venv/bin/resdepth --version && resdepth plot results/ --paper\n"
            "resdepth bench [--depths 20] [--compile/--no-compile]\n    [--rounds 3] [--kind-of 2]\n```\n"
            "```python\nresdepth sweep --ignored-outside-shell-blocks\n```\n")
    lines = command_lines(page)
    assert lines == ["resdepth sweep --depths 20,56 --made-up 3", "resdepth frobnicate results/",
                     ".venv/bin/resdepth --version && resdepth plot results/ --paper",
                     "resdepth bench [--depths 20] [--compile/--no-compile] [--rounds 3] [--kind-of 2]"]
    assert [bad_commands(line, top, commands) for line in lines] == [
        ["--made-up is not an option of resdepth sweep"], ["frobnicate is not a resdepth command"], [],
        ["--kind-of is not an option of resdepth bench"]]


def python_blocks(page: Path) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", page.read_text(), flags=re.S | re.M)


def test_the_python_api_page_runs_as_it_stands(tmp_path):
    # The whole page in a fresh interpreter, from an empty folder: its imports, training, fused seeds, sweep cells,
    # tables and analysis, so that the API the page documents cannot drift from the package.
    (code,) = python_blocks(ROOT / "docs" / "python-api.md")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    result = subprocess.run([sys.executable, "-c", code + "\nprint(sorted(figures), len(summary), len(per_run), "
                                                          "sorted(outcomes), len(lesions.table) > 0, "
                                                          "len(landscape.table))"],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split("\n")[-2] == ("['figure7-synthetic', 'gradients-synthetic'] 1 3 ['plain-8-s0', "
                                             "'residual-8-s0'] True 25")
    assert result.stderr == ""  # the library prints nothing
    assert sorted(path.name for path in (tmp_path / "runs").iterdir()) == ["r8", "r8-s1", "r8-s2"]
