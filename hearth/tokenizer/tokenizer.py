"""hearth's tokenizer: one interface over a `tokenizers.Tokenizer`, with the model's BOS/EOS rules."""

from __future__ import annotations

import functools

from tokenizers import Tokenizer as HFTokenizer

from hearth.errors import HearthError, ModelFormatError
from hearth.weights.types import TokenizerData


def byte_to_unicode() -> dict[int, str]:
    """GPT-2's byte-level alphabet: each byte as a printable character (as in its encoder.py)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


_UNICODE_TO_BYTE = {c: b for b, c in byte_to_unicode().items()}


class Tokenizer:
    """Encode text to ids and back, knowing the model's BOS/EOS tokens and whether to add BOS."""

    def __init__(self, backend: HFTokenizer, data: TokenizerData):
        self.backend = backend
        self.bos_id = data.bos_id
        self.eos_ids = tuple(data.eos_ids)
        self.pad_id = data.pad_id
        self.special_tokens = dict(data.special_tokens)
        self.vocab_size = backend.get_vocab_size(with_added_tokens=True)
        # ids come from the model file: one outside the vocabulary would fail (or decode garbage) mid-generation
        for what, ids in (("BOS", [data.bos_id]), ("EOS", data.eos_ids)):
            bad = [i for i in ids if i is not None and not 0 <= i < self.vocab_size]
            if bad:
                raise ModelFormatError(f"the model's {what} token id {bad[0]} is outside its vocabulary of "
                                       f"{self.vocab_size} tokens; the model files are inconsistent")
        if self.pad_id is not None and not 0 <= self.pad_id < self.vocab_size:
            self.pad_id = None  # old configs write -1 for "no padding token"
        add_bos = data.add_bos
        if add_bos is None:  # HF: the tokenizer's post-processor decides (Llama adds <s>, SmolLM2 does not)
            probe = backend.encode("a", add_special_tokens=True).ids
            add_bos = self.bos_id is not None and len(probe) > 0 and probe[0] == self.bos_id
        self.add_bos = bool(add_bos and self.bos_id is not None)
        self.add_eos = bool(data.add_eos and self.eos_ids)

    @classmethod
    def from_data(cls, data: TokenizerData) -> "Tokenizer":
        if data.tokenizer_json is not None:
            try:
                backend = HFTokenizer.from_file(str(data.tokenizer_json))
            except Exception as e:
                raise ModelFormatError(f"{data.tokenizer_json} cannot be read as a tokenizer ({e})") from None
        elif data.gguf is not None:
            from hearth.tokenizer.from_gguf import tokenizer_from_gguf

            try:
                backend = tokenizer_from_gguf(data.gguf)
            except HearthError:
                raise
            except Exception as e:  # the tokenizers library refuses an inconsistent vocabulary (e.g. merges of unknown tokens)
                why = " ".join(str(e).split())[:200]  # the library's messages span lines
                raise ModelFormatError(f"the GGUF vocabulary cannot be built into a tokenizer ({why}); the file is corrupt") from None
        else:
            raise ModelFormatError("the model has no tokenizer")
        return cls(backend, data)

    @classmethod
    def placeholder(cls, vocab_size: int) -> "Tokenizer":
        """Token i is the word "t{i}": for random-weight models of a given shape (benchmarks, tests), which have no
        tokenizer of their own. No BOS/EOS."""
        from tokenizers import models, pre_tokenizers

        backend = HFTokenizer(models.WordLevel({f"t{i}": i for i in range(vocab_size)}, unk_token="t0"))
        backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
        return cls(backend, TokenizerData(add_bos=False))

    def encode(self, text: str, add_bos: bool | None = None, add_eos: bool = False) -> list[int]:
        """Token ids of `text`. Special-token text (e.g. "<|im_start|>") becomes its special id.

        `add_bos=None` follows the model's rule; chat prompts pass False because templates write BOS.
        """
        try:
            # encode_batch releases the GIL while it works (encode holds it: a megabyte stalls every other thread,
            # the server's event loop and engine included, for seconds); same ids
            ids = self.backend.encode_batch([text], add_special_tokens=False)[0].ids
        except TypeError:  # lone surrogates: bytes that were not UTF-8, as Python reads them from argv or stdin
            try:
                text.encode("utf-8")
            except UnicodeEncodeError as e:
                raise HearthError(f"the text is not valid UTF-8 (character {e.start}); re-encode it as UTF-8") from None
            raise
        if (self.add_bos if add_bos is None else add_bos) and self.bos_id is not None:
            ids = [self.bos_id] + ids
        if add_eos and self.eos_ids:
            ids = ids + [self.eos_ids[0]]
        return ids

    def decode(self, ids: list[int], skip_special: bool = True) -> str:
        return self.backend.decode(list(ids), skip_special_tokens=skip_special)

    def token_text(self, idx: int) -> str:
        """The raw vocabulary entry (byte-level or ▁-escaped), for logprob listings and debugging."""
        return self.backend.id_to_token(idx) or ""

    def token_bytes(self, idx: int) -> bytes:
        """The token's own bytes: what it adds to the UTF-8 text, also when that is part of a character (a byte-level
        piece, a SentencePiece <0xNN> fallback), as OpenAI's logprob `bytes` carry them."""
        piece = self.backend.id_to_token(idx)
        if piece is None:
            return b""
        if idx not in self._added_ids:
            if self._byte_level:
                try:
                    return bytes(_UNICODE_TO_BYTE[c] for c in piece)
                except KeyError:  # not a byte-level piece: its text as it stands
                    pass
            else:
                if len(piece) == 6 and piece.startswith("<0x") and piece.endswith(">"):
                    try:
                        return bytes([int(piece[3:5], 16)])
                    except ValueError:
                        pass
                return piece.replace("▁", " ").encode("utf-8")
        return self.decode([idx], skip_special=False).encode("utf-8")

    @functools.cached_property
    def _byte_level(self) -> bool:
        return "ByteLevel" in type(self.backend.decoder).__name__

    @functools.cached_property
    def _added_ids(self) -> set[int]:
        return set(self.backend.get_added_tokens_decoder())

    def is_special(self, idx: int) -> bool:
        return idx in self._special_ids

    @property
    def _special_ids(self) -> set[int]:
        if not hasattr(self, "_special_cache"):
            added = self.backend.get_added_tokens_decoder()
            self._special_cache = {i for i, t in added.items() if t.special}
        return self._special_cache

    def to_gguf(self, n_vocab: int, pre: str | None = None):
        """This vocabulary as write_gguf stores it, padded to `n_vocab` entries (hearth/tokenizer/to_gguf.py)."""
        from hearth.tokenizer.to_gguf import gguf_tokenizer

        return gguf_tokenizer(self, n_vocab, pre)

    def stream(self, skip_special: bool = True) -> "TextStreamDecoder":
        return TextStreamDecoder(self, skip_special)


