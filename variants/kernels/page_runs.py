"""A paged cache read in place: each sequence's rows as a few views of the pool, one per run of pages.

Legend: B batch, P page size, W row width, t rows of one piece.

A decode step of one query per sequence sees all of its sequence's rows, in any order (softmax and
the weighted sum do not depend on the keys' order). Pages a sequence holds at consecutive pool
indices, ascending or descending, are one ``[t, W]`` view of the pool (``pool[lo:hi + 1]``
flattened), read where it lies; a last page only partly filled is a view of its filled rows. A
kernel attends to each piece and combines the pieces by log-sum-exp (``attnbench.variants.kernels.split_kv``):
no page is copied. Allocators hand out runs of pages (``KVCache`` gives each sequence one
descending run; vLLM's free list gives runs until it fragments); where the runs are short (below
``MIN_RUN_ROWS`` rows on average) a kernel copies pages out in chunks instead, as
``CacheView.buffer_rows`` does, since a piece costs a fixed few ops.
"""

from __future__ import annotations

from torch import Tensor

from attnbench.variants.cache_view import CacheView

MIN_RUN_ROWS = 1024  # rows per piece on average below which a copy in chunks is cheaper


def pieces(view: CacheView, buffer: str, *, min_rows: int = MIN_RUN_ROWS) -> list[list[Tensor]] | None:
    """Per sequence, views ``[t, W]`` of ``buffer``'s pool covering its rows ``[0, length)`` once each;
    None for a contiguous cache, or when the runs are too short to pay for their calls."""
    P = view.layout.page_size
    if P is None or view.block_table_BJ is None:
        return None
    pool_QPW = view.storage[buffer]
    lengths = view.seq_lens_B.tolist() if view.seq_lens_B is not None else [view.kv_len] * view.batch
    table = view.block_table_BJ.tolist()  # B·J ints, once per step
    out: list[list[Tensor]] = []
    count = 0
    for b, n in enumerate(lengths):
        full, rest = divmod(int(n), P)
        views = [pool_QPW[lo:hi + 1].flatten(0, 1) for lo, hi in _runs(table[b][:full])]
        if rest:
            views.append(pool_QPW[table[b][full], :rest])
        count += len(views)
        out.append(views)
    if count and sum(lengths) / count < min_rows:
        return None
    return out


def _runs(pages: list[int]) -> list[tuple[int, int]]:
    """Maximal runs of consecutive page indices (ascending or descending) as ``(lo, hi)``."""
    runs: list[tuple[int, int]] = []
    i = 0
    while i < len(pages):
        j = i + 1
        step = pages[j] - pages[i] if j < len(pages) and abs(pages[j] - pages[i]) == 1 else 0
        while step and j < len(pages) and pages[j] - pages[j - 1] == step:
            j += 1
        run = pages[i:j]
        runs.append((min(run), max(run)))
        i = j
    return runs
