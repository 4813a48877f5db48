"""SentencePiece ("llama") vocabularies read from GGUF: hearth vs sentencepiece itself and vs llama.cpp.

A tiny Llama-2-style model (BPE, byte fallback, identity normalizer, dummy prefix, digits split,
whitespace-only pieces, unk/bos/eos = 0/1/2) is trained in-process (well under a second), turned into
the `tokenizer.ggml.*` arrays the way llama.cpp's convert script does, and written as a vocab-only GGUF
so llama.cpp can read the same vocabulary.

Where the references disagree, hearth follows llama.cpp (and HF's legacy Llama tokenizer.json, which
has the same normalizer): a space is prefixed to *every* text fragment, including the fragment right
after a special or user-defined token. sentencepiece prefixes only the start of the whole text and
never parses special-token text. Those cases are pinned against llama.cpp and against sentencepiece
applied fragment by fragment, not against plain `sp.encode`.
"""

from __future__ import annotations

import inspect
import io
import textwrap

import pytest

from hearth.tokenizer import Tokenizer
from hearth.weights.types import GGUFVocab, TokenizerData

spm = pytest.importorskip("sentencepiece")

GPL3 = "/usr/share/common-licenses/GPL-3"
BOS, EOS, UNK = 1, 2, 0

TRAIN_EXTRA = [
    "Привет мир, как дела? Москва — столица России.",
    "你好，世界。我们喜欢机器学习。",
    "こんにちは世界",
    "emoji 😀 😃 🎉 👍 ❤️ 🚀",
    "naïve café résumé façade über straße",
    "def foo(x):\n    return x * 2  # comment",
    "        indented    code    here",
    "1234 5678 90",
]

CORPUS = {
    "prose": "The GNU General Public License is a free, copyleft license for software and other kinds of works.",
    "code": 'def add(a, b):\n    """Add."""\n    return a + b  # 42\n\n\nclass X:\n\tpass\n',
    "whitespace_runs": "a  b   c    d\t\t e \n \n\n\n   x        y",
    "leading_space": " leading",
    "leading_spaces": "   three leading",
    "trailing_spaces": "trailing  ",
    "only_spaces": "    ",
    "single_space": " ",
    "newlines": "\n\nline one\nline two\n\n",
    "crlf": "x\r\ny\r\n",
    "empty": "",
    "cyrillic": "Привет мир! Как дела?",
    "cjk": "你好，世界。机器学习",
    "japanese": "こんにちは、世界",
    "accents": "naïve café e\u0301 ÅÆØ",
    "emoji": "😀 🎉👍 ❤️ 👨\u200d👩\u200d👧 🇺🇸 🏳️\u200d🌈",
    "numbers": "1234567890 3.14159 1,000,000 -42 0x1F 1e-10 ½",
    # Characters the tiny model has never seen: byte fallback.
    "out_of_vocab": "ŧĦ€ ∑∫ ☃ 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 ꙮ ᚠᛇᚻ",
    "mixed": "Email: user@example.com; price: $9.99 (≈€9) — “quoted” ‘text’…",
    "piece_text": "<0x41> ▁x ▁▁",
}


def _train(**kw) -> bytes:
    text = open(GPL3, encoding="utf-8").read()
    lines = [line for line in text.splitlines() if line.strip()] + TRAIN_EXTRA * 3
    out = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines),
        model_writer=out,
        model_type="bpe",
        vocab_size=1000,
        byte_fallback=True,
        character_coverage=0.99,  # < 1: rare characters are left to byte fallback
        unk_id=UNK,
        bos_id=BOS,
        eos_id=EOS,
        pad_id=-1,
        normalization_rule_name="identity",  # as Llama's tokenizer.model
        remove_extra_whitespaces=False,
        split_digits=True,
        allow_whitespace_only_pieces=True,
        minloglevel=2,
        **kw,
    )
    return out.getvalue()


def _vocab(proto: bytes) -> GGUFVocab:
    """What llama.cpp's convert writes for a SentencePiece model."""
    from sentencepiece import sentencepiece_model_pb2 as pb

    m = pb.ModelProto()
    m.ParseFromString(proto)
    # sentencepiece's piece types coincide with llama.cpp's token types:
    # NORMAL=1, UNKNOWN=2, CONTROL=3, USER_DEFINED=4, UNUSED=5, BYTE=6.
    return GGUFVocab(
        model="llama",
        pre="default",
        tokens=[p.piece for p in m.pieces],
        token_types=[int(p.type) for p in m.pieces],
        merges=[],
        scores=[float(p.score) for p in m.pieces],
        add_space_prefix=bool(m.normalizer_spec.add_dummy_prefix),
    )


