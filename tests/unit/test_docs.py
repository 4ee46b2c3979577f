"""The README and docs/ read well in a clone: every relative link leads to a file and heading of
the repository, and no table cell is a wall of text."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
MAX_CELL = 300


def prose_lines(page: Path) -> list[str]:
    """The page's lines outside fenced code blocks, inline code removed (neither holds links)."""
    lines, fenced = [], False
    for line in page.read_text().splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
        elif not fenced:
            lines.append(re.sub(r"`[^`]*`", "", line))
    return lines


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = heading.strip().lower().replace("`", "")
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    """Every anchor GitHub gives the page's headings (a repeated heading gets -1, -2, ...)."""
    seen: dict[str, int] = {}
    result = set()
    fenced = False
    for line in page.read_text().splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
        elif not fenced and re.match(r"#{1,6} ", line):
            base = slug(line.lstrip("#"))
            count = seen.get(base, 0)
            seen[base] = count + 1
            result.add(base if count == 0 else f"{base}-{count}")
    return result


def relative_links(page: Path) -> list[str]:
    return [target for line in prose_lines(page) for target in LINK.findall(line)
            if not re.match(r"[a-z]+:", target)]


def test_the_docs_folder_holds_the_pages_the_readme_promises():
    assert len(PAGES) > 1 and all(page.is_file() for page in PAGES)


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_relative_link_leads_to_a_file_and_heading_inside_the_repository(page):
    broken = []
    for target in relative_links(page):
        path_part, _, anchor = target.partition("#")
        dest = (page.parent / path_part).resolve() if path_part else page
        if ROOT not in dest.parents and dest != ROOT:
            broken.append(f"{target}: outside the repository (a clone has nothing there)")
        elif not dest.exists():
            broken.append(f"{target}: no such file")
        elif anchor and (dest.suffix != ".md" or anchor not in anchors(dest)):
            broken.append(f"{target}: no heading with that anchor in {dest.relative_to(ROOT)}")
    assert not broken, broken


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_no_table_cell_is_longer_than_a_sentence_or_two(page):
    long_cells = [cell.strip()[:60] + "..." for line in page.read_text().splitlines() if line.startswith("|")
                  for cell in re.split(r"(?<!\\)\|", line) if len(cell.strip()) > MAX_CELL]
    assert not long_cells, long_cells


def test_the_link_check_finds_a_broken_link_and_a_missing_anchor(tmp_path):
    # The check itself can fail: a page with one good and two bad links.
    page = tmp_path / "page.md"
    page.write_text("# Top\n\n[ok](#top) [file](nowhere.md) [anchor](#bottom) `[code](x.md)`\n")
    assert relative_links(page) == ["#top", "nowhere.md", "#bottom"]
    assert anchors(page) == {"top"}
    assert slug("What `up` declares, and why") == "what-up-declares-and-why"
