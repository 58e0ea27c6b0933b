"""Sizes typed by users (``80GiB``) and numbers written for readers (``1.23``, ``12.5 MiB``)."""

from __future__ import annotations

import math
import re

import pandas as pd

# Binary units for memory (what allocators and nvidia-smi report), decimal ones when typed as such.
_BYTE_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
               "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}
_BYTES = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*([a-zA-Z]*)\s*$")
BINARY_UNITS = (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10), ("B", 1))


def parse_bytes(name: str, text: str) -> int:
    """``80GiB`` -> 85899345920, ``1.5TB`` -> 1.5e12, ``4096`` -> 4096."""
    match = _BYTES.match(str(text))
    unit = match.group(2).lower() if match else None
    if not match or unit not in _BYTE_UNITS:
        raise ValueError(f"{name}={text!r} is not a size; use a number with one of: "
                         "B, KB, MB, GB, TB, KiB, MiB, GiB, TiB (e.g. 80GiB)")
    value = float(match.group(1)) * _BYTE_UNITS[unit]
    if value <= 0:
        raise ValueError(f"{name}={text!r} is not allowed: it must be positive")
    return int(value)


def byte_unit(values: object) -> tuple[str, int]:
    """The binary unit in which the typical (median) of ``values`` reads as 1 or more."""
    numbers = [float(v) for v in values if v is not None and not _nan(v)]  # type: ignore[attr-defined]
    if not numbers:
        return "B", 1
    typical = sorted(numbers)[len(numbers) // 2]
    return next(((u, s) for u, s in BINARY_UNITS if typical >= s), ("B", 1))


def human_bytes(value: float) -> str:
    if _nan(value):
        return "n/a"
    unit, scale = byte_unit([value])
    return f"{number(value / scale)} {unit}"


def number(value: object, *, digits: int = 3) -> str:
    """Three significant digits without exponents in the range readers meet (``0.0123``, ``1,234``)."""
    if value is None or _nan(value):
        return ""
    x = float(value)  # type: ignore[arg-type]
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    if abs(x) >= 10 ** digits:
        return f"{x:,.0f}"
    if x != 0 and abs(x) < 1e-3:
        return f"{x:.{digits - 1}e}"
    return f"{x:.{digits}g}"


def significant(value: object, *, digits: int = 3) -> str:
    """``digits`` significant digits with trailing zeros kept, so every cell of a table column reads
    alike (``0.240``, ``12.0``, ``1,234``); integers of more digits are written whole."""
    if value is None or _nan(value):
        return ""
    x = float(value)  # type: ignore[arg-type]
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    if x == 0:
        return f"{0:.{digits - 1}f}"
    if abs(x) >= 10 ** (digits - 1):
        return f"{x:,.0f}"
    x = float(f"{x:.{digits - 1}e}")  # rounded first: 9.996 is 10.0, not 10.00
    exponent = math.floor(math.log10(abs(x)))
    if exponent >= digits - 1:
        return f"{x:,.0f}"
    if exponent < -3:
        return f"{x:.{digits - 1}e}"
    return f"{x:.{digits - 1 - exponent}f}"


def like(value: object, template: str) -> str:
    """``value`` written with the decimals (or the exponent form) of ``template``, a cell written by
    ``significant``: the bounds of a confidence interval read like its median (``0.240`` beside ``0.243``)."""
    if value is None or _nan(value) or math.isinf(float(value)):  # type: ignore[arg-type]
        return ""
    x = float(value)  # type: ignore[arg-type]
    if "e" in template:
        mantissa = template.split("e")[0]
        return f"{x:.{len(mantissa.partition('.')[2])}e}"
    return f"{x:,.{len(template.partition('.')[2])}f}"


def count(value: object) -> str:
    """A whole number with thousands separators (``22,215,547``)."""
    return f"{int(value):,}" if value is not None and not _nan(value) else ""  # type: ignore[call-overload]


def tokens(value: object) -> str:
    """A token count the way contexts are named: 4096 -> ``4k``, 1048576 -> ``1M``, 1500 -> ``1,500``."""
    if value is None or _nan(value):
        return ""
    n = int(value)  # type: ignore[call-overload]
    for unit, scale in (("M", 2**20), ("k", 2**10)):
        if n >= scale and n % scale == 0:
            return f"{n // scale}{unit}"
    return f"{n:,}"


def ci_text(value: object, *, unbounded: str = "no CI") -> str:
    """A relative CI half-width as ``+-4.1%``; ``unbounded`` where it is infinite (too few samples), "" where none."""
    if value is None or pd.isna(value):
        return ""
    return unbounded if math.isinf(float(value)) else f"+-{float(value):.1%}"


def _nan(value: object) -> bool:
    if value is pd.NA:  # a missing cell of a nullable integer column
        return True
    try:
        return math.isnan(float(value))  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return False


def format_size(n: int) -> str:
    for unit, scale in (("M", 1024 ** 2), ("k", 1024)):
        if n >= scale and n % scale == 0:
            return f"{n // scale}{unit}"
    return str(n)
