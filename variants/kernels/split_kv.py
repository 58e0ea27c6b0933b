"""Split-KV (flash-decoding): attention over the cache chunk by chunk, combined by log-sum-exp.

Legend: B batch, M query rows (heads and queries folded), X output width, t rows of one chunk.

Each chunk gives partial outputs and, per query row, its softmax statistics; ``LseCombine`` folds
them into one running result as they arrive (the partials of chunk i are rescaled by
``exp(max_i - max)``), so a step holds one chunk's temporaries and one output, never a partial per
chunk (whose number grows with the cache). Exact, not an approximation: the float64 tests compare
it with one softmax over all keys.
"""

from __future__ import annotations

import torch
from torch import Tensor

# Bytes of cache rows one chunk reads, all sequences of the batch together. Each chunk costs a
# fixed ~25 small ops (~0.1 ms on a loaded core), so chunks are large: DeepSeek-V2-Lite, float32,
# batch 1, one thread, kernel alone, CPU time: at 32k keys chunks of 256 rows 33.3 ms, 512 26.9,
# 1024 24.6, 2048 24.3 (one pass 29.9); at 4k 4.5, 3.7, 3.2, 3.1 (one pass 2.9).
CHUNK_BYTES = 4 << 20
MIN_CHUNK, MAX_CHUNK = 128, 2048  # tokens per chunk, whatever the batch


def chunk_tokens(*, batch: int, row_bytes: int, budget: int = CHUNK_BYTES) -> int:
    """Tokens per chunk: a multiple of ``MIN_CHUNK`` whose ``batch`` rows stay within ``budget`` bytes,
    clamped to ``[MIN_CHUNK, MAX_CHUNK]`` (a multiple of any page size up to ``MIN_CHUNK``)."""
    tokens = budget // max(batch * row_bytes, 1) // MIN_CHUNK * MIN_CHUNK
    return min(max(tokens, MIN_CHUNK), MAX_CHUNK)


class LseCombine:
    """The running combination of chunks' partial softmaxes (all statistics in ``acc_dtype``)."""

    def __init__(self, acc_dtype: torch.dtype) -> None:
        self.acc_dtype = acc_dtype
        self.out_BMX: Tensor | None = None  # sum over chunks of exp(max_i - max) · o_i
        self.max_BM1: Tensor | None = None
        self.sum_BM1: Tensor | None = None  # sum over chunks of exp(max_i - max) · sum_i

    def add(self, o_BMX: Tensor, max_BM1: Tensor, sum_BM1: Tensor) -> None:
        """One chunk: ``o = Σ exp(s - max)·v`` over its keys, ``max`` its rows' largest score (finite:
        a row with no visible key gives ``sum = 0``), ``sum = Σ exp(s - max)``. A normalised chunk
        output (a fused kernel's) is ``o`` with ``max = lse`` and ``sum = 1``."""
        o_BMX = o_BMX.to(self.acc_dtype)
        if self.out_BMX is None:
            self.out_BMX, self.max_BM1, self.sum_BM1 = o_BMX, max_BM1, sum_BM1
            return
        assert self.max_BM1 is not None and self.sum_BM1 is not None
        new_max_BM1 = torch.maximum(self.max_BM1, max_BM1)
        old_BM1, this_BM1 = torch.exp(self.max_BM1 - new_max_BM1), torch.exp(max_BM1 - new_max_BM1)
        self.out_BMX = self.out_BMX.mul_(old_BM1).add_(o_BMX * this_BM1)
        self.sum_BM1 = self.sum_BM1.mul_(old_BM1).add_(sum_BM1 * this_BM1)
        self.max_BM1 = new_max_BM1

    def result(self, dtype: torch.dtype) -> Tensor:
        """``[B, M, X]``: the softmax-weighted sum over every chunk's keys, in ``dtype``."""
        assert self.out_BMX is not None and self.sum_BM1 is not None, "no chunk was added"
        return (self.out_BMX / self.sum_BM1).to(dtype)
