"""Every family package's ``FAMILY`` (``variants.core.family``), discovered on the first lookup.

Kept apart from the variant and implementation registries (``variants.registry``) so that
``variants.shape`` can read the families' declared keys without importing what the layers import.
"""

from __future__ import annotations

from variants.core.family import ENTRY_POINT_GROUP, Family, ShapeKey, shape_keys
from variants.core.registry import Registry

FAMILIES: Registry[Family] = Registry("family", package="variants.families", entry_point_group=ENTRY_POINT_GROUP,
                                      attribute="FAMILY")


def families() -> list[Family]:
    """Every family, in report order (``ReportHints.order``, then name)."""
    return sorted(FAMILIES, key=lambda f: (f.report.order, f.name))


def family_shape_keys() -> dict[str, ShapeKey]:
    """Every family's shape keys (``variants.core.family.shape_keys``), declared once."""
    return shape_keys(families())
