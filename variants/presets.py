"""Real models' attention shapes: the presets in ``conf/model/`` and local ``config.json`` files.

The presets are the Hydra ``model`` group's files, read here too so that a notebook and a sweep
use one source. Nothing is downloaded: a Hugging Face shape comes from a local path.
"""

from __future__ import annotations

import importlib.resources
import json
from importlib.resources.abc import Traversable
from pathlib import Path

import yaml

from attnbench.variants.shape import ModelShape

# conf/ as the wheel installs it (pyproject.toml, setup.py): a package of yaml files.
CONF_PACKAGE = "attnbench.conf"


def conf_root() -> Traversable:
    """The Hydra config tree that belongs to this code: the checkout's ``conf/`` beside it (a checkout
    or an editable install), else the installed ``attnbench.conf`` package (a wheel). Code and configs
    thus always come from the same tree, even with another attnbench installed in the environment."""
    checkout = Path(__file__).resolve().parent.parent
    if (checkout / "pyproject.toml").is_file() and (checkout / "conf" / "config.yaml").is_file():
        return checkout / "conf"
    return importlib.resources.files(CONF_PACKAGE)


def preset_names() -> list[str]:
    return sorted(p.name.removesuffix(".yaml") for p in (conf_root() / "model").iterdir() if p.name.endswith(".yaml"))


def load_preset(name: str) -> ModelShape:
    path = conf_root() / "model" / f"{name}.yaml"
    # A name, not a path: "../config" or an absolute path would load another yaml as a model.
    if name not in preset_names():
        raise ValueError(f"unknown model preset {name!r}; valid: {', '.join(preset_names())}")
    return ModelShape.from_dict(yaml.safe_load(path.read_text()))


_MLA_TYPES = ("deepseek_v2", "deepseek_v3")
_GQA_TYPES = ("llama", "mistral", "qwen2")


def shape_from_hf_config(path: str | Path) -> ModelShape:
    """Read a model's attention shape from a local Hugging Face ``config.json`` (file or folder)."""
    path = Path(path)
    if path.is_dir():
        path = path / "config.json"
    if not path.is_file():
        raise ValueError(f"no config.json at {path}")
    cfg = json.loads(path.read_text())
    model_type = cfg.get("model_type")
    if model_type not in _MLA_TYPES + _GQA_TYPES:
        raise ValueError(f"model_type={model_type!r} in {path} is not supported; "
                         f"valid: {', '.join(_MLA_TYPES + _GQA_TYPES)}")
    rope = cfg.get("rope_parameters") or {}
    theta = float(cfg.get("rope_theta", rope.get("rope_theta", 10000.0)))
    heads = cfg["num_attention_heads"]
    common = dict(name=cfg.get("_name_or_path") or path.parent.name, hidden=cfg["hidden_size"], heads=heads,
                  num_layers=cfg["num_hidden_layers"], rope_theta=theta)
    if model_type in _MLA_TYPES:
        return ModelShape(**common, head_dim=cfg["qk_nope_head_dim"], kv_heads=cfg.get("num_key_value_heads"),
                          d_c=cfg["kv_lora_rank"], d_r=cfg["qk_rope_head_dim"], q_rank=cfg.get("q_lora_rank"),
                          nope_head_dim=cfg["qk_nope_head_dim"], v_head_dim=cfg["v_head_dim"],
                          rope_layout="interleaved" if cfg.get("rope_interleave", True) else "half")
    head_dim = cfg.get("head_dim") or cfg["hidden_size"] // heads
    return ModelShape(**common, head_dim=head_dim, kv_heads=cfg.get("num_key_value_heads", heads),
                      d_c=4 * head_dim, d_r=max(2, head_dim // 2), rope_layout="half",
                      qkv_bias=model_type == "qwen2" or bool(cfg.get("attention_bias", False)))
