"""attnbench's attention variants: MHA, MQA, GQA and MLA, their implementations and cost model.

    from attnbench import variants
    layer = variants.build("mla", model="deepseek_v2_lite")
    cache = layer.new_cache(batch, max_len)
    y = layer.prefill(x_BLD, cache, impl="eager")
    y = layer.decode(x_BLD, cache, impl="absorbed")
    mla = variants.to_mla(variants.build("gqa", model="smollm2_135m"), d_c=128, d_r=32)
"""

from attnbench.variants.build import build
from attnbench.variants.cache import CacheField, CacheLayout, KVCache
from attnbench.variants.convert import to_mla
from attnbench.variants.cost import Cost
from attnbench.variants.implementation import Implementation, KernelImplementation
from attnbench.variants.layer import COMPILE_MODES, PHASES, AttentionLayer
from attnbench.variants.registry import IMPLEMENTATIONS, VARIANTS, register_implementation, register_variant
from attnbench.variants.shape import ModelShape


def from_hf(module, **kwargs):  # noqa: ANN001, ANN201 - transformers is an optional dependency
    """The attnbench layer holding a ``transformers`` attention module's weights (see ``attnbench.variants.hf``)."""
    from attnbench.variants.hf import from_hf as convert

    return convert(module, **kwargs)


def implementation_names() -> list[str]:
    return IMPLEMENTATIONS.names()


def variant_names() -> list[str]:
    return VARIANTS.names()


__all__ = [
    "COMPILE_MODES", "IMPLEMENTATIONS", "PHASES", "VARIANTS", "AttentionLayer", "CacheField",
    "CacheLayout", "Cost", "Implementation", "KVCache", "KernelImplementation", "ModelShape", "build",
    "from_hf", "implementation_names", "register_implementation", "register_variant", "to_mla", "variant_names",
]
