"""``eager``: the standard path with explicit matmuls and a float32 softmax (MLA up-projects the
cached latent to per-head keys and values every step)."""

from attnbench.variants.implementation import KernelImplementation
from attnbench.variants.kernels.eager import EagerKernel
from attnbench.variants.registry import register_implementation

IMPLEMENTATION = register_implementation(KernelImplementation(
    name="eager", path="standard", kernel=EagerKernel(),
    description="explicit matmuls, float32 softmax; MLA re-expands its latent cache each step"))
