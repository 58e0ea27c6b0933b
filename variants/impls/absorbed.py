"""``absorbed``, ``absorbed_sdpa``, ``absorbed_native`` and ``absorbed_fold_o`` (MLA, dsa): attention directly on the latent cache.

W_UK is applied to the query and W_UV after attention (DeepSeek-V2, section 2.1.2 "absorb"), so
the step reads the cached ``[c_kv; k_rope]`` rows as one key shared by every head and never builds
per-head keys or values. The kernel is an ``MLAKernel``: it receives the latent query, the rotary
query and the two cache pieces as views. ``absorbed`` and ``absorbed_fold_o`` compute the two score
terms with explicit matmuls; ``absorbed_sdpa`` asks for the packed rows (FlashMLA's layout) and
reads them as key and value of one width, which torch's fused kernels require; its extra value
FLOPs (and the zero-padded rotary slots when G > 1) are counted. ``absorbed_native`` reads the same
packed rows with attnbench's C++ decode kernel (``variants.kernels.mla_native``; CPU, float32).

On ``dsa`` each runs its kernel's sparse counterpart (``EagerSparseMLAKernel``,
``SdpaSparseMLAKernel``): the same math on the rows the indexer selected, gathered per query.
``absorbed_native`` has none, so ``dsa`` refuses it with the reason.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from attnbench.variants.core.plan import LayerLike, Plan
from attnbench.variants.cost import Cost
from attnbench.variants.implementation import KernelImplementation
from attnbench.variants.kernels.mla_eager import EagerMLAKernel
from attnbench.variants.kernels.mla_native import NativeMLAKernel
from attnbench.variants.kernels.mla_sdpa import SdpaMLAKernel
from attnbench.variants.kernels.mla_sparse_eager import EagerSparseMLAKernel
from attnbench.variants.kernels.mla_sparse_sdpa import SdpaSparseMLAKernel
from attnbench.variants.registry import register_implementation

if TYPE_CHECKING:
    from attnbench.variants.core.step import Phase
    from attnbench.variants.layer import AttentionLayer


@dataclass(frozen=True)
class AbsorbedImplementation(KernelImplementation):
    """A ``KernelImplementation`` whose cost also knows the layout its MLA kernel reads."""

    def cost(self, layer: AttentionLayer, *, batch: int, q_len: int, cached: int, new_kv: int,
             dtype: torch.dtype | None = None) -> Cost:
        return layer.cost(path=self.path, batch=batch, q_len=q_len, cached=cached, new_kv=new_kv, dtype=dtype,
                          packed_cache=self.kernel.packed_cache, **self.options)


@dataclass(frozen=True)
class NativeImplementation(AbsorbedImplementation):
    """An absorbed implementation whose kernel is C++ built for this machine: unsupported, with the
    reason, where it can't be built; built during ``plan`` (set-up), so no timed call compiles."""

    kernel: NativeMLAKernel

    def supports(self, layer: LayerLike, *, phase: Phase, device: torch.device, dtype: torch.dtype) -> str | None:
        return super().supports(layer, phase=phase, device=device, dtype=dtype) or self.kernel.unavailable()

    def cost(self, layer: AttentionLayer, *, batch: int, q_len: int, cached: int, new_kv: int,
             dtype: torch.dtype | None = None) -> Cost:
        # A decode step scores the packed rows but takes their first C columns as the value; a
        # self-attention prefill (SDPA's code) reads the packed rows as both.
        prefill = cached == 0 and q_len > 1 and getattr(layer, "attention", "self") == "self"
        return layer.cost(path=self.path, batch=batch, q_len=q_len, cached=cached, new_kv=new_kv, dtype=dtype,
                          packed_cache=True, packed_value=prefill, **self.options)

    def plan(self, layer: LayerLike, *, compile: str | None = None) -> Plan:
        reason = self.kernel.unavailable()
        if reason is not None:
            raise RuntimeError(reason)
        return super().plan(layer, compile=compile)


# Key blocks of 2048 past 4096 keys: DeepSeek-V2-Lite, float32, one decode token, one thread on a
# 2-core AMD EPYC (32 MiB L3), kernel alone at 32k keys, median of 9 interleaved rounds: 32.5 ms in
# one pass, 26.2 (blocks of 1024), 27.4 (2048), 30.2 (4096); at 4k keys one pass 2.8 ms, blocks
# 3.3-3.5 ms. Under heavy load from other processes (load average 18) at 32k: 115.6 one pass, 103.8
# (1024), 94.7 (2048). Given a cache view (the layer's way), past 4096 keys, or on a paged or fp8
# cache, the kernel reads split-KV in chunks sized by variants.kernels.split_kv.chunk_tokens instead.
EAGER_MLA = EagerMLAKernel(block_keys=2048, one_pass_keys=4096, sparse=EagerSparseMLAKernel())

ABSORBED = register_implementation(AbsorbedImplementation(
    name="absorbed", path="absorbed", kernel=EAGER_MLA, options={"fold_o": False},
    description="MLA with W_UK/W_UV absorbed; explicit matmuls on the latent cache"))

ABSORBED_SDPA = register_implementation(AbsorbedImplementation(
    name="absorbed_sdpa", path="absorbed", kernel=SdpaMLAKernel(sparse=SdpaSparseMLAKernel()),
    options={"fold_o": False},
    description="MLA absorbed, attention through scaled_dot_product_attention on the packed cache"))

ABSORBED_NATIVE = register_implementation(NativeImplementation(
    name="absorbed_native", path="absorbed", kernel=NativeMLAKernel(),
    options={"fold_o": False}, devices=("cpu",), dtypes=(torch.float32,),
    description="MLA absorbed, decode in one pass over the packed latent cache by a C++ kernel built for "
                "this CPU (a C++ compiler needed; float32); its prefill is absorbed_sdpa's kernel"))

ABSORBED_FOLD_O = register_implementation(AbsorbedImplementation(
    name="absorbed_fold_o", path="absorbed", kernel=EAGER_MLA, options={"fold_o": True},
    description="MLA absorbed with W_UV folded into the output projection (one larger matmul)"))
