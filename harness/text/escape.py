"""User text (device and host names, labels, notes, commits) made safe for markdown and figure titles.

A device name is whatever the machine reports and a label holds the user's names: in a markdown
table a ``|`` splits the cell, a backtick opens code, ``<`` opens HTML; in a matplotlib title a pair
of ``$`` starts mathtext (and an unbalanced one raises while the figure is saved).
"""

from __future__ import annotations

# Brackets too: ``![x](http://...)`` in a device name would otherwise load an image from anywhere.
_MARKDOWN = {"\\": "\\\\", "|": "\\|", "`": "\\`", "<": "&lt;", ">": "&gt;", "[": "\\[", "]": "\\]",
             "\r": " ", "\n": " "}


def markdown(text: object) -> str:
    """``text`` as one markdown table cell or line: read as the same characters, never as markup."""
    return "".join(_MARKDOWN.get(ch, ch) for ch in str(text))


def code(text: object) -> str:
    """``text`` inside a markdown code span: backticks and line breaks cannot end it early."""
    return "`" + str(text).replace("`", "'").replace("\n", " ").replace("\r", " ") + "`"


def mathtext(text: object) -> str:
    """``text`` for a matplotlib title or label: a ``$`` is a dollar sign, never mathtext."""
    return str(text).replace("$", r"\$")
