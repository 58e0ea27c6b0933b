"""``expanded`` (MLA only): cache per-head keys and values, decompressed once when written.

DeepSeek's reference "naive" mode: the comparison point that shows what MLA's latent cache saves.
Its cache holds N * (qk_nope + d_r + v_head) values per token instead of d_c + d_r.
"""

from attnbench.variants.implementation import KernelImplementation
from attnbench.variants.kernels.eager import EagerKernel
from attnbench.variants.registry import register_implementation

IMPLEMENTATION = register_implementation(KernelImplementation(
    name="expanded", path="expanded", kernel=EagerKernel(),
    description="MLA caching decompressed per-head K and V (DeepSeek's naive mode)"))
