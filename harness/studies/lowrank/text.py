"""Fixed English text for calibration and perplexity, shipped with every CPython: nothing to download.

The text is ``pydoc_data.topics.topics`` (the Python language reference's help topics, about 65k
words of English prose and some code), its values joined in sorted-key order with blank lines.
Perplexity uses the first ``eval_tokens`` tokens; calibration uses ``calib_tokens`` tokens from the
text's midpoint on, a different slice, so calibration never sees the evaluated text. The topics
change between Python releases, so rows record the Python version and the text's SHA-256 prefix.

Legend: T tokens.
"""

from __future__ import annotations

import hashlib
import platform

import torch
from torch import Tensor


def reference_text() -> str:
    from pydoc_data.topics import topics

    return "\n\n".join(topics[key] for key in sorted(topics))


def text_label(text: str) -> str:
    """Provenance for the rows: source, Python version and the text's SHA-256 prefix."""
    digest = hashlib.sha256(text.encode()).hexdigest()[:12]
    return f"pydoc_data.topics python-{platform.python_version()} sha256:{digest}"


def token_slices(tokenizer, *, calib_tokens: int, eval_tokens: int) -> tuple[Tensor, Tensor]:  # noqa: ANN001
    """``(calib_ids_T, eval_ids_T)``: the two fixed, disjoint slices of the tokenized text."""
    ids_T = torch.tensor(tokenizer(reference_text(), add_special_tokens=False)["input_ids"])
    middle = ids_T.numel() // 2
    if eval_tokens > middle or middle + calib_tokens > ids_T.numel():
        raise ValueError(f"eval_tokens={eval_tokens} and calib_tokens={calib_tokens} do not fit the text's "
                         f"{ids_T.numel()} tokens: allowed up to {middle} each")
    return ids_T[middle:middle + calib_tokens], ids_T[:eval_tokens]
