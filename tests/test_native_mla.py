"""absorbed_native: the C++ decode kernel equals one softmax over the cache, reads a paged cache in
place, runs as absorbed_sdpa where it does not apply, and says why where it can't be built.

Legend: B batch, L queries, T keys read, N heads, C latent, R rotary dim.
"""

from __future__ import annotations

import platform
import re
from collections.abc import Iterator

import pytest
import torch
from hydra import compose, initialize_config_dir

from attnbench import variants
from attnbench.harness.measure.runner import RunContext, run_case
from attnbench.harness.sweep.plan import plan_cases
from attnbench.variants.kernels import mla_native, native
from attnbench.variants.kernels.mla_native import NativeMLAKernel
from attnbench.variants.mask import AttnMask
from attnbench.variants.registry import IMPLEMENTATIONS
from tests.reference import rel_err
from tests.shapes import TINY
from tests.test_cache_view import _latent_cache, _PeakBytes, _reference
from tests.test_predict_memory import ONE_SAMPLE
from tests.test_run import CONF

C, R = 48, 4  # C: two 32-column tiles would need 64, so one and a 16-column rest; E = 52, no multiple of 16
SHAPE = TINY.replace(d_c=C, d_r=R)


@pytest.fixture
def built() -> None:
    """The C++ kernel built here; skipped with the reason where it can't be (the reason itself is
    tested below, without a compiler)."""
    reason = native.unavailable(mla_native.SOURCE)
    if reason is not None:
        pytest.skip(reason)


@pytest.fixture
def native_calls(monkeypatch: pytest.MonkeyPatch, built: None) -> list[int]:
    """How many times the C++ kernel ran (rows per call): a fallback to absorbed_sdpa can't pass as it."""
    calls: list[int] = []
    real = mla_native._decode_lib

    def counted():  # noqa: ANN202
        fn = real()
        return lambda *args: calls.append(args[5]) or fn(*args)

    monkeypatch.setattr(mla_native, "_decode_lib", counted)
    return calls


@pytest.fixture
def threads(request: pytest.FixtureRequest) -> Iterator[int]:
    before = torch.get_num_threads()
    torch.set_num_threads(request.param)
    yield request.param
    torch.set_num_threads(before)


@pytest.mark.parametrize(("lens", "threads"), [
    ([230, 5, 101], 1),  # ragged: over a block of 96 keys, under the 8 keys scored together, and neither
    ([1000, 700, 9], 6),  # split-KV: 2 parts of the first sequence (4 blocks each at least), 1 of the others
    ([40, 3, 17, 96, 1, 60], 1),  # more sequences than one round of scratch holds (4 a thread)
], indirect=["threads"], ids=["one-pass", "split", "rounds"])
# Rows go in groups of a vector's width W (16 AVX-512, 8 AVX2, 4 SSE/NEON), scored two groups at once:
# 4 heads are one group, partial where W > 4; 20 are pairs and a group left alone (partial with W = 8),
# or (W = 16) a pair with a partial group in it.
@pytest.mark.parametrize("heads", [4, 20])
@pytest.mark.parametrize("G", [1, 2])
@pytest.mark.parametrize("page_size", [None, 4])
def test_native_decode_equals_one_softmax(page_size: int | None, G: int, heads: int, lens: list[int], threads: int,
                                          native_calls: list[int]) -> None:
    _assert_one_softmax(page_size, G, heads, lens)
    assert native_calls == [heads]


def _assert_one_softmax(page_size: int | None, G: int, heads: int, lens: list[int]) -> None:
    cache = _latent_cache(page_size, lens, G=G, C=C, R=R, dtype=torch.float32)
    B, L = len(lens), 1
    T = max(lens) + L
    keep_B1LT = torch.arange(T).view(1, 1, 1, T) <= torch.tensor(lens).view(-1, 1, 1, 1)
    generator = torch.Generator().manual_seed(heads + G)
    q_lat_BLNC = torch.randn(B, L, heads, C, generator=generator)
    q_rope_BLNR = torch.randn(B, L, heads, R, generator=generator)
    view = cache.view(T, torch.tensor(lens, dtype=torch.int32) + L)
    got = NativeMLAKernel().attend_view(q_lat_BLNC, q_rope_BLNR, view, scale=0.3,
                                        mask=AttnMask(L, T, min(lens), keep_B1LT))
    want = _reference(q_lat_BLNC.double(), q_rope_BLNR.double(), cache.read("c_kv", T).double(),
                      cache.read("k_rope", T).double(), keep_B1LT, 0.3)
    assert rel_err(got, want) <= 2e-6  # float32 round-off over up to 1000 keys


