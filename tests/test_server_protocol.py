"""The HTTP server against a fake engine (tests/fake_engine.py): schemas, OpenAI semantics, every error
status with its OpenAI-style body, metrics, and aborting engine requests when a client goes away.

No model is loaded, so these run in seconds; tests/test_server_openai.py drives the real server.
"""

from __future__ import annotations

import json
import socket
import threading
import time

import httpx
import pytest
import uvicorn
from fastapi.testclient import TestClient

from fake_engine import FakeEngine
from hearth.server.app import build_app
from hearth.server.common import ServerContext

CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"
HELLO = [{"role": "user", "content": "Hello there"}]
TOOL = {"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {}}}}


@pytest.fixture(scope="module")
def engine():
    return FakeEngine(max_model_len=256, max_waiting=8)


@pytest.fixture(scope="module")
def app(engine):
    return build_app(engine, served_model_name="tiny-model", max_body_bytes=4096)


@pytest.fixture(scope="module")
def client(app):
    with TestClient(app) as c:
        yield c


@pytest.fixture(autouse=True)
def fresh(engine, app):
    """Each test starts with default fake-engine behaviour and an open server."""
    engine.settings.__init__()
    engine.max_waiting = 8
    engine.alive = True
    app.state.draining = False
    engine.requests.clear()
    engine.aborted.clear()
    yield
    assert not engine.active, "a request was left running in the engine"


def sse_events(text: str) -> list:
    events = []
    for block in text.split("\n\n"):
        if block.strip():
            assert block.startswith("data: "), block
            data = block[len("data: "):]
            events.append(data if data == "[DONE]" else json.loads(data))
    return events


def assert_error(r: httpx.Response, status: int, param: str | None = "", contains: str = "") -> dict:
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}, body
    assert body["error"]["message"], body
    if param != "":
        assert body["error"]["param"] == param, body
    assert contains.lower() in body["error"]["message"].lower(), body
    return body["error"]


def still_serving(client) -> None:
    r = client.post(CHAT, json={"messages": HELLO, "max_tokens": 2})
    assert r.status_code == 200, r.text


# ------------------------------------------------------------------------------------------ chat


def test_chat_completion_shape_and_usage(client, engine):
    r = client.post(CHAT, json={"model": "tiny-model", "messages": HELLO, "max_tokens": 5, "temperature": 0})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "chat.completion" and body["id"].startswith("chatcmpl-")
    assert body["model"] == "tiny-model"
    (choice,) = body["choices"]
    assert choice["index"] == 0 and choice["message"]["role"] == "assistant"
    assert choice["finish_reason"] == "length" and choice["logprobs"] is None
    req = engine.requests[-1]
    expected_prompt = engine.tokenizer.encode(engine.chat_template.render(HELLO), add_bos=False)
    assert req.prompt_ids == expected_prompt
    assert body["usage"] == {"prompt_tokens": len(expected_prompt), "completion_tokens": 5,
                             "total_tokens": len(expected_prompt) + 5, "prompt_tokens_details": {"cached_tokens": 0}}
    assert body["system_fingerprint"].startswith("fp_")
    assert req.params.temperature == 0 and req.params.max_tokens == 5


def test_chat_default_max_tokens_is_the_rest_of_the_context(client, engine):
    r = client.post(CHAT, json={"messages": HELLO, "temperature": 0})
    assert r.status_code == 200
    req = engine.requests[-1]
    assert req.params.max_tokens == engine.max_model_len - len(req.prompt_ids)


def test_max_completion_tokens_wins_over_max_tokens(client, engine):
    client.post(CHAT, json={"messages": HELLO, "max_tokens": 9, "max_completion_tokens": 3})
    assert engine.requests[-1].params.max_tokens == 3


def test_openai_defaults_reach_the_sampler(client, engine):
    client.post(CHAT, json={"messages": HELLO, "max_tokens": 2})
    p = engine.requests[-1].params
    assert (p.temperature, p.top_p, p.top_k, p.seed, p.stop) == (1.0, 1.0, 0, None, ())
    client.post(CHAT, json={"messages": HELLO, "max_tokens": 2, "temperature": 0.5, "top_p": 0.9, "seed": 3,
                            "stop": "x", "presence_penalty": 0.5, "frequency_penalty": -0.5, "top_k": -1,
                            "min_p": 0.1, "repetition_penalty": 1.1})
    p = engine.requests[-1].params
    assert (p.temperature, p.top_p, p.seed, p.stop, p.presence_penalty, p.frequency_penalty) == (0.5, 0.9, 3, ("x",), 0.5, -0.5)
    assert (p.top_k, p.min_p, p.repetition_penalty) == (0, 0.1, 1.1)
    client.post(CHAT, json={"messages": HELLO, "max_tokens": 2, "stop": ["a", "bc", ""]})
    assert engine.requests[-1].params.stop == ("a", "bc")


def test_content_parts_and_developer_role_render_like_plain_messages(client, engine):
    client.post(CHAT, json={"messages": [{"role": "developer", "content": "Be brief."},
                                         {"role": "user", "content": [{"type": "text", "text": "Hi"},
                                                                      {"type": "text", "text": "there"}]}],
                            "max_tokens": 1})
    parts = engine.requests[-1].prompt_ids
    client.post(CHAT, json={"messages": [{"role": "system", "content": "Be brief."},
                                         {"role": "user", "content": "Hi\nthere"}], "max_tokens": 1})
    assert engine.requests[-1].prompt_ids == parts


def test_n_gives_distinct_requests_and_consecutive_seeds(client, engine):
    r = client.post(CHAT, json={"messages": HELLO, "max_tokens": 4, "n": 3, "seed": 10, "temperature": 1})
    assert r.status_code == 200
    body = r.json()
    assert [c["index"] for c in body["choices"]] == [0, 1, 2]
    reqs = engine.requests[-3:]
    assert len({q.request_id for q in reqs}) == 3
    assert [q.params.seed for q in reqs] == [10, 11, 12]
    assert body["usage"]["completion_tokens"] == 12
    assert body["usage"]["prompt_tokens"] == len(reqs[0].prompt_ids)  # counted once, as OpenAI does


def test_seed_reproduces(client):
    body = {"messages": HELLO, "max_tokens": 8, "seed": 1234, "temperature": 1.0}
    a, b = (client.post(CHAT, json=body).json() for _ in range(2))
    assert a["choices"][0]["message"]["content"] == b["choices"][0]["message"]["content"]


