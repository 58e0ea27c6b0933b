"""Multi-head latent attention (DeepSeek-V2/V3): the layer, its paths and kernels' protocol, its shape keys."""

from attnbench.variants.core.family import Family, ReportHints, TraceHints, VariantHints
from attnbench.variants.families.mla.layer import MLA, MLA_SPEC, MLAConfig
from attnbench.variants.families.mla.shape import MLAShape

FAMILY = Family(
    name="mla",
    description="multi-head latent attention (DeepSeek-V2/V3)",
    variants=(MLA_SPEC,),
    shape=MLAShape,
    report=ReportHints(order=20, group="dense", crossover="dense",
                       variants={MLA_SPEC.name: VariantHints(color="#D55E00")}),  # Okabe-Ito vermillion
    trace=TraceHints(op_type="mla_dense", tag_keys=("d_c", "d_r", "q_rank")),
)

__all__ = ["FAMILY", "MLA", "MLAConfig", "MLAShape", "MLA_SPEC"]
