"""The Llama transformer: RMSNorm, RoPE (with llama3 scaling), grouped-query attention, SwiGLU.

Plain PyTorch in the style of gpt-fast: one module per block, no device or dtype baked in,
no knowledge of where the weights came from. q/k projections use the Hugging Face
"rotate-half" layout; GGUF readers un-permute their interleaved layout on load.

State-dict names (hearth's own, shared by every reader):
    tok_embeddings.weight, norm.weight, output.weight (absent when tied),
    layers.N.attention_norm.weight, layers.N.attention.{wq,wk,wv,wo}.weight,
    layers.N.ffn_norm.weight, layers.N.feed_forward.{w1,w2,w3}.weight   (w1 gate, w3 up, w2 down)
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hearth.config import ModelConfig
from hearth.model.paged import BatchMeta, PagedKVCache, paged_attention


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        # Normalise in fp32 and cast back before the weight, exactly as the reference implementations do:
        # in bf16 the order of these two steps changes the logits.
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * xf.to(x.dtype)


def rope_frequencies(cfg: ModelConfig) -> Tensor:
    """Inverse frequencies (head_dim/2,), fp32, with llama3 or linear scaling applied."""
    head_dim, scaling = cfg.head_dim, cfg.rope_scaling
    inv_freq = 1.0 / (cfg.rope_theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim))
    if cfg.rope_freq_factors is not None:  # GGUF stores llama3 scaling as precomputed divisors
        return inv_freq / torch.tensor(cfg.rope_freq_factors, dtype=torch.float32)
    if scaling is None:
        return inv_freq
    if scaling.kind == "linear":
        return inv_freq / scaling.factor
    if scaling.kind != "llama3":
        raise ValueError(f"unsupported rope scaling {scaling.kind!r}")
    # Llama 3.1: keep high frequencies, divide low ones by `factor`, blend smoothly in between.
    low_wavelen = scaling.original_max_position_embeddings / scaling.low_freq_factor
    high_wavelen = scaling.original_max_position_embeddings / scaling.high_freq_factor
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > low_wavelen, inv_freq / scaling.factor, inv_freq)
    smooth = (scaling.original_max_position_embeddings / wavelen - scaling.low_freq_factor) / (
        scaling.high_freq_factor - scaling.low_freq_factor
    )
    smoothed = (1 - smooth) * scaled / scaling.factor + smooth * scaled
    medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
    return torch.where(medium, smoothed, scaled)


def rotate_half(x: Tensor) -> Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """x: (B, H, T, D); cos/sin: (B or 1, 1, T, D) in fp32. Computed in fp32, returned in x's dtype."""
    xf = x.float()
    return (xf * cos + rotate_half(xf) * sin).to(x.dtype)