def test_chat_logprobs_format(client, engine):
    r = client.post(CHAT, json={"messages": HELLO, "max_tokens": 3, "logprobs": True, "top_logprobs": 2, "temperature": 0})
    content = r.json()["choices"][0]["logprobs"]["content"]
    assert engine.requests[-1].logprobs == 2
    assert len(content) == 3
    for entry in content:
        assert set(entry) == {"token", "logprob", "bytes", "top_logprobs"}
        assert len(entry["top_logprobs"]) == 2
        assert entry["top_logprobs"][0]["token"] == entry["token"]
    # each token's own bytes: together they are the content's, also where a token holds part of a character
    choice = r.json()["choices"][0]
    assert b"".join(bytes(e["bytes"]) for e in content).decode("utf-8", errors="replace") == choice["message"]["content"]
    r = client.post(CHAT, json={"messages": HELLO, "max_tokens": 2, "logprobs": True})
    assert all(e["top_logprobs"] == [] for e in r.json()["choices"][0]["logprobs"]["content"])


def test_logprob_tokens_that_split_a_character(client, engine):
    """Byte-level tokens holding part of a UTF-8 character: `bytes` are theirs, their names OpenAI's "bytes:\\x.."
    form (distinct keys in top_logprobs), and text_offset counts characters of the text."""
    tok = engine.tokenizer
    text = "I love 🙂 and 日本語 🦜 too"
    ids = tok.encode(text)
    partial = [i for i in ids if "\ufffd" in tok.decode([i])]
    assert len(partial) >= 2  # the tiny tokenizer splits these characters into byte pieces
    r = client.post(COMPLETIONS, json={"prompt": ids, "max_tokens": 0, "echo": True, "logprobs": 1})
    lp = r.json()["choices"][0]["logprobs"]
    for i, t in zip(ids, lp["tokens"]):
        if i in partial:
            raw = tok.token_bytes(i)
            assert t == "bytes:" + "".join(f"\\x{b:02x}" for b in raw)
    assert len(set(lp["tokens"][j] for j, i in enumerate(ids) if i in partial)) == len(set(partial))
    offsets = lp["text_offset"]
    assert offsets == sorted(offsets) and offsets[-1] < len(text)
    for n in range(len(ids)):
        prefix = tok.decode(ids[:n])
        if "\ufffd" not in prefix:  # a whole number of characters: the offset is exactly its length
            assert offsets[n] == len(prefix), n
    assert text[offsets[-1]:] == tok.decode(ids[-1:])


def test_finish_reason_stop_on_eos(client, engine):
    engine.settings.eos_after = 3
    r = client.post(CHAT, json={"messages": HELLO, "max_tokens": 10})
    body = r.json()
    assert body["choices"][0]["finish_reason"] == "stop"
    assert body["usage"]["completion_tokens"] == 3


def test_chat_stream_order_and_usage(client):
    r = client.post(CHAT, json={"messages": HELLO, "max_tokens": 6, "temperature": 0, "stream": True,
                                "stream_options": {"include_usage": True}})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    events = sse_events(r.text)
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert len({c["id"] for c in chunks}) == 1
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    finals = [c for c in chunks if c["choices"] and c["choices"][0]["finish_reason"]]
    assert len(finals) == 1 and finals[0]["choices"][0]["finish_reason"] == "length"
    usage_chunk = chunks[-1]
    assert usage_chunk["choices"] == [] and usage_chunk["usage"]["completion_tokens"] == 6
    assert all(c["usage"] is None for c in chunks[:-1])
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    whole = client.post(CHAT, json={"messages": HELLO, "max_tokens": 6, "temperature": 0}).json()
    assert text == whole["choices"][0]["message"]["content"]


def test_chat_stream_without_usage_has_no_usage_field(client):
    chunks = sse_events(client.post(CHAT, json={"messages": HELLO, "max_tokens": 2, "stream": True}).text)[:-1]
    assert all("usage" not in c for c in chunks)


def test_chat_stream_n2_has_both_indices(client):
    events = sse_events(client.post(CHAT, json={"messages": HELLO, "max_tokens": 3, "n": 2, "stream": True}).text)
    finals = sorted(c["choices"][0]["index"] for c in events[:-1] if c["choices"][0]["finish_reason"])
    assert finals == [0, 1]


def test_stop_string_is_cut(client, engine):
    whole = client.post(CHAT, json={"messages": HELLO, "max_tokens": 12, "temperature": 0}).json()
    text = whole["choices"][0]["message"]["content"]
    stop = text[4:6]
    cut = client.post(CHAT, json={"messages": HELLO, "max_tokens": 12, "temperature": 0, "stop": [stop]}).json()
    assert cut["choices"][0]["message"]["content"] == text[: text.index(stop)]
    assert cut["choices"][0]["finish_reason"] == "stop"


def test_error_after_stream_started_is_an_event(client, engine):
    engine.settings.fail_midway = RuntimeError("boom")
    events = sse_events(client.post(CHAT, json={"messages": HELLO, "max_tokens": 5, "stream": True}).text)
    assert events[-1] == "[DONE]"
    assert events[-2]["error"]["type"] == "server_error"
    assert engine.aborted  # the unfinished request was aborted


# ----------------------------------------------------------------------------------- completions


def test_completion_string_prompt_uses_the_tokenizer(client, engine):
    r = client.post(COMPLETIONS, json={"prompt": "Once upon a time", "temperature": 0})
    assert r.status_code == 200
    body = r.json()
    assert body["object"] == "text_completion" and body["id"].startswith("cmpl-")
    assert engine.requests[-1].prompt_ids == engine.tokenizer.encode("Once upon a time")
    assert engine.requests[-1].params.max_tokens == 16  # OpenAI's default
    assert body["usage"]["completion_tokens"] == 16 and body["choices"][0]["logprobs"] is None


def test_completion_prompt_forms_and_choice_indices(client, engine):
    r = client.post(COMPLETIONS, json={"prompt": ["a b", "c d"], "max_tokens": 2, "n": 2})
    assert [c["index"] for c in r.json()["choices"]] == [0, 1, 2, 3]
    assert [q.prompt_ids for q in engine.requests[-4:]] == [engine.tokenizer.encode("a b")] * 2 + [engine.tokenizer.encode("c d")] * 2
    client.post(COMPLETIONS, json={"prompt": [0, 7, 9], "max_tokens": 1})
    assert engine.requests[-1].prompt_ids == [0, 7, 9]  # verbatim: no BOS added, nothing re-tokenized
    r = client.post(COMPLETIONS, json={"prompt": [[5, 6], [7]], "max_tokens": 1})
    assert [q.prompt_ids for q in engine.requests[-2:]] == [[5, 6], [7]]
    assert r.json()["usage"]["prompt_tokens"] == 3


