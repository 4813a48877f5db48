"""Single-sequence generation on the real default model: stop rules, streaming, context checks, chat.

The model is loaded once for the module; generations are kept to a few tokens each.
"""

from __future__ import annotations

import dataclasses

import pytest

from hearth.engine.chat import ChatSession
from hearth.engine.generate import Generator, _StopMatcher, check_context
from hearth.engine.sampling import SamplingParams
from hearth.errors import ContextLengthError, HearthError

PROMPT = "Once upon a time"
N = 8


# ---------------------------------------------------------------- _StopMatcher and check_context (no model)


def feed_all(m: _StopMatcher, pieces: list[str]) -> tuple[list[str], bool]:
    out = []
    for p in pieces:
        text, stopped = m.feed(p)
        out.append(text)
        if stopped:
            return out, True
    out.append(m.flush())
    return out, False


def test_stop_matcher_without_stops_passes_text_through():
    m = _StopMatcher(())
    assert m.feed("abc") == ("abc", False)
    assert m.feed("") == ("", False)
    assert m.flush() == ""


def test_stop_matcher_stop_split_across_pushes():
    m = _StopMatcher(("END",))
    assert m.feed("hello E") == ("hello ", False)  # "E" could start END: held back
    assert m.feed("N") == ("", False)  # "EN" still could
    assert m.feed("D and more") == ("", True)  # full match: nothing after it, and not the stop itself


def test_stop_matcher_releases_text_that_turns_out_not_to_be_a_stop():
    m = _StopMatcher(("END",))
    assert m.feed("a E") == ("a ", False)
    assert m.feed("N") == ("", False)
    assert m.feed("x") == ("ENx", False)
    assert m.flush() == ""


def test_stop_matcher_flush_returns_held_text():
    m = _StopMatcher(("END",))
    assert m.feed("abcEN") == ("abc", False)
    assert m.flush() == "EN"


def test_stop_matcher_multiple_stops_earliest_wins():
    m = _StopMatcher(("world", "lo w"))
    out, stopped = feed_all(m, ["hel", "lo wor", "ld"])
    assert stopped
    assert "".join(out) == "hel"  # "lo w" starts at 3, before "world" at 6


def test_stop_matcher_earliest_wins_whatever_the_order():
    for stops in (("cd", "bcde"), ("bcde", "cd")):
        # all at once: both stops are present, the one starting first wins
        out, stopped = feed_all(_StopMatcher(stops), ["abcdef"])
        assert stopped and "".join(out) == "a", stops
        # token by token: generation stops as soon as any stop string is complete ("cd" after "d")
        out, stopped = feed_all(_StopMatcher(stops), ["a", "b", "c", "d", "e"])
        assert stopped and "".join(out) == "ab", stops


def test_stop_matcher_keeps_longest_possible_prefix():
    m = _StopMatcher(("abab",))
    assert m.feed("xaba") == ("x", False)  # "aba" is a prefix of "abab"
    assert m.feed("b") == ("", True)


def test_stop_matcher_never_emits_a_stop_prefix_it_later_retracts():
    stops = ("\n\nUser:", "###")
    text = "Sure.\n\nHere it is ## not a stop ### tail\n\nUser: x"
    for size in (1, 2, 3, 5):
        m = _StopMatcher(stops)
        emitted = ""
        for i in range(0, len(text), size):
            out, stopped = m.feed(text[i : i + size])
            emitted += out
            assert text.startswith(emitted)
            assert "###" not in emitted
            if stopped:
                break
        assert stopped and emitted == "Sure.\n\nHere it is ## not a stop ", size


def test_check_context_fits():
    check_context(10, 90, 100)
    check_context(1, 0, 1)


def test_check_context_says_by_how_much():
    with pytest.raises(ContextLengthError) as e:
        check_context(60, 50, 100)
    msg = str(e.value)
    assert "by 10" in msg and "60" in msg and "50" in msg and "100" in msg
    assert isinstance(e.value, HearthError)


def test_check_context_rejects_empty_prompt():
    with pytest.raises(ContextLengthError, match="empty"):
        check_context(0, 10, 100)


