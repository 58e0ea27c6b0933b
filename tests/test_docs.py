"""The README and the docs pages: every relative link resolves, the README stays a first screen plus links."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves(page):
    targets = [t for t in LINK.findall(page.read_text()) if "://" not in t and not t.startswith("mailto:")]
    missing = [t for t in targets if not (page.parent / t).exists()]
    assert not missing, f"{page.relative_to(ROOT)} links to missing files: {missing}"


def test_the_readme_is_short_and_links_every_docs_page():
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) < 250
    linked = {Path(t).name for t in LINK.findall(text)}
    pages = {p.name for p in (ROOT / "docs").glob("*.md")}
    assert pages <= linked, f"docs pages the README does not link: {sorted(pages - linked)}"


def test_the_readme_keeps_its_two_set_up_commands():
    text = (ROOT / "README.md").read_text()
    commands = [line.strip() for line in text.splitlines() if line.startswith("    python3 -m venv .venv")]
    assert len(commands) == 2
    assert commands[0].endswith("python run.py") and "python -m pytest -q" in commands[1]
    ci = (ROOT / ".ci" / "run").read_text()
    assert commands[1].split("&& ", 2)[2] in ci  # CI runs the README's test command


def test_every_run_key_is_in_the_key_table():
    import dataclasses

    from attnbench.harness.sweep.schema import RunConfig

    table = (ROOT / "docs" / "cli.md").read_text().split("## Keys", 1)[1].split("\n## ", 1)[0]
    documented = set(re.findall(r"`([a-z_]+)[=`.]", table))
    internal = {"hydra", "lowrank"}  # Hydra's own node; the study's block (docs/lowrank.md)
    missing = [f.name for f in dataclasses.fields(RunConfig) if f.name not in documented | internal]
    assert not missing, f"keys of harness.sweep.schema.RunConfig missing from docs/cli.md's key table: {missing}"
