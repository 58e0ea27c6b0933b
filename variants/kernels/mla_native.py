"""MLA's absorbed decode in one pass over the packed latent cache, by attnbench's C++ kernel.

Legend: B batch, L queries, T keys, N query heads, C latent, R rotary dim, G rotary keys per token,
J = G·R, E = C + J, M = L·N query rows of one sequence.

A decode step (every query of a sequence sees its whole cache: ``mask.full``, or one query per
sequence whose mask is its length; or several new tokens, each seeing the prefix up to itself) on a
float32 CPU cache, contiguous or paged, goes to
``native/mla_decode.cpp``: it reads each cached row ``[c_kv; k_rope]`` once, as key and (its first
C columns) as value, with an online softmax, and splits a sequence's keys across threads when the
batch is smaller than the thread count (flash-decoding). A paged cache is handed over as segments,
one per run of consecutive pages (``page_runs``), read where they lie; nothing is copied or
gathered. A prefill runs ``SdpaMLAKernel``'s code (see ``NativeMLAKernel``).

The C++ is built for the machine at plan time (``attnbench.variants.kernels.native``) and reached
through a torch custom op, ``attnbench::mla_decode``: the cache storage is one of its inputs (so a
compiled graph orders it after the step's cache write), a fake implementation gives FakeTensorMode
(the harness's memory dry run) its one allocation, and a FLOP formula lets FlopCounterMode count it
as the cost model does. Per step this module joins the query's two parts and lists the segments
(offsets into the storage) and each query's visible keys; the C++ scales and transposes the queries
and holds its own scratch.
"""

from __future__ import annotations

import ctypes

import torch
from torch import Tensor
from torch._subclasses.fake_tensor import is_fake
from torch.utils._python_dispatch import _get_current_dispatch_mode
from torch.utils.flop_counter import register_flop_formula

from attnbench.variants.cache_view import CacheView
from attnbench.variants.kernels import native, page_runs
from attnbench.variants.kernels.mla_sdpa import SdpaMLAKernel, slot_rope_query
from attnbench.variants.mask import AttnMask

SOURCE = "mla_decode.cpp"


def _decode_lib() -> ctypes._CFuncPtr:  # type: ignore[name-defined]
    fn = native.library(SOURCE).attnbench_mla_decode
    if fn.argtypes is None:
        p, i, i64 = ctypes.c_void_p, ctypes.c_int, ctypes.c_int64
        fn.argtypes = [p, i64, ctypes.c_float, p, i, i, i, i, i, p, p, p, p, i64, i]
        fn.restype = i
    return fn


def _int64s(values: list[int]) -> ctypes.Array:
    return (ctypes.c_int64 * len(values))(*values)  # a few microseconds; torch.tensor(list) costs ~10


def _mla_decode(q_BLNE: Tensor, kv: Tensor, offsets: list[int], rows: list[int], starts: list[int],
                limits: list[int], stride: int, value_width: int, scale: float) -> Tensor:
    """``[B, L, N, value_width]``: sequence b attends to segments ``starts[b]:starts[b + 1]``, segment i
    ``rows[i]`` rows of ``stride`` elements from element ``offsets[i]`` of ``kv``'s storage, each row's
    first E elements its key and first ``value_width`` its value; query l sees the sequence's first
    ``limits[b·L + l]`` keys."""
    B, L, N, E = q_BLNE.shape
    out_BLNC = q_BLNE.new_empty(B, L, N, value_width)
    base = kv.data_ptr() - kv.storage_offset() * kv.element_size()
    addresses = _int64s([base + o * kv.element_size() for o in offsets])
    failed = _decode_lib()(q_BLNE.data_ptr(), L * N * E, scale, out_BLNC.data_ptr(), B, L * N, N, E, value_width,
                           addresses, _int64s(rows), _int64s(starts), _int64s(limits), stride, torch.get_num_threads())
    if failed:
        raise MemoryError("the native MLA kernel could not allocate its scratch (about 70 KB per 16 heads)")
    return out_BLNC


