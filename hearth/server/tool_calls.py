"""Tool (function) calling for /v1/chat/completions: tools into the prompt, calls out of the reply.

Into the prompt. A chat template that knows tools (its source uses `tools`: Llama 3.1+, Mistral, Qwen, Hermes...)
gets them as transformers passes them: `tools=[{"type": "function", "function": {...}}]`, assistant `tool_calls`
with their arguments as objects, `tool` messages. A template that does not (SmolLM2's ChatML) gets hearth's
instructions in the system message, earlier calls as the JSON text the instructions ask for, and results as a user
turn, so the history stays in roles every template renders.

Out of the reply. `tool_choice: "required"` or a named function constrains the reply to a JSON array of calls whose
arguments follow each tool's own schema (structured output, as vLLM does), so it always parses. With "auto" the
reply is parsed when it ends, in the formats models are trained on: `<tool_call>{...}</tool_call>` (Hermes, Qwen,
SmolLM3), a bare JSON call or list of calls (`{"name", "arguments"}`; Llama 3.1+'s `{"name", "parameters"}`),
`[TOOL_CALLS] [...]` (Mistral). A reply that is not a call to a known tool is text. While streaming, text that may
be the start of a call is held back until it is clearly not one; a call is sent whole when the reply ends.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from hearth import safejson
from hearth.engine.structured import Structure
from hearth.server.protocol import MAX_JSON_DEPTH, ChatCompletionRequest, ChatMessage, FunctionCall, NamedToolChoice, Tool, ToolCall

# what a reply that is a call begins with, in the formats above (special tokens are decoded away, hence the JSON)
CALL_STARTS = ("<tool_call>", "[TOOL_CALLS]", "<|python_tag|>", "{", "[")


def template_knows_tools(source: str) -> bool:
    return re.search(r"\btools\b", source) is not None


def instructions(tools: list[Tool]) -> str:
    """The system-message text that teaches a template without tool support to call tools."""
    lines = [json.dumps({"name": t.function.name, **({"description": t.function.description} if t.function.description else {}),
                         "parameters": t.function.parameters or {"type": "object", "properties": {}}},
                        ensure_ascii=False) for t in tools]
    return ("You can call these tools (each with a JSON schema of its arguments):\n" + "\n".join(lines) + "\n\n"
            "To call tools, reply with only a JSON array of calls, "
            '[{"name": "<tool name>", "arguments": {<arguments>}}], and nothing else; the results come in the next '
            "message. If no tool is needed, answer normally.")


def prompt(messages: list[ChatMessage], offered: list[Tool] | None,
           template_source: str) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The messages and extra template variables for a prompt offering these tools (None: none)."""
    if template_knows_tools(template_source):
        kwargs = {"tools": [t.model_dump(exclude_none=True) for t in offered]} if offered else {}
        return [m.for_template() for m in messages], kwargs
    return _plain_history(messages, offered), {}


def _plain_history(messages: list[ChatMessage], offered: list[Tool] | None) -> list[dict[str, Any]]:
    names: dict[str, str] = {}  # tool_call_id -> tool name
    out: list[dict[str, Any]] = []
    for m in messages:
        if m.role == "tool":
            line = f"{names.get(m.tool_call_id, m.name or m.tool_call_id)}: {m.text}"
            if out and out[-1].get("_results"):  # several results in a row: one user turn
                out[-1]["content"] += "\n" + line
            else:
                out.append({"role": "user", "content": "Tool results:\n" + line, "_results": True})
            continue
        msg = m.for_template()
        if m.tool_calls:
            names.update((c.id, c.function.name) for c in m.tool_calls)
            calls = [{"name": c.function.name, "arguments": msg_args["function"]["arguments"]}
                     for c, msg_args in zip(m.tool_calls, msg["tool_calls"])]
            msg = {"role": "assistant", "content": (m.text + "\n" if m.text else "") + json.dumps(calls, ensure_ascii=False)}
        out.append(msg)
    for m in out:
        m.pop("_results", None)
    if offered:
        text = instructions(offered)
        if out and out[0]["role"] == "system":
            out[0] = {**out[0], "content": out[0]["content"] + "\n\n" + text}
        else:
            out.insert(0, {"role": "system", "content": text})
    return out


def offered(req: ChatCompletionRequest) -> list[Tool] | None:
    """The tools the model is told about: none for tool_choice "none"."""
    return req.tools if req.effective_tool_choice != "none" else None


