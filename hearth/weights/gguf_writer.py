"""Write a Llama model as a GGUF file, the way llama.cpp's `convert_hf_to_gguf.py` does.

Conventions followed (architecture "llama"):

* metadata: `llama.*` shape keys, `llama.rope.*`, `general.file_type`, `general.quantization_version`;
  `llama.attention.key_length`/`value_length` only when head_dim != dim / n_heads.
* llama3 rope scaling is not a metadata key: it is baked into a `rope_freqs.weight` F32 tensor of
  per-frequency divisors; linear scaling is `llama.rope.scaling.type`/`.factor`.
* q/k weights are permuted from Hugging Face's rotate-half layout back into the interleaved one
  (the inverse of `gguf_reader.unpermute_rope`).
* 1-D tensors (norms, rope_freqs) are always F32; every 2-D weight, the token embedding included,
  is stored in the requested type. A tied output matrix is not written.
* tokenizer: `gpt2` (byte-level BPE: tokens, token types, merges, pre-tokenizer name) or `llama`
  (SentencePiece-style BPE with byte fallback: tokens, scores, token types).
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hearth.config import ModelConfig
from hearth.errors import HearthError
from hearth.weights.names import GGUF_NAMES
from hearth.weights.types import GGUFVocab, TokenizerData

QTYPES = ("F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1")

# token types, as llama.cpp numbers them
TOKEN_NORMAL, TOKEN_UNKNOWN, TOKEN_CONTROL, TOKEN_USER_DEFINED, TOKEN_UNUSED, TOKEN_BYTE = 1, 2, 3, 4, 5, 6

_HEARTH_TO_GGUF = [
    (re.compile(re.escape(dst).replace(r"\{i\}", r"(?P<i>\d+)") + "$"), src) for src, dst in GGUF_NAMES
]


def hearth_to_gguf(name: str) -> str:
    for pat, src in _HEARTH_TO_GGUF:
        m = pat.match(name)
        if m:
            return src.replace("{i}", m.group("i")) if "i" in pat.groupindex else src
    raise HearthError(f"tensor {name!r} has no GGUF name; only plain Llama weights can be written")


def permute_rope(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Hugging Face rotate-half q/k rows → GGUF's interleaved rows (llama.cpp convert's `permute`)."""
    rows = w.shape[0]
    return w.reshape(n_heads, 2, rows // n_heads // 2, *w.shape[1:]).transpose(1, 2).reshape(w.shape)


def llama3_rope_factors(cfg: ModelConfig) -> list[float]:
    """Per-frequency divisors for llama3 rope scaling, computed exactly as convert_hf_to_gguf does."""
    s = cfg.rope_scaling
    assert s is not None and s.kind == "llama3"
    dim = cfg.head_dim
    freqs = 1.0 / (cfg.rope_theta ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim))
    low_wavelen = s.original_max_position_embeddings / s.low_freq_factor
    high_wavelen = s.original_max_position_embeddings / s.high_freq_factor
    out = []
    for freq in freqs.tolist():
        wavelen = 2 * math.pi / freq
        if wavelen < high_wavelen:
            out.append(1.0)
        elif wavelen > low_wavelen:
            out.append(float(s.factor))
        else:
            smooth = (s.original_max_position_embeddings / wavelen - s.low_freq_factor) / (
                s.high_freq_factor - s.low_freq_factor
            )
            out.append(1.0 / ((1 - smooth) / s.factor + smooth))
    return out


