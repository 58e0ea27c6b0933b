"""The numerics gate for a layer that selects tokens (dsa's lightning indexer): one selection, two checks.

Legend: B batch, L queries, T cache rows, K selected rows per query.

Which tokens a query keeps is a discontinuous function of the indexer's scores: round-off in
bfloat16 reorders two near-equal scores and swaps a token, which moves the output by that token's
share of attention however exact the rest is (measured: a reduced bfloat16 prefill swapped tokens
and missed the 3e-2 tolerance in 6 of 18 cases). So the gate checks the two halves apart:

- the attention: the float64 reference runs on the implementation's own selection (a forward hook
  on the reference's ``indexer`` replaces its choice with the recorded one), so the output's
  relative error measures the attention and nothing else;
- the selection: against the reference's float64 scores of the same step, every token the
  implementation chose must score at least the reference's k-th best minus the tolerance, relative
  to the row's largest score magnitude (its *shortfall*); unused slots (-1) exactly where a query
  sees fewer than k tokens. The k-th best comes from the indexers' own ``stable_topk``; the shortfall
  compares scores, so among tokens that tie at the k-th score any is a top-k (which one the layers
  take, the lower index, is tested by prefill against decode: round-off can make or break an exact
  tie between a low-precision implementation and the float64 reference, so the gate cannot demand it).

A layer opts in by having an ``indexer`` module whose forward returns ``idx_BLK`` and whose
``scores(*args, **kwargs)`` returns the ``[B, L, T]`` scores it ranks (-inf where not visible).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn

from attnbench.variants.topk import stable_topk


def shortfall(scores_BLT: Tensor, idx_BLK: Tensor) -> float:
    """How far the chosen tokens fall below each row's k-th best score, relative to the row's largest
    score magnitude (0: a top-k of ``scores``; inf: a wrong count, or an invisible token chosen)."""
    scores_BLT, idx_BLK = scores_BLT.double(), idx_BLK.long()
    K = idx_BLK.shape[-1]
    visible_BL = (scores_BLT > float("-inf")).sum(-1)
    kept_BL = visible_BL.clamp_max(K)
    if not torch.equal((idx_BLK >= 0).sum(-1), kept_BL):
        return math.inf
    chosen_BLK = scores_BLT.gather(-1, idx_BLK.clamp_min(0)).masked_fill(idx_BLK < 0, float("inf"))
    if bool((chosen_BLK == float("-inf")).any()):
        return math.inf
    kth_BL = stable_topk(scores_BLT, K)[0].gather(-1, (kept_BL - 1).unsqueeze(-1)).squeeze(-1)
    scale_BL = scores_BLT.masked_fill(scores_BLT == float("-inf"), 0).abs().amax(-1).clamp_min(1e-300)
    return ((kth_BL - chosen_BLK.amin(-1)).clamp_min(0) / scale_BL).max().item()


def selects_tokens(layer: nn.Module) -> bool:
    """Whether ``layer`` opts in: an ``indexer`` whose forward is its selection and which has ``scores``
    (DeepSeek-V4's indexer only scores, its layer selects: it is checked as any layer is)."""
    indexer = getattr(layer, "indexer", None)
    return (isinstance(indexer, nn.Module) and type(indexer).forward is not nn.Module.forward
            and callable(getattr(indexer, "scores", None)))


@contextmanager
def recorded(layer: nn.Module) -> Iterator[list[Tensor]]:
    """Every selection ``layer.indexer`` makes while active, in call order."""
    chosen: list[Tensor] = []

    def hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Tensor) -> None:
        chosen.append(output.detach().clone())

    handle = layer.indexer.register_forward_hook(hook, with_kwargs=True)
    try:
        yield chosen
    finally:
        handle.remove()


@contextmanager
def replayed(layer: nn.Module, chosen: list[Tensor]) -> Iterator[list[float]]:
    """``layer.indexer`` returns the recorded selections instead of its own; yields each one's shortfall
    against the scores ``layer.indexer`` computed for that step."""
    calls = iter(chosen)
    shortfalls: list[float] = []

    def hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Tensor) -> Tensor:
        idx_BLK = next(calls).to(output.device)
        assert idx_BLK.shape == output.shape, f"selection {tuple(idx_BLK.shape)} for a step of {tuple(output.shape)}"
        shortfalls.append(shortfall(module.scores(*args, **kwargs), idx_BLK))
        return idx_BLK

    handle = layer.indexer.register_forward_hook(hook, with_kwargs=True)
    try:
        yield shortfalls
    finally:
        handle.remove()
    assert next(calls, None) is None, "the reference made fewer selections than the implementation"


class IndexerSelection:
    """``attnbench.variants.core.family.Selection`` for a layer whose ``indexer`` selects
    (see the module's docstring)."""

    def applies(self, layer: nn.Module) -> bool:
        return selects_tokens(layer)

    def recorded(self, layer: nn.Module) -> contextlib.AbstractContextManager[list[Tensor]]:
        return recorded(layer)

    def replayed(self, layer: nn.Module, chosen: list[Tensor]) -> contextlib.AbstractContextManager[list[float]]:
        return replayed(layer, chosen)


INDEXER_SELECTION = IndexerSelection()
