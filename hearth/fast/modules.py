"""The fast path's module swaps (gpt-fast's way: the model stays plain, the caller swaps faster modules in).

`apply_fast_path(model, ops)` fuses q|k|v and gate|up into single products (one GEMV each on a GPU, one quantization
of the activations on a CPU) and, given hearth's CPU kernels (`ops`, hearth.kernels.gguf_ops()), runs RMSNorm, RoPE,
SwiGLU and one-token attention as fused kernels. Each swapped module is a subclass of the plain one
(hearth/model/llama.py) holding the same parameters under the same names, with the unfused products dropped; the
arithmetic is the plain module's, so the state-dict names (wqkv, w13 aside) and every caller stay as they were.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hearth.fast.quant import fuse_linears
from hearth.model.llama import Attention, FeedForward, KVCache, RMSNorm, Transformer


class FastRMSNorm(RMSNorm):
    """RMSNorm through hearth's fused CPU kernel for fp32 rows on the CPU."""

    def __init__(self, norm: RMSNorm, ops):
        nn.Module.__init__(self)
        self.eps = norm.eps
        self.weight = norm.weight
        self.ops = ops

    def forward(self, x: Tensor) -> Tensor:
        if x.dtype == torch.float32 and x.device.type == "cpu":
            return self.ops.rms_norm(x, self.weight, self.eps)
        return super().forward(x)


class FusedAttention(Attention):
    """q|k|v in one product (`wqkv`); with hearth's kernels (`ops`) RoPE in place and one-token attention fused."""

    def __init__(self, att: Attention, wqkv: nn.Module, ops=None):
        nn.Module.__init__(self)
        self.layer = att.layer
        self.n_heads, self.n_kv_heads, self.head_dim = att.n_heads, att.n_kv_heads, att.head_dim
        self.wo = att.wo
        self.wqkv = wqkv
        self.ops = ops

    def _qkv(self, x: Tensor, cos: Tensor, sin: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        n, hd = x.shape[0], self.head_dim
        nq, nk = self.n_heads * hd, self.n_kv_heads * hd
        qkv = self.wqkv(x)
        if self.ops is not None and qkv.dtype == torch.float32 and qkv.device.type == "cpu":
            self.ops.rope_(qkv, cos, sin, self.n_heads + self.n_kv_heads, hd)
            q, k, v = qkv.split((nq, nk, nk), dim=-1)
            return q.view(n, self.n_heads, hd), k.view(n, self.n_kv_heads, hd), v.view(n, self.n_kv_heads, hd)
        q, k, v = qkv.split((nq, nk, nk), dim=-1)
        return self._rotate(q, k, v, cos, sin)

    def _project(self, x: Tensor, cos: Tensor, sin: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        b, t, _ = x.shape
        flat_cos = cos.reshape(t, -1).repeat(b, 1) if b > 1 else cos.reshape(t, -1)
        flat_sin = sin.reshape(t, -1).repeat(b, 1) if b > 1 else sin.reshape(t, -1)
        q, k, v = self._qkv(x.reshape(b * t, -1), flat_cos, flat_sin)
        q = q.view(b, t, self.n_heads, self.head_dim).transpose(1, 2)
        k = k.view(b, t, self.n_kv_heads, self.head_dim).transpose(1, 2)
        v = v.view(b, t, self.n_kv_heads, self.head_dim).transpose(1, 2)
        return q, k, v

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, start: int | Tensor, cache: KVCache | None) -> Tensor:
        b, t, _ = x.shape
        if (not isinstance(start, Tensor) and t == 1 and cache is not None and self.ops is not None
                and x.dtype == torch.float32):
            # The decode step, in four calls: q|k|v product, RoPE in place, cache write + attention, output product.
            qkv = self.wqkv(x.view(b, -1))
            c, s_ = cos.view(1, -1), sin.view(1, -1)
            if b > 1:
                c, s_ = c.expand(b, -1), s_.expand(b, -1)
            self.ops.rope_(qkv, c, s_, self.n_heads + self.n_kv_heads, self.head_dim)
            y = self.ops.attend_decode(qkv, cache.k, cache.v, self.layer, start, self.n_heads, self.n_kv_heads,
                                       1.0 / math.sqrt(self.head_dim))
            return self.wo(y).view(b, 1, -1)  # y is (b, H*D): wo takes the 2-D fast path
        return super().forward(x, cos, sin, start, cache)


class FusedFeedForward(FeedForward):
    """gate|up in one product (`w13`); with hearth's kernels SwiGLU fused."""

    def __init__(self, ff: FeedForward, w13: nn.Module, ops=None):
        nn.Module.__init__(self)
        self.w2 = ff.w2
        self.w13 = w13
        self.ops = ops

    def forward(self, x: Tensor) -> Tensor:
        gu = self.w13(x)
        if self.ops is not None and gu.dtype == torch.float32 and gu.device.type == "cpu":
            return self.w2(self.ops.silu_mul(gu))
        g, u = gu.chunk(2, dim=-1)
        return self.w2(F.silu(g) * u)


def apply_fast_path(model: Transformer, ops=None) -> Transformer:
    """Inference only: fuse q|k|v and gate|up into single products and, given hearth's CPU kernels (`ops`), run
    RMSNorm, RoPE, SwiGLU and one-token attention as fused kernels. The unfused modules are dropped. Products that
    cannot be fused (mixed weight types) stay as they are. Returns the model, changed in place."""
    for layer in model.layers:
        att, ff = layer.attention, layer.feed_forward
        qkv = fuse_linears([att.wq, att.wk, att.wv])
        if qkv is not None:
            layer.attention = FusedAttention(att, qkv, ops)
        w13 = fuse_linears([ff.w1, ff.w3])
        if w13 is not None:
            layer.feed_forward = FusedFeedForward(ff, w13, ops)
        if ops is not None:
            layer.attention_norm = FastRMSNorm(layer.attention_norm, ops)
            layer.ffn_norm = FastRMSNorm(layer.ffn_norm, ops)
    if ops is not None:
        model.norm = FastRMSNorm(model.norm, ops)
    return model
