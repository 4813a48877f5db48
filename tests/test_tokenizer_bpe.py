"""Byte-level BPE vocabularies read from GGUF.

(a) The default model (SmolLM2-135M, pre-tokenizer "smollm"): hearth must give llama.cpp's ids.
    SmolLM2's own tokenizer.json pre-tokenizes with
    Sequence[Digits(individual_digits=True), ByteLevel(add_prefix_space=False, use_regex=True)],
    which llama.cpp's "smollm" pre-tokenizer reproduces. transformers' GGUF loader builds only the
    ByteLevel part, so it disagrees wherever whitespace or a space precedes a digit (e.g. "\\n\\n  0.",
    " ½"). Those cases are pinned below with llama.cpp's ids, in tests that need neither llama.cpp
    nor transformers.
(b) Llama-3 style ("llama-bpe"): a tiny BPE trained here with Llama 3's split regex, converted to
    GGUF arrays the way llama.cpp's convert does, against the `tokenizers` library reading the
    original tokenizer.json (and against llama.cpp reading a vocab-only GGUF).
"""

from __future__ import annotations

import inspect
import json
import textwrap
from pathlib import Path

import pytest
from tokenizers import Regex, decoders, models, pre_tokenizers, processors, trainers
from tokenizers import Tokenizer as HFTokenizer

from hf_tokenizer_kit import transformers_gguf_tokenizer
from hearth.loader import resolve_model
from hearth.tokenizer import Tokenizer
from hearth.tokenizer.from_gguf import LLAMA3_SPLIT
from hearth.tokenizer.tokenizer import byte_to_unicode
from hearth.weights import open_checkpoint
from hearth.weights.types import GGUFVocab, TokenizerData

GPL3 = "/usr/share/common-licenses/GPL-3"


def _read(path: str) -> str:
    return Path(path).read_text(encoding="utf-8")


CORPUS = {
    "gpl3": _read(GPL3),
    "textwrap_source": inspect.getsource(textwrap),
    "json_decoder_source": inspect.getsource(json.decoder),
    "whitespace_runs": "a  b   c    d\t\t e \n \n\n\n   x        y\n\t\n  \n",
    "leading_trailing": "   leading and trailing   ",
    "crlf": "x\r\ny\r\n\r\n z",
    "nbsp_and_wide_spaces": "\u00a0\u2003\u3000 a\u00a0b",
    "scripts": "Привет мир! 你好，世界。 こんにちは 안녕하세요 مرحبا שלום नमस्ते ไทย Ελληνικά",
    "accents": "café naïve e\u0301 Å",
    "emoji": "😀 🎉👍 ❤️ 🇺🇸 👍🏽",
    "emoji_zwj": "👨\u200d👩\u200d👧\u200d👦 🏳️\u200d🌈 🧑🏽\u200d💻 👩\u200d❤️\u200d💋\u200d👨",
    "numbers": "1234567890 3.14159 1,000,000 -42 0x1F 1e-10 ²³ ½ ⅓ ٣٤ 2024-01-31 10  20   30",
    "digits_after_whitespace": "\n\n  0.",
    "space_fraction": " ½",
    "contractions": "'s 'll 'VE I'm you're THEY'D",
    "chat": "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nWhat is 2 + 2?<|im_end|>\n<|im_start|>assistant\n",
    "special_adjacent": "x<|im_end|>y <|endoftext|> 1<file_sep>",
    "empty": "",
}