def test_echo_logprobs_with_zero_max_tokens_scores_the_prompt(client, engine):
    ids = [12, 40, 77, 150, 9]
    r = client.post(COMPLETIONS, json={"prompt": ids, "max_tokens": 0, "echo": True, "logprobs": 1, "temperature": 0})
    assert r.status_code == 200, r.text
    body = r.json()
    (choice,) = body["choices"]
    assert engine.requests[-1].prompt_logprobs == 1
    assert choice["text"] == engine.tokenizer.decode(ids)
    lp = choice["logprobs"]
    assert lp["tokens"] == [ServerContext(engine, ("m",), None).token_str(t) for t in ids]
    assert lp["token_logprobs"][0] is None and lp["top_logprobs"][0] is None
    assert lp["token_logprobs"][1:] == pytest.approx([-1.0 - 0.01 * i for i in range(4)])
    assert all(lp["tokens"][i] in lp["top_logprobs"][i] for i in range(1, 5))  # the actual token is listed
    assert lp["text_offset"] == [len(engine.tokenizer.decode(ids[:i], skip_special=False).rstrip("\ufffd")) for i in range(5)]
    assert body["usage"] == {"prompt_tokens": 5, "completion_tokens": 0, "total_tokens": 5,
                             "prompt_tokens_details": {"cached_tokens": 0}}


def test_echo_logprobs_covers_prompt_then_generated(client):
    ids = [12, 40, 77]
    r = client.post(COMPLETIONS, json={"prompt": ids, "max_tokens": 2, "echo": True, "logprobs": 2, "temperature": 0})
    choice = r.json()["choices"][0]
    lp = choice["logprobs"]
    assert len(lp["tokens"]) == len(lp["token_logprobs"]) == len(lp["top_logprobs"]) == 5
    assert lp["token_logprobs"][0] is None and all(isinstance(x, float) for x in lp["token_logprobs"][1:])
    assert choice["text"].startswith("".join(lp["tokens"][:3]))


def test_completion_logprobs_without_echo(client):
    choice = client.post(COMPLETIONS, json={"prompt": "hi", "max_tokens": 3, "logprobs": 0}).json()["choices"][0]
    lp = choice["logprobs"]
    assert len(lp["tokens"]) == 3 and lp["text_offset"][0] == 0
    assert all(len(top) == 1 and tok in top for tok, top in zip(lp["tokens"], lp["top_logprobs"]))


def test_return_tokens_as_token_ids(client, engine):
    body = {"prompt": [5, 6], "max_tokens": 2, "echo": True, "logprobs": 1, "return_tokens_as_token_ids": True}
    lp = client.post(COMPLETIONS, json=body).json()["choices"][0]["logprobs"]
    assert lp["tokens"][:2] == ["token_id:5", "token_id:6"]
    assert all(t.startswith("token_id:") for top in lp["top_logprobs"][1:] for t in top)
    r = client.post(CHAT, json={"messages": HELLO, "max_tokens": 2, "logprobs": True, "top_logprobs": 1,
                                "return_tokens_as_token_ids": True})
    entry = r.json()["choices"][0]["logprobs"]["content"][0]
    assert entry["token"].startswith("token_id:")
    assert entry["bytes"] == list(engine.tokenizer.token_bytes(int(entry["token"].split(":")[1])))  # the token's own


def test_completion_stream_with_echo_and_usage(client, engine):
    ids = [30, 31, 32]
    events = sse_events(client.post(COMPLETIONS, json={
        "prompt": ids, "max_tokens": 4, "echo": True, "stream": True, "stream_options": {"include_usage": True},
    }).text)
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 4
    text = "".join(c["choices"][0]["text"] for c in chunks[:-1])
    assert text.startswith(engine.tokenizer.decode(ids))
    assert chunks[-2]["choices"][0]["finish_reason"] == "length"


def test_harmless_fields_are_accepted(client):
    r = client.post(CHAT, json={"messages": HELLO, "max_tokens": 1, "user": "u1", "store": False, "metadata": {"a": "b"},
                                "response_format": {"type": "text"}, "tools": [], "tool_choice": "none",
                                "logit_bias": {}, "parallel_tool_calls": False, "service_tier": "auto"})
    assert r.status_code == 200, r.text
    r = client.post(COMPLETIONS, json={"prompt": "x", "max_tokens": 1, "user": "u1", "best_of": 1, "suffix": None})
    assert r.status_code == 200, r.text


# ------------------------------------------------------------------------------------------ errors

