"""LoRA on the top blocks only, trained over cached states of the frozen blocks below them, with shared prefixes
computed once.

When an adapter sits on blocks [first, n) alone, everything below `first` is a fixed function of the tokens: its
output for each training example is computed once, before training (`cache_states`, no gradient), and every step
then runs only the top blocks, the final norm and the head at the target positions (`TopSFT`).

Classifier data repeats itself: every guard example starts with the same ~200 tokens of instructions and
categories. Examples are grouped by their opening tokens and each group's longest common prefix is run once:
through the frozen blocks once for the whole cache, and through the trained blocks once per micro-batch (with
gradient), its keys and values then serving every row of the group. Each row computes only its own suffix. This is
exact, not an approximation: causal attention makes a prefix's states independent of what follows it, so the loss
and gradients are those of the whole model with that adapter on the whole sequences (tests/test_tune_top_layers.py
checks both against hearth.tune.forward). On smollm2 (30 blocks, the top 6 trained) a guard step costs about a
fifth of a full LoRA step and a third of that again for the shared prefix.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from hearth.model.llama import apply_rope
from hearth.tune.data import IGNORE, Example
from hearth.tune.forward import _rope

MIN_SHARED = 64  # examples sharing at least this many opening tokens share one prefix


@dataclass(eq=False)
class Prefix:
    """A run of tokens that opens every example of a group, with the input of block `first` at each position."""

    ids: list[int]
    states: Tensor  # (len(ids), dim)


@dataclass(eq=False)
class CachedExample:
    """An SFT example: its group's prefix, then its own input positions (ids[len(prefix):-1]) with their states."""

    ids: list[int]
    mask: list[bool]
    prefix: Prefix
    states: Tensor  # (len(ids) - 1 - len(prefix.ids), dim)
    line: int = 0

    @property
    def n_targets(self) -> int:
        return sum(self.mask[1:])


def _attend(attn, x: Tensor, cos: Tensor, sin: Tensor, past: tuple[Tensor, Tensor] | None):
    """Causal self-attention of x (B, T, dim) after `past` keys/values (1, kv heads, P, head dim) shared by every
    row; returns the output and x's own keys/values."""
    b, t, _ = x.shape
    q = attn.wq(x).view(b, t, attn.n_heads, attn.head_dim).transpose(1, 2)
    k = attn.wk(x).view(b, t, attn.n_kv_heads, attn.head_dim).transpose(1, 2)
    v = attn.wv(x).view(b, t, attn.n_kv_heads, attn.head_dim).transpose(1, 2)
    q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
    gqa = attn.n_heads != attn.n_kv_heads
    if past is None:
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=gqa)
    else:
        pk, pv = past
        p = pk.shape[2]
        keys = torch.cat([pk.expand(b, -1, -1, -1), k], 2)
        values = torch.cat([pv.expand(b, -1, -1, -1), v], 2)
        mask = torch.ones(t, p + t, dtype=torch.bool, device=x.device).tril(diagonal=p)
        y = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask, enable_gqa=gqa)
    return attn.wo(y.transpose(1, 2).reshape(b, t, attn.n_heads * attn.head_dim)), (k, v)


def _run(model, blocks, x: Tensor, start: int, pasts: list | None) -> tuple[Tensor, list]:
    """x through `blocks` at positions start.., each block attending after its entry of `pasts`; returns the output
    and every block's keys/values of x."""
    t = x.shape[1]
    cos, sin = _rope(model, torch.arange(start, start + t, device=x.device)[None])
    kvs = []
    for i, block in enumerate(blocks):
        a, kv = _attend(block.attention, block.attention_norm(x), cos, sin, None if pasts is None else pasts[i])
        h = x + a
        x = h + block.feed_forward(block.ffn_norm(h))
        kvs.append(kv)
    return x, kvs


def _lcp(a: list[int], b: list[int]) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def _prefix_groups(examples: list[Example]) -> list[tuple[int, list[int]]]:
    """[(length of the group's common prefix, example indices)]: examples sorted by their tokens, a new group where
    neighbours share fewer than MIN_SHARED tokens. A prefix stops before the first learned position and leaves each
    example at least one input token of its own."""
    order = sorted(range(len(examples)), key=lambda i: examples[i].ids)
    groups: list[list[int]] = []
    for i in order:
        if groups and _lcp(examples[groups[-1][-1]].ids, examples[i].ids) >= MIN_SHARED:
            groups[-1].append(i)
        else:
            groups.append([i])
    out = []
    for idx in groups:
        p = min(len(examples[i].ids) - 2 for i in idx)
        for i in idx:
            mask = examples[i].mask
            if True in mask:
                p = min(p, mask.index(True) - 1)
            p = min(p, _lcp(examples[idx[0]].ids, examples[i].ids))
        out.append((max(p, 0), idx))
    return out