# llama.cpp's ids (hearth must give the same) for texts where transformers' GGUF tokenizer differs.
# Recorded once from llama-cpp-python 0.3.36 (`Llama(vocab_only=True).tokenize(..., special=True)`)
# and from transformers 5.23 (`AutoTokenizer.from_pretrained(dir, gguf_file=...)`).
PINNED = {
    # text: (hearth == llama.cpp, transformers-GGUF)
    "\n\n  0.": ([39892, 32, 30], [8866, 216, 32, 30]),  # "\n\n  " "0" "."  vs "\n\n " " " "0" "."
    " ½": ([216, 16738], [3351, 138]),  # " " "½"  vs  " ½" split into bytes
    " ²": ([216, 19133], [3351, 127]),
    "x  1": ([104, 256, 33], [104, 216, 216, 33]),
    "\n 5": ([3805, 37], [198, 216, 37]),
    " ٣٤": ([216, 164, 113, 164, 114], [16936, 113, 164, 114]),
    "  0. Definitions.": ([256, 32, 30, 39331, 30], [216, 216, 32, 30, 39331, 30]),
}
# And texts where all three agree (digits not preceded by whitespace, or a single space before one).
AGREED = {
    "Version 3, 29 June 2007": [22348, 216, 35, 28, 216, 34, 41, 4019, 216, 34, 32, 32, 39],
    "\t 1": [197, 216, 33],
    "<|im_start|>user\nHi 2 you<|im_end|>\n": [1, 4093, 198, 26843, 216, 34, 346, 2, 198],
}


@pytest.fixture(scope="module")
def smollm2_path() -> Path:
    return resolve_model("smollm2")


@pytest.fixture(scope="module")
def smollm2(smollm2_path) -> Tokenizer:
    return Tokenizer.from_data(open_checkpoint(smollm2_path).tokenizer)


@pytest.fixture(scope="module")
def llama_smollm2(smollm2_path):
    import llama_cpp

    return llama_cpp.Llama(model_path=str(smollm2_path), vocab_only=True, verbose=False)


@pytest.fixture(scope="module")
def tf_smollm2(pytestconfig, tmp_path_factory, smollm2_path):
    return transformers_gguf_tokenizer(pytestconfig, tmp_path_factory, smollm2_path)


# ---------------------------------------------------------------- (a) SmolLM2, "smollm"


def test_smollm2_vocab_is_what_we_think(smollm2_path):
    data = open_checkpoint(smollm2_path).tokenizer
    assert (data.gguf.model, data.gguf.pre, len(data.gguf.tokens)) == ("gpt2", "smollm", 49152)


@pytest.mark.parametrize("text", list(PINNED))
def test_smollm2_pinned_disagreements(smollm2, text):
    assert smollm2.encode(text) == PINNED[text][0]
    assert smollm2.decode(PINNED[text][0]) == text


@pytest.mark.parametrize("text", list(AGREED))
def test_smollm2_pinned_agreements(smollm2, text):
    assert smollm2.encode(text) == AGREED[text]


@pytest.mark.parametrize("name", list(CORPUS))
@pytest.mark.reference
def test_smollm2_matches_llama_cpp(smollm2, llama_smollm2, name):
    text = CORPUS[name]
    assert smollm2.encode(text) == llama_smollm2.tokenize(text.encode("utf-8"), add_bos=False, special=True)


@pytest.mark.parametrize("text", list(PINNED) + list(AGREED))
@pytest.mark.reference
def test_pinned_ids_are_llama_cpps(llama_smollm2, text):
    expected = PINNED[text][0] if text in PINNED else AGREED[text]
    assert llama_smollm2.tokenize(text.encode("utf-8"), add_bos=False, special=True) == expected


@pytest.mark.parametrize("name", list(CORPUS))
def test_smollm2_decode_round_trip(smollm2, name):
    text = CORPUS[name]
    assert smollm2.decode(smollm2.encode(text), skip_special=False) == text


def test_smollm2_specials_and_bos(smollm2):
    assert smollm2.add_bos is False  # SmolLM2's GGUF: add_bos_token false; templates write <|im_start|>
    assert smollm2.encode("<|im_start|>")[0] == 1 and smollm2.encode("<|im_end|>") == [2]
    assert smollm2.is_special(1) and smollm2.is_special(0) and not smollm2.is_special(216)
    assert smollm2.decode(AGREED["<|im_start|>user\nHi 2 you<|im_end|>\n"]) == "user\nHi 2 you\n"


