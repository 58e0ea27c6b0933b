"""MLA's absorbed path: the pieces reach the kernel as views of the cache, never copied, and the
result equals DeepSeek-V3's own absorb mode (``tests/deepseek_absorb.py``) on the same weights."""

from __future__ import annotations

import pytest
import torch
from torch.utils import _pytree as pytree
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

from attnbench import variants
from tests.deepseek_absorb import DeepSeekAbsorbPeer
from tests.reference import rel_err
from tests.shapes import MLA_SETTINGS, TINY, TINY_Q, build_mla
from attnbench.variants.kernels.eager import EagerKernel
from attnbench.variants.kernels.mla_eager import EagerMLAKernel
from attnbench.variants.mask import make_mask

aten = torch.ops.aten
ABSORBED = ("absorbed", "absorbed_sdpa", "absorbed_fold_o")
B, PREFILL, MAX_LEN = 2, 7, 12
# What may read the cache inside a step: views of it, and the ops that multiply by it in place.
READS_IN_PLACE = {aten.mm, aten.bmm, aten.baddbmm, aten.addmm, aten._scaled_dot_product_flash_attention_for_cpu}


class CacheReads(TorchDispatchMode):
    """Records every aten op that takes a tensor living in ``storage`` other than a view, a matmul
    or the write of new entries into it (``copy_`` with the cache as destination)."""

    def __init__(self, storage: torch.UntypedStorage) -> None:
        super().__init__()
        self.ptr = storage.data_ptr()
        self.copies: list[str] = []
        self.cats: list[list[tuple[int, ...]]] = []

    def _in_cache(self, t: object) -> bool:
        return isinstance(t, torch.Tensor) and t.untyped_storage().data_ptr() == self.ptr

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func.overloadpacket is aten.cat:
            self.cats.append([tuple(t.shape) for t in args[0]])
        reads = [t for t in pytree.tree_leaves((args, kwargs)) if self._in_cache(t)]
        writes_new_entries = func is aten.copy_.default and self._in_cache(args[0]) and not self._in_cache(args[1])
        if reads and not (func.is_view or func.overloadpacket in READS_IN_PLACE or writes_new_entries):
            self.copies.append(f"{func}: {[tuple(t.shape) for t in reads]}")
        return func(*args, **kwargs)


def _layers():
    yield "q-proj", lambda seed: variants.build("mla", TINY, seed=seed)
    yield "q-rank", lambda seed: variants.build("mla", TINY_Q, seed=seed)
    for name in sorted(MLA_SETTINGS):
        yield name, lambda seed, name=name: build_mla(name, seed=seed)


LAYERS = dict(_layers())


@pytest.mark.parametrize("impl", ABSORBED)
@pytest.mark.parametrize("layer_name", sorted(LAYERS))
def test_absorbed_step_reads_the_cache_in_place(layer_name, impl, seed):
    """No copy, concatenation or elementwise op touches the cache in a step (batch 2, so a merged
    batch-and-group reshape of the rotary keys would have to copy); the eager kernel also
    concatenates nothing to the latent query."""
    layer = LAYERS[layer_name](seed)
    cache = layer.new_cache(B, MAX_LEN, impl=impl)
    layer.prefill(torch.randn(B, PREFILL, layer.hidden), cache, impl=impl)
    C = layer.config.d_c
    for q_len in (1, 3):
        step = layer.prepare("decode", torch.randn(B, q_len, layer.hidden), cache, impl=impl)
        with CacheReads(cache.packed.untyped_storage()) as reads:
            step()
        assert reads.copies == [], f"{impl} L={q_len} copies the cache: {reads.copies}"
        if impl != "absorbed_sdpa":  # the packed-row kernel needs [q_lat; q_rope] and builds it
            assert not [shapes for shapes in reads.cats if any(s[-1] == C for s in shapes)], reads.cats