BAD_REQUESTS = [
    # (path, body, param, words in the message)
    (CHAT, {"messages": HELLO, "temperature": 3}, "temperature", "less than or equal to 2"),
    (CHAT, {"messages": HELLO, "temperature": "0.5"}, "temperature", "number"),
    (CHAT, {"messages": HELLO, "top_p": 0}, "top_p", "greater than 0"),
    (CHAT, {"messages": HELLO, "n": 0}, "n", "greater than or equal to 1"),
    (CHAT, {"messages": HELLO, "n": 1.5}, "n", "integer"),
    (CHAT, {"messages": HELLO, "stream": "yes"}, "stream", "boolean"),
    (CHAT, {"messages": HELLO, "max_tokens": 0}, "max_tokens", ""),
    (CHAT, {"messages": HELLO, "seed": -1}, "seed", ""),
    (CHAT, {"messages": HELLO, "presence_penalty": 2.5}, "presence_penalty", ""),
    (CHAT, {"messages": HELLO, "top_logprobs": 21, "logprobs": True}, "top_logprobs", ""),
    (CHAT, {"messages": HELLO, "top_logprobs": 2}, "top_logprobs", "logprobs"),
    (CHAT, {"messages": HELLO, "stream_options": {"include_usage": True}}, "stream_options", "stream"),
    (CHAT, {"messages": HELLO, "audio": {"voice": "alloy", "format": "wav"}}, "audio", "no audio output"),
    (CHAT, {"messages": HELLO, "modalities": ["text", "audio"]}, "modalities", "only text"),
    (CHAT, {"messages": HELLO, "function_call": 3}, "function_call", "'none', 'auto'"),
    (CHAT, {"messages": HELLO + [{"role": "assistant", "content": "Hi"}], "continue_final_message": True},
     "continue_final_message", "add_generation_prompt false"),
    (CHAT, {"messages": HELLO, "continue_final_message": True, "add_generation_prompt": False},
     "continue_final_message", "the assistant's"),
    (CHAT, {"messages": HELLO, "chat_template_kwargs": {"messages": []}}, "chat_template_kwargs", "cannot set"),
    (CHAT, {"messages": [{"role": "user", "content": "x", "colour": "red"}]}, "messages.0.colour", "unsupported"),
    (CHAT, {"messages": []}, "messages", "at least one message"),
    (CHAT, {"messages": "hello"}, "messages", ""),
    (CHAT, {"messages": [{"role": "user"}]}, "messages.0.content", "content"),
    (CHAT, {"messages": [{"role": "function", "content": "x"}]}, "messages.0.role", ""),
    (CHAT, {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]},
     "messages.0.content", "only text"),
    (CHAT, {"messages": HELLO, "tools": [{"type": "function"}]}, "tools.0.function", "required"),
    (CHAT, {"messages": HELLO, "tools": [{"type": "function", "function": {"name": "a b"}}]}, "tools.0.function.name", ""),
    (CHAT, {"messages": HELLO, "tools": [TOOL, TOOL]}, "tools", "unique"),
    (CHAT, {"messages": HELLO, "tool_choice": "required"}, "tool_choice", "needs tools"),
    (CHAT, {"messages": HELLO, "tools": [TOOL], "tool_choice": {"type": "function", "function": {"name": "g"}}},
     "tool_choice", "not in tools"),
    (CHAT, {"messages": HELLO, "tools": [TOOL], "tool_choice": "always"}, "tool_choice", ""),
    (CHAT, {"messages": HELLO, "tools": [TOOL], "tool_choice": "required", "response_format": {"type": "json_object"}},
     "tool_choice", "cannot be combined"),
    (CHAT, {"messages": [{"role": "tool", "content": "5"}]}, "messages.0.tool_call_id", "tool_call_id"),
    (CHAT, {"messages": [{"role": "user", "content": "x", "tool_calls": []}]}, "messages.0.tool_calls", "assistant"),
    (CHAT, {"messages": HELLO, "logit_bias": {"five": 10}}, "logit_bias", "token ids"),
    (CHAT, {"messages": HELLO, "logit_bias": {"5": 101}}, "logit_bias", "between -100 and 100"),
    (CHAT, {"messages": HELLO, "logit_bias": {"5": 1, "384": -1}}, "logit_bias", "outside the vocabulary"),
    (COMPLETIONS, {"prompt": "x", "logit_bias": {"-5": 1}}, "logit_bias", "token ids"),
    # digits to str.isdigit but not to int() (was a 500), and other Unicode digits (int() reads them; refused too)
    (CHAT, {"messages": HELLO, "logit_bias": {"²": 1}}, "logit_bias", "token ids"),
    (CHAT, {"messages": HELLO, "logit_bias": {"١٢": 1}}, "logit_bias", "token ids"),
    (CHAT, {"messages": HELLO, "logit_bias": {"9" * 13: 1}}, "logit_bias", "token ids"),
    # JSON given as text or as objects inside a body is at most protocol.MAX_JSON_DEPTH deep (json.loads, json.dumps
    # and templates recurse per level: was a RecursionError, a 500, from about 1000 levels)
    (CHAT, {"messages": HELLO + [{"role": "assistant", "tool_calls": [
        {"id": "c", "type": "function", "function": {"name": "f", "arguments": "[" * 1500}}]}]},
     "messages.1.tool_calls.0.function.arguments", "nested 1500 levels deep"),
    (COMPLETIONS, {"prompt": "x", "guided_json": "[" * 1500}, "guided_json", "nested"),
    (COMPLETIONS, {"prompt": "x", "structured_outputs": {"json": '{"a":' * 200}}, "structured_outputs.json", "nested"),
    (COMPLETIONS, {"prompt": "x", "guided_json": json.loads('{"a":' * 130 + "{}" + "}" * 130)}, "guided_json", "nested 131"),
    (CHAT, {"messages": HELLO, "response_format": {"type": "json_schema", "json_schema": {
        "schema": json.loads('{"a":' * 130 + "{}" + "}" * 130)}}}, "response_format.json_schema.schema", "nested"),
    (CHAT, {"messages": HELLO, "tools": [{"type": "function", "function": {
        "name": "f", "parameters": json.loads('{"a":' * 130 + "{}" + "}" * 130)}}]}, "tools.0.function.parameters", "nested"),
    (CHAT, {}, "messages", "required"),
    (COMPLETIONS, {}, "prompt", "required"),
    (COMPLETIONS, {"prompt": []}, "prompt", "must be"),
    (COMPLETIONS, {"prompt": [1, "a"]}, "prompt", "must be"),
    (COMPLETIONS, {"prompt": [[1], []]}, "prompt", "must be"),
    (COMPLETIONS, {"prompt": [True, False]}, "prompt", "must be"),
    (COMPLETIONS, {"prompt": "x", "max_tokens": -1}, "max_tokens", ""),
    (COMPLETIONS, {"prompt": "x", "logprobs": 21}, "logprobs", ""),
    (COMPLETIONS, {"prompt": "x", "best_of": 3}, "best_of", "not supported"),
    (COMPLETIONS, {"prompt": "x", "suffix": "y"}, "suffix", "not supported"),
    (COMPLETIONS, {"prompt": [5, -1]}, "prompt", "outside the vocabulary"),
    (COMPLETIONS, {"prompt": [[5], [384]]}, "prompt.1", "outside the vocabulary"),
    (COMPLETIONS, {"prompt": ""}, "prompt", "empty"),
    # structured output: malformed specs are refused by the schema (a schema's own validity: test_structured.py)
    (CHAT, {"messages": HELLO, "response_format": {"type": "xml"}}, "response_format.type", ""),
    (CHAT, {"messages": HELLO, "response_format": {"type": "json_schema"}}, "response_format", "needs a json_schema"),
    (CHAT, {"messages": HELLO, "response_format": {"type": "json_object", "json_schema": {"schema": {}}}},
     "response_format", "only allowed with type 'json_schema'"),
    (CHAT, {"messages": HELLO, "response_format": {"type": "json_schema", "json_schema": {"schema": [], "name": "x"}}},
     "response_format.json_schema.schema", ""),
    (COMPLETIONS, {"prompt": "x", "structured_outputs": {"regex": "a", "choice": ["b"]}}, "structured_outputs",
     "exactly one"),
    (COMPLETIONS, {"prompt": "x", "structured_outputs": {"pattern": "a"}}, "structured_outputs.pattern", "unsupported"),
    (COMPLETIONS, {"prompt": "x", "guided_choice": "a"}, "guided_choice", ""),
    (COMPLETIONS, {"prompt": "x", "guided_choice": []}, "", "non-empty list"),
    (COMPLETIONS, {"prompt": "x", "guided_json": "{not json"}, "", "not valid JSON"),
    (COMPLETIONS, {"prompt": "x", "guided_regex": "a", "guided_grammar": "root ::= \"a\""}, "guided_grammar",
     "not guided_regex and guided_grammar"),
]


