"""A chat keeps its KV cache from turn to turn (hearth/engine/prefix_reuse.py): a turn feeds only its new tokens, and
greedy answers are the same as when every turn prefills the whole history, over several turns, across the cache's
growth from one bucket to the next, after an exchange is dropped to fit the context, after /clear and after an
answer stopped half-way."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from hearth.engine.chat import ChatSession
from hearth.engine.prefix_reuse import PrefixCache, common_prefix
from hearth.engine.sampling import SamplingParams
from hearth.model import Transformer
from hearth.tokenizer import ChatTemplate
from hearth.tokenizer.chat import CHATML

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tiny_lm():
    from store_kit import _tiny_parts

    cfg, state, tok = _tiny_parts()  # context 512
    model = Transformer(cfg).eval()
    model.load_state_dict(state, strict=False)
    return SimpleNamespace(model=model, tokenizer=tok, chat_template=ChatTemplate(CHATML, tok.special_tokens))


WORDS = "the licence of free software grants every user the freedom to run study share and change it".split()


def message(i: int, n: int) -> str:
    return " ".join(WORDS[(i * 7 + j) % len(WORDS)] for j in range(n))


def converse(lm, turns: list[str], reuse: bool, max_tokens: int = 24, **kw) -> list[tuple]:
    s = ChatSession(lm, SamplingParams(max_tokens=max_tokens, temperature=0, ignore_eos=True), system="Be brief.",
                    reuse=reuse, **kw)
    out = []
    for t in turns:
        c = s.complete(t)
        out.append((c.token_ids, s.dropped, s.prompt_tokens, s.cached_tokens))
    return out


def test_common_prefix():
    assert common_prefix([1, 2, 3], [1, 2, 4, 5]) == 2
    assert common_prefix([], [1]) == 0 and common_prefix([1, 2], [1, 2]) == 2


def test_reuse_matches_full_prefill_over_turns_growth_and_trimming(tiny_lm):
    # ~60-token turns with 24-token answers in a 512-token context: the cache grows past 256 positions, and the
    # later turns drop the oldest exchanges to fit.
    turns = [message(i, 40 + 5 * i) for i in range(8)]
    with_reuse = converse(tiny_lm, turns, reuse=True)
    without = converse(tiny_lm, turns, reuse=False)
    assert [r[0] for r in with_reuse] == [r[0] for r in without]
    assert [r[1:3] for r in with_reuse] == [r[1:3] for r in without]  # same trimming, same prompts
    assert any(r[1] for r in with_reuse), "no turn dropped an exchange: the test lost its trimmed case"
    assert max(r[2] for r in with_reuse) > 256, "the cache never outgrew its first bucket"
    for i, (_, dropped, prompt, cached) in enumerate(with_reuse):
        if i == 0:
            assert cached == 0
        elif dropped:
            # a trimmed history shares with the cache only the system message and the first words of a user turn
            assert cached < with_reuse[i - 1][2] // 4, (i, cached)
        else:
            # at least the whole last prompt came from the cache (and the answer, as far as its text re-tokenizes
            # to the same ids)
            assert cached >= with_reuse[i - 1][2], (i, prompt, cached)
    assert all(r[3] == 0 for r in without)


def test_stopped_answer_and_clear_keep_cache_consistent(tiny_lm):
    params = SamplingParams(max_tokens=20, temperature=0, ignore_eos=True)
    s = ChatSession(tiny_lm, params, reuse=True)
    s.complete(message(1, 30))
    stream = s.send(message(2, 30))
    for _ in range(5):
        next(stream)
    stream.close()  # what Ctrl-C does to the chat's stream: the question stays, the partial answer goes
    assert [m["role"] for m in s.messages] == ["user", "assistant", "user"]
    after_stop = s.complete(message(3, 30)).token_ids
    fresh = ChatSession(tiny_lm, params, reuse=False)
    fresh.messages = [dict(m) for m in s.messages[:3]]
    assert fresh.complete(message(3, 30)).token_ids == after_stop
    s.reset()
    cleared = s.complete(message(4, 30)).token_ids
    assert s.cached_tokens < 10  # nothing of the forgotten conversation but the template's opening and a word or two
    assert ChatSession(tiny_lm, params, reuse=False).complete(message(4, 30)).token_ids == cleared


def test_interrupted_prefill_record_stays_true(tiny_lm):
    """Only the tokens whose keys and values are written count as cached: a turn stopped during its prefill leaves
    the record at the common prefix."""
    p = PrefixCache()
    model = tiny_lm.model
    assert p.start(model, [5, 6, 7, 8], 40) == 0
    p.fed([5, 6, 7, 8, 9])
    assert p.start(model, [5, 6, 7, 1, 2], 40) == 3 and p.ids == [5, 6, 7]
    assert p.start(model, [5, 6, 7], 40) == 2  # one token is always fed, for its logits
    assert p.start(model, [5, 6], 600 if model.config.max_seq_len >= 600 else model.config.max_seq_len) == 1
    assert p.cache.max_seq_len == model.config.max_seq_len  # capped at the context


def test_graph_path_prefills_in_full(tiny_lm):
    """The fixed-shape decoder (CUDA graphs on a GPU; run as is on the CPU) keeps its own cache: no reuse, same
    answers."""
    turns = [message(i, 30) for i in range(3)]
    graphs = converse(tiny_lm, turns, reuse=True, graphs=True)
    plain = converse(tiny_lm, turns, reuse=True)
    assert [r[0] for r in graphs] == [r[0] for r in plain]
    assert all(r[3] == 0 for r in graphs) and plain[2][3] > 0


def test_smollm2_f32_reuse_matches_full_prefill(smollm2_model_f32):
    """The real model on the exact fp32 path: three turns, greedy, the same answers with and without reuse."""
    turns = ["Name a river in France.", "How long is it?", "Which cities does it flow through?"]
    with_reuse = converse(smollm2_model_f32, turns, reuse=True, max_tokens=12)
    without = converse(smollm2_model_f32, turns, reuse=False, max_tokens=12)
    assert [r[0] for r in with_reuse] == [r[0] for r in without]
    assert with_reuse[2][3] > with_reuse[2][2] // 2
