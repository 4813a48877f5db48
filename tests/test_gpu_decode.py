"""The GPU decode step's Triton kernels (hearth/fast/gpu_decode.py) against the plain path, run on the CPU in Triton's
interpreter (TRITON_INTERPRET=1), so CI checks their arithmetic without a GPU; tests/test_cuda.py runs them compiled.

The interpreter executes the kernels' programs one by one with numpy, so the models here are tiny and the ranges of
attention short; the block sizes are shrunk to the shapes so that masks, several programs and several ranges of
the cache (flash-decoding's merge) are all exercised."""

from __future__ import annotations

import os

import pytest
import torch

from hearth.fast import apply_fast_path
from hearth.model import Transformer
from tiny import random_transformer

triton = pytest.importorskip("triton")

pytestmark = pytest.mark.usefixtures("one_thread")


DEV = "cuda" if torch.cuda.is_available() else "cpu"  # on the CPU: Triton's interpreter (tests/conftest.py)


@pytest.fixture
def interpreted():
    if DEV == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("Triton's interpreter was not switched on before triton was imported")


def tiny(dtype=torch.bfloat16, seed=0, **kw) -> Transformer:
    m = random_transformer(seed, std=0.15, **{"vocab_size": 90, "hidden_dim": 96, **kw})
    for n in [m.norm] + [n for l in m.layers for n in (l.attention_norm, l.ffn_norm)]:
        torch.nn.init.normal_(n.weight, mean=1.0, std=0.1)
    m = m.to(DEV, dtype).eval()
    m.inv_freq = m.inv_freq.float()
    return apply_fast_path(m)


def decode_both(m, prompt: int, steps: int, cache_len: int, monkey_gemv=None, chunk=None):
    """Greedy decode `steps` tokens after a prompt, once with the plain path and once with GPUDecoder over a copy
    of the same prefilled cache; returns both logit lists."""
    from hearth.fast import gpu_decode

    ids = torch.randint(0, m.config.vocab_size, (1, prompt), generator=torch.Generator().manual_seed(1)).to(DEV)
    cache = m.new_cache(1, cache_len)
    logits = m(ids, 0, cache, last_only=True)[:, -1]
    cache2 = m.new_cache(1, cache_len)
    cache2.k.copy_(cache.k)
    cache2.v.copy_(cache.v)
    tokens = logits.argmax(-1, keepdim=True)
    pos = torch.tensor([prompt], device=DEV)
    dec = gpu_decode.GPUDecoder(m, cache2, tokens.clone(), pos, **({"chunk": chunk} if chunk else {}))
    ref, got = [], []
    nxt = tokens
    for i in range(steps):
        r = m(nxt, prompt + i, cache)[:, -1]
        dec.tokens.copy_(nxt)
        dec.pos.fill_(prompt + i)
        g = dec.step().clone()
        ref.append(r)
        got.append(g)
        nxt = r.argmax(-1, keepdim=True)
    return ref, got, cache, cache2, prompt + steps


@pytest.mark.parametrize("n_kv_heads", [1, 2, 4])
@torch.inference_mode()
def test_triton_step_equals_plain_path(interpreted, n_kv_heads):
    """fp16: numpy's own type, so the interpreter rounds as a GPU does (it truncates fp32 -> bf16 instead)."""
    m = tiny(dtype=torch.float16, n_kv_heads=n_kv_heads)
    ref, got, cache, cache2, end = decode_both(m, prompt=5, steps=3, cache_len=32)
    for r, g in zip(ref, got):
        assert g.dtype == torch.float32 and g.shape == r.shape
        torch.testing.assert_close(g, r, rtol=2e-3, atol=4e-3)
        top2 = r.topk(2, -1).values[0]
        if top2[0] - top2[1] > 0.01:  # the same greedy token, unless the reference is a near tie
            assert torch.equal(g.argmax(-1), r.argmax(-1))
    # the kernels wrote the new tokens' k and v where the plain path did (RoPE applied to k)
    torch.testing.assert_close(cache2.k[:, :, :, :end], cache.k[:, :, :, :end], rtol=2e-3, atol=4e-3)
    torch.testing.assert_close(cache2.v[:, :, :, :end], cache.v[:, :, :, :end], rtol=2e-3, atol=4e-3)


@torch.inference_mode()
def test_triton_step_bf16_is_as_close_to_fp32_as_the_plain_path(interpreted):
    """bf16, judged against the same weights run in fp32: no further from them than the plain bf16 path is (with
    slack for the interpreter's truncating bf16 conversion)."""
    m = tiny(seed=1)
    ref, got, *_ = decode_both(m, prompt=6, steps=2, cache_len=32)
    m32 = tiny(dtype=torch.float32, seed=1)
    ids = torch.randint(0, m.config.vocab_size, (1, 6), generator=torch.Generator().manual_seed(1)).to(DEV)
    cache = m32.new_cache(1, 32)
    nxt = m32(ids, 0, cache, last_only=True)[:, -1].argmax(-1, keepdim=True)
    for i, (r, g) in enumerate(zip(ref, got)):
        truth = m32(r.argmax(-1, keepdim=True) if i else nxt, 6 + i, cache)[:, -1]
        nxt = r.argmax(-1, keepdim=True)
        err_plain, err_triton = (r - truth).abs().max().item(), (g - truth).abs().max().item()
        assert err_triton < 3 * err_plain + 0.02, (err_triton, err_plain)


