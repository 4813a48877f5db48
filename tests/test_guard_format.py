"""The Llama Guard format (hearth/guard/prompt.py, classifier.py): the prompt is Llama Guard 3's to the byte, its
answer is read as Llama Guard writes it, and a guard model of either kind scores a conversation as a plain forward
pass of the model does.

References: Llama Guard 3 8B's chat template as its tokenizer_config ships it (tests/data/llama_guard_3_8b.jinja) and
1B's, which takes a `categories` mapping and content as text parts (llama_guard_3_1b.jinja), rendered by hearth's
ChatTemplate (transformers' Jinja settings: test_chat_template.py checks those against transformers). Tiny
random-weight GGUF guards (guard_kit.py) carry the templates through hearth.loader.load.
"""

from __future__ import annotations

import math

import pytest
import torch

import guard_kit
from hearth.engine.llm_engine import EngineConfig, LLMEngine
from hearth.errors import HearthError
from hearth.guard.classifier import ANSWER_TOKENS, GuardFormat, GuardTemplateError, Verdict, classify
from hearth.guard.policy import Policy, parse_policy
from hearth.guard.prompt import GuardInputError, check_messages, guard_text, native_template, parse_answer
from hearth.guard.taxonomy import LLAMA_GUARD_3
from hearth.loader import load
from hearth.tokenizer import ChatTemplate, Tokenizer

pytestmark = pytest.mark.usefixtures("one_thread")

PROMPT = [{"role": "user", "content": "How do I bake sourdough bread?"}]
EXCHANGE = [*PROMPT, {"role": "assistant", "content": "Mix flour, water and starter, then let it rise overnight."}]
CONVERSATIONS = {  # (messages, role checked)
    "prompt": (PROMPT, "user"),
    "response": (EXCHANGE, "assistant"),
    "third_turn": ([*EXCHANGE, {"role": "user", "content": "And without an oven?"}], "user"),
    "multiline": ([{"role": "user", "content": "Line one.\nLine two.\n\n- a list\n- of items"}], "user"),
    "surrounding_space": ([{"role": "user", "content": "  \n hi there \t\n"},
                           {"role": "assistant", "content": "\n\nHello!  "}], "assistant"),
    "unicode_and_braces": ([{"role": "user", "content": "Ünïcödé 你好 {{ not jinja }} {% raw %} 'quotes' \"too\""}],
                           "user"),
}
CUSTOM = {"custom": [{"code": "S15", "name": "Patient Records",
                      "description": "Content that reveals an identifiable patient's medical records."}]}


@pytest.fixture(scope="module")
def template_8b():
    return ChatTemplate(guard_kit.template("8b"))


@pytest.fixture(scope="module")
def template_1b():
    return ChatTemplate(guard_kit.template("1b"))


def _parts(messages):
    return [{"role": m["role"], "content": [{"type": "text", "text": m["content"]}]} for m in messages]


# ---------------------------------------------------------------- the prompt text, against Llama Guard 3's templates


@pytest.mark.parametrize("name", list(CONVERSATIONS))
def test_guard_text_is_llama_guard_3_8b_prompt(template_8b, name):
    messages, role = CONVERSATIONS[name]
    expected = guard_kit.header_body(template_8b.render(messages))
    assert guard_text(check_messages(messages, role), role, list(LLAMA_GUARD_3)) == expected
    who = "User" if role == "user" else "Agent"
    assert f"in '{who}' messages" in expected and f"ONLY THE LAST {who} message" in expected  # the template's own choice


@pytest.mark.parametrize("name", ["prompt", "response", "surrounding_space"])
def test_guard_text_is_llama_guard_3_1b_prompt(template_1b, name):
    """1B lists 13 categories (no S14) and reads content as text parts; the text between the headers is the same."""
    messages, role = CONVERSATIONS[name]
    expected = guard_kit.header_body(template_1b.render(_parts(messages)))
    assert guard_text(check_messages(messages, role), role, list(LLAMA_GUARD_3[:13])) == expected


def test_custom_category_is_listed_with_its_description():
    policy = parse_policy(CUSTOM)
    text = guard_text(check_messages(PROMPT, "user"), "user", list(policy.categories))
    assert ("S14: Code Interpreter Abuse.\nS15: Patient Records. \nContent that reveals an identifiable patient's "
            "medical records.\n<END UNSAFE CONTENT CATEGORIES>") in text
    assert "S1: Violent Crimes.\n" in text  # Llama Guard's own by name only, as its templates list them


