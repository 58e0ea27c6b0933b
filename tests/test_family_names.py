"""Outside ``variants/families/`` no code names a family or a variant: the harness asks the family protocol.

Read statically (nothing is imported): every string literal of every ``.py`` file of the project except
the families' own folders and the tests. A docstring or comment may still mention a design; a literal
equal to a variant's name (``"mla"``, ``"MLA"``) is code branching on it.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NAMES = frozenset({"mla", "dsa", "gqa", "mha", "mqa", "swa", "csa", "hca"})
SKIPPED = (("variants", "families"), ("tests",))


def _sources() -> list[Path]:
    out = []
    for path in sorted(ROOT.rglob("*.py")):
        parts = path.relative_to(ROOT).parts
        if parts[0].startswith(".") or parts[0] in ("build", "results", "outputs") or any(
                parts[:len(skip)] == skip for skip in SKIPPED):
            continue
        out.append(path)
    return out


def named_families(source: str) -> list[tuple[int, str]]:
    """(line, literal) of every string literal in ``source`` that is a family's or variant's name."""
    return [(node.lineno, node.value) for node in ast.walk(ast.parse(source))
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value.lower() in NAMES]


def test_no_code_outside_the_families_names_one() -> None:
    found = [f"{path.relative_to(ROOT)}:{line}: {value!r}" for path in _sources()
             for line, value in named_families(path.read_text())]
    assert not found, "code outside variants/families/ names a family:\n" + "\n".join(found)


def test_the_check_sees_literals_and_reads_the_project() -> None:
    # It must be able to fail: literals in a call, a tuple and a comparison; not a docstring's words.
    source = 'def f(v):\n    """Build mla."""\n    return v == "MLA" or v in ("dsa", "x") or g(variant="swa")\n'
    assert [value for _, value in named_families(source)] == ["MLA", "dsa", "swa"]
    paths = {p.relative_to(ROOT).as_posix() for p in _sources()}
    assert "harness/measure/numerics.py" in paths and "variants/shape.py" in paths
    assert not any(p.startswith(("variants/families/", "tests/")) for p in paths)
