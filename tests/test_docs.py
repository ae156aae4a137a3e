"""The README stays short and true to the clone: under 15,000 characters, the two commands a fresh
clone needs word for word (CI runs the second), and every relative link or image of the README and
docs/*.md pointing at a file that exists (and at a heading that exists, for an anchor into a
markdown file, with GitHub's rules for anchors)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
README = REPO / "README.md"
DOCS = sorted((REPO / "docs").glob("*.md"))

README_LIMIT = 15_000
QUICK_START = "python3 -m venv .venv && .venv/bin/pip install -e . && .venv/bin/python -m experiments.train"
TEST_SUITE = 'python3 -m venv .venv && .venv/bin/pip install -e ".[test]" && .venv/bin/python -m pytest'

FENCE = re.compile(r"^\s*(```|~~~)")
INLINE_CODE = re.compile(r"`[^`\n]*`")
# [text](target) and ![alt](target); a target may carry a "title" after a space.
LINK = re.compile(r"!?\[[^\]\n]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")


def prose_lines(path: Path) -> list[str]:
    """The lines of a markdown file outside fenced code blocks."""
    lines, fenced = [], False
    for line in path.read_text(encoding="utf-8").splitlines():
        if FENCE.match(line):
            fenced = not fenced
            continue
        if not fenced:
            lines.append(line)
    return lines


def anchors(path: Path) -> set[str]:
    """The anchors GitHub gives the headings of a markdown file."""
    seen: dict[str, int] = {}
    found = set()
    for line in prose_lines(path):
        heading = HEADING.match(line)
        if not heading:
            continue
        text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading.group(2))  # a link keeps its text
        slug = re.sub(r"[^\w\- ]", "", text.strip().lower()).replace(" ", "-")
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        found.add(slug if count == 0 else f"{slug}-{count}")
    return found


def relative_links(path: Path) -> list[str]:
    """Every link and image target of a markdown file that is neither a URL nor an e-mail address."""
    targets = []
    for line in prose_lines(path):
        for target in LINK.findall(INLINE_CODE.sub("", line)):
            if not re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*:", target):  # http:, https:, mailto:, ...
                targets.append(target)
    return targets


def test_the_readme_reads_in_five_minutes() -> None:
    size = len(README.read_text(encoding="utf-8"))
    assert size < README_LIMIT, f"README.md has {size} characters; keep it under {README_LIMIT} (details go to docs/)"


@pytest.mark.parametrize("command", [QUICK_START, TEST_SUITE], ids=["quick-start", "test-suite"])
def test_the_readme_holds_the_commands_a_fresh_clone_needs(command: str) -> None:
    assert command in README.read_text(encoding="utf-8").splitlines(), f"README.md lacks the line: {command}"


@pytest.mark.parametrize("page", [README, *DOCS], ids=lambda page: page.relative_to(REPO).as_posix())
def test_every_relative_link_points_at_something_that_exists(page: Path) -> None:
    broken = []
    for target in relative_links(page):
        file_part, _, anchor = target.partition("#")
        destination = (page.parent / file_part).resolve() if file_part else page
        if not destination.exists():
            broken.append(f"{target}: no such file")
        elif anchor and destination.suffix == ".md" and anchor not in anchors(destination):
            broken.append(f"{target}: no heading with that anchor in {destination.relative_to(REPO).as_posix()}")
    assert not broken, f"{page.relative_to(REPO).as_posix()} has broken links:\n" + "\n".join(broken)


def test_the_link_checker_sees_links_and_anchors(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text(
        "# Over- and under-fitting, `code_too`\n\n## **Bold** [link](x.md)\n\n## Bold link\n\n"
        "[a](other.md#x) ![b](pic.png) [c](https://example.com) `[d](in-code.md)`\n\n"
        "```\n# not a heading\n[e](in-fence.md)\n```\n",
        encoding="utf-8",
    )
    assert relative_links(page) == ["x.md", "other.md#x", "pic.png"]
    assert anchors(page) == {"over--and-under-fitting-code_too", "bold-link", "bold-link-1"}
