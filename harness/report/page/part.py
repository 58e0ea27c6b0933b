"""A part of a report: what one kind of rows contributes (tables, figures, notes, files)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from attnbench.harness.report.page.html import PageFigure
from attnbench.harness.report.tables.views import Table


@dataclass(frozen=True)
class Part:
    tables: tuple[Table, ...] = ()
    sources: Table | None = None
    notes: tuple[str, ...] = ()
    figures: tuple[PageFigure, ...] = ()
    files: tuple[Path, ...] = ()
    drawn: Mapping[str, str] = field(default_factory=dict)  # figure name -> caption
    left_out: Mapping[str, str] = field(default_factory=dict)  # figure name -> why
    devices: tuple[str, ...] = ()

    def plus(self, other: Part) -> Part:
        return Part(self.tables + other.tables, self.sources or other.sources, self.notes + other.notes,
                    self.figures + other.figures, self.files + other.files, {**self.drawn, **other.drawn},
                    {**self.left_out, **other.left_out}, self.devices + other.devices)
