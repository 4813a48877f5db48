"""Issue 21: OpenAI's Responses API on `hearth serve` (hearth/server/responses.py), driven by the real `openai` SDK and
the OpenAI Agents SDK's default model (OpenAIResponsesModel): text, streamed typed events, stored responses
(retrieve, input items, delete), previous_response_id, a function-tool round trip, text.format json_schema, bad
inputs, and a locked database failing only the requests that store.

A real server subprocess over a tiny random-weight GGUF with a 2048-token context (tests/store_kit.py's model; the
tool instructions hearth writes for a template without tool support take ~350 of the tiny tokenizer's tokens). The
random model never chooses a tool nor ends a sentence: calls are forced (tool_choice), structured output ends when its
JSON does, and a plain-text agent stops at a stop string (hearth's sampling extension, sent in extra_body)."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import sqlite3
import time
from typing import Literal

import httpx
import jsonschema
import openai
import pytest
from fastapi.testclient import TestClient

import tiny
from fake_engine import FakeEngine
from serve_kit import ServerProcess
from store_kit import _tiny_parts

pytestmark = pytest.mark.timeout(300)

WEATHER = {"type": "function", "name": "get_weather", "description": "The weather in a city.", "strict": True,
           "parameters": {"type": "object", "properties": {"city": {"type": "string", "enum": ["Paris", "Rome"]}},
                          "required": ["city"], "additionalProperties": False}}
PICK = {"type": "object", "properties": {"ok": {"type": "boolean"}, "city": {"type": "string", "enum": ["Paris", "Rome"]}},
        "required": ["ok", "city"], "additionalProperties": False}
STREAM_TEXT = ["response.created", "response.in_progress", "response.output_item.added", "response.content_part.added",
               "response.output_text.delta"]
STREAM_END = ["response.output_text.done", "response.content_part.done", "response.output_item.done"]


def write_model(path):
    from hearth.weights.gguf_writer import write_gguf

    cfg, state, tok = _tiny_parts()
    return write_gguf(path, dataclasses.replace(cfg, max_seq_len=2048), state, tok, tiny.CHAT_TEMPLATE,
                      metadata={"general.name": "tiny"})


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("responses")
    proc = ServerProcess(tmp, "responses", model=str(write_model(tmp / "tiny.gguf")), threads=1,
                         env={"HEARTH_HOME": str(tmp / "home")})
    try:
        proc.wait_healthy()
        proc.db = tmp / "home" / "responses.sqlite"
        yield proc
    finally:
        proc.stop()


@pytest.fixture
def client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key="k", max_retries=0, timeout=60)


def test_create_retrieve_list_delete(client):
    r = client.responses.create(model="tiny", input="Hello", instructions="Be brief.", max_output_tokens=4,
                                temperature=0, metadata={"team": "a"}, reasoning={"effort": "low"}, include=[],
                                truncation="disabled", user="u1", parallel_tool_calls=True)
    assert r.object == "response" and r.id.startswith("resp_") and r.model == "tiny"
    assert r.status == "incomplete" and r.incomplete_details.reason == "max_output_tokens"  # the random model never ends
    assert r.usage.output_tokens == 4 and r.usage.total_tokens == r.usage.input_tokens + 4
    assert [o.type for o in r.output] == ["message"] and r.output[0].content[0].type == "output_text"
    assert r.output_text and r.instructions == "Be brief." and r.metadata == {"team": "a"} and r.store
    got = client.responses.retrieve(r.id)
    assert got.model_dump() == r.model_dump()
    items = client.responses.input_items.list(r.id)
    assert [(i.type, i.role, i.content[0].text) for i in items.data] == [("message", "user", "Hello")]
    client.responses.delete(r.id)
    with pytest.raises(openai.NotFoundError, match=r.id):
        client.responses.retrieve(r.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.delete(r.id)


def test_input_items_pages(client):
    turns = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "One"},
             {"role": "assistant", "content": [{"type": "output_text", "text": "Two", "annotations": []}]},
             {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Three"}]}]
    r = client.responses.create(model="tiny", input=turns, max_output_tokens=2)
    first = client.responses.input_items.list(r.id, order="asc", limit=3)
    assert [i.role for i in first.data] == ["system", "user", "assistant"] and first.has_more
    rest = client.responses.input_items.list(r.id, order="asc", after=first.data[-1].id)
    assert [i.content[0].text for i in rest.data] == ["Three"] and not rest.has_more
    assert [i.role for i in client.responses.input_items.list(r.id).data] == ["user", "assistant", "user", "system"]


def test_streamed_events(client):
    events = list(client.responses.create(model="tiny", input=[{"role": "user", "content": "Hi"}], max_output_tokens=5,
                                          temperature=0, stream=True))
    kinds = [e.type for e in events]
    deltas = [e for e in events if e.type == "response.output_text.delta"]
    assert kinds == STREAM_TEXT[:-1] + ["response.output_text.delta"] * len(deltas) + STREAM_END + [
        "response.incomplete"], kinds
    assert [e.sequence_number for e in events] == list(range(len(events)))
    final = events[-1].response
    text = "".join(d.delta for d in deltas)
    assert text == final.output_text == events[-4].text and final.usage.output_tokens == 5
    assert all(d.item_id == final.output[0].id for d in deltas)
    assert client.responses.retrieve(final.id).output_text == text  # stored once the stream ended
    # the same request not streamed: the same answer (greedy)
    assert client.responses.create(model="tiny", input="Hi", max_output_tokens=5, temperature=0).output_text == text


def test_previous_response_id_continues_the_conversation(client):
    first = client.responses.create(model="tiny", input="My name is Ada.", instructions="Be terse.", max_output_tokens=3,
                                    temperature=0)
    second = client.responses.create(model="tiny", input="What is my name?", previous_response_id=first.id,
                                     max_output_tokens=3, temperature=0)
    assert second.previous_response_id == first.id and second.instructions is None
    # the same conversation sent whole: the same prompt (instructions are not carried over, as OpenAI does)
    whole = client.responses.create(model="tiny", max_output_tokens=3, temperature=0, input=[
        {"role": "user", "content": "My name is Ada."}, {"role": "assistant", "content": first.output_text},
        {"role": "user", "content": "What is my name?"}])
    assert second.usage.input_tokens == whole.usage.input_tokens > first.usage.input_tokens
    assert second.output_text == whole.output_text
    third = client.responses.create(model="tiny", input="And again?", previous_response_id=second.id,
                                    max_output_tokens=2, temperature=0)
    assert third.usage.input_tokens > second.usage.input_tokens + second.usage.output_tokens
    items = client.responses.input_items.list(third.id).data
    assert [i.content[0].text for i in items] == ["And again?"]  # its own input only
    unkept = client.responses.create(model="tiny", input="Forget me", store=False, max_output_tokens=2)
    assert unkept.store is False
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(unkept.id)
    with pytest.raises(openai.NotFoundError, match="previous_response_id|no stored response"):
        client.responses.create(model="tiny", input="Hi", previous_response_id=unkept.id, max_output_tokens=2)


def test_function_tool_round_trip(client):
    asked = {"role": "user", "content": "What is the weather in Paris?"}
    r = client.responses.create(model="tiny", input=[asked], tools=[WEATHER], parallel_tool_calls=False,
                                tool_choice={"type": "function", "name": "get_weather"}, temperature=0.7,
                                extra_body={"seed": 1})
    assert r.status == "completed" and [o.type for o in r.output] == ["function_call"], r.output
    call = r.output[0]
    jsonschema.validate(json.loads(call.arguments), WEATHER["parameters"])
    assert call.name == "get_weather" and call.call_id and r.tool_choice.name == "get_weather"
    result = {"type": "function_call_output", "call_id": call.call_id, "output": "Sunny, 24 C"}
    # the result sent back with the whole history, and after previous_response_id: the same prompt
    answer = client.responses.create(model="tiny", input=[asked, call.model_dump(exclude_none=True), result],
                                     tools=[WEATHER], max_output_tokens=4, temperature=0)
    chained = client.responses.create(model="tiny", previous_response_id=r.id, input=[result], tools=[WEATHER],
                                      max_output_tokens=4, temperature=0)
    assert [o.type for o in answer.output] == ["message"] and answer.output_text
    assert answer.usage.input_tokens == chained.usage.input_tokens > r.usage.input_tokens
    assert answer.output_text == chained.output_text
    # streamed, with tool_choice "required": the call's typed events
    events = list(client.responses.create(model="tiny", input=[asked], tools=[WEATHER], tool_choice="required",
                                          parallel_tool_calls=False, temperature=0.7, stream=True,
                                          extra_body={"seed": 1}))
    kinds = [e.type for e in events]
    assert kinds == ["response.created", "response.in_progress", "response.output_item.added",
                     "response.function_call_arguments.delta", "response.function_call_arguments.done",
                     "response.output_item.done", "response.completed"], kinds
    done = events[4]
    assert done.name == "get_weather" and json.loads(done.arguments) == json.loads(call.arguments)  # same seed
    assert events[2].item.type == "function_call" and events[-1].response.output[0].arguments == done.arguments


def test_text_format_json_schema(client):
    r = client.responses.create(model="tiny", input="Is it sunny, and where?", temperature=0.7, max_output_tokens=200,
                                extra_body={"seed": 2}, text={"format": {"type": "json_schema", "name": "pick",
                                                                        "schema": PICK, "strict": True}})
    assert r.status == "completed", r.output_text
    jsonschema.validate(json.loads(r.output_text), PICK)
    assert r.text.format.type == "json_schema" and r.text.format.name == "pick"
    obj = client.responses.create(model="tiny", input="Some JSON", max_output_tokens=8, temperature=0,
                                  text={"format": {"type": "json_object"}})
    assert obj.output_text.lstrip().startswith("{")


def test_agents_sdk_default_model(server):
    """The Agents SDK's default model speaks the Responses API: a text answer, a structured answer, a forced tool
    call run by the SDK, and a streamed run."""
    agents = pytest.importorskip("agents")
    from agents.models.openai_responses import OpenAIResponsesModel
    from pydantic import BaseModel

    agents.set_tracing_disabled(True)  # no trace export: nothing may try the network

    def model():  # a client per event loop (run_sync runs one each)
        return OpenAIResponsesModel(model="tiny", openai_client=openai.AsyncOpenAI(
            base_url=server.url + "/v1", api_key="k", max_retries=0, timeout=60))

    stop = agents.ModelSettings(max_tokens=16, extra_body={"stop": [" ", "e"], "seed": 1})
    result = agents.Runner.run_sync(agents.Agent(name="Assistant", instructions="You are helpful.", model=model(),
                                                 model_settings=stop), "hi")
    assert isinstance(result.final_output, str)

    class Verdict(BaseModel):
        ok: bool

    result = agents.Runner.run_sync(agents.Agent(
        name="Judge", instructions="Answer.", model=model(), output_type=Verdict,
        model_settings=agents.ModelSettings(max_tokens=60, temperature=0.7, extra_body={"seed": 1})), "Is it fine?")
    assert isinstance(result.final_output, Verdict)

    calls = []

    @agents.function_tool
    def get_weather(city: Literal["Paris", "Rome"]) -> str:
        """The weather in a city."""
        calls.append(city)
        return f"sunny in {city}"

    result = agents.Runner.run_sync(agents.Agent(
        name="Forecaster", instructions="Use your tools.", model=model(), tools=[get_weather],
        tool_use_behavior="stop_on_first_tool",
        model_settings=agents.ModelSettings(tool_choice="get_weather", temperature=0.7, extra_body={"seed": 1})),
        "Weather in Paris?")
    assert len(calls) == 1 and result.final_output == f"sunny in {calls[0]}"

    async def streamed():
        run = agents.Runner.run_streamed(agents.Agent(name="Streamer", instructions="Be brief.", model=model(),
                                                      model_settings=stop), "hi")
        kinds = [e.type async for e in run.stream_events()]
        return run.final_output, kinds

    final, kinds = asyncio.run(streamed())
    assert isinstance(final, str) and "raw_response_event" in kinds


def test_bad_requests_name_the_field_and_the_server_keeps_serving(server, client):
    def refused(body: dict, param: str, words: str = "") -> None:
        r = httpx.post(server.url + "/v1/responses", json=body, timeout=60)
        assert r.status_code == 400, r.text
        err = r.json()["error"]
        assert err["type"] == "invalid_request_error" and err["param"] == param, err
        assert words in err["message"], err

    refused({"input": 5}, "input")
    refused({}, "input", "required")
    refused({"input": []}, "input", "at least one")
    refused({"input": "hi", "temperature": "hot"}, "temperature")
    refused({"input": "hi", "max_output_tokens": 0}, "max_output_tokens")
    refused({"input": "hi", "max_output_tokens": 10**6}, "max_output_tokens", "context")
    refused({"input": "x " * 1500, "max_output_tokens": 1000}, "input", "context length")
    refused({"input": "hi", "tools": [{"type": "web_search"}]}, "tools.0.type", "function tools")
    refused({"input": "hi", "tools": [WEATHER], "tool_choice": {"type": "function", "name": "nope"}}, "tool_choice")
    refused({"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "x"}]}]},
            "input.0.content.0", "text only")
    refused({"input": [{"type": "web_search_call", "id": "w"}]}, "input.0", "unsupported item type")
    refused({"input": "hi", "background": True}, "background", "not supported")
    refused({"input": "hi", "prompt": {"id": "pmpt_1"}}, "prompt", "not supported")
    refused({"input": "hi", "text": {"format": {"type": "json_schema", "schema": {"type": "frob"}}}}, None,
            "invalid JSON schema")
    refused({"input": "hi", "metadata": {str(i): "v" for i in range(17)}}, "metadata", "at most 16")
    with pytest.raises(openai.NotFoundError, match="resp_nope") as e:
        client.responses.create(model="tiny", input="Hi", previous_response_id="resp_nope", max_output_tokens=2)
    assert e.value.body["param"] == "previous_response_id", e.value.body
    assert httpx.get(server.url + "/v1/responses/resp_nope").status_code == 404
    # a field of a newer API is ignored with a Warning header (docs/CLIENTS.md), as on chat completions
    r = httpx.post(server.url + "/v1/responses", json={"input": "hi", "max_output_tokens": 2, "frobnicate": 1})
    assert r.status_code == 200 and "frobnicate" in r.headers["warning"], r.text
    assert httpx.get(server.url + "/health").json() == {"status": "ok"}
    assert "Traceback" not in server.log_path.read_text()


def test_a_locked_database_fails_only_the_requests_that_store(server, client):
    lock = sqlite3.connect(server.db, timeout=5, isolation_level=None)
    lock.execute("BEGIN EXCLUSIVE")
    try:
        t = time.monotonic()
        r = httpx.post(server.url + "/v1/responses", json={"input": "Hi", "max_output_tokens": 2}, timeout=60)
        assert r.status_code == 503 and "locked" in r.json()["error"]["message"] and time.monotonic() - t < 30, r.text
        assert client.responses.create(model="tiny", input="Hi", store=False, max_output_tokens=2).status
        assert httpx.get(server.url + "/health").status_code == 200
    finally:
        lock.execute("ROLLBACK")
        lock.close()
    r = client.responses.create(model="tiny", input="Hi", max_output_tokens=2)
    assert client.responses.retrieve(r.id).id == r.id


def test_without_a_store_nothing_is_kept():
    """build_app without a ResponseStore (hearth serve --no-store-responses): answers say store false, and the
    stored-response routes say why they find nothing."""
    from hearth.server.app import build_app

    engine = FakeEngine(max_model_len=256)
    engine.settings.eos_after = 3
    with TestClient(build_app(engine, served_model_name="tiny")) as http:
        r = http.post("/v1/responses", json={"input": "Hello", "max_output_tokens": 8})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["store"] is False and body["status"] == "completed" and body["usage"]["output_tokens"] == 3
        missing = http.get(f"/v1/responses/{body['id']}")
        assert missing.status_code == 404 and "--no-store-responses" in missing.json()["error"]["message"]
        assert http.post("/responses", json={"input": "Hello", "max_output_tokens": 2}).status_code == 200  # no /v1


def test_an_error_midway_ends_the_stream_with_response_failed():
    from hearth.engine.async_engine import EngineDeadError
    from hearth.server.app import build_app

    engine = FakeEngine(max_model_len=256)
    engine.settings.fail_midway = EngineDeadError("the engine stopped")
    with TestClient(build_app(engine, served_model_name="tiny")) as http:
        r = http.post("/v1/responses", json={"input": "Hello", "max_output_tokens": 8, "stream": True})
    assert r.status_code == 200, r.text
    events = [json.loads(line[6:]) for line in r.text.splitlines() if line.startswith("data: ")]
    assert [e["type"] for e in events[-2:]] == ["error", "response.failed"], events
    assert events[-1]["response"]["status"] == "failed" and "stopped" in events[-2]["message"]
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    assert not engine.active
