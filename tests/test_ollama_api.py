"""Issue 21: Ollama's API on `hearth serve` (hearth/server/ollama.py), driven by the real `ollama` Python client:
listing, show, ps, chat and generate (streamed as newline-delimited JSON and not, raw, system), options, format (JSON
mode and a schema), tools, embeddings equal to /v1's, Ollama-shaped errors for bad input with the server still up.

A real server subprocess over a tiny random-weight GGUF (tests/store_kit.py), with an API key; the last tests run the
app in-process over tests/fake_engine.py for what needs other server settings (strict model names, draining)."""

from __future__ import annotations

import json
from datetime import datetime

import httpx
import jsonschema
import numpy as np
import ollama
import pytest
from fastapi.testclient import TestClient

from serve_kit import ServerProcess
from store_kit import write_tiny_gguf

pytestmark = pytest.mark.timeout(300)

KEY = "ollama-test-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
MODEL = "tiny"  # the file tiny.gguf
HELLO = [{"role": "user", "content": "Hello there"}]
GREEDY = {"temperature": 0, "seed": 1, "num_predict": 12}
WEATHER = {"type": "object", "properties": {"city": {"enum": ["Paris", "Rome"]}}, "required": ["city"],
           "additionalProperties": False}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ollama")
    (tmp / "key").write_text(KEY)
    proc = ServerProcess(tmp, "ollama", "--api-key-file", str(tmp / "key"), model=str(write_tiny_gguf(tmp / "tiny.gguf")),
                         threads=1, env={"HEARTH_HOME": str(tmp / "home")})
    try:
        proc.wait_healthy()
        proc.gguf = tmp / "tiny.gguf"
        yield proc
    finally:
        proc.stop()


@pytest.fixture(scope="module")
def client(server) -> ollama.Client:
    return ollama.Client(host=server.url, headers=AUTH, timeout=60)


def post(server, path: str, body: dict) -> httpx.Response:
    return httpx.post(server.url + path, json=body, headers=AUTH, timeout=60)


def assert_error(r: httpx.Response, status: int, contains: str = "") -> str:
    """Ollama's error shape: {"error": "<message>"}."""
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error"} and isinstance(body["error"], str) and body["error"], body
    assert contains.lower() in body["error"].lower(), body
    return body["error"]


def rfc3339(s: str) -> datetime:
    t = datetime.fromisoformat(s)
    assert t.tzinfo is not None, s
    return t


def test_list_show_ps_version(server, client):
    (m,) = client.list().models
    assert m.model == "tiny:latest" and m.size == server.gguf.stat().st_size and len(m.digest) == 64
    assert (m.details.format, m.details.family, m.details.quantization_level) == ("gguf", "llama", "F32")
    n_ctx = httpx.get(server.url + "/v1/models", headers=AUTH).json()["data"][0]["max_model_len"]
    for name in ("tiny", "tiny:latest"):
        shown = client.show(name)
        assert shown.modelinfo["llama.context_length"] == n_ctx and shown.modelinfo["general.architecture"] == "llama"
        assert shown.details.parameter_size and "tools" in shown.capabilities and "<|im_start|>" in shown.template
    (running,) = client.ps().models
    assert running.model == "tiny:latest" and running.context_length == n_ctx and running.size_vram == 0
    assert running.expires_at.year > 9000  # loaded while the server runs
    assert httpx.get(server.url + "/api/version", headers=AUTH).json()["version"].count(".") == 2
    with pytest.raises(ollama.ResponseError) as e:  # a lookup names real models only
        client.show("llama3.2")
    assert e.value.status_code == 404 and "llama3.2" in e.value.error
    for path in ("/api/tags", "/api/ps", "/api/version"):  # the key, as on /v1
        assert_error(httpx.get(server.url + path), 401, "api key")
    with pytest.raises(ollama.ResponseError) as e:
        ollama.Client(host=server.url).chat(model=MODEL, messages=HELLO)
    assert e.value.status_code == 401


