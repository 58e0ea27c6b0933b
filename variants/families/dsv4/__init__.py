"""DeepSeek-V4's attention: window layers with a compressed branch, CSA (sparse) and HCA (heavily compressed)."""

from attnbench.variants.core.family import Family, ReportHints, VariantHints
from attnbench.variants.families.dsv4.layer import (
    CSA_SPEC,
    DSV4,
    HCA_SPEC,
    DSV4Config,
    cache_layout_of,
    config_of,
    layer_for_kind,
    model_kv_bytes,
    model_kv_bytes_per_token,
)
from attnbench.variants.families.dsv4.shape import DSV4Shape, reduce_dsv4


def _validate(shape, variant: str) -> str | None:  # noqa: ANN001 - a ModelShape
    try:
        config_of(shape, "S", variant=f"variant={variant}")
    except ValueError as why:
        return str(why)
    return None


FAMILY = Family(
    name="dsv4",
    description="DeepSeek-V4 compressed attention (CSA, HCA)",
    variants=(CSA_SPEC, HCA_SPEC),
    shape=DSV4Shape,
    reduce=reduce_dsv4,
    validate=_validate,
    report=ReportHints(order=50, group="sparse", crossover="sparse", variants={
        CSA_SPEC.name: VariantHints(color="#56B4E9"), HCA_SPEC.name: VariantHints(color="#000000")}),
)

__all__ = ["CSA_SPEC", "DSV4", "DSV4Config", "DSV4Shape", "FAMILY", "HCA_SPEC", "cache_layout_of", "config_of",
           "layer_for_kind", "model_kv_bytes", "model_kv_bytes_per_token"]
