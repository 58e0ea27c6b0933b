"""``absorbed`` and ``absorbed_sdpa`` (MLA only): attention directly on the latent cache.

W_UK is applied to the query and W_UV after attention (DeepSeek-V2, section 2.1.2 "absorb"), so
the step reads ``[c_kv; k_rope]`` as one key shared by every head and never builds per-head keys
or values. ``absorbed_sdpa`` reads the value as that same packed row and drops the rope columns of
the output, so key and value are one tensor of one width, which torch's fused CPU and CUDA kernels
require (FlashMLA lays out its cache the same way); its extra value FLOPs are counted.
"""

from variants.implementation import KernelImplementation
from variants.kernels.eager import EagerKernel
from variants.kernels.sdpa import SdpaKernel
from variants.registry import register_implementation

ABSORBED = register_implementation(KernelImplementation(
    name="absorbed", path="absorbed", kernel=EagerKernel(),
    options={"fold_o": False, "packed_value": False},
    description="MLA with W_UK/W_UV absorbed; explicit matmuls on the latent cache"))

ABSORBED_SDPA = register_implementation(KernelImplementation(
    name="absorbed_sdpa", path="absorbed", kernel=SdpaKernel(),
    options={"fold_o": False, "packed_value": True},
    description="MLA absorbed, attention through scaled_dot_product_attention on the packed cache"))

ABSORBED_FOLD_O = register_implementation(KernelImplementation(
    name="absorbed_fold_o", path="absorbed", kernel=EagerKernel(),
    options={"fold_o": True, "packed_value": False},
    description="MLA absorbed with W_UV folded into the output projection (one larger matmul)"))
