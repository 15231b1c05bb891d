"""The documentation holds together: every link lands, the README stays a quick start, nothing cites a file the
project lacks, and every generated block is one that ``make docs`` knows how to regenerate (and has)."""

from __future__ import annotations

import importlib.util
import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\]\(([^)\s]+)\)")


def _generator():
    spec = importlib.util.spec_from_file_location("docs_generate", ROOT / "docs" / "generate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _anchors(page: Path) -> set[str]:
    """GitHub's anchors of a page's headings: lower case, punctuation dropped, spaces as dashes."""
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.DOTALL)
    return {re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
            for heading in re.findall(r"^#+ (.+)$", text, flags=re.MULTILINE)}


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_relative_link_lands_on_a_file_and_heading(page: Path) -> None:
    broken = []
    for target in LINK.findall(page.read_text()):
        if re.match(r"[a-z]+:", target):  # https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        if not file.exists() or (anchor and file.suffix == ".md" and anchor not in _anchors(file)):
            broken.append(target)
    assert not broken, f"{page.name}: links that land nowhere: {broken}"


def test_the_readme_is_a_quick_start_that_links_every_page() -> None:
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 150
    linked = {Path(target.partition("#")[0]).name for target in LINK.findall(readme)}
    assert {page.name for page in PAGES[1:]} <= linked


def test_nothing_cites_a_theory_file_the_project_lacks() -> None:
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    citing = [name for name in tracked if not name.endswith((".png", ".npy", ".npz"))
              and (ROOT / name).is_file() and "THEORY.md" in (ROOT / name).read_text(errors="ignore")
              and name != "tests/test_docs.py"]
    assert not citing


def test_generated_blocks_are_known_to_make_docs_and_filled() -> None:
    generate = _generator()
    found: dict[str, list[str]] = {}
    for page in PAGES:
        for name in generate.block_names(page.read_text()):
            found.setdefault(name, []).append(page.name)
    assert set(found) == set(generate.BLOCKS)
    for page in PAGES:
        for match in generate.BLOCK.finditer(page.read_text()):
            assert match["body"].strip(), f"{page.name}: block {match['name']} is empty; run make docs"


def test_fill_replaces_only_the_named_block() -> None:
    generate = _generator()
    text = ("a\n<!-- generated: one -->\nold\n<!-- end: one -->\nb\n"
            "<!-- generated: two -->\nkept\n<!-- end: two -->\n")
    out = generate.fill(text, "one", "new\n")
    assert out == text.replace("old", "new")
    with pytest.raises(KeyError):
        generate.fill(text, "three", "x")
