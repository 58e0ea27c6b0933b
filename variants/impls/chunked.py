"""``chunked``: a linear-attention layer's chunked form (chunks of 64) for prefill, the recurrent update
for one-token decode, as transformers and fla run Gated DeltaNet and Kimi Delta Attention.

The kernel is the delta-rule families' own (``variants/families/gdn/rule.py``); this file only
registers it under a name the harness can look up before any family is imported (the family
protocol of issue 20 is to let a family declare its implementations from its folder).
"""

from attnbench.variants.families.gdn.rule import CHUNKED
from attnbench.variants.implementation import KernelImplementation
from attnbench.variants.registry import register_implementation

IMPLEMENTATION = register_implementation(KernelImplementation(
    name="chunked", path="chunked", kernel=CHUNKED,  # type: ignore[arg-type]
    description="delta-rule layers: chunked (UT-transform) prefill in chunks of 64, recurrent decode"))
