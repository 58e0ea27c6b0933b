"""A table's repro commands (the ``repro`` column, ``attnbench.harness.sweep.repro``) as markdown under it."""

from __future__ import annotations

from collections.abc import Iterable

from attnbench.harness.text.escape import code  # the commands carry the user's preset names


def markdown_lines(commands: Iterable[object], *, what: str = "row") -> list[str]:
    """The commands of a table's rows as a folded markdown list (in the table's order); none: no lines.

    A command is too wide for a table cell: the table keeps its columns, the commands sit under it."""
    shown = [str(c) for c in commands if isinstance(c, str) and c]
    if not shown:
        return []
    return ["<details><summary>Repro: the command that measures each " + what + " again, in the table's order"
            "</summary>", "", *(f"- {code(c)}" for c in shown), "", "</details>", ""]
