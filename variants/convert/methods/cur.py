"""CUR: Q actual columns and Q actual rows of ``W``, chosen by leverage scores.

Leverage scores of the rank-Q singular subspaces (Mahoney and Drineas 2009, PNAS 106(3)), taken
deterministically as the Q largest (Papailiopoulos, Kyrillidis and Boutsidis 2014) so that a
conversion is reproducible; the middle factor is the Frobenius-optimal ``U = C^+ W R^+``.
Factors: ``up = C`` (columns of W), ``down = U R``.
Legend: O rows, D columns, Q rank, K = min(O, D).
"""

from __future__ import annotations

import torch
from torch import Tensor

from attnbench.variants.convert.method import LowRankMethod, register_method


def factorize(W_OD: Tensor, rank: int, *, X_TD: Tensor | None = None) -> tuple[Tensor, Tensor]:
    U_OK, _, Vh_KD = torch.linalg.svd(W_OD, full_matrices=False)
    column_leverage_D = Vh_KD[:rank].pow(2).sum(0)
    row_leverage_O = U_OK[:, :rank].pow(2).sum(1)
    columns = column_leverage_D.topk(rank).indices.sort().values
    rows = row_leverage_O.topk(rank).indices.sort().values
    C_OQ, R_QD = W_OD[:, columns], W_OD[rows]
    U_QQ = torch.linalg.pinv(C_OQ) @ W_OD @ torch.linalg.pinv(R_QD)
    return C_OQ, U_QQ @ R_QD


METHOD = register_method(LowRankMethod(
    "cur", "CUR: columns and rows by leverage score, middle factor C^+ W R^+", factorize))
