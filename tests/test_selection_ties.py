"""Deterministic selection: with few indexer heads, ReLU-weighted scores tie (exactly 0 wherever every
head's ReLU is at its floor, 1 entry in 4 with 2 heads); ties go to the lower index, so one prefill and
a token-by-token decode select, and output, the same for every token (DSA and DeepSeek-V4's CSA)."""

from __future__ import annotations

import pytest
import torch

from attnbench import variants
from tests.reference import rel_err
from tests.test_dsa import SHAPE as DSA_SHAPE
from tests.test_dsv4 import SHAPE as CSA_SHAPE
from tests.test_dsv4 import _randomize
from attnbench.variants.topk import stable_topk

F64 = torch.float64
B = 2
FIXED_SEEDS = (0, 1, 2)  # seeds known to tie at the k-th place (checked below), plus the run's own


def _prefill_then_decode(layer, x_BTD: torch.Tensor, prefill: int, impl: str) -> torch.Tensor:
    cache = layer.new_cache(B, x_BTD.shape[1], impl=impl)
    outs = [layer.prefill(x_BTD[:, :prefill], cache, impl=impl)]
    outs += [layer.decode(x_BTD[:, t:t + 1], cache, impl=impl) for t in range(prefill, x_BTD.shape[1])]
    return torch.cat(outs, dim=1)


def _assert_same_at_every_position(layer, x_BTD: torch.Tensor, impl: str) -> None:
    whole = _prefill_then_decode(layer, x_BTD, x_BTD.shape[1], impl)
    stepped = _prefill_then_decode(layer, x_BTD, 1, impl)
    for t in range(x_BTD.shape[1]):
        assert rel_err(stepped[:, t], whole[:, t]) < 1e-12, (impl, t)


def _ties_at_kth(scores_BLT: torch.Tensor, k: int) -> int:
    """Queries whose k-th and (k+1)-th best visible scores are equal: where topk's order decides."""
    top_BLX = scores_BLT.sort(dim=-1, descending=True).values[..., k - 1:k + 1]
    return int(((top_BLX[..., 0] == top_BLX[..., 1]) & (top_BLX[..., 1] > float("-inf"))).sum())


def test_dsa_prefill_equals_token_decode_with_two_index_heads(seed):
    ties = 0
    for s in (*FIXED_SEEDS, seed):
        layer = variants.build("dsa", DSA_SHAPE.replace(index_heads=2), dtype=F64, seed=s)
        x_BTD = torch.randn(B, 14, DSA_SHAPE.hidden, dtype=F64, generator=torch.Generator().manual_seed(s))
        for impl in ("eager", "absorbed"):  # dense masked and truly sparse
            _assert_same_at_every_position(layer, x_BTD, impl)
        if s in FIXED_SEEDS:
            with torch.no_grad():
                scores_BLT = layer.indexer.scores(x_BTD, layer._compressed_query(x_BTD),
                                                  layer.indexer.key(x_BTD, 0), q_start=0)
            ties += _ties_at_kth(scores_BLT, DSA_SHAPE.index_topk)
    assert ties > 0, "no tie at the k-th place: the test would not exercise the tie rule"


def test_csa_prefill_equals_token_decode_with_two_index_heads(seed):
    for s in (*FIXED_SEEDS, seed):
        torch.manual_seed(s)
        layer = _randomize(variants.build("csa", CSA_SHAPE.replace(index_heads=2), dtype=F64, seed=s))
        x_BTD = torch.randn(B, 20, CSA_SHAPE.hidden, dtype=F64, generator=torch.Generator().manual_seed(s))
        _assert_same_at_every_position(layer, x_BTD, "eager")


@pytest.mark.parametrize("padding", [0, 1, 5, 100])
def test_stable_topk_breaks_ties_by_the_lower_index_whatever_the_padding(padding):
    row = [2.0, 0.0, -1.0, 0.0, -0.0, 0.0, 3.0]
    scores_T = torch.tensor(row + [float("-inf")] * padding, dtype=F64)
    values_K, idx_K = stable_topk(scores_T, 5)
    assert idx_K.tolist() == [6, 0, 1, 3, 4]  # -0.0 ties with 0.0
    assert values_K.tolist() == [3.0, 2.0, 0.0, 0.0, 0.0]
    # Past the visible entries, -inf padding comes last (in index order), whatever k.
    _, all_idx = stable_topk(scores_T, len(row) + padding)
    assert all_idx.tolist() == [6, 0, 1, 3, 4, 5, 2] + list(range(len(row), len(row) + padding))
    # Blocks of rows of different visible lengths: each row as if alone.
    block_LT = torch.full((2, 12), float("-inf"), dtype=F64)
    block_LT[0, :7], block_LT[1, :3] = scores_T[:7], torch.tensor([0.0, 0.0, 0.0])
    assert stable_topk(block_LT, 3)[1].tolist() == [[6, 0, 1], [0, 1, 2]]


def test_stable_topk_is_the_head_of_a_stable_descending_sort(seed):
    """On rows full of ties (a few distinct values, -0.0 among them) and -inf padding, at every k."""
    levels_V = torch.tensor([float("-inf"), -1.0, -0.0, 0.0, 0.5, 2.0], dtype=F64)
    scores_XT = levels_V[torch.randint(len(levels_V), (3, 4, 37))]
    expected_XT = torch.sort(torch.where(scores_XT == 0, 0.0, scores_XT), dim=-1, descending=True, stable=True)
    for k in (0, 1, 5, 36, 37):
        values_XK, idx_XK = stable_topk(scores_XT, k)
        assert torch.equal(idx_XK, expected_XT.indices[..., :k]), k
        assert torch.equal(values_XK, expected_XT.values[..., :k]), k