mla_decode = torch.library.custom_op("attnbench::mla_decode", _mla_decode, mutates_args=())


def call_mla_decode(q_BLNE: Tensor, kv: Tensor, offsets: list[int], rows: list[int], starts: list[int],
                    limits: list[int], stride: int, value_width: int, scale: float) -> Tensor:
    """``attnbench::mla_decode`` where anything watches the ops (FlopCounterMode, FakeTensorMode, a
    compiler); else its function directly: the dispatcher's handling of a Python custom op with list
    arguments costs ~110 us a call (a tiny MLA decode step, one thread: 559 against 451 us), 2% of a
    DeepSeek-V2-Lite step at 4k."""
    args = (q_BLNE, kv, offsets, rows, starts, limits, stride, value_width, scale)
    if _get_current_dispatch_mode() is None and not torch.compiler.is_compiling():
        return _mla_decode(*args)
    return mla_decode(*args)


@mla_decode.register_fake
def _(q_BLNE: Tensor, kv: Tensor, offsets: list[int], rows: list[int], starts: list[int], limits: list[int],
      stride: int, value_width: int, scale: float) -> Tensor:
    return q_BLNE.new_empty(*q_BLNE.shape[:-1], value_width)


@register_flop_formula(torch.ops.attnbench.mla_decode)
def _flops(q_shape: tuple[int, ...], kv_shape: tuple[int, ...], offsets: list[int], rows: list[int],
           starts: list[int], limits: list[int], stride: int, value_width: int, scale: float, *,
           out_shape: tuple[int, ...] | None = None, **_: object) -> int:
    """Scores over E and values over ``value_width`` for every row against every key it reads (a
    causal step's hidden keys are scored, then masked)."""
    B, L, N, E = q_shape
    keys = sum(rows)
    return 2 * L * N * keys * (E + value_width)


