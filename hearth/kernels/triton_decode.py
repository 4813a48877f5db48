"""Triton kernels for a one-token decode step on the GPU (hearth/fast/gpu_decode.py strings them together).

Why by hand: at batch 1 a decode step reads every weight once and does two flops per weight, so its speed is the
rate at which the products stream their matrices. cuBLAS's and inductor's one-row products reach it only for the
largest matrices; torch.compile turned each product into a reduction with one program per output row, which fuses
the norm or SwiGLU before it but recomputes that prologue in every program, and reaches 45-75 % of the copy rate
on the smaller matrices (bench/README.md). Here each program owns BLOCK_N rows, streams them in BLOCK_K columns
with the input chunk shared across its rows, and takes the layer's glue into the same pass:

* `_gemv`: y = W @ x, with optional RMSNorm of x first (the norm's weight applied and rounded as the reference
  does), SwiGLU of a fused gate|up product after (each program holds gate row r and up row r), a residual add after,
  and fp32 output (the logits).
* `_attend`: RoPE of the new q and k, the cache write of k and v at the position held on the device, and attention
  of the query heads of one kv head (grouped-query attention without repeating K/V) over the filled part of the
  cache, in `splits` ranges of the sequence whose partial softmax states `_combine` merges (flash-decoding). The
  cache is contiguous (StaticDecoder) or the serving engine's paged pool, read through the sequence's block table.
* Programmatic dependent launch (Hopper): each kernel lets the next one start while it runs and waits for it only
  before reading what it produced, so kernel boundaries cost less than a full drain of the GPU.

Every rounding to the compute dtype happens where the plain path (hearth/model/llama.py) rounds, so logits agree
with it to within the summation order (tests/test_gpu_decode.py runs these kernels in Triton's interpreter on the
CPU, and compiled where a GPU is present).
"""

from __future__ import annotations

import triton
import triton.language as tl
import triton.language.extra.cuda  # tl.extra.cuda.gdc_*: programmatic dependent launch


