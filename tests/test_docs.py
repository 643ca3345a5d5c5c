"""The manual's links: every relative link in README.md, BENCHMARKS.md and docs/*.md names a file of the repository,
and every anchor (#section) a heading of the page it points into, as GitHub makes anchors from headings."""

import re
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
