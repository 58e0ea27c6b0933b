"""Sliding-window attention with attention sinks: GQA's projections, a window mask and a ring cache.

Legend: B batch, L new queries, T keys the kernel reads, N query heads, K kv heads, H head dim,
W window (keys fewer than W positions back are seen, the query's own included), S sink tokens,
R = min(max_len, S + W) cache rows.

- Mistral-7B-v0.1: every layer sees a 4,096-token window (``sliding_window`` in its config.json).
- gpt-oss: layers alternate a 128-token window and full attention, and every layer has one
  learned sink logit per query head, an extra softmax column with no value: ``softmax([scores,
  sink])`` with the sink column dropped (transformers' ``GptOssAttention``).
- StreamingLLM (Xiao et al. 2023) sink tokens: the first S positions stay visible to every query.

A window layer's cache is a ring of R rows: position p < S sits in row p, any later p in row
``S + (p - S) mod W``. A one-token decode step writes its row and reads all R rows (the mask knows
which position each row holds). A multi-token step that wraps the ring attends over the ring as it
was before the step followed by the step's own keys (a concatenation, the one copy this layer
makes; a prefill from position 0 reads only its own keys), then writes its last entries to the ring.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from attnbench.variants.cache import CacheLayout, KVCache
from attnbench.variants.cost import Cost
from attnbench.variants.families.gqa import GQA, GQAConfig
from attnbench.variants.kernel import Kernel
from attnbench.variants.layer import Phase, Step, StepRunner
from attnbench.variants.mask import AttnMask, MaskFn, causal_window, make_mask
from attnbench.variants.registry import register_variant
from attnbench.variants.shape import AttentionKind, ModelShape, check_positive
from attnbench.variants.variant import VariantSpec


@dataclass(frozen=True)
class RingLayout(CacheLayout):
    """A cache that keeps the ``sinks`` first positions and a ring of the last ``window``."""

    window: int = 1
    sinks: int = 0

    def positions(self, context: int) -> int:
        return min(context, self.sinks + self.window)


def ring_positions(last: int, *, rows: int, sinks: int, device: torch.device) -> Tensor:
    """Absolute position held by each of ``rows`` ring rows once positions ``[0, last]`` are written
    (-1: a row not written yet)."""
    row_R = torch.arange(rows, device=device)
    span = rows - sinks
    latest_R = last - torch.remainder(last - row_R, span)  # the latest p <= last with row(p) == row
    pos_R = torch.where(row_R < sinks, row_R, latest_R)
    return torch.where((pos_R >= 0) & (pos_R <= last) & ((row_R < sinks) | (pos_R >= sinks)), pos_R, -1)


def ring_rows(positions: Tensor, *, sinks: int, rows: int) -> Tensor:
    """The ring row of each absolute position."""
    return torch.where(positions < sinks, positions, sinks + torch.remainder(positions - sinks, rows - sinks))


@dataclass(frozen=True)
class SWAConfig(GQAConfig):
    window: int | None = 4096  # W; None: a full-attention layer of the same model (gpt-oss alternates)
    learned_sinks: bool = False  # gpt-oss: one sink logit per query head
    sink_tokens: int = 0  # StreamingLLM: the first S positions always visible

    def __post_init__(self) -> None:
        super().__post_init__()
        check_positive("window", self.window, optional=True)
        if isinstance(self.sink_tokens, bool) or not isinstance(self.sink_tokens, int) or self.sink_tokens < 0:
            raise ValueError(f"sink_tokens={self.sink_tokens!r} is not allowed: it must be an integer >= 0")
        if self.sink_tokens and self.window is None:
            raise ValueError(f"sink_tokens={self.sink_tokens} needs a window: a full-attention layer sees "
                             "every token already")
        if self.attention != "self":
            raise ValueError(f"attention={self.attention!r} is not allowed for a sliding window: it must be self")
        if self.output_gate:
            raise ValueError("output_gate=True is not allowed for a sliding window: the gate is Qwen3-Next's "
                             "full-attention option (variant=gqa)")


class SWA(GQA):
    """GQA with a window mask, a ring cache and optional learned sinks (one logit per query head)."""

    def __init__(self, config: SWAConfig, *, variant: str = "swa", rope: Any = None) -> None:
        super().__init__(config, variant=variant, rope=rope)
        self.config: SWAConfig = config
        # gpt-oss initialises them like the other weights; zeros until weights are loaded.
        self.sinks = nn.Parameter(torch.zeros(config.heads)) if config.learned_sinks else None

    def mask_fn(self) -> MaskFn:
        return causal_window(self.config.window, sinks=self.config.sink_tokens)

    def cache_layout(self, path: str) -> CacheLayout:
        layout = super().cache_layout(path)
        if self.config.window is None:
            return layout
        return RingLayout(layout.fields, window=self.config.window, sinks=self.config.sink_tokens)

    def kernel_unsupported(self, kernel: Kernel) -> str | None:
        if self.sinks is not None and not getattr(kernel, "learned_sinks", False):
            return (f"learned sinks need a kernel that applies them; the {kernel.name} kernel does not "
                    "(implementations that do: eager, hf; flex on cuda)")
        return None

    def step_mask(self, *, q_len: int, start: int, cache: KVCache, device: torch.device,
                  dense_causal: bool) -> AttnMask:
        rows = cache.fields["k"].shape[1]
        end = start + q_len
        if end <= rows:  # the ring has not wrapped: a linear cache
            return super().step_mask(q_len=q_len, start=start, cache=cache, device=device, dense_causal=dense_causal)
        return make_mask(q_len=q_len, kv_len=self._keys_read(start, q_len, rows), q_offset=start, device=device,
                         fn=self.mask_fn(), kv_pos_T=self._key_positions(start, q_len, rows, device))

    def _keys_read(self, start: int, q_len: int, rows: int) -> int:
        if start + q_len <= rows:
            return start + q_len
        if q_len == 1:
            return rows
        return (rows if start else 0) + q_len

    def _key_positions(self, start: int, q_len: int, rows: int, device: torch.device) -> Tensor:
        s = self.config.sink_tokens
        if q_len == 1:
            return ring_positions(start, rows=rows, sinks=s, device=device)
        new_L = torch.arange(start, start + q_len, device=device)
        if start == 0:
            return new_L
        return torch.cat([ring_positions(start - 1, rows=rows, sinks=s, device=device), new_L])

    def _make_step(self, phase: Phase, x_BLD: Tensor, cache: KVCache, memory_BMD: Tensor | None,
                   kernel: Kernel) -> Step:
        if self.config.window is not None and cache.seq_lens is not None and phase == "decode":
            raise ValueError(f"seq_lens={cache.seq_lens}: a sliding-window layer decodes uniform batches only (its "
                             "ring of window rows follows one position for the batch); leave seq_lens unset")
        return super()._make_step(phase, x_BLD, cache, memory_BMD, kernel)

    def step_runner(self, path: str, kernel: Kernel, **options: Any) -> StepRunner:
        assert path == "standard" and not options
        reason = self.kernel_unsupported(kernel)
        if reason is not None:
            raise ValueError(reason)
        if self.config.window is None:
            return lambda step: self._windowless(step, kernel)
        return lambda step: self._ring_step(step, kernel)

    def _ring_step(self, step: Step, attend: Kernel) -> Tensor:
        # Which ring rows the step writes depends on its position: a few index ops per step, as a
        # serving engine computes its write slot each step (the harness repeats one position).
        rows = step.cache.fields["k"].shape[1]
        L = step.x_BLD.shape[1]
        start = step.kv_start
        assert isinstance(start, int), "a sliding-window cache is not ragged"
        if start + L <= rows:
            return self._windowless(step, attend)
        s = self.config.sink_tokens
        new_L = torch.arange(start, start + L, device=step.x_BLD.device)
        keep_L = new_L >= start + L - (rows - s)  # the entries still in the ring after the step
        keep_L |= new_L < s
        written_P = ring_rows(new_L[keep_L], sinks=s, rows=rows)
        if L == 1:
            return self._ring_decode(step, attend, written_P)
        return self._ring_wrapped(step, attend, keep_L.nonzero().squeeze(1), written_P, start > 0)

    def _windowless(self, step: Step, attend: Kernel) -> Tensor:
        q_BLNH, k_BLKH, v_BLKH = self._project(step)
        step.cache.write(step.kv_start, k=k_BLKH, v=v_BLKH)
        k_BTKH = step.cache.read("k", step.kv_len)
        v_BTKH = step.cache.read("v", step.kv_len)
        return self._output(self._attend(attend, q_BLNH, k_BTKH, v_BTKH, step.mask))

    def _ring_decode(self, step: Step, attend: Kernel, row_1: Tensor) -> Tensor:
        q_B1NH, k_B1KH, v_B1KH = self._project(step)
        step.cache.write_rows(row_1, k=k_B1KH, v=v_B1KH)
        return self._output(self._attend(attend, q_B1NH, step.cache["k"], step.cache["v"], step.mask))

    def _ring_wrapped(self, step: Step, attend: Kernel, kept_P: Tensor, rows_P: Tensor, read_ring: bool) -> Tensor:
        q_BLNH, k_BLKH, v_BLKH = self._project(step)
        k_BTKH, v_BTKH = k_BLKH, v_BLKH
        if read_ring:
            k_BTKH = torch.cat([step.cache["k"], k_BLKH], dim=1)
            v_BTKH = torch.cat([step.cache["v"], v_BLKH], dim=1)
        o_BLNH = self._attend(attend, q_BLNH, k_BTKH, v_BTKH, step.mask)
        step.cache.write_rows(rows_P, k=k_BLKH.index_select(1, kept_P), v=v_BLKH.index_select(1, kept_P))
        return self._output(o_BLNH)

    def _attend(self, attend: Kernel, q_BLNH: Tensor, k_BTKH: Tensor, v_BTKH: Tensor, mask: AttnMask) -> Tensor:
        if self.sinks is None:
            return attend(q_BLNH, k_BTKH, v_BTKH, scale=self.scale, mask=mask)
        return attend(q_BLNH, k_BTKH, v_BTKH, scale=self.scale, mask=mask, sinks_N=self.sinks)

    def cost(self, *, path: str, batch: int, q_len: int, cached: int, new_kv: int,
             dtype: torch.dtype | None = None, **options: Any) -> Cost:
        """GQA's cost over the keys the step reads: a window layer reads at most its ring."""
        if self.config.window is None:
            return super().cost(path=path, batch=batch, q_len=q_len, cached=cached, new_kv=new_kv, dtype=dtype,
                                **options)
        rows = self.cache_layout(path).positions(cached + new_kv)
        keys = self._keys_read(cached, new_kv, rows)
        cost = super().cost(path=path, batch=batch, q_len=q_len, cached=keys - new_kv, new_kv=new_kv, dtype=dtype,
                            **options)
        sink_params = self.config.heads if self.sinks is not None else 0
        return dataclasses.replace(cost, params=cost.params + sink_params)


