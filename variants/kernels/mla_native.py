"""MLA's absorbed decode in one pass over the packed latent cache, by attnbench's C++ kernel.

Legend: B batch, L queries, T keys, N query heads, C latent, R rotary dim, G rotary keys per token,
J = G·R, E = C + J, M = L·N query rows of one sequence.

A decode step (every query row of a sequence sees the same keys: ``mask.full``, or one query per
sequence whose mask is its length) on a float32 CPU cache, contiguous or paged, goes to
``native/mla_decode.cpp``: it reads each cached row ``[c_kv; k_rope]`` once, as key and (its first
C columns) as value, with an online softmax, and splits a sequence's keys across threads when the
batch is smaller than the thread count (flash-decoding). A paged cache is handed over as segments,
one per run of consecutive pages (``page_runs``), read where they lie; nothing is copied or
gathered. A prefill runs ``SdpaMLAKernel``'s code (see ``NativeMLAKernel``).

The C++ is built for the machine at plan time (``attnbench.variants.kernels.native``). Per step this
module joins the query's two parts, allocates the output and lists the segments; the C++ scales and
transposes the queries and holds its own scratch.
"""

from __future__ import annotations

import ctypes

import torch
from torch import Tensor
from torch._subclasses.fake_tensor import is_fake

from attnbench.variants.cache_view import CacheView
from attnbench.variants.kernels import native, page_runs
from attnbench.variants.kernels.mla_sdpa import SdpaMLAKernel, slot_rope_query
from attnbench.variants.mask import AttnMask

SOURCE = "mla_decode.cpp"


def _decode_lib() -> ctypes._CFuncPtr:  # type: ignore[name-defined]
    fn = native.library(SOURCE).attnbench_mla_decode
    if fn.argtypes is None:
        p, i, i64 = ctypes.c_void_p, ctypes.c_int, ctypes.c_int64
        fn.argtypes = [p, i64, ctypes.c_float, p, i, i, i, i, p, p, p, i64, i]
        fn.restype = i
    return fn