def test_transformers_gguf_differs_on_pinned(tf_smollm2):
    """transformers' GGUF tokenizer lacks SmolLM2's individual-digit pre-tokenizer."""
    for text, (ours, theirs) in PINNED.items():
        got = tf_smollm2.encode(text, add_special_tokens=False)
        assert got == theirs != ours, text
    for text, ids in AGREED.items():
        assert tf_smollm2.encode(text, add_special_tokens=False) == ids, text
    # The cause: with Digits(individual_digits=True) in front, transformers' tokenizer agrees.
    fixed = HFTokenizer.from_str(tf_smollm2.backend_tokenizer.to_str())
    assert "Digits" not in fixed.pre_tokenizer.__repr__()
    fixed.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), fixed.pre_tokenizer])
    for text, (ours, _) in PINNED.items():
        assert fixed.encode(text, add_special_tokens=False).ids == ours, text


@pytest.mark.parametrize("name", ["textwrap_source", "scripts", "emoji_zwj", "chat"])
def test_transformers_gguf_agrees_without_digits(smollm2, tf_smollm2, name):
    text = CORPUS[name]
    assert tf_smollm2.encode(text, add_special_tokens=False) == smollm2.encode(text)


def test_transformers_gguf_differs_on_gpl3(smollm2, tf_smollm2):
    # GPL-3's numbered sections ("  0. Definitions.") are enough to show it on real text.
    assert tf_smollm2.encode(CORPUS["gpl3"], add_special_tokens=False) != smollm2.encode(CORPUS["gpl3"])


# ---------------------------------------------------------------- (b) Llama 3 style, "llama-bpe"

L3_SPECIALS = ["<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>"]
L3_CORPUS = {
    **{k: CORPUS[k] for k in ("gpl3", "textwrap_source", "whitespace_runs", "crlf", "scripts", "emoji_zwj", "numbers",
                              "contractions", "digits_after_whitespace", "space_fraction", "empty")},
    "long_numbers": "1234567 12 123 1234 a1234b",  # \p{N}{1,3}
    "specials": "<|begin_of_text|>hi<|eot_id|> there<|end_of_text|>",
    "punct_newlines": "x = {'a': 1}!!\n\n\ny?\r\n",
}


def _llama3_pre():
    return pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(LLAMA3_SPLIT), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False),
        ]
    )


def _write_bpe_gguf(path: Path, v: GGUFVocab, bos: int) -> None:
    import gguf

    w = gguf.GGUFWriter(str(path), "llama")
    w.add_context_length(64)
    w.add_embedding_length(8)
    w.add_block_count(1)
    w.add_feed_forward_length(16)
    w.add_head_count(2)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_tokenizer_model(v.model)
    w.add_tokenizer_pre(v.pre)
    w.add_token_list(v.tokens)
    w.add_token_types(v.token_types)
    w.add_token_merges(v.merges)
    w.add_bos_token_id(bos)
    w.add_add_bos_token(True)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def _vocab_from_tokenizer_json(path: Path) -> GGUFVocab:
    """What llama.cpp's convert_hf_to_gguf writes for a Llama 3 tokenizer.json."""
    j = json.loads(path.read_text(encoding="utf-8"))
    vocab = dict(j["model"]["vocab"])
    specials = set()
    for a in j["added_tokens"]:
        vocab[a["content"]] = a["id"]
        if a["special"]:
            specials.add(a["content"])
    tokens = sorted(vocab, key=vocab.get)
    assert [vocab[t] for t in tokens] == list(range(len(tokens)))
    merges = [m if isinstance(m, str) else " ".join(m) for m in j["model"]["merges"]]
    return GGUFVocab(
        model="gpt2",
        pre="llama-bpe",
        tokens=tokens,
        token_types=[3 if t in specials else 1 for t in tokens],
        merges=merges,
        scores=[],
    )