# The kernel's vector is the register of the instruction set it is built for (4, 8 or 16 floats), and
# its tiles and groups of rows follow: each width this CPU can run, built for it, on a ragged case
# (20 heads: groups of 4, 8 or 16 with a partial one; C = 48 and E = 52, no multiple of 16).
MARCHES = ("x86-64", "x86-64-v3", "x86-64-v4")  # SSE2, AVX2, AVX-512: torch's DEFAULT, AVX2, AVX512 on x86


@pytest.mark.parametrize("march", MARCHES)
def test_native_decode_equals_one_softmax_at_every_vector_width_this_cpu_runs(
        monkeypatch: pytest.MonkeyPatch, fresh_build: None, march: str) -> None:
    capability = torch.backends.cpu.get_cpu_capability()
    runs = {"DEFAULT": 1, "AVX2": 2, "AVX512": 3}.get(capability, 0) if platform.machine() in ("x86_64", "AMD64") else 0
    if MARCHES.index(march) >= runs:
        pytest.skip(f"this CPU ({platform.machine()}, {capability}) cannot run code built with -march={march}")
    monkeypatch.setattr(native, "FLAGS", tuple(f"-march={march}" if f == "-march=native" else f for f in native.FLAGS))
    if (reason := native.unavailable(mla_native.SOURCE)) is not None:
        pytest.skip(reason)
    _assert_one_softmax(4, 2, 20, [230, 5, 101])


@pytest.mark.parametrize("shape", [SHAPE, TINY], ids=["C48", "C10"])  # C10: no 16-column tile at all
def test_native_decode_in_a_layer_equals_absorbed_sdpa_and_prefill_falls_back(shape, native_calls: list[int]) -> None:  # noqa: ANN001
    torch.manual_seed(0)
    layer = variants.build("mla", shape)
    x_BTD = torch.randn(2, 9, shape.hidden)
    outs = {}
    for impl in ("absorbed_sdpa", "absorbed_native"):
        cache = layer.new_cache(2, 9, impl=impl)
        ys = [layer.prefill(x_BTD[:, :5], cache, impl=impl)]
        ys += [layer.decode(x_BTD[:, t:t + 1], cache, impl=impl) for t in (5, 6)]
        ys.append(layer.decode(x_BTD[:, 7:], cache, impl=impl))  # one token, then a causal step of two
        outs[impl] = torch.cat(ys, dim=1)
    assert native_calls == [shape.heads] * 2 + [2 * shape.heads]  # the prefill ran absorbed_sdpa's code
    assert torch.equal(outs["absorbed_native"][:, :5], outs["absorbed_sdpa"][:, :5])
    assert rel_err(outs["absorbed_native"], outs["absorbed_sdpa"]) <= 1e-5


def test_a_sequence_with_no_key_gives_zeros(built: None) -> None:
    kv_TE = torch.randn(4, C + R)
    q_lat_BLNC, q_rope_BLNR = torch.randn(2, 1, 4, C), torch.randn(2, 1, 4, R)
    out_BLNC = NativeMLAKernel()._decode(q_lat_BLNC, q_rope_BLNR, kv_TE, [0, 0], [0, 4], [0, 1, 2], [0, 4],
                                         kv_TE.stride(0), width=C + R, scale=0.5)
    assert torch.equal(out_BLNC[0], torch.zeros(1, 4, C))
    want = torch.softmax(torch.cat((q_lat_BLNC[1], q_rope_BLNR[1]), -1) @ kv_TE.T * 0.5, -1) @ kv_TE[:, :C]
    assert rel_err(out_BLNC[1], want) <= 1e-6


