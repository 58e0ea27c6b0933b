"""Truncated SVD: the best rank-Q approximation in the Frobenius norm (Eckart and Young, 1936).

Every other method's weight-space error at the same rank is at least this one's; the tests check it.
Legend: O rows, D columns, Q rank, K = min(O, D).
"""

from __future__ import annotations

import torch
from torch import Tensor

from attnbench.variants.convert.method import LowRankMethod, register_method


def factorize(W_OD: Tensor, rank: int, *, X_TD: Tensor | None = None) -> tuple[Tensor, Tensor]:
    U_OK, S_K, Vh_KD = torch.linalg.svd(W_OD, full_matrices=False)
    return U_OK[:, :rank] * S_K[:rank], Vh_KD[:rank]


METHOD = register_method(LowRankMethod(
    "svd", "truncated SVD of the weights (Eckart-Young optimum in the weight space)", factorize))