def test_chat_streamed_and_whole_agree_and_match_v1(server, client):
    whole = client.chat(model=MODEL, messages=HELLO, options=GREEDY)
    assert whole.done and whole.done_reason == "length" and whole.eval_count == 12 and whole.message.role == "assistant"
    assert whole.prompt_eval_count > 0 and whole.model == MODEL
    for k in ("total_duration", "prompt_eval_duration", "eval_duration"):
        assert isinstance(whole[k], int) and whole[k] > 0, k
    assert whole.total_duration >= whole.prompt_eval_duration + whole.eval_duration
    rfc3339(whole.created_at)
    parts = list(client.chat(model="tiny:latest", messages=HELLO, options=GREEDY, stream=True))
    assert all(not p.done for p in parts[:-1]) and parts[-1].done and parts[-1].message.content == ""
    assert "".join(p.message.content for p in parts) == whole.message.content
    assert (parts[-1].eval_count, parts[-1].prompt_eval_count) == (whole.eval_count, whole.prompt_eval_count)
    v1 = post(server, "/v1/chat/completions", {"model": MODEL, "messages": HELLO, "max_tokens": 12, "temperature": 0,
                                               "seed": 1}).json()
    assert v1["choices"][0]["message"]["content"] == whole.message.content
    scored = client.chat(model=MODEL, messages=HELLO, options=GREEDY, logprobs=True, top_logprobs=2)
    assert scored.message.content == whole.message.content and len(scored.logprobs) == 12
    assert all(len(x.top_logprobs) == 2 and x.logprob <= 0 for x in scored.logprobs)


def test_stream_is_the_default_and_ndjson(server):
    with httpx.stream("POST", server.url + "/api/generate", headers=AUTH, timeout=60,
                      json={"model": MODEL, "prompt": "Once upon a time", "options": GREEDY}) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("application/x-ndjson")
        lines = [json.loads(line) for line in r.iter_lines() if line]
    assert len(lines) > 2 and lines[-1]["done"] and not any(x["done"] for x in lines[:-1])
    assert set(lines[0]) == {"model", "created_at", "response", "done"}
    load = post(server, "/api/generate", {"model": MODEL}).json()  # no prompt: Ollama's "load the model"
    assert load["done"] and load["done_reason"] == "load" and load["response"] == ""
    load = post(server, "/api/chat", {"model": MODEL, "messages": [], "keep_alive": 0}).json()
    assert load["done_reason"] == "unload" and load["message"] == {"role": "assistant", "content": ""}


def test_generate_templated_raw_and_system(server, client):
    prompt = "Once upon a time"
    whole = client.generate(model=MODEL, prompt=prompt, options=GREEDY)
    streamed = list(client.generate(model=MODEL, prompt=prompt, options=GREEDY, stream=True))
    assert "".join(p.response for p in streamed) == whole.response and streamed[-1].done
    as_chat = client.chat(model=MODEL, messages=[{"role": "user", "content": prompt}], options=GREEDY)
    assert whole.response == as_chat.message.content and whole.prompt_eval_count == as_chat.prompt_eval_count
    system = client.generate(model=MODEL, prompt=prompt, system="Be brief.", options=GREEDY)
    with_system = client.chat(model=MODEL, options=GREEDY, messages=[{"role": "system", "content": "Be brief."},
                                                                     {"role": "user", "content": prompt}])
    assert system.response == with_system.message.content and system.prompt_eval_count > whole.prompt_eval_count
    ignored = client.generate(model=MODEL, prompt=prompt, template="{{ .Prompt }}", options=GREEDY)
    assert ignored.response == whole.response  # a Go template is ignored: the model's own chat template is used
    raw = client.generate(model=MODEL, prompt=prompt, raw=True, options=GREEDY)
    v1 = post(server, "/v1/completions", {"model": MODEL, "prompt": prompt, "max_tokens": 12, "temperature": 0,
                                          "seed": 1}).json()
    assert raw.response == v1["choices"][0]["text"] and raw.prompt_eval_count == v1["usage"]["prompt_tokens"]
    assert raw.prompt_eval_count < whole.prompt_eval_count  # no chat template around it