def test_a_paged_native_step_allocates_nothing_proportional_to_the_cache(native_calls: list[int]) -> None:
    layer = variants.build("mla", SHAPE)
    x_B1D = torch.randn(2, 1, SHAPE.hidden)
    peaks, cache_bytes = [], []
    for context in (2048, 8192):
        cache = layer.new_cache(2, [context + 1, context + 1], impl="absorbed_native", page_size=64)
        cache.fill_random_(context)
        cache.set_seq_lens([context, context - 100])
        step = layer.prepare("decode", x_B1D, cache, impl="absorbed_native")
        step()  # warm-up: RoPE tables
        with _PeakBytes() as meter:
            step()
        peaks.append(meter.peak)
        cache_bytes.append(cache.nbytes())
    assert len(native_calls) == 4
    assert peaks[1] < cache_bytes[1] / 16, (peaks, cache_bytes)  # no copy of the cache
    assert peaks[1] <= peaks[0] * 1.05, (peaks, cache_bytes)  # 4x the cache, the same peak


@pytest.fixture
def fresh_build() -> Iterator[None]:
    """Forget the process's build before and after: the test's compiler must not stay for the others."""
    native._build.cache_clear()
    yield
    native._build.cache_clear()


@pytest.mark.parametrize(("compiler", "reason"), [("no-such-c++", "no C++ compiler found"),
                                                  ("false", "false could not build mla_decode.cpp: exit status 1")])
def test_without_a_working_compiler_it_is_unsupported_with_the_reason(
        monkeypatch: pytest.MonkeyPatch, fresh_build: None, compiler: str, reason: str) -> None:
    monkeypatch.setenv("CXX", compiler)
    layer = variants.build("mla", SHAPE)
    impl = IMPLEMENTATIONS.get("absorbed_native")
    got = impl.supports(layer, phase="decode", device=torch.device("cpu"), dtype=torch.float32)
    assert got is not None and reason in got, got
    with pytest.raises(RuntimeError, match=re.escape(reason)):
        impl.plan(layer)


def test_a_native_case_runs_through_the_harness_with_its_memory_predicted(native_calls: list[int]) -> None:
    # The dry run steps on fake tensors: the kernel must count its allocations there, not read them.
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("config", overrides=["model=deepseek_v2_lite", "variant=mla", "impl=absorbed_native",
                                           "device=cpu", "dtype=float32", "phase=decode", "seq=1k"])
    (case,) = plan_cases(cfg)
    row = run_case(case, RunContext(settings=ONE_SAMPLE))
    assert row["status"] == "ok", row["reason"]
    assert native_calls  # the numerics gate and the timed steps ran the C++ kernel
    assert 1.0 <= row["predicted_mem_bytes"] / row["peak_mem_bytes"] <= 1.5


def test_what_the_native_kernel_cannot_run_is_an_error_or_a_reason(built: None) -> None:
    layer = variants.build("mla", SHAPE)
    cache = layer.new_cache(1, 8, impl="absorbed_native")
    layer.prefill(torch.randn(1, 4, SHAPE.hidden), cache, impl="absorbed_native")
    cache.set_seq_lens([4])
    with pytest.raises(ValueError, match=r"this step \(2 queries over 6 keys, ragged\) is not one: use absorbed_sdpa"):
        layer.decode(torch.randn(1, 2, SHAPE.hidden), cache, impl="absorbed_native")  # two tokens, ragged
    impl = IMPLEMENTATIONS.get("absorbed_native")
    cpu = torch.device("cpu")
    assert "float32 only" in impl.supports(layer, phase="decode", device=cpu, dtype=torch.float64)
    dsa = variants.build("dsa", TINY.replace(q_rank=7, index_heads=2, index_head_dim=8, index_topk=4))
    assert "sparse" in impl.supports(dsa, phase="decode", device=cpu, dtype=torch.float32)
