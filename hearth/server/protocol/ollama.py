"""Ollama's API (hearth/server/ollama.py): the request bodies of /api/chat, /api/generate, /api/embed,
/api/embeddings and /api/show, as Ollama's docs/api.md and its Python client (ollama/_types.py) write them.

Tolerant where Ollama is: Ollama's server (Go's JSON decoder) ignores fields it does not know, and apps written for it
send some (`truncate`, `shift`, a newer client's additions), so unknown fields are accepted and the route logs their
names. Strict where Ollama is too: a value of the wrong type is a 400 naming the field (`options.temperature`), never
coerced ("0.5" is no number). `options` follows Ollama's Modelfile parameters: the sampling ones are fields here and
reach the sampler; the load-time and llama.cpp-only ones (`num_gpu`, `num_thread`, `mirostat`, `typical_p`, ...) and
any others are kept as unknown, then ignored and logged.
"""

from __future__ import annotations

from typing import Any, Literal, Optional, Union

from pydantic import ConfigDict, Field, StrictBool, StrictInt, field_validator

from hearth.server.protocol.common import MAX_STOP, SEED_MAX, Strict, _shallow


class Lenient(Strict):
    """Strict types, `null` as the default (Strict), unknown fields kept in `model_extra` (and logged by the route)."""

    model_config = ConfigDict(extra="allow")

    def unknown(self) -> list[str]:
        return sorted(self.model_extra or ())


class Options(Lenient):
    """`options`: Ollama's runtime parameters that change the answer, with the bounds hearth's sampler takes."""

    num_predict: Optional[StrictInt] = None  # <= 0 (Ollama's -1 infinite, -2 fill the context): to the context's end
    temperature: Optional[float] = Field(None, ge=0, le=2)
    top_p: Optional[float] = Field(None, gt=0, le=1)
    top_k: Optional[StrictInt] = Field(None, ge=0)  # 0: off
    min_p: Optional[float] = Field(None, ge=0, le=1)
    seed: Optional[StrictInt] = Field(None, le=SEED_MAX)  # negative (Ollama's -1): a random seed
    stop: Union[str, list[str], None] = None
    repeat_penalty: Optional[float] = Field(None, gt=0, le=10)
    presence_penalty: Optional[float] = Field(None, ge=-2, le=2)
    frequency_penalty: Optional[float] = Field(None, ge=-2, le=2)
    num_ctx: Optional[StrictInt] = Field(None, ge=1)  # a load-time size: the served context is fixed (logged)

    @field_validator("stop")
    @classmethod
    def _stop(cls, v: Any) -> Any:
        if isinstance(v, list) and len(v) > MAX_STOP:
            raise ValueError(f"at most {MAX_STOP} stop strings are allowed")
        return v


class FunctionCall(Lenient):
    name: str
    arguments: Union[dict[str, Any], str] = Field(default_factory=dict)  # an object (Ollama's); JSON text accepted
    index: Optional[StrictInt] = None

    _arguments = field_validator("arguments")(_shallow)


class ToolCall(Lenient):
    id: Optional[str] = None  # newer Ollama versions number their calls; older ones send none
    type: Optional[Literal["function"]] = None
    function: FunctionCall


class Message(Lenient):
    """A chat turn. A `tool` turn names the tool it answers (`tool_name`, Ollama's) or the call (`tool_call_id`)."""

    role: Literal["system", "user", "assistant", "tool"]
    content: Optional[str] = None
    images: Optional[list[str]] = None  # base64 images: refused by a text-only model when there are any
    tool_calls: Optional[list[ToolCall]] = None
    tool_name: Optional[str] = None
    tool_call_id: Optional[str] = None
    thinking: Optional[str] = None  # a thinking model's earlier reasoning: not part of the prompt


class FunctionDef(Lenient):
    name: str
    description: Optional[str] = None
    parameters: Optional[dict[str, Any]] = None

    _parameters = field_validator("parameters")(_shallow)


class Tool(Lenient):
    type: Literal["function"] = "function"
    function: FunctionDef


Format = Union[Literal["", "json"], dict[str, Any], None]  # JSON mode, or a JSON schema the answer follows


class GenerateFields(Lenient):
    """What /api/chat and /api/generate share. `stream` defaults to true, as in Ollama."""

    model: str = Field(min_length=1)
    stream: StrictBool = True
    format: Format = None
    options: Optional[Options] = None
    keep_alive: Union[float, str, None] = None  # the model stays loaded while the server runs
    think: Union[StrictBool, str, None] = None  # no thinking models here: ignored (logged when true)
    logprobs: Optional[StrictBool] = None
    top_logprobs: Optional[StrictInt] = Field(None, ge=0, le=20)

    _format = field_validator("format")(_shallow)


class ChatRequest(GenerateFields):
    """POST /api/chat. No messages: Ollama's "load the model" request, answered at once."""

    messages: list[Message] = Field(default_factory=list)
    tools: Optional[list[Tool]] = None


class GenerateRequest(GenerateFields):
    """POST /api/generate: the prompt through the chat template as a user turn (after `system`), or verbatim (`raw`).
    No prompt: Ollama's "load the model" request."""

    prompt: str = ""
    suffix: Optional[str] = None  # fill-in-the-middle: refused when given
    system: Optional[str] = None
    template: Optional[str] = None  # a Go template: ignored (the model's own chat template is used), logged
    context: Optional[list[StrictInt]] = None  # deprecated conversation memory: refused when not empty
    raw: StrictBool = False
    images: Optional[list[str]] = None


class EmbedRequest(Lenient):
    """POST /api/embed. `truncate` (Ollama's default: true) cuts each input to the context instead of refusing it."""

    model: str = Field(min_length=1)
    input: Union[str, list[str]] = ""
    truncate: StrictBool = True
    dimensions: Optional[StrictInt] = None
    options: Optional[dict[str, Any]] = None  # nothing in it changes an embedding
    keep_alive: Union[float, str, None] = None


class EmbeddingsRequest(Lenient):
    """POST /api/embeddings (Ollama's older route): one prompt, one vector."""

    model: str = Field(min_length=1)
    prompt: str = ""
    options: Optional[dict[str, Any]] = None
    keep_alive: Union[float, str, None] = None


class ShowRequest(Lenient):
    """POST /api/show: `model` (older clients: `name`)."""

    model: Optional[str] = None
    name: Optional[str] = None
    verbose: Optional[StrictBool] = None
