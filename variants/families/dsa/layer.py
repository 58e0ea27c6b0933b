"""DeepSeek-V3.2's sparse attention (DSA): MLA over the tokens a lightning indexer selects.

Legend: B batch, L new queries, T keys readable (cache rows), D hidden, N heads, Q query rank,
C latent d_c, R rotary d_r, P nope, V value, H indexer heads, I indexer head dim,
K selected tokens per query (min(index_topk, T)).

DeepSeek-V3.2-Exp keeps DeepSeek-V3's MLA (``attnbench.variants.families.mla``; query compression is
required, the indexer's query comes from it) and adds a lightning indexer (``attnbench.variants.families.dsa.indexer``)
that picks each query's top-k tokens; attention runs over those only. Per token and layer the
cache holds MLA's latent and rope key, packed as FlashMLA reads them, and the indexer's key in a
buffer of its own: C + R + I values (512 + 64 + 128 = 704, 1,408 B in bf16 at DeepSeek-V3.2's shape;
with ``kv_dtype=fp8_e4m3`` FlashMLA's 656 B plus the indexer key's 128 + 4, 788 B).

Paths:
- ``standard``: dense MLA (the whole latent re-expanded every step) with every key the indexer did
  not select masked, transformers' way: the dense baseline and the float64 reference path
  (``eager``, ``sdpa``).
- ``expanded``: the same dense masking over per-head keys and values cached expanded.
- ``absorbed``: sparse. The indexer scans every cached indexer key (linear in the context; its
  share reported apart in ``indexer_flops``/``indexer_bytes``), then the absorbed query attends on
  the K selected latent rows only through a ``SparseMLAKernel`` given their indices (what FlashMLA's
  sparse decode kernel takes): the attention's work and traffic are proportional to K, not to the
  context. The kernel is the ``sparse`` counterpart of the implementation's MLA kernel.

Top-k larger than the context is legal: each query keeps ``min(index_topk, visible)`` tokens, so up
to ``index_topk`` tokens DSA attends like dense MLA plus the indexer (the left of a crossover sweep),
and nothing is refused for it. Self-attention only: the indexer ranks a causal prefix.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from attnbench.variants.cache import CacheField, CacheLayout, KVCache
from attnbench.variants.cost import Cost, matmul_flops
from attnbench.variants.families.mla import MLA, MLAConfig
from attnbench.variants.families.dsa.indexer import LightningIndexer, selected_keep
from attnbench.variants.families.mla.kernel import MLAKernel, SparseMLAKernel
from attnbench.variants.kernel import Kernel
from attnbench.variants.layer import Step, StepRunner
from attnbench.variants.mask import CAUSAL, AttnMask, MaskFn
from attnbench.variants.registry import register_variant
from attnbench.variants.rope import Rope
from attnbench.variants.shape import AttentionKind, ModelShape, check_positive
from attnbench.variants.variant import VariantSpec

# The dense paths' mask: the selection (a dense keep made in the step), within the causal prefix. Not
# ``plain_causal``: a fused kernel must apply the tensor, not its own causal mask.
SELECTED = MaskFn("causal&indexer_top_k", CAUSAL.mod)


@dataclass(frozen=True)
class DSAConfig(MLAConfig):
    index_heads: int = 64  # H, DeepSeek-V3.2's index_n_heads
    index_head_dim: int = 128  # I
    index_topk: int = 2048  # tokens each query keeps (fewer when it sees fewer)
    index_norm_eps: float = 1e-6  # the indexer key's LayerNorm (transformers' DeepseekV32Indexer.k_norm)

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("index_heads", "index_head_dim", "index_topk"):
            check_positive(name, getattr(self, name))
        if self.q_rank is None:
            raise ValueError("q_rank=None is not allowed for dsa: the indexer's query comes from MLA's compressed "
                             "query, so q_rank must be a positive integer")
        if self.index_head_dim < self.d_r:
            raise ValueError(f"index_head_dim={self.index_head_dim} is not allowed: it must be at least "
                             f"d_r={self.d_r} (the indexer rotates its first d_r dims)")
        if self.rope_heads != 1:
            raise ValueError(f"rope_heads={self.rope_heads} is not allowed for dsa: it must be 1 (one rotary key "
                             "per token, as DeepSeek-V3.2 and its sparse kernels have)")
        if self.attention != "self":
            raise ValueError(f"attention={self.attention!r} is not allowed for dsa: it must be self "
                             "(the indexer ranks a causal prefix)")


class DSA(MLA):
    paths = ("standard", "absorbed", "expanded")

    def __init__(self, config: DSAConfig, *, variant: str = "dsa", rope: Rope | None = None) -> None:
        super().__init__(config, variant=variant, rope=rope)
        self.config: DSAConfig = config
        c = config
        assert self.rope is not None and self.rope.groups in (None, 1), "dsa is self-attention, one rotary key"
        # MLA's frequencies (and YaRN factor), rotated half-split: transformers' indexer takes the
        # same cos/sin as the attention but calls apply_rotary_pos_emb, not the interleaved one.
        index_rope = Rope(c.d_r, layout="half", inv_freq=self.rope.inv_freq.reshape(-1).clone(),
                          scaling=self.rope.scaling)
        assert c.q_rank is not None
        self.indexer = LightningIndexer(hidden=c.hidden, q_rank=c.q_rank, heads=c.index_heads,
                                        head_dim=c.index_head_dim, topk=c.index_topk, rope=index_rope,
                                        norm_eps=c.index_norm_eps)

    # -- cache ----------------------------------------------------------------------------------
    def cache_layout(self, path: str) -> CacheLayout:
        layout = super().cache_layout(path)  # MLA's, already stored as kv_dtype says
        # MLA's [c_kv; k_rope] rows stay one packed buffer; the indexer keys in one of their own beside it.
        index_k = CacheField("index_k", (self.config.index_head_dim,), apart=layout.packed)
        # fp8_e4m3: the indexer keys too, e4m3 with a float32 scale per 128 values (DeepSeek-V3.2 keeps its
        # indexer cache in fp8 likewise): 656 + 132 B per token at DeepSeek-V3.2's shape.
        return CacheLayout((*layout.fields, index_k), packed=layout.packed).stored_as(self.kv_dtype)

    def new_cache(self, *args: Any, **kwargs: Any) -> KVCache:
        cache = super().new_cache(*args, **kwargs)
        self.indexer.rope.reserve(cache.max_len, dtype=self.dtype, device=self.device)
        return cache

    def step_mask(self, *, q_len: int, start: int, cache: KVCache, device: torch.device,
                  dense_causal: bool) -> AttnMask:
        # The selection is the mask, made inside the step from positions: the causal one is never needed
        # as a tensor (a 32k-token prefill would hold a 1 GiB boolean for nothing).
        return super().step_mask(q_len=q_len, start=start, cache=cache, device=device, dense_causal=False)

    def kernel_unsupported(self, kernel: Kernel) -> str | None:
        reason = super().kernel_unsupported(kernel)  # an fp8 cache on a packed-row kernel
        if reason is not None:
            return reason
        if isinstance(kernel, MLAKernel):
            sparse = getattr(kernel, "sparse", None)
            if not isinstance(sparse, SparseMLAKernel):
                return (f"dsa's absorbed path attends on the selected tokens only; the {kernel.name} MLA kernel has "
                        "no sparse counterpart (a SparseMLAKernel taking token indices, as its `sparse`)")
            if sparse.packed_cache != kernel.packed_cache:
                return (f"the {kernel.name} MLA kernel's sparse counterpart reads another cache layout "
                        f"(packed_cache={sparse.packed_cache}, the kernel's {kernel.packed_cache})")
            return None
        if not getattr(kernel, "takes_step_mask", True):
            return (f"dsa's indexer selects the tokens inside the step; the {kernel.name} kernel applies only a mask "
                    "fixed when the step is bound (the dense masked baseline runs with eager or sdpa)")
        return None

    # -- paths ----------------------------------------------------------------------------------
    def step_runner(self, path: str, kernel: Kernel, **options: Any) -> StepRunner:
        reason = self.kernel_unsupported(kernel)
        if reason is not None:
            raise ValueError(reason)
        if path == "absorbed":
            if not isinstance(kernel, MLAKernel):
                raise ValueError(f"the absorbed path needs an MLA kernel (variants.families.mla.kernel.MLAKernel) with a sparse "
                                 f"counterpart; {kernel.name!r} is a q/k/v kernel")
            weights = self.absorbed_weights(fold_o=options["fold_o"])  # once per plan
            sparse: SparseMLAKernel = kernel.sparse  # type: ignore[attr-defined]
            return lambda step: self._sparse(step, sparse, weights)
        assert path in ("standard", "expanded"), path
        dense = self._standard if path == "standard" else self._expanded
        return lambda step: self._dense_masked(step, kernel, dense)

    def _select(self, step: Step, c_q_BLQ: Tensor) -> Tensor:
        """Write the new tokens' indexer keys, then rank every readable row: ``idx_BLK``."""
        if step.kv_x_BMD is not None:
            step.cache.write(step.kv_start, index_k=self.indexer.key(step.kv_x_BMD, step.kv_start))
        assert step.q_start is not None, "dsa is self-attention"
        return self.indexer(step.x_BLD, c_q_BLQ, step.cache.read("index_k", step.kv_len), q_start=step.q_start)

    def _dense_masked(self, step: Step, attend: Kernel,
                      dense: Callable[[Step, Kernel, tuple[Tensor, Tensor]], Tensor]) -> Tensor:
        c_q_BLQ = self._compressed_query(step.x_BLD)
        queries = self._queries(step.x_BLD, step.q_start, c_q_BLQ)
        keep_B1LT = selected_keep(self._select(step, c_q_BLQ), step.kv_len)
        mask = AttnMask(step.mask.q_len, step.kv_len, step.mask.q_offset, keep_B1LT, SELECTED, all_visible=False)
        return dense(dataclasses.replace(step, mask=mask), attend, queries)

    def _sparse(self, step: Step, attend: SparseMLAKernel, weights: dict[str, Tensor]) -> Tensor:
        c_q_BLQ = self._compressed_query(step.x_BLD)
        q_nope_BLNP, q_rope_BLNR = self._queries(step.x_BLD, step.q_start, c_q_BLQ)
        self._write_latent(step)
        idx_BLK = self._select(step, c_q_BLQ)
        q_lat_BLNC = self._absorbed_query(q_nope_BLNP, weights)
        T = step.kv_len
        cache = step.cache
        if (cache.layout.quantized or cache.paged) and idx_BLK.shape[1] == 1:
            # An fp8 cache read whole would be dequantized whole, a paged one gathered whole, O(context):
            # a one-token step gathers (and dequantizes) only its K picked rows, through the block table
            # on a paged cache, and the kernel attends on them in order.
            picks_BK = idx_BLK[:, 0].clamp_min(0).long()
            kv_BKE = cache.gather("packed", picks_BK) if attend.packed_cache else None
            if kv_BKE is not None:
                C = self.config.d_c
                c_kv_BKC, k_rope_BKJ = kv_BKE[..., :C], kv_BKE[..., C:]
            else:
                c_kv_BKC, k_rope_BKJ = cache.gather("c_kv", picks_BK), cache.gather("k_rope", picks_BK)
            K = picks_BK.shape[1]
            local_B1K = torch.arange(K, device=idx_BLK.device).expand_as(idx_BLK)
            local_B1K = torch.where(idx_BLK >= 0, local_B1K, -1).to(idx_BLK.dtype)
            o_lat_BLNC = attend(q_lat_BLNC, q_rope_BLNR, c_kv_BKC, k_rope_BKJ, local_B1K, scale=self.scale,
                                kv_BTE=kv_BKE)
        else:
            kv_BTE = cache.view(T).gather_buffer("packed") if attend.packed_cache else None  # T rows only
            o_lat_BLNC = attend(q_lat_BLNC, q_rope_BLNR, step.cache.read("c_kv", T), step.cache.read("k_rope", T),
                                idx_BLK, scale=self.scale, kv_BTE=kv_BTE)
        return self._absorbed_output(o_lat_BLNC, weights)

    # -- cost, beside the math above ------------------------------------------------------------
    def cost(self, *, path: str, batch: int, q_len: int, cached: int, new_kv: int,
             dtype: torch.dtype | None = None, fold_o: bool = False, packed_cache: bool = False) -> Cost:
        """MLA's cost of the path (its cache bytes already count the indexer key field) plus the
        indexer's; on ``absorbed`` the kernel multiplies K gathered rows per query instead of T,
        and reads only those rows of the latent (at most ``min(cached, L·K)`` per sequence) beside
        every indexer key."""
        c = self.config
        dtype = dtype or self.dtype
        base = super().cost(path=path, batch=batch, q_len=q_len, cached=cached, new_kv=new_kv, dtype=dtype,
                            fold_o=fold_o, packed_cache=packed_cache)
        assert c.q_rank is not None
        layout = self.cache_layout(path)
        row_bytes = {f.name: f.bytes_per_row(dtype) for f in layout.fields}
        index = self.indexer.cost(hidden=c.hidden, q_rank=c.q_rank, batch=batch, q_len=q_len, cached=cached,
                                  new_kv=new_kv, dtype=dtype, key_bytes=row_bytes["index_k"])
        flops, cache_read = base.flops + index.flops, base.cache_read_bytes
        score_elements, transient = base.score_elements, base.transient_bytes + index.transient_bytes
        if path == "absorbed":
            T = cached + new_kv
            K = min(c.index_topk, T)
            qk_dim, v_dim = self.absorbed_widths(packed_cache=packed_cache)
            rows = batch * c.heads * q_len
            # MLA's kernel term over all T keys, replaced by the same over the K selected ones.
            flops += (matmul_flops(rows, qk_dim, K) + matmul_flops(rows, K, v_dim)
                      - matmul_flops(rows, qk_dim, T) - matmul_flops(rows, T, v_dim))
            latent_row = row_bytes["c_kv"] + row_bytes["k_rope"]
            cache_read = batch * min(cached, q_len * K) * latent_row + index.cache_read_bytes
            score_elements = batch * c.heads * q_len * K
            transient += batch * q_len * (K * (latent_row + 8) + c.heads * qk_dim * dtype.itemsize)
        return dataclasses.replace(
            base, flops=flops, weight_bytes=base.weight_bytes + index.weight_bytes, cache_read_bytes=cache_read,
            params=base.params + index.params, score_elements=score_elements, transient_bytes=transient,
            indexer_flops=index.indexer_flops, indexer_bytes=index.indexer_bytes)


