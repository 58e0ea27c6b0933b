"""What a step really ran: its SDPA backends, inductor's CUDA-graph skips and cache hits, a full-shape
output check, and whether NVML sees GPUs that torch cannot use (issue 15, items 2, 6, 7, 8, 11).

Each is read around one untimed call, so none of them touches a sample.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from types import ModuleType

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

# The fused SDPA kernels, by the aten op each dispatches to. The math backend has no op of its own:
# it decomposes into matmuls and a softmax, so it is an SDPA call that reached none of these.
_FUSED_SDPA_OPS = {
    "_scaled_dot_product_flash_attention": "flash",
    "_scaled_dot_product_flash_attention_for_cpu": "flash_cpu",
    "_scaled_dot_product_efficient_attention": "efficient",
    "_scaled_dot_product_cudnn_attention": "cudnn",
    "_scaled_dot_product_fused_attention_overrideable": "overrideable",
}
# Modes whose point is inductor's CUDA graphs (torch.compile docs).
CUDAGRAPH_COMPILE_MODES = ("reduce-overhead", "max-autotune")


class _SdpaCalls(TorchFunctionMode):
    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func is F.scaled_dot_product_attention:
            self.calls += 1
        return func(*args, **(kwargs or {}))


class _FusedOps(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.backends: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        backend = _FUSED_SDPA_OPS.get(func.overloadpacket.__name__)
        if backend is not None:
            self.backends.append(backend)
        return func(*args, **(kwargs or {}))


def sdpa_backends(fn: Callable[[], object]) -> str:
    """Call ``fn`` (an eager, uncompiled step) once; the SDPA backends its calls ran, sorted and
    comma-separated ("" when it calls no SDPA). ``math`` is counted as the calls no fused op served."""
    with _SdpaCalls() as calls, _FusedOps() as fused:
        fn()
    names = set(fused.backends)
    if calls.calls > len(fused.backends):
        names.add("math")
    return ",".join(sorted(names))


@dataclass
class CompileWatch:
    """Inductor's counters and CUDA-graph skip messages over a compile (the first call)."""

    mode: str | None
    cache_hit: bool | None = None
    cudagraph_skipped: str | None = None
    _messages: list[str] = field(default_factory=list)


class _Collect(logging.Handler):
    def __init__(self, into: list[str]) -> None:
        super().__init__(logging.WARNING)
        self.into = into

    def emit(self, record: logging.LogRecord) -> None:
        self.into.append(record.getMessage().strip().splitlines()[0] if record.getMessage().strip() else "")


@contextmanager
def watch_compile(mode: str | None) -> Iterator[CompileWatch]:
    """Around a compiled step's first call: did it hit the FX graph cache, did inductor skip its graphs.

    ``torch._dynamo.utils.counters["inductor"]`` counts ``fxgraph_cache_hit``/``_miss`` and
    ``cudagraph_skips``; the skip's reason ("mutated inputs", ...) is only logged, through the
    ``cudagraphs`` artifact logger of ``torch._inductor.cudagraph_utils``, so a handler reads it.
    """
    watch = CompileWatch(mode)
    if mode is None:
        yield watch
        return
    from torch._dynamo.utils import counters

    before = dict(counters["inductor"])
    loggers = [logging.getLogger(f"torch._inductor.{m}.__cudagraphs") for m in ("cudagraph_utils", "cudagraph_trees")]
    handler = _Collect(watch._messages)
    for log in loggers:
        log.addHandler(handler)
    try:
        yield watch
    finally:
        for log in loggers:
            log.removeHandler(handler)
        after = counters["inductor"]

        def delta(key: str) -> int:
            return after.get(key, 0) - before.get(key, 0)

        watch.cache_hit = True if delta("fxgraph_cache_hit") > 0 else False if delta("fxgraph_cache_miss") > 0 else None
        if mode in CUDAGRAPH_COMPILE_MODES:
            skips = delta("cudagraph_skips")
            reasons = "; ".join(dict.fromkeys(m for m in watch._messages if m))
            watch.cudagraph_skipped = (reasons or f"{skips} skip(s), reason not logged") if skips else ""


def full_output_error(out: object, reference: object) -> float:
    """Relative error of one full-shape output against the eager one (max |a - b| / max |b|, float64)."""
    a = _first_tensor(out).detach().to(torch.float64)
    b = _first_tensor(reference).detach().to(torch.float64)
    if a.shape != b.shape:
        return float("inf")
    scale = b.abs().max().item() or 1.0
    return float((a - b).abs().max().item() / scale)


def _first_tensor(value: object) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, (tuple, list)) and value and isinstance(value[0], torch.Tensor):
        return value[0]
    raise TypeError(f"a step returned {type(value).__name__}, not a tensor")


def nvml_gpu_count(*, nvml: ModuleType | None = None) -> int:
    """GPUs NVML sees (0 without ``nvidia-ml-py`` or a driver): a machine where this is > 0 but torch
    has no CUDA is misconfigured, not a CPU machine."""
    try:
        nvml = nvml or importlib.import_module("pynvml")
    except ImportError:
        return 0
    try:
        nvml.nvmlInit()
    except Exception:  # noqa: BLE001 - pynvml raises NVMLError subclasses per cause; any means "no GPU seen"
        return 0
    try:
        return int(nvml.nvmlDeviceGetCount())
    finally:
        nvml.nvmlShutdown()


def cuda_unusable_reason() -> str:
    """Why torch has no CUDA here, in one line (torch's own initialisation error when it has one)."""
    if torch.version.cuda is None:
        return f"this torch ({torch.__version__}) is a CPU-only build"
    try:
        torch.cuda.init()
    except Exception as error:  # noqa: BLE001 - the reason is the point; torch raises RuntimeError/AssertionError
        text = str(error).strip()
        return f"torch.cuda.init() failed: {text.splitlines()[0] if text else type(error).__name__}"
    return "torch.cuda.is_available() is False"
