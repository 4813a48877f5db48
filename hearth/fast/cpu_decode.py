"""A whole one-token decode step in one native call, for GGUF block (or F16) weights on the CPU.

The per-layer fast path (hearth/fast/modules.py with hearth's kernels) makes ~12 small calls per layer; for a 135M
model that is as much time in Python and in starting and stopping OpenMP thread teams as in the products. Here
every layer, the final norm and the output product run inside one parallel region of hearth's C++ kernels
(`DecodePlan.step` in hearth/kernels/gguf_cpu.cpp), as llama.cpp runs a token. The arithmetic is the per-layer
path's own (the same row functions and products), so the logits are bit-identical to it.

`CPUDecoder.build(model, ops)` packs the weights' addresses once (the loader calls it after `apply_fast_path` and
hands the decoder on as `LoadedModel.decoder`); `CPUDecoder.forward` runs one-token steps over a contiguous `KVCache`
here and everything else through the model's own forward (what hearth.engine.generate.Generator calls).
The serving engine's all-decode steps call `CPUDecoder.paged` (hearth/engine/runner.py): the same step over its
paged cache (`DecodePlan.step_paged`), each sequence at its own position, its K/V read and written through its
block table; per sequence bit-identical to the contiguous step on the same cache contents.
"""

from __future__ import annotations

import torch
from torch import Tensor

from hearth.model.llama import KVCache
from hearth.fast.quant import GGUFEmbedding, GGUFLinear

_CACHE_DTYPES = (torch.float32, torch.float16)  # KV caches the native step reads and writes