# ---------------------------------------------------------------- the real model


@pytest.fixture(scope="module")
def lm(smollm2_model):
    return smollm2_model


@pytest.fixture(scope="module")
def gen(lm):
    return Generator(lm.model, lm.tokenizer)


@pytest.fixture(scope="module")
def prompt_ids(lm):
    return lm.tokenizer.encode(PROMPT)


@pytest.fixture(scope="module")
def baseline(gen, prompt_ids):
    """A greedy completion that runs to the length limit (the story prompt does not end in 8 tokens)."""
    return gen.complete(prompt_ids, SamplingParams(max_tokens=N, temperature=0))


def test_max_tokens_respected_with_length(baseline, lm):
    assert len(baseline.token_ids) == N
    assert baseline.finish_reason == "length"
    assert baseline.text == lm.tokenizer.decode(baseline.token_ids)
    assert baseline.text.strip()


def test_greedy_is_deterministic_and_stream_matches_complete(gen, prompt_ids, baseline):
    chunks = list(gen.stream(prompt_ids, SamplingParams(max_tokens=N, temperature=0)))
    assert [c.token_id for c in chunks] == baseline.token_ids
    assert "".join(c.text for c in chunks) == baseline.text
    assert [c.finish_reason for c in chunks] == [None] * (N - 1) + ["length"]


def test_max_tokens_zero_generates_nothing(gen, prompt_ids):
    c = gen.complete(prompt_ids, SamplingParams(max_tokens=0, temperature=0))
    assert c.token_ids == [] and c.text == "" and c.finish_reason == "length"


def test_stop_string_cuts_text_and_streaming_never_leaks_it(gen, lm, prompt_ids, baseline):
    # A stop string made of two generated tokens, so it is only complete after the second push.
    pieces = [lm.tokenizer.decode(baseline.token_ids[: i + 1])[len(lm.tokenizer.decode(baseline.token_ids[:i])) :] for i in range(N)]
    j = next(i for i in range(1, N - 2) if pieces[i].strip() and pieces[i + 1].strip())
    stop = pieces[j] + pieces[j + 1]
    cut = baseline.text.find(stop)
    assert cut >= 0
    chunks = list(gen.stream(prompt_ids, SamplingParams(max_tokens=N, temperature=0, stop=(stop,))))
    text = "".join(c.text for c in chunks)
    assert text == baseline.text[:cut]
    assert stop not in text
    assert chunks[-1].finish_reason == "stop"
    assert all(c.finish_reason is None for c in chunks[:-1])
    # the first piece of the stop string was held back, not emitted then retracted
    emitted = ""
    for c in chunks:
        emitted += c.text
        assert baseline.text[:cut].startswith(emitted)
    assert len(chunks) <= j + 2
    if cut == len("".join(pieces[:j])):  # the stop begins at token j: that token's text was held back
        assert "".join(c.text for c in chunks[: j + 1]) == baseline.text[:cut]


def test_stop_string_in_complete(gen, prompt_ids, baseline):
    word = baseline.text.split()[2]  # a word from the middle of the continuation
    cut = baseline.text.find(word)
    c = gen.complete(prompt_ids, SamplingParams(max_tokens=N, temperature=0, stop=("no such text", word)))
    assert c.text == baseline.text[:cut]
    assert c.finish_reason == "stop"
    assert len(c.token_ids) < N


def test_eos_stops_generation(gen, lm, prompt_ids, baseline):
    # Pretend a greedy token (the k-th) is an end-of-generation token: generation must stop on it,
    # report "stop" and not print it.
    ids = baseline.token_ids
    k = next(i for i in range(2, N - 1) if ids[i] not in ids[:i])
    fake_eos = ids[k]
    tok = lm.tokenizer
    saved = tok.eos_ids
    tok.eos_ids = (fake_eos,)
    try:
        c = gen.complete(prompt_ids, SamplingParams(max_tokens=N, temperature=0))
        ignored = gen.complete(prompt_ids, SamplingParams(max_tokens=k + 2, temperature=0, ignore_eos=True))
    finally:
        tok.eos_ids = saved
    assert c.token_ids == ids[: k + 1]
    assert c.finish_reason == "stop"
    assert c.text == tok.decode(ids[:k])
    assert ignored.token_ids == ids[: k + 2] and ignored.finish_reason == "length"