class TextStreamDecoder:
    """Turns ids into text one token at a time, never emitting a broken UTF-8 character.

    A character can span several byte-level tokens; decoding a window that ends mid-character yields
    U+FFFD, so text is held back until the window decodes cleanly. Decoding a short window of
    earlier tokens (not the token alone) keeps SentencePiece's leading-space rules right.
    """

    def __init__(self, tokenizer: Tokenizer, skip_special: bool = True):
        self.tok = tokenizer
        self.skip_special = skip_special
        self.ids: list[int] = []
        self.prefix = 0  # start of the context window
        self.read = 0  # tokens before this index have been emitted

    def push(self, idx: int) -> str:
        """Add one token; return the newly complete text (possibly empty)."""
        self.ids.append(idx)
        prefix_text = self.tok.decode(self.ids[self.prefix : self.read], self.skip_special)
        full = self.tok.decode(self.ids[self.prefix :], self.skip_special)
        if len(full) > len(prefix_text) and not full.endswith("\ufffd"):
            new = full[len(prefix_text) :]
            self.prefix, self.read = self.read, len(self.ids)
            return new
        return ""

    def flush(self) -> str:
        """Whatever is still held back (an incomplete character at the very end), decoded as is."""
        prefix_text = self.tok.decode(self.ids[self.prefix : self.read], self.skip_special)
        full = self.tok.decode(self.ids[self.prefix :], self.skip_special)
        self.prefix = self.read = len(self.ids)
        return full[len(prefix_text) :]