@triton.jit
def _gemv(W, X, G, R, Y, N, K, stride_w, H, eps,
          NORM: tl.constexpr, SWIGLU: tl.constexpr, RESIDUAL: tl.constexpr,
          BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, K_POW2: tl.constexpr,
          EVEN_N: tl.constexpr, EVEN_K: tl.constexpr, PDL: tl.constexpr):
    """Y[r] = (W @ norm(X))[r] for BLOCK_N rows r of this program.

    NORM: X is first RMS-normalised (fp32, rounded) and multiplied by the weight G (rounded), as RMSNorm does.
    SWIGLU: W holds gate rows 0..H and up rows H..2H; Y[r] = silu(gate_r) * up_r, each rounded as F.silu and * do.
    RESIDUAL: Y[r] = R[r] + product (R may be Y: each program reads its rows before writing them).
    The product is rounded to X's dtype (as a matmul's output is), then stored as Y's dtype (fp32 for the logits).
    PDL (programmatic dependent launch, Hopper on): the next kernel may start as soon as every program here has
    started, and this one loads its first weight tile before waiting for the previous kernel (whose output X is),
    so consecutive products overlap their ramp-up and tail instead of draining the GPU between them.
    """
    if PDL:
        tl.extra.cuda.gdc_launch_dependents()
    pid = tl.program_id(0)
    dt = X.dtype.element_ty
    rows = pid * BLOCK_N + tl.arange(0, BLOCK_N)
    rmask = rows < N
    kr = tl.arange(0, BLOCK_K)
    ptrs = W + rows[:, None] * stride_w + kr[None, :]
    # the weights are never written during a step: the first tile may be read before the wait
    if EVEN_N and EVEN_K:
        w = tl.load(ptrs)
    else:
        w = tl.load(ptrs, mask=rmask[:, None] & (kr < K)[None, :], other=0.0)
    if SWIGLU:
        if EVEN_N and EVEN_K:
            w2 = tl.load(ptrs + H * stride_w)
        else:
            w2 = tl.load(ptrs + H * stride_w, mask=rmask[:, None] & (kr < K)[None, :], other=0.0)
    if PDL:
        tl.extra.cuda.gdc_wait()
    if NORM:
        ka = tl.arange(0, K_POW2)
        xa = tl.load(X + ka, mask=ka < K, other=0.0).to(tl.float32)
        rstd = 1.0 / tl.sqrt(tl.sum(xa * xa, 0) / K + eps)
    acc = tl.zeros((BLOCK_N, BLOCK_K), dtype=tl.float32)
    if SWIGLU:
        acc2 = tl.zeros((BLOCK_N, BLOCK_K), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        ks = k0 + kr
        kmask = ks < K
        if EVEN_K:
            x = tl.load(X + ks)
        else:
            x = tl.load(X + ks, mask=kmask, other=0.0)
        if NORM:
            if EVEN_K:
                g = tl.load(G + ks)
            else:
                g = tl.load(G + ks, mask=kmask, other=0.0)
            x = ((x.to(tl.float32) * rstd).to(dt).to(tl.float32) * g.to(tl.float32)).to(dt)
        xf = x.to(tl.float32)[None, :]
        acc += w.to(tl.float32) * xf
        if SWIGLU:
            acc2 += w2.to(tl.float32) * xf
        # the next tile (none past the end)
        nmask = rmask[:, None] & ((ks + BLOCK_K) < K)[None, :]
        w = tl.load(ptrs + k0 + BLOCK_K, mask=nmask, other=0.0)
        if SWIGLU:
            w2 = tl.load(ptrs + H * stride_w + k0 + BLOCK_K, mask=nmask, other=0.0)
    y = tl.sum(acc, 1).to(dt).to(tl.float32)
    if SWIGLU:
        up = tl.sum(acc2, 1).to(dt).to(tl.float32)
        y = (y / (1.0 + tl.exp(-y))).to(dt).to(tl.float32) * up
        y = y.to(dt).to(tl.float32)
    if RESIDUAL:
        y = (tl.load(R + rows, mask=rmask, other=0.0).to(tl.float32) + y).to(dt).to(tl.float32)
    tl.store(Y + rows, y.to(Y.dtype.element_ty), mask=rmask)


@triton.jit
def _rope(x, xp, d, half, cos, sin):
    """x * cos + rotate_half(x) * sin in fp32, rotate_half(x)[d] = -x[d + half] (d < half) or x[d - half]."""
    return x * cos + tl.where(d < half, -xp, xp) * sin


@triton.jit
def _attend(QKV, KC, VC, O, PM, PL, PA, POS, INV_FREQ, TABLE, sm_scale, stride_head, stride_row,
            H: tl.constexpr, KVH: tl.constexpr, D: tl.constexpr, G_PAD: tl.constexpr,
            BLOCK_S: tl.constexpr, CHUNK: tl.constexpr, SPLITS: tl.constexpr, PAGED: tl.constexpr,
            BS: tl.constexpr, PDL: tl.constexpr):
    """One kv head's query group over one range of the cache. QKV: the fused q|k|v product (H + 2 KVH heads of D);
    KC, VC: this layer's cache, the row of (position s, kv head h) at h * stride_head + slot(s) * stride_row, where
    slot(s) = s (a contiguous cache) or, PAGED, TABLE[s // BS] * BS + s % BS (the engine's block table, BS-token
    blocks); the new k, v go to position POS.
    SPLITS == 1: O (H*D) gets the attention output; else PM, PL (KVH, SPLITS, G_PAD) and PA (.., D) the partial
    max, sum and weighted values of range `split` (positions split*CHUNK ..), for _combine."""
    if PDL:
        tl.extra.cuda.gdc_launch_dependents()
    kvh = tl.program_id(0)
    split = tl.program_id(1)
    GROUP: tl.constexpr = H // KVH
    HALF: tl.constexpr = D // 2
    dt = QKV.dtype.element_ty
    pos = tl.load(POS)
    d = tl.arange(0, D)
    partner = (d + HALF) % D
    f = pos.to(tl.float32) * tl.load(INV_FREQ + d % HALF)
    cos, sin = tl.cos(f), tl.sin(f)
    if PDL:  # POS was written before the step began; QKV by the previous kernel
        tl.extra.cuda.gdc_wait()

    kb = QKV + (H + kvh) * D
    k = _rope(tl.load(kb + d).to(tl.float32), tl.load(kb + partner).to(tl.float32), d, HALF, cos, sin).to(dt)
    v = tl.load(QKV + (H + KVH + kvh) * D + d)
    if PAGED:
        pslot = tl.load(TABLE + pos // BS) * BS + pos % BS
    else:
        pslot = pos
    if split == 0:
        tl.store(KC + kvh * stride_head + pslot * stride_row + d, k)
        tl.store(VC + kvh * stride_head + pslot * stride_row + d, v)

    g = tl.arange(0, G_PAD)
    gmask = g < GROUP
    qp = QKV + (kvh * GROUP + g)[:, None] * D
    q = tl.load(qp + d[None, :], mask=gmask[:, None], other=0.0).to(tl.float32)
    qr = tl.load(qp + partner[None, :], mask=gmask[:, None], other=0.0).to(tl.float32)
    q = _rope(q, qr, d[None, :], HALF, cos[None, :], sin[None, :]).to(dt)
    # The products run as fp32 dots: on the GPU that is tf32, exact for bf16/fp16 operands (8 or 11 mantissa bits
    # fit tf32's 11) and finer than the bf16 that flash attention rounds the probabilities to. (Triton's interpreter
    # also mis-multiplies bf16 dots, which would leave the CPU tests blind.)
    qf = q.to(tl.float32)

    m = tl.full((G_PAD,), float("-inf"), dtype=tl.float32)
    lsum = tl.zeros((G_PAD,), dtype=tl.float32)
    acc = tl.zeros((G_PAD, D), dtype=tl.float32)
    lo = split * CHUNK
    hi = tl.minimum(lo + CHUNK, pos)  # the cache holds positions < pos; the new token is added from registers
    kbase = KC + kvh * stride_head
    vbase = VC + kvh * stride_head
    for s0 in range(lo, hi, BLOCK_S):
        s = s0 + tl.arange(0, BLOCK_S)
        smask = s < hi
        if PAGED:
            rows = (tl.load(TABLE + s // BS, mask=smask, other=0) * BS + s % BS) * stride_row
        else:
            rows = s * stride_row
        kt = tl.load(kbase + rows[:, None] + d[None, :], mask=smask[:, None], other=0.0).to(tl.float32)
        sc = tl.dot(qf, tl.trans(kt)) * sm_scale
        sc = tl.where(smask[None, :], sc, float("-inf"))
        m_new = tl.maximum(m, tl.max(sc, 1))
        p = tl.exp(sc - m_new[:, None])
        alpha = tl.exp(m - m_new)
        vt = tl.load(vbase + rows[:, None] + d[None, :], mask=smask[:, None], other=0.0).to(tl.float32)
        acc = acc * alpha[:, None] + tl.dot(p, vt)
        lsum = lsum * alpha + tl.sum(p, 1)
        m = m_new
    if (pos >= lo) & (pos < lo + CHUNK):  # this range holds the new position
        sn = tl.sum(qf * k.to(tl.float32)[None, :], 1) * sm_scale
        m_new = tl.maximum(m, sn)
        p = tl.exp(sn - m_new)
        alpha = tl.exp(m - m_new)
        acc = acc * alpha[:, None] + p[:, None] * v.to(tl.float32)[None, :]
        lsum = lsum * alpha + p
        m = m_new
    if SPLITS == 1:
        out = acc / lsum[:, None]
        tl.store(O + (kvh * GROUP + g)[:, None] * D + d[None, :], out.to(dt), mask=gmask[:, None])
    else:
        base = (kvh * SPLITS + split) * G_PAD + g
        tl.store(PM + base, m)
        tl.store(PL + base, lsum)
        tl.store(PA + base[:, None] * D + d[None, :], acc)


@triton.jit
def _combine(O, PM, PL, PA, H: tl.constexpr, KVH: tl.constexpr, D: tl.constexpr, G_PAD: tl.constexpr,
             SPLITS: tl.constexpr, PDL: tl.constexpr):
    """Merge the SPLITS partial softmax states of one kv head's query group (flash-decoding's second pass)."""
    if PDL:
        tl.extra.cuda.gdc_launch_dependents()
        tl.extra.cuda.gdc_wait()
    kvh = tl.program_id(0)
    GROUP: tl.constexpr = H // KVH
    g = tl.arange(0, G_PAD)
    d = tl.arange(0, D)
    m = tl.full((G_PAD,), float("-inf"), dtype=tl.float32)
    lsum = tl.zeros((G_PAD,), dtype=tl.float32)
    acc = tl.zeros((G_PAD, D), dtype=tl.float32)
    for sp in range(SPLITS):
        idx = (kvh * SPLITS + sp) * G_PAD + g
        mi = tl.load(PM + idx)  # an empty range holds -inf: weight 0
        m_new = tl.maximum(m, mi)
        alpha = tl.exp(m - m_new)
        beta = tl.exp(mi - m_new)
        lsum = lsum * alpha + tl.load(PL + idx) * beta
        acc = acc * alpha[:, None] + tl.load(PA + idx[:, None] * D + d[None, :]) * beta[:, None]
        m = m_new
    out = acc / lsum[:, None]
    gmask = g < GROUP
    tl.store(O + (kvh * GROUP + g)[:, None] * D + d[None, :], out.to(O.dtype.element_ty), mask=gmask[:, None])
