"""Tolerant by default, strict on request: the one table of request fields hearth does not implement itself, and
what it does with each (issue 21).

Frameworks send fields of newer OpenAI APIs, of vLLM and of llama.cpp, often as null. Refusing them breaks the
framework outright, so a field in TABLE is taken out of the body before the strict schema sees it:

    ignore   it cannot change this server's answer (or asks for something a non-reasoning, text-only, air-gapped
             model does anyway): accepted, logged, and named in the response's `Warning` header
    refuse   it asks for output hearth cannot give (audio, a modality other than text): a 400 naming it, unless its
             value asks for nothing (null, ["text"])
    map      a legacy spelling of a field hearth has (`functions` -> `tools`, `function_call` -> `tool_choice`)

A top-level field in neither TABLE nor the schema (a misspelling, a field of a future API) is ignored the same way,
with the warning; `hearth serve --strict` refuses it with a 400 instead, as the schema alone would. Fields inside
objects (a message, a tool, response_format) are always checked strictly: there a typo changes the meaning.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from hearth.server.errors import BadRequest

log = logging.getLogger("hearth")


@dataclass(frozen=True)
class Treatment:
    action: str  # "ignore" | "refuse" | "map"
    why: str
    harmless: tuple[Any, ...] = ()  # values a "refuse" field may carry and still be ignored


TEXT_ONLY = (None, ["text"], [])

TABLE: dict[str, Treatment] = {
    # OpenAI chat completions, newer than hearth or about features a local text model does not have
    "reasoning_effort": Treatment("ignore", "this model does not reason separately: it answers directly"),
    "reasoning": Treatment("ignore", "this model does not reason separately"),
    "verbosity": Treatment("ignore", "the answer's length follows the prompt and max_tokens"),
    "prompt_cache_key": Treatment("ignore", "prefix caching needs no key: equal prefixes share their KV cache"),
    "safety_identifier": Treatment("ignore", "no account system to report to (the audit log keeps the key's id)"),
    "web_search_options": Treatment("ignore", "air-gapped: no web search"),
    "prediction": Treatment("ignore", "a speed hint; the answer is the same without it"),
    "moderation": Treatment("ignore", "hearth serve --guard checks prompts and answers"),
    "modalities": Treatment("refuse", "only text comes out of this model", TEXT_ONLY),
    "audio": Treatment("refuse", "no audio output", (None,)),
    # legacy function calling (before tools)
    "functions": Treatment("map", "the legacy spelling of tools"),
    "function_call": Treatment("map", "the legacy spelling of tool_choice"),
    # llama.cpp's server
    "cache_prompt": Treatment("ignore", "prefix caching is on for every request (serve --no-prefix-caching: off)"),
    "n_probs": Treatment("ignore", "use logprobs / top_logprobs"),
    "id_slot": Treatment("ignore", "hearth schedules requests itself"),
    # vLLM
    "priority": Treatment("ignore", "requests are served first come, first served"),
    "request_id": Treatment("ignore", "hearth names each request itself"),
    "echo": Treatment("ignore", "chat: the prompt is not echoed"),
}

# fields of each route's schema that the TABLE must never shadow (a row there would take them away)
CHAT_ONLY_MAPS = ("functions", "function_call")


def _map_legacy(data: dict) -> None:
    functions = data.pop("functions", None)
    call = data.pop("function_call", None)
    if functions is not None and "tools" not in data:
        if not isinstance(functions, list):
            raise BadRequest("functions must be a list of function definitions", param="functions")
        data["tools"] = [{"type": "function", "function": f} for f in functions]
    if call is not None and "tool_choice" not in data:
        if call in ("none", "auto"):
            data["tool_choice"] = call
        elif isinstance(call, dict) and isinstance(call.get("name"), str):
            data["tool_choice"] = {"type": "function", "function": {"name": call["name"]}}
        else:
            raise BadRequest("function_call must be 'none', 'auto' or {\"name\": ...}", param="function_call")


def tolerate(data: dict, known: set[str] | frozenset[str], strict: bool, route: str) -> list[str]:
    """Take the fields this server does not implement out of `data` (a request body, changed in place), as TABLE
    says; the names of those ignored, for the Warning header. `known`: the route schema's own field names."""
    ignored: list[str] = []
    for name in [k for k in data if k not in known]:
        row = TABLE.get(name)
        if row is None:
            if strict:
                continue  # the schema refuses it, naming it
            data.pop(name)
            ignored.append(name)
            continue
        if row.action == "map":
            if route != "chat":
                data.pop(name)
                ignored.append(name)
            continue
        value = data.pop(name)
        if row.action == "refuse" and value not in row.harmless:
            raise BadRequest(f"{name}: {row.why}; hearth cannot give {value!r}", param=name)
        ignored.append(name)
    if route == "chat":
        _map_legacy(data)
    if ignored:
        log.info("%s: ignored %s", route, ", ".join(sorted(ignored)))
    return ignored


def warning(ignored: list[str]) -> str:
    """An RFC 7234 Warning header value naming the ignored fields (299: a persistent warning)."""
    names = ", ".join(sorted(ignored))[:500]
    return f'299 hearth "ignored fields this server does not implement: {names}"'