def _make(shape: ModelShape, attention: AttentionKind) -> DSA:
    if shape.q_rank is None:
        raise ValueError(f"variant=dsa needs q_rank in the model shape; {shape.name} has none (the indexer's query "
                         "comes from MLA's compressed query; presets with one: deepseek_v32_exp, tiny_dsa)")
    config = DSAConfig(hidden=shape.hidden, heads=shape.heads, d_c=shape.d_c, d_r=shape.d_r,
                       nope_head_dim=shape.nope_head_dim or shape.head_dim,
                       v_head_dim=shape.v_head_dim or shape.head_dim, q_rank=shape.q_rank,
                       rope_theta=shape.rope_theta, rope_layout=shape.rope_layout, attention=attention,
                       index_heads=shape.index_heads, index_head_dim=shape.index_head_dim,
                       index_topk=shape.index_topk, kv_dtype=shape.kv_dtype)
    return DSA(config)


DSA_SPEC = register_variant(VariantSpec(
    "dsa", DSA, "DeepSeek-V3.2 sparse attention: MLA over the tokens a lightning indexer selects", _make,
    ("hidden", "heads", "head_dim", "d_c", "d_r", "q_rank", "nope_head_dim", "v_head_dim", "rope_theta",
     "rope_layout", "index_heads", "index_head_dim", "index_topk", "kv_dtype")))