def test_cache_reads_sees_a_copy_of_the_cache():
    """The check above can fail: a contiguous() of a strided cache view is reported."""
    layer = variants.build("mla", TINY)
    cache = layer.new_cache(1, 4, impl="absorbed")
    with CacheReads(cache.packed.untyped_storage()) as reads:
        cache.read("c_kv", 3).contiguous()
        torch.cat((cache.read("c_kv", 3), cache.read("k_rope", 3)), dim=-1)
    assert len(reads.copies) == 2 and reads.cats == [[(1, 3, TINY.d_c), (1, 3, TINY.d_r)]]


@pytest.mark.parametrize("shape", [TINY, TINY_Q], ids=["q-proj", "q-rank"])
@pytest.mark.parametrize("impl", ABSORBED)
def test_deepseek_absorb_peer_equals_attnbench(shape, impl, seed):
    """The benchmark's peer computes the same function as attnbench's absorbed step (float64)."""
    layer = variants.build("mla", shape, dtype=torch.float64, seed=seed)
    x_BTD = torch.randn(B, PREFILL + 4, shape.hidden, dtype=torch.float64)
    cache = layer.new_cache(B, MAX_LEN, impl=impl)
    layer.prefill(x_BTD[:, :PREFILL], cache, impl=impl)
    peer = DeepSeekAbsorbPeer(layer, batch=B, max_len=MAX_LEN)
    peer.load(cache.read("c_kv", PREFILL), cache.read("k_rope", PREFILL))
    ours = [layer.decode(x_BTD[:, PREFILL:PREFILL + 1], cache, impl=impl),
            layer.decode(x_BTD[:, PREFILL + 1:], cache, impl=impl)]
    theirs = [peer.forward(x_BTD[:, PREFILL:PREFILL + 1], PREFILL), peer.forward(x_BTD[:, PREFILL + 1:], PREFILL + 1)]
    for name, a, b in zip(("decode-1", "decode-3"), ours, theirs, strict=True):
        assert rel_err(a, b) <= 1e-12, f"{impl} vs DeepSeek absorb, {name}: {rel_err(a, b):.1e}"


@pytest.mark.parametrize(("q_len", "q_offset", "groups"), [(1, 16, 1), (3, 14, 2), (17, 0, 4)])
def test_eager_kernel_in_key_blocks_equals_one_pass(q_len, q_offset, groups, seed):
    """Flash-decoding over key blocks is exact: blocks of 5 keys (the last one short, some wholly
    masked for early queries of a prefill) against the one-pass softmax, in float64."""
    T, N, C, R = q_offset + q_len, 4, 6, 4
    f64 = {"dtype": torch.float64}
    q_lat, q_rope = torch.randn(2, q_len, N, C, **f64), torch.randn(2, q_len, N, R, **f64)
    rows_BTE = torch.randn(2, T, C + groups * R, **f64)
    mask = make_mask(q_len=q_len, kv_len=T, q_offset=q_offset, device="cpu")
    args = (q_lat, q_rope, rows_BTE[..., :C], rows_BTE[..., C:])
    whole = EagerMLAKernel()(*args, scale=0.3, mask=mask)
    with FlopCounterMode(display=False) as counter:
        blocks = EagerMLAKernel(block_keys=5)(*args, scale=0.3, mask=mask)
    assert rel_err(blocks, whole) <= 1e-13
    # The cost model's count: blocks do the one pass's matmuls, split.
    assert counter.get_total_flops() == 2 * 2 * N * q_len * T * (C + R + C)
    one_pass = EagerMLAKernel(block_keys=5, one_pass_keys=T)(*args, scale=0.3, mask=mask)
    torch.testing.assert_close(one_pass, whole, rtol=0, atol=0)


def test_absorbed_path_refuses_a_qkv_kernel():
    layer = variants.build("mla", TINY)
    with pytest.raises(ValueError, match="^the absorbed path needs an MLA kernel .*'eager' is a q/k/v kernel$"):
        layer.step_runner("absorbed", EagerKernel(), fold_o=False)