def model_kv_bytes(shape: ModelShape, *, context: int, dtype: torch.dtype) -> int:
    """One sequence's cache over all of ``shape``'s layers at ``context`` tokens, by the layer schedule:
    a window layer holds ``min(context, S + W)`` positions, a full layer ``context``."""
    per_token = 2 * (shape.kv_heads or shape.heads) * shape.head_dim * dtype.itemsize  # K and V
    return sum(per_token * (context if w is None else min(context, shape.sink_tokens + w))
               for w in shape.layer_windows())


def _config(shape: ModelShape, attention: AttentionKind, window: int | None) -> SWAConfig:
    return SWAConfig(hidden=shape.hidden, heads=shape.heads, kv_heads=shape.kv_heads or shape.heads,
                     head_dim=shape.head_dim, qkv_bias=shape.qkv_bias, o_bias=shape.qkv_bias,
                     rope_theta=shape.rope_theta, rope_layout=shape.rope_layout, attention=attention,
                     window=window, learned_sinks=shape.attn_sinks, sink_tokens=shape.sink_tokens if window else 0,
                     kv_dtype=shape.kv_dtype)


def make_layer(shape: ModelShape, attention: AttentionKind, *, window: int | None) -> SWA:
    """One layer of ``shape`` with ``window`` (None: one of the model's full-attention layers)."""
    return SWA(_config(shape, attention, window))


def _make(shape: ModelShape, attention: AttentionKind) -> SWA:
    if shape.sliding_window is None:
        raise ValueError(f"variant=swa needs sliding_window in the model shape; {shape.name} has none "
                         "(presets with one: gpt_oss_20b, gpt_oss_120b, mistral_7b_v01)")
    return make_layer(shape, attention, window=shape.sliding_window)


def layer_for_kind(shape: ModelShape, kind: str, attention: AttentionKind = "self") -> SWA:
    """The layer a letter of the schedule holds: F a full layer, any other letter a window layer (swa
    is the dense-window counterpart of DeepSeek-V4's C and H layers)."""
    return make_layer(shape, attention, window=None) if kind == "F" else _make(shape, attention)


SWA_SPEC = register_variant(VariantSpec(
    "swa", SWA, "sliding-window GQA (the model's window layers), learned sinks or sink tokens as the shape says",
    _make, ("hidden", "heads", "head_dim", "kv_heads", "qkv_bias", "rope_theta", "rope_layout", "sliding_window",
            "attn_sinks", "sink_tokens", "kv_dtype"), layer_for_kind=layer_for_kind))
