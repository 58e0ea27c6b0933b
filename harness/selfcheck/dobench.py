"""An independent timing of MLA's absorbed decode step with ``triton.testing.do_bench``, against the
harness's row of the same case (within 10%): ``python -m attnbench.harness.selfcheck.dobench ROWS_DIR...``.

The step is rebuilt as ``attnbench.harness.measure.runner`` builds it (same seed, shape, cache fill), then
handed to ``do_bench`` (its own L2 flush, CUDA events, median), not to our timer.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

TOLERANCE = 0.10


def main(argv: list[str]) -> int:
    import triton.testing
    from omegaconf import OmegaConf

    from attnbench import variants
    from attnbench.harness import results
    from attnbench.harness.measure.case import Case
    from attnbench.harness.measure.dryrun import case_inputs
    from attnbench.harness.sweep.overrides import config_path
    from attnbench.harness.sweep.plan import resolve_shape

    worst = 0.0
    for folder in map(Path, argv):
        frame = results.load(folder)
        rows = frame[(frame.status == "ok") & (frame.impl == "absorbed") & (frame.phase == "decode")]
        if rows.empty:
            print(f"{folder}: no ok absorbed decode row")
            return 1
        row = rows.iloc[0]
        preset = OmegaConf.to_container(OmegaConf.load(Path(config_path()) / "model" / f"{row.model}.yaml"))
        _, shape = resolve_shape({"model": preset})
        case = Case(variant=row.variant, impl=row.impl, compile=None, phase="decode", model=row.model, shape=shape,
                    batch=int(row.batch), seq=int(row.seq), decode_len=int(row.decode_len), dtype=row.dtype,
                    device=str(row.device), timing=row.timing, l2_flush=bool(row.l2_flush))
        device, dtype = torch.device(case.device), case.torch_dtype
        layer = variants.build(case.variant, case.shape, dtype=dtype, device=device, seed=0)
        cache = layer.new_cache(case.batch, case.max_len, impl=case.impl)
        cache.fill_random_(case.seq, seed=0)
        x_BLD, memory_BMD = case_inputs(case, layer.hidden, device, dtype, 0)
        step = layer.prepare("decode", x_BLD, cache, impl=case.impl, memory_BMD=memory_BMD)
        if case.timing == "cuda_graph":
            from attnbench.harness.measure.timer import capture_cuda_graph

            step = capture_cuda_graph(step, device=device)
        # do_bench flushes L2 before every call; our row is hot unless l2_flush: compare like with like.
        theirs = triton.testing.do_bench(step, warmup=50, rep=300, return_mode="median")
        ours = float(row.latency_ms)
        rel = abs(ours - theirs) / theirs
        worst = max(worst, rel)
        print(f"{folder.name}: {case.label()}: harness {ours:.4f} ms ({row.timing}), do_bench {theirs:.4f} ms, "
              f"{rel:+.1%} {'ok' if rel <= TOLERANCE else 'OVER 10%'}")
    return 0 if worst <= TOLERANCE else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
