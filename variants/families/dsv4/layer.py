"""DeepSeek-V4's attention: one K = V head in a sliding window with sinks, beside compressed entries.

Legend: B batch, L new queries, D hidden, N query heads, H head dim (the one key/value head and each
query head), R rotary dims (the trailing R of a head), Q query rank, W window, T keys the kernel
reads (window rows, then entries), S compressed entries, k selected entries, m tokens per entry,
J indexer heads, I indexer head dim, G output groups, O rank per group, F = R/2.

Every layer (DeepSeek-V4 technical report, section 2.3; transformers 5.23's ``DeepseekV4Attention``
is the executable spec): ``q_residual = RMSNorm(x·W_qa)``, ``q = q_residual·W_qb`` as N heads of H,
an unweighted RMSNorm per head, then RoPE on each head's trailing R dims (interleaved pairs). One
key that is also the value (MQA, K = V): ``kv = RMSNorm(x·W_kv)``, rotated alike. The window: the
last W tokens' kv (the query's own included), a ring cache. One learned sink logit per head (an
extra softmax column with no value, as gpt-oss). The softmax runs over ``[window keys ; the layer's
compressed entries]`` plus the sink, scale ``H^-1/2``; the output's rotary dims are rotated back
(RoPE at -position: V = K carried the rotation), then the grouped output projection: the heads in
G groups, each group's ``N·H/G`` values to rank O (block-diagonal ``o_a_proj``), then ``o_b_proj``.

Layer kinds (``ModelShape.layer_pattern`` letters): ``S`` window only (RoPE base ``rope_theta``);
``H``, HCA: one entry per ``hca_rate`` = 128 tokens, every query attends to all closed ones (dense,
its design); ``C``, CSA: one entry per ``csa_rate`` = 4 tokens over overlapping windows, and a
lightning indexer picks the ``index_topk`` = 512 each query attends to (``attnbench.variants.families.
dsv4_compressor``). C and H layers, their compressors and indexer rotate with ``compress_rope_theta``.
Variant ``csa`` builds a C layer, ``hca`` an H layer; the schedule builds the model's mix.

Steps. A one-token decode step is truly sparse: CSA's indexer scans the S entries' indexer keys
(linear in the context / 4, reported apart as ``Cost.indexer_*``), then the step gathers the k
selected entries (a copy of k rows) and attends over ``[window ; gathered]``: its attention costs
the same at any context past k entries. HCA attends over its S entries. A step of more than one
query (prefill, a multi-token decode) attends in a dense masked form: ``[window keys ; all S
entries]``, each query's row masked to the entries visible to it (CSA: and selected for it), which
gives the same result. The kernel gets one key tensor, so the window rows and the entries are
concatenated (one copy of the keys the step reads; a fused sparse kernel, FlashMLA's sparse decode,
reads the rows by index instead).

Cache per token and layer (``cache_layout``; growth in the long run): CSA ``H/4 + I/4`` = 160
elements (320 B in bf16) at V4's shape, HCA ``H/128`` = 4 (8 B); beside them the fixed window
``W·H`` and the compressors' open-window state (``[kv; gate]`` rings: HCA ``2·128·H``, CSA
``6·4·(H + I)``).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch._subclasses.fake_tensor import is_fake

from attnbench.variants.cache import CacheField, CacheLayout, KVCache
from attnbench.variants.cost import Cost, matmul_flops
from attnbench.variants.families.dsv4.compressor import (Compressor, Indexer, compressor_fields, rotate_tail_,
                                                         select_topk)
from attnbench.variants.families.swa import ring_positions
from attnbench.variants.kernel import Kernel
from attnbench.variants.layer import AttentionLayer, Phase, Step, StepRunner
from attnbench.variants.mask import AttnMask, causal_window, dense
from attnbench.variants.registry import register_variant
from attnbench.variants.rope import Rope
from attnbench.variants.shape import (
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

KINDS: dict[str, str] = {"S": "window only", "C": "window + CSA", "H": "window + HCA"}
VARIANT_OF_KIND = {"C": "csa", "H": "hca", "S": "dsv4_window"}  # S layers are not a registered variant
_PAIR = 2  # a compressor's state keeps a token's kv and gate


@dataclass(frozen=True)
class DSV4Config:
    hidden: int  # D
    heads: int  # N
    head_dim: int  # H (512 at V4-Flash)
    q_rank: int  # Q, q_lora_rank
    rope_dim: int  # R, qk_rope_head_dim: the trailing dims of each head that RoPE rotates
    kind: str = "C"  # one of KINDS
    window: int = 128  # W
    csa_rate: int = 4
    hca_rate: int = 128
    index_heads: int = 64  # J
    index_head_dim: int = 128  # I
    index_topk: int = 512
    o_groups: int = 8  # G
    o_rank: int = 1024  # O
    rope_theta: float = 10000.0  # window-only layers
    compress_rope_theta: float = 160000.0  # CSA and HCA layers, their compressors and indexer
    rope_layout: RopeLayout = "interleaved"
    learned_sinks: bool = True
    norm_eps: float = 1e-6
    attention: AttentionKind = "self"
    kv_dtype: KvDtype = "auto"  # the window's K = V rows and the entries; the open windows' state stays

    def __post_init__(self) -> None:
        check_choice("kind", self.kind, tuple(KINDS))
        check_choice("kv_dtype", self.kv_dtype, KV_DTYPES)
        for name in ("hidden", "heads", "head_dim", "q_rank", "rope_dim", "window", "csa_rate", "hca_rate",
                     "index_heads", "index_head_dim", "index_topk", "o_groups", "o_rank"):
            check_positive(name, getattr(self, name))
        if self.attention != "self":
            raise ValueError(f"attention={self.attention!r} is not allowed for DeepSeek-V4 attention: it must be self")
        if self.rope_dim % 2 or self.rope_dim > self.head_dim:
            raise ValueError(f"d_r={self.rope_dim} is not allowed: RoPE rotates pairs of a head's trailing dims, so "
                             f"d_r must be even and at most head_dim={self.head_dim}")
        if self.kind == "C" and self.rope_dim > self.index_head_dim:
            raise ValueError(f"d_r={self.rope_dim} is not allowed: the indexer rotates its heads' trailing d_r dims, "
                             f"so d_r must be at most index_head_dim={self.index_head_dim}")
        if self.heads % self.o_groups:
            valid = ", ".join(map(str, divisors(self.heads)))
            raise ValueError(f"o_groups={self.o_groups} does not divide heads={self.heads}; valid o_groups: {valid}")
        name = {"C": "csa_rate", "H": "hca_rate"}.get(self.kind)
        if name is not None and self.window % getattr(self, name):
            valid = ", ".join(map(str, divisors(self.window)))
            raise ValueError(f"{name}={getattr(self, name)} does not divide the window sliding_window={self.window}; "
                             f"valid {name}: {valid}")
        for name in ("rope_theta", "compress_rope_theta", "norm_eps"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name}={getattr(self, name)!r} is not allowed: it must be positive")

    @property
    def rate(self) -> int | None:
        """Tokens per compressed entry; None for a window-only layer."""
        return {"C": self.csa_rate, "H": self.hca_rate}.get(self.kind)


def cache_layout_of(c: DSV4Config) -> CacheLayout:
    """The ring of the window's K = V rows; the entries and open-window state of the compressor; the
    indexer's keys and state (CSA)."""
    # rope: the head's trailing rotary dims, which kv_dtype=fp8_model1 keeps in bf16 (FlashMLA's MODEL1).
    fields: tuple[CacheField, ...] = (CacheField("window", (c.head_dim,), ring=c.window, rope=c.rope_dim),)
    if c.rate is not None:
        fields += compressor_fields(c.head_dim, c.rate, overlap=c.kind == "C", rope=c.rope_dim)
    if c.kind == "C":
        fields += compressor_fields(c.index_head_dim, c.csa_rate, overlap=True, prefix="index_")
    return CacheLayout(fields).stored_as(c.kv_dtype)


