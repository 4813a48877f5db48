"""Helpers (not tests) for the guard tests: Llama Guard 3's chat templates, and tiny random-weight guard models (GGUF)
that carry one, with a vocabulary that holds Llama 3's header tokens as special tokens so the prompt tokenizes as the
real model's does (specials whole, text around them)."""

from __future__ import annotations

import functools
import tempfile
from pathlib import Path

import tiny

DATA = Path(__file__).parent / "data"
LLAMA3_SPECIAL = ["<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]
GUARD_MAX_SEQ = 2048  # the 14 categories and the instructions are ~700 tokens of the tiny 384-piece vocabulary


def template(name: str) -> str:
    """tests/data/llama_guard_3_{name}.jinja as the model ships it. The 8B file is its one line without a final
    newline (a newline after the last tag would be template text)."""
    return (DATA / f"llama_guard_3_{name}.jinja").read_text(encoding="utf-8")


def header_body(rendered: str) -> str:
    """The user turn of a Llama Guard 3 prompt: between the user header and <|eot_id|> (the 1B template's space
    before <|eot_id|> stays out)."""
    head = "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\n"
    tail = "<|eot_id|><|start_header_id|>assistant<|end_header_id|>"
    assert rendered.startswith(head) and rendered.endswith(tail), rendered[:80] + " ... " + rendered[-80:]
    return rendered[len(head):-len(tail)].removesuffix(" ")


@functools.lru_cache(maxsize=None)
def _guard_parts(llama3: bool):
    from hearth.tokenizer import Tokenizer
    from hearth.weights.types import TokenizerData

    backend = tiny.train_tokenizer()
    if llama3:
        backend.add_special_tokens(LLAMA3_SPECIAL)  # ids 384-387
    n_vocab = backend.get_vocab_size(with_added_tokens=True)
    model = tiny.random_transformer(seed=3, vocab_size=n_vocab, max_seq_len=GUARD_MAX_SEQ, tie_embeddings=True,
                                    name="tiny-guard")
    vocab = backend.get_vocab(with_added_tokens=True)
    with tempfile.TemporaryDirectory() as d:  # from_data reads the file at once
        backend.save(str(Path(d) / "tokenizer.json"))
        if llama3:
            data = TokenizerData(tokenizer_json=Path(d) / "tokenizer.json", bos_id=vocab["<|begin_of_text|>"],
                                 eos_ids=(vocab["<|eot_id|>"],), pad_id=None, add_bos=False,
                                 special_tokens={"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>"})
        else:
            data = TokenizerData(tokenizer_json=Path(d) / "tokenizer.json", bos_id=0, eos_ids=(2,), pad_id=0,
                                 add_bos=False, special_tokens={"bos_token": "<|endoftext|>", "eos_token": "<|im_end|>"})
        return model.config, tiny.state_dict_of(model), Tokenizer.from_data(data)


def write_guard_gguf(path: Path, chat_template: str, llama3: bool = True, logit_scale: float = 1.0) -> Path:
    """A loadable 2-layer F32 GGUF guard (~0.5 MB) whose tokenizer.chat_template is `chat_template`; `llama3`: its
    vocabulary has Llama 3's header tokens (BOS <|begin_of_text|>, EOS <|eot_id|>), else ChatML's. `logit_scale`
    multiplies the final norm's weight, so the logits: the random model's are nearly flat, and a score it gives
    moves with its input only in the fourth decimal unless they are scaled up."""
    from hearth.weights.gguf_writer import write_gguf

    cfg, state, tok = _guard_parts(llama3)
    if logit_scale != 1.0:
        state = {**state, "norm.weight": state["norm.weight"] * logit_scale}
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_gguf(path, cfg, state, tok, chat_template, metadata={"general.name": "Tiny Guard"})


def template_chatml() -> str:
    """The tiny models' ChatML template (a chat model tuned as a guard reads the guard text as its user message)."""
    return tiny.CHAT_TEMPLATE