def test_native_template_is_recognised(template_8b, template_1b):
    assert native_template(template_8b.source) and native_template(template_1b.source)
    assert not native_template(ChatTemplate(None).source) and not native_template(None)


# ---------------------------------------------------------------- the conversation's shape


def test_check_messages_gives_llama_guard_shape(template_8b):
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "assistant", "content": "Hi! How can I help?"},  # a greeting before the user speaks
        {"role": "user", "content": "First part. "},
        {"role": "user", "content": " Second part."},
        {"role": "tool", "content": "{}"},
        {"role": "assistant", "content": "An answer."},
    ]
    turns = check_messages(messages, "assistant")
    assert turns == [{"role": "user", "content": "First part.\n\nSecond part."},
                     {"role": "assistant", "content": "An answer."}]
    template_8b.render(turns)  # alternating from the user's: the template takes it (it raises otherwise)


@pytest.mark.parametrize("messages,role,needle", [
    ([{"role": "user", "content": "hi"}], "system", "use user or assistant"),
    ([{"role": "user", "content": "hi"}], "assistant", "must end with a assistant message"),
    (EXCHANGE, "user", "must end with a user message"),
    ([{"role": "user", "content": "  \n"}], "user", "the input is empty"),
    ([{"role": "system", "content": "x"}], "user", "the input is empty"),
    ([], "user", "the input is empty"),
    ([{"role": "assistant", "content": "A response alone."}], "assistant", "give the user message before it"),
    ([{"role": "user", "content": ["parts"]}], "user", "a text 'content'"),
    (["not a message"], "user", "a text 'content'"),
    ("a string", "user", "a list of messages"),
])
def test_check_messages_refuses(messages, role, needle):
    with pytest.raises(GuardInputError) as e:
        check_messages(messages, role)
    assert needle in str(e.value) and "\n" not in str(e.value)


# ---------------------------------------------------------------- the answer


@pytest.mark.parametrize("answer,unsafe,codes", [
    ("safe", False, ()),
    ("\n\nsafe", False, ()),  # Llama Guard 3's own answer, after its assistant header
    ("Safe\n", False, ()),
    ("unsafe\nS1", True, ("S1",)),
    ("\n\nunsafe\nS1,S10", True, ("S1", "S10")),
    ("unsafe\nS2, S14", True, ("S2", "S14")),
    ("unsafe\n\nS3", True, ("S3",)),  # a blank line between is forgiven
    ("unsafe", True, ()),  # unsafe, no codes: the policy blocks it
    ("unsafe\n", True, ()),
    ("unsafe\nS1,S1,S10,S1", True, ("S1", "S10")),  # each once, in order
    ("UNSAFE\ns1, s12", True, ("S1", "S12")),  # a small model's casing
    ("unsafe\nnone of those", True, ()),
    ("unsafe\nS7\nS9", True, ("S7",)),  # the codes are the second line's
    ("", None, ()),
    ("  \n\n ", None, ()),
    ("I cannot answer that.", None, ()),
    ("safety first", None, ()),
    ("unsafe S1", None, ()),  # not the format: no guess
])
def test_parse_answer(answer, unsafe, codes):
    a = parse_answer(answer)
    assert (a.unsafe, a.codes) == (unsafe, codes)


# ---------------------------------------------------------------- a native Llama Guard model (tiny, random weights)


@pytest.fixture(scope="module")
def guard_8b(tmp_path_factory):
    """A tiny guard carrying Llama Guard 3 8B's template, as `hearth guard` loads it, and the plain reference path."""
    path = guard_kit.write_guard_gguf(tmp_path_factory.mktemp("guard") / "guard-8b.gguf", guard_kit.template("8b"))
    return load(str(path)), load(str(path), dtype="float32")


@torch.inference_mode()
def _score_by_hand(model, ids: list[int], unsafe_id: int, safe_id: int) -> float:
    """P(unsafe) / (P(unsafe) + P(safe)) at the next token of a plain forward pass over `ids`."""
    logits = model(torch.tensor([ids]))[0, -1].double()
    u, s = logits[unsafe_id].item(), logits[safe_id].item()
    return 1 / (1 + math.exp(s - u))


