"""Partial RoPE: which frequency pairs of each kv head stay rotary when a GQA layer becomes MLA.

Legend: T calibration tokens, D hidden, N query heads, K kv heads, H head dim, F = H/2 frequency
pairs of the source, Z pairs kept per kv head (d_r / 2), R = d_r rotary dims, P = H − R nope dims.

RoPE does not commute with a low-rank map of the keys, so MLA keeps a small rotary key apart from
the compressed latent (DeepSeek-V2, section 2.1.3). A trained GQA key rotates all F pairs; the
partial-RoPE recipe of MHA2MLA (Ji et al. 2025, arXiv 2502.14837, section 3.1) keeps Z of them
rotary and removes RoPE from the rest, which are then compressed jointly with the values. Pair f
of a head adds ``q_f · R(θ_f t) k_f`` to each score, at most ``‖q_f‖·‖k_f‖`` in size, and RoPE
does not change those norms; so the strategies are:

- ``norm`` (MHA2MLA's 2-norm strategy): per kv head, the Z pairs with the largest
  ``Σ_{query heads n of the group} mean_t ‖q_{t,n,f}‖ · mean_t ‖k_{t,f}‖`` on calibration data.
- ``high`` / ``low``: the Z highest- / lowest-frequency pairs, the same for every head (MHA2MLA's
  S_high keeps the high frequencies, which carry local position).
- ``uniform``: Z pairs evenly spaced over the spectrum (MHA2MLA's S_uniform).
- ``auto``: ``norm`` when calibration activations are given, else ``high``.

The pair -> dims map follows the source's RoPE layout: ``half`` pairs dim f with f + F,
``interleaved`` pairs 2f with 2f + 1.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from attnbench.variants.families.gqa import GQA

PairStrategy = Literal["auto", "norm", "high", "low", "uniform"]
PAIR_STRATEGIES: tuple[str, ...] = ("auto", "norm", "high", "low", "uniform")


def select_pairs(source: GQA, num_pairs: int, *, strategy: PairStrategy, calibration_TD: Tensor | None) -> Tensor:
    """``[K, Z]`` indices of the frequency pairs each kv head keeps rotary, ascending per row."""
    c = source.config
    K, F = c.kv_heads, c.head_dim // 2
    assert source.rope is not None and 0 < num_pairs <= F
    if strategy == "auto":
        strategy = "norm" if calibration_TD is not None else "high"
    if strategy == "norm":
        assert calibration_TD is not None, "the caller checks that norm has calibration data"
        score_KF = pair_scores(source, calibration_TD)
        return score_KF.topk(num_pairs, dim=1).indices.sort(dim=1).values
    inv_freq_F = source.rope.inv_freq
    assert inv_freq_F.shape == (F,), "a GQA source has one set of frequencies"
    by_frequency = inv_freq_F.argsort(descending=True)  # highest frequency first
    if strategy == "high":
        chosen = by_frequency[:num_pairs]
    elif strategy == "low":
        chosen = by_frequency[F - num_pairs:]
    else:
        assert strategy == "uniform", strategy
        chosen = by_frequency[torch.linspace(0, F - 1, num_pairs).round().long()]
    return chosen.sort().values.expand(K, num_pairs).clone()


def pair_scores(source: GQA, calibration_TD: Tensor) -> Tensor:
    """``[K, F]``: each pair's ``‖q‖·‖k‖`` contribution, summed over the kv head's query heads."""
    c = source.config
    N, K, H = c.heads, c.kv_heads, c.head_dim
    with torch.no_grad():
        x_TD = calibration_TD.to(source.q_proj.weight.dtype)
        q_TNH = source.q_proj(x_TD).view(-1, N, H).double()
        k_TKH = source.k_proj(x_TD).view(-1, K, H).double()
    q_norm_NF = pair_norms(q_TNH, source.rope.layout).mean(0)
    k_norm_KF = pair_norms(k_TKH, source.rope.layout).mean(0)
    return q_norm_NF.view(K, N // K, -1).sum(1) * k_norm_KF


def pair_norms(x_THH: Tensor, layout: str) -> Tensor:
    """``[T, heads, F]``: the 2-norm of each rotated pair of the last dim."""
    F = x_THH.shape[-1] // 2
    if layout == "half":
        a, b = x_THH[..., :F], x_THH[..., F:]
    else:
        a, b = x_THH[..., 0::2], x_THH[..., 1::2]
    return torch.sqrt(a * a + b * b)


def rotary_dims(pairs_KZ: Tensor, head_dim: int, layout: str) -> tuple[Tensor, Tensor]:
    """``([K, R], [K, P])``: the source dims that stay rotary (ordered for ``layout`` over the kept
    pairs, so a ``Rope`` of that layout with frequencies ``inv_freq[pairs]`` rotates them as the
    source did) and the remaining, nope dims in ascending order."""
    F = head_dim // 2
    if layout == "half":
        rot_KR = torch.cat((pairs_KZ, pairs_KZ + F), dim=1)
    else:
        rot_KR = torch.stack((2 * pairs_KZ, 2 * pairs_KZ + 1), dim=2).flatten(1)
    keep = torch.ones(pairs_KZ.shape[0], head_dim, dtype=torch.bool)
    keep.scatter_(1, rot_KR, False)
    nope_KP = torch.stack([row.nonzero().flatten() for row in keep])
    return rot_KR, nope_KP