class NativeMLAKernel(SdpaMLAKernel):
    """Decode steps through the C++ kernel; a prefill (square causal mask) through ``SdpaMLAKernel``'s
    code, by design and declared in the implementation's description: the C++ kernel is written for
    decode, and a generation loop (and the numerics gate, which prefills before it decodes) keeps
    one implementation. Anything else it can't run (several new tokens under a causal mask, another
    dtype or device) is an error that says why, never another kernel in its place. No sparse
    counterpart: ``dsa`` refuses it."""

    name = "native"

    def unavailable(self) -> str | None:
        """Why the C++ kernel can't run here (no compiler, a failed build), or None once it is built."""
        reason = native.unavailable(SOURCE)
        return None if reason is None else f"the native MLA kernel is unavailable: {reason}"

    def __call__(self, q_lat_BLNC: Tensor, q_rope_BLNR: Tensor, c_kv_BTC: Tensor, k_rope_BTJ: Tensor, *,
                 scale: float, mask: AttnMask, kv_BTE: Tensor | None = None) -> Tensor:
        assert kv_BTE is not None, "the packed-row kernel needs the packed cache view"
        if not mask.full:
            self._prefill_only(mask)
            return super().__call__(q_lat_BLNC, q_rope_BLNR, c_kv_BTC, k_rope_BTJ, scale=scale, mask=mask,
                                    kv_BTE=kv_BTE)
        self._check(q_lat_BLNC, kv_BTE)
        B, T = kv_BTE.shape[:2]
        segments = [] if is_fake(kv_BTE) else [(kv_BTE[b].data_ptr(), T) for b in range(B)]
        return self._decode(q_lat_BLNC, q_rope_BLNR, segments, [0, *range(1, B + 1)], kv_BTE.stride(1),
                            width=kv_BTE.shape[-1], scale=scale)

    def attend_view(self, q_lat_BLNC: Tensor, q_rope_BLNR: Tensor, view: CacheView, *,
                    scale: float, mask: AttnMask) -> Tensor:
        if not (mask.full or (q_lat_BLNC.shape[1] == 1 and view.seq_lens_B is not None)):
            self._prefill_only(mask)
            return super().attend_view(q_lat_BLNC, q_rope_BLNR, view, scale=scale, mask=mask)
        buffer = view.layout.slot("c_kv").buffer
        storage = view.storage[buffer]
        self._check(q_lat_BLNC, storage)
        assert view.layout.shares_buffer("c_kv", "k_rope") and view.layout.slot("c_kv").offset == 0, \
            "the packed rows [c_kv; k_rope] in the compute dtype (kernel_unsupported refuses an fp8 cache)"
        width = view.layout.slot("c_kv").width + view.layout.slot("k_rope").width
        if is_fake(storage):  # a dry run: the step's allocations without reading memory that is not there
            return self._decode(q_lat_BLNC, q_rope_BLNR, [], [], 0, width=width, scale=scale)
        lengths = view.seq_lens_B.tolist() if view.seq_lens_B is not None else [view.kv_len] * view.batch
        if view.layout.paged:
            pieces = page_runs.pieces(view, buffer, min_rows=0)
            assert pieces is not None
            per_sequence = [[(p.data_ptr(), p.shape[0]) for p in seq] for seq in pieces]
        else:
            per_sequence = [[(storage[b].data_ptr(), int(n))] for b, n in enumerate(lengths)]
        starts = [0]
        for seq in per_sequence:
            starts.append(starts[-1] + len(seq))
        return self._decode(q_lat_BLNC, q_rope_BLNR, [s for seq in per_sequence for s in seq], starts,
                            storage.stride(-2), width=width, scale=scale)

    @staticmethod
    def _prefill_only(mask: AttnMask) -> None:
        if not mask.square_causal:
            raise ValueError(f"absorbed_native's C++ kernel attends decode steps (every query of a sequence "
                             f"seeing its whole cache); this step has {mask.q_len} queries under a causal mask "
                             f"over {mask.kv_len} keys: use absorbed_sdpa")

    @staticmethod
    def _check(q_lat_BLNC: Tensor, rows: Tensor) -> None:
        if q_lat_BLNC.device.type != "cpu" or q_lat_BLNC.dtype != torch.float32 or rows.dtype != torch.float32:
            raise ValueError(f"absorbed_native's C++ kernel runs float32 on the CPU, not "
                             f"{str(q_lat_BLNC.dtype).removeprefix('torch.')} on {q_lat_BLNC.device.type}: "
                             "use absorbed_sdpa")
        assert rows.stride(-1) == 1, "cache rows are contiguous"

    def _decode(self, q_lat_BLNC: Tensor, q_rope_BLNR: Tensor, segments: list[tuple[int, int]], starts: list[int],
                stride: int, *, width: int, scale: float) -> Tensor:
        """``[B, L, N, C]`` from the segment table: sequence b reads ``segments[starts[b]:starts[b + 1]]``,
        each ``(address, rows)`` of ``stride`` floats whose first ``width`` are the packed row."""
        B, L, N, C = q_lat_BLNC.shape
        G = max(1, (width - C) // q_rope_BLNR.shape[-1])
        q_BLNE = torch.cat((q_lat_BLNC, slot_rope_query(q_rope_BLNR, G)), dim=-1)
        assert q_BLNE.shape[-1] == width and q_BLNE.is_contiguous(), "the query's rows are the packed row's width"
        out_BLNC = q_BLNE.new_empty(B, L, N, C)
        if is_fake(out_BLNC):  # FakeTensorMode (the harness's dry run) counts these two allocations, all a step makes
            return out_BLNC
        # The table as ctypes arrays: a few microseconds, where two torch.tensor calls cost ~20.
        n = len(segments)
        addresses = (ctypes.c_int64 * n)(*(a for a, _ in segments))
        rows = (ctypes.c_int64 * n)(*(r for _, r in segments))
        first = (ctypes.c_int64 * len(starts))(*starts)
        failed = _decode_lib()(q_BLNE.data_ptr(), L * N * width, scale, out_BLNC.data_ptr(), B, L * N, width, C,
                               addresses, rows, first, stride, torch.get_num_threads())
        if failed:
            raise MemoryError("the native MLA kernel could not allocate its scratch (about 70 KB per 16 heads)")
        return out_BLNC