def test_real_eos_after_a_finished_answer(gen, lm):
    # An instruct model closes its turn (<|im_end|>) right after a complete answer.
    text = lm.chat_template.render([{"role": "user", "content": "Say hi"}], add_generation_prompt=True)
    ids = lm.tokenizer.encode(text + "Hello! How can I help you today?", add_bos=False)
    c = gen.complete(ids, SamplingParams(max_tokens=4, temperature=0))
    assert c.finish_reason == "stop"
    assert c.token_ids[-1] in lm.tokenizer.eos_ids
    assert "<|im_end|>" not in c.text


def test_context_overflow_raises_before_generating(gen, lm, prompt_ids):
    ctx = lm.model.config.max_seq_len
    with pytest.raises(ContextLengthError) as e:
        next(gen.stream(prompt_ids, SamplingParams(max_tokens=ctx, temperature=0)))
    assert f"by {len(prompt_ids)}" in str(e.value)
    with pytest.raises(ContextLengthError, match="empty"):
        gen.complete([], SamplingParams(max_tokens=1))


def test_seeded_sampling_reproducible(gen, prompt_ids):
    p = SamplingParams(max_tokens=3, temperature=1.0, top_k=0, seed=42)
    a = gen.complete(prompt_ids, p)
    b = gen.complete(prompt_ids, p)
    assert a.token_ids == b.token_ids and a.text == b.text


def test_chat_session_keeps_history(lm):
    params = SamplingParams(max_tokens=6, temperature=0)
    session = ChatSession(lm, params, system="You are terse.")
    first = "".join(c.text for c in session.send("What is the capital of France?"))
    assert first.strip()
    assert [m["role"] for m in session.messages] == ["system", "user", "assistant"]
    assert session.messages[-1]["content"] == first

    seen = []
    real_stream = session.generator.stream

    def spy(ids, p, *rest):
        seen.append(ids)
        return real_stream(ids, p, *rest)

    session.generator.stream = spy
    session.params = dataclasses.replace(params, max_tokens=1)
    second = session.complete("And of Italy?")
    prompt_text = lm.tokenizer.decode(seen[0], skip_special=False)
    assert first in prompt_text
    assert prompt_text.index("What is the capital of France?") < prompt_text.index(first) < prompt_text.index("And of Italy?")
    assert "You are terse." in prompt_text
    assert [m["role"] for m in session.messages] == ["system", "user", "assistant", "user", "assistant"]
    assert session.messages[-1]["content"] == second.text

    session.reset()
    assert session.messages == [{"role": "system", "content": "You are terse."}]


def test_chat_session_drops_the_oldest_exchanges_to_fit_the_context(lm):
    """A conversation that outgrows the context keeps going (as Ollama's and llama.cpp's chats do): the oldest
    exchanges go, the system message and the newest turns stay."""
    params = SamplingParams(max_tokens=1, temperature=0)
    session = ChatSession(lm, params, system="You are terse.")
    filler = "word " * 1200  # ~1200 tokens a message
    for i in range(5):
        session.messages += [{"role": "user", "content": f"question {i}: {filler}"},
                             {"role": "assistant", "content": f"answer {i}: {filler}"}]
    assert len(session.prompt_ids(session.messages)) > lm.model.config.max_seq_len
    c = session.complete("Hi")
    assert c.finish_reason and session.dropped >= 2
    kept = session.messages
    assert kept[0] == {"role": "system", "content": "You are terse."}
    assert kept[-2] == {"role": "user", "content": "Hi"} and kept[-3]["content"].startswith("answer 4:")
    assert not any(m["content"].startswith("question 0:") for m in kept)
    assert len(session.prompt_ids(kept[:-1])) + params.max_tokens <= lm.model.config.max_seq_len
