"""Multi-head latent attention as DeepSeek-V2 (arXiv 2405.04434, section 2.1) and V3 define it.

Legend: B batch, L new queries, M tokens whose latent a step computes, T visible keys, D hidden,
N heads, Q query rank d_c' (q_lora_rank), C latent d_c (kv_lora_rank), R rotary d_r
(qk_rope_head_dim), G rotary keys per token (rope_heads), J = G·R cached rotary width,
P qk_nope_head_dim (may be 0), V v_head_dim, E key width of a path's attention.

Per token: ``c_kv = RMSNorm(W_DKV x)`` (eq. 9) and ``k_rope = RoPE(W_KR x)`` (eq. 15, one rotary
key shared by all heads) come out of one down-projection ``kv_a_proj`` of width C + R. Heads get
``k_nope = W_UK c_kv`` and ``v = W_UV c_kv`` (eqs. 10-11) from ``kv_b_proj``. Queries: ``q_proj``,
or ``q_b_proj(RMSNorm(q_a_proj x))`` with compression (eqs. 12-13); each head's query splits into
P nope dims and R rotary dims. Softmax scale ``1/sqrt(P + R)`` (eq. 17). Module names follow the
Hugging Face port so that checkpoints map by name.

Kimi Linear's MLA layers (transformers' ``KimiLinearAttention``, config ``mla_use_nope``) are this
layer with ``nope=True``: the same projections, latent and cache (C + R per token), but nothing is
rotated; the R "rope" dims of the query and of the shared key stay position-free (NoPE), so
position reaches the model only through its KDA layers. Kimi Linear has no query compression
(q_lora_rank null) and softmax scale ``1/sqrt(P + R)``, as DeepSeek's.

Two settings generalise DeepSeek's layer for GQA models converted to MLA (``attnbench.variants.convert``):
``rope_heads = G`` caches G rotary keys per token instead of one (query head n uses key
``n // (N / G)``, as GQA's query heads use their kv head; DeepSeek's MLA is G = 1), each group
with its own RoPE frequencies when ``Rope.inv_freq`` is ``[G, R/2]``; and ``latent_norm=False``
drops the RMSNorm on c_kv, which a layer factored from trained K/V projections does not have.

Paths (the cache is the latent ``[c_kv; k_rope_0; ...; k_rope_{G-1}]``, C + G·R values per token
and layer, in all but ``expanded``):
- ``standard``: up-project the whole cached latent to per-head K, V every step, then attend.
- ``absorbed``: ``q_lat = q_nope W_UK`` per head, then an ``MLAKernel`` attends on the latent,
  one key shared by all heads, given q_lat, q_rope and a view of the cache (storage or page pool,
  block table, lengths, fp8 scales: ``attnbench.variants.cache_view``), which the kernel reads as it likes
  (``attnbench.variants.families.mla.kernel.attend_latent``); then W_UV (or W_O·W_UV folded, ``fold_o``).
- ``expanded``: cache per-head K (P + R) and V (V), up-projected once when written.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from attnbench.variants.cache import CacheField, CacheLayout
from attnbench.variants.cache_view import CacheView
from attnbench.variants.cost import Cost, matmul_flops
from attnbench.variants.families.mla.kernel import MLAKernel, attend_latent
from attnbench.variants.kernel import Kernel
from attnbench.variants.layer import AttentionLayer, Step, StepRunner
from attnbench.variants.registry import register_variant
from attnbench.variants.rope import Rope
from attnbench.variants.shape import (
    ATTENTION_KINDS,
    KV_DTYPES,
    AttentionKind,
    KvDtype,
    ModelShape,
    RopeLayout,
    check_choice,
    check_positive,
    divisors,
)
from attnbench.variants.variant import VariantSpec


@dataclass(frozen=True)
class MLAConfig:
    hidden: int  # D
    heads: int  # N
    d_c: int  # C, kv_lora_rank
    d_r: int  # R, qk_rope_head_dim
    nope_head_dim: int  # P, qk_nope_head_dim; 0 when every query/key dim is rotary
    v_head_dim: int  # V
    q_rank: int | None = None  # Q, q_lora_rank; None: plain query projection
    rope_theta: float = 10000.0
    rope_layout: RopeLayout = "interleaved"
    attention: AttentionKind = "self"
    softmax_scale: float | None = None  # None: 1 / sqrt(P + R); YaRN checkpoints scale it further
    attention_bias: bool = False  # bias on q_a_proj, kv_a_proj and o_proj (HF's attention_bias)
    norm_eps: float = 1e-6  # HF's DeepseekV3RMSNorm default, which its attention layer uses
    rope_heads: int = 1  # G rotary keys per token; 1 is DeepSeek's key shared by all heads
    latent_norm: bool = True  # RMSNorm on c_kv (eq. 9); False for layers converted from GQA
    kv_dtype: KvDtype = "auto"  # cache storage: fp8_e4m3 quantizes c_kv, the rotary key stays (FlashMLA)
    nope: bool = False  # Kimi Linear (mla_use_nope): no RoPE, the d_r dims stay unrotated

    def __post_init__(self) -> None:
        check_choice("kv_dtype", self.kv_dtype, KV_DTYPES)
        for name in ("hidden", "heads", "d_c", "d_r", "v_head_dim", "rope_heads"):
            check_positive(name, getattr(self, name))
        check_positive("q_rank", self.q_rank, optional=True)
        P = self.nope_head_dim
        if isinstance(P, bool) or not isinstance(P, int) or P < 0:
            raise ValueError(f"nope_head_dim={P!r} is not allowed: nope_head_dim must be a non-negative integer")
        if self.d_r % 2:
            raise ValueError(f"d_r={self.d_r} is odd; the decoupled RoPE key rotates pairs, so d_r must be even")
        if self.heads % self.rope_heads:
            valid = ", ".join(map(str, divisors(self.heads)))
            raise ValueError(f"rope_heads={self.rope_heads} does not divide heads={self.heads}; "
                             f"valid rope_heads: {valid}")
        check_choice("attention", self.attention, ATTENTION_KINDS)


class MLA(AttentionLayer):
    paths = ("standard", "absorbed", "expanded")

    def __init__(self, config: MLAConfig, *, variant: str = "mla", rope: Rope | None = None) -> None:
        super().__init__()
        c = config
        self.config = c
        self.variant = variant
        self.attention = c.attention
        self.hidden = c.hidden
        self.kv_dtype = c.kv_dtype
        D, N, Q, C, R, P, V = c.hidden, c.heads, c.q_rank, c.d_c, c.d_r, c.nope_head_dim, c.v_head_dim
        J = c.rope_heads * R
        if Q is None:
            self.q_proj: nn.Linear | None = nn.Linear(D, N * (P + R), bias=False)
            self.q_a_proj = self.q_a_norm = self.q_b_proj = None
        else:
            self.q_proj = None
            self.q_a_proj = nn.Linear(D, Q, bias=c.attention_bias)
            self.q_a_norm = nn.RMSNorm(Q, eps=c.norm_eps)
            self.q_b_proj = nn.Linear(Q, N * (P + R), bias=False)
        self.kv_a_proj = nn.Linear(D, C + J, bias=c.attention_bias)
        self.kv_a_norm: nn.RMSNorm | None = nn.RMSNorm(C, eps=c.norm_eps) if c.latent_norm else None
        self.kv_b_proj = nn.Linear(C, N * (P + V), bias=False)
        self.o_proj = nn.Linear(N * V, D, bias=c.attention_bias)
        # Cross-attention rotates nothing (queries and memory are different sequences), nor does a
        # NoPE layer (Kimi Linear); the d_r columns stay, unrotated, so the cache and the cost keep MLA's shape.
        if rope is not None and c.nope:
            raise ValueError("a NoPE MLA layer (nope=True) rotates nothing; pass no rope")
        self.rope: Rope | None = (rope or Rope(R, theta=c.rope_theta, layout=c.rope_layout)) \
            if c.attention == "self" and not c.nope else None
        if self.rope is not None and self.rope.groups not in (None, c.rope_heads):
            raise ValueError(f"the rope has frequencies for {self.rope.groups} head groups; "
                             f"rope_heads={c.rope_heads} needs [{c.rope_heads}, {R // 2}] or [{R // 2}]")
        self.scale = c.softmax_scale if c.softmax_scale is not None else (P + R) ** -0.5

    # -- cache ----------------------------------------------------------------------------------
    def cache_layout(self, path: str) -> CacheLayout:
        c = self.config
        if path == "expanded":
            return CacheLayout((CacheField("k", (c.heads, c.nope_head_dim + c.d_r)),
                                CacheField("v", (c.heads, c.v_head_dim)))).stored_as(self.kv_dtype)
        assert path in ("standard", "absorbed")
        # c_kv first, then the G rotary keys, in one buffer: FlashMLA's layout, which absorbed_sdpa
        # reads as one key. The eager MLA kernel reads c_kv and k_rope as strided views of it, as
        # fast as from two buffers (DeepSeek-V2-Lite, float32, one thread, 32k keys: scores 19.9 ms
        # from views vs 20.8 from two buffers, values 13.0 vs 13.4; 4k: 2.0 vs 2.1, 1.5 vs 1.5).
        # With kv_dtype=fp8_e4m3, FlashMLA's layout: c_kv as e4m3 with a scale per 128 values, the
        # rotary key in the compute dtype (512 + 4·4 + 64·2 = 656 B per token at DeepSeek-V3's shape).
        return CacheLayout((CacheField("c_kv", (c.d_c,)),
                            CacheField("k_rope", (c.rope_heads * c.d_r,), quantize=False)),
                           packed=True).stored_as(self.kv_dtype)

    # -- shared pieces of every path ---------------------------------------------------------------
    def _compressed_query(self, x_BLD: Tensor) -> Tensor:
        """``c_q = RMSNorm(W_DQ x)`` (eq. 12), the compressed query; only with query compression."""
        assert self.q_a_proj is not None and self.q_a_norm is not None, "this layer has no query compression"
        return self.q_a_norm(self.q_a_proj(x_BLD))

    def _queries(self, x_BLD: Tensor, q_start: int | Tensor | None,
                 c_q_BLQ: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Per-head nope and rotated rope queries; ``c_q_BLQ``: the compressed query, if already made."""
        c = self.config
        B, L, _ = x_BLD.shape
        if self.q_proj is not None:
            q_BLX = self.q_proj(x_BLD)
        else:
            q_BLX = self.q_b_proj(self._compressed_query(x_BLD) if c_q_BLQ is None else c_q_BLQ)
        q_BLNE = q_BLX.view(B, L, c.heads, c.nope_head_dim + c.d_r)
        q_nope_BLNP, q_rope_BLNR = q_BLNE.split([c.nope_head_dim, c.d_r], dim=-1)
        if self.rope is not None:
            q_rope_BLNR = self.rope(q_rope_BLNR, q_start)
        return q_nope_BLNP, q_rope_BLNR

    def _latent(self, x_BMD: Tensor, start: int) -> tuple[Tensor, Tensor]:
        c = self.config
        c_kv_BMC, k_rope_BMJ = self.kv_a_proj(x_BMD).split([c.d_c, c.rope_heads * c.d_r], dim=-1)
        if self.kv_a_norm is not None:
            c_kv_BMC = self.kv_a_norm(c_kv_BMC)
        if self.rope is not None:
            k_rope_BMJ = self.rope(k_rope_BMJ.unflatten(-1, (c.rope_heads, c.d_r)), start).flatten(-2)
        return c_kv_BMC, k_rope_BMJ

    def _up_project(self, c_kv_BTC: Tensor) -> tuple[Tensor, Tensor]:
        c = self.config
        B, T, _ = c_kv_BTC.shape
        kv_BTNX = self.kv_b_proj(c_kv_BTC).view(B, T, c.heads, c.nope_head_dim + c.v_head_dim)
        k_nope_BTNP, v_BTNV = kv_BTNX.split([c.nope_head_dim, c.v_head_dim], dim=-1)
        return k_nope_BTNP, v_BTNV

    def _heads_key(self, k_nope_BTNP: Tensor, k_rope_BTJ: Tensor) -> Tensor:
        B, T, N, _ = k_nope_BTNP.shape
        G, R = self.config.rope_heads, self.config.d_r
        # DeepSeek-V2 eq. 16: every head's key ends with the shared rotary key (of its group when G > 1).
        k_rope_BTGnR = k_rope_BTJ.unflatten(-1, (G, 1, R)).expand(B, T, G, N // G, R)
        return torch.cat((k_nope_BTNP, k_rope_BTGnR.reshape(B, T, N, R)), dim=-1)

    def _write_latent(self, step: Step) -> None:
        if step.kv_x_BMD is not None:
            c_kv_BMC, k_rope_BMJ = self._latent(step.kv_x_BMD, step.kv_start)
            step.cache.write(step.kv_start, c_kv=c_kv_BMC, k_rope=k_rope_BMJ)

    def _output(self, o_BLNV: Tensor) -> Tensor:
        B, L, N, V = o_BLNV.shape
        return self.o_proj(o_BLNV.reshape(B, L, N * V))

    # -- paths ----------------------------------------------------------------------------------
    def step_runner(self, path: str, kernel: Kernel, **options: Any) -> StepRunner:
        if path == "standard":
            return lambda step: self._standard(step, kernel)
        if path == "expanded":
            return lambda step: self._expanded(step, kernel)
        assert path == "absorbed"
        if not isinstance(kernel, MLAKernel):
            raise ValueError(f"the absorbed path needs an MLA kernel (variants.families.mla.kernel.MLAKernel) that takes "
                             f"q_lat, q_rope, c_kv and k_rope; {kernel.name!r} is a q/k/v kernel")
        # Once per plan: a decode loop that keeps its plan never rebuilds these.
        weights = self.absorbed_weights(fold_o=options["fold_o"])
        return lambda step: self._absorbed(step, kernel, weights)

    def _standard(self, step: Step, attend: Kernel, queries: tuple[Tensor, Tensor] | None = None) -> Tensor:
        q_nope_BLNP, q_rope_BLNR = self._queries(step.x_BLD, step.q_start) if queries is None else queries
        self._write_latent(step)
        k_nope_BTNP, v_BTNV = self._up_project(step.cache.read("c_kv", step.kv_len))
        k_BTNE = self._heads_key(k_nope_BTNP, step.cache.read("k_rope", step.kv_len))
        q_BLNE = torch.cat((q_nope_BLNP, q_rope_BLNR), dim=-1)
        return self._output(attend(q_BLNE, k_BTNE, v_BTNV, scale=self.scale, mask=step.mask))

    def _expanded(self, step: Step, attend: Kernel, queries: tuple[Tensor, Tensor] | None = None) -> Tensor:
        q_nope_BLNP, q_rope_BLNR = self._queries(step.x_BLD, step.q_start) if queries is None else queries
        if step.kv_x_BMD is not None:
            c_kv_BMC, k_rope_BMJ = self._latent(step.kv_x_BMD, step.kv_start)
            k_nope_BMNP, v_BMNV = self._up_project(c_kv_BMC)
            step.cache.write(step.kv_start, k=self._heads_key(k_nope_BMNP, k_rope_BMJ), v=v_BMNV)
        q_BLNE = torch.cat((q_nope_BLNP, q_rope_BLNR), dim=-1)
        o_BLNV = attend(q_BLNE, step.cache.read("k", step.kv_len), step.cache.read("v", step.kv_len),
                        scale=self.scale, mask=step.mask)
        return self._output(o_BLNV)

    def absorbed_weights(self, *, fold_o: bool) -> dict[str, Tensor]:
        """W_UK ``[N, P, C]`` and W_UV ``[N, V, C]`` (views of kv_b_proj), and with ``fold_o`` the
        product ``W_O·W_UV`` as ``[D, N·C]``. Computed once per plan, never inside a step."""
        c = self.config
        N, C, P, V, D = c.heads, c.d_c, c.nope_head_dim, c.v_head_dim, c.hidden
        with torch.no_grad():
            w_NXC = self.kv_b_proj.weight.view(N, P + V, C)
            weights = {"w_uk_NPC": w_NXC[:, :P].contiguous(), "w_uv_NVC": w_NXC[:, P:].contiguous()}
            if fold_o:
                w_o_DNV = self.o_proj.weight.view(D, N, V)
                weights["w_ouv_DX"] = torch.einsum("dnv,nvc->dnc", w_o_DNV, weights["w_uv_NVC"]).reshape(D, N * C)
        return weights

    def _absorbed(self, step: Step, attend: MLAKernel, weights: dict[str, Tensor]) -> Tensor:
        q_nope_BLNP, q_rope_BLNR = self._queries(step.x_BLD, step.q_start)
        self._write_latent(step)
        q_lat_BLNC = self._absorbed_query(q_nope_BLNP, weights)
        # The kernel gets the cache where it lies (storage or page pool, block table, lengths, scales)
        # and decides how to read it; nothing is gathered for it here.
        o_lat_BLNC = attend_latent(attend, q_lat_BLNC, q_rope_BLNR, self._cache_view(step),
                                   scale=self.scale, mask=step.mask)
        return self._absorbed_output(o_lat_BLNC, weights)

    @staticmethod
    def _cache_view(step: Step) -> CacheView:
        """The step's view of the cache: rows [0, kv_len), each sequence's own length in a ragged step."""
        ragged = isinstance(step.kv_start, Tensor)
        seq_lens_B = (step.kv_start + step.x_BLD.shape[1]).to(torch.int32) if ragged else None
        return step.cache.view(step.kv_len, seq_lens_B)

    def _absorbed_query(self, q_nope_BLNP: Tensor, weights: dict[str, Tensor]) -> Tensor:
        # DeepSeek-V2 eq. 10 absorbed: q_nope . (W_UK c_kv) = (q_nope W_UK) . c_kv per head. A bmm over
        # the heads, not einsum: the same product, ~60 us less per call in a decode step (V2-Lite, one thread).
        B, L, N, P = q_nope_BLNP.shape
        q_lat_NMC = torch.bmm(q_nope_BLNP.reshape(B * L, N, P).transpose(0, 1), weights["w_uk_NPC"])
        return q_lat_NMC.transpose(0, 1).view(B, L, N, -1)

    def _absorbed_output(self, o_lat_BLNC: Tensor, weights: dict[str, Tensor]) -> Tensor:
        """W_UV then W_O on the latent output (eq. 11 absorbed), or the folded W_O·W_UV."""
        B, L, N, C = o_lat_BLNC.shape
        if "w_ouv_DX" in weights:
            return F.linear(o_lat_BLNC.reshape(B, L, N * C), weights["w_ouv_DX"], self.o_proj.bias)
        o_NMV = torch.bmm(o_lat_BLNC.reshape(B * L, N, C).transpose(0, 1), weights["w_uv_NVC"].transpose(1, 2))
        return self._output(o_NMV.transpose(0, 1).view(B, L, N, -1))

    # -- cost, beside the math above ------------------------------------------------------------
    def absorbed_widths(self, *, packed_cache: bool, packed_value: bool | None = None) -> tuple[int, int]:
        """Key and value widths the absorbed path's kernel multiplies: on the packed rows (both
        C + J, the zero-padded rotary slots included), or on the pieces (C + R per score, value C).
        ``packed_value=False`` with ``packed_cache``: a kernel that scores the packed rows but takes
        only their first C columns as the value (``absorbed_native``'s decode)."""
        c = self.config
        J = c.rope_heads * c.d_r
        packed_value = packed_cache if packed_value is None else packed_value
        return (c.d_c + J if packed_cache else c.d_c + c.d_r), (c.d_c + J if packed_value else c.d_c)

    def params_by_module(self) -> dict[str, int]:
        return {name: sum(p.numel() for p in module.parameters())
                for name, module in self.named_children() if isinstance(module, (nn.Linear, nn.RMSNorm))}

    def cost(self, *, path: str, batch: int, q_len: int, cached: int, new_kv: int,
             dtype: torch.dtype | None = None, fold_o: bool = False, packed_cache: bool = False,
             packed_value: bool | None = None) -> Cost:
        c = self.config
        b = (dtype or self.dtype).itemsize
        B, L, S, W = batch, q_len, cached, new_kv
        T = S + W
        D, N, Q, C, R, P, V = c.hidden, c.heads, c.q_rank, c.d_c, c.d_r, c.nope_head_dim, c.v_head_dim
        J = c.rope_heads * R
        if Q is None:
            q_flops = matmul_flops(B * L, D, N * (P + R))
        else:
            q_flops = matmul_flops(B * L, D, Q) + matmul_flops(B * L, Q, N * (P + R))
        latent_flops = matmul_flops(B * W, D, C + J)  # kv_a_proj on the new tokens
        o_flops = matmul_flops(B * L, N * V, D)
        absorbed_qk, absorbed_v = self.absorbed_widths(packed_cache=packed_cache, packed_value=packed_value)
        if path == "standard":
            path_flops = (matmul_flops(B * T, C, N * (P + V))  # re-expand the whole cache
                          + matmul_flops(B * N * L, P + R, T) + matmul_flops(B * N * L, T, V) + o_flops)
        elif path == "expanded":
            path_flops = (matmul_flops(B * W, C, N * (P + V))  # expand only the new entries
                          + matmul_flops(B * N * L, P + R, T) + matmul_flops(B * N * L, T, V) + o_flops)
        else:
            assert path == "absorbed"
            path_flops = (matmul_flops(B * L * N, P, C)  # q_nope W_UK
                          + matmul_flops(B * N * L, absorbed_qk, T) + matmul_flops(B * N * L, T, absorbed_v))
            path_flops += matmul_flops(B * L, N * C, D) if fold_o else matmul_flops(B * L * N, C, V) + o_flops

        sizes = self.params_by_module()
        read = sizes["q_proj"] if Q is None else sizes["q_a_proj"] + sizes["q_a_norm"] + sizes["q_b_proj"]
        if W:
            read += sizes["kv_a_proj"] + sizes.get("kv_a_norm", 0)
        if path == "absorbed" and fold_o:
            # W_UK, and W_O·W_UV in place of W_UV and W_O.
            read += N * P * C + D * N * C + (D if c.attention_bias else 0)
        elif path == "expanded":
            read += (sizes["kv_b_proj"] if W else 0) + sizes["o_proj"]
        else:
            read += sizes["kv_b_proj"] + sizes["o_proj"]
        kv_bytes = self.kv_bytes_per_token(path, dtype)
        memory_in = W if self.attention == "cross" else 0
        if path == "absorbed":
            qk_dim, v_dim = absorbed_qk, absorbed_v
            if packed_cache and absorbed_v == C:
                transient = B * L * N * (3 * C + J + V)  # q_lat, padded q, o_lat, o
            elif packed_cache:
                transient = B * L * N * (2 * (C + J) + C + V)  # q_lat, padded q, o_lat, o
            else:
                transient = B * L * N * (3 * C + R + V)  # q_lat, scaled q_lat and q_rope, o_lat, o
            transient += D * N * C if fold_o else 0  # the folded W_O·W_UV, made at set-up
        else:
            qk_dim, v_dim = P + R, V
            expanded_tokens = T if path == "standard" else W  # standard re-expands the whole cache
            transient = B * expanded_tokens * N * (2 * (P + R) + 2 * V) + B * L * N * (P + R + V)
        return Cost(
            flops=q_flops + latent_flops + path_flops,
            weight_bytes=read * b,
            cache_read_bytes=B * S * kv_bytes,
            cache_write_bytes=B * W * kv_bytes,
            activation_bytes=B * (2 * L + memory_in) * D * b,
            params=sum(sizes.values()),
            kv_bytes_per_token=kv_bytes,
            score_elements=B * N * L * T, qk_dim=qk_dim, v_dim=v_dim,
            transient_bytes=(transient + B * W * (C + R) + B * L * D) * b,
        )


def _make(shape: ModelShape, attention: AttentionKind) -> MLA:
    config = MLAConfig(hidden=shape.hidden, heads=shape.heads, d_c=shape.d_c, d_r=shape.d_r,
                       nope_head_dim=shape.nope_head_dim or shape.head_dim,
                       v_head_dim=shape.v_head_dim or shape.head_dim, q_rank=shape.q_rank,
                       rope_theta=shape.rope_theta, rope_layout=shape.rope_layout, attention=attention,
                       kv_dtype=shape.kv_dtype, nope=shape.mla_use_nope)
    return MLA(config)


MLA_SPEC = register_variant(VariantSpec(
    "mla", MLA, "multi-head latent attention (DeepSeek-V2/V3)", _make,
    ("hidden", "heads", "head_dim", "d_c", "d_r", "q_rank", "nope_head_dim", "v_head_dim",
     "rope_theta", "rope_layout", "kv_dtype", "mla_use_nope")))