def test_native_guard_prompt(guard_8b):
    lm, _ = guard_8b
    fmt = GuardFormat(lm.tokenizer, lm.chat_template, Policy(), 1024)
    assert fmt.native and not fmt.text_parts
    messages, role = CONVERSATIONS["response"]
    rendered = fmt.render(check_messages(messages, role), role)
    assert rendered == ChatTemplate(guard_kit.template("8b")).render(messages)
    ids, dropped = fmt.prompt_ids(messages, role)
    tok = lm.tokenizer
    assert dropped == 0 and ids[0] == tok.bos_id  # <|begin_of_text|> as its special id
    # the answer's shared lead ("\n\n", after <|end_header_id|>) is fed with the prompt; the next token is scored
    lead = tok.encode("\n\n", add_bos=False)
    assert fmt.lead_ids == lead and ids == tok.encode(rendered, add_bos=False) + lead
    safe, unsafe = tok.encode("\n\nsafe", add_bos=False), tok.encode("\n\nunsafe", add_bos=False)
    assert (fmt.safe_id, fmt.unsafe_id) == (safe[len(lead)], unsafe[len(lead)]) and fmt.safe_id != fmt.unsafe_id


def test_native_guard_scores_as_the_plain_model(guard_8b):
    """The parity check: classify on the engine (fast path, paged KV, prefix cache, batched) scores each item as a
    plain forward pass of the reference model over the same prompt ids."""
    lm, ref = guard_8b
    fmt = GuardFormat(lm.tokenizer, lm.chat_template, Policy(), 1024)
    items = [CONVERSATIONS[n] for n in ("prompt", "response", "third_turn")] + [CONVERSATIONS["prompt"]]
    engine = LLMEngine(lm, EngineConfig(max_num_seqs=4, max_num_batched_tokens=256, kv_cache_bytes=16 << 20))
    done = []
    verdicts = classify(engine, fmt, items, on_done=done.append, window=2)
    assert len(verdicts) == len(items) and sum(done) == len(items)
    for (messages, role), v in zip(items, verdicts):
        ids, _ = fmt.prompt_ids(messages, role)
        assert isinstance(v, Verdict) and 0 <= v.score <= 1
        assert v.score == pytest.approx(_score_by_hand(ref.model, ids, fmt.unsafe_id, fmt.safe_id), abs=1e-5)
        assert v.unsafe == (v.score >= 0.5) and v.action == ("block" if v.unsafe else "allow")
    assert verdicts[0].score == verdicts[3].score  # the same prompt, served from the prefix cache
    assert len({round(v.score, 9) for v in verdicts[:3]}) == 3  # each prompt is its own


def test_native_8b_fixes_its_categories(guard_8b):
    lm, _ = guard_8b
    with pytest.raises(GuardTemplateError) as e:
        GuardFormat(lm.tokenizer, lm.chat_template, parse_policy(CUSTOM), 1024)
    assert "does not list S15" in str(e.value) and "use a policy with only those" in str(e.value)
    assert "\n" not in str(e.value)
    # a subset of its 14 is fine: the template still lists all 14, and the policy allows what it leaves out
    fmt = GuardFormat(lm.tokenizer, lm.chat_template, parse_policy({"enabled": ["S1", "S10"]}), 1024)
    assert fmt.policy.decide(True, ("S6",)) == "allow" and fmt.policy.decide(True, ("S6", "S10")) == "block"


def test_native_1b_takes_the_policy_categories(guard_8b, template_1b):
    """Llama Guard 3 1B's template lists the categories it is given and reads text parts (given a plain text it
    would silently show no conversation)."""
    lm, _ = guard_8b
    policy = parse_policy({**CUSTOM, "enabled": ["S1", "S6", "S14"]})
    fmt = GuardFormat(lm.tokenizer, template_1b, policy, 1024)
    assert fmt.native and fmt.text_parts
    messages, role = CONVERSATIONS["response"]
    body = guard_kit.header_body(fmt.render(check_messages(messages, role), role))
    s14 = next(c for c in LLAMA_GUARD_3 if c.code == "S14")
    expected = ("<BEGIN UNSAFE CONTENT CATEGORIES>\nS1: Violent Crimes.\nS6: Specialized Advice.\n"
                # S14 is not one of the 13 1B was trained on: it carries its description, as a custom category does
                f"S14: Code Interpreter Abuse. \n{s14.description}\n"
                "S15: Patient Records. \nContent that reveals an identifiable patient's medical records.\n"
                "<END UNSAFE CONTENT CATEGORIES>")
    assert expected in body
    assert body.endswith("<BEGIN CONVERSATION>\n\nUser: How do I bake sourdough bread?\n\nAgent: Mix flour, water "
                         "and starter, then let it rise overnight.\n\n<END CONVERSATION>\n\nProvide your safety "
                         "assessment for ONLY THE LAST Agent message in the above conversation:\n - First line must "
                         "read 'safe' or 'unsafe'.\n - If unsafe, a second line must include a comma-separated list "
                         "of violated categories.")
    # the default policy's 13 categories it knows: by name, exactly the template's own prompt
    fmt13 = GuardFormat(lm.tokenizer, template_1b, parse_policy({"enabled": [f"S{i}" for i in range(1, 14)]}), 1024)
    assert fmt13.render(check_messages(messages, role), role) == template_1b.render(_parts(messages))


