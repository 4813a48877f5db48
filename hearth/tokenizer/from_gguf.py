"""Build a Hugging Face `tokenizers.Tokenizer` from the vocabulary stored in a GGUF file.

The `tokenizers` library does the encoding; this module only chooses the pieces so that the
result matches the model's original `tokenizer.json` (and llama.cpp's faithful reading of it):

* byte-level BPE ("gpt2"): the pre-tokenizer is named by `tokenizer.ggml.pre`. SmolLM2 ("smollm")
  splits every digit on its own *before* the byte-level regex; without that (as in transformers'
  GGUF loader) ids differ wherever a digit follows whitespace, e.g. "\\n\\n  0." or " ½".
* SentencePiece ("llama"): BPE over "▁"-joined pieces, merge priority from the piece scores,
  byte fallback for unknown characters, and a space prefixed to every text fragment (after each
  special token too, as llama.cpp does).
"""

from __future__ import annotations

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers

from hearth.errors import ModelFormatError
from hearth.weights.types import GGUFVocab

TOKEN_NORMAL, TOKEN_UNKNOWN, TOKEN_CONTROL, TOKEN_USER_DEFINED, TOKEN_UNUSED, TOKEN_BYTE = 1, 2, 3, 4, 5, 6

# Llama 3's split regex, as in its tokenizer.json and llama.cpp's LLAMA_VOCAB_PRE_TYPE_LLAMA3.
LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)


def _byte_level_pre(pre: str):
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    if pre in ("default", "gpt2", "gpt-2"):
        return byte_level, False
    if pre == "smollm":
        return pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level]), False
    if pre in ("llama-bpe", "llama3", "llama-v3"):
        split = pre_tokenizers.Split(Regex(LLAMA3_SPLIT), behavior="isolated", invert=False)
        return pre_tokenizers.Sequence([split, pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]), True
    raise ModelFormatError(
        f"GGUF pre-tokenizer {pre!r} is not supported (smollm, llama-bpe, default); use the model's HF directory instead"
    )


def _byte_level_bpe(v: GGUFVocab) -> Tokenizer:
    pre, ignore_merges = _byte_level_pre(v.pre)
    vocab = {tok: i for i, tok in enumerate(v.tokens)}
    merges = [tuple(m.split(" ", 1)) for m in v.merges]
    bad = next((i for i, m in enumerate(merges) if len(m) != 2), None)
    if bad is not None:
        raise ModelFormatError(f"GGUF merge {bad} ({v.merges[bad][:40]!r}) is not two tokens separated by a space; the file is corrupt")
    tk = Tokenizer(models.BPE(vocab=vocab, merges=merges, ignore_merges=ignore_merges))
    tk.pre_tokenizer = pre
    tk.decoder = decoders.ByteLevel()
    return tk


# Real SentencePiece pieces are a few characters (the longest, runs of spaces, ~32).
MAX_SPM_PIECE = 256


def _spm_merges(vocab: dict[str, int], scores: list[float]) -> list[tuple[str, str]]:
    """SentencePiece BPE merges: every split of a piece into two known pieces, ranked by the piece's score."""
    found = []
    for piece, idx in vocab.items():
        if len(piece) > MAX_SPM_PIECE:  # every split is tried: cost grows with the square of a piece's length
            raise ModelFormatError(f"GGUF SentencePiece piece {idx} is {len(piece)} characters long (limit {MAX_SPM_PIECE}); the file is corrupt")
        local = []
        for i in range(1, len(piece)):
            left, right = piece[:i], piece[i:]
            if left in vocab and right in vocab:
                local.append((vocab[left], vocab[right], left, right))
        local.sort()
        found.extend((scores[idx], left, right) for _, _, left, right in local)
    # stable sort keeps the (left id, right id) order among equal scores
    found.sort(key=lambda x: -x[0])
    return [(left, right) for _, left, right in found]


def _sentencepiece(v: GGUFVocab) -> Tokenizer:
    if len(v.scores) != len(v.tokens):
        raise ModelFormatError("GGUF SentencePiece vocabulary has no scores; re-convert the model")
    vocab = {tok: i for i, tok in enumerate(v.tokens)}
    unk = next((t for t, ty in zip(v.tokens, v.token_types) if ty == TOKEN_UNKNOWN), None)
    tk = Tokenizer(
        models.BPE(vocab=vocab, merges=_spm_merges(vocab, v.scores), unk_token=unk, fuse_unk=True, byte_fallback=True)
    )
    steps = [normalizers.Prepend("▁")] if v.add_space_prefix else []
    tk.normalizer = normalizers.Sequence(steps + [normalizers.Replace(" ", "▁")])
    strip = [decoders.Strip(" ", 1, 0)] if v.add_space_prefix else []
    tk.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()] + strip)
    return tk


def tokenizer_from_gguf(v: GGUFVocab) -> Tokenizer:
    if v.model == "gpt2":
        tk = _byte_level_bpe(v)
    elif v.model == "llama":
        tk = _sentencepiece(v)
    else:
        raise ModelFormatError(f"GGUF tokenizer model {v.model!r} is not supported (gpt2, llama)")
    added = []
    for tok, ty in zip(v.tokens, v.token_types):
        if ty in (TOKEN_CONTROL, TOKEN_UNKNOWN):  # llama.cpp and HF match "<unk>" in text as the unk id too
            added.append(AddedToken(tok, special=True, normalized=False))
        elif ty == TOKEN_USER_DEFINED:
            added.append(AddedToken(tok, special=False, normalized=False))
    tk.add_tokens(added)  # ids already exist in the vocabulary: this only makes them match as whole tokens
    for a in added:
        if a.special:
            tk.add_special_tokens([a])
    return tk
