"""Randomized SVD (Halko, Martinsson and Tropp 2011) through ``torch.svd_lowrank``.

A Gaussian sketch of ``rank + OVERSAMPLE`` columns and ``POWER_ITERATIONS`` subspace iterations;
the sketch is drawn from a fixed seed without touching the global random state, so a conversion
is reproducible. At full rank the sketch spans the whole range and the result is exact.
Legend: O rows, D columns, Q rank, S sketch width.
"""

from __future__ import annotations

import torch
from torch import Tensor

from attnbench.variants.convert.method import LowRankMethod, register_method

OVERSAMPLE = 8  # Halko et al. section 4.2: 5-10 extra columns make the range finder reliable
POWER_ITERATIONS = 2  # torch.svd_lowrank's default niter
SEED = 0


def factorize(W_OD: Tensor, rank: int, *, X_TD: Tensor | None = None) -> tuple[Tensor, Tensor]:
    sketch = min(rank + OVERSAMPLE, *W_OD.shape)
    with torch.random.fork_rng(devices=[W_OD.device] if W_OD.device.type == "cuda" else []):
        torch.manual_seed(SEED)
        U_OS, S_S, V_DS = torch.svd_lowrank(W_OD, q=sketch, niter=POWER_ITERATIONS)
    return U_OS[:, :rank] * S_S[:rank], V_DS[:, :rank].T


METHOD = register_method(LowRankMethod(
    "rsvd", "randomized SVD (torch.svd_lowrank: Gaussian sketch, 2 power iterations)", factorize))
