"""A hearth Tokenizer's vocabulary as a GGUF file stores it (the reverse of from_gguf.py): byte-level BPE as
tokenizer.ggml.model "gpt2" with merges and llama.cpp's pre-tokenizer name, SentencePiece-style BPE (byte fallback)
as "llama" with scores. The GGUF writer (weights/gguf_writer.py) takes the result as plain data."""

from __future__ import annotations

import json
import re
from typing import Any

from hearth.errors import HearthError
from hearth.tokenizer.from_gguf import (LLAMA3_SPLIT, TOKEN_BYTE, TOKEN_CONTROL, TOKEN_NORMAL, TOKEN_UNKNOWN, TOKEN_UNUSED,
                                        TOKEN_USER_DEFINED)
from hearth.weights.gguf_writer import GGUFTokenizer
from hearth.weights.types import GGUFVocab


def _pre_tokenizer_name(pre: dict | None) -> str:
    """llama.cpp's name for a byte-level BPE pre-tokenizer (`tokenizer.ggml.pre`)."""
    if pre is None:
        raise HearthError("byte-level tokenizer without a pre-tokenizer cannot be written to GGUF; pass pre=...")
    steps = pre["pretokenizers"] if pre.get("type") == "Sequence" else [pre]
    kinds = [s.get("type") for s in steps]
    if kinds == ["ByteLevel"] and steps[0].get("use_regex", True) and not steps[0].get("add_prefix_space", False):
        return "gpt-2"
    if (
        kinds == ["Digits", "ByteLevel"]
        and steps[0].get("individual_digits")
        and steps[1].get("use_regex", True)
        and not steps[1].get("add_prefix_space", False)
    ):
        return "smollm"
    if kinds == ["Split", "ByteLevel"] and not steps[1].get("use_regex", True):
        pattern = steps[0].get("pattern", {})
        if pattern.get("Regex") == LLAMA3_SPLIT:
            return "llama-bpe"
    raise HearthError(
        f"byte-level pre-tokenizer {json.dumps(pre)[:120]} has no llama.cpp name hearth knows "
        "(gpt-2, smollm, llama-bpe); pass pre=... to write_gguf"
    )


def _spm_scores(vocab: dict[str, int], merges: list[tuple[str, str]]) -> dict[int, float]:
    """SentencePiece-style scores from BPE merge ranks: the earlier a piece is formed, the higher its score."""
    scores: dict[int, float] = {}
    for rank, (a, b) in enumerate(merges):
        idx = vocab.get(a + b)
        if idx is not None and idx not in scores:
            scores[idx] = -float(rank + 1)
    unmerged = -float(len(merges) + 1)
    for piece, idx in vocab.items():
        if idx not in scores:
            scores[idx] = 0.0 if len(piece) == 1 else unmerged
    return scores


def vocab_from_backend(backend: Any, n_vocab: int, pre: str | None) -> GGUFVocab:
    """GGUF vocabulary from a `tokenizers.Tokenizer` (byte-level BPE or SentencePiece-style BPE)."""
    tj = json.loads(backend.to_str())
    model = tj["model"]
    if model.get("type") != "BPE":
        raise HearthError(f"tokenizer model {model.get('type')!r} cannot be written to GGUF (BPE only)")
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ", 1)) for m in model.get("merges", [])]
    added = {t["id"]: t for t in tj.get("added_tokens", [])}
    reverse = {i: t for t, i in backend.get_vocab(with_added_tokens=True).items()}
    size = max(n_vocab, max(reverse) + 1 if reverse else 0)
    sentencepiece = bool(model.get("byte_fallback"))
    unk = model.get("unk_token")
    tokens, types = [], []
    for i in range(size):
        tok = reverse.get(i)
        if tok is None:
            tokens.append(f"[PAD{i}]")
            types.append(TOKEN_UNUSED)
            continue
        tokens.append(tok)
        if sentencepiece and tok == unk:
            types.append(TOKEN_UNKNOWN)
        elif sentencepiece and re.fullmatch(r"<0x[0-9A-Fa-f]{2}>", tok):
            types.append(TOKEN_BYTE)
        elif i in added:
            types.append(TOKEN_CONTROL if added[i].get("special") else TOKEN_USER_DEFINED)
        else:
            types.append(TOKEN_NORMAL)
    if not sentencepiece:
        return GGUFVocab(
            model="gpt2",
            pre=pre or _pre_tokenizer_name(tj.get("pre_tokenizer")),
            tokens=tokens,
            token_types=types,
            merges=[f"{a} {b}" for a, b in merges],
            scores=[],
        )
    scores = _spm_scores(model.get("vocab", {}), merges)
    normalizer = json.dumps(tj.get("normalizer")) + json.dumps(tj.get("pre_tokenizer"))
    add_space_prefix = '"Prepend"' in normalizer or ('"Metaspace"' in normalizer and '"never"' not in normalizer)
    return GGUFVocab(
        model="llama",
        pre=pre or "default",
        tokens=tokens,
        token_types=types,
        merges=[],
        scores=[scores.get(i, -1000.0) for i in range(size)],
        add_space_prefix=add_space_prefix,
    )


def gguf_tokenizer(tokenizer, n_vocab: int, pre: str | None = None) -> GGUFTokenizer:
    """A hearth Tokenizer's vocabulary (padded to `n_vocab` entries) and special ids, for write_gguf."""
    vocab = vocab_from_backend(tokenizer.backend, n_vocab, pre)
    unk = next((i for i, t in enumerate(vocab.token_types) if t == TOKEN_UNKNOWN), None)
    return GGUFTokenizer(vocab, tokenizer.bos_id, list(tokenizer.eos_ids), tokenizer.pad_id, unk,
                         tokenizer.add_bos, tokenizer.add_eos)
