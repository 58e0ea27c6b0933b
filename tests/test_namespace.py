"""attnbench installs one top-level name, ``attnbench``: nothing in the project imports the folders by their
bare names (``harness``, ``variants``, ``conf``).

In a checkout the folders are also importable bare (the working directory is on ``sys.path``), so a
stray ``import harness`` would run, silently, as a second copy of every module with registries of its
own; an installed wheel has no such name and the same line fails. Read statically: every ``.py`` file's
imports, every string that is code (``-c`` scripts, ``python -m ...``), and the docs' code.
"""

from __future__ import annotations

import ast
import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BARE = ("harness", "variants", "conf", "attnbench_conf")
# `import harness`, `from variants.x import y`, `python -m harness` inside a string or a doc.
IN_TEXT = re.compile(r"(?:^|[\s;\"'(`])(?:(?<!attnbench )import|from)\s+(?:harness|variants|attnbench_conf)\b(?!\.(?:md|py|yaml)\b)"
                     r"|-m\s+(?:harness|variants)\b(?![./])|pydoc\s+(?:harness|variants)\.", re.M)


def _tracked(*suffixes: str) -> list[Path]:
    names = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    return [ROOT / n for n in names if n.endswith(suffixes) and (ROOT / n).is_file()]


def bare_imports(source: str) -> list[str]:
    """The bare project names ``source`` imports: statements, and code inside its string literals."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [a.name for a in node.names if a.name.split(".")[0] in BARE]
        elif isinstance(node, ast.ImportFrom) and not node.level and (node.module or "").split(".")[0] in BARE:
            found.append(node.module or "")
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and IN_TEXT.search(node.value):
            found.append(IN_TEXT.search(node.value).group(0).strip(" ;\"'("))
    return found


def test_nothing_imports_a_bare_folder_name() -> None:
    found = [f"{p.relative_to(ROOT)}: {name}" for p in _tracked(".py") if p.name != "test_namespace.py"
             for name in bare_imports(p.read_text())]
    found += [f"{p.relative_to(ROOT)}: {m.group(0).strip()}" for p in _tracked(".md", ".sh", ".yaml")
              for m in IN_TEXT.finditer(p.read_text())]
    assert not found, "import these as attnbench.<name>:\n" + "\n".join(found)


def test_the_check_can_fail() -> None:
    source = ('import harness\nfrom variants.registry import X\nimport attnbench.harness\nfrom attnbench import conf\n'
              'ok = "from attnbench import harness"\n'
              'code = "import sys; from harness.sweep import y"\ncmd = ["python -m harness status"]\n'
              'doc = "see harness.md and variants.py"\nhelp = "(python -m pydoc harness.interop.x)"\n')
    assert bare_imports(source) == ["harness", "variants.registry", "from harness", "pydoc harness.", "-m harness"]
