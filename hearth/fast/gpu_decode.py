"""A one-token decode step on the GPU as a short list of Triton kernels (hearth/kernels/triton_decode.py).

Per layer five or six launches: RMSNorm + q|k|v product; RoPE + cache write + attention over the filled part of the
cache, in ranges (+ their merge, unless one range covers the cache); output product + residual; RMSNorm + gate|up
product + SwiGLU; down product + residual. Then the final norm + output product, writing fp32 logits. Shapes are fixed and the
position is read on the device, so StaticDecoder (hearth/fast/static_decode.py) records the whole step as one CUDA
graph, as it does the plain step. Batch 1 only (what `hearth run` decodes); bf16 or fp16 weights; the fused
q|k|v and gate|up products of `hearth.fast.apply_fast_path`.

Launch configurations come from `gemv_config`, measured on an H100 with bench/gpu_kernels.py (see bench/README.md).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

_DTYPES = (torch.bfloat16, torch.float16)


def pdl_default(device) -> bool:
    """Programmatic dependent launch (kernels overlap their neighbours' ramp-up and tail): Hopper and later. Callers
    pass pdl=False to turn it off (the CLI does under HEARTH_TRITON_PDL=0)."""
    return torch.device(device).type == "cuda" and torch.cuda.get_device_capability(device)[0] >= 9


def triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def gemv_config(n: int, k: int, swiglu: bool = False) -> dict:
    """BLOCK_N rows a program, BLOCK_K columns a step, warps, for an n x k product (n output rows). Measured on an
    H100 with bench/gpu_kernels.py (bench/README.md): eight rows a program stream the q|k|v, o and down matrices best,
    in 2048-column steps where that leaves fewer than ~2 programs an SM (n <= 2048: the 1B's o and down); gate|up
    holds two rows' tiles (gate and up) and spills registers beyond 2 x 1024; the large output matrix is at the copy
    rate with any sensible tile."""
    if n * k < 1 << 20:  # toy shapes (tests): few programs
        bn, bk = 16, 1024
    elif swiglu:
        bn, bk = 2, 1024
    elif n >= 32768:
        bn, bk = 4, 1024
    else:
        bn, bk = 8, 2048 if n <= 2048 else 1024
    return dict(BLOCK_N=bn, BLOCK_K=min(bk, triton_next_pow2(k)), num_warps=4)


def attention_chunk(cache_len: int, n_kv_heads: int, device) -> int:
    """Cache positions per program of decode attention (flash-decoding's split): (kv heads x ranges) about half the
    SMs' count, each range 64 to 1024 positions. Measured with bench/gpu_kernels.py on an H100: for 8 kv heads the
    best chunks were 64 (256-position cache), 128-256 (1024), 256-512 (4096) and 1024 (16384)."""
    sms = torch.cuda.get_device_properties(device).multi_processor_count if torch.device(device).type == "cuda" else 132
    return min(1024, max(64, triton_next_pow2(-(-cache_len * n_kv_heads // max(1, sms // 2)))))


def triton_next_pow2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


class GEMV:
    """One product y = W @ x with its prologue/epilogue, launch arguments bound once."""

    def __init__(self, weight: Tensor, x: Tensor, out: Tensor, *, norm: nn.Module | None = None,
                 swiglu: bool = False, residual: Tensor | None = None, config: dict | None = None,
                 pdl: bool | None = None):
        from hearth.kernels.triton_decode import _gemv

        n_all, k = weight.shape
        n = n_all // 2 if swiglu else n_all
        cfg = config or gemv_config(n, k, swiglu)
        bn, bk, warps = cfg["BLOCK_N"], cfg["BLOCK_K"], cfg.get("num_warps", 4)
        self._kernel = _gemv
        self._grid = ((n + bn - 1) // bn,)
        self._args = (weight, x, norm.weight if norm is not None else x, residual if residual is not None else out,
                      out, n, k, weight.stride(0), n, float(norm.eps) if norm is not None else 0.0)
        self._meta = dict(NORM=norm is not None, SWIGLU=swiglu, RESIDUAL=residual is not None, BLOCK_N=bn,
                          BLOCK_K=bk, K_POW2=triton_next_pow2(k), EVEN_N=n % bn == 0, EVEN_K=k % bk == 0,
                          num_warps=warps)
        self._meta.update(_pdl_meta(weight.device, pdl))

    def __call__(self) -> None:
        self._kernel[self._grid](*self._args, **self._meta)


def _pdl_meta(device, pdl: bool | None) -> dict:
    pdl = pdl_default(device) if pdl is None else pdl
    return dict(PDL=pdl, launch_pdl=True) if pdl else dict(PDL=False)


class Attend:
    """RoPE, cache write and attention of one layer, over `splits` ranges of the cache merged at the end.

    kc, vc: a contiguous cache's layer (KVH, S, D), or with `table` (the sequence's block ids, int64 on the device)
    a paged pool's layer (slots, KVH, D) of `block_size`-token blocks (hearth/model/paged.py)."""

    def __init__(self, qkv: Tensor, kc: Tensor, vc: Tensor, out: Tensor, pos: Tensor, inv_freq: Tensor,
                 n_heads: int, n_kv_heads: int, head_dim: int, block_s: int = 64, chunk: int | None = None,
                 pdl: bool | None = None, table: Tensor | None = None, block_size: int = 1):
        from hearth.kernels.triton_decode import _attend, _combine

        if table is None:
            s, stride_head, stride_row = kc.shape[1], kc.stride(0), kc.stride(1)
        else:
            s, stride_head, stride_row = table.numel() * block_size, kc.stride(1), kc.stride(0)
        if chunk is None:
            chunk = attention_chunk(s, n_kv_heads, qkv.device)
        self.splits = splits = triton_next_pow2(max(1, -(-s // chunk)))
        chunk = -(-s // splits)
        chunk = -(-chunk // block_s) * block_s
        g_pad = max(16, triton_next_pow2(n_heads // n_kv_heads))
        dev = qkv.device
        self._pm = torch.empty(n_kv_heads, splits, g_pad, device=dev)
        self._pl = torch.empty_like(self._pm)
        self._pa = torch.empty(n_kv_heads, splits, g_pad, head_dim, device=dev)
        self._attend, self._combine = _attend, _combine
        unused = pos  # TABLE of a contiguous cache: never read (PAGED is off), any pointer will do
        self._args = (qkv, kc, vc, out, self._pm, self._pl, self._pa, pos, inv_freq,
                      table if table is not None else unused, 1.0 / math.sqrt(head_dim), stride_head, stride_row)
        self._meta = dict(H=n_heads, KVH=n_kv_heads, D=head_dim, G_PAD=g_pad, BLOCK_S=block_s, CHUNK=chunk,
                          SPLITS=splits, PAGED=table is not None, BS=block_size, num_warps=4,
                          **_pdl_meta(qkv.device, pdl))
        self._cargs = (out, self._pm, self._pl, self._pa)
        self._cmeta = dict(H=n_heads, KVH=n_kv_heads, D=head_dim, G_PAD=g_pad, SPLITS=splits, num_warps=4,
                           **_pdl_meta(qkv.device, pdl))
        self._kvh = n_kv_heads

    def __call__(self) -> None:
        self._attend[(self._kvh, self.splits)](*self._args, **self._meta)
        if self.splits > 1:
            self._combine[(self._kvh,)](*self._cargs, **self._cmeta)


class GPUDecoder:
    """The whole one-token step of a fast-path Transformer over a batch-1 KVCache, as bound kernel launches.

    `step()` reads `tokens` (1, 1) and `pos` (1,) from the device and writes `logits` (1, vocab) fp32, advancing
    nothing itself (StaticDecoder owns the position). With `table` (the sequence's block ids on the device), `cache`
    is the engine's PagedKVCache and the step reads and writes the sequence's K/V through it. pdl: programmatic
    dependent launch between the kernels (None: where the GPU has it, Hopper and later)."""

    def __init__(self, model, cache, tokens: Tensor, pos: Tensor, chunk: int | None = None,
                 table: Tensor | None = None, pdl: bool | None = None):
        cfg = model.config
        dev, dt = model.device, model.dtype
        self.tokens, self.pos, self.model = tokens, pos, model
        h, kvh, hd = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
        self.x = torch.empty(1, cfg.dim, device=dev, dtype=dt)
        qkv = torch.empty(1, (h + 2 * kvh) * hd, device=dev, dtype=dt)
        att = torch.empty(1, h * hd, device=dev, dtype=dt)
        act = torch.empty(1, cfg.hidden_dim, device=dev, dtype=dt)
        self.logits = torch.empty(1, cfg.vocab_size, device=dev, dtype=torch.float32)
        inv_freq = model.inv_freq.to(dev, torch.float32).contiguous()
        self._launches = []

        def kv(i: int) -> tuple[Tensor, Tensor]:  # the layer's K and V: (KVH, S, D) contiguous, or paged pools
            return (cache.k[i, 0], cache.v[i, 0]) if table is None else (cache.k[i], cache.v[i])

        for i, layer in enumerate(model.layers):
            a, ff = layer.attention, layer.feed_forward
            self._launches += [
                GEMV(a.wqkv.weight, self.x, qkv, norm=layer.attention_norm, pdl=pdl),
                Attend(qkv, *kv(i), att, pos, inv_freq, h, kvh, hd, chunk=chunk, table=table,
                       block_size=getattr(cache, "block_size", 1), pdl=pdl),
                GEMV(a.wo.weight, att, self.x, residual=self.x, pdl=pdl),
                GEMV(ff.w13.weight, self.x, act, norm=layer.ffn_norm, swiglu=True, pdl=pdl),
                GEMV(ff.w2.weight, act, self.x, residual=self.x, pdl=pdl),
            ]
        self._launches.append(GEMV(model.output.weight, self.x, self.logits, norm=model.norm, pdl=pdl))

    @classmethod
    def usable(cls, model, batch_size: int, cache) -> bool:
        """Whether this step can run `model`: CUDA, batch 1, bf16/fp16 plain weights fused by apply_fast_path, a
        power-of-two head size."""
        if model.device.type != "cuda" or batch_size != 1 or model.dtype not in _DTYPES or not triton_available():
            return False
        hd = model.config.head_dim
        if hd < 16 or hd & (hd - 1):  # a head is one power-of-two block in the attention kernel
            return False
        if cache.k.dtype != model.dtype or not cache.k.is_contiguous():
            return False
        mods = [model.output] + [m for layer in model.layers  # plain (unfused) modules have no wqkv / w13
                                 for m in (getattr(layer.attention, "wqkv", None), layer.attention.wo,
                                           getattr(layer.feed_forward, "w13", None), layer.feed_forward.w2)]
        if any(type(m) is not nn.Linear or m.bias is not None or m.weight.dtype != model.dtype
               or m.weight.stride(1) != 1 for m in mods):
            return False
        norms = [model.norm] + [n for layer in model.layers for n in (layer.attention_norm, layer.ffn_norm)]
        return all(n.weight.dtype == model.dtype and n.weight.is_contiguous() for n in norms)

    def step(self) -> Tensor:
        torch.index_select(self.model.tok_embeddings.weight, 0, self.tokens.view(-1), out=self.x)
        for launch in self._launches:
            launch()
        return self.logits
