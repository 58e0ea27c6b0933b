"""``sdpa``: the standard path through torch's fused scaled_dot_product_attention."""

from attnbench.variants.implementation import KernelImplementation
from attnbench.variants.kernels.sdpa import SdpaKernel
from attnbench.variants.registry import register_implementation

IMPLEMENTATION = register_implementation(KernelImplementation(
    name="sdpa", path="standard", kernel=SdpaKernel(),
    description="torch.nn.functional.scaled_dot_product_attention (GQA via enable_gqa, no K/V copy)"))
