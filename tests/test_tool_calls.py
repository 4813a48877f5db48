"""Tool calling (hearth/server/tool_calls.py) without a model: prompts, the forced-call schema, reply parsing and
the streaming hold-back. The real model answering through the openai SDK: tests/test_server_openai.py."""

from __future__ import annotations

import itertools
import json

import jsonschema
import pytest

from hearth.server import tool_calls
from hearth.server.protocol import ChatCompletionRequest
from hearth.tokenizer.chat import ChatTemplate

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
ADD = {"type": "function", "function": {"name": "add", "parameters": {
    "type": "object", "properties": {"a": {"type": "number"}, "b": {"type": "number"}}, "required": ["a", "b"]}}}
NAMES = {"get_weather", "add"}
HISTORY = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Weather in Paris, and 2+3?"},
    {"role": "assistant", "content": None, "tool_calls": [
        {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}},
        {"id": "c2", "type": "function", "function": {"name": "add", "arguments": '{"a": 2, "b": 3}'}}]},
    {"role": "tool", "tool_call_id": "c1", "content": "18C"},
    {"role": "tool", "tool_call_id": "c2", "content": "5"},
]
# a tool-aware template in the style of Llama 3.1's (which reads tools, tool_calls with object arguments, tool turns)
AWARE = """{%- if tools %}TOOLS {{ tools | tojson }}
{% endif %}{%- for m in messages %}{{ m.role }}: {% if m.tool_calls %}{% for c in m.tool_calls %}CALL {{ c.function.name }} {{ c.function.arguments | tojson }};{% endfor %}{% else %}{{ m.content }}{% endif %}
{% endfor %}{% if add_generation_prompt %}assistant: {% endif %}"""


def request(**kw) -> ChatCompletionRequest:
    return ChatCompletionRequest.model_validate({"messages": HISTORY, "tools": [WEATHER, ADD], **kw})


def prompt(req: ChatCompletionRequest, source: str):
    return tool_calls.prompt(req.messages, tool_calls.offered(req), source)


def ids():
    n = itertools.count()
    return lambda: f"call-{next(n)}"


def test_template_without_tools_gets_instructions_and_plain_history():
    messages, extra = prompt(request(), ChatTemplate(None).source)  # ChatML, as SmolLM2's
    assert extra == {}
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "user"]
    assert messages[0]["content"].startswith("Be brief.\n\nYou can call these tools")
    assert json.dumps({"name": "add", "parameters": ADD["function"]["parameters"]}) in messages[0]["content"]
    assert json.loads(messages[2]["content"]) == [{"name": "get_weather", "arguments": {"city": "Paris"}},
                                                  {"name": "add", "arguments": {"a": 2, "b": 3}}]
    assert messages[3]["content"] == "Tool results:\nget_weather: 18C\nadd: 5"  # one turn, named by the calls
    ChatTemplate(None).render(messages)  # renders
    none, _ = prompt(request(tool_choice="none"), ChatTemplate(None).source)
    assert "You can call" not in none[0]["content"]  # "none": the tools are not offered


def test_tool_aware_template_gets_tools_as_transformers_passes_them():
    messages, extra = prompt(request(), AWARE)
    assert extra == {"tools": [WEATHER, ADD]}
    text = ChatTemplate(AWARE).render(messages, **extra)
    assert 'CALL get_weather {"city": "Paris"};CALL add {"a": 2, "b": 3};' in text  # arguments as objects
    assert "tool: 18Ctool: 5assistant: " in text and text.startswith("TOOLS [")  # (trim_blocks eats the newlines)
    _, extra = prompt(request(tool_choice="none"), AWARE)
    assert extra == {}


def test_forced_call_schema():
    schema = json.loads(tool_calls.forced_structure(request(tool_choice="required")).spec)
    jsonschema.validate([{"name": "add", "arguments": {"a": 1, "b": 2}},
                         {"name": "get_weather", "arguments": {"city": "Oslo"}}], schema)
    for bad in ([], [{"name": "add", "arguments": {"a": 1}}], [{"name": "nope", "arguments": {}}],
                [{"name": "get_weather", "arguments": {"city": "Oslo", "extra": 1}}]):  # closed, as OpenAI's strict
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(bad, schema)
    single = json.loads(tool_calls.forced_structure(request(tool_choice="required", parallel_tool_calls=False)).spec)
    assert single["maxItems"] == 1
    named = json.loads(tool_calls.forced_structure(
        request(tool_choice={"type": "function", "function": {"name": "add"}})).spec)
    assert named["maxItems"] == 1 and named["items"]["properties"]["name"] == {"const": "add"}
    assert tool_calls.forced_structure(request()) is None  # auto: free text, parsed afterwards