class NativeMLAKernel(SdpaMLAKernel):
    """Decode steps through the C++ kernel; a prefill (square causal mask) through ``SdpaMLAKernel``'s
    code, by design and declared in the implementation's description: the C++ kernel is written for
    decode, and a generation loop (and the numerics gate, which prefills before it decodes) keeps
    one implementation. Anything else it can't run (a ragged step of several tokens, a windowed
    mask, another dtype or device) is an error that says why, never another kernel in its place.
    No sparse counterpart: ``dsa`` refuses it."""

    name = "native"

    def unavailable(self) -> str | None:
        """Why the C++ kernel can't run here (no compiler, a failed build), or None once it is built."""
        reason = native.unavailable(SOURCE)
        return None if reason is None else f"the native MLA kernel is unavailable: {reason}"

    def __call__(self, q_lat_BLNC: Tensor, q_rope_BLNR: Tensor, c_kv_BTC: Tensor, k_rope_BTJ: Tensor, *,
                 scale: float, mask: AttnMask, kv_BTE: Tensor | None = None) -> Tensor:
        assert kv_BTE is not None, "the packed-row kernel needs the packed cache view"
        if mask.square_causal:
            return super().__call__(q_lat_BLNC, q_rope_BLNR, c_kv_BTC, k_rope_BTJ, scale=scale, mask=mask,
                                    kv_BTE=kv_BTE)
        self._check(q_lat_BLNC, kv_BTE)
        B, T = kv_BTE.shape[:2]
        limits = self._limits(mask, [T] * B, ragged=False)
        offsets = [kv_BTE.storage_offset() + b * kv_BTE.stride(0) for b in range(B)]
        return self._decode(q_lat_BLNC, q_rope_BLNR, kv_BTE, offsets, [T] * B, list(range(B + 1)), limits,
                            kv_BTE.stride(1), width=kv_BTE.shape[-1], scale=scale)

    def attend_view(self, q_lat_BLNC: Tensor, q_rope_BLNR: Tensor, view: CacheView, *,
                    scale: float, mask: AttnMask) -> Tensor:
        if mask.square_causal:
            return super().attend_view(q_lat_BLNC, q_rope_BLNR, view, scale=scale, mask=mask)
        buffer = view.layout.slot("c_kv").buffer
        storage = view.storage[buffer]
        self._check(q_lat_BLNC, storage)
        assert view.layout.shares_buffer("c_kv", "k_rope") and view.layout.slot("c_kv").offset == 0, \
            "the packed rows [c_kv; k_rope] in the compute dtype (kernel_unsupported refuses an fp8 cache)"
        B = view.batch
        width = view.layout.slot("c_kv").width + view.layout.slot("k_rope").width
        if is_fake(storage):  # a dry run: the op's fake implementation allocates its output, reads nothing
            return self._decode(q_lat_BLNC, q_rope_BLNR, storage, [], [], [0] * (B + 1), [], 0, width=width,
                                scale=scale)
        lengths = view.seq_lens_B.tolist() if view.seq_lens_B is not None else [view.kv_len] * B
        limits = self._limits(mask, lengths, ragged=view.seq_lens_B is not None)
        if view.layout.paged:
            pieces = page_runs.pieces(view, buffer, min_rows=0)
            assert pieces is not None
            per_sequence = [[(p.storage_offset(), p.shape[0]) for p in seq] for seq in pieces]
        else:
            per_sequence = [[(storage.storage_offset() + b * storage.stride(0), int(n))]
                            for b, n in enumerate(lengths)]
        starts = [0]
        for seq in per_sequence:
            starts.append(starts[-1] + len(seq))
        segments = [s for seq in per_sequence for s in seq]
        return self._decode(q_lat_BLNC, q_rope_BLNR, storage, [o for o, _ in segments], [n for _, n in segments],
                            starts, limits, storage.stride(-2), width=width, scale=scale)

    @staticmethod
    def _limits(mask: AttnMask, lengths: list[int], *, ragged: bool) -> list[int]:
        """Keys each query of each sequence sees, ``[b·L + l]``: its sequence's length when every query
        sees them all; ``offset + l + 1`` in a causal step of several tokens at one offset."""
        L = mask.q_len
        if mask.full or (L == 1 and ragged):
            return [n for n in lengths for _ in range(L)]
        plain = mask.fn.plain_causal and mask.kv_pos_T is None and isinstance(mask.q_offset, int)
        if not plain or ragged:
            raise ValueError(f"absorbed_native's C++ kernel attends a decode step whose queries see a prefix "
                             f"of the cache each; this step ({L} queries over {mask.kv_len} keys, "
                             f"{'ragged' if ragged else 'another mask'}) is not one: use absorbed_sdpa")
        assert mask.q_offset + L == mask.kv_len, "a causal step's queries follow the cached prefix"
        return [mask.q_offset + l + 1 for _ in lengths for l in range(L)]

    @staticmethod
    def _check(q_lat_BLNC: Tensor, rows: Tensor) -> None:
        if q_lat_BLNC.device.type != "cpu" or q_lat_BLNC.dtype != torch.float32 or rows.dtype != torch.float32:
            raise ValueError(f"absorbed_native's C++ kernel runs float32 on the CPU, not "
                             f"{str(q_lat_BLNC.dtype).removeprefix('torch.')} on {q_lat_BLNC.device.type}: "
                             "use absorbed_sdpa")
        assert rows.stride(-1) == 1, "cache rows are contiguous"

    @staticmethod
    def _decode(q_lat_BLNC: Tensor, q_rope_BLNR: Tensor, kv: Tensor, offsets: list[int], rows: list[int],
                starts: list[int], limits: list[int], stride: int, *, width: int, scale: float) -> Tensor:
        """``[B, L, N, C]`` through ``attnbench::mla_decode``, the query's two parts joined first into
        the packed row's ``width``."""
        C = q_lat_BLNC.shape[-1]
        G = max(1, (width - C) // q_rope_BLNR.shape[-1])
        q_BLNE = torch.cat((q_lat_BLNC, slot_rope_query(q_rope_BLNR, G)), dim=-1)
        assert q_BLNE.shape[-1] == width, "the query's rows are the packed row's width"
        return call_mla_decode(q_BLNE, kv, offsets, rows, starts, limits, stride, C, scale)