@pytest.mark.parametrize("path,body,param,words", BAD_REQUESTS, ids=[f"{i}-{b[2]}" for i, b in enumerate(BAD_REQUESTS)])
def test_bad_request_is_400_naming_the_field(client, engine, path, body, param, words):
    err = assert_error(client.post(path, json=body), 400, param, words)
    assert err["type"] == "invalid_request_error"
    assert not engine.requests  # refused before reaching the engine
    still_serving(client)


@pytest.mark.parametrize("raw,words", [
    (b"{not json", "not valid JSON"),
    (b"\xff\xfe{}", "UTF-8"),
    (b"", "empty"),
    (b"[1, 2]", "JSON object"),
    (b'{"prompt": "x", "temperature": NaN}', "NaN"),
    (b'{"prompt": "x", "max_tokens": Infinity}', "Infinity"),
    (b'{"prompt": "\\ud800 x"}', "surrogate"),  # valid JSON, but no Unicode text
    (b'{"model": "\\udfff", "prompt": "x"}', "surrogate"),
    (b'{"prompt": ' + b"[" * 2000 + b"]" * 2000 + b"}", "nested too deeply"),
])
def test_unparseable_bodies_are_400(client, raw, words):
    assert_error(client.post(COMPLETIONS, content=raw, headers={"content-type": "application/json"}), 400, None, words)
    still_serving(client)


def test_prompt_too_long_says_by_how_much(client, engine):
    ids = list(range(3, 253))  # 250 tokens; the context is 256
    err = assert_error(client.post(COMPLETIONS, json={"prompt": ids, "max_tokens": 10}), 400, "prompt", "4 tokens too many")
    assert err["code"] == "context_length_exceeded"
    long_text = "word " * 400
    err = assert_error(client.post(CHAT, json={"messages": [{"role": "user", "content": long_text}]}), 400, "messages",
                       "leaving none to generate")
    assert err["code"] == "context_length_exceeded"
    n = len(engine.tokenizer.encode(engine.chat_template.render(HELLO), add_bos=False))
    assert_error(client.post(CHAT, json={"messages": HELLO, "max_tokens": 256 - n + 1}), 400, "messages", "1 tokens too many")
    still_serving(client)


def test_json_just_within_the_depth_limit_is_accepted(client):
    from hearth.server.protocol import MAX_JSON_DEPTH

    args = "[" * MAX_JSON_DEPTH + "]" * MAX_JSON_DEPTH
    history = HELLO + [{"role": "assistant", "tool_calls": [
        {"id": "c", "type": "function", "function": {"name": "f", "arguments": args}}]}]
    r = client.post("/tokenize", json={"messages": history})  # (too long for the tiny context as a chat)
    assert r.status_code == 200, r.text
    assert_error(client.post(CHAT, json={"messages": history[:1] + [{**history[1], "tool_calls": [
        {"id": "c", "type": "function", "function": {"name": "f", "arguments": "[" + args + "]"}}]}]}), 400,
        "messages.1.tool_calls.0.function.arguments", f"limit is {MAX_JSON_DEPTH}")


def test_openapi_document_covers_every_route_with_its_bodies_and_errors(client, app):
    """The table in hearth/server/openapi.py names every route (a new route must be added there); the error bodies the
    server sends follow the document's ErrorResponse schema. (The live fuzz: tests/test_openapi_fuzz.py.)"""
    import jsonschema

    from hearth.server.openapi import ROUTES

    doc = client.get("/openapi.json").json()
    served = {(m, p) for p, ops in doc["paths"].items() for m in ops}
    assert served == set(ROUTES), served ^ set(ROUTES)
    for (method, path), route in ROUTES.items():
        op = doc["paths"][path][method]
        assert ("requestBody" in op) == bool(route.request), path
        assert "200" in op["responses"] and "422" not in op["responses"], path
    assert "HTTPValidationError" not in doc["components"]["schemas"]
    error = {**doc["components"]["schemas"]["ErrorResponse"], "components": doc["components"]}
    body = client.post(CHAT, json={"messages": HELLO, "n": 0}).json()
    jsonschema.validate(body, error)
    chat = doc["paths"][CHAT]["post"]["requestBody"]["content"]["application/json"]
    assert chat["schema"] == {"$ref": "#/components/schemas/ChatCompletionRequest"}
    request = doc["components"]["schemas"]["ChatCompletionRequest"]
    assert request["additionalProperties"] is False and request["required"] == ["messages"]
    # null means the default (Strict._null_means_default), so the schema takes null for every optional field
    assert {"type": "null"} in request["properties"]["n"]["anyOf"]
    for example in chat["examples"].values():  # the documented examples work
        assert client.post(CHAT, json=example["value"]).status_code == 200, example


def test_unknown_model_lookup_is_404(client):
    assert_error(client.get("/v1/models/gpt-9"), 404, "model")
    still_serving(client)


def test_unknown_route_and_method(client):
    assert_error(client.get("/v2/nothing"), 404, None, "/v2/nothing")
    assert_error(client.put(CHAT), 405, None, "not allowed")
    # GET lists stored completions (OpenAI's route): a server that does not capture says how to turn it on
    assert_error(client.get(CHAT), 404, None, "--capture")