def _write_vocab_gguf(path, v: GGUFVocab) -> None:
    import gguf

    w = gguf.GGUFWriter(str(path), "llama")
    # llama.cpp reads the hyper-parameters even for vocab_only; tiny values will do.
    w.add_context_length(64)
    w.add_embedding_length(8)
    w.add_block_count(1)
    w.add_feed_forward_length(16)
    w.add_head_count(2)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_tokenizer_model("llama")
    w.add_tokenizer_pre("default")
    w.add_token_list(v.tokens)
    w.add_token_scores(v.scores)
    w.add_token_types(v.token_types)
    w.add_bos_token_id(BOS)
    w.add_eos_token_id(EOS)
    w.add_unk_token_id(UNK)
    w.add_add_bos_token(True)
    w.add_add_eos_token(False)
    w.add_add_space_prefix(v.add_space_prefix)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def _hearth(v: GGUFVocab) -> Tokenizer:
    return Tokenizer.from_data(TokenizerData(gguf=v, bos_id=BOS, eos_ids=(EOS,), add_bos=True))


class Model:
    def __init__(self, proto: bytes, gguf_path):
        self.sp = spm.SentencePieceProcessor(model_proto=proto)
        self.vocab = _vocab(proto)
        self.tok = _hearth(self.vocab)
        first = self.vocab.tokens.index("<0x00>")
        self.byte_ids = range(first, first + 256)
        _write_vocab_gguf(gguf_path, self.vocab)
        self.gguf_path = gguf_path
        self._llama = None

    @property
    def llama(self):
        if self._llama is None:
            import llama_cpp  # the tests that reach it are marked `reference`: without it they fail, not skip

            self._llama = llama_cpp.Llama(model_path=str(self.gguf_path), vocab_only=True, verbose=False)
        return self._llama

    def llama_ids(self, text: str) -> list[int]:
        return self.llama.tokenize(text.encode("utf-8"), add_bos=True, special=True)


@pytest.fixture(scope="module")
def m(tmp_path_factory) -> Model:
    return Model(_train(user_defined_symbols=["<tool>"]), tmp_path_factory.mktemp("spm") / "vocab.gguf")


@pytest.fixture(scope="module")
def m_noprefix(tmp_path_factory) -> Model:
    return Model(_train(add_dummy_prefix=False), tmp_path_factory.mktemp("spm_np") / "vocab.gguf")


def _long_texts():
    return {"gpl3": open(GPL3, encoding="utf-8").read(), "textwrap_source": inspect.getsource(textwrap)}


ALL = {**CORPUS, **_long_texts()}


def test_vocab_is_llama_shaped(m):
    v = m.vocab
    assert v.tokens[:3] == ["<unk>", "<s>", "</s>"]
    assert v.token_types[:3] == [2, 3, 3]
    assert v.tokens[3] == "<tool>" and v.token_types[3] == 4  # user-defined pieces come next
    assert all(v.tokens[i] == f"<0x{i - 4:02X}>" and v.token_types[i] == 6 for i in m.byte_ids)
    assert "▁▁" in v.tokens and "▁▁▁▁" in v.tokens


def test_byte_fallback_is_exercised(m):
    ids = m.tok.encode(CORPUS["out_of_vocab"])
    assert sum(i in m.byte_ids for i in ids) >= 10
    assert UNK not in ids
    assert ids == [BOS] + m.sp.encode(CORPUS["out_of_vocab"])
    # "€" (E2 82 AC) is not in the vocabulary: exactly its three UTF-8 bytes
    assert m.tok.encode("€", add_bos=False) == [m.sp.piece_to_id("▁")] + [m.byte_ids[b] for b in "€".encode()]


@pytest.mark.parametrize("name", list(ALL))
def test_encode_matches_sentencepiece(m, name):
    text = ALL[name]
    assert m.tok.encode(text) == [BOS] + m.sp.encode(text)
    assert m.tok.encode(text, add_bos=False) == m.sp.encode(text)


@pytest.mark.parametrize("name", list(ALL))
def test_decode_matches_sentencepiece(m, name):
    text = ALL[name]
    ids = m.tok.encode(text)
    assert m.tok.decode(ids) == m.sp.decode(ids[1:])
    if name != "piece_text":  # sentencepiece itself reads a literal "▁" back as a space
        assert m.tok.decode(ids) == text


@pytest.mark.parametrize("name", list(ALL))
@pytest.mark.reference
def test_encode_matches_llama_cpp(m, name):
    text = ALL[name]
    assert m.tok.encode(text) == m.llama_ids(text)


SPECIAL_CASES = {
    # text: the fragments sentencepiece encodes (each with its own dummy prefix) between the special ids
    "<s>x</s> y": [BOS, "x", EOS, " y"],
    "hello<s> world": ["hello", BOS, " world"],
    "x</s>": ["x", EOS],
    "</s></s>": [EOS, EOS],
    " <s> ": [" ", BOS, " "],
    "<unk>": [UNK],  # fixed in hearth: was encoded as the characters "<unk>"
    "x<tool>y": ["x", "<tool>", "y"],  # user-defined piece; sentencepiece alone gives "y" without "▁"
    "<tool> a": ["<tool>", " a"],
}


