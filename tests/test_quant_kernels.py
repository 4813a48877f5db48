"""hearth's native GGUF kernels (hearth/kernels) and the fast inference path built on them.

Parity first: the integer products must be exactly ggml's arithmetic (8-bit activations in blocks of 32, fp16
scales), dequantization bit-identical to the `gguf` package, the fused kernels equal to the plain modules, and a
quantized tiny model must agree with llama.cpp running the same file.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import pytest
import torch

import tiny
from hearth.fast.quant import GGUFLinear
from hearth.kernels import gguf_ops
from hearth.loader import load
from hearth.weights.gguf_writer import write_gguf
from hearth.weights.types import QuantizedTensor

ops = gguf_ops()
pytestmark = [
    pytest.mark.skipif(ops is None, reason="hearth's native CPU kernels are not available here"),
    pytest.mark.usefixtures("one_thread"),
]

QTYPES = {"Q4_0": 2, "Q4_1": 3, "Q8_0": 8}
F16 = 1
MODEL_QTYPES = [*QTYPES, "F16"]  # the tiny model files: the block types and F16


def _blocks(name: str, n: int, k: int, seed: int = 0) -> tuple[torch.Tensor, np.ndarray]:
    from gguf import GGMLQuantizationType, quants

    w = np.random.default_rng(seed).standard_normal((n, k)).astype(np.float32)
    return torch.from_numpy(quants.quantize(w, GGMLQuantizationType[name]).copy()), w


def _ggml_reference(name: str, blocks: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """ggml's vec_dot for `name` x Q8_0/Q8_1 activations, in float64 from the raw bytes."""
    n, k = blocks.shape[0], x.shape[1]
    raw = blocks.numpy().reshape(n, k // 32, -1)
    d = torch.from_numpy(raw[:, :, 0:2].copy().view(np.float16)[..., 0].astype(np.float64))
    m = torch.zeros_like(d)
    if name == "Q8_0":
        qw = torch.from_numpy(raw[:, :, 2:].copy().view(np.int8).astype(np.float64))
    else:
        qs = raw[:, :, 4:] if name == "Q4_1" else raw[:, :, 2:]
        qw = torch.from_numpy(np.concatenate([qs & 15, qs >> 4], -1).astype(np.float64))
        if name == "Q4_0":
            qw = qw - 8
        else:
            m = torch.from_numpy(raw[:, :, 2:4].copy().view(np.float16)[..., 0].astype(np.float64))
    xb = x.reshape(x.shape[0], -1, 32)
    amax = xb.abs().amax(-1)
    dx32 = amax / 127
    # 127 / amax as one fp32 division, as ggml (a Python scalar over a tensor is reciprocal-then-multiply in torch,
    # one ulp off at times, which moves a rounding tie)
    mul = torch.where(amax > 0, torch.full_like(amax, 127.0) / amax, torch.zeros_like(amax))
    qx = torch.round(xb * mul[..., None]).double()
    dx = dx32.half().double()
    sx = (dx32 * qx.float().sum(-1)).half().double()
    per_block = torch.einsum("nbk,mbk->mnb", qw, qx) * d[None] * dx[:, None] + m[None] * sx[:, None]
    return per_block.sum(-1)


@pytest.mark.parametrize("name", list(QTYPES))
def test_product_is_ggml_arithmetic(name):
    blocks, _ = _blocks(name, 37, 256)  # 37 rows: the 4-row tiles and their edge
    x = torch.randn(7, 256)  # 7 activation rows: a 4-row tile, a pair and a single row
    x[1, :32] = 0  # an all-zero block quantizes to scale 0
    got = ops.gguf_mm(x, [blocks], QTYPES[name]).double()
    ref = _ggml_reference(name, blocks, x)
    assert (got - ref).abs().max().item() <= 1e-6 * ref.abs().max().item()


@pytest.mark.parametrize("name", list(QTYPES))
def test_dequantize_bit_identical_to_gguf_package(name):
    from gguf import GGMLQuantizationType, quants

    blocks, _ = _blocks(name, 9, 128, seed=1)
    ref = quants.dequantize(blocks.numpy(), GGMLQuantizationType[name])
    assert torch.equal(ops.gguf_dequant(blocks, QTYPES[name], 128), torch.from_numpy(ref.astype(np.float32)))


def test_rows_do_not_depend_on_the_batch_and_fused_weights_equal_separate():
    a, _ = _blocks("Q4_1", 13, 192, seed=2)
    b, _ = _blocks("Q4_1", 6, 192, seed=3)
    x = torch.randn(7, 192)
    full = ops.gguf_mm(x, [a, b], 3)
    assert torch.equal(full, torch.cat([ops.gguf_mm(x, [a], 3), ops.gguf_mm(x, [b], 3)], 1))
    for i in range(7):  # a request gives the same numbers alone or in a batch
        assert torch.equal(full[i], ops.gguf_mm(x[i : i + 1], [a, b], 3)[0])


@pytest.mark.parametrize("name", [*QTYPES, "F16"])
def test_prefill_products_reuse_their_scratch_safely(name):
    """Many-row products (the fp32-mm prefill path) keep their scratch between calls: a call of another shape in
    between, or one from another thread, must not change a result; and it is ggml's product up to summation order."""
    import threading

    def weight(n, k, seed):
        return _f16_rows(n, k, seed)[0] if name == "F16" else _blocks(name, n, k, seed)[0]

    qtype = F16 if name == "F16" else QTYPES[name]
    big_w, small_w = weight(600, 512, 4), weight(40, 96, 5)  # 600 rows: two conversion chunks of the weight
    big_x, small_x = torch.randn(200, 512), torch.randn(150, 96)
    first = ops.gguf_mm(big_x, [big_w], qtype)
    ops.gguf_mm(small_x, [small_w], qtype)
    assert torch.equal(ops.gguf_mm(big_x, [big_w], qtype), first)
    other = []
    t = threading.Thread(target=lambda: other.append(ops.gguf_mm(big_x, [big_w], qtype)))
    t.start()
    t.join()
    assert torch.equal(other[0], first)
    rows = torch.cat([ops.gguf_mm(big_x[i : i + 4], [big_w], qtype) for i in range(0, 200, 4)])  # the tile path
    assert (first - rows).abs().max().item() <= 1e-4 * rows.abs().max().item()


def _f16_rows(n: int, k: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """An F16 weight as GGUF holds it (uint8 rows of fp16 values) and the same values as fp16."""
    w = torch.from_numpy(np.random.default_rng(seed).standard_normal((n, k)).astype(np.float16))
    return w.view(torch.uint8).reshape(n, 2 * k), w


def test_f16_product_is_ggml_arithmetic():
    """F16 weights: activations rounded to fp16 (ggml's vec_dot_type for F16), products summed in fp32."""
    blocks, w = _f16_rows(37, 256)
    x = torch.randn(5, 256) * 3
    got = ops.gguf_mm(x, [blocks], F16).double()
    ref = x.half().double() @ w.double().T
    assert (got - ref).abs().max().item() <= 1e-6 * (x.half().double().abs() @ w.double().abs().T).max().item()
    exact = x.double() @ w.double().T  # without the fp16 rounding of x: visibly further away
    assert (got - exact).abs().max().item() > 10 * (got - ref).abs().max().item()
    assert torch.equal(ops.gguf_dequant(blocks, F16, 256), w.float())


@pytest.mark.parametrize("name", list(QTYPES))
def test_product_of_many_rows_is_ggml_arithmetic(name):
    """From 128 rows on (prefill), block products run as torch's fp32 mm on converted weight chunks (512 rows each),
    with the activations still rounded to 8 bits as ggml does (and, for Q4_1, ggml's fp16-rounded block sums in the
    min term): the same numbers as the integer tiles up to the order of summation."""
    a, _ = _blocks(name, 600, 128, seed=7)  # two chunks
    b, _ = _blocks(name, 37, 128, seed=8)
    x = torch.randn(150, 128, generator=torch.Generator().manual_seed(0))
    x[3, :32] = 0
    got = ops.gguf_mm(x, [a, b], QTYPES[name]).double()
    ref = torch.cat([_ggml_reference(name, a, x), _ggml_reference(name, b, x)], 1)
    assert (got - ref).abs().max().item() <= 2e-6 * ref.abs().max().item()
    tiles = torch.cat([ops.gguf_mm(x[i : i + 50], [a, b], QTYPES[name]) for i in (0, 50, 100)])  # 50 rows: tiles
    assert (got - tiles.double()).abs().max().item() <= 2e-6 * ref.abs().max().item()


def test_f16_product_of_many_rows():
    """From 16 rows on (prefill), F16 products run as torch's fp32 mm on converted weight chunks (512 rows each):
    the same products, summed in another order."""
    a, wa = _f16_rows(600, 96, seed=5)  # two chunks
    b, wb = _f16_rows(40, 96, seed=6)
    x = torch.randn(20, 96)
    got = ops.gguf_mm(x, [a, b], F16).double()
    w = torch.cat([wa, wb]).double()
    ref = x.half().double() @ w.T
    bound = 1e-6 * (x.half().double().abs() @ w.abs().T).max().item()
    assert (got - ref).abs().max().item() <= bound
    assert (got[:15] - ops.gguf_mm(x[:15], [a, b], F16)).abs().max().item() <= 2 * bound  # the tiles: another order


def test_f16_rows_do_not_depend_on_the_batch_and_fused_weights_equal_separate():
    a, _ = _f16_rows(13, 192, seed=2)
    b, _ = _f16_rows(6, 192, seed=3)
    x = torch.randn(7, 192)
    full = ops.gguf_mm(x, [a, b], F16)
    assert torch.equal(full, torch.cat([ops.gguf_mm(x, [a], F16), ops.gguf_mm(x, [b], F16)], 1))
    for i in range(7):
        assert torch.equal(full[i], ops.gguf_mm(x[i : i + 1], [a, b], F16)[0])


def test_bad_weight_shapes_are_refused():
    blocks, _ = _blocks("Q4_1", 4, 64)
    with pytest.raises(RuntimeError, match="expected"):
        ops.gguf_mm(torch.randn(1, 96), [blocks], 3)  # 96 columns need 3 blocks per row, the rows hold 2
    with pytest.raises(RuntimeError, match="unsupported GGML type"):
        ops.gguf_mm(torch.randn(1, 64), [blocks], 12)


def test_linear_module_matches_dequantized_weight():
    blocks, _ = _blocks("Q8_0", 64, 96, seed=4)
    lin = GGUFLinear(QuantizedTensor(blocks, 8, "Q8_0", (64, 96)), ops)
    x = torch.randn(2, 3, 96)
    exact = x @ lin.dequantized().T
    assert lin(x).shape == (2, 3, 64)
    assert (lin(x) - exact).abs().max().item() < 0.02 * exact.abs().max().item()  # 8-bit activations


def test_fused_kernels_equal_plain_torch():
    from hearth.model.llama import apply_rope

    x, w = torch.randn(5, 96), torch.rand(96) + 0.5
    ref = w * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-5))
    torch.testing.assert_close(ops.rms_norm(x, w, 1e-5), ref, rtol=1e-5, atol=1e-5)

    gu = torch.randn(3, 2 * 40) * 4
    gu[0, :6] = torch.tensor([-100.0, -30.0, 0.0, 30.0, 100.0, -1e-3])  # the exp's clamped range and its edges
    torch.testing.assert_close(ops.silu_mul(gu), torch.nn.functional.silu(gu[:, :40]) * gu[:, 40:])

    n, h, kvh, d = 4, 6, 2, 16
    qkv = torch.randn(n, (h + 2 * kvh) * d)
    ang = torch.rand(n, d // 2) * 10
    cos, sin = torch.cat([ang.cos()] * 2, -1), torch.cat([ang.sin()] * 2, -1)
    want = apply_rope(qkv[:, : (h + kvh) * d].view(n, h + kvh, d), cos[:, None], sin[:, None])
    v_before = qkv[:, (h + kvh) * d :].clone()
    ops.rope_(qkv, cos, sin, h + kvh, d)
    torch.testing.assert_close(qkv[:, : (h + kvh) * d].view(n, h + kvh, d), want)
    assert torch.equal(qkv[:, (h + kvh) * d :], v_before)  # values are not rotated

    b, length, cap = 2, 11, 16
    q = torch.randn(b, h, d)
    k, v = torch.randn(b, kvh, cap, d), torch.randn(b, kvh, cap, d)
    ref = torch.nn.functional.scaled_dot_product_attention(
        q[:, :, None], k[:, :, :length], v[:, :, :length], enable_gqa=True
    )[:, :, 0]
    torch.testing.assert_close(ops.decode_attention(q, k, v, length, 1 / math.sqrt(d)), ref, rtol=1e-5, atol=1e-5)


@pytest.fixture(scope="module", params=["smollm_tied", "tinyllama_gqa"])
def tiny_gguf(request, tmp_path_factory):
    """A tiny random Llama written as Q4_1, Q4_0, Q8_0 and F16 GGUF files, plus its fp32 hearth model: SmolLM-like
    (tied output read from the quantized embedding) and TinyLlama-like (untied)."""
    root = tmp_path_factory.mktemp("quant")
    hf = tiny.make_hf_model(request.param)
    directory = tiny.save_hf_model(hf, root / "hf")
    ref = load(str(directory), dtype="float32")
    paths = {
        q: write_gguf(root / f"m.{q}.gguf", ref.model.config, tiny.state_dict_of(ref.model), ref.tokenizer, qtype=q)
        for q in MODEL_QTYPES
    }
    return ref, paths


@pytest.mark.parametrize("name", MODEL_QTYPES)
def test_native_model_runs_the_blocks_and_agrees_with_dequantized_model(tiny_gguf, name):
    _, paths = tiny_gguf
    native = load(str(paths[name]))  # dtype auto: the blocks, natively
    plain = load(str(paths[name]), dtype="float32")  # every weight dequantized, plain modules
    att = native.model.layers[0].attention
    assert isinstance(att.wqkv, GGUFLinear) and att.wqkv.type_name == name
    assert isinstance(native.model.output, GGUFLinear)
    ids = list(tiny.corpus_ids(40))
    a, b = tiny.hearth_logits(native.model, ids), tiny.hearth_logits(plain.model, ids)
    rel = ((a - b).norm() / b.norm()).item()
    assert rel < (0.005 if name == "F16" else 0.05), rel  # only the 8-bit (fp16) activation rounding differs
    assert (a.argmax(-1) == b.argmax(-1)).float().mean().item() > 0.9
    if name == "F16":  # the file's fp16 weights, read in place: the same greedy tokens as the fp32 copy
        assert native.model.tok_embeddings.type_name == "F16"
        assert tiny.hearth_greedy(native, ids[:20], 16) == tiny.hearth_greedy(plain, ids[:20], 16)
    # the KV-cache decode path (fused attention) agrees with a full forward on the same prefix; not to the bit:
    # attention sums in another order, and an 8-bit rounding boundary can amplify that (exactness is checked on
    # float weights below)
    # The native path's cache holds fp16 (llama.cpp's default): keys and values rounded to fp16 on the way in
    assert native.model.cache_dtype == torch.float16
    step = _stepwise(native.model, ids, 30)
    assert ((step - a[30:]).norm() / a[30:].norm()).item() < 0.05
    assert (step.argmax(-1) == a[30:].argmax(-1)).float().mean().item() > 0.9
    native.model.kv_dtype = torch.float32  # (--kv-cache f32) only the order of summation differs
    step = _stepwise(native.model, ids, 30)
    assert ((step - a[30:]).norm() / a[30:].norm()).item() < 0.01
    assert torch.equal(step.argmax(-1), a[30:].argmax(-1))


@torch.inference_mode()
def _stepwise(model, ids, prefix):
    cache = model.new_cache(1, 64)
    model(torch.tensor([ids[:prefix]]), 0, cache)
    return torch.stack([model(torch.tensor([[t]]), prefix + i, cache)[0, -1] for i, t in enumerate(ids[prefix:])])


@pytest.mark.parametrize("name", list(QTYPES))
@pytest.mark.reference
def test_native_model_agrees_with_llama_cpp(tiny_gguf, name):
    """llama.cpp runs the same file with the same arithmetic (fp32 KV cache so attention is exact on both sides)."""
    import llama_cpp

    _, paths = tiny_gguf
    ids = list(tiny.corpus_ids(40))
    native = tiny.hearth_logits(load(str(paths[name])).model, ids)
    llm = llama_cpp.Llama(model_path=str(paths[name]), n_ctx=64, logits_all=True, n_threads=1, n_threads_batch=1,
                          verbose=False, type_k=0, type_v=0)
    llm.eval(ids)
    theirs = torch.tensor(np.array(llm.scores[: len(ids)]), dtype=torch.float32)
    plain = tiny.hearth_logits(load(str(paths[name]), dtype="float32").model, ids)
    # Bit-identical over the first positions (measured: the first 25); further on, llama.cpp's RoPE angles (built
    # by repeated multiplication) drift from hearth's in the last bits and the 8-bit rounding amplifies it.
    assert (native[:16] - theirs[:16]).abs().max().item() < 1e-5
    assert (plain[:16] - theirs[:16]).abs().max().item() > 1e-3  # the exact fp32 evaluation is not
    assert ((native - theirs).norm() / theirs.norm()).item() < 0.02
    assert (native.argmax(-1) == theirs.argmax(-1)).float().mean().item() > 0.9


@pytest.mark.reference
def test_native_f16_model_agrees_with_llama_cpp(tiny_gguf):
    """F16: both round the activations to fp16 before each product (ggml's vec_dot_type for F16), so hearth is closer to
    llama.cpp than the exact fp32 evaluation of the same weights. Not to 1e-5 as for the block types: an fp16 rounding
    step is 2^-11 of a value (8-bit steps are coarser but rarer to straddle), and fp32 differences in the last bits
    upstream (ggml sums RMSNorm in double, hearth in fp32) move some activations across one."""
    import llama_cpp

    _, paths = tiny_gguf
    ids = list(tiny.corpus_ids(40))
    native = tiny.hearth_logits(load(str(paths["F16"])).model, ids)
    llm = llama_cpp.Llama(model_path=str(paths["F16"]), n_ctx=64, logits_all=True, n_threads=1, n_threads_batch=1,
                          verbose=False, type_k=0, type_v=0)
    llm.eval(ids)
    theirs = torch.tensor(np.array(llm.scores[: len(ids)]), dtype=torch.float32)
    plain = tiny.hearth_logits(load(str(paths["F16"]), dtype="float32").model, ids)
    rel = ((native - theirs).norm() / theirs.norm()).item()
    assert rel < 1e-3, rel
    assert rel < 0.7 * ((plain - theirs).norm() / theirs.norm()).item()  # measured: about half the exact path's
    assert torch.equal(native.argmax(-1), theirs.argmax(-1))


def test_fast_path_on_float_weights_equals_plain_modules(tiny_gguf):
    ref, _ = tiny_gguf
    fast = load(str(ref.checkpoint.path))  # a HF directory, dtype auto: fused projections and kernels
    assert fast.model.layers[0].attention.wqkv is not None and fast.model.layers[0].feed_forward.w13 is not None
    ids = list(tiny.corpus_ids(40))
    torch.testing.assert_close(tiny.hearth_logits(fast.model, ids), tiny.hearth_logits(ref.model, ids),
                               rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(_stepwise(fast.model, ids, 25), _stepwise(ref.model, ids, 25), rtol=1e-4, atol=1e-4)
    assert tiny.hearth_greedy(fast, ids[:20], 16) == tiny.hearth_greedy(ref, ids[:20], 16)


def test_without_kernels_auto_falls_back_to_dequantized_weights(tiny_gguf):
    _, paths = tiny_gguf
    lm = load(str(paths["Q4_1"]), kernels=False)
    assert type(lm.model.output) is torch.nn.Linear
    ids = list(tiny.corpus_ids(20))
    plain = load(str(paths["Q4_1"]), dtype="float32")
    torch.testing.assert_close(tiny.hearth_logits(lm.model, ids), tiny.hearth_logits(plain.model, ids),
                               rtol=1e-4, atol=1e-4)


def test_decode_attention_over_several_chunks():
    """Decode attention runs in chunks of 64 positions merged afterwards (hearth/kernels/gguf_cpu.cpp)."""
    h, kvh, d, cap = 6, 2, 64, 200
    q = torch.randn(1, h, d)
    k, v = torch.randn(1, kvh, cap, d) * 3, torch.randn(1, kvh, cap, d)
    for length in (1, 63, 64, 65, 129, 200):
        ref = torch.nn.functional.scaled_dot_product_attention(
            q[:, :, None], k[:, :, :length], v[:, :, :length], enable_gqa=True
        )[:, :, 0]
        torch.testing.assert_close(ops.decode_attention(q, k, v, length, 1 / math.sqrt(d)), ref, rtol=1e-5, atol=1e-5)
        # fp16 caches (the native path's default) are read as the fp32 values they hold
        kh, vh = k.half(), v.half()
        ref = torch.nn.functional.scaled_dot_product_attention(
            q[:, :, None], kh[:, :, :length].float(), vh[:, :, :length].float(), enable_gqa=True
        )[:, :, 0]
        torch.testing.assert_close(ops.decode_attention(q, kh, vh, length, 1 / math.sqrt(d)), ref, rtol=1e-5, atol=1e-5)


@torch.inference_mode()
def _decode(lm, ids, prompt, steps, batch=1, whole_step=True):
    """Logits of a prompt's last position and of `steps` greedy decode steps (batch copies of the prompt, row r
    starting from token ids[r]), with the whole-step kernel (the loader's decoder) or the per-layer path (the model
    alone); and the cache."""
    model = lm.model
    forward = functools.partial(lm.decoder.forward, model) if whole_step else model
    cache = model.new_cache(batch, prompt + steps)
    rows = torch.tensor([ids[r : r + prompt] for r in range(batch)])
    logits = [forward(rows, 0, cache, last_only=True)[:, -1]]
    for i in range(steps):
        tok = logits[-1].argmax(-1, keepdim=True)
        logits.append(forward(tok, prompt + i, cache)[:, -1])
    return torch.stack(logits, 1), cache


@pytest.mark.parametrize("kv", ["f16", "f32"])
@pytest.mark.parametrize("name", MODEL_QTYPES)
def test_whole_decode_step_is_the_per_layer_path(tiny_gguf, name, kv):
    """CPUDecoder (one native call per token) gives bit-identical logits, caches and greedy tokens to the per-layer
    fast path it replaces, over fp16 (the default) or fp32 KV caches."""
    _, paths = tiny_gguf
    model = load(str(paths[name]), kv_cache=kv)
    assert model.decoder is not None
    ids = list(tiny.corpus_ids(40))
    whole, cache_w = _decode(model, ids, 20, 12)
    layers, cache_l = _decode(model, ids, 20, 12, whole_step=False)
    assert torch.equal(whole, layers)
    assert torch.equal(cache_w.k, cache_l.k) and torch.equal(cache_w.v, cache_l.v)
    assert torch.equal(whole.argmax(-1), layers.argmax(-1))


def test_whole_decode_step_on_two_threads_and_a_batch(tiny_gguf):
    """Threads split rows and attention chunks without changing any sum: 2 threads give the 1-thread numbers; a batch
    of 2 gives each row's numbers alone."""
    _, paths = tiny_gguf
    model = load(str(paths["Q4_1"]))
    ids = list(tiny.corpus_ids(120))
    # decoding from 60 to 70 crosses 64 positions (two attention chunks); the batch's prompt rows (2 x 60) stay under
    # the 128 rows from which prefill products switch to fp32 mm (another summation order)
    one, _ = _decode(model, ids, 60, 10, whole_step=False)
    torch.set_num_threads(2)
    try:
        two, _ = _decode(model, ids, 60, 10)
        pair, _ = _decode(model, ids, 60, 10, batch=2)
    finally:
        torch.set_num_threads(1)
    assert torch.equal(two, one)
    assert torch.equal(pair[:1], one)
    alone, _ = _decode(model, ids[1:], 60, 10)
    assert torch.equal(pair[1:], alone)


def test_whole_decode_step_past_its_first_rope_table(tiny_gguf):
    """The RoPE tables start at 256 positions and grow: rows on both sides equal Transformer.rope's."""
    _, paths = tiny_gguf
    model = load(str(paths["Q4_0"]))
    ids = list(tiny.corpus_ids(300))
    whole, _ = _decode(model, ids, 250, 12)
    layers, _ = _decode(model, ids, 250, 12, whole_step=False)
    assert model.decoder._cos.shape[0] >= 262 and torch.equal(whole, layers)


@torch.inference_mode()
def test_long_prompt_in_chunks_over_the_fp16_cache(tiny_gguf):
    """A prompt longer than prefill_chunk goes into the (fp16) cache chunk by chunk: the same logits as one pass up to
    the order of summation, and the same cache contents, so the decode steps after it agree too."""
    _, paths = tiny_gguf
    model = load(str(paths["Q4_1"])).model
    assert model.cache_dtype == torch.float16
    ids = torch.tensor([list(tiny.corpus_ids(101))])
    runs = []
    for chunk in (512, 32):  # one pass; four chunks (32, 32, 32, 4)
        model.prefill_chunk = chunk
        cache = model.new_cache(1, 104)
        every = model(ids[:, :100], 0, cache)[0]
        runs.append((every, model(ids[:, 100:], 100, cache)[0, -1], cache))
    model.prefill_chunk = 512
    (a, step_a, ca), (b, step_b, cb) = runs
    torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(step_b, step_a, rtol=1e-4, atol=1e-4)
    assert torch.equal(a.argmax(-1), b.argmax(-1))
    assert (cb.k.float() - ca.k.float()).abs().max().item() <= 2e-3 * ca.k.float().abs().max().item()


def test_whole_decode_step_only_where_it_applies(tiny_gguf):
    ref, paths = tiny_gguf
    assert load(str(ref.checkpoint.path)).decoder is None  # float weights: the per-layer fast path
    assert load(str(paths["Q8_0"]), dtype="float32").decoder is None  # plain modules
    lm = load(str(paths["Q8_0"]))
    model, dec = lm.model, lm.decoder
    cache = model.new_cache(1, 8)
    with torch.inference_mode():
        model(torch.tensor([[5, 6, 7]]), 0, cache)
        with pytest.raises(ValueError, match="exceeds"):
            dec.forward(model, torch.tensor([[5]]), 8, cache)
        with pytest.raises(RuntimeError, match="cache does not fit"):  # a batch of 2 against a cache for 1
            cos, sin = dec._tables(model, 3)
            dec._plan.step(torch.zeros(2, model.config.dim), cache.k, cache.v, cos, sin, 3)