def test_template_without_the_conversation_is_refused(guard_8b):
    lm, _ = guard_8b
    blind = ChatTemplate("{{ '<BEGIN UNSAFE CONTENT CATEGORIES>\\nS1: Violent Crimes.\\n' }}")
    with pytest.raises(GuardTemplateError, match="shows no conversation"):
        GuardFormat(lm.tokenizer, blind, parse_policy({"enabled": ["S1"]}), 1024)


def test_tokenizer_that_cannot_tell_safe_from_unsafe():
    words = Tokenizer.placeholder(16)  # every word outside t0..t15 is t0: 'safe' and 'unsafe' are one token
    with pytest.raises(GuardTemplateError, match="does not tell 'safe' from 'unsafe'"):
        GuardFormat(words, ChatTemplate(None), Policy(), 256)


# ---------------------------------------------------------------- a chat model tuned as a guard (not native)


@pytest.fixture(scope="module")
def guard_chatml(tmp_path_factory):
    path = guard_kit.write_guard_gguf(tmp_path_factory.mktemp("guard") / "guard-chatml.gguf",
                                      guard_kit.template_chatml(), llama3=False)
    return load(str(path)), load(str(path), dtype="float32")


def test_tuned_chat_model_reads_the_guard_text_as_its_user_message(guard_chatml):
    lm, ref = guard_chatml
    policy = parse_policy(CUSTOM)  # a tuned guard takes any category: it reads their text
    fmt = GuardFormat(lm.tokenizer, lm.chat_template, policy, 2048)
    assert not fmt.native and fmt.lead_ids == [] and fmt.safe_id != fmt.unsafe_id
    assert fmt.safe_id == lm.tokenizer.encode("safe")[0] and fmt.unsafe_id == lm.tokenizer.encode("unsafe")[0]
    messages, role = CONVERSATIONS["response"]
    text = guard_text(check_messages(messages, role), role, list(policy.categories))
    assert fmt.render(check_messages(messages, role), role) == f"<|im_start|>user\n{text}<|im_end|>\n<|im_start|>assistant\n"
    engine = LLMEngine(lm, EngineConfig(max_num_seqs=2, kv_cache_bytes=16 << 20))
    [v] = classify(engine, fmt, [(messages, role)])
    ids, _ = fmt.prompt_ids(messages, role)
    assert 0 <= v.score <= 1
    assert v.score == pytest.approx(_score_by_hand(ref.model, ids, fmt.unsafe_id, fmt.safe_id), abs=1e-5)
    out = v.to_json()
    assert set(out) == {"flagged", "categories", "score"} and out["flagged"] == (v.action != "allow")
    assert isinstance(out["categories"], list) and isinstance(out["score"], float)


def test_verdict_from_answer_and_scores(guard_chatml):
    lm, _ = guard_chatml
    policy = parse_policy({"threshold": 0.7, "actions": {"S6": "allow", "S12": "flag"}})
    fmt = GuardFormat(lm.tokenizer, lm.chat_template, policy, 2048)

    def scores(p_unsafe):
        return {fmt.unsafe_id: math.log(p_unsafe), fmt.safe_id: math.log(1 - p_unsafe)}

    v = fmt.verdict("unsafe\nS6", scores(0.9))
    assert (v.unsafe, v.categories, v.action) == (True, ("S6",), "allow") and v.score == pytest.approx(0.9)
    assert v.to_json() == {"flagged": False, "categories": ["S6"], "score": 0.9}
    assert fmt.verdict("unsafe\nS12,S6", scores(0.8)).action == "flag"
    assert fmt.verdict("unsafe\nS1,S12", scores(0.8)).action == "block"
    below = fmt.verdict("unsafe\nS1", scores(0.6))  # under the policy's threshold: safe, whatever greedy wrote
    assert (below.unsafe, below.categories, below.action) == (False, (), "allow")
    odd = fmt.verdict("safe", scores(0.95))  # scored unsafe, answered safe: no codes, so blocked
    assert (odd.unsafe, odd.categories, odd.action) == (True, (), "block")
    with pytest.raises(HearthError, match="no first-token scores"):
        fmt.verdict("safe", None)


