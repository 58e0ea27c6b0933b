"""Every family package's ``FAMILY`` (``attnbench.variants.core.family``), discovered on the first lookup.

Kept apart from the variant and implementation registries (``attnbench.variants.registry``) so that
``attnbench.variants.shape`` can read the families' declared keys without importing what the layers import.
"""

from __future__ import annotations

from attnbench.variants.core.family import ENTRY_POINT_GROUP, Family, ShapeKey, shape_keys
from attnbench.variants.core.registry import Registry

FAMILIES: Registry[Family] = Registry("family", package="attnbench.variants.families",
                                      entry_point_group=ENTRY_POINT_GROUP, attribute="FAMILY")


def families() -> list[Family]:
    """Every family, in report order (``ReportHints.order``, then name)."""
    return _in_order(FAMILIES)


def _in_order(registry: Registry[Family]) -> list[Family]:
    return sorted(registry, key=lambda f: (f.report.order, f.name))


def family_shape_keys() -> dict[str, ShapeKey]:
    """Every family's shape keys (``attnbench.variants.core.family.shape_keys``), declared once."""
    return FAMILIES.derived(_shape_keys)


def _shape_keys(registry: Registry[Family]) -> dict[str, ShapeKey]:
    return shape_keys(_in_order(registry))