class KVCache(nn.Module):
    """A contiguous key/value cache for a batch of sequences that advance together.

    Preallocated to `max_seq_len`, so decoding never reallocates or concatenates.
    """

    def __init__(self, cfg: ModelConfig, batch_size: int, max_seq_len: int, device=None, dtype=torch.float32):
        super().__init__()
        shape = (cfg.n_layers, batch_size, cfg.n_kv_heads, max_seq_len, cfg.head_dim)
        self.register_buffer("k", torch.zeros(shape, device=device, dtype=dtype), persistent=False)
        self.register_buffer("v", torch.zeros(shape, device=device, dtype=dtype), persistent=False)
        self.max_seq_len = max_seq_len

    def update(self, layer: int, start: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Store k, v (B, KVH, T, D) at positions start..; the layer's keys and values 0..start+T in k's dtype (an fp16
        cache under fp32 compute: the stored, rounded values, as every later step reads them)."""
        end = start + k.shape[2]
        self.k[layer, :, :, start:end] = k
        self.v[layer, :, :, start:end] = v
        return self.k[layer, :, :, :end].to(k.dtype), self.v[layer, :, :, :end].to(v.dtype)


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig, layer: int):
        super().__init__()
        self.layer = layer
        self.n_heads, self.n_kv_heads, self.head_dim = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
        self.wq = nn.Linear(cfg.dim, cfg.n_heads * cfg.head_dim, bias=False)
        self.wk = nn.Linear(cfg.dim, cfg.n_kv_heads * cfg.head_dim, bias=False)
        self.wv = nn.Linear(cfg.dim, cfg.n_kv_heads * cfg.head_dim, bias=False)
        self.wo = nn.Linear(cfg.n_heads * cfg.head_dim, cfg.dim, bias=False)

    def _qkv(self, x: Tensor, cos: Tensor, sin: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """x (N, dim), cos/sin (N, head_dim) → rotated q (N, H, D), k and v (N, KVH, D)."""
        q, k, v = self.wq(x), self.wk(x), self.wv(x)
        return self._rotate(q, k, v, cos, sin)

    def _rotate(self, q: Tensor, k: Tensor, v: Tensor, cos: Tensor, sin: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        n, hd = q.shape[0], self.head_dim
        q, k = q.view(n, self.n_heads, hd), k.view(n, self.n_kv_heads, hd)
        q, k = apply_rope(q, cos[:, None], sin[:, None]), apply_rope(k, cos[:, None], sin[:, None])
        return q, k, v.view(n, self.n_kv_heads, hd)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, start: int | Tensor, cache: KVCache | None) -> Tensor:
        b, t, _ = x.shape
        if isinstance(start, Tensor):
            return self._forward_static(x, cos, sin, start, cache)
        q, k, v = self._project(x, cos, sin)
        if cache is not None:
            k, v = cache.update(self.layer, start, k, v)
        if start == 0 or t == 1:
            # Whole prompt from an empty cache (plain causal) or one new token (sees everything).
            mask, causal = None, t > 1
        else:
            # A chunk appended to a filled cache: query i sees keys 0 .. start+i.
            kpos = torch.arange(k.shape[2], device=x.device)
            qpos = torch.arange(start, start + t, device=x.device)
            mask, causal = kpos[None, :] <= qpos[:, None], False
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, is_causal=causal, enable_gqa=self.n_heads != self.n_kv_heads
        )
        return self.wo(y.transpose(1, 2).reshape(b, t, self.n_heads * self.head_dim))

    def _project(self, x: Tensor, cos: Tensor, sin: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """x (B, T, dim), cos/sin (1, 1, T, head_dim) → rotated q (B, H, T, D), k and v (B, KVH, T, D)."""
        b, t, _ = x.shape
        q = self.wq(x).view(b, t, self.n_heads, self.head_dim).transpose(1, 2)
        k = self.wk(x).view(b, t, self.n_kv_heads, self.head_dim).transpose(1, 2)
        v = self.wv(x).view(b, t, self.n_kv_heads, self.head_dim).transpose(1, 2)
        return apply_rope(q, cos, sin), apply_rope(k, cos, sin), v

    def _forward_static(self, x: Tensor, cos: Tensor, sin: Tensor, pos: Tensor, cache: KVCache) -> Tensor:
        """One new token per sequence at position `pos` (a (1,) tensor on the device, not a Python int), attending over
        the whole preallocated cache under a mask. Shapes never change from step to step and nothing reads a device
        value on the host, so the step can be captured as a CUDA graph and compiled (hearth/fast/static_decode.py)."""
        b, hd, kvh = x.shape[0], self.head_dim, self.n_kv_heads
        q, k, v = self._qkv(x.view(b, -1), cos.view(1, hd).expand(b, hd), sin.view(1, hd).expand(b, hd))
        kc, vc = cache.k[self.layer], cache.v[self.layer]  # (B, KVH, S, D) views of the cache
        kc[:, :, pos] = k.view(b, kvh, 1, hd)
        vc[:, :, pos] = v.view(b, kvh, 1, hd)
        mask = (torch.arange(kc.shape[2], device=x.device) <= pos).view(1, 1, 1, -1)
        kc, vc = kc.to(q.dtype), vc.to(q.dtype)  # no-ops unless the cache type differs (fp16 cache, fp32 compute)
        # grouped-query attention without repeating K/V: each kv head's group of query heads are its query rows
        # (query head h uses kv head h // group, as in the reference repeat_interleave)
        # (written out as matmul + softmax instead, it ran ~5% slower compiled on an H100: bench/README.md)
        y = F.scaled_dot_product_attention(q.view(b, kvh, self.n_heads // kvh, hd), kc, vc, attn_mask=mask)
        return self.wo(y.reshape(b, self.n_heads * hd)).view(b, 1, -1)

    def forward_paged(self, x: Tensor, cos: Tensor, sin: Tensor, cache: PagedKVCache, meta: BatchMeta) -> Tensor:
        """x: (N, dim) tokens of many sequences flattened; cos/sin: (N, head_dim)."""
        n = x.shape[0]
        q, k, v = self._qkv(x, cos, sin)
        y = paged_attention(q, k, v, self.layer, cache, meta)
        return self.wo(y.reshape(n, self.n_heads * self.head_dim))


class FeedForward(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.w1 = nn.Linear(cfg.dim, cfg.hidden_dim, bias=False)  # gate
        self.w3 = nn.Linear(cfg.dim, cfg.hidden_dim, bias=False)  # up
        self.w2 = nn.Linear(cfg.hidden_dim, cfg.dim, bias=False)  # down

    def forward(self, x: Tensor) -> Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig, layer: int):
        super().__init__()
        self.attention_norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.attention = Attention(cfg, layer)
        self.ffn_norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.feed_forward = FeedForward(cfg)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, start: int, cache: KVCache | None) -> Tensor:
        h = x + self.attention(self.attention_norm(x), cos, sin, start, cache)
        return h + self.feed_forward(self.ffn_norm(h))


class Transformer(nn.Module):
    """Llama-family decoder. `forward(tokens, start, cache)` returns logits (B, T, vocab)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.config = cfg
        # _weight: no random init (on the meta device that init alone costs ~1 s of torch imports at load)
        self.tok_embeddings = nn.Embedding(cfg.vocab_size, cfg.dim, _weight=torch.empty(cfg.vocab_size, cfg.dim))
        self.layers = nn.ModuleList(Block(cfg, i) for i in range(cfg.n_layers))
        self.norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.output = nn.Linear(cfg.dim, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.output.weight = self.tok_embeddings.weight
        # Computed on the CPU even while the loader builds the module on the meta device: meta-tensor arithmetic
        # pulls in torch's Python decompositions (~800 modules, ~80 MB and seconds at every load).
        with torch.device("cpu"):
            inv_freq = rope_frequencies(cfg)
        self.register_buffer("inv_freq", inv_freq, persistent=False)
        self.prefill_chunk = 512  # tokens per pass of a long prompt into a KV cache (forward)
        self.kv_dtype: torch.dtype | None = None  # KV cache element type; None: the compute dtype (see cache_dtype)

    @property
    def device(self) -> torch.device:
        return self.norm.weight.device

    @property
    def dtype(self) -> torch.dtype:
        """The compute dtype (weights may be stored quantized: see hearth/fast/quant.py)."""
        return self.norm.weight.dtype

    @property
    def cache_dtype(self) -> torch.dtype:
        """What KV caches hold: `kv_dtype` if set (the loader sets fp16 for hearth's native CPU path, as llama.cpp's
        default cache type), else the compute dtype."""
        return self.kv_dtype or self.dtype

    def new_cache(self, batch_size: int = 1, max_seq_len: int | None = None) -> KVCache:
        return KVCache(self.config, batch_size, max_seq_len or self.config.max_seq_len, self.device, self.cache_dtype)

    def rope(self, start: int | Tensor, t: int, device) -> tuple[Tensor, Tensor]:
        if isinstance(start, Tensor):  # a position held on the device (static decode)
            pos = (start + torch.arange(t, device=device)).float()
        else:
            pos = torch.arange(start, start + t, device=device, dtype=torch.float32)
        freqs = torch.outer(pos, self.inv_freq.to(device))
        emb = torch.cat((freqs, freqs), dim=-1)[None, None]
        return emb.cos(), emb.sin()

    def forward_paged(self, tokens: Tensor, cache: PagedKVCache, meta: BatchMeta, logit_rows: Tensor | None) -> Tensor:
        """One engine step: tokens (N,) of many sequences; returns logits (len(logit_rows), vocab) fp32."""
        x = self.tok_embeddings(tokens)
        freqs = torch.outer(meta.positions.float(), self.inv_freq)
        emb = torch.cat((freqs, freqs), dim=-1)
        cos, sin = emb.cos(), emb.sin()
        for layer in self.layers:
            h = x + layer.attention.forward_paged(layer.attention_norm(x), cos, sin, cache, meta)
            x = h + layer.feed_forward(layer.ffn_norm(h))
        if logit_rows is not None:  # None: every row (the CUDA-graph decode step, one row per sequence)
            x = x[logit_rows]
        return self.output(self.norm(x)).float()

    def forward(
        self, tokens: Tensor, start: int | Tensor = 0, cache: KVCache | None = None, last_only: bool = False
    ) -> Tensor:
        """`start` is the position of tokens[:, 0]: a Python int, or a (1,) tensor on the model's device for one-token
        steps over a preallocated cache (the CUDA-graph path, which cannot check bounds on the host)."""
        b, t = tokens.shape
        if cache is not None and isinstance(start, int) and start + t > cache.max_seq_len:
            raise ValueError(f"sequence of {start + t} tokens exceeds the cache's {cache.max_seq_len}")
        chunk = self.prefill_chunk
        if cache is not None and isinstance(start, int) and t > chunk:
            # A long prompt into a cache goes through in chunks, as llama.cpp's n_ubatch: the activations of one chunk
            # at a time (a 4000-token prompt on the CPU: peak RSS 766 -> 607 MiB, and faster, the chunk's rows
            # staying in cache); the logits are the same up to the order of summation in attention.
            outs = []
            for s in range(0, t, chunk):
                x = self._hidden(tokens[:, s : s + chunk], start + s, cache)
                if not last_only:
                    outs.append(self.output(self.norm(x)).float())
            return torch.cat(outs, dim=1) if outs else self.output(self.norm(x[:, -1:])).float()
        x = self._hidden(tokens, start, cache)
        if last_only:
            x = x[:, -1:]
        return self.output(self.norm(x)).float()

    @torch.inference_mode()
    def embed(self, ids: list[int]) -> Tensor:
        """A text's embedding: the final-norm hidden states averaged over its tokens, L2-normalized, fp32 on the CPU
        (the pooling llama.cpp's server and Ollama give a generative model). Long inputs go through in chunks."""
        tokens = torch.tensor([ids], dtype=torch.long, device=self.device)
        cache = self.new_cache(1, len(ids))
        total = torch.zeros(self.config.dim, dtype=torch.float32, device=self.device)
        for s in range(0, len(ids), self.prefill_chunk):
            x = self._hidden(tokens[:, s : s + self.prefill_chunk], s, cache)
            total += self.norm(x)[0].float().sum(0)
        return torch.nn.functional.normalize(total / len(ids), dim=0).cpu()

    def _hidden(self, tokens: Tensor, start: int | Tensor, cache: KVCache | None) -> Tensor:
        """The last layer's output (B, T, dim) for tokens at positions start.., before the final norm."""
        x = self.tok_embeddings(tokens)
        cos, sin = self.rope(start, tokens.shape[1], tokens.device)
        for layer in self.layers:
            x = layer(x, cos, sin, start, cache)
        return x
