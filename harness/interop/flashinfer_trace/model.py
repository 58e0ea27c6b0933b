"""How an attnbench row maps to FlashInfer-Trace's Definition, Workload and Trace, and back.

A Definition is the attention *kernel* of one variant at fixed heads and dims (the piece a kernel
author swaps: ``attnbench.variants.kernel``), with var axes ``batch_size`` and ``len_kv`` (and ``len_q`` = the
prompt in prefill). Its name and tags keep what attnbench needs to rebuild the case (the model preset
and the layer's other shape keys), so that importing it gives the same cases back. A Trace's
latency is attnbench's: the whole layer step (projections, RoPE, cache write and this kernel).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from attnbench.harness.errors import UserError
from attnbench.harness.interop.flashinfer_trace.reference import GQA_SOURCE, MLA_SOURCE
from attnbench.variants.core.family import TraceHints
from attnbench.variants.registry import families, family_of

# attnbench status -> FlashInfer-Trace EvaluationStatus. skipped and oom have no counterpart
# (flashinfer-bench evaluates every solution it is given): they are not exported as traces.
STATUS = {"ok": "PASSED", "incorrect": "INCORRECT_NUMERICAL", "error": "RUNTIME_ERROR",
          "compile_error": "COMPILE_ERROR", "timeout": "TIMEOUT"}
NOT_EXPORTED = ("skipped", "oom")
DTYPES = ("float32", "float16", "bfloat16")
_SHORT = {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16"}
# FlashInfer-Trace's op_types whose inputs are MLA's pieces (q_nope, q_pe, ckv, kpe); any other: q, k, v.
LATENT_OPS = ("mla_dense", "mla_paged")
# Shape keys an imported case sets from the tags (the rest come from the model preset), beside those a
# family's ``TraceHints.tag_keys`` add.
_TAG_KEYS = ("model", "hidden", "heads", "kv_heads", "head_dim")


def mapped_variants() -> tuple[str, ...]:
    """The variants whose family declares a FlashInfer-Trace mapping (``Family.trace``), in report order."""
    return tuple(spec.name for family in families() if family.trace is not None for spec in family.variants)


def tag_keys() -> tuple[str, ...]:
    extra = (key for family in families() if family.trace is not None for key in family.trace.tag_keys)
    return tuple(dict.fromkeys((*_TAG_KEYS, *extra)))


def _hint(row: Mapping[str, Any]) -> TraceHints:
    hint = family_of(row["variant"]).trace
    assert hint is not None, f"variant {row['variant']} has no FlashInfer-Trace mapping"
    return hint


def latent(row: Mapping[str, Any]) -> bool:
    """Whether a row's kernel takes MLA's latent pieces (its family's op_type is one of ``LATENT_OPS``)."""
    return _hint(row).op_type in LATENT_OPS


def unsupported(row: Mapping[str, Any]) -> str | None:
    """Why a row has no Definition (None: it has one)."""
    mapped = mapped_variants()
    if row["variant"] not in mapped:
        return f"variant {row['variant']} has no FlashInfer-Trace mapping; mapped: {', '.join(mapped)}"
    if row["dtype"] not in DTYPES:
        return f"dtype {row['dtype']} has no FlashInfer-Trace mapping; mapped: {', '.join(DTYPES)}"
    if row["attention"] != "self" or _present(row.get("seq_lens")) or _present(row.get("sliding_window")):
        return "only self-attention over equal-length, unwindowed sequences is mapped"
    return None


def _present(value: object) -> bool:
    return value is not None and not (isinstance(value, float) and math.isnan(value))


def _int(value: object) -> int | None:
    return int(value) if _present(value) else None


def kv_heads(row: Mapping[str, Any]) -> int:
    """K of the kernel: the variant's (its family's ``TraceHints.kv_heads``), not always the preset's ``kv_heads``
    (MHA ignores it)."""
    hint = _hint(row)
    return hint.kv_heads(row) if hint.kv_heads is not None else _int(row.get("kv_heads")) or int(row["heads"])


def new_tokens(row: Mapping[str, Any]) -> int | None:
    """Query tokens per step in decode (a const axis); None in prefill (len_q is the var axis len_kv)."""
    return int(row["decode_len"]) if row["phase"] == "decode" else None


def definition_name(row: Mapping[str, Any]) -> str:
    dims = (f"h{int(row['heads'])}_kv{kv_heads(row)}_d{int(row['head_dim'])}" if not latent(row)
            else f"h{int(row['heads'])}_ckv{int(row['d_c'])}_kpe{int(row['d_r'])}")
    q = f"_q{new_tokens(row)}" if row["phase"] == "decode" else ""
    return f"attnbench_{row['variant']}_{row['phase']}{q}_{dims}_{_SHORT[row['dtype']]}_{row['model']}"


def definition(row: Mapping[str, Any]) -> dict[str, Any]:
    """The Definition of a row's kernel (the same for every batch and seq of that configuration)."""
    mla = latent(row)
    axes: dict[str, dict[str, Any]] = {"batch_size": {"type": "var"}, "len_kv": {"type": "var"},
                                       "num_qo_heads": {"type": "const", "value": int(row["heads"])}}
    len_q = "len_kv"
    if row["phase"] == "decode":
        axes["len_q"] = {"type": "const", "value": new_tokens(row),
                         "description": "new tokens per decode step (attnbench decode_len)"}
        len_q = "len_q"
    dtype = row["dtype"]
    if mla:
        axes |= {"head_dim_ckv": {"type": "const", "value": int(row["d_c"])},
                 "head_dim_kpe": {"type": "const", "value": int(row["d_r"])}}
        inputs = {"q_nope": _t(["batch_size", len_q, "num_qo_heads", "head_dim_ckv"], dtype),
                  "q_pe": _t(["batch_size", len_q, "num_qo_heads", "head_dim_kpe"], dtype),
                  "ckv": _t(["batch_size", "len_kv", "head_dim_ckv"], dtype),
                  "kpe": _t(["batch_size", "len_kv", "head_dim_kpe"], dtype),
                  "sm_scale": {"shape": None, "dtype": "float32"}}
        outputs = {"output": _t(["batch_size", len_q, "num_qo_heads", "head_dim_ckv"], dtype)}
    else:
        axes |= {"num_kv_heads": {"type": "const", "value": kv_heads(row)},
                 "head_dim": {"type": "const", "value": int(row["head_dim"])}}
        kv = ["batch_size", "len_kv", "num_kv_heads", "head_dim"]
        inputs = {"q": _t(["batch_size", len_q, "num_qo_heads", "head_dim"], dtype), "k": _t(kv, dtype),
                  "v": _t(kv, dtype), "sm_scale": {"shape": None, "dtype": "float32"}}
        outputs = {"output": _t(["batch_size", len_q, "num_qo_heads", "head_dim"], dtype)}
    tags = ["stage:" + row["phase"], "source:attnbench", f"attnbench:variant={row['variant']}"]
    tags += [f"attnbench:{key}={row[key]}" for key in tag_keys() if _present(row.get(key))]
    return {"name": definition_name(row), "op_type": _hint(row).op_type, "axes": axes,
            "inputs": inputs, "outputs": outputs, "tags": tags, "reference": MLA_SOURCE if mla else GQA_SOURCE,
            "description": (f"attnbench {row['variant']} {row['phase']} attention kernel, causal, contiguous "
                            "[batch, len, ...] cache (the model preset and layer shape are in the tags)")}


def _t(shape: list[str], dtype: str) -> dict[str, Any]:
    return {"shape": shape, "dtype": dtype}


def workload(row: Mapping[str, Any]) -> dict[str, Any]:
    """The Workload of a row's case: its var axes and random inputs; ``uuid`` is the case_id."""
    q = new_tokens(row) or 0
    names = ("q_nope", "q_pe", "ckv", "kpe") if latent(row) else ("q", "k", "v")
    head_dim = int(row["d_c"]) + int(row["d_r"]) if latent(row) else int(row["head_dim"])
    inputs: dict[str, Any] = {name: {"type": "random"} for name in names}
    inputs["sm_scale"] = {"type": "scalar", "value": 1.0 / math.sqrt(head_dim)}
    return {"axes": {"batch_size": int(row["batch"]), "len_kv": int(row["seq"]) + q},
            "inputs": inputs, "uuid": str(row["case_id"])}


def trace(row: Mapping[str, Any], *, reference_latency_ms: float | None) -> dict[str, Any]:
    """A row's Trace: the solution is ``attnbench:<impl>[:compile=<mode>]``; the reference latency is the
    eager implementation's at the same case (0 where there is none: flashinfer-bench's own default)."""
    status = STATUS[row["status"]]
    evaluation: dict[str, Any] = {
        "status": status, "timestamp": _iso(row["finished_at"]), "log": str(row.get("reason") or ""),
        "environment": {"hardware": str(row.get("env_device_name") or "unknown"),
                        "libs": {lib: str(row[col]) for lib, col in (("torch", "env_torch"), ("cuda", "env_cuda"),
                                 ("attnbench", "env_attnbench")) if _present(row.get(col))}}}
    if status in ("PASSED", "INCORRECT_NUMERICAL"):
        rel = float(row["numerics_rel_err"]) if _present(row.get("numerics_rel_err")) else math.nan
        # attnbench's relative error is a norm ratio (not an elementwise maximum); its absolute one is the
        # largest elementwise difference. Rows older than that column have none: NaN, which
        # flashinfer-bench's Correctness admits (and strict JSON readers do not).
        abs_err = float(row["numerics_max_abs_err"]) if _present(row.get("numerics_max_abs_err")) else math.nan
        evaluation["correctness"] = {"max_relative_error": rel, "max_absolute_error": abs_err,
                                     "extra": {"attnbench_rel_err_is": "norm ratio, reduced shape",
                                               "tolerance": _float(row.get("numerics_tol"))}}
    if status == "PASSED":
        latency = float(row["latency_ms"])
        ref = reference_latency_ms or 0.0
        evaluation["performance"] = {"latency_ms": latency, "reference_latency_ms": ref,
                                     "speedup_factor": ref / latency if ref and latency else 0.0}
    solution = f"attnbench:{row['impl']}" + ("" if row["compile"] == "none" else f":compile={row['compile']}")
    return {"definition": definition_name(row), "workload": workload(row), "solution": solution,
            "evaluation": evaluation}


def _iso(value: object) -> str:
    return value.isoformat() if hasattr(value, "isoformat") else str(value)


def _float(value: object) -> float | None:
    return float(value) if _present(value) else None


def overrides(definition: Mapping[str, Any], workload: Mapping[str, Any]) -> list[str]:
    """The Hydra overrides of the attnbench case a Definition and one of its Workloads describe."""
    tags = dict(tag.split("=", 1) for tag in definition.get("tags", []) if tag.startswith("attnbench:"))
    tags = {key.removeprefix("attnbench:"): value for key, value in tags.items()}
    axes = definition["axes"]
    if "variant" not in tags:
        raise UserError(f"definition {definition['name']} has no attnbench:variant tag; "
                        "only definitions exported by attnbench (or tagged as they are) import as cases")
    phase = "decode" if "len_q" in axes else "prefill"
    values = workload["axes"]
    new = axes["len_q"]["value"] if phase == "decode" else 0
    dtype = next(iter(definition["inputs"].values()))["dtype"]
    out = [f"variant={tags['variant']}", f"phase={phase}", f"dtype={dtype}",
           f"batch={values['batch_size']}", f"seq={values['len_kv'] - new}"]
    if phase == "decode":
        out.append(f"decode_len={new}")
    out += [f"{key}={tags[key]}" for key in tag_keys() if key in tags]
    return out