def expected_tensors(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    """hearth state-dict names and shapes for `cfg` (no output.weight when tied)."""
    q, kv = cfg.n_heads * cfg.head_dim, cfg.n_kv_heads * cfg.head_dim
    out: dict[str, tuple[int, ...]] = {"tok_embeddings.weight": (cfg.vocab_size, cfg.dim), "norm.weight": (cfg.dim,)}
    if not cfg.tie_embeddings:
        out["output.weight"] = (cfg.vocab_size, cfg.dim)
    for i in range(cfg.n_layers):
        p = f"layers.{i}."
        out[p + "attention_norm.weight"] = (cfg.dim,)
        out[p + "attention.wq.weight"] = (q, cfg.dim)
        out[p + "attention.wk.weight"] = (kv, cfg.dim)
        out[p + "attention.wv.weight"] = (kv, cfg.dim)
        out[p + "attention.wo.weight"] = (cfg.dim, q)
        out[p + "ffn_norm.weight"] = (cfg.dim,)
        out[p + "feed_forward.w1.weight"] = (cfg.hidden_dim, cfg.dim)
        out[p + "feed_forward.w2.weight"] = (cfg.dim, cfg.hidden_dim)
        out[p + "feed_forward.w3.weight"] = (cfg.hidden_dim, cfg.dim)
    return out


def _check_state_dict(cfg: ModelConfig, state_dict: dict[str, torch.Tensor]) -> None:
    want = expected_tensors(cfg)
    extra = set(state_dict) - set(want) - ({"output.weight"} if cfg.tie_embeddings else set())
    if extra:
        raise HearthError(f"cannot write tensor {sorted(extra)[0]!r}: not part of a Llama model ({len(extra)} unknown)")
    missing = set(want) - set(state_dict)
    if missing:
        raise HearthError(f"cannot write the model: tensor {sorted(missing)[0]} is missing ({len(missing)} in all)")
    for name, shape in want.items():
        if tuple(state_dict[name].shape) != shape:
            raise HearthError(f"tensor {name} has shape {tuple(state_dict[name].shape)}, the config says {shape}")


# ---------------------------------------------------------------------------------------------- tokenizer


@dataclasses.dataclass
class GGUFTokenizer:
    """A vocabulary as the writer stores it: the tokens and the special ids and flags (tokenizer.ggml.*). Built from a
    hearth Tokenizer by hearth/tokenizer/to_gguf.py (`Tokenizer.to_gguf`)."""

    vocab: GGUFVocab
    bos: int | None
    eos: list[int]
    pad: int | None
    unk: int | None
    add_bos: bool | None
    add_eos: bool


def _tokenizer_fields(tokenizer: Any, n_vocab: int, pre: str | None) -> GGUFTokenizer:
    """The vocabulary to write, from a TokenizerData that carries a GGUF vocabulary (padded to `n_vocab`), a
    GGUFTokenizer, or anything with `to_gguf(n_vocab, pre)`: a hearth Tokenizer."""
    if isinstance(tokenizer, GGUFTokenizer):
        return tokenizer if pre is None else dataclasses.replace(tokenizer, vocab=dataclasses.replace(tokenizer.vocab, pre=pre))
    if isinstance(tokenizer, TokenizerData) and tokenizer.gguf is not None:
        data = tokenizer
        vocab = data.gguf if pre is None else dataclasses.replace(data.gguf, pre=pre)
        if len(vocab.tokens) < n_vocab:
            pad = n_vocab - len(vocab.tokens)
            vocab = GGUFVocab(
                vocab.model, vocab.pre,
                vocab.tokens + [f"[PAD{i}]" for i in range(len(vocab.tokens), n_vocab)],
                vocab.token_types + [TOKEN_UNUSED] * pad, vocab.merges,
                vocab.scores + [-1000.0] * pad if vocab.scores else [], vocab.add_space_prefix,
            )
        unk = next((i for i, t in enumerate(vocab.token_types) if t == TOKEN_UNKNOWN), None)
        return GGUFTokenizer(vocab, data.bos_id, list(data.eos_ids), data.pad_id, unk, data.add_bos, data.add_eos)
    if isinstance(tokenizer, TokenizerData):
        raise HearthError("a tokenizer.json vocabulary is written from a hearth Tokenizer: pass Tokenizer.from_data(data)")
    if not hasattr(tokenizer, "to_gguf"):
        raise HearthError(f"cannot write a tokenizer of type {type(tokenizer).__name__}; pass a hearth Tokenizer")
    return tokenizer.to_gguf(n_vocab, pre)


def _add_tokenizer(w: Any, tok: GGUFTokenizer) -> None:
    vocab = tok.vocab
    w.add_tokenizer_model(vocab.model)
    w.add_tokenizer_pre(vocab.pre)
    w.add_token_list(vocab.tokens)
    w.add_token_types(vocab.token_types)
    if vocab.model == "llama":
        w.add_token_scores(vocab.scores)
        w.add_add_space_prefix(vocab.add_space_prefix)
    if vocab.merges:
        w.add_token_merges(vocab.merges)
    if tok.bos is not None:
        w.add_bos_token_id(int(tok.bos))
    eos = [int(e) for e in tok.eos]
    if eos:
        w.add_eos_token_id(eos[0])
        # Control tokens such as <|eot_id|> or <|im_end|> are end-of-generation for llama.cpp (and hearth's
        # reader) already; any other extra stop token is kept as the end-of-turn token.
        from hearth.weights.gguf_reader import EOG_TEXTS

        others = [
            e for e in eos[1:]
            if e != eos[0] and 0 <= e < len(vocab.tokens) and not (vocab.token_types[e] == TOKEN_CONTROL and vocab.tokens[e] in EOG_TEXTS)
        ]
        if others:
            w.add_eot_token_id(others[0])
    if tok.unk is not None:
        w.add_unk_token_id(int(tok.unk))
    if tok.pad is not None:
        w.add_pad_token_id(int(tok.pad))
    if tok.add_bos is not None:
        w.add_add_bos_token(bool(tok.add_bos))
    w.add_add_eos_token(bool(tok.add_eos))


# ---------------------------------------------------------------------------------------------- writer


def write_gguf(
    path: str | Path,
    config: ModelConfig,
    state_dict: dict[str, torch.Tensor],
    tokenizer: Any = None,
    chat_template: str | None = None,
    qtype: str = "F32",
    metadata: dict[str, Any] | None = None,
    *,
    pre: str | None = None,
    on_tensor: Callable[[str], None] | None = None,
    tensor_qtypes: dict[str, str] | None = None,
) -> Path:
    """Write `state_dict` (hearth names, rotate-half q/k) as a llama.cpp-compatible GGUF file.

    `tokenizer`: a hearth `Tokenizer` (its `to_gguf`), a `GGUFTokenizer`, or a `TokenizerData` read from a GGUF file
    (None: no vocabulary, llama.cpp cannot then tokenize). `qtype`: storage of the 2-D weights, one of QTYPES. `metadata`: extra keys
    (str, bool, int, float or lists of them). `pre`: override the pre-tokenizer name. `on_tensor`:
    called with each tensor's hearth name once it is converted (for a progress bar). `tensor_qtypes`: per-tensor
    exceptions to `qtype` (hearth name → type), e.g. a 4-bit model keeping its embedding at Q8_0 as llama.cpp does.
    """
    import gguf
    from gguf import quants

    qtype = qtype.upper()
    if qtype not in QTYPES:
        raise HearthError(f"cannot write GGUF type {qtype!r}; choose one of {', '.join(QTYPES)}")
    ggml_type = gguf.GGMLQuantizationType[qtype]
    file_type = {
        "F32": gguf.LlamaFileType.ALL_F32, "F16": gguf.LlamaFileType.MOSTLY_F16,
        "BF16": gguf.LlamaFileType.MOSTLY_BF16, "Q8_0": gguf.LlamaFileType.MOSTLY_Q8_0,
        "Q4_0": gguf.LlamaFileType.MOSTLY_Q4_0, "Q4_1": gguf.LlamaFileType.MOSTLY_Q4_1,
        "Q5_0": gguf.LlamaFileType.MOSTLY_Q5_0, "Q5_1": gguf.LlamaFileType.MOSTLY_Q5_1,
    }[qtype]
    cfg = config
    _check_state_dict(cfg, state_dict)
    block = gguf.GGML_QUANT_SIZES[ggml_type][0]

    # Convert every tensor before opening the file, so a bad shape leaves nothing half-written.
    arrays: list[tuple[str, np.ndarray, Any]] = []
    names = list(expected_tensors(cfg))
    for name in names:
        t = state_dict[name].detach().to("cpu", torch.float32)
        if name.endswith("attention.wq.weight"):
            t = permute_rope(t, cfg.n_heads)
        elif name.endswith("attention.wk.weight"):
            t = permute_rope(t, cfg.n_kv_heads)
        arr = np.ascontiguousarray(t.numpy())
        gname = hearth_to_gguf(name)
        own = (tensor_qtypes or {}).get(name, qtype).upper()
        if own not in QTYPES:
            raise HearthError(f"cannot write GGUF type {own!r} for {name}; choose one of {', '.join(QTYPES)}")
        ggml_type = gguf.GGMLQuantizationType[own]
        block = gguf.GGML_QUANT_SIZES[ggml_type][0]
        if arr.ndim == 1 or ggml_type == gguf.GGMLQuantizationType.F32:
            arrays.append((gname, arr, None))
        elif arr.shape[-1] % block:
            raise HearthError(
                f"cannot store {name} as {own}: its rows of {arr.shape[-1]} are not a multiple of the "
                f"block size {block}; use F16 or F32"
            )
        elif ggml_type == gguf.GGMLQuantizationType.F16:
            arrays.append((gname, arr.astype(np.float16), None))
        else:
            arrays.append((gname, quants.quantize(arr, ggml_type), ggml_type))
        if on_tensor is not None:
            on_tensor(name)
    if cfg.rope_freq_factors is not None:
        factors: list[float] | None = list(cfg.rope_freq_factors)
    elif cfg.rope_scaling is not None and cfg.rope_scaling.kind == "llama3":
        factors = llama3_rope_factors(cfg)
    else:
        factors = None
    if factors is not None:
        if len(factors) != cfg.head_dim // 2:
            raise HearthError(f"rope frequency factors: {len(factors)} given, head_dim {cfg.head_dim} needs {cfg.head_dim // 2}")
        arrays.insert(0, ("rope_freqs.weight", np.asarray(factors, dtype=np.float32), None))

    tok = None
    if tokenizer is not None:
        tok = _tokenizer_fields(tokenizer, cfg.vocab_size, pre)
        if len(tok.vocab.tokens) != cfg.vocab_size:
            raise HearthError(
                f"the tokenizer has {len(tok.vocab.tokens)} tokens but the model's embedding has {cfg.vocab_size} rows; "
                "llama.cpp needs them equal"
            )

    path = Path(path)
    w = gguf.GGUFWriter(path, "llama")
    w.add_type(gguf.GGUFType.MODEL)
    w.add_name(str((metadata or {}).get("general.name", cfg.name)))
    w.add_vocab_size(cfg.vocab_size)
    w.add_context_length(cfg.max_seq_len)
    w.add_embedding_length(cfg.dim)
    w.add_block_count(cfg.n_layers)
    w.add_feed_forward_length(cfg.hidden_dim)
    w.add_head_count(cfg.n_heads)
    w.add_head_count_kv(cfg.n_kv_heads)
    w.add_layer_norm_rms_eps(cfg.norm_eps)
    w.add_rope_freq_base(cfg.rope_theta)
    w.add_rope_dimension_count(cfg.head_dim)
    if cfg.head_dim * cfg.n_heads != cfg.dim:
        w.add_key_length(cfg.head_dim)
        w.add_value_length(cfg.head_dim)
    if cfg.rope_scaling is not None and cfg.rope_scaling.kind == "linear":
        w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        w.add_rope_scaling_factor(cfg.rope_scaling.factor)
    elif cfg.rope_scaling is not None and cfg.rope_scaling.kind != "llama3":
        raise HearthError(f"rope scaling {cfg.rope_scaling.kind!r} cannot be written to GGUF (llama3, linear)")
    w.add_file_type(int(file_type))
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)
    if tok is not None:
        _add_tokenizer(w, tok)
    if chat_template is not None:
        w.add_chat_template(chat_template)
    for key, val in (metadata or {}).items():
        if key == "general.name":
            continue
        if isinstance(val, list):
            w.add_array(key, val)
        elif isinstance(val, bool):
            w.add_bool(key, val)
        elif isinstance(val, int):
            w.add_uint32(key, val) if 0 <= val < 2**32 else w.add_int64(key, val)
        elif isinstance(val, float):
            w.add_float32(key, val)
        elif isinstance(val, str):
            w.add_string(key, val)
        else:
            raise HearthError(f"metadata {key!r}: cannot store a {type(val).__name__} in GGUF")

    for gname, arr, raw in arrays:
        w.add_tensor(gname, arr, raw_dtype=raw)
    try:
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
    finally:
        w.close()
    return path