class Llama3Style:
    def __init__(self, tmp: Path):
        tk = HFTokenizer(models.BPE())
        tk.pre_tokenizer = _llama3_pre()
        tk.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=1500,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            special_tokens=L3_SPECIALS,
            show_progress=False,
        )
        extra = ["Привет мир, как дела?", "你好，世界。", "emoji 😀 🎉 👍 ❤️", "def foo(x):\n    return x * 2\n", "I'm you're"]
        tk.train_from_iterator(CORPUS["gpl3"].splitlines(keepends=True) + extra * 3, trainer)
        # As in Llama 3's tokenizer.json: whole-word vocabulary hits skip the merges, BOS via the post-processor.
        tk.model.ignore_merges = True
        tk.post_processor = processors.TemplateProcessing(single="<|begin_of_text|> $A", special_tokens=[("<|begin_of_text|>", 0)])
        self.json_path = tmp / "tokenizer.json"
        tk.save(str(self.json_path))
        self.ref = HFTokenizer.from_file(str(self.json_path))
        self.vocab = _vocab_from_tokenizer_json(self.json_path)
        self.tok = Tokenizer.from_data(TokenizerData(gguf=self.vocab, bos_id=0, eos_ids=(1, 2), add_bos=True))
        self.gguf_path = tmp / "vocab.gguf"
        _write_bpe_gguf(self.gguf_path, self.vocab, bos=0)


@pytest.fixture(scope="module")
def l3(tmp_path_factory) -> Llama3Style:
    return Llama3Style(tmp_path_factory.mktemp("llama3_bpe"))


def test_llama3_vocab_conversion(l3):
    v = l3.vocab
    assert v.tokens[:3] == L3_SPECIALS and v.token_types[:3] == [3, 3, 3]
    assert set(byte_to_unicode().values()) <= set(v.tokens)
    assert "Ġt" in v.tokens and all(" " in m for m in v.merges)
    assert json.loads(l3.json_path.read_text())["model"]["ignore_merges"] is True


@pytest.mark.parametrize("name", list(L3_CORPUS))
def test_llama3_matches_tokenizer_json(l3, name):
    text = L3_CORPUS[name]
    assert l3.tok.encode(text) == l3.ref.encode(text).ids  # BOS from the post-processor
    assert l3.tok.encode(text, add_bos=False) == l3.ref.encode(text, add_special_tokens=False).ids


@pytest.mark.parametrize("name", list(L3_CORPUS))
def test_llama3_decode(l3, name):
    text = L3_CORPUS[name]
    ids = l3.tok.encode(text)
    assert l3.tok.decode(ids, skip_special=False) == "<|begin_of_text|>" + text
    assert l3.tok.decode(ids) == l3.ref.decode(ids)


@pytest.mark.parametrize("name", list(L3_CORPUS))
@pytest.mark.reference
def test_llama3_matches_llama_cpp(l3, name):
    import llama_cpp

    if not hasattr(l3, "llama"):
        l3.llama = llama_cpp.Llama(model_path=str(l3.gguf_path), vocab_only=True, verbose=False)
    text = L3_CORPUS[name]
    assert l3.tok.encode(text) == l3.llama.tokenize(text.encode("utf-8"), add_bos=True, special=True)