def test_options_reach_the_sampler(client):
    short = client.chat(model=MODEL, messages=HELLO, options={**GREEDY, "num_predict": 3})
    assert short.eval_count == 3 and short.done_reason == "length"
    sampled = {"temperature": 1.0, "seed": 7, "num_predict": 40}
    text = client.generate(model=MODEL, prompt="Tell me a story", raw=True, options=sampled).response
    again = client.generate(model=MODEL, prompt="Tell me a story", raw=True, options=sampled).response
    assert text == again  # the seed reaches the sampler
    k = next(i for i in range(2, len(text) - 1) if text[i:i + 2].isalpha() and text.index(text[i:i + 2]) == i)
    stopped = client.generate(model=MODEL, prompt="Tell me a story", raw=True, options={**sampled, "stop": [text[k:k + 2]]})
    assert stopped.response == text[:k] and stopped.done_reason == "stop"
    same = client.generate(model=MODEL, prompt="Tell me a story", raw=True, options={
        **sampled, "num_ctx": 4096, "num_gpu": 99, "mirostat": 0, "num_thread": 2, "some_future_option": True})
    assert same.response == text  # load-time and unknown options are accepted and change nothing
    for extra in ({"top_k": 1}, {"top_p": 0.5}, {"repeat_penalty": 1.3}, {"presence_penalty": 1.5},
                  {"frequency_penalty": 1.0}, {"min_p": 0.2}, {"seed": -1}):
        assert client.generate(model=MODEL, prompt="Hi", raw=True, options={**sampled, **extra}).done
    greedy = client.generate(model=MODEL, prompt="Tell me a story", raw=True, options={**sampled, "top_k": 1})
    assert greedy.response == client.generate(model=MODEL, prompt="Tell me a story", raw=True,
                                              options={**sampled, "temperature": 0}).response  # top_k 1 is greedy
    for n in (-1, -2, 0, 10**12):  # no limit but the context (Ollama's -1, -2; 0), or more than it holds: clipped
        r = client.chat(model=MODEL, messages=HELLO, options={"temperature": 0, "num_predict": n})
        assert r.done and r.prompt_eval_count + r.eval_count <= 512


def test_format_json_and_schema(client):
    r = client.chat(model=MODEL, messages=HELLO, format="json", options={"temperature": 0, "num_predict": 200})
    assert isinstance(json.loads(r.message.content), dict)
    city = {"type": "object", "properties": {"ok": {"type": "boolean"}, "city": {"enum": ["Paris", "Rome"]}},
            "required": ["ok", "city"], "additionalProperties": False}
    for stream in (False, True):
        out = client.generate(model=MODEL, prompt="Where?", format=city, stream=stream,
                              options={"temperature": 0, "num_predict": 200})
        text = out.response if not stream else "".join(p.response for p in out)
        jsonschema.validate(json.loads(text), city)


def get_weather(city: str) -> str:
    """The weather in a city.

    Args:
      city: the city
    """
    return "18 degrees and sunny"


def test_tool_call_round_trip(client):
    """The tiny random model calls no tool by itself: `format` holds it to the JSON array of calls the tool
    instructions ask for, which the server reads as a call (tool_calls.py) and answers in Ollama's shape."""
    tools = [{"type": "function", "function": {"name": "get_weather", "description": "The weather in a city",
                                               "parameters": WEATHER}}]
    calls = {"type": "array", "minItems": 1, "maxItems": 1, "items": {
        "type": "object", "properties": {"name": {"const": "get_weather"}, "arguments": WEATHER},
        "required": ["name", "arguments"], "additionalProperties": False}}
    ask = [{"role": "user", "content": "What is the weather in Paris?"}]
    opts = {"temperature": 0, "num_predict": 200}
    r = client.chat(model=MODEL, messages=ask, tools=tools, format=calls, options=opts)
    (call,) = r.message.tool_calls
    assert call.function.name == "get_weather" and isinstance(call.function.arguments, dict)
    jsonschema.validate(call.function.arguments, WEATHER)
    assert r.message.content == "" and r.done_reason == "stop"
    streamed = list(client.chat(model=MODEL, messages=ask, tools=tools, format=calls, options=opts, stream=True))
    sent = [c for p in streamed for c in p.message.tool_calls or []]
    assert [c.function.model_dump() for c in sent] == [call.function.model_dump()] and streamed[-1].done
    assert all(not p.message.content for p in streamed)  # the call's text never comes as content
    history = ask + [r.message, {"role": "tool", "content": get_weather(**call.function.arguments),
                                 "tool_name": "get_weather"}]
    after = client.chat(model=MODEL, messages=history, tools=[get_weather], options={"temperature": 0, "num_predict": 8})
    assert after.done and after.prompt_eval_count > r.prompt_eval_count  # the call and its result are in the prompt