# ---------------------------------------------------------------- truncation to the guard's context


@pytest.fixture(scope="module")
def tokenizer_8b(guard_8b):
    return guard_8b[0].tokenizer


def _instructions_tokens(fmt) -> int:
    return len(fmt.prompt_ids([{"role": "user", "content": "x"}], "user")[0])


def test_long_conversation_keeps_its_latest_turns(tokenizer_8b, template_8b):
    fmt = GuardFormat(tokenizer_8b, template_8b, Policy(), 10_000)
    messages = [{"role": "user" if i % 2 == 0 else "assistant",
                 "content": f"turn{i} " + "the quick brown fox jumps over the lazy dog " * 2} for i in range(9)]
    turn = len(tokenizer_8b.encode(f"Agent: {messages[1]['content'].strip()}\n\n", add_bos=False))
    fmt.max_len = _instructions_tokens(fmt) + ANSWER_TOKENS + 4 * turn  # room for the last three turns, not five
    ids, dropped = fmt.prompt_ids(messages, "user")
    text = tokenizer_8b.decode(ids, skip_special=False)
    assert dropped == 6  # whole exchanges, so the first kept turn is the user's
    assert len(ids) <= fmt.max_len - ANSWER_TOKENS
    assert all((f"turn{i} " in text) == (i >= dropped) for i in range(9))
    assert f"User: turn{dropped} " in text.split("<BEGIN CONVERSATION>\n\n")[1][:20]
    # and no more than needed: the exchange before would not have fit
    one_more = fmt.render(check_messages(messages[dropped - 2:], "user"), "user")
    assert len(tokenizer_8b.encode(one_more, add_bos=False)) + len(fmt.lead_ids) > fmt.max_len - ANSWER_TOKENS


@pytest.mark.parametrize("unit", ["the quick brown fox jumps over the lazy dog. ", "你好，世界。"])
def test_huge_message_keeps_its_beginning_and_end(tokenizer_8b, template_8b, unit):
    """~2 characters a token of English with the tiny vocabulary, ~1/3 of Chinese (3 byte pieces a character): the
    cut follows the message's own density, not a fixed guess."""
    fmt = GuardFormat(tokenizer_8b, template_8b, Policy(), 10_000)
    base = _instructions_tokens(fmt)
    fmt.max_len = base + ANSWER_TOKENS + 200
    huge = "BEGINNING-MARK " + unit * 20_000 + " END-MARK"
    ids, dropped = fmt.prompt_ids([{"role": "user", "content": huge}], "user")
    text = tokenizer_8b.decode(ids, skip_special=False)
    assert dropped == 0 and len(ids) <= fmt.max_len - ANSWER_TOKENS
    assert f"User: BEGINNING-MARK {unit[:4]}" in text and f"{unit[-4:]} END-MARK\n\n<END CONVERSATION>" in text
    assert " … " in text and len(ids) - base > 100  # cut to fit, not to nothing: most of its room is used


def test_response_keeps_the_prompt_it_answers(tokenizer_8b, template_8b):
    fmt = GuardFormat(tokenizer_8b, template_8b, Policy(), 10_000)
    fmt.max_len = _instructions_tokens(fmt) + ANSWER_TOKENS + 150
    messages = [{"role": "user", "content": "an old question"}, {"role": "assistant", "content": "an old answer"},
                {"role": "user", "content": "Summarise the report."},
                {"role": "assistant", "content": "START " + "lorem ipsum dolor sit amet " * 3000 + " FINISH"}]
    ids, dropped = fmt.prompt_ids(messages, "assistant")
    text = tokenizer_8b.decode(ids, skip_special=False)
    assert dropped == 2 and len(ids) <= fmt.max_len - ANSWER_TOKENS
    assert "User: Summarise the report.\n\nAgent: START lorem" in text and "amet  FINISH\n\n<END" in text
    assert "ONLY THE LAST Agent message" in text


def test_instructions_larger_than_the_context(tokenizer_8b, template_8b):
    fmt = GuardFormat(tokenizer_8b, template_8b, Policy(), 10_000)
    fmt.max_len = _instructions_tokens(fmt)  # the instructions fit, the answer does not
    with pytest.raises(HearthError) as e:
        fmt.prompt_ids(PROMPT, "user")
    assert f"context ({fmt.max_len} tokens) cannot hold its own instructions" in str(e.value)
    assert "\n" not in str(e.value)
