"""Sliding-window GQA (Mistral, gpt-oss): a ring cache of the window, learned sinks or sink tokens."""

from attnbench.variants.core.family import Family, ReportHints, VariantHints
from attnbench.variants.families.swa.layer import (
    SWA,
    SWA_SPEC,
    RingLayout,
    SWAConfig,
    layer_for_kind,
    make_layer,
    model_kv_bytes,
    ring_positions,
    ring_rows,
)
from attnbench.variants.families.swa.shape import WindowShape, reduce_window


def _validate(shape, variant: str) -> str | None:  # noqa: ANN001 - a ModelShape
    if shape.sliding_window is None:
        return (f"variant={variant} needs sliding_window in the model shape; {shape.name} has none "
                "(presets with one: gpt_oss_20b, gpt_oss_120b, mistral_7b_v01)")
    return None


FAMILY = Family(
    name="swa",
    description="sliding-window attention",
    variants=(SWA_SPEC,),
    shape=WindowShape,
    reduce=reduce_window,
    validate=_validate,
    # A darkened yellow: Okabe-Ito's yellow vanishes on white at a line's width, and its other colours are taken.
    report=ReportHints(order=40, group="dense", variants={SWA_SPEC.name: VariantHints(color="#9A7B00")}),
)

__all__ = ["FAMILY", "SWA", "SWAConfig", "SWA_SPEC", "RingLayout", "WindowShape", "layer_for_kind", "make_layer",
           "model_kv_bytes", "ring_positions", "ring_rows"]
