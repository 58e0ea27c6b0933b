"""The order a reader expects variants and implementations in, for every table, figure and analysis.

Variants: by family (``variants.core.family.ReportHints.order``), then as each family lists them (by
KV heads, then the latent, ...); implementations: the eager reference first, then by dataflow. Names
nobody declared follow, sorted.
"""

from __future__ import annotations

from variants.registry import families

IMPL_ORDER: tuple[str, ...] = ("eager", "sdpa", "absorbed", "absorbed_sdpa", "absorbed_fold_o", "expanded")


def variant_order() -> tuple[str, ...]:
    return tuple(spec.name for family in families() for spec in family.variants)


def variant_sort_key(variant: str) -> tuple[int, str]:
    order = variant_order()
    return (order.index(variant), "") if variant in order else (len(order), variant)


def impl_sort_key(impl: str) -> tuple[int, str]:
    return (IMPL_ORDER.index(impl), "") if impl in IMPL_ORDER else (len(IMPL_ORDER), impl)
