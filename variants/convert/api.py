"""GQA -> MLA: a trained MHA/GQA/MQA layer rewritten as an MLA layer with latent size d_c.

Legend: T calibration tokens, D hidden, N query heads, K kv heads, H head dim, C = d_c latent,
R = d_r rotary dims per head, Z = R/2 kept pairs, P = H − R nope dims, O = K·P + K·H rows of the
jointly compressed matrix.

The recipe (MHA2MLA, Ji et al. 2025, arXiv 2502.14837, sections 3.1-3.2, on GQA models):
1. Partial RoPE (``partial_rope``): each kv head keeps Z frequency pairs rotary; its other dims
   lose RoPE (the one approximation besides the rank).
2. Joint K/V compression: ``W_OD = [W_k_nope (all kv heads); W_v (all kv heads)] ≈ up_OC @ down_CD``
   by the chosen method. ``down`` becomes c_kv's projection, ``up`` the per-head up-projections.
3. The MLA layer: ``kv_a_proj = [down; W_k_rope]`` (C + K·R outputs), ``kv_b_proj`` of query head
   n repeats its kv head's rows of ``up`` (MLA's kv_b_proj is per query head), ``q_proj`` rows
   reordered to [nope dims; rotary dims] per head, ``o_proj`` and the softmax scale ``1/sqrt(H)``
   unchanged, no RMSNorm on the latent.

Cache layout: ``rope_heads = K`` rotary keys, one per source kv head, each with its own kept
frequencies (DeepSeek's single shared key is rope_heads = 1); per token and layer the cache holds
``d_c + K·d_r`` elements, ``[c_kv; k_rope_0; ...; k_rope_{K-1}]`` in one packed row.

At d_r = H (every pair rotary, P = 0) and d_c = ``available_rank`` = min(O, D) (every direction
of the stacked matrix kept) every method is exact, so the converted layer reproduces the source to
round-off.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from attnbench.variants.convert.method import METHODS, LowRankMethod
from attnbench.variants.convert.partial_rope import PAIR_STRATEGIES, PairStrategy, rotary_dims, select_pairs
from attnbench.variants.families.gqa import GQA
from attnbench.variants.families.mla import MLA, MLAConfig
from attnbench.variants.rope import Rope
from attnbench.variants.shape import check_choice


@dataclass(frozen=True)
class Conversion:
    """A converted layer and what the conversion measured on the way."""

    layer: MLA
    method: str
    pairs_KZ: Tensor  # frequency pairs each kv head keeps rotary
    weight_rel_err: float  # ‖W − up·down‖_F / ‖W‖_F of the stacked [W_k_nope; W_v]
    kv_act_rel_err: float | None  # ‖(W − up·down) X^T‖_F / ‖W X^T‖_F on the calibration tokens
    rank_available: int  # min(O, D): the largest d_c this source allows at this d_r


def available_rank(source: GQA, d_r: int) -> int:
    """min(K·(H − d_r) + K·H, D): the rank of the stacked key/value matrix at most."""
    c = source.config
    return min(c.kv_heads * (c.head_dim - d_r) + c.kv_heads * c.head_dim, c.hidden)


def to_mla(source: GQA, *, d_c: int, d_r: int, method: str = "svd", calibration_BTD: Tensor | None = None,
           rope_pairs: PairStrategy = "auto") -> MLA:
    """The MLA layer approximating ``source`` (see ``convert`` for the arguments)."""
    return convert(source, d_c=d_c, d_r=d_r, method=method, calibration_BTD=calibration_BTD,
                   rope_pairs=rope_pairs).layer


def convert(source: GQA, *, d_c: int, d_r: int, method: str = "svd", calibration_BTD: Tensor | None = None,
            rope_pairs: PairStrategy = "auto") -> Conversion:
    """Convert a GQA-family self-attention layer (``mha``, ``mqa``, ``gqa``) to MLA.

    ``d_c``: latent size, 1..``available_rank(source, d_r)``. ``d_r``: rotary dims per head, even,
    2..head_dim. ``method``: a registered low-rank method (``method_names()``). ``calibration_BTD``:
    the layer's input hidden states (any leading dims), used by ``rope_pairs="norm"`` and by
    data-aware methods. ``rope_pairs``: one of ``PAIR_STRATEGIES`` (``partial_rope``).
    """
    chosen = _check(source, d_c=d_c, d_r=d_r, method=method, calibration_BTD=calibration_BTD,
                    rope_pairs=rope_pairs)
    c = source.config
    N, K, H, D = c.heads, c.kv_heads, c.head_dim, c.hidden
    R, P, C = d_r, c.head_dim - d_r, d_c
    x_TD = None if calibration_BTD is None else calibration_BTD.detach().reshape(-1, D)
    pairs_KZ = select_pairs(source, R // 2, strategy=rope_pairs, calibration_TD=x_TD)
    rot_KR, nope_KP = rotary_dims(pairs_KZ, H, source.rope.layout)
    group = torch.arange(N) // (N // K)  # kv head of each query head

    with torch.no_grad():
        w_q_NHD = source.q_proj.weight.detach().double().view(N, H, D)
        w_k_KHD = source.k_proj.weight.detach().double().view(K, H, D)
        w_v_KHD = source.v_proj.weight.detach().double().view(K, H, D)
        w_k_rope_KRD = _rows(w_k_KHD, rot_KR)
        w_OD = torch.cat((_rows(w_k_KHD, nope_KP).reshape(K * P, D), w_v_KHD.reshape(K * H, D)))
        up_OC, down_CD = chosen.factorize(w_OD, C, X_TD=None if x_TD is None else x_TD.double())
        assert up_OC.shape == (w_OD.shape[0], C) and down_CD.shape == (C, D), chosen.name
        weight_rel_err = float((w_OD - up_OC @ down_CD).norm() / w_OD.norm())
        kv_act_rel_err = None
        if x_TD is not None:  # the error whitened SVD minimises: on the projected keys and values
            x_DT = x_TD.double().T
            kv_act_rel_err = float(((w_OD - up_OC @ down_CD) @ x_DT).norm() / (w_OD @ x_DT).norm())

        up_k_KPC, up_v_KHC = up_OC[:K * P].view(K, P, C), up_OC[K * P:].view(K, H, C)
        kv_b_NXC = torch.cat((up_k_KPC[group], up_v_KHC[group]), dim=1)  # [N, P + H, C]
        q_NXD = torch.cat((_rows(w_q_NHD, nope_KP[group]), _rows(w_q_NHD, rot_KR[group])), dim=1)
        state = {"q_proj.weight": q_NXD.reshape(N * H, D),
                 "kv_a_proj.weight": torch.cat((down_CD, w_k_rope_KRD.reshape(K * R, D))),
                 "kv_b_proj.weight": kv_b_NXC.reshape(N * (P + H), C),
                 "o_proj.weight": source.o_proj.weight.detach()}

    config = MLAConfig(hidden=D, heads=N, d_c=C, d_r=R, nope_head_dim=P, v_head_dim=H,
                       rope_theta=c.rope_theta, rope_layout=source.rope.layout, softmax_scale=source.scale,
                       rope_heads=K, latent_norm=False)
    rope = Rope(R, layout=source.rope.layout, inv_freq=source.rope.inv_freq[pairs_KZ].cpu(),
                scaling=source.rope.scaling)
    with torch.device(source.device):
        layer = MLA(config, rope=rope)  # the variant it is: MLA's own name
    layer = layer.to(dtype=source.dtype)
    layer.load_state_dict({name: w.to(source.dtype) for name, w in state.items()}, strict=True)
    return Conversion(layer, chosen.name, pairs_KZ, weight_rel_err, kv_act_rel_err, available_rank(source, d_r))


def _rows(w_KHD: Tensor, index_KX: Tensor) -> Tensor:
    """``w[k, index[k, x]]`` for every k and x: per-head row selection, ``[K, X, D]``."""
    return torch.gather(w_KHD, 1, index_KX.to(w_KHD.device).unsqueeze(-1).expand(-1, -1, w_KHD.shape[-1]))


def _check(source: object, *, d_c: object, d_r: object, method: str, calibration_BTD: Tensor | None,
           rope_pairs: str) -> LowRankMethod:
    """Every bad input as the one-line ``ValueError`` a user sees; returns the method."""
    if not isinstance(source, GQA):
        kind = getattr(source, "variant", type(source).__name__)
        raise ValueError(f"source is {kind!r}; to_mla converts a GQA-family layer: mha, mqa, gqa")
    c = source.config
    if source.attention != "self" or source.rope is None:
        raise ValueError(f"source attention={source.attention!r}; to_mla converts self-attention layers only")
    if c.qkv_bias or c.o_bias:
        raise ValueError(f"source has biases (qkv_bias={c.qkv_bias}, o_bias={c.o_bias}); "
                         "converting biased projections is not supported yet")
    if c.output_gate or c.qk_norm != "none" or c.rotary_dim != c.head_dim:
        raise ValueError(f"source has Qwen3-Next's options (output_gate={c.output_gate}, qk_norm={c.qk_norm!r}, "
                         f"partial_rotary_factor={c.partial_rotary_factor}); to_mla converts plain GQA layers only")
    chosen: LowRankMethod = METHODS.get(method)
    check_choice("rope_pairs", rope_pairs, PAIR_STRATEGIES)
    H = c.head_dim
    if isinstance(d_r, bool) or not isinstance(d_r, int) or d_r <= 0 or d_r > H or d_r % 2:
        why = "is odd" if isinstance(d_r, int) and 0 < d_r <= H else \
            f"exceeds head_dim={H}" if isinstance(d_r, int) and d_r > H else "is not allowed"
        raise ValueError(f"d_r={d_r!r} {why}; allowed: even d_r in 2..{H} (rotary dims per head, in pairs)")
    rank = available_rank(source, d_r)
    if isinstance(d_c, bool) or not isinstance(d_c, int) or not 1 <= d_c <= rank:
        raise ValueError(f"d_c={d_c!r} is outside the rank available at d_r={d_r}; allowed: 1..{rank} "
                         f"(min of K·(H−d_r)+K·H = {c.kv_heads * (2 * H - d_r)} and hidden = {c.hidden})")
    needs_data = chosen.uses_data or rope_pairs == "norm"
    if needs_data and calibration_BTD is None:
        who = f"method {method!r}" if chosen.uses_data else "rope_pairs='norm'"
        raise ValueError(f"{who} needs calibration_BTD, the layer's input hidden states; none given")
    if calibration_BTD is not None and (calibration_BTD.dim() < 2 or calibration_BTD.shape[-1] != c.hidden):
        raise ValueError(f"calibration_BTD has shape {tuple(calibration_BTD.shape)}; "
                         f"expected [..., tokens, hidden={c.hidden}]")
    return chosen
