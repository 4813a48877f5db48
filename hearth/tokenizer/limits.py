"""How long a text can be and still fit in n tokens: a bound checked before tokenizing a prompt in full.

Tokenizing a megabyte takes the better part of a second, so a prompt far too long for the context is refused from its
length alone. The bound is L, the longest vocabulary entry in characters: for the tokenizers below every token covers
at most L characters of the text, so a text longer than n x L characters needs more than n tokens, and refusing it
never refuses a prompt that fits. Why each token covers at most L characters:

- a byte-level BPE piece is one alphabet character per byte, and a character is at least one byte;
- a SentencePiece-style piece is the text itself with " " written "▁" (one for one); a byte-fallback piece "<0xE6>"
  is one byte; an added (special) token is its own text;
- normalizers that only add or replace one-for-one (Prepend, Replace by something no shorter, NFD/NFKD, Lowercase)
  make the text longer, never shorter; pre-tokenizers that only split lose no character.

A tokenizer outside these rules (one that drops characters: Strip, NFC composing "e" + U+0301 into "é", a
whitespace-removing pre-tokenizer, an unknown-word token, an added token that swallows spaces) gets no bound
(None), and its prompts are tokenized in full as before.
"""

from __future__ import annotations

import json
import weakref

from hearth.tokenizer.tokenizer import Tokenizer, byte_to_unicode

_NORMALIZERS_THAT_KEEP_EVERY_CHARACTER = {"Prepend", "NFD", "NFKD", "Lowercase", "ByteLevel"}
_SPLITTERS = {"ByteLevel", "Metaspace", "Split", "Digits", "Punctuation", "UnicodeScripts"}
_BYTE_LEVEL_ALPHABET = frozenset(byte_to_unicode().values())
_BYTE_FALLBACK = frozenset(f"<0x{b:02X}>" for b in range(256))

_cache: weakref.WeakKeyDictionary[Tokenizer, int | None] = weakref.WeakKeyDictionary()


def _normalizer_keeps_length(n: dict | None) -> bool:
    if n is None:
        return True
    kind = n.get("type")
    if kind == "Sequence":
        return all(_normalizer_keeps_length(x) for x in n.get("normalizers", []))
    if kind == "Replace":
        pattern = n.get("pattern", {}).get("String")  # a Regex pattern may match anything: no bound
        return bool(pattern) and len(n.get("content", "")) >= len(pattern)
    return kind in _NORMALIZERS_THAT_KEEP_EVERY_CHARACTER


def _splitter_keeps_everything(p: dict | None) -> bool:
    if p is None:
        return True
    kind = p.get("type")
    if kind == "Sequence":
        return all(_splitter_keeps_everything(x) for x in p.get("pretokenizers", []))
    return kind in _SPLITTERS and p.get("behavior") != "Removed"


def _byte_level(p: dict | None) -> bool:
    """Whether the text is cut into bytes before the model sees it (then every byte has its alphabet piece)."""
    if p is None:
        return False
    if p.get("type") == "Sequence":
        return any(_byte_level(x) for x in p.get("pretokenizers", []))
    return p.get("type") == "ByteLevel"


def chars_per_token(tokenizer: Tokenizer) -> int | None:
    """The most characters of text one token can stand for, or None when this tokenizer gives no such bound.
    Computed once per tokenizer (it reads the whole vocabulary)."""
    if tokenizer in _cache:
        return _cache[tokenizer]
    spec = json.loads(tokenizer.backend.to_str())
    model = spec.get("model") or {}
    vocab = model.get("vocab") or {}
    added = spec.get("added_tokens") or []
    every_character_has_a_token = (
        (model.get("byte_fallback") and _BYTE_FALLBACK <= vocab.keys())
        or (model.get("unk_token") is None and _byte_level(spec.get("pre_tokenizer"))
            and _BYTE_LEVEL_ALPHABET <= vocab.keys())
    )
    bound = None
    if (model.get("type") == "BPE" and every_character_has_a_token
            and _normalizer_keeps_length(spec.get("normalizer")) and _splitter_keeps_everything(spec.get("pre_tokenizer"))
            and not any(t.get("lstrip") or t.get("rstrip") for t in added)):
        bound = max([len(piece) for piece in vocab] + [len(t.get("content", "")) for t in added])
    _cache[tokenizer] = bound
    return bound


def surely_too_long(tokenizer: Tokenizer, text: str, max_tokens: int) -> bool:
    """True when `text` needs more than `max_tokens` tokens, decided without tokenizing it (False: maybe not)."""
    if len(text) <= max_tokens:  # the bound is at least 1, so it cannot refuse this text: skip reading the vocabulary
        return False
    bound = chars_per_token(tokenizer)
    return bound is not None and len(text) > max_tokens * bound
