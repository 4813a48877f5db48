"""A real `hearth serve` process on a tiny random-weight GGUF: the OpenAPI document is true, and no request, fuzzed
or hand-made, gets a 5xx or stops the server.

schemathesis reads /openapi.json (hearth/server/openapi.py) and sends bodies that follow each route's schema
(positive) and bodies that break it (negative), then checks every answer:
- not_a_server_error: no 5xx, ever;
- status_code_conformance, content_type_conformance, response_schema_conformance: the status, the media type
  and the body are the ones the document declares (errors included: OpenAI's error body);
- negative_data_rejection: a body the schema forbids is refused (so the schema is no stricter than the server).
Not run: positive_data_acceptance. A body that fits the schema may still be refused, by design: checks across
fields (stream_options without stream, top_logprobs without logprobs, a forced tool call with response_format),
an unknown model name (404), a prompt longer than the context or token ids outside the vocabulary, a grammar or
regex that does not compile. JSON Schema cannot say these; the server answers each with a 400/404 naming the field.
Also accepted: an integer written with a fraction (`"n": 2.0`) is refused (pydantic's strict mode, as "2" is), though
JSON Schema counts 2.0 as an integer. (A chat message's rules by role are in the schema: protocol._message_schema.)

The fuzz is bounded for `make test` (under a minute on 2 cores, server start included): a fixed seed
(derandomize), EXAMPLES per route and mode, no coverage phase, and positive cases ask for at most MAX_TOKENS tokens
and 2 choices. (Runs of 150-200 examples per route, unseeded, found nothing more.)
"""

from __future__ import annotations

import copy
import json

import httpx
import pytest

schemathesis = pytest.importorskip("schemathesis")
from hypothesis import HealthCheck, settings  # noqa: E402
from schemathesis.checks import (  # noqa: E402
    content_type_conformance,
    negative_data_rejection,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

from fake_engine import FakeEngine  # noqa: E402
from hearth.server.app import build_app  # noqa: E402
from serve_kit import ServerProcess  # noqa: E402
from store_kit import write_tiny_gguf  # noqa: E402

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance,
          negative_data_rejection]
EXAMPLES = 25  # per route and generation mode
MAX_TOKENS = 3
CHAT = "/v1/chat/completions"
HELLO = [{"role": "user", "content": "Hello"}]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fuzz")
    gguf = write_tiny_gguf(tmp / "tiny.gguf")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HEARTH_HOME", str(tmp / "home"))  # nothing of the user's store is touched
        proc = ServerProcess(tmp, "fuzz", "--dtype", "float32", "--max-num-seqs", "4", model=str(gguf), threads=1)
    try:
        proc.wait_healthy()
        yield proc
    finally:
        proc.stop()


def alive(server) -> None:
    assert server.proc.poll() is None, server.log_path.read_text()
    r = httpx.post(server.url + CHAT, json={"messages": HELLO, "max_tokens": 1}, timeout=60)
    assert r.status_code == 200, r.text


# The document is built here, at collection, from an app without a model (it depends on the routes only; a test
# below checks the live server's is the same). schemathesis's lazy loader from a fixture breaks on pytest 9.
DOCUMENT = build_app(FakeEngine(max_model_len=64)).openapi()
schema = schemathesis.openapi.from_dict(copy.deepcopy(DOCUMENT))  # schemathesis may change it
schema.config.phases.update(phases=["examples", "fuzzing"])  # the coverage phase sends hundreds per route
schema.config.generation.update(database="none")


def bounded(case) -> None:
    """Keep generation short: a positive body asks for at most MAX_TOKENS tokens and 2 choices (the schema allows
    128 choices of the whole context, minutes on a CPU). Negative bodies are sent as generated: they are refused
    before any generation, and changing them could make them valid."""
    body = case.body
    if case.meta is None or not case.meta.generation.mode.is_positive or not isinstance(body, dict):
        return
    if isinstance(body.get("n"), int):
        body["n"] = min(body["n"], 2)
    for key in ("max_tokens", "max_completion_tokens"):
        if isinstance(body.get(key), int):
            body[key] = min(body[key], MAX_TOKENS)
    if case.path in (CHAT, "/v1/completions") and body.get("max_tokens") is None \
            and body.get("max_completion_tokens") is None:
        body["max_tokens"] = MAX_TOKENS


