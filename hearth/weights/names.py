"""Tensor-name maps from each source format to hearth's state-dict names, in one table."""

from __future__ import annotations

import re

from hearth.errors import ModelFormatError

# (pattern in the source, hearth name); {i} is the layer index.
GGUF_NAMES: list[tuple[str, str]] = [
    ("token_embd.weight", "tok_embeddings.weight"),
    ("output_norm.weight", "norm.weight"),
    ("output.weight", "output.weight"),
    ("blk.{i}.attn_norm.weight", "layers.{i}.attention_norm.weight"),
    ("blk.{i}.attn_q.weight", "layers.{i}.attention.wq.weight"),
    ("blk.{i}.attn_k.weight", "layers.{i}.attention.wk.weight"),
    ("blk.{i}.attn_v.weight", "layers.{i}.attention.wv.weight"),
    ("blk.{i}.attn_output.weight", "layers.{i}.attention.wo.weight"),
    ("blk.{i}.ffn_norm.weight", "layers.{i}.ffn_norm.weight"),
    ("blk.{i}.ffn_gate.weight", "layers.{i}.feed_forward.w1.weight"),
    ("blk.{i}.ffn_down.weight", "layers.{i}.feed_forward.w2.weight"),
    ("blk.{i}.ffn_up.weight", "layers.{i}.feed_forward.w3.weight"),
]

HF_NAMES: list[tuple[str, str]] = [
    ("model.embed_tokens.weight", "tok_embeddings.weight"),
    ("model.norm.weight", "norm.weight"),
    ("lm_head.weight", "output.weight"),
    ("model.layers.{i}.input_layernorm.weight", "layers.{i}.attention_norm.weight"),
    ("model.layers.{i}.self_attn.q_proj.weight", "layers.{i}.attention.wq.weight"),
    ("model.layers.{i}.self_attn.k_proj.weight", "layers.{i}.attention.wk.weight"),
    ("model.layers.{i}.self_attn.v_proj.weight", "layers.{i}.attention.wv.weight"),
    ("model.layers.{i}.self_attn.o_proj.weight", "layers.{i}.attention.wo.weight"),
    ("model.layers.{i}.post_attention_layernorm.weight", "layers.{i}.ffn_norm.weight"),
    ("model.layers.{i}.mlp.gate_proj.weight", "layers.{i}.feed_forward.w1.weight"),
    ("model.layers.{i}.mlp.down_proj.weight", "layers.{i}.feed_forward.w2.weight"),
    ("model.layers.{i}.mlp.up_proj.weight", "layers.{i}.feed_forward.w3.weight"),
]

# Tensors a reader may meet and deliberately not load.
HF_IGNORED = re.compile(r".*rotary_emb\.inv_freq$")


def _compile(table: list[tuple[str, str]]) -> list[tuple[re.Pattern[str], str]]:
    out = []
    for src, dst in table:
        pat = re.escape(src).replace(r"\{i\}", r"(?P<i>\d+)")
        out.append((re.compile(pat + "$"), dst))
    return out


_GGUF = _compile(GGUF_NAMES)
_HF = _compile(HF_NAMES)


def _map(name: str, table: list[tuple[re.Pattern[str], str]]) -> str | None:
    for pat, dst in table:
        m = pat.match(name)
        if m:
            return dst.replace("{i}", m.group("i")) if "i" in pat.groupindex else dst
    return None


def gguf_to_hearth(name: str) -> str | None:
    return _map(name, _GGUF)


def hf_to_hearth(name: str) -> str | None:
    return _map(name, _HF)


def hearth_to_hf(name: str) -> str:
    for src, dst in HF_NAMES:
        pat = re.escape(dst).replace(r"\{i\}", r"(?P<i>\d+)")
        m = re.match(pat + "$", name)
        if m:
            return src.replace("{i}", m.group("i")) if "{i}" in src else src
    raise KeyError(name)


def expected_names(n_layers: int, tied_embeddings: bool) -> set[str]:
    """Every hearth tensor name a Llama model of `n_layers` needs (output.weight only when not tied)."""
    from hearth.weights.limits import MAX_LAYERS

    if not 0 <= n_layers <= MAX_LAYERS:  # the readers refuse such counts; never build a billion names regardless
        raise ModelFormatError(f"{n_layers} layers is implausible (limit {MAX_LAYERS}); the model file is corrupt")
    names = set()
    for _, hearth in GGUF_NAMES:
        if "{i}" in hearth:
            names.update(hearth.format(i=i) for i in range(n_layers))
        elif not (tied_embeddings and hearth == "output.weight"):
            names.add(hearth)
    return names