@torch.inference_mode()
def test_long_cache_in_ranges_is_merged(interpreted):
    """A cache split into several ranges (flash-decoding): each range's partial softmax merged; one range empty."""
    m = tiny(dtype=torch.float16, seed=2, n_layers=1, vocab_size=40)
    ref, got, *_ = decode_both(m, prompt=70, steps=2, cache_len=128, chunk=32)
    for r, g in zip(ref, got):
        torch.testing.assert_close(g, r, rtol=0.03, atol=0.06)


@torch.inference_mode()
def test_gemv_masks_ragged_shapes(interpreted):
    """Row and column counts that the blocks do not divide, with each prologue/epilogue, against torch."""
    from hearth.fast.gpu_decode import GEMV
    from hearth.model.llama import RMSNorm

    torch.manual_seed(0)
    n, k, dt = 37, 100, torch.float16
    w = torch.randn(2 * n, k, dtype=dt).to(DEV) * 0.3
    x = torch.randn(1, k, dtype=dt).to(DEV)
    norm = RMSNorm(k, 1e-5).to(DEV, dt)
    torch.nn.init.normal_(norm.weight, 1.0, 0.2)
    cfg = dict(BLOCK_N=8, BLOCK_K=32)
    tol = dict(rtol=4e-3, atol=4e-3)
    out = torch.full((1, 2 * n), float("nan"), dtype=dt, device=DEV)
    GEMV(w, x, out, config=cfg)()
    torch.testing.assert_close(out, x @ w.t(), **tol)
    out = torch.full((1, n), float("nan"), dtype=dt, device=DEV)
    GEMV(w, x, out, norm=norm, swiglu=True, config=cfg)()
    gu = norm(x) @ w.t()
    torch.testing.assert_close(out, torch.nn.functional.silu(gu[:, :n]) * gu[:, n:], **tol)
    res = torch.randn(1, 2 * n, dtype=dt).to(DEV)
    out = res.clone()
    GEMV(w, x, out, residual=out, config=cfg)()
    torch.testing.assert_close(out, res + x @ w.t(), **tol)
    out = torch.full((1, 2 * n), float("nan"), device=DEV)
    GEMV(w, x, out, norm=norm, config=cfg)()
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, (norm(x) @ w.t()).float(), **tol)


def test_usable_only_where_it_applies():
    from hearth.fast.gpu_decode import GPUDecoder

    m = tiny()
    # the CPU never (the interpreter is for tests); on a GPU batch 1 only, and only 16-bit weights
    assert GPUDecoder.usable(m, 1, m.new_cache(1, 16)) == (DEV == "cuda")
    assert not GPUDecoder.usable(m, 2, m.new_cache(2, 16))
    assert not GPUDecoder.usable(tiny(dtype=torch.float32), 1, m.new_cache(1, 16))
    odd = tiny(dim=96, n_heads=2, n_kv_heads=1)  # head_dim 48
    assert not GPUDecoder.usable(odd, 1, odd.new_cache(1, 16))


@torch.inference_mode()
def test_paged_step_reads_and_writes_through_the_block_table(interpreted):
    """The engine's single-sequence step: K/V in a paged pool, scattered over blocks in table order."""
    from hearth.fast.gpu_decode import GPUDecoder
    from hearth.model.paged import PagedKVCache

    m = tiny(dtype=torch.float16, seed=4)
    cfg, bs, prompt = m.config, 4, 9
    ids = torch.randint(0, cfg.vocab_size, (1, prompt), generator=torch.Generator().manual_seed(5)).to(DEV)
    cache = m.new_cache(1, 32)
    logits = m(ids, 0, cache, last_only=True)[:, -1]
    paged = PagedKVCache(cfg, 12, bs, DEV, torch.float16)
    table = torch.tensor([7, 2, 11, 0, 5, 9], device=DEV)  # 24 positions in shuffled blocks
    slots = (table[:, None] * bs + torch.arange(bs, device=DEV)).flatten()
    paged.k[:, slots[:prompt]] = cache.k[:, 0, :, :prompt].transpose(1, 2)
    paged.v[:, slots[:prompt]] = cache.v[:, 0, :, :prompt].transpose(1, 2)
    nxt = logits.argmax(-1, keepdim=True)
    dec = GPUDecoder(m, paged, nxt.clone(), torch.tensor([prompt], device=DEV), table=table, chunk=8)
    for i in range(3):
        ref = m(nxt, prompt + i, cache)[:, -1]
        dec.tokens.copy_(nxt)
        dec.pos.fill_(prompt + i)
        torch.testing.assert_close(dec.step(), ref, rtol=4e-3, atol=8e-3)
        nxt = ref.argmax(-1, keepdim=True)
    end = prompt + 3
    torch.testing.assert_close(paged.k[:, slots[:end]], cache.k[:, 0, :, :end].transpose(1, 2), rtol=2e-3, atol=4e-3)
    torch.testing.assert_close(paged.v[:, slots[:end]], cache.v[:, 0, :, :end].transpose(1, 2), rtol=2e-3, atol=4e-3)
    untouched = torch.ones(paged.k.shape[1], dtype=torch.bool, device=DEV)
    untouched[slots[:end]] = False
    assert not paged.k[:, untouched].any()  # nothing written outside the sequence's slots