def test_body_too_large_is_413(client):
    big = {"prompt": "x" * 5000}
    err = assert_error(client.post(COMPLETIONS, json=big), 413, None, "limit")
    assert err["code"] == "request_too_large"

    def chunks():  # no Content-Length: the limit is enforced while reading
        yield b'{"prompt": "'
        for _ in range(10):
            yield b"y" * 1000
        yield b'"}'

    assert_error(client.post(COMPLETIONS, content=chunks(), headers={"content-type": "application/json"}), 413)
    still_serving(client)


def test_queue_full_is_429_with_retry_after(client, engine):
    engine.max_waiting = 0
    r = client.post(CHAT, json={"messages": HELLO})
    err = assert_error(r, 429)
    assert err["type"] == "rate_limit_error" and r.headers["retry-after"] == "1"
    engine.max_waiting = 8
    still_serving(client)


def test_null_means_the_default(client, engine):
    """The openai SDK sends null for every argument passed as None; OpenAI's schema allows it for these."""
    body = {"messages": HELLO, "max_tokens": 2, "n": None, "stream": None, "presence_penalty": None,
            "frequency_penalty": None, "logprobs": None, "top_k": None, "min_p": None, "repetition_penalty": None,
            "ignore_eos": None, "temperature": None, "top_p": None, "seed": None, "stop": None}
    r = client.post(CHAT, json=body)
    assert r.status_code == 200, r.text
    assert len(r.json()["choices"]) == 1 and r.json()["choices"][0]["logprobs"] is None
    p = engine.requests[-1].params
    assert (p.temperature, p.top_p, p.top_k, p.min_p, p.repetition_penalty, p.presence_penalty) == (1.0, 1.0, 0, 0.0, 1.0, 0.0)
    r = client.post(COMPLETIONS, json={"prompt": "x", "max_tokens": 2, "echo": None, "n": None})
    assert r.status_code == 200, r.text
    assert_error(client.post(CHAT, json={"messages": None}), 400, "messages")  # required stays required


def test_more_sequences_than_the_server_holds_is_400(client, engine):
    """A request that could never be admitted whole is refused as such, not answered "retry later" (429)."""
    err = assert_error(client.post(COMPLETIONS, json={"prompt": ["a"] * 40, "n": 2, "max_tokens": 1}), 400, "n",
                       "needs 80 sequences")
    assert str(engine.max_group) in err["message"]
    assert not engine.requests
    still_serving(client)


def test_queue_full_for_one_of_n_aborts_the_others(client, engine):
    engine.max_waiting = 1
    engine.settings.token_delay = 0.01
    assert_error(client.post(CHAT, json={"messages": HELLO, "n": 2, "max_tokens": 50}), 429)
    assert len(engine.aborted) == 1  # the admitted sibling was aborted at once


def test_draining_and_dead_engine_are_503(client, app, engine):
    app.state.draining = True
    assert_error(client.post(CHAT, json={"messages": HELLO}), 503, None, "shutting down")
    assert client.get("/health").status_code == 503
    app.state.draining = False
    engine.alive = False
    assert_error(client.post(COMPLETIONS, json={"prompt": "x"}), 503)
    engine.alive = True
    assert client.get("/health").json() == {"status": "ok"}
    still_serving(client)


def test_engine_dead_midway_is_503(client, engine):
    from hearth.engine.async_engine import EngineDeadError

    engine.settings.fail = EngineDeadError("the engine failed")
    assert_error(client.post(CHAT, json={"messages": HELLO}), 503)


def test_unexpected_error_is_500_and_the_server_survives(app, client, engine):
    engine.settings.fail = RuntimeError("kaboom")
    quiet = TestClient(app, raise_server_exceptions=False)  # (the default re-raises it here)
    err = assert_error(quiet.post(CHAT, json={"messages": HELLO}), 500)
    assert err["type"] == "server_error" and "kaboom" not in err["message"]  # no internals leak
    engine.settings.fail = None
    still_serving(client)


def test_api_key(engine):
    app = build_app(engine, api_key="s3cret", served_model_name="tiny-model")
    with TestClient(app) as c:
        err = assert_error(c.post(CHAT, json={"messages": HELLO}), 401, None, "missing")
        assert err["code"] == "invalid_api_key"
        assert_error(c.post(CHAT, json={"messages": HELLO}, headers={"Authorization": "Bearer nope"}), 401, None, "invalid")
        assert_error(c.get("/v1/models", headers={"Authorization": "Basic s3cret"}), 401)
        assert_error(c.post("/tokenize", json={"prompt": "x"}), 401)
        ok = {"Authorization": "Bearer s3cret"}
        assert c.post(CHAT, json={"messages": HELLO, "max_tokens": 1}, headers=ok).status_code == 200
        assert c.get("/v1/models", headers=ok).status_code == 200
        assert c.get("/health").status_code == 200  # open: load balancers probe it without a key
        assert c.get("/metrics").status_code == 401  # with a key, so is /metrics (test_server_security.py)
        assert c.get("/metrics", headers=ok).status_code == 200


def test_lifespan_shutdown_starts_draining(engine):
    app = build_app(engine)
    with TestClient(app) as c:
        assert c.get("/health").status_code == 200
    assert app.state.draining
    assert_error(TestClient(app).post(CHAT, json={"messages": HELLO}), 503)


# ----------------------------------------------------------------------------- models, tokenizer


def test_models(client):
    body = client.get("/v1/models").json()
    assert body["object"] == "list"
    assert [m["id"] for m in body["data"]] == ["tiny-model", "tiny"]
    assert body["data"][0]["max_model_len"] == 256
    assert client.get("/v1/models/tiny-model").json()["id"] == "tiny-model"
    assert client.post(CHAT, json={"model": "tiny", "messages": HELLO, "max_tokens": 1}).status_code == 200


def test_tokenize_and_detokenize(client, engine):
    r = client.post("/tokenize", json={"prompt": "hello world", "add_special_tokens": False})
    body = r.json()
    assert body["tokens"] == engine.tokenizer.encode("hello world", add_bos=False)
    assert body["count"] == len(body["tokens"]) and body["max_model_len"] == 256 and body["token_strs"] is None
    strs = client.post("/tokenize", json={"prompt": "hello world", "return_token_strs": True}).json()["token_strs"]
    assert "".join(strs) == "hello world"
    chat = client.post("/tokenize", json={"messages": HELLO}).json()
    assert chat["tokens"] == engine.tokenizer.encode(engine.chat_template.render(HELLO), add_bos=False)
    assert client.post("/detokenize", json={"tokens": body["tokens"]}).json() == {"prompt": "hello world"}
    assert_error(client.post("/detokenize", json={"tokens": [1, 99999]}), 400, "tokens", "outside the vocabulary")
    assert_error(client.post("/tokenize", json={"prompt": 5}), 400, "prompt")
    assert_error(client.post("/tokenize", json={"messages": []}), 400, "messages")


