"""Sliding-window keys: the window, the schedule of window and full layers, and sinks (also DeepSeek-V4's)."""

from __future__ import annotations

from dataclasses import dataclass

from attnbench.variants.core.family import shape_field
from attnbench.variants.shape import LAYER_KINDS, check_positive


@dataclass(frozen=True)
class WindowShape:
    sliding_window: int | None = shape_field(None, unit="tokens", meaning="swa's window W (null: none)", column=True)
    layer_pattern: str | None = shape_field(None, meaning="window (S) and full (F) layers, repeated over "
                                            "num_layers (null: every layer has the window)", column=True)
    attn_sinks: bool = shape_field(False, meaning="one learned sink logit per query head (gpt-oss)", column=True)
    sink_tokens: int = shape_field(0, unit="tokens", meaning="StreamingLLM sink tokens always visible to swa", column=True)

    def __post_init__(self) -> None:
        check_window(self)


def check_window(shape: WindowShape) -> None:
    check_positive("sliding_window", shape.sliding_window, optional=True)
    if shape.layer_pattern is not None and (not shape.layer_pattern or set(shape.layer_pattern) - set(LAYER_KINDS)):
        letters = ", ".join(f"{k} ({v})" for k, v in LAYER_KINDS.items())
        raise ValueError(f"layer_pattern={shape.layer_pattern!r} is not allowed: it must be a string of the "
                         f"letters {letters}, e.g. SF")
    if isinstance(shape.sink_tokens, bool) or not isinstance(shape.sink_tokens, int) or shape.sink_tokens < 0:
        raise ValueError(f"sink_tokens={shape.sink_tokens!r} is not allowed: it must be an integer >= 0")


def reduce_window(shape) -> dict[str, object]:  # noqa: ANN001 - a ModelShape
    """A window of at most 8 positions, so the numerics gate's tokens run past its end and through the ring."""
    return {} if shape.sliding_window is None else {"sliding_window": min(shape.sliding_window, 8)}
