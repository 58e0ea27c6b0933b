"""Activation-whitened SVD (SVD-LLM, Wang et al. 2024, arXiv 2403.07378; ASVD, Yuan et al. 2023,
arXiv 2312.05821, scales by activation magnitudes only): the best rank-Q approximation of ``W``
on the calibration activations rather than on the weights.

With ``X^T X = S S^T`` (Cholesky), ``‖(W − W') X^T‖_F = ‖(W − W') S‖_F``, so truncating the SVD of
``W S`` and mapping back by ``S^{-1}`` minimises the output error on the calibration tokens over
all rank-Q matrices (SVD-LLM's Theorem 3.2). A small ridge (``DAMPING`` times the mean diagonal)
keeps ``X^T X`` invertible when there are fewer tokens than hidden dims, as GPTQ does.
Legend: O rows, D columns (hidden), Q rank, K = min(O, D), T calibration tokens.
"""

from __future__ import annotations

import torch
from torch import Tensor

from attnbench.variants.convert.method import LowRankMethod, register_method

DAMPING = 1e-6


def factorize(W_OD: Tensor, rank: int, *, X_TD: Tensor | None) -> tuple[Tensor, Tensor]:
    assert X_TD is not None, "the caller checks uses_data"
    X_TD = X_TD.to(W_OD.dtype)
    gram_DD = X_TD.T @ X_TD
    D = gram_DD.shape[0]
    gram_DD += DAMPING * gram_DD.diagonal().mean() * torch.eye(D, dtype=W_OD.dtype, device=W_OD.device)
    S_DD = torch.linalg.cholesky(gram_DD)
    U_OK, sigma_K, Vh_KD = torch.linalg.svd(W_OD @ S_DD, full_matrices=False)
    down_QD = torch.linalg.solve_triangular(S_DD, Vh_KD[:rank], upper=False, left=False)  # Vh S^-1
    return U_OK[:, :rank] * sigma_K[:rank], down_QD


METHOD = register_method(LowRankMethod(
    "whitened", "activation-whitened SVD (SVD-LLM): optimal on the calibration activations", factorize,
    uses_data=True))
