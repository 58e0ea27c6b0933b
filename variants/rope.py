"""Rotary position embedding (RoPE, Su et al. 2021) in the two layouts trained checkpoints use.

Legend: B batch, L positions, N heads, G head groups with their own frequencies (G divides N),
R rotary dim (even), F = R/2 frequency pairs, P table positions.

- ``half`` (Llama, Mistral, Qwen): dimension i is paired with i + R/2.
- ``interleaved`` (DeepSeek-V2/V3 reference code): dimension 2i is paired with 2i + 1.

Both rotate pair f by angle ``position * inv_freq[f]``; they differ only in which dims form a pair.

``inv_freq`` is ``[F]`` (every head alike) or ``[G, F]``: heads in G consecutive groups, head n
using row ``n // (N / G)``. The second form is what a GQA layer converted to MLA needs: each kv head
keeps its own subset of the trained frequencies as rotary dims (``attnbench.variants.convert``).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from attnbench.variants.shape import ROPE_LAYOUTS, RopeLayout, check_choice, check_theta


def default_inv_freq(rotary_dim: int, theta: float) -> Tensor:
    """``theta ** (-2f / R)`` for f in [0, R/2), in float32 as the reference checkpoints compute it."""
    return 1.0 / (theta ** (torch.arange(0, rotary_dim, 2, dtype=torch.float32) / rotary_dim))


def rotate(x_BLNR: Tensor, cos_LF: Tensor, sin_LF: Tensor, layout: RopeLayout) -> Tensor:
    """Rotate the last dim of ``x`` (any leading dims, positions on dim 1) by the given angles."""
    # Broadcast [L, F] over [B, L, (N,) F]: positions are dim 1, heads (if any) after them.
    extra = x_BLNR.dim() - 3
    cos = cos_LF.view(cos_LF.shape[0], *([1] * extra), cos_LF.shape[1])
    sin = sin_LF.view(sin_LF.shape[0], *([1] * extra), sin_LF.shape[1])
    return _rotate_pairs(x_BLNR, cos, sin, layout)


def _rotate_pairs(x: Tensor, cos: Tensor, sin: Tensor, layout: RopeLayout) -> Tensor:
    """Rotate pairs of ``x``'s last dim by angles whose cos/sin broadcast to ``x[..., :R/2]``."""
    if layout == "half":
        x1, x2 = x.chunk(2, dim=-1)
        return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)
    x1, x2 = x[..., 0::2], x[..., 1::2]
    out = torch.stack((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)
    return out.flatten(-2)


class Rope(nn.Module):
    """Holds ``inv_freq`` and a cos/sin table; ``table(start, length)`` slices it, never allocates.

    ``scaling`` multiplies cos and sin (YaRN's attention factor, which Hugging Face's rotary
    classes return as ``attention_scaling``); it is 1 for plain RoPE.
    """

    def __init__(self, rotary_dim: int, *, theta: float = 10000.0, layout: RopeLayout = "half",
                 inv_freq: Tensor | None = None, scaling: float = 1.0) -> None:
        super().__init__()
        if rotary_dim <= 0 or rotary_dim % 2:
            raise ValueError(f"rotary dim {rotary_dim} is not allowed: RoPE needs a positive even dim")
        check_choice("rope_layout", layout, ROPE_LAYOUTS)
        self.rotary_dim = rotary_dim
        self.layout: RopeLayout = layout
        self.scaling = scaling
        inv = default_inv_freq(rotary_dim, check_theta("theta", theta)) if inv_freq is None else inv_freq.float()
        F = rotary_dim // 2
        if inv.shape[-1:] != (F,) or inv.dim() not in (1, 2) or inv.shape[0] == 0:
            raise ValueError(f"inv_freq has shape {tuple(inv.shape)}; expected [{F}] or [groups, {F}] "
                             f"for rotary dim {rotary_dim}")
        self.register_buffer("inv_freq", inv, persistent=False)
        # The table is [P, F] or [P, G, F], like inv_freq with positions in front.
        self.register_buffer("cos_PF", torch.empty(0, *inv.shape), persistent=False)
        self.register_buffer("sin_PF", torch.empty(0, *inv.shape), persistent=False)

    @property
    def groups(self) -> int | None:
        """G when heads have their own frequencies (``inv_freq`` of ``[G, F]``), else None."""
        return self.inv_freq.shape[0] if self.inv_freq.dim() == 2 else None

    def reserve(self, num_positions: int, *, dtype: torch.dtype, device: torch.device) -> None:
        """Build the table for positions [0, num_positions) once, at set-up, outside any timed call."""
        if self.cos_PF.shape[0] >= num_positions and self.cos_PF.dtype == dtype and self.cos_PF.device == device:
            return
        # Angles and cos/sin in float32, then cast: the convention of the checkpoints' own code
        # (Hugging Face's rotary classes, DeepSeek's precompute_freqs_cis).
        pos = torch.arange(num_positions, device=device, dtype=torch.float32)
        inv = self.inv_freq.to(device=device, dtype=torch.float32)
        angle_PF = pos.view(-1, *([1] * inv.dim())) * inv  # [P, F] or [P, G, F]
        self.cos_PF = (angle_PF.cos() * self.scaling).to(dtype)
        self.sin_PF = (angle_PF.sin() * self.scaling).to(dtype)

    def table(self, start: int, length: int) -> tuple[Tensor, Tensor]:
        if start + length > self.cos_PF.shape[0]:
            raise ValueError(
                f"positions up to {start + length} exceed the RoPE table of {self.cos_PF.shape[0]}; "
                "the cache's max_len bounds the positions a layer can see")
        return self.cos_PF[start:start + length], self.sin_PF[start:start + length]

    def table_at(self, positions_L: Tensor) -> tuple[Tensor, Tensor]:
        """cos and sin ``[L, F]`` at any positions (one per compressed block, say); like
        ``_per_sequence``, no data-dependent bound check: the table covers the cache's max_len."""
        return self.cos_PF[positions_L], self.sin_PF[positions_L]

    def forward(self, x_BLNR: Tensor, start: int | Tensor) -> Tensor:
        if isinstance(start, Tensor):
            return self._per_sequence(x_BLNR, start)
        if self.groups is None:
            cos_LF, sin_LF = self.table(start, x_BLNR.shape[1])
            return rotate(x_BLNR, cos_LF, sin_LF, self.layout)
        # Per-group frequencies: split the N heads into G groups and broadcast [L, G, 1, F] over them.
        cos_LGF, sin_LGF = self.table(start, x_BLNR.shape[1])
        N, G = x_BLNR.shape[2], self.groups
        assert x_BLNR.dim() == 4 and N % G == 0, f"{N} heads do not split into {G} frequency groups"
        x_BLGnR = x_BLNR.unflatten(2, (G, N // G))
        out_BLGnR = _rotate_pairs(x_BLGnR, cos_LGF.unsqueeze(2), sin_LGF.unsqueeze(2), self.layout)
        return out_BLGnR.flatten(2, 3)

    def _per_sequence(self, x_BLNR: Tensor, start_B: Tensor) -> Tensor:
        """A ragged batch: sequence b's positions start at ``start_B[b]``."""
        B, L = x_BLNR.shape[:2]
        pos_BL = start_B.view(-1, 1).to(self.cos_PF.device) + torch.arange(L, device=self.cos_PF.device)
        # No data-dependent bound check here (it would sync a GPU and break fake-tensor dry runs): the
        # layer checked each sequence's end against its capacity, and the table covers max_len.
        cos, sin = self.cos_PF[pos_BL], self.sin_PF[pos_BL]  # [B, L, F] or [B, L, G, F]
        if self.groups is None:
            shape = (B, L, *([1] * (x_BLNR.dim() - 3)), cos.shape[-1])
            return _rotate_pairs(x_BLNR, cos.view(shape), sin.view(shape), self.layout)
        N, G = x_BLNR.shape[2], self.groups
        x_BLGnR = x_BLNR.unflatten(2, (G, N // G))
        return _rotate_pairs(x_BLGnR, cos.unsqueeze(3), sin.unsqueeze(3), self.layout).flatten(2, 3)