@pytest.mark.parametrize("text", list(SPECIAL_CASES))
@pytest.mark.reference
def test_special_tokens_prefix_each_fragment(m, text):
    expected = [BOS]
    for part in SPECIAL_CASES[text]:
        if isinstance(part, int):
            expected.append(part)
        elif part == "<tool>":
            expected.append(m.sp.piece_to_id("<tool>"))
        else:
            expected.extend(m.sp.encode(part))
    assert m.tok.encode(text) == expected
    assert m.tok.encode(text) == m.llama_ids(text)


def test_special_tokens_differ_from_plain_sentencepiece(m):
    # sentencepiece does not parse control-token text; hearth (like llama.cpp with special=True) does.
    assert m.tok.encode("<s>x</s>") != [BOS] + m.sp.encode("<s>x</s>")
    # user-defined pieces: sentencepiece matches them too, but does not prefix the following fragment.
    assert m.sp.encode("x<tool>y") != m.tok.encode("x<tool>y", add_bos=False)


def test_decode_skips_special_tokens(m):
    ids = m.tok.encode("<s>hi</s> there")
    # " there" after "</s>" was encoded with its own prefix space ("▁▁there"), which decoding keeps
    assert m.tok.decode(ids) == "hi  there"
    assert m.tok.decode(ids, skip_special=False) == "<s><s> hi</s>  there"
    assert m.tok.decode([]) == ""


@pytest.mark.parametrize("text", list(ALL) + list(SPECIAL_CASES) + ["<s>hi</s> there"])
@pytest.mark.reference
def test_decode_matches_llama_cpp(m, text):
    text = ALL.get(text, text)
    ids = m.tok.encode(text)
    for special in (False, True):
        assert m.tok.decode(ids, skip_special=not special) == m.llama.detokenize(ids, special=special).decode()
    # Without a leading BOS llama.cpp keeps the first piece's prefix space; hearth strips it, as
    # sentencepiece and HF's Llama decoder (Strip(" ", 1, 0)) do. Pinned on both sides here.
    body = m.tok.encode(text, add_bos=False)
    if body and m.tok.token_text(body[0]).startswith("▁"):
        assert m.llama.detokenize(body).decode() == " " + m.tok.decode(body)
        assert m.tok.decode(body) == m.sp.decode(body)


@pytest.mark.parametrize("text", ["Hello world", " lead", "  x\n", "a b  c", "😀 ŧ€", "<s>b c", "a<s>b c"])
@pytest.mark.reference
def test_without_space_prefix(m_noprefix, text):
    t, sp = m_noprefix.tok, m_noprefix.sp
    assert t.encode(text) == m_noprefix.llama_ids(text)
    if "<s>" not in text:
        assert t.encode(text) == [BOS] + sp.encode(text)
        assert t.decode(t.encode(text)) == text


@pytest.mark.reference
def test_token_bytes_are_llama_cpps(m):
    """SentencePiece pieces as bytes: "▁" a space, <0xNN> one raw byte; llama.cpp's token_to_piece agrees."""
    for i in range(len(m.vocab.tokens)):
        ours = m.tok.token_bytes(i)
        assert ours == m.llama.detokenize([i], special=True), (i, m.vocab.tokens[i])
    assert m.tok.token_bytes(m.byte_ids[0xE2]) == b"\xe2"


def test_structured_output_sees_the_same_token_bytes(m):
    """llguidance (structured output) reads the vocabulary from the same tokenizers JSON: every token's bytes as
    hearth's token_bytes gives them (but <0xFF>, which llguidance reserves as its special-token marker and which
    no UTF-8 text contains), so its masks are about the text hearth decodes."""
    import re

    import torch

    from hearth.engine.sampling import Sampler, SamplingParams
    from hearth.engine.grammar_pool import ll_tokenizer
    from hearth.engine.structured import Structure

    ll = ll_tokenizer(m.tok)
    differ = [i for i in range(m.tok.vocab_size) if ll.decode_bytes([i]) != m.tok.token_bytes(i)]
    assert [m.tok.token_bytes(i) for i in differ] == [b"\xff"]
    sampler = Sampler(SamplingParams(temperature=0, structure=Structure("regex", " ?[a-z]+")), m.tok)
    allowed = set(torch.nonzero(sampler.constraint.allowed(m.tok.vocab_size, torch.device("cpu"))).flatten().tolist())
    # the tokens that are a non-empty prefix of a match (" " alone included: letters may follow)
    expect = {i for i in range(m.tok.vocab_size) if re.fullmatch(rb" ?[a-z]*", m.tok.token_bytes(i))
              and m.tok.token_bytes(i) and not m.tok.is_special(i)}
    assert allowed == expect
