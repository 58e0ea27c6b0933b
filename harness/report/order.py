"""The order a reader expects variants and implementations in, shared by tables, analysis and figures.

Kept below all three rooms so that a table can sort like a figure without importing the figures.
"""

from __future__ import annotations

from attnbench.variants.registry import families

# Implementations from the plainest to the most specialised; figures give each its marker and line style.
IMPL_ORDER: tuple[str, ...] = ("eager", "sdpa", "absorbed", "absorbed_sdpa", "absorbed_native", "absorbed_fold_o",
                                  "expanded")


def variant_order() -> tuple[str, ...]:
    """Variants in the order a reader expects them: by family (``ReportHints.order``), then as each family
    lists them (by KV heads, then the latent, ...); others follow, sorted."""
    return tuple(spec.name for family in families() for spec in family.variants)


def variant_sort_key(variant: str) -> tuple[int, str]:
    order = variant_order()
    return (order.index(variant), "") if variant in order else (len(order), variant)


def impl_sort_key(impl: str) -> tuple[int, str]:
    return (IMPL_ORDER.index(impl), "") if impl in IMPL_ORDER else (len(IMPL_ORDER), impl)
