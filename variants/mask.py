"""Which keys each query sees: composable mask functions, converted once at set-up to what a kernel takes.

Legend: L new queries, T keys visible in the step (cache rows the kernel reads).

A mask is a function of absolute positions in flex_attention's ``mask_mod`` form,
``fn(b, h, q_idx, kv_idx) -> bool`` (attention-gym, torchtitan): ``causal``, ``sliding_window(w)``,
``sink_tokens(s)`` (StreamingLLM: the first ``s`` positions always visible), ``prefix(n)`` and
``document(ids)``, composed with ``and_masks``/``or_masks``. Which function a layer uses is its
family's decision (``AttentionLayer.mask_fn``). ``make_mask`` turns one into an ``AttnMask`` for a
step: a dense boolean ``[L, T]`` where a kernel needs one, nothing for a plain square causal block
(SDPA's ``is_causal``), and ``block_mask`` makes flex's ``BlockMask`` from the same function.

Self-attention: query i sits at absolute position ``q_offset + i``; key row j holds position
``kv_pos_T[j]`` (``arange(T)`` for a linear cache; a ring cache's slots hold other positions, and
``-1`` marks a row never written). Cross-attention: every query sees every memory key
(``q_offset is None``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
from torch._subclasses.fake_tensor import is_fake
from torch import Tensor

from attnbench.variants.shape import check_positive

if TYPE_CHECKING:
    from torch.nn.attention.flex_attention import BlockMask

MaskMod = Callable[[Tensor, Tensor, Tensor, Tensor], Tensor]


@dataclass(frozen=True)
class MaskFn:
    """A named ``mask_mod`` on absolute positions; ``plain_causal`` marks exactly ``q >= kv``."""

    name: str
    mod: MaskMod = field(compare=False)
    plain_causal: bool = False

    def __call__(self, b: Tensor, h: Tensor, q_idx: Tensor, kv_idx: Tensor) -> Tensor:
        return self.mod(b, h, q_idx, kv_idx)


CAUSAL = MaskFn("causal", lambda b, h, q, kv: q >= kv, plain_causal=True)
causal = CAUSAL


def sliding_window(window: int) -> MaskFn:
    """Keys fewer than ``window`` positions back (the query itself included): Mistral, gpt-oss,
    transformers' ``sliding_window_overlay`` (``kv_idx > q_idx - window``)."""
    check_positive("window", window)
    return MaskFn(f"window({window})", lambda b, h, q, kv: q - kv < window)


def sink_tokens(count: int) -> MaskFn:
    """StreamingLLM (Xiao et al. 2023): the first ``count`` positions stay visible to every query."""
    check_positive("sink_tokens", count)
    return MaskFn(f"sinks({count})", lambda b, h, q, kv: kv < count)


def prefix(length: int) -> MaskFn:
    """Keys of a ``length``-token prefix (``or_masks(causal, prefix(n))`` is a prefix-LM mask)."""
    check_positive("prefix", length)
    return MaskFn(f"prefix({length})", lambda b, h, q, kv: kv < length)


def document(doc_ids: Tensor) -> MaskFn:
    """Queries see keys of their own document; ``doc_ids[p]`` is position p's document (packed batches)."""
    return MaskFn("document", lambda b, h, q, kv: doc_ids[q] == doc_ids[kv])


def and_masks(*fns: MaskFn) -> MaskFn:
    assert fns, "and_masks of nothing"
    return MaskFn("&".join(f.name for f in fns), lambda b, h, q, kv: _fold(fns, b, h, q, kv, torch.logical_and),
                  plain_causal=all(f.plain_causal for f in fns))


def or_masks(*fns: MaskFn) -> MaskFn:
    assert fns, "or_masks of nothing"
    return MaskFn("|".join(f.name for f in fns), lambda b, h, q, kv: _fold(fns, b, h, q, kv, torch.logical_or),
                  plain_causal=all(f.plain_causal for f in fns))


def _fold(fns: tuple[MaskFn, ...], b: Tensor, h: Tensor, q: Tensor, kv: Tensor,
          op: Callable[[Tensor, Tensor], Tensor]) -> Tensor:
    out = fns[0](b, h, q, kv)
    for fn in fns[1:]:
        out = op(out, fn(b, h, q, kv))
    return out


def causal_window(window: int | None, *, sinks: int = 0) -> MaskFn:
    """Causal, within ``window`` (None: no window), with ``sinks`` StreamingLLM sink tokens."""
    if window is None:
        return CAUSAL
    visible = or_masks(sliding_window(window), sink_tokens(sinks)) if sinks else sliding_window(window)
    return and_masks(CAUSAL, visible)


