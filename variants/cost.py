"""The analytic cost of one layer step; each variant fills it in beside the math it counts.

FLOPs count the matrix products an implementation performs (2 per multiply-add), the convention of
``torch.utils.flop_counter``; elementwise work (softmax, RoPE, norms) is left out. Bytes are the
minimum that must move between memory and the chip: every weight the path reads, once; the cached
prefix, read once; the new cache entries, written once; the input and output activations.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class Cost:
    flops: int  # matmul FLOPs of the step
    weight_bytes: int
    cache_read_bytes: int
    cache_write_bytes: int
    activation_bytes: int  # input x (and cross-attention memory) in, output y out
    params: int  # parameters the layer holds (not only those this path reads)
    kv_bytes_per_token: int  # cache bytes per token for this layer in this path's layout
    # For predicting a step's memory before allocating anything (an estimate, not a count):
    score_elements: int = 0  # one attention score matrix, B·N·L·T, if a kernel materializes it
    qk_dim: int = 0  # width of the keys the kernel sees
    v_dim: int = 0  # width of the values the kernel sees
    transient_bytes: int = 0  # other intermediates of the step (projections, expanded keys)
    # A sparse variant's indexer (DeepSeek-V3.2's and V4-CSA's lightning indexer): its share of
    # ``flops`` and of ``bytes_min``, included in both and reported apart.
    indexer_flops: int = 0
    indexer_bytes: int = 0

    @property
    def bytes_min(self) -> int:
        return self.weight_bytes + self.cache_read_bytes + self.cache_write_bytes + self.activation_bytes

    @property
    def intensity(self) -> float:
        """Arithmetic intensity, FLOPs per byte of minimum traffic."""
        return self.flops / self.bytes_min

    def as_dict(self) -> dict[str, float]:
        out: dict[str, float] = asdict(self)
        out["bytes_min"] = self.bytes_min
        out["intensity_flops_per_byte"] = self.intensity
        return out


def matmul_flops(rows: int, inner: int, cols: int) -> int:
    """FLOPs of ``[rows, inner] @ [inner, cols]``."""
    return 2 * rows * inner * cols