@pytest.mark.parametrize("text, content, calls", [
    ('[{"name": "add", "arguments": {"a": 1, "b": 2}}]', None, [("add", {"a": 1, "b": 2})]),  # hearth's own
    ('{"name": "get_weather", "parameters": {"city": "Rome"}}', None, [("get_weather", {"city": "Rome"})]),  # Llama 3
    ('<|python_tag|>{"name": "add", "parameters": {"a": 1, "b": 1}}', None, [("add", {"a": 1, "b": 1})]),
    ('Let me check.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo"}}\n</tool_call>\n'
     '<tool_call>{"name": "add", "arguments": "{\\"a\\": 1, \\"b\\": 2}"}</tool_call>', "Let me check.",
     [("get_weather", {"city": "Oslo"}), ("add", {"a": 1, "b": 2})]),  # Hermes/Qwen; arguments given as text
    ('[TOOL_CALLS] [{"name": "add", "arguments": {"a": 0, "b": 0}}]', None, [("add", {"a": 0, "b": 0})]),  # Mistral
    ("The weather is fine.", "The weather is fine.", []),
    ('{"name": "delete_everything", "arguments": {}}', '{"name": "delete_everything", "arguments": {}}', []),
    ('[{"name": "add", "arguments": {"a": 1', '[{"name": "add", "arguments": {"a": 1', []),  # cut off: text
    ("[1, 2, 3]", "[1, 2, 3]", []),
])
def test_parse_reply(text, content, calls):
    reply = tool_calls.parse(text, NAMES, ids())
    assert reply.content == content
    assert [(c.function.name, json.loads(c.function.arguments)) for c in reply.calls] == calls
    assert [c.id for c in reply.calls] == [f"call-{i}" for i in range(len(calls))]


def test_stream_sends_text_at_once_and_holds_what_may_be_a_call():
    s = tool_calls.ReplyStream(NAMES, forced=False, call_id=ids())
    assert s.feed("  ") == ""  # undecided
    assert s.feed("Hel") == "  Hel" and s.feed("lo") == "lo"  # text: out as it comes
    assert s.finish().calls == []
    s = tool_calls.ReplyStream(NAMES, forced=False, call_id=ids())
    assert s.feed("<tool") == "" and s.feed('_call>{"name": "add", "arguments": {"a": 1, "b": 2}}') == ""
    reply = s.finish()
    assert reply.content is None and [c.function.name for c in reply.calls] == ["add"]
    s = tool_calls.ReplyStream(NAMES, forced=False, call_id=ids())
    assert s.feed("[1, 2]") == "" and s.finish().content == "[1, 2]"  # held, then text after all
    s = tool_calls.ReplyStream(NAMES, forced=True, call_id=ids())
    assert s.feed("Hello") == ""  # forced: everything held (the constraint makes it a call)


def test_a_reply_nested_thousands_deep_is_text_not_a_crash():
    """A client can steer the reply (a regex, a prompt) into `[[[[...`: json.loads raised RecursionError (a 500 after
    the whole generation). Parsed with a depth limit, it is text."""
    deep = "[" * 5000 + "]" * 5000
    assert tool_calls.parse(deep, NAMES, ids()) == tool_calls.Reply(deep, [])
    call = '{"name": "add", "arguments": "' + "[" * 5000 + "]" * 5000 + '"}'  # arguments as JSON text, nested
    assert tool_calls.parse(call, NAMES, ids()).calls == []
    shallow = tool_calls.parse('{"name": "add", "arguments": {"a": [[1]], "b": 2}}', NAMES, ids())
    assert [c.function.name for c in shallow.calls] == ["add"]


def test_history_arguments_become_objects_for_the_template_within_the_depth_limit():
    from hearth.server.protocol import MAX_JSON_DEPTH

    ok = "[" * MAX_JSON_DEPTH + "]" * MAX_JSON_DEPTH
    req = request(messages=[HISTORY[1], {"role": "assistant", "tool_calls": [
        {"id": "c", "type": "function", "function": {"name": "add", "arguments": ok}}]}])
    messages, _ = prompt(req, AWARE)
    assert messages[1]["tool_calls"][0]["function"]["arguments"] == json.loads(ok)
    with pytest.raises(ValueError, match=f"nested {MAX_JSON_DEPTH + 1} levels deep"):
        request(messages=[HISTORY[1], {"role": "assistant", "tool_calls": [
            {"id": "c", "type": "function", "function": {"name": "add", "arguments": "[" + ok + "]"}}]}])