class CPUDecoder:
    """The packed weights of one fast-path Transformer, and RoPE tables by position."""

    def __init__(self, model, plan, embeds: bool):
        self._plan = plan
        self._embeds = embeds  # the plan reads the token embedding's blocks itself (token ids in, no Python op)
        self._norm = model.norm.weight  # to notice the weights being moved or converted after packing
        self._norm_ptr = model.norm.weight.data_ptr()
        self._cos = self._sin = torch.empty(0, model.config.head_dim)
        self.adapter = 0  # a LoRA adapter (add_lora's index) applied to every row of a contiguous step; 0: none

    @classmethod
    def build(cls, model, ops) -> CPUDecoder | None:
        """None unless every product of `model` (after hearth.fast.apply_fast_path) is a GGUF block weight that
        hearth's kernels read, and the rest is fp32 on the CPU."""
        if ops is None or not hasattr(torch.classes.hearth, "DecodePlan"):
            return None
        cfg = model.config
        norms = [model.norm] + [n for layer in model.layers for n in (layer.attention_norm, layer.ffn_norm)]
        if any(n.weight.dtype != torch.float32 or n.weight.device.type != "cpu" or n.eps != model.norm.eps
               for n in norms):
            return None
        tensors: list[Tensor] = []
        meta = [cfg.n_layers, cfg.dim, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim, cfg.hidden_dim]

        def add(lin) -> bool:
            if not isinstance(lin, GGUFLinear) or any(w.device.type != "cpu" for w in lin.qweights):
                return False
            tensors.extend(lin.qweights)
            meta.extend((lin.qtype, len(lin.qweights)))
            return True

        for layer in model.layers:
            att, ff = layer.attention, layer.feed_forward
            tensors.append(layer.attention_norm.weight.detach())
            if not (add(getattr(att, "wqkv", None)) and add(att.wo)):
                return None
            tensors.append(layer.ffn_norm.weight.detach())
            if not (add(getattr(ff, "w13", None)) and add(ff.w2)):
                return None
        tensors.append(model.norm.weight.detach())
        if not add(model.output):
            return None
        emb = model.tok_embeddings
        embeds = isinstance(emb, GGUFEmbedding) and emb.qweight.device.type == "cpu" and emb.dtype == torch.float32
        if embeds:
            tensors.append(emb.qweight)
        meta.extend((emb.qtype, 1) if embeds else (0, 0))
        plan = torch.classes.hearth.DecodePlan(tensors, meta, float(model.norm.eps))
        return cls(model, plan, embeds)

    def usable(self, tokens: Tensor, cache) -> bool:
        return (
            type(cache) is KVCache
            and tokens.device.type == "cpu"
            and cache.k.dtype in _CACHE_DTYPES
            and cache.k.device.type == "cpu"
            and cache.k.shape[1] == tokens.shape[0]
            and self._norm.data_ptr() == self._norm_ptr
            and self._norm.dtype == torch.float32
            and not (torch.is_grad_enabled() and self._norm.requires_grad)
        )

    def forward(self, model, tokens: Tensor, start: int, cache, last_only: bool = False) -> Tensor:
        """`model(tokens, start, cache, last_only)`, with one-token steps that fit the cache run here (bit-identical)."""
        if (tokens.shape[1] == 1 and isinstance(start, int) and self.usable(tokens, cache)
                and start < cache.max_seq_len):
            return self(model, tokens, start, cache)
        return model(tokens, start, cache, last_only=last_only)

    def _tables(self, model, pos: int) -> tuple[Tensor, Tensor]:
        """cos/sin tables (> pos rows, head_dim), row p bit-identical to Transformer.rope(p, 1): built by that same
        code, in chunks small enough that torch evaluates them on one thread with the same vector loop. They grow
        by doubling as positions are reached (a 128K-token context would need 128 MB of them at once)."""
        have = self._cos.shape[0]
        if pos >= have:
            d, n = self._cos.shape[1], max(pos + 1, 2 * have, 256)
            rows = max(1, 16384 // d)
            cs, ss = [self._cos], [self._sin]
            for s in range(have, n, rows):
                c, s_ = model.rope(s, min(rows, n - s), torch.device("cpu"))
                cs.append(c.reshape(-1, d))
                ss.append(s_.reshape(-1, d))
            self._cos, self._sin = torch.cat(cs).contiguous(), torch.cat(ss).contiguous()
        return self._cos, self._sin

    def __call__(self, model, tokens: Tensor, start: int, cache) -> Tensor:
        """Logits (B, 1, vocab) of tokens (B, 1) at position `start`; writes each layer's k and v into the cache."""
        cos, sin = self._tables(model, start)
        if self._embeds:
            x = tokens.reshape(-1).long()
        else:
            x = model.tok_embeddings(tokens).reshape(tokens.shape[0], -1).float()
        if self.adapter:
            return self._plan.step_lora(x, cache.k, cache.v, cos, sin, start, self.adapter).unsqueeze(1)
        return self._plan.step(x, cache.k, cache.v, cos, sin, start).unsqueeze(1)

    def usable_paged(self, cache) -> bool:
        """Whether the engine's paged cache (hearth/model/paged.py) can take whole-token steps here."""
        return (
            cache.k.dtype in _CACHE_DTYPES
            and cache.k.device.type == "cpu"
            and cache.k.is_contiguous()
            and cache.v.is_contiguous()
            and self._norm.data_ptr() == self._norm_ptr
            and self._norm.dtype == torch.float32
            and not (torch.is_grad_enabled() and self._norm.requires_grad)
        )

    def add_lora(self, updates: list[tuple[Tensor, Tensor] | None]) -> int:
        """Register one served LoRA adapter: per layer, for q|k|v, wo, gate|up and down, (A [k, in], B^T [k, out]) fp32
        (B scaled) or None. Returns the index `paged` takes for its sequences."""
        tensors, ks = [], []
        for pair in updates:
            ks.append(0 if pair is None else pair[0].shape[0])
            if pair is not None:
                tensors += [pair[0].float().contiguous(), pair[1].float().contiguous()]
        return self._plan.add_lora(tensors, ks)

    def paged(self, model, tokens: Tensor, positions: Tensor, cache, tables: Tensor, adapters: Tensor | None = None) -> Tensor:
        """Logits (B, vocab) of one token per sequence of the engine: tokens (B,) int64 at positions (B,) int64, block
        tables (B, W) int64 into the PagedKVCache `cache`; writes each layer's k and v into the sequences' slots.
        adapters (B,) int64: each sequence's served LoRA adapter (add_lora's index; 0 none)."""
        cos, sin = self._tables(model, int(positions.max()))
        if self._embeds:
            x = tokens.reshape(-1).long()
        else:
            x = model.tok_embeddings(tokens.reshape(-1, 1)).reshape(tokens.shape[0], -1).float()
        if adapters is not None:
            return self._plan.step_paged_lora(x, positions, cache.k, cache.v, tables, cache.block_size, cos, sin, adapters)
        return self._plan.step_paged(x, positions, cache.k, cache.v, tables, cache.block_size, cos, sin)
