"""Paged KV cache and attention over a batch of variable-length sequences (for the serving engine).

The cache is one pool of fixed-size blocks per layer; each sequence owns a list of blocks (its block
table), so memory follows the tokens actually in use. A step's tokens from all sequences are flattened
into one (N,) batch for the linear layers; attention is then done per group:
  * decode tokens (one per sequence) in a single padded SDPA call with a key mask,
  * each prefill chunk in its own causal SDPA call against that sequence's cached keys.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from hearth.config import ModelConfig


class PagedKVCache:
    """k/v pools of shape (n_layers, num_blocks * block_size, n_kv_heads, head_dim)."""

    def __init__(self, cfg: ModelConfig, num_blocks: int, block_size: int, device, dtype):
        self.num_blocks, self.block_size = num_blocks, block_size
        shape = (cfg.n_layers, num_blocks * block_size, cfg.n_kv_heads, cfg.head_dim)
        self.k, self.v = _zeros(shape, device, dtype), _zeros(shape, device, dtype)

    @staticmethod
    def bytes_per_block(cfg: ModelConfig, block_size: int, dtype: torch.dtype) -> int:
        return 2 * cfg.n_layers * block_size * cfg.n_kv_heads * cfg.head_dim * torch.empty((), dtype=dtype).element_size()


def _zeros(shape: tuple[int, ...], device, dtype: torch.dtype) -> Tensor:
    """A zero-filled pool. On the CPU through numpy's calloc: the pages are mapped zeroed by the OS and become
    resident only when written, so a server's KV budget (1 GiB by default) costs memory as it fills, not at start
    (torch.zeros writes every byte: +1 GiB of RSS at once)."""
    np_dtype = {torch.float32: np.float32, torch.float16: np.float16}.get(dtype)
    if torch.device(device).type == "cpu" and np_dtype is not None:
        return torch.from_numpy(np.zeros(shape, dtype=np_dtype))
    return torch.zeros(shape, device=device, dtype=dtype)


@dataclass
class PrefillChunk:
    start: int  # first row in the flattened batch
    length: int  # query tokens in this chunk
    key_slots: Tensor  # (ctx_len,) cache slots of every key the chunk attends to, in position order


@dataclass
class BatchMeta:
    """How the flattened tokens of one step map onto sequences and cache slots (built by the runner)."""

    positions: Tensor  # (N,) position of each token in its sequence
    slot_mapping: Tensor  # (N,) cache slot each token's k/v is written to
    decode_rows: Tensor | None = None  # (B,) rows of the single-token (decode) queries
    decode_key_slots: Tensor | None = None  # (B, L) cache slots, padded
    decode_key_mask: Tensor | None = None  # (B, 1, 1, L) True where a key is real
    prefills: list[PrefillChunk] = field(default_factory=list)


def paged_attention(q: Tensor, k: Tensor, v: Tensor, layer: int, cache: PagedKVCache, meta: BatchMeta) -> Tensor:
    """q (N, H, D), k/v (N, KVH, D) for the step's tokens → attention output (N, H, D)."""
    kc, vc = cache.k[layer], cache.v[layer]
    kc.index_copy_(0, meta.slot_mapping, k.to(kc.dtype))
    vc.index_copy_(0, meta.slot_mapping, v.to(vc.dtype))
    gqa = q.shape[1] != k.shape[1]
    out = torch.empty_like(q)
    if meta.decode_rows is not None:
        qd = q[meta.decode_rows].unsqueeze(2)  # (B, H, 1, D)
        kd = kc[meta.decode_key_slots].transpose(1, 2).to(q.dtype)  # (B, KVH, L, D); fp16 pools read as fp32
        vd = vc[meta.decode_key_slots].transpose(1, 2).to(q.dtype)
        y = F.scaled_dot_product_attention(qd, kd, vd, attn_mask=meta.decode_key_mask, enable_gqa=gqa)
        out[meta.decode_rows] = y.squeeze(2)
    for p in meta.prefills:
        qp = q[p.start : p.start + p.length].transpose(0, 1).unsqueeze(0)  # (1, H, T, D)
        kp = kc[p.key_slots].transpose(0, 1).unsqueeze(0).to(q.dtype)  # (1, KVH, L, D)
        vp = vc[p.key_slots].transpose(0, 1).unsqueeze(0).to(q.dtype)
        ctx = p.key_slots.shape[0]
        if ctx == p.length:
            y = F.scaled_dot_product_attention(qp, kp, vp, is_causal=True, enable_gqa=gqa)
        else:  # a later chunk: query i (at position ctx - T + i) sees keys 0 .. ctx - T + i
            qpos = torch.arange(ctx - p.length, ctx, device=q.device)
            mask = torch.arange(ctx, device=q.device)[None, :] <= qpos[:, None]
            y = F.scaled_dot_product_attention(qp, kp, vp, attn_mask=mask, enable_gqa=gqa)
        out[p.start : p.start + p.length] = y[0].transpose(0, 1)
    return out