@torch.no_grad()
def cache_states(model, examples: list[Example], first: int, batch_tokens: int = 4096,
                 dtype: torch.dtype = torch.bfloat16, on_done: Callable[[int], None] | None = None) -> list[CachedExample]:
    """Run the blocks below `first` once over every example: each group's prefix once, then the examples' suffixes
    in right-padded batches of similar length (padding sits after a row's tokens: no real token sees it)."""
    device = next(model.parameters()).device
    out: list[CachedExample | None] = [None] * len(examples)
    for p, idx in _prefix_groups(examples):
        ids = examples[idx[0]].ids[:p]
        pasts = None
        if p:
            x = model.tok_embeddings(torch.tensor([ids], device=device))
            h, pasts = _run(model, model.layers[:first], x, 0, None)
            prefix = Prefix(ids, h[0].to(dtype).clone())
        else:
            prefix = Prefix([], torch.zeros(0, model.config.dim, dtype=dtype))
        order = sorted(idx, key=lambda i: len(examples[i].ids))
        i = 0
        while i < len(order):
            j = i + 1
            while j < len(order) and (j - i + 1) * (len(examples[order[j]].ids) - 1 - p) <= batch_tokens:
                j += 1
            group = order[i:j]
            width = len(examples[group[-1]].ids) - 1 - p
            tokens = torch.zeros(len(group), width, dtype=torch.long)
            for r, k in enumerate(group):
                own = examples[k].ids[p:-1]
                tokens[r, : len(own)] = torch.tensor(own)
            x, _ = _run(model, model.layers[:first], model.tok_embeddings(tokens.to(device)), p, pasts)
            for r, k in enumerate(group):
                ex = examples[k]
                out[k] = CachedExample(ex.ids, ex.mask, prefix, x[r, : len(ex.ids) - 1 - p].to(dtype).clone(), ex.line)
            if on_done:
                on_done(len(group))
            i = j
    return out  # type: ignore[return-value]


def top_loss_sum(model, first: int, items: list[CachedExample]) -> tuple[Tensor, int]:
    """Summed cross-entropy at the target positions, running blocks [first, n) over the cached states: each prefix
    in the batch once, then the rows' suffixes after it."""
    device = next(model.parameters()).device
    dt = model.norm.weight.dtype
    total, count = None, 0
    by_prefix: dict[int, list[CachedExample]] = {}
    for ex in items:
        by_prefix.setdefault(id(ex.prefix), []).append(ex)
    for rows in by_prefix.values():
        prefix = rows[0].prefix
        p = len(prefix.ids)
        pasts = None
        if p:
            _, pasts = _run(model, model.layers[first:], prefix.states[None].to(device, dt), 0, None)
        width = max(len(ex.ids) - 1 - p for ex in rows)
        x = torch.zeros(len(rows), width, prefix.states.shape[-1] if p else rows[0].states.shape[-1], device=device, dtype=dt)
        targets = torch.full((len(rows), width), IGNORE, dtype=torch.long)
        for r, ex in enumerate(rows):
            n = len(ex.ids) - 1 - p
            x[r, :n] = ex.states.to(device, dt)
            targets[r, :n] = torch.tensor([t if m else IGNORE for t, m in zip(ex.ids[p + 1:], ex.mask[p + 1:])])
        h, _ = _run(model, model.layers[first:], x, p, pasts)
        h = model.norm(h)
        sel = targets.to(device) != IGNORE
        n = int(sel.sum())
        if n:
            loss = F.cross_entropy(model.output(h[sel]).float(), targets.to(device)[sel], reduction="sum")
            total = loss if total is None else total + loss
            count += n
    if total is None:
        total = sum(p.sum() for p in model.parameters() if p.requires_grad) * 0.0
    return total, count


class TopSFT:
    """hearth.tune.train's objective for CachedExamples (one example per row; no packing)."""

    def __init__(self, first: int, pad_id: int = 0):
        self.first, self.pad_id = first, pad_id

    def count(self, rows) -> int:
        return sum(ex.n_targets for row in rows for ex in row)

    def loss(self, model, rows, grad_checkpointing: bool = False) -> tuple[Tensor, int]:
        items = [ex for row in rows for ex in row]
        loss, _ = top_loss_sum(model, self.first, items)
        return loss, sum(len(ex.ids) - 1 for ex in items)

    @torch.no_grad()
    def eval_loss(self, model, items, batch_size: int) -> float:
        total, n = 0.0, 0
        for i in range(0, len(items), batch_size):
            loss, k = top_loss_sum(model, self.first, items[i: i + batch_size])
            total, n = total + float(loss), n + k
        return total / max(n, 1)