def test_embed_matches_v1(server, client):
    texts = ["A cat sat on the mat.", "Stock markets fell sharply today."]
    batch = client.embed(model=MODEL, input=texts)
    v1 = post(server, "/v1/embeddings", {"model": MODEL, "input": texts}).json()
    assert np.allclose(batch.embeddings, [d["embedding"] for d in v1["data"]], atol=1e-6)
    assert batch.prompt_eval_count == v1["usage"]["prompt_tokens"] and batch.model == MODEL
    single = client.embed(model="tiny:latest", input=texts[0])
    assert len(single.embeddings) == 1 and np.allclose(single.embeddings[0], batch.embeddings[0], atol=1e-6)
    legacy = client.embeddings(model=MODEL, prompt=texts[0])
    assert np.allclose(legacy.embedding, batch.embeddings[0], atol=1e-6)
    short = client.embed(model=MODEL, input=texts, dimensions=16)  # shortened and normalized again, as /v1's
    v1 = post(server, "/v1/embeddings", {"model": MODEL, "input": texts, "dimensions": 16}).json()
    assert np.allclose(short.embeddings, [d["embedding"] for d in v1["data"]], atol=1e-6)
    assert np.allclose(np.linalg.norm(short.embeddings, axis=1), 1, atol=1e-5)
    assert client.embed(model=MODEL, input=[]).embeddings == []  # no input: Ollama's "load the model"
    long = "word " * 2000  # over the 512-token context: cut to it by default (Ollama's truncate), refused without
    assert client.embed(model=MODEL, input=long).prompt_eval_count == 512
    with pytest.raises(ollama.ResponseError) as e:
        client.embed(model=MODEL, input=long, truncate=False)
    assert e.value.status_code == 400 and "context length" in e.value.error


def test_bad_input_is_an_ollama_400_and_the_server_stays_up(server):
    deep = {}
    for _ in range(300):
        deep = {"x": deep}
    chat = {"model": MODEL, "messages": HELLO, "stream": False}
    for body, words in [
        ({"model": 5, "messages": HELLO}, "model"),
        ({"messages": HELLO}, "'model' is required"),
        ({**chat, "messages": "hi"}, "messages"),
        ({**chat, "messages": [{"role": "robot", "content": "hi"}]}, "messages.0.role"),
        ({**chat, "messages": [{"role": "user", "content": 5}]}, "messages.0.content"),
        ({**chat, "messages": [{"role": "user", "content": "hi", "images": ["aGk="]}]}, "text only"),
        ({**chat, "stream": "yes"}, "stream"),
        ({**chat, "options": {"num_predict": "10"}}, "options.num_predict"),
        ({**chat, "options": {"temperature": -1}}, "options.temperature"),
        ({**chat, "options": {"temperature": 5}}, "options.temperature"),
        ({**chat, "options": {"top_p": 0}}, "options.top_p"),
        ({**chat, "options": {"seed": 2**64}}, "options.seed"),
        ({**chat, "options": {"stop": ["x"] * 17}}, "options.stop"),
        ({**chat, "options": "hot"}, "options"),
        ({**chat, "format": "yaml"}, "format"),
        ({**chat, "format": deep}, "levels deep"),
        ({**chat, "tools": [{"type": "function", "function": {"name": "bad name!"}}]}, "tools.0.function.name"),
        ({**chat, "tools": [{"type": "function", "function": {"name": "f", "parameters": deep}}]}, "levels deep"),
    ]:
        assert_error(post(server, "/api/chat", body), 400, words)
    for body, words in [({"model": MODEL, "prompt": "hi", "context": [1, 2]}, "context"),
                        ({"model": MODEL, "prompt": "hi", "suffix": "end"}, "suffix"),
                        ({"model": MODEL, "prompt": "hi", "raw": 1}, "raw"),
                        ({"model": MODEL, "prompt": "x" * 20000, "raw": True}, "context length")]:
        assert_error(post(server, "/api/generate", body), 400, words)
    assert_error(post(server, "/api/embed", {"model": MODEL, "input": [1, 2]}), 400, "input")
    assert_error(post(server, "/api/show", {}), 400, "model")
    assert_error(post(server, "/api/nothing", {}), 404, "no such endpoint")
    assert_error(httpx.put(server.url + "/api/chat", json=chat, headers=AUTH), 405, "not allowed")
    raw = httpx.post(server.url + "/api/chat", content=b'{"model": ', headers={**AUTH, "Content-Type": "application/json"})
    assert_error(raw, 400, "not valid JSON")
    nested = b'{"model": "tiny", "x": ' + b"[" * 100000 + b"]" * 100000 + b"}"
    assert_error(httpx.post(server.url + "/api/chat", content=nested, headers={**AUTH, "Content-Type": "application/json"}),
                 400, "nested too deeply")
    assert httpx.get(server.url + "/health").status_code == 200
    assert post(server, "/api/chat", {**chat, "options": GREEDY}).json()["done"]


