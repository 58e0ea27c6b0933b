"""No function in the measurement core or the sweep is longer than 60 lines (issue 20, item 5):
a case's run reads as named stages, a job's planning as named steps."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = ("harness/measure", "harness/sweep")
MAX_LINES = 60


def long_functions(source: str, *, limit: int = MAX_LINES) -> list[tuple[str, int, int]]:
    """``(name, first line, lines)`` of each function or method in ``source`` over ``limit`` lines,
    decorators and docstring included."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            first = min([node.lineno, *(d.lineno for d in node.decorator_list)])
            lines = node.end_lineno - first + 1
            if lines > limit:
                found.append((node.name, first, lines))
    return found


def test_a_long_function_is_found():
    def body(lines: int, indent: str) -> str:
        return "".join(f"{indent}x{i} = {i}\n" for i in range(lines))

    fits = f"def fits():\n{body(MAX_LINES - 1, '    ')}"  # 60 lines with its def
    source = f"{fits}class A:\n    def too_long(self):\n{body(MAX_LINES, '        ')}"
    assert long_functions(source) == [("too_long", MAX_LINES + 2, MAX_LINES + 1)]


@pytest.mark.parametrize("folder", FOLDERS)
def test_no_function_is_over_60_lines(folder):
    files = sorted((ROOT / folder).rglob("*.py"))
    assert files, folder
    over = [f"{path.relative_to(ROOT)}:{line} {name} ({lines} lines)" for path in files
            for name, line, lines in long_functions(path.read_text(encoding="utf-8"))]
    assert over == [], "split into named steps of at most 60 lines: " + "; ".join(over)
