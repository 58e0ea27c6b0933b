"""Peak memory of a step, free memory, and tensor bytes."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from attnbench import variants
from attnbench.harness.measure.memory import _cgroup_headroom_bytes, available_bytes, step_peak_bytes, tensor_bytes
from tests.shapes import TINY

MB10 = 10_000_000


def test_tensor_bytes_counts_each_storage_once():
    x = torch.empty(1000, dtype=torch.float32)
    assert tensor_bytes(x) == 4000
    assert tensor_bytes(x, x[10:20], x.view(10, 100)) == 4000  # views share x's storage
    assert tensor_bytes(x[:10]) == 4000  # a view keeps its whole storage alive
    assert tensor_bytes(x, torch.empty(3, dtype=torch.float64)) == 4024

    lin = nn.Linear(10, 20)  # 200 + 20 floats
    lin.register_buffer("scale", torch.ones(5, dtype=torch.float16))
    assert tensor_bytes(lin) == 220 * 4 + 5 * 2
    tied = nn.Sequential(lin, nn.Linear(10, 20))
    tied[1].weight = lin.weight  # tied weights count once
    assert tensor_bytes(tied, lin) == 220 * 4 + 5 * 2 + 20 * 4


def test_tensor_bytes_of_a_layer_and_its_cache():
    layer = variants.build("mla", TINY, seed=0)
    cache = layer.new_cache(2, 16, impl="absorbed")
    expected = 2 * 16 * layer.kv_bytes_per_token("absorbed")  # packed [c_kv; k_rope]
    assert tensor_bytes(*cache.fields.values()) == expected  # fields are slices of one buffer
    assert tensor_bytes(layer) == sum(p.numel() * p.element_size() for p in layer.parameters()) + sum(
        b.untyped_storage().nbytes() for b in layer.buffers())


def test_tensor_bytes_refuses_other_objects():
    with pytest.raises(ValueError, match="^tensor_bytes takes tensors and nn.Modules, got list$"):
        tensor_bytes([torch.empty(1)])


def test_cpu_peak_counts_transient_allocations():
    resident = torch.zeros(MB10, dtype=torch.uint8)
    resident_bytes = tensor_bytes(resident)

    def two_live():
        a = torch.empty(MB10, dtype=torch.uint8)
        b = torch.empty(MB10, dtype=torch.uint8)
        return a, b

    def one_after_another():
        a = torch.empty(MB10, dtype=torch.uint8)
        del a
        b = torch.empty(MB10, dtype=torch.uint8)
        del b

    def in_place():
        resident.add_(1)

    peak = step_peak_bytes(two_live, "cpu", resident_bytes=resident_bytes)
    assert resident_bytes + 2 * MB10 <= peak <= (resident_bytes + 2 * MB10) * 1.02
    peak = step_peak_bytes(one_after_another, "cpu", resident_bytes=resident_bytes)
    assert resident_bytes + MB10 <= peak <= (resident_bytes + MB10) * 1.02
    assert step_peak_bytes(in_place, "cpu", resident_bytes=resident_bytes) == pytest.approx(resident_bytes, rel=0.01)


def test_cpu_peak_ignores_frees_of_tensors_made_before_the_call():
    held = [torch.empty(MB10, dtype=torch.uint8)]
    assert step_peak_bytes(held.clear, "cpu", resident_bytes=MB10) == MB10


def test_cpu_peak_of_a_prepared_step_exceeds_its_inputs():
    layer = variants.build("gqa", TINY, seed=0)
    cache = layer.new_cache(2, 16)
    x = torch.randn(2, 4, TINY.hidden)
    resident = tensor_bytes(layer, *cache.buffers.values(), x)
    peak = step_peak_bytes(layer.prepare("prefill", x, cache), "cpu", resident_bytes=resident)
    assert peak > resident + x.numel() * x.element_size()  # at least the output was allocated


def test_available_bytes_on_cpu_is_plausible():
    free = available_bytes("cpu")
    assert free > 0
    meminfo = Path("/proc/meminfo")
    if meminfo.exists():
        total_kb = next(int(line.split()[1]) for line in meminfo.read_text().splitlines()
                        if line.startswith("MemTotal:"))
        assert free <= total_kb * 1024


def test_cgroup_headroom(tmp_path):
    assert _cgroup_headroom_bytes(tmp_path) is None  # no cgroup v2 files: no limit
    (tmp_path / "memory.max").write_text("max\n")
    (tmp_path / "memory.current").write_text("123\n")
    assert _cgroup_headroom_bytes(tmp_path) is None
    (tmp_path / "memory.max").write_text("1000\n")
    assert _cgroup_headroom_bytes(tmp_path) == 877


@pytest.mark.parametrize("call", [
    lambda: available_bytes("meta"),
    lambda: step_peak_bytes(lambda: None, "meta", resident_bytes=0),
])
def test_unsupported_devices_are_refused(call):
    with pytest.raises(ValueError, match="^device='meta' is not supported: memory is measured on cpu or cuda$"):
        call()


def test_negative_resident_bytes_is_refused():
    with pytest.raises(ValueError, match="^resident_bytes=-1 is not allowed"):
        step_peak_bytes(lambda: None, "cpu", resident_bytes=-1)


@pytest.mark.gpu
def test_cuda_peak_is_the_allocator_peak():
    resident = torch.zeros(MB10, dtype=torch.uint8, device="cuda")
    before = torch.cuda.memory_allocated()

    def two_live():
        a = torch.empty(MB10, dtype=torch.uint8, device="cuda")
        b = torch.empty(MB10, dtype=torch.uint8, device="cuda")
        return a, b

    peak = step_peak_bytes(two_live, "cuda", resident_bytes=0)
    # The allocator rounds sizes up to 512-byte blocks; `before` already includes `resident`.
    assert before + 2 * MB10 <= peak <= (before + 2 * MB10) * 1.02
    assert step_peak_bytes(lambda: resident.add_(1), "cuda", resident_bytes=0) == before


@pytest.mark.gpu
def test_available_bytes_on_cuda_drops_after_an_allocation():
    torch.cuda.empty_cache()
    free = available_bytes("cuda")
    x = torch.empty(1 << 30, dtype=torch.uint8, device="cuda")
    assert free - available_bytes("cuda") >= x.numel()