def test_tokenizer_info(client, engine):
    info = client.get("/tokenizer_info").json()
    assert info["eos_token"] == "<|im_end|>" and info["eos_token_id"] == 2
    assert info["bos_token"] == "<|endoftext|>" and info["bos_token_id"] == 0
    assert info["pad_token_id"] == 0 and info["model_max_length"] == 256
    assert info["chat_template"] == engine.chat_template.source
    # lm-eval's remote tokenizer finds the EOS id by tokenizing its text
    assert client.post("/tokenize", json={"prompt": info["eos_token"], "add_special_tokens": False}).json()["tokens"] == [2]


# ------------------------------------------------------------------------------------------ metrics


def metric(text: str, name: str, **labels) -> float:
    want = name + ("{" + ",".join(f'{k}="{v}"' for k, v in labels.items()) + "}" if labels else "")
    for line in text.splitlines():
        if line.split(" ")[0] == want:
            return float(line.split(" ")[1])
    return 0.0


def test_metrics_count_requests_tokens_and_latency(client):
    before = client.get("/metrics").text
    client.post(CHAT, json={"messages": HELLO, "max_tokens": 4})
    client.post(CHAT, json={"messages": HELLO, "temperature": 9})
    after = client.get("/metrics").text
    ep = CHAT
    assert metric(after, "hearth_requests_total", endpoint=ep, status="200") - metric(before, "hearth_requests_total", endpoint=ep, status="200") == 1
    assert metric(after, "hearth_requests_total", endpoint=ep, status="400") - metric(before, "hearth_requests_total", endpoint=ep, status="400") == 1
    assert metric(after, "hearth_generation_tokens_total") - metric(before, "hearth_generation_tokens_total") == 4
    assert metric(after, "hearth_prompt_tokens_total") > metric(before, "hearth_prompt_tokens_total")
    assert metric(after, "hearth_time_to_first_token_seconds_count") == metric(before, "hearth_time_to_first_token_seconds_count") + 1
    assert metric(after, "hearth_inter_token_latency_seconds_count") == metric(before, "hearth_inter_token_latency_seconds_count") + 3
    for gauge in ("hearth_num_requests_running", "hearth_num_requests_waiting", "hearth_kv_cache_usage_perc"):
        assert metric(after, gauge) == 0.0 and f"\n{gauge} " in after


# --------------------------------------------------------------------------- client disconnects


