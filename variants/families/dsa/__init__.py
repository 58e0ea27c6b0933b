"""DeepSeek-V3.2's sparse attention: MLA over the tokens a lightning indexer selects."""

from attnbench.variants.core.family import Family, ReportHints, VariantHints
from attnbench.variants.families.dsa.layer import DSA, DSA_SPEC, DSAConfig
from attnbench.variants.families.dsa.shape import DSAShape, reduce_indexer
from attnbench.variants.families.dsa.selection import INDEXER_SELECTION


def _validate(shape, variant: str) -> str | None:  # noqa: ANN001 - a ModelShape
    if shape.q_rank is None:
        return (f"variant={variant} needs q_rank in the model shape; {shape.name} has none (the indexer's query "
                "comes from MLA's compressed query; presets with one: deepseek_v32_exp, tiny_dsa)")
    return None


FAMILY = Family(
    name="dsa",
    description="DeepSeek-V3.2 sparse attention (DSA)",
    variants=(DSA_SPEC,),
    shape=DSAShape,
    reduce=reduce_indexer,
    selection=INDEXER_SELECTION,
    validate=_validate,
    report=ReportHints(order=30, group="sparse", crossover="sparse",
                       variants={DSA_SPEC.name: VariantHints(color="#CC79A7")}),  # Okabe-Ito reddish purple
)

__all__ = ["DSA", "DSAConfig", "DSAShape", "DSA_SPEC", "FAMILY"]
