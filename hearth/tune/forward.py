"""The training forward pass over hearth's Transformer, and the token losses built on it.

Inference's `Transformer.forward` knows one causal sequence per row. Training also needs packed rows
(several documents in one row, each attending only to itself, positions restarting at 0) and gradient
checkpointing per block, so this module runs the model's own sub-modules (norms, projections, MLP —
LoRA wrappers included) with its own attention mask. `test_tune_forward.py` checks that, on plain rows,
it gives exactly the logits of `Transformer.forward`.

Logits are computed only at the positions that have a target: for chat SFT that is a small fraction
of the tokens, and the (tokens × vocab) logits are the largest activation of a small model.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from hearth.model.llama import apply_rope

IGNORE = -100


def positions_from_docs(doc_ids: Tensor) -> Tensor:
    """doc_ids (B, T) with each document contiguous → position of every token within its document."""
    b, t = doc_ids.shape
    idx = torch.arange(t, device=doc_ids.device).expand(b, t)
    starts = torch.ones_like(doc_ids, dtype=torch.bool)
    starts[:, 1:] = doc_ids[:, 1:] != doc_ids[:, :-1]
    seg_start = torch.where(starts, idx, torch.zeros_like(idx)).cummax(dim=1).values
    return idx - seg_start


def _rope(model, positions: Tensor) -> tuple[Tensor, Tensor]:
    freqs = positions.float()[..., None] * model.inv_freq.to(positions.device)  # (B, T, D/2)
    emb = torch.cat((freqs, freqs), dim=-1)[:, None]  # (B, 1, T, D)
    return emb.cos(), emb.sin()


def _attention(attn, x: Tensor, cos: Tensor, sin: Tensor, mask: Tensor | None) -> Tensor:
    b, t, _ = x.shape
    q = attn.wq(x).view(b, t, attn.n_heads, attn.head_dim).transpose(1, 2)
    k = attn.wk(x).view(b, t, attn.n_kv_heads, attn.head_dim).transpose(1, 2)
    v = attn.wv(x).view(b, t, attn.n_kv_heads, attn.head_dim).transpose(1, 2)
    q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
    y = F.scaled_dot_product_attention(
        q, k, v, attn_mask=mask, is_causal=mask is None, enable_gqa=attn.n_heads != attn.n_kv_heads
    )
    return attn.wo(y.transpose(1, 2).reshape(b, t, attn.n_heads * attn.head_dim))


def _block(block, x: Tensor, cos: Tensor, sin: Tensor, mask: Tensor | None) -> Tensor:
    h = x + _attention(block.attention, block.attention_norm(x), cos, sin, mask)
    return h + block.feed_forward(block.ffn_norm(h))


def hidden_states(model, tokens: Tensor, doc_ids: Tensor | None = None, grad_checkpointing: bool = False) -> Tensor:
    """Final-norm hidden states (B, T, dim).

    doc_ids (B, T): packed rows; a token attends only to earlier tokens of its own document, and its
    RoPE position counts from the start of its document. None: plain causal rows from position 0
    (right padding is harmless: no real token attends to a later one).
    """
    b, t = tokens.shape
    if doc_ids is None:
        positions = torch.arange(t, device=tokens.device).expand(b, t)
        mask = None
    else:
        positions = positions_from_docs(doc_ids)
        causal = torch.ones(t, t, dtype=torch.bool, device=tokens.device).tril()
        mask = (doc_ids[:, :, None] == doc_ids[:, None, :]) & causal  # (B, T, T)
        mask = mask[:, None]
    cos, sin = _rope(model, positions)
    x = model.tok_embeddings(tokens)
    for layer in model.layers:
        if grad_checkpointing and torch.is_grad_enabled():
            # Keep only each block's input; recompute its inside during backward (dropout RNG is replayed).
            x = checkpoint(_block, layer, x, cos, sin, mask, use_reentrant=False)
        else:
            x = _block(layer, x, cos, sin, mask)
    return model.norm(x)


def logits(model, tokens: Tensor, doc_ids: Tensor | None = None) -> Tensor:
    """Full logits (B, T, vocab) fp32; for tests and distillation."""
    return model.output(hidden_states(model, tokens, doc_ids)).float()


def lm_loss_sum(model, tokens: Tensor, targets: Tensor, doc_ids: Tensor | None = None, grad_checkpointing: bool = False) -> tuple[Tensor, int]:
    """Summed cross-entropy over the positions whose target is not IGNORE, and how many there are."""
    h = hidden_states(model, tokens, doc_ids, grad_checkpointing)
    sel = targets != IGNORE
    n = int(sel.sum())
    if n == 0:
        return h.sum() * 0.0, 0
    out = model.output(h[sel]).float()
    return F.cross_entropy(out, targets[sel], reduction="sum"), n


def sequence_logprobs(model, tokens: Tensor, targets: Tensor, grad_checkpointing: bool = False) -> Tensor:
    """Sum of log p(target) over each row's non-IGNORE positions → (B,) fp32 (DPO's policy/reference scores)."""
    h = hidden_states(model, tokens, None, grad_checkpointing)
    sel = targets != IGNORE
    lp = torch.log_softmax(model.output(h[sel]).float(), dim=-1)
    picked = lp.gather(1, targets[sel][:, None])[:, 0]
    rows = torch.arange(tokens.shape[0], device=tokens.device)[:, None].expand_as(targets)[sel]
    return torch.zeros(tokens.shape[0], device=tokens.device, dtype=picked.dtype).index_add(0, rows, picked)