@pytest.fixture(scope="module")
def live(app):
    """The app on a real socket (uvicorn in a thread): a TestClient cannot drop a connection midway."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=10)


def wait_until(cond, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.02)
    return cond()


@pytest.mark.parametrize("path,body", [
    (CHAT, {"messages": HELLO, "max_tokens": 200, "stream": True, "n": 2}),
    (COMPLETIONS, {"prompt": "x", "max_tokens": 200, "stream": True}),
])
def test_stream_disconnect_aborts_the_engine_requests(live, engine, path, body):
    engine.settings.token_delay = 0.02
    with httpx.Client(base_url=live) as c:
        with c.stream("POST", path, json=body) as r:
            assert r.status_code == 200
            lines = r.iter_lines()
            got = [next(lines) for _ in range(4)]
            assert any(line.startswith("data: {") for line in got)
            assert engine.active
    assert wait_until(lambda: not engine.active), engine.active
    assert len(engine.aborted) == body.get("n", 1)
    assert wait_until(lambda: metric(httpx.get(live + "/metrics").text, "hearth_num_requests_running") == 0)


def test_non_stream_disconnect_aborts_the_engine_request(live, engine):
    engine.settings.token_delay = 0.02
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(live + CHAT, json={"messages": HELLO, "max_tokens": 200}, timeout=0.5)
    assert wait_until(lambda: not engine.active), engine.active
    assert len(engine.aborted) == 1
    text = httpx.get(live + "/metrics").text
    assert metric(text, "hearth_requests_total", endpoint=CHAT, status="499") >= 1


def test_disconnect_before_the_first_token_aborts(live, engine):
    engine.settings.token_delay = 2.0  # still "queued" when the client gives up
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(live + CHAT, json={"messages": HELLO, "max_tokens": 5, "stream": True, "n": 2}, timeout=0.3)
    assert wait_until(lambda: not engine.active), engine.active
    assert len(engine.aborted) == 2


def test_live_server_body_limit_and_keeps_serving(live):
    r = httpx.post(live + COMPLETIONS, content=b'{"prompt": "' + b"z" * 200_000 + b'"}',
                   headers={"content-type": "application/json"})
    assert_error(r, 413)
    r = httpx.post(live + CHAT, json={"messages": HELLO, "max_tokens": 2})
    assert r.status_code == 200


def test_serve_fails_fast_when_the_port_is_taken():
    import subprocess
    import sys

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        r = subprocess.run([sys.executable, "-m", "hearth.cli", "serve", "smollm2", "--port", str(port)],
                           capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert f"port {port} on 127.0.0.1 is already in use" in r.stderr and "--port " in r.stderr
    assert "loaded" not in r.stderr  # before the model loads


def test_tool_history_reaches_the_engine_as_tokenize_shows_it(client, engine, monkeypatch):
    """A chat with tools and a tool-call history: the engine gets the prompt /tokenize shows for the same messages
    and tools (for this ChatML template: the tools in the system message, the calls as JSON, results as a user turn)."""
    messages = HELLO + [
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "done"}]
    monkeypatch.setattr(engine, "max_model_len", 4096)  # the tiny tokenizer spends many tokens on the instructions
    r = client.post(CHAT, json={"messages": messages, "tools": [TOOL], "max_tokens": 3})
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["message"]["role"] == "assistant"
    shown = client.post("/tokenize", json={"messages": messages, "tools": [TOOL]}).json()["tokens"]
    assert engine.requests[-1].prompt_ids == shown
    text = engine.tokenizer.decode(shown, skip_special=False)
    assert "You can call these tools" in text and '[{"name": "f", "arguments": {}}]' in text and "f: done" in text



def test_embeddings_shape_and_errors(client, engine):
    import base64
    import struct

    r = client.post("/v1/embeddings", json={"input": ["hello world", "hello"], "model": "tiny-model"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "list" and [d["index"] for d in body["data"]] == [0, 1]
    assert body["usage"]["prompt_tokens"] == len(engine.tokenizer.encode("hello world")) + len(engine.tokenizer.encode("hello"))
    first = body["data"][0]["embedding"]
    assert len(first) == engine.embedding_dim and abs(sum(x * x for x in first) - 1) < 1e-5
    b64 = client.post("/v1/embeddings", json={"input": "hello world", "encoding_format": "base64"}).json()
    raw = base64.b64decode(b64["data"][0]["embedding"])
    assert list(struct.unpack(f"<{len(raw) // 4}f", raw)) == pytest.approx(first)  # little-endian float32
    ids = engine.tokenizer.encode("hello world")
    assert client.post("/v1/embeddings", json={"input": ids}).json()["data"][0]["embedding"] == pytest.approx(first)
    assert_error(client.post("/v1/embeddings", json={"input": "x", "dimensions": 9}), 400, "dimensions", "have 8")
    assert len(client.post("/v1/embeddings", json={"input": "x", "dimensions": 3}).json()["data"][0]["embedding"]) == 3
    assert_error(client.post("/v1/embeddings", json={"input": ["a", ""]}), 400, "input.1", "empty")
    assert_error(client.post("/v1/embeddings", json={"input": [5, 99999]}), 400, "input", "check_embedding_ctx_length")
    assert_error(client.post("/v1/embeddings", json={"input": "word " * 300}), 400, "input", "maximum context length")
    assert_error(client.post("/v1/embeddings", json={"input": 5}), 400, "input", "must be")
    assert_error(client.post("/v1/embeddings", json={"input": "x", "encoding_format": "int8"}), 400, "encoding_format")


# -- tolerant by default, strict on request (hearth/server/fields.py; issue 21) -------------------------------------
def test_every_row_of_the_tolerated_fields_table(client, engine):
    """Each field the table names: ignored with a Warning header naming it, mapped, or refused only when its value
    asks for what hearth cannot give (those are in BAD_REQUESTS)."""
    from hearth.server.fields import TABLE, tolerate
    from hearth.server.protocol import ChatCompletionRequest

    values = {"modalities": ["text"], "audio": None, "functions": [TOOL["function"]], "function_call": "auto",
              "reasoning_effort": "high", "verbosity": "low", "prompt_cache_key": "k", "safety_identifier": "u1",
              "web_search_options": {}, "prediction": {"type": "content", "content": "x"}, "moderation": True,
              "reasoning": {"effort": "low"}, "cache_prompt": True, "n_probs": 2, "id_slot": 0, "priority": 1,
              "request_id": "r", "echo": False}
    assert set(values) == set(TABLE)  # a new row needs a value here
    for name, value in values.items():
        if TABLE[name].action == "map":
            continue
        r = client.post(CHAT, json={"messages": HELLO, "max_tokens": 2, name: value})
        assert r.status_code == 200, (name, r.text)
        assert name in r.headers["Warning"] and r.headers["Warning"].startswith("299 "), name
    # the legacy spellings become tools / tool_choice (a tools prompt overflows the fake engine's 256 tokens)
    data = {"messages": HELLO, "functions": [TOOL["function"]], "function_call": {"name": "f"}}
    assert tolerate(data, frozenset(ChatCompletionRequest.model_fields), False, "chat") == []
    assert data["tools"] == [TOOL] and data["tool_choice"] == {"type": "function", "function": {"name": "f"}}
    ChatCompletionRequest.model_validate(data)
    r = client.post(COMPLETIONS, json={"prompt": "x", "max_tokens": 2, "reasoning_effort": "low", "frobnicate": 1})
    assert r.status_code == 200 and "frobnicate" in r.headers["Warning"] and "reasoning_effort" in r.headers["Warning"]


def test_strict_refuses_unknown_fields_and_model_names(engine):
    with TestClient(build_app(engine, served_model_name="tiny-model", strict=True, strict_model_names=True)) as c:
        assert_error(c.post(CHAT, json={"messages": HELLO, "frobnicate": 1}), 400, "frobnicate", "unsupported field")
        assert c.post(CHAT, json={"messages": HELLO, "max_tokens": 2, "reasoning_effort": "low"}).status_code == 200
        err = assert_error(c.post(CHAT, json={"model": "gpt-9", "messages": HELLO}), 404, "model", "gpt-9")
        assert err["code"] == "model_not_found"


def test_any_model_name_reaches_the_one_model_and_routes_answer_without_v1(client, engine):
    r = client.post(CHAT, json={"model": "gpt-4o-mini", "messages": HELLO, "max_tokens": 2})
    assert r.status_code == 200 and r.json()["model"] == "tiny-model"
    assert client.post("/chat/completions", json={"messages": HELLO, "max_tokens": 2}).status_code == 200
    assert client.post("/completions", json={"prompt": "x", "max_tokens": 2}).status_code == 200
    assert [m["id"] for m in client.get("/models").json()["data"]] == [m["id"] for m in client.get("/v1/models").json()["data"]]
    assert client.get("/v1/models/gpt-4o-mini").status_code == 404  # the list and a lookup name the real models
    ids = client.post("/tokenize", json={"content": "Hello there"}).json()["tokens"]  # llama.cpp's body
    assert ids == client.post("/tokenize", json={"prompt": "Hello there"}).json()["tokens"]


def test_template_switches_reach_the_prompt(client, engine):
    convo = HELLO + [{"role": "assistant", "content": "General Kenobi"}]
    r = client.post(CHAT, json={"messages": convo, "max_tokens": 2, "add_generation_prompt": False,
                                "continue_final_message": True})
    assert r.status_code == 200, r.text
    text = engine.tokenizer.decode(engine.requests[-1].prompt_ids)
    assert text.rstrip().endswith("General Kenobi")
    closed = engine.tokenizer.decode(engine.tokenizer.encode(
        engine.chat_template.render(convo, add_generation_prompt=False), add_bos=False))
    assert len(closed) > len(text)  # without continue_final_message the turn is closed
    r = client.post(CHAT, json={"messages": HELLO, "max_tokens": 2, "add_generation_prompt": False})
    assert engine.tokenizer.decode(engine.requests[-1].prompt_ids) == engine.tokenizer.decode(
        engine.tokenizer.encode(engine.chat_template.render(HELLO, add_generation_prompt=False), add_bos=False))