@pytest.mark.reference
def test_llama3_ignore_merges(tmp_path):
    """A word that is itself in the vocabulary is one token even when the merges would not reach it
    (Llama 3's tokenizer.json sets ignore_merges; llama.cpp does the same for llama-bpe)."""
    alphabet = list(byte_to_unicode().values())
    tokens = ["<|begin_of_text|>"] + alphabet + ["ab", "bc", "abc"]
    merges = ["a b", "b c", "a bc"]  # "a b" first: merging "abc" gives "ab" "c" and stops
    v = GGUFVocab(model="gpt2", pre="llama-bpe", tokens=tokens, token_types=[3] + [1] * (len(tokens) - 1), merges=merges, scores=[])
    tok = Tokenizer.from_data(TokenizerData(gguf=v, bos_id=0, add_bos=False))
    ab, c, abc = tokens.index("ab"), tokens.index("c"), tokens.index("abc")
    x = tokens.index("x")
    assert tok.encode("abc") == [abc]
    assert tok.encode("xabc") == [x, ab, c]  # not a vocabulary word: merges as usual
    ref = HFTokenizer(models.BPE({t: i for i, t in enumerate(tokens)}, [tuple(m.split()) for m in merges], ignore_merges=True))
    ref.pre_tokenizer = _llama3_pre()
    assert ref.encode("abc xabc").ids == tok.encode("abc xabc")
    import llama_cpp

    _write_bpe_gguf(tmp_path / "v.gguf", v, bos=0)
    llama = llama_cpp.Llama(model_path=str(tmp_path / "v.gguf"), vocab_only=True, verbose=False)
    assert llama.tokenize(b"abc xabc", add_bos=False, special=True) == tok.encode("abc xabc")


@pytest.mark.parametrize("pre", ["gpt-2", "default"])
@pytest.mark.reference
def test_gpt2_regex_pre_tokenizer(l3, tmp_path, pre):
    """"gpt-2" and "default" both mean GPT-2's byte-level regex in hearth.

    llama.cpp agrees for "gpt-2". For "default" (old conversions that recorded no pre-tokenizer;
    llama.cpp warns that quality will be degraded) llama.cpp uses a different regex set of its own
    (punctuation runs and 3-digit groups split first), so it differs from hearth, e.g. on "'s".
    Neither is the model's original tokenizer, which such files no longer name; hearth keeps GPT-2's.
    """
    v = GGUFVocab(model="gpt2", pre=pre, tokens=l3.vocab.tokens, token_types=l3.vocab.token_types, merges=l3.vocab.merges, scores=[])
    tok = Tokenizer.from_data(TokenizerData(gguf=v, bos_id=0, add_bos=False))
    ref = HFTokenizer.from_file(str(l3.json_path))
    ref.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    ref.model.ignore_merges = False
    texts = {k: L3_CORPUS[k] for k in ("textwrap_source", "contractions", "numbers", "scripts", "specials", "whitespace_runs")}
    for name, text in texts.items():
        assert tok.encode(text) == ref.encode(text, add_special_tokens=False).ids, name
    import llama_cpp

    _write_bpe_gguf(tmp_path / "v.gguf", v, bos=0)
    llama = llama_cpp.Llama(model_path=str(tmp_path / "v.gguf"), vocab_only=True, verbose=False)
    same = {name: llama.tokenize(t.encode("utf-8"), add_bos=False, special=True) == tok.encode(t) for name, t in texts.items()}
    if pre == "gpt-2":
        assert all(same.values()), same
    else:
        assert not same["contractions"] and not same["textwrap_source"] and same["scripts"], same


@pytest.mark.reference
def test_smollm2_token_bytes_are_llama_cpps(smollm2, llama_smollm2):
    """Every token's own bytes (OpenAI logprobs' `bytes`), partial UTF-8 characters included, as llama.cpp's
    token_to_piece gives them (llama-cpp-python's buffer holds 32 bytes: longer pieces come back empty there)."""
    checked = 0
    for i in range(smollm2.vocab_size):
        ref = llama_smollm2.detokenize([i], special=True)
        ours = smollm2.token_bytes(i)
        if ref or len(ours) <= 32:
            assert ours == ref, i
            checked += 1
    assert checked > smollm2.vocab_size - 100
    ids = smollm2.encode("I love 🙂 and 日本語 🦜<|im_end|>")
    assert b"".join(smollm2.token_bytes(i) for i in ids).decode() == "I love 🙂 and 日本語 🦜<|im_end|>"
