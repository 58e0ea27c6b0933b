"""QR with column pivoting (Businger and Golub 1965), truncated after Q pivots.

Greedily picks the column of ``W`` with the largest residual norm, orthonormalises it against the
ones already picked and removes its direction from every column; the approximation is the
projection ``Q Q^T W`` onto the span of the picked columns (``W P ≈ Q [R11 R12]``). Torch has no
pivoted QR (LAPACK's geqp3), so it is written out here; each new direction is orthogonalised twice
against the previous ones ("twice is enough", Giraud et al. 2005) so float64 round-off stays small.
Legend: O rows, D columns, Q rank.
"""

from __future__ import annotations

import torch
from torch import Tensor

from attnbench.variants.convert.method import LowRankMethod, register_method


def factorize(W_OD: Tensor, rank: int, *, X_TD: Tensor | None = None) -> tuple[Tensor, Tensor]:
    O, _ = W_OD.shape
    Q_OQ = W_OD.new_zeros(O, rank)
    residual_OD = W_OD.clone()
    floor = torch.finfo(W_OD.dtype).eps * W_OD.norm()
    for j in range(rank):
        norms_D = residual_OD.pow(2).sum(0)
        pivot = int(norms_D.argmax())
        if norms_D[pivot].sqrt() <= floor:
            break  # W has rank j: the remaining factors stay zero
        q_O = residual_OD[:, pivot]
        for _ in range(2):
            q_O = q_O - Q_OQ[:, :j] @ (Q_OQ[:, :j].T @ q_O)
        Q_OQ[:, j] = q_O / q_O.norm()
        residual_OD -= torch.outer(Q_OQ[:, j], Q_OQ[:, j] @ residual_OD)
    return Q_OQ, Q_OQ.T @ W_OD


METHOD = register_method(LowRankMethod(
    "qr", "QR with column pivoting: projection onto the span of Q greedily chosen columns", factorize))
