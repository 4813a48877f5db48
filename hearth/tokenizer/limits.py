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

A byte-level vocabulary may lack pieces for a few bytes (SmolLM2's has none for six control characters): those
characters become no token, so they are not counted. A tokenizer outside these rules (one that drops other
characters: Strip, NFC composing "e" + U+0301 into "é", a whitespace-removing pre-tokenizer, an unknown-word token, an
added token that swallows spaces) gets no bound (None), and its prompts are tokenized in full as before.
"""

from __future__ import annotations

import json
import weakref
from dataclasses import dataclass

from hearth.tokenizer.tokenizer import Tokenizer, byte_to_unicode

_NORMALIZERS_THAT_KEEP_EVERY_CHARACTER = {"Prepend", "NFD", "NFKD", "Lowercase", "ByteLevel"}
_SPLITTERS = {"ByteLevel", "Metaspace", "Split", "Digits", "Punctuation", "UnicodeScripts"}
_BYTE_LEVEL_ALPHABET = frozenset(byte_to_unicode().values())
_BYTE_FALLBACK = frozenset(f"<0x{b:02X}>" for b in range(256))

_cache: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # Tokenizer -> _Bound | None


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


def _component(obj) -> dict | None:
    return None if obj is None else json.loads(obj.__getstate__())


def _byte_level(p: dict | None) -> bool:
    """Whether the text is cut into bytes before the model sees it (then a byte without a piece is dropped)."""
    if p is None:
        return False
    if p.get("type") == "Sequence":
        return any(_byte_level(x) for x in p.get("pretokenizers", []))
    return p.get("type") == "ByteLevel"


@dataclass(frozen=True)
class _Bound:
    chars_per_token: int  # the longest vocabulary entry
    dropped: str = ""  # one-byte characters a byte-level vocabulary has no piece for: they become no token at all


def _bound(tokenizer: Tokenizer) -> _Bound | None:
    if tokenizer in _cache:
        return _cache[tokenizer]
    backend = tokenizer.backend
    model = backend.model
    normalizer, splitter = _component(backend.normalizer), _component(backend.pre_tokenizer)
    vocab = backend.get_vocab(with_added_tokens=False)
    added = list(backend.get_added_tokens_decoder().values())
    bound = None
    if (type(model).__name__ == "BPE" and _normalizer_keeps_length(normalizer) and _splitter_keeps_everything(splitter)
            and not any(t.lstrip or t.rstrip for t in added)):
        longest = max([len(piece) for piece in vocab] + [len(t.content) for t in added])
        if model.byte_fallback and _BYTE_FALLBACK <= vocab.keys():
            bound = _Bound(longest)  # every character is pieces or bytes
        elif model.unk_token is None and _byte_level(splitter):
            missing = [b for b, c in byte_to_unicode().items() if c not in vocab]
            # A byte without a piece is dropped. Real vocabularies lack only bytes that never occur in UTF-8 and a few
            # control characters; a missing continuation byte (0x80-0xBF) would let whole characters vanish: no bound.
            if not any(0x80 <= b <= 0xBF for b in missing):
                bound = _Bound(longest, "".join(chr(b) for b in missing if b < 0x80))
    _cache[tokenizer] = bound
    return bound


def chars_per_token(tokenizer: Tokenizer) -> int | None:
    """The most characters of text one token can stand for, or None when this tokenizer gives no such bound.
    Computed once per tokenizer (it reads the whole vocabulary)."""
    b = _bound(tokenizer)
    return None if b is None else b.chars_per_token


def surely_too_long(tokenizer: Tokenizer, text: str, max_tokens: int) -> bool:
    """True when `text` needs more than `max_tokens` tokens, decided without tokenizing it (False: maybe not)."""
    if len(text) <= max_tokens:  # the bound is at least 1, so it cannot refuse this text: skip reading the vocabulary
        return False
    b = _bound(tokenizer)
    if b is None or len(text) <= max_tokens * b.chars_per_token:
        return False
    counted = len(text) - sum(text.count(c) for c in b.dropped)
    return counted > max_tokens * b.chars_per_token