class GroupedLinear(nn.Module):
    """Block-diagonal projection: group g's ``width`` inputs through its own ``[rank, width]`` block
    (V4's ``o_a_proj``; the weight ``[G·O, width]``, group g in rows ``[g·O, (g+1)·O)``)."""

    def __init__(self, groups: int, width: int, rank: int) -> None:
        super().__init__()
        self.groups, self.width, self.rank = groups, width, rank
        self.weight = nn.Parameter(torch.empty(groups * rank, width))
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))  # nn.Linear's default, per block

    def forward(self, x_BLGW: Tensor) -> Tensor:
        return torch.einsum("blgw,gow->blgo", x_BLGW, self.weight.view(self.groups, self.rank, self.width))


class DSV4(AttentionLayer):
    paths = ("standard",)

    def __init__(self, config: DSV4Config, *, variant: str | None = None, rope: Rope | None = None) -> None:
        super().__init__()
        c = config
        self.config = c
        self.variant = variant or VARIANT_OF_KIND[c.kind]
        self.attention = "self"
        self.hidden = c.hidden
        self.kv_dtype = c.kv_dtype
        D, N, H, Q, G, O = c.hidden, c.heads, c.head_dim, c.q_rank, c.o_groups, c.o_rank
        self.q_a_proj = nn.Linear(D, Q, bias=False)
        self.q_a_norm = nn.RMSNorm(Q, eps=c.norm_eps)
        self.q_b_proj = nn.Linear(Q, N * H, bias=False)
        self.kv_proj = nn.Linear(D, H, bias=False)
        self.kv_norm = nn.RMSNorm(H, eps=c.norm_eps)
        self.o_a_proj = GroupedLinear(G, N * H // G, O)
        self.o_b_proj = nn.Linear(G * O, D, bias=False)
        # transformers initialises the sinks to zeros (checkpoints carry trained values).
        self.sinks = nn.Parameter(torch.zeros(N)) if c.learned_sinks else None
        self.compressor = Compressor(D, H, c.rate, overlap=c.kind == "C", eps=c.norm_eps) if c.rate else None
        self.indexer = Indexer(D, Q, heads=c.index_heads, dim=c.index_head_dim, rate=c.csa_rate,
                               eps=c.norm_eps) if c.kind == "C" else None
        theta = c.rope_theta if c.kind == "S" else c.compress_rope_theta
        self.rope = rope or Rope(c.rope_dim, theta=theta, layout=c.rope_layout)
        if self.rope.rotary_dim != c.rope_dim or self.rope.groups is not None:
            raise ValueError(f"the rope rotates {self.rope.rotary_dim} dims; d_r={c.rope_dim} needs one "
                             f"[{c.rope_dim // 2}] frequency table")
        self.scale = H ** -0.5

    def cache_layout(self, path: str) -> CacheLayout:
        assert path in self.paths
        return cache_layout_of(dataclasses.replace(self.config, kv_dtype=self.kv_dtype))

    def kernel_unsupported(self, kernel: Kernel) -> str | None:
        if self.sinks is not None and not getattr(kernel, "learned_sinks", False):
            return (f"learned sinks need a kernel that applies them; the {kernel.name} kernel does not "
                    "(implementations that do: eager)")
        if not getattr(kernel, "takes_step_mask", True):
            return (f"{self.variant} masks each query's compressed entries in the step (the indexer's picks, "
                    f"the windows closed so far); the {kernel.name} kernel takes only a mask built at set-up")
        return None

    # -- steps ------------------------------------------------------------------------------------
    def _make_step(self, phase: Phase, x_BLD: Tensor, cache: KVCache, memory_BMD: Tensor | None,
                   kernel: Kernel) -> Step:
        if cache.seq_lens is not None and phase == "decode":
            raise ValueError(f"seq_lens={cache.seq_lens}: {self.variant} decodes uniform batches only (its window "
                             "ring and compressor state follow one position for the batch); leave seq_lens unset")
        return super()._make_step(phase, x_BLD, cache, memory_BMD, kernel)

    def _window_positions(self, start: int, L: int, rows: int, device: torch.device) -> Tensor:
        """Absolute position of each window key the kernel reads (-1: a ring row never written)."""
        if L == 1:  # the ring after the step wrote its row
            return ring_positions(start, rows=rows, sinks=0, device=device)[:min(start + 1, rows)]
        new_L = torch.arange(start, start + L, device=device)
        if start == 0:
            return new_L
        old = ring_positions(start - 1, rows=rows, sinks=0, device=device)[:min(start, rows)]
        return torch.cat([old, new_L])  # the ring before the step, then the step's own keys

    def _entries_read(self, start: int, L: int) -> int:
        """Compressed entries the kernel reads: the k gathered (a one-token CSA step), else every closed one."""
        c = self.config
        if c.rate is None:
            return 0
        closed = (start + L) // c.rate
        return min(c.index_topk, closed) if c.kind == "C" and L == 1 else closed

    def step_mask(self, *, q_len: int, start: int, cache: KVCache, device: torch.device,
                  dense_causal: bool) -> AttnMask:
        """Which of ``[window keys ; entries]`` each query sees, from positions alone (set-up): the window,
        and the entries whose window has closed (``s < (t + 1) // m``). CSA's multi-token steps add
        the indexer's picks in the step; a one-token step's gathered entries are all visible."""
        c = self.config
        fn = causal_window(c.window)
        q_pos_L = torch.arange(start, start + q_len, device=device)
        keep_LT = dense(fn, q_pos_L, self._window_positions(start, q_len, cache.rows_of("window"), device))
        entries = self._entries_read(start, q_len)
        if entries:
            if c.kind == "C" and q_len == 1:
                seen_LS = torch.ones(1, entries, dtype=torch.bool, device=device)
            else:
                seen_LS = torch.arange(entries, device=device).unsqueeze(0) < ((q_pos_L + 1) // c.rate).unsqueeze(1)
            keep_LT = torch.cat([keep_LT, seen_LS], dim=1)
        # Fake tensors (the harness's memory dry run) hold no values: keep the dense mask.
        visible = False if is_fake(keep_LT) else bool(keep_LT.all())
        return AttnMask(q_len, keep_LT.shape[1], start, None if visible else keep_LT, fn, None, visible)

    def step_runner(self, path: str, kernel: Kernel, **options: Any) -> StepRunner:
        assert path == "standard" and not options
        reason = self.kernel_unsupported(kernel)
        if reason is not None:
            raise ValueError(reason)
        return lambda step: self._step(step, kernel)

    def _step(self, step: Step, attend: Kernel) -> Tensor:
        c = self.config
        x_BLD, cache, start = step.x_BLD, step.cache, step.kv_start
        assert isinstance(start, int), "a DeepSeek-V4 cache is not ragged"
        B, L, _ = x_BLD.shape
        N, H = c.heads, c.head_dim
        cos_LF, sin_LF = self.rope.table(start, L)
        q_residual_BLQ = self.q_a_norm(self.q_a_proj(x_BLD))
        q_BLNH = F.rms_norm(self.q_b_proj(q_residual_BLQ).view(B, L, N, H), (H,), eps=c.norm_eps)
        q_BLNH = rotate_tail_(q_BLNH, cos_LF, sin_LF, self.rope)
        kv_BLH = rotate_tail_(self.kv_norm(self.kv_proj(x_BLD)), cos_LF, sin_LF, self.rope)
        keys = [self._window(cache, kv_BLH, start)]
        mask = step.mask
        if self.compressor is not None:
            self.compressor.advance(x_BLD, start, cache, self.rope)
            closed = (start + L) // c.rate
            entries_BSH: Tensor | None = None
            if self.indexer is not None:
                self.indexer.compressor.advance(x_BLD, start, cache, self.rope, prefix="index_")
                if closed:
                    scores_BLS = self.indexer.scores(x_BLD, q_residual_BLQ, cache.read("index_entries", closed),
                                                     cos_LF, sin_LF, self.rope)
                    picks_BLk, valid_BLk = select_topk(scores_BLS, k=c.index_topk, rate=c.rate, start=start)
                    if L == 1:  # truly sparse: gather the k picked rows
                        entries_BSH = cache.gather("entries", picks_BLk[:, 0])
                    else:
                        mask = self._picked(mask, picks_BLk, valid_BLk, keys[0].shape[1], closed)
            # Read every closed entry only when nothing was gathered: on an fp8 or paged cache a read
            # dequantizes or gathers all of them, O(context) work the one-token CSA step must not do.
            keys.append(entries_BSH if entries_BSH is not None else cache.read("entries", closed))
        k_BTH = torch.cat(keys, dim=1) if len(keys) > 1 else keys[0]
        k_BT1H = k_BTH.unsqueeze(2)
        if self.sinks is None:
            o_BLNH = attend(q_BLNH, k_BT1H, k_BT1H, scale=self.scale, mask=mask)
        else:
            o_BLNH = attend(q_BLNH, k_BT1H, k_BT1H, scale=self.scale, mask=mask, sinks_N=self.sinks)
        o_BLNH = rotate_tail_(o_BLNH, cos_LF, -sin_LF, self.rope)  # RoPE at -position
        G = c.o_groups
        return self.o_b_proj(self.o_a_proj(o_BLNH.reshape(B, L, G, N * H // G)).flatten(2))

    def _window(self, cache: KVCache, kv_BLH: Tensor, start: int) -> Tensor:
        """Write the step's keys to the ring; return the window keys the kernel reads."""
        rows, L = cache.rows_of("window"), kv_BLH.shape[1]
        if L == 1:
            cache.write(start % rows, window=kv_BLH)
            return cache.read("window", min(start + 1, rows))
        keys_BTH = torch.cat([cache.read("window", min(start, rows)), kv_BLH], dim=1) if start else kv_BLH
        kept = min(L, rows)
        rows_K = torch.arange(start + L - kept, start + L, device=kv_BLH.device) % rows
        cache.write_rows(rows_K, window=kv_BLH[:, L - kept:])
        return keys_BTH

    def _picked(self, mask: AttnMask, picks_BLk: Tensor, valid_BLk: Tensor, window: int, closed: int) -> AttnMask:
        """The dense mask with each query's entries narrowed to the indexer's visible picks."""
        B, L, _ = picks_BLk.shape
        picked_BLS = torch.zeros(B, L, closed, dtype=torch.bool, device=picks_BLk.device)
        picked_BLS.scatter_(-1, picks_BLk, valid_BLk)
        keep_BLT = torch.cat([picked_BLS.new_ones(B, L, window), picked_BLS], dim=-1)
        if mask.keep_LT is not None:
            keep_BLT &= mask.keep_LT
        return AttnMask(L, keep_BLT.shape[-1], mask.q_offset, keep_BLT.unsqueeze(1), mask.fn, None, False)

    # -- cost, beside the math above ------------------------------------------------------------------
    def cost(self, *, path: str, batch: int, q_len: int, cached: int, new_kv: int,
             dtype: torch.dtype | None = None, **options: Any) -> Cost:
        """What ``_step`` runs: FLOPs of its matmuls, and the minimum bytes: every weight it reads once,
        the cache rows it reads (window rows from before the step, the entries the kernel or the
        indexer reads, the state rows that close a window), the rows it writes, x in and y out."""
        assert path == "standard" and not options and new_kv == q_len
        c = self.config
        b = (dtype or self.dtype).itemsize
        B, L, S0 = batch, q_len, cached
        end = S0 + L
        D, N, H, Q, G, O, W = c.hidden, c.heads, c.head_dim, c.q_rank, c.o_groups, c.o_rank, c.window
        sizes = {name: sum(p.numel() for p in module.parameters()) for name, module in self.named_children()}
        window_read = min(S0 + 1, W) if L == 1 else min(S0, W) + L  # window keys the kernel gets
        window_old = window_read - 1 if L == 1 else min(S0, W)  # of which come from the ring
        entries = self._entries_read(S0, L)
        T = window_read + entries
        flops = (matmul_flops(B * L, D, Q) + matmul_flops(B * L, Q, N * H) + matmul_flops(B * L, D, H)
                 + 2 * matmul_flops(B * N * L, H, T)  # scores and probabilities x values
                 + matmul_flops(B * L * G, N * H // G, O) + matmul_flops(B * L, G * O, D))
        weights = sum(sizes[name] for name in ("q_a_proj", "q_a_norm", "q_b_proj", "kv_proj", "kv_norm",
                                               "o_a_proj", "o_b_proj"))
        weights += N if self.sinks is not None else 0
        # Bytes of one stored row of each field (kv_dtype=fp8_e4m3: e4m3 values and their scales;
        # fp8_model1: FlashMLA's 584-byte entries, the blocks' padding not read).
        row = {f.name: f.bytes_per_row(dtype or self.dtype) for f in self.cache_layout(path).fields}
        read = window_old * row["window"] + entries * row.get("entries", 0)
        written = min(L, W) * row["window"]
        if self.compressor is not None:
            flops += _compressor_flops(self.compressor, B * L, D)
            weights += sizes["compressor"]
            state_read, state_written, new_entries = _compressor_rows(self.compressor, S0, L)
            read += state_read * b
            written += state_written * b + new_entries * row["entries"]
        indexer_flops = indexer_weights = indexer_read = indexer_written = 0
        if self.indexer is not None:
            ix = self.indexer
            closed = end // c.csa_rate
            indexer_flops = _compressor_flops(ix.compressor, B * L, D)
            indexer_weights = sum(p.numel() for p in ix.compressor.parameters())
            state_read, state_written, new_entries = _compressor_rows(ix.compressor, S0, L)
            indexer_read = state_read * b
            indexer_written = state_written * b + new_entries * row["index_entries"]
            if closed:  # no entry yet: nothing to score
                J, I = ix.heads, ix.dim
                indexer_flops += (matmul_flops(B * L, Q, J * I) + matmul_flops(B * L, D, J)  # q_I, head weights
                                  + matmul_flops(B * L * J, I, closed)  # q_I . K over every closed entry
                                  + matmul_flops(B * L, J, closed))  # the weighted sum over heads
                indexer_weights += sizes["indexer"] - sum(p.numel() for p in ix.compressor.parameters())
                indexer_read += closed * row["index_entries"]  # the scan: linear in the context
        kv_bytes = self.kv_bytes_per_token(path, dtype)
        closed_all = end // c.rate if c.rate else 0
        return Cost(
            flops=flops + indexer_flops,
            weight_bytes=(weights + indexer_weights) * b,
            cache_read_bytes=B * (read + indexer_read),
            cache_write_bytes=B * (written + indexer_written),
            activation_bytes=B * 2 * L * D * b,
            params=sum(p.numel() for p in self.parameters()),  # the sinks are no module's
            kv_bytes_per_token=kv_bytes,
            score_elements=B * N * L * T, qk_dim=H, v_dim=H,
            # q (twice: normed, rotated), o (twice), the keys the kernel gets, x's projections, and the
            # indexer's query and its [L, J, S] float32 dots.
            transient_bytes=(B * L * (4 * N * H + Q + 2 * H) + B * T * H) * b + _transient(self, B, L, closed_all, b),
            indexer_flops=indexer_flops,
            indexer_bytes=indexer_weights * b + B * (indexer_read + indexer_written),
        )


def _compressor_flops(compressor: Compressor, tokens: int, hidden: int) -> int:
    """kv_proj and gate_proj on the new tokens; the pooling is elementwise."""
    return 2 * matmul_flops(tokens, hidden, compressor.kv_proj.out_features)


def _compressor_rows(compressor: Compressor, start: int, L: int) -> tuple[int, int, int]:
    """Of one sequence's compressor cache, the state elements a step reads (of the windows it closes,
    from before the step) and writes (its tokens' state rows), and the entries it adds."""
    C, m = compressor.width, compressor.rate
    end = start + L
    first, last = start // m, end // m
    rings = (2 * m, m) if compressor.overlap else (m,)
    written = sum(min(L, ring) for ring in rings) * _PAIR * C
    if last == first:
        return 0, written, 0
    if compressor.overlap:  # Ca from window first - 1, Cb from window first
        old = (start - max(first - 1, 0) * m) + (start - first * m)
    else:
        old = start - first * m
    return old * _PAIR * C, written, last - first


def _transient(layer: DSV4, B: int, L: int, closed: int, itemsize: int) -> int:
    """The indexer's query, and its dots in (at least) float32, then ReLU'd."""
    if layer.indexer is None:
        return 0
    J, I = layer.indexer.heads, layer.indexer.dim
    return B * L * J * I * itemsize + B * L * J * closed * max(itemsize, 4) * 2


# -- variants and the model's schedule ------------------------------------------------------------------
_NEEDED = ("q_rank", "o_groups", "o_rank", "sliding_window")


def config_of(shape: ModelShape, kind: str, *, variant: str = "DeepSeek-V4 attention",
              attention: AttentionKind = "self") -> DSV4Config:
    """The config of one of ``shape``'s layers of ``kind`` (``S``, ``C`` or ``H``)."""
    missing = [name for name in _NEEDED if getattr(shape, name) is None]
    if missing:
        raise ValueError(f"{variant} needs {', '.join(_NEEDED)} in the model shape; {shape.name} has no "
                         f"{', '.join(missing)} (a DeepSeek-V4 preset sets them)")
    if kind not in KINDS:
        raise ValueError(f"layer kind {kind!r} has no DeepSeek-V4 layer; its layers are "
                         + ", ".join(f"{k} ({v})" for k, v in KINDS.items()))
    return DSV4Config(hidden=shape.hidden, heads=shape.heads, head_dim=shape.head_dim, q_rank=shape.q_rank,
                      rope_dim=shape.d_r, kind=kind, window=shape.sliding_window, csa_rate=shape.csa_rate,
                      hca_rate=shape.hca_rate, index_heads=shape.index_heads, index_head_dim=shape.index_head_dim,
                      index_topk=shape.index_topk, o_groups=shape.o_groups, o_rank=shape.o_rank,
                      rope_theta=shape.rope_theta, compress_rope_theta=shape.compress_rope_theta or shape.rope_theta,
                      rope_layout=shape.rope_layout, learned_sinks=shape.attn_sinks, attention=attention,
                      kv_dtype=shape.kv_dtype)


def layer_for_kind(shape: ModelShape, kind: str, attention: AttentionKind = "self") -> DSV4:
    """The layer a letter of the schedule holds (S, C or H)."""
    return DSV4(config_of(shape, kind, attention=attention))


def model_kv_bytes(shape: ModelShape, *, context: int, dtype: torch.dtype) -> int:
    """One sequence's cache over all of ``shape``'s layers at ``context`` tokens, by the schedule
    (``ModelShape.layer_kinds``): each layer's entries, window and open-window state."""
    return sum(cache_layout_of(config_of(shape, kind)).bytes_at(context, dtype) for kind in shape.layer_kinds())


def model_kv_bytes_per_token(shape: ModelShape, *, dtype: torch.dtype) -> int:
    """Cache bytes a token adds to the whole model in the long run (the compressed entries; windows
    and state are fixed): transformers' default V4 schedule, 20 CSA + 23 HCA layers, 20·320 + 23·8 =
    6,584 B in bf16."""
    return sum(cache_layout_of(config_of(shape, kind)).bytes_per_token(dtype) for kind in shape.layer_kinds())


_USES = ("hidden", "heads", "head_dim", "q_rank", "d_r", "sliding_window", "attn_sinks", "o_groups", "o_rank",
         "rope_theta", "compress_rope_theta", "rope_layout", "kv_dtype")


def _spec(name: str, kind: str, description: str, uses: tuple[str, ...]) -> VariantSpec:
    def make(shape: ModelShape, attention: AttentionKind) -> DSV4:
        return DSV4(config_of(shape, kind, variant=f"variant={name}", attention=attention), variant=name)

    return VariantSpec(name, DSV4, description, make, _USES + uses, layer_for_kind=layer_for_kind)


CSA_SPEC = register_variant(_spec(
    "csa", "C", "DeepSeek-V4 compressed sparse attention: window + 1 entry per csa_rate tokens, indexer top-k",
    ("csa_rate", "index_heads", "index_head_dim", "index_topk")))
HCA_SPEC = register_variant(_spec(
    "hca", "H", "DeepSeek-V4 heavily compressed attention: window + 1 entry per hca_rate tokens, all attended",
    ("hca_rate",)))