def forced_structure(req: ChatCompletionRequest) -> Structure | None:
    """For "required" or a named function: the reply must be a JSON array of calls (one at most without
    parallel_tool_calls), each naming an offered tool with arguments that follow its schema."""
    if not req.forces_tool_call:
        return None
    choice = req.effective_tool_choice
    chosen = req.tools if choice == "required" else [t for t in req.tools if t.function.name == choice.function.name]
    items = [{"type": "object", "properties": {"name": {"const": t.function.name}, "arguments": _closed(t)},
              "required": ["name", "arguments"], "additionalProperties": False} for t in chosen]
    schema: dict[str, Any] = {"type": "array", "items": items[0] if len(items) == 1 else {"anyOf": items},
                              "minItems": 1}
    if req.parallel_tool_calls is False or isinstance(choice, NamedToolChoice):
        schema["maxItems"] = 1
    return Structure.json_schema(schema)


def _closed(tool: Tool) -> dict[str, Any]:
    """The arguments' schema, with no properties beyond those declared unless it says otherwise (OpenAI's strict
    mode): JSON Schema's default lets a small model add keys the tool cannot use until it runs out of tokens."""
    schema = tool.function.parameters or {"type": "object", "properties": {}}
    if tool.function.strict is not False and "properties" in schema and "additionalProperties" not in schema:
        schema = {**schema, "additionalProperties": False}
    return schema


@dataclass
class Reply:
    content: str | None
    calls: list[ToolCall]


def parse(text: str, names: set[str], call_id) -> Reply:
    """The reply as text, or as calls to the offered tools (see the module docstring for the formats)."""
    t = text.strip()
    for prefix in ("<|python_tag|>", "[TOOL_CALLS]"):
        if t.startswith(prefix):
            t = t[len(prefix):].strip()
    blocks = re.findall(r"<tool_call>(.*?)(?:</tool_call>|$)", t, re.S)
    before = t.split("<tool_call>", 1)[0].strip() if blocks else ""
    calls: list[ToolCall] = []
    for block in blocks or [t]:
        try:
            # the reply is model output, which a client can steer (a regex, a prompt) into `[[[[...`: bounded depth
            found = safejson.loads(block, max_depth=MAX_JSON_DEPTH)
        except ValueError:  # not JSON, or too deep: text
            return Reply(text, [])
        for c in found if isinstance(found, list) else [found]:
            if not (isinstance(c, dict) and c.get("name") in names):
                return Reply(text, [])
            args = c.get("arguments", c.get("parameters", {}))
            if isinstance(args, str):  # some models write the arguments as JSON text already
                try:
                    args = safejson.loads(args, max_depth=MAX_JSON_DEPTH)
                except ValueError:
                    return Reply(text, [])
            calls.append(ToolCall(id=call_id(), function=FunctionCall(name=c["name"], arguments=json.dumps(args, ensure_ascii=False))))
    if not calls:
        return Reply(text, [])
    return Reply(before or None, calls)


def cut_call(text: str, names: set[str], call_id, named: str | None = None) -> Reply:
    """A forced call the token budget cut short (finish_reason length): the call so far, as OpenAI returns it (its
    arguments an unfinished JSON text), never the internal `[{"name": ...` text as content. With no tool name
    written yet, the named tool_choice's, else no call at all."""
    m = re.search(r'"name"\s*:\s*"([^"\\]{1,200})"', text)
    name = m.group(1) if m and m.group(1) in names else named
    if name is None:
        return Reply(None, [])
    a = re.search(r'"arguments"\s*:\s*', text)
    args = text[a.end():] if a else ""
    return Reply(None, [ToolCall(id=call_id(), function=FunctionCall(name=name, arguments=args))])


class ReplyStream:
    """One streamed choice: text goes out as it comes unless it may be the start of a call (or a call is forced);
    that is held back until it is clearly text, or parsed when the reply ends."""

    def __init__(self, names: set[str], forced: bool, call_id, named: str | None = None):
        self.names, self.forced, self.call_id, self.named = names, forced, call_id, named
        self.pending = ""
        self.is_text = False

    def feed(self, text: str) -> str:
        """The text to send now."""
        if self.is_text:
            return text
        self.pending += text
        head = self.pending.lstrip()
        if self.forced or not head or any(s.startswith(head) or head.startswith(s) for s in CALL_STARTS):
            return ""
        self.is_text = True
        out, self.pending = self.pending, ""
        return out

    def finish(self) -> Reply:
        """What is left when the reply ends: held text, or the calls it was."""
        if self.is_text:
            return Reply(None, [])
        reply = parse(self.pending, self.names, self.call_id) if self.pending else Reply(None, [])
        if self.forced and not reply.calls:  # cut short by max_tokens: the call so far, never its text
            return cut_call(self.pending, self.names, self.call_id, self.named)
        return reply