def test_any_model_name_reaches_the_one_model(client):
    """As on /v1 (issue 21): a name the server does not hold is answered by its one model (not under
    --strict-model-names: test_strict_model_names_and_draining_in_ollama_shape)."""
    r = client.chat(model="llama3.2", messages=HELLO, options=GREEDY)
    assert r.model == "llama3.2" and r.done and r.message.content == client.chat(
        model=MODEL, messages=HELLO, options=GREEDY).message.content


def test_strict_model_names_and_draining_in_ollama_shape():
    from fake_engine import FakeEngine
    from hearth.server.app import build_app

    app = build_app(FakeEngine(), served_model_name="tiny-model", strict_model_names=True)
    with TestClient(app) as c:
        body = {"model": "tiny-model:latest", "messages": HELLO, "stream": False, "options": {"num_predict": 3}}
        r = c.post("/api/chat", json=body)
        assert r.status_code == 200 and r.json()["eval_count"] == 3, r.text
        for path, request in (("/api/chat", {**body, "model": "llama3.2"}), ("/api/show", {"model": "other"}),
                              ("/api/embed", {"model": "llama3.2", "input": "hi"})):
            assert_error(c.post(path, json=request), 404, "does not exist")
        app.state.draining = True
        assert_error(c.post("/api/chat", json=body), 503, "shutting down")
        assert_error(c.get("/api/tags"), 503, "shutting down")


def test_a_client_leaving_or_the_server_stopping_ends_the_work():
    """Streamed or not, a client that leaves aborts its engine request; at shutdown a running stream ends with one
    Ollama error line (EventStreamResponse's SSE event, rewritten), never a cut connection."""
    import socket
    import threading
    import time

    import uvicorn

    from fake_engine import FakeEngine
    from hearth.server.app import build_app
    from hearth.server.transport import SHUTTING_DOWN

    engine = FakeEngine()
    app = build_app(engine, served_model_name="tiny-model")

    async def end_all() -> dict:  # what DrainingServer does when the shutdown grace period is over
        return {"ended": app.state.live.end_all()}

    app.add_api_route("/test/end", end_all, methods=["GET"])
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()

    def wait_until(cond, timeout: float = 10.0) -> bool:
        deadline = time.monotonic() + timeout
        while not cond() and time.monotonic() < deadline:
            time.sleep(0.02)
        return cond()

    try:
        assert wait_until(lambda: server.started)
        engine.settings.token_delay = 0.02
        body = {"model": "tiny-model", "messages": HELLO, "options": {"num_predict": 200}}
        with httpx.stream("POST", url + "/api/chat", json=body, timeout=10) as r:
            lines = r.iter_lines()
            assert [json.loads(next(lines))["done"] for _ in range(3)] == [False] * 3 and engine.active
        assert wait_until(lambda: not engine.active) and len(engine.aborted) == 1
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(url + "/api/generate", json={"model": "tiny-model", "prompt": "hi", "stream": False,
                                                    "options": {"num_predict": 200}}, timeout=0.5)
        assert wait_until(lambda: not engine.active) and len(engine.aborted) == 2
        with httpx.stream("POST", url + "/api/chat", json=body, timeout=10) as r:
            lines = r.iter_lines()
            assert not json.loads(next(lines))["done"]
            assert httpx.get(url + "/test/end").json() == {"ended": 1}
            rest = [json.loads(line) for line in lines if line]
        assert rest[-1] == {"error": SHUTTING_DOWN}
        assert wait_until(lambda: not engine.active)
    finally:
        server.should_exit = True
        thread.join(timeout=10)