@schema.parametrize()
@settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
          suppress_health_check=list(HealthCheck))
def test_openapi_fuzz(case, server):
    bounded(case)
    case.call_and_validate(base_url=server.url, checks=CHECKS, timeout=60)


def test_server_survived_the_fuzz(server):
    alive(server)
    log = server.log_path.read_text()
    assert "Traceback" not in log and "internal error" not in log, log


# ------------------------------------------------------------------ hand-made attacks on the live server


def deep(n: int, leaf: str = "1") -> str:
    return "[" * n + leaf + "]" * n


ATTACKS = [
    # (why, path, raw body, param, words in the message). Before: each was a 500 with a traceback in the log.
    ("logit_bias key that str.isdigit accepts and int() refuses", CHAT,
     json.dumps({"messages": HELLO, "logit_bias": {"²": 5}}), "logit_bias", "token ids"),
    ("logit_bias key of 5000 digits (past int()'s digit limit)", CHAT,
     json.dumps({"messages": HELLO, "logit_bias": {"9" * 5000: 5}}), "logit_bias", "token ids"),
    ("assistant tool-call arguments nested 5000 deep", CHAT,
     json.dumps({"messages": HELLO + [{"role": "assistant", "tool_calls": [
         {"id": "c1", "type": "function", "function": {"name": "f", "arguments": deep(5000)}}]}], "max_tokens": 1}),
     "messages.1.tool_calls.0.function.arguments", "nested 5000 levels deep"),
    ("a JSON schema as text nested 5000 deep (vLLM's structured_outputs)", "/v1/completions",
     json.dumps({"prompt": "x", "max_tokens": 1, "structured_outputs": {"json": deep(5000, "{}")}}),
     "structured_outputs.json", "nested"),
    ("guided_json text nested 5000 deep", "/v1/completions",
     json.dumps({"prompt": "x", "max_tokens": 1, "guided_json": deep(5000, "{}")}), "guided_json", "nested"),
    ("the body itself nested 100000 deep", CHAT, '{"messages": ' + deep(100_000) + "}", None, "nested too deeply"),
]


@pytest.mark.parametrize("why,path,raw,param,words", ATTACKS, ids=[a[0] for a in ATTACKS])
def test_attack_is_a_400_and_the_server_keeps_serving(server, why, path, raw, param, words):
    r = httpx.post(server.url + path, content=raw.encode(), headers={"content-type": "application/json"}, timeout=60)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["type"] == "invalid_request_error" and err["param"] == param, err
    assert words in err["message"], err
    alive(server)


def test_json_nested_just_under_the_parse_limit_is_a_400(server):
    """A body that json.loads still parses (it stops near 1000 levels) held JSON that later code walks recursively:
    the tool instructions' json.dumps failed with RecursionError (a 500) a few levels further down the stack. Where
    that band lies depends on the stack depth, so every depth around it is tried."""
    for n in range(860, 1000, 7):
        tools = [{"type": "function", "function": {"name": "f", "parameters": json.loads("{}")}}]
        raw = json.dumps({"messages": HELLO, "tools": tools}).replace("{}", '{"a":' * n + "{}" + "}" * n)
        r = httpx.post(server.url + "/tokenize", content=raw.encode(), headers={"content-type": "application/json"})
        assert r.status_code == 400, (n, r.text)
        assert "nested" in r.json()["error"]["message"], (n, r.text)
    alive(server)


def test_the_document_declares_bodies_and_errors(server):
    doc = httpx.get(server.url + "/openapi.json").json()
    assert doc == DOCUMENT  # the one fuzzed
    op = doc["paths"][CHAT]["post"]
    assert op["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/ChatCompletionRequest"}
    assert set(op["responses"]["200"]["content"]) == {"application/json", "text/event-stream"}
    assert {"400", "401", "404", "413", "415", "429", "503"} <= set(op["responses"])
    assert "422" not in op["responses"]  # FastAPI's default: this server answers validation errors with 400
