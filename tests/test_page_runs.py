"""A paged decode step read in place, run by run of pages (variants.kernels.page_runs): the pieces cover
each sequence's rows once, the sdpa kernel's in-place path equals one softmax, and short runs fall back."""

from __future__ import annotations

import pytest
import torch

from tests.reference import rel_err
from tests.test_cache_view import _latent_cache, _reference
from attnbench.variants.cache import KVCache
from attnbench.variants.kernels import page_runs
from attnbench.variants.kernels.mla_eager import EagerMLAKernel
from attnbench.variants.kernels.mla_sdpa import SdpaMLAKernel
from attnbench.variants.mask import AttnMask

F64 = torch.float64


def test_runs_are_maximal_and_go_either_way() -> None:
    assert page_runs._runs([7, 6, 5, 9, 10, 3, 1]) == [(5, 7), (9, 10), (3, 3), (1, 1)]
    assert page_runs._runs([]) == []


def _shuffle_pages(cache: KVCache, seed: int) -> None:
    """Scatter the pages: permute the pool's pages and the block table alike (same contents, short runs)."""
    g = torch.Generator().manual_seed(seed)
    pool = cache.buffers["packed"]
    perm = torch.randperm(pool.shape[0], generator=g)  # new page i holds old page perm[i]
    pool.copy_(pool[perm].clone())
    inverse = torch.empty_like(perm)
    inverse[perm] = torch.arange(perm.numel())
    cache.block_table.copy_(inverse[cache.block_table.long()].to(cache.block_table.dtype))


@pytest.mark.parametrize("scatter", [False, True], ids=["runs", "scattered"])
def test_the_in_place_read_equals_one_softmax(scatter: bool) -> None:
    lens = [23, 9, 17]  # ragged: partly filled last pages
    cache = _latent_cache(4, lens)
    if scatter:
        _shuffle_pages(cache, seed=1)
    B, N, C, R = len(lens), 4, 10, 4
    T = max(lens) + 1
    view = cache.view(T, torch.tensor(lens, dtype=torch.int32) + 1)
    pieces = page_runs.pieces(view, "packed", min_rows=1)
    assert pieces is not None
    rows = [sum(p.shape[0] for p in seq) for seq in pieces]
    assert rows == [n + 1 for n in lens]
    if not scatter:
        assert [len(seq) for seq in pieces] == [1, 2, 2]  # a descending run of full pages (+ a partial page)
    # The default threshold: these sequences are far shorter than a run worth its calls.
    assert page_runs.pieces(view, "packed") is None
    keep_B1LT = torch.arange(T).view(1, 1, 1, T) <= torch.tensor(lens).view(-1, 1, 1, 1)
    q_lat_BLNC, q_rope_BLNR = torch.randn(B, 1, N, C, dtype=F64), torch.randn(B, 1, N, R, dtype=F64)
    want = _reference(q_lat_BLNC, q_rope_BLNR, cache.read("c_kv", T), cache.read("k_rope", T), keep_B1LT, 0.3)
    assert rel_err(SdpaMLAKernel()._in_place(q_lat_BLNC, q_rope_BLNR, view, pieces, scale=0.3), want) <= 1e-12
    # The eager kernel in chunks of 8 rows of each piece (none of the pieces a multiple of it).
    got = EagerMLAKernel()._in_place(q_lat_BLNC, q_rope_BLNR, view, pieces, scale=0.3, tokens=8)
    assert rel_err(got, want) <= 1e-12
    # The kernel's own choice on this view (pieces too short by default): split-KV, the same result.
    mask = AttnMask(1, T, min(lens), keep_B1LT)
    assert rel_err(SdpaMLAKernel().attend_view(q_lat_BLNC, q_rope_BLNR, view, scale=0.3, mask=mask), want) <= 1e-12


def test_a_contiguous_view_has_no_pieces() -> None:
    cache = _latent_cache(None, [8, 8])
    assert page_runs.pieces(cache.view(9), "packed", min_rows=1) is None
