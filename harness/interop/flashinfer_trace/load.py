"""``attnbench import-trace DIR``: a FlashInfer-Trace definitions + workloads folder as attnbench cases,
and a Definition's reference ``run()`` as one more correctness oracle beside attnbench's own.

Legend: B batch_size, L query tokens, T kv tokens, N query heads, K kv heads, E head dim,
C latent dim, R rotary dim.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from attnbench.harness.errors import ArgumentParser, UserError, guarded
from attnbench.harness.interop.flashinfer_trace import model
from attnbench.harness.interop.flashinfer_trace.reference import load_run
from attnbench.harness.results.paths import check_run_name


@dataclass(frozen=True)
class Folder:
    definitions: dict[str, dict[str, Any]]  # name -> Definition
    workloads: dict[str, list[dict[str, Any]]]  # definition name -> its Workloads


def read_folder(root: Path) -> Folder:
    """Definitions (``definitions/**/*.json``) and workloads (``workloads/**/*.jsonl``) under ``root``."""
    if not (root / "definitions").is_dir():
        raise UserError(f"{root} has no definitions/ folder; give a FlashInfer-Trace folder "
                        "(definitions/, workloads/, traces/)")
    definitions = {}
    for path in sorted((root / "definitions").rglob("*.json")):
        body = _json(path, path.read_text(errors="replace"))
        if not isinstance(body.get("name"), str) or not body["name"]:
            raise UserError(f"{path}: a definition's \"name\" is a non-empty string, not {body.get('name')!r}")
        definitions[body["name"]] = body
    workloads: dict[str, list[dict[str, Any]]] = {name: [] for name in definitions}
    for path in sorted((root / "workloads").rglob("*.jsonl")) if (root / "workloads").is_dir() else []:
        for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            if line.strip():
                entry = _json(f"{path}:{number}", line)
                if not isinstance(entry.get("definition"), str) or not isinstance(entry.get("workload"), dict):
                    raise UserError(f"{path}:{number}: a workload line holds \"definition\" (a name) and "
                                    "\"workload\" (an object)")
                if entry["definition"] not in definitions:
                    raise UserError(f"{path}: workload of definition {entry['definition']!r}, which "
                                    f"definitions/ lacks; known: {', '.join(sorted(definitions))}")
                workloads[entry["definition"]].append(entry["workload"])
    return Folder(definitions, workloads)


def _json(where: object, text: str) -> dict[str, Any]:
    """``text`` as a JSON object, else ``UserError`` naming ``where`` (a file, or a file and line)."""
    try:
        body = json.loads(text)
    except json.JSONDecodeError as error:
        raise UserError(f"{where} is not JSON ({error.msg} at line {error.lineno}, column {error.colno}); "
                        "give a FlashInfer-Trace folder") from None
    if not isinstance(body, dict):
        raise UserError(f"{where} holds a JSON {type(body).__name__}, not an object; give a FlashInfer-Trace folder")
    return body


def case_overrides(folder: Folder) -> list[list[str]]:
    """One override list per (definition, workload): the attnbench case at that shape (every impl)."""
    return [model.overrides(folder.definitions[name], work)
            for name in folder.definitions for work in folder.workloads[name]]


def sweep_commands(folder: Folder, *, impl: str = "all", name: str = "flashinfer_trace") -> list[str]:
    """``attnbench -m`` commands measuring exactly the folder's cases: one per definition and batch, its
    seqs as a list (a Hydra sweep is a product: batches with different seqs can't share one command)."""
    groups: dict[tuple[str, ...], list[str]] = {}
    for case in case_overrides(folder):
        fixed = tuple(o for o in case if not o.startswith("seq="))
        groups.setdefault(fixed, []).extend(o.removeprefix("seq=") for o in case if o.startswith("seq="))
    return [f"attnbench -m name={name} resume=true impl={impl} " + " ".join(fixed) + f" seq={','.join(seqs)}"
            for fixed, seqs in groups.items()]


# --- the Definition's reference as an oracle -------------------------------------------------------


@dataclass(frozen=True)
class OracleCheck:
    definition: str
    impl: str
    rel_err: float  # norm(impl - reference) / norm(reference), as harness.measure.numerics
    max_abs_err: float
    tolerance: float

    @property
    def ok(self) -> bool:
        return self.rel_err <= self.tolerance


def _axis_values(definition: dict[str, Any], axes: dict[str, int]) -> dict[str, int]:
    values = {name: axis["value"] for name, axis in definition["axes"].items() if axis["type"] == "const"}
    missing = [name for name, axis in definition["axes"].items() if axis["type"] == "var" and name not in axes]
    if missing:
        raise UserError(f"axes {', '.join(missing)} of {definition['name']} have no value; give them in axes=")
    return values | {name: int(axes[name]) for name in axes}


def random_inputs(definition: dict[str, Any], axes: dict[str, int], *, seed: int = 0) -> dict[str, Any]:
    """Random tensors of the Definition's input shapes at ``axes`` (sm_scale: 1/sqrt of the qk dim)."""
    values = _axis_values(definition, axes)
    gen = torch.Generator().manual_seed(seed)
    inputs: dict[str, Any] = {}
    for name, spec in definition["inputs"].items():
        if spec["shape"] is None:
            continue
        shape = [values[axis] for axis in spec["shape"]]
        inputs[name] = torch.randn(shape, generator=gen, dtype=torch.float64).to(getattr(torch, spec["dtype"]))
    qk = values.get("head_dim") or values["head_dim_ckv"] + values["head_dim_kpe"]
    inputs["sm_scale"] = 1.0 / math.sqrt(qk)
    return inputs


def _latent(kernel: object) -> bool:
    # A latent-attention kernel declares which cache rows it reads (``packed_cache``, part of its
    # family's kernel protocol); a kernel on per-head keys and values has no such attribute.
    return hasattr(kernel, "packed_cache")


def run_impl_kernel(definition: dict[str, Any], impl: str, inputs: dict[str, Any]) -> torch.Tensor:
    """attnbench's ``impl`` kernel on the Definition's inputs (the kernel an impl injects into its layer)."""
    from attnbench.variants.mask import make_mask
    from attnbench.variants.registry import implementation

    kernel = getattr(implementation(impl), "kernel", None)
    mla = definition["op_type"] in model.LATENT_OPS
    if kernel is None or getattr(kernel, "flex", True) is None or _latent(kernel) != mla:
        raise UserError(f"impl {impl} has no {'MLA kernel' if mla else 'attention kernel'} to run on "
                        f"{definition['name']}; try: {'absorbed, absorbed_sdpa' if mla else 'eager, sdpa'}")
    first = inputs["q_nope" if mla else "q"]
    L, T = first.shape[1], inputs["ckv" if mla else "k"].shape[1]
    mask = make_mask(q_len=L, kv_len=T, q_offset=T - L, device=first.device, dense_causal=kernel.dense_causal)
    if mla:
        # FlashMLA's layout: the rows [c_kv; k_rope] as one tensor, for the kernels that read it so.
        packed = torch.cat([inputs["ckv"], inputs["kpe"]], dim=-1) if kernel.packed_cache else None
        return kernel(inputs["q_nope"], inputs["q_pe"], inputs["ckv"], inputs["kpe"], scale=inputs["sm_scale"],
                      mask=mask, kv_BTE=packed)
    return kernel(inputs["q"], inputs["k"], inputs["v"], scale=inputs["sm_scale"], mask=mask)


def check_against_reference(definition: dict[str, Any], impl: str, *, axes: dict[str, int],
                            seed: int = 0) -> OracleCheck:
    """The Definition's reference ``run()`` and attnbench's ``impl`` on the same random inputs."""
    from attnbench.harness.measure.numerics import TOLERANCE, relative_error

    inputs = random_inputs(definition, axes, seed=seed)
    expected = load_run(definition["reference"])(**inputs)
    actual = run_impl_kernel(definition, impl, inputs)
    dtype = next(iter(definition["outputs"].values()))["dtype"]
    return OracleCheck(definition["name"], impl, relative_error(actual, expected),
                       float((actual.double() - expected.double()).abs().max()), TOLERANCE[dtype])


@guarded("import-trace")
def main(argv: Sequence[str] | None = None) -> int:
    parser = ArgumentParser(prog="attnbench import-trace",
                            description="Print the attnbench sweeps measuring a FlashInfer-Trace folder's "
                                        "definitions at its workloads' shapes "
                                        "(python -m pydoc attnbench.harness.interop.flashinfer_trace).")
    parser.add_argument("folder", help="a FlashInfer-Trace folder (definitions/, workloads/)")
    parser.add_argument("--impl", default="all", help="attnbench implementations to measure (default: all)")
    parser.add_argument("--name", default="flashinfer_trace", help="results/<name>/ of the sweeps")
    parser.add_argument("--check", action="store_true",
                        help="also run each definition's reference run() against --impl's kernel at a tiny shape")
    args = parser.parse_args(argv)
    if not args.folder.strip():  # before Path(): Path("") is the current folder
        raise UserError("folder '' is empty; give a FlashInfer-Trace folder (definitions/, workloads/)")
    check_run_name(args.name)
    _check_impls(args.impl)
    folder = read_folder(Path(args.folder))
    for command in sweep_commands(folder, impl=args.impl, name=args.name):
        print(command)
    if args.check:
        for line in _checks(folder, args.impl):
            print(line)
    return 0


def _check_impls(impl: str) -> None:
    """``--impl``: ``all`` or registered implementations, comma-separated (what the printed sweep takes)."""
    from attnbench.variants.registry import IMPLEMENTATIONS

    known = IMPLEMENTATIONS.names()
    bad = [name for name in impl.split(",") if name not in known] if impl != "all" else []
    if bad:
        raise UserError(f"--impl {bad[0]!r} is not an implementation; valid: all, {', '.join(known)} "
                        "(several: comma-separated)")


def _checks(folder: Folder, impl: str) -> list[str]:
    """``# <definition> <impl>: rel_err ...`` for each definition and each impl with a kernel for it."""
    lines = []
    for body in folder.definitions.values():
        mla = body["op_type"] in model.LATENT_OPS
        default = ("absorbed", "absorbed_sdpa") if mla else ("eager", "sdpa")
        for name in default if impl == "all" else impl.split(","):
            try:
                result = check_against_reference(body, name, axes={"batch_size": 2, "len_kv": 8})
            except UserError as why:  # this impl has no kernel of this definition's kind
                lines.append(f"# {body['name']} {name}: not checked ({why})")
                continue
            lines.append(f"# {body['name']} {name}: rel_err {result.rel_err:.3g} "
                         f"({'ok' if result.ok else 'MISMATCH'}, tol {result.tolerance:g})")
    return lines