def dense(fn: MaskFn, q_pos_L: Tensor, kv_pos_T: Tensor) -> Tensor:
    """``[L, T]`` booleans, True where query position ``q_pos_L[i]`` sees key position ``kv_pos_T[j]``;
    a key position < 0 (a cache row never written) is never seen."""
    zero = torch.zeros((), dtype=torch.long, device=q_pos_L.device)
    keep_LT = fn(zero, zero, q_pos_L.unsqueeze(1), kv_pos_T.unsqueeze(0))
    keep_LT = keep_LT.expand(q_pos_L.numel(), kv_pos_T.numel()) & (kv_pos_T >= 0).unsqueeze(0)
    return keep_LT.contiguous()


@dataclass(frozen=True)
class AttnMask:
    q_len: int  # L
    kv_len: int  # T
    q_offset: int | None  # None: no mask at all (cross-attention)
    keep_LT: Tensor | None  # True where attention is allowed; built only when a kernel needs it
    fn: MaskFn = CAUSAL  # the function it came from (flex builds its BlockMask from it)
    kv_pos_T: Tensor | None = None  # absolute position of each key row; None: arange(T)
    all_visible: bool | None = None  # known at set-up for non-causal functions; None: derive

    @property
    def full(self) -> bool:
        """Every query sees every key: no masking at all."""
        if self.all_visible is not None:
            return self.all_visible
        return self.q_offset is None or (self.q_len == 1 and self.q_offset + 1 == self.kv_len)

    @property
    def square_causal(self) -> bool:
        """Plain lower-triangular causal mask, which fused kernels implement without a tensor (SDPA's
        ``is_causal``)."""
        return (self.fn.plain_causal and self.kv_pos_T is None and self.q_offset == 0
                and self.q_len == self.kv_len and self.q_len > 1)


def make_mask(*, q_len: int, kv_len: int, q_offset: int | None, device: torch.device | str,
              dense_causal: bool = True, fn: MaskFn = CAUSAL, kv_pos_T: Tensor | None = None) -> AttnMask:
    """The step's mask from ``fn``. ``dense_causal=False`` skips the [L, T] tensor for a square causal
    mask (an L=32k prefill would hold a 1 GiB boolean) when the kernel applies that mask itself."""
    if q_offset is None:
        return AttnMask(q_len, kv_len, None, None)
    if fn.plain_causal and kv_pos_T is None:
        mask = AttnMask(q_len, kv_len, q_offset, None)
        if mask.full or (mask.square_causal and not dense_causal):
            return mask
        assert q_offset + q_len == kv_len, "self-attention sees the prefix and the new tokens"
    q_pos_L = torch.arange(q_offset, q_offset + q_len, device=device)
    positions_T = kv_pos_T if kv_pos_T is not None else torch.arange(kv_len, device=device)
    assert positions_T.numel() == kv_len, f"{positions_T.numel()} key positions for {kv_len} keys"
    keep_LT = dense(fn, q_pos_L, positions_T)
    # Fake tensors (the harness's memory dry run) hold no values: keep the dense mask, which is
    # what the step holds whenever anything is masked (and an upper bound otherwise).
    visible = False if is_fake(keep_LT) else bool(keep_LT.all())
    return AttnMask(q_len, kv_len, q_offset, None if visible else keep_LT, fn, kv_pos_T, visible)


def block_mask(mask: AttnMask, *, device: torch.device | str, block_size: int = 128) -> BlockMask | None:
    """flex_attention's ``BlockMask`` for ``mask`` (None: no masking), built once at set-up.

    flex calls the function with row indices, so they are mapped to absolute positions here.
    """
    from torch.nn.attention.flex_attention import create_block_mask

    if mask.full:
        return None
    offset = mask.q_offset
    assert offset is not None
    fn, kv_pos_T = mask.fn, mask.kv_pos_T
    if kv_pos_T is None:
        def mod(b: Tensor, h: Tensor, q: Tensor, kv: Tensor) -> Tensor:
            return fn(b, h, q + offset, kv)
    else:
        last = mask.kv_len - 1

        def mod(b: Tensor, h: Tensor, q: Tensor, kv: Tensor) -> Tensor:
            # flex evaluates the function on its padded block (kv up to the block size) too: an
            # unclamped lookup past the table's end read stray memory on CPU, which let padded keys
            # through now and then (NaN outputs in about one first call in two).
            position = kv_pos_T[kv.clamp(max=last)]
            return fn(b, h, q + offset, position) & (position >= 0) & (kv <= last)
    return create_block_mask(mod, B=None, H=None, Q_LEN=mask.q_len, KV_LEN=mask.kv_len, device=device,
                             BLOCK_SIZE=block_size)
