"""POST /v1/chat/completions: messages, tools (OpenAI's `tools` / `tool_choice` / `parallel_tool_calls`, see
hearth/server/tool_calls.py), the response and its stream chunks."""

from __future__ import annotations

from typing import Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, field_validator, model_validator

from hearth import safejson
from hearth.server.protocol.common import (MAX_JSON_DEPTH, MAX_LOGPROBS, FieldError, SamplingFields, Strict,
                                           TopLogprob, UsageInfo, _now, _null_in_schema, _shallow)


class TextPart(Strict):
    type: Literal["text"]
    text: str


class FunctionCall(Strict):
    name: str
    arguments: str  # JSON text, as OpenAI sends it

    _arguments = field_validator("arguments")(_shallow)


class ToolCall(Strict):
    """A call the assistant made, as a client sends it back in the history."""

    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


def _message_schema(schema: dict[str, Any], cls: type[BaseModel]) -> None:
    """`_needs_content`'s rules, in the JSON schema (so fuzzers and client generators know them)."""
    _null_in_schema(schema, cls)
    schema["allOf"] = [
        {"if": {"properties": {"role": {"not": {"const": "assistant"}}}},
         "then": {"required": ["content"], "properties": {"content": {"not": {"type": "null"}},
                                                          "tool_calls": {"type": "null"}}}},
        {"if": {"properties": {"role": {"const": "tool"}}},
         "then": {"required": ["tool_call_id"], "properties": {"tool_call_id": {"type": "string"}}}},
    ]


class ChatMessage(Strict):
    """One turn. `developer` is OpenAI's newer name for `system` and is rendered as one. An assistant turn may carry
    the tool calls it made; a `tool` turn carries a call's result."""

    model_config = ConfigDict(json_schema_extra=_message_schema)
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: Union[str, list[TextPart], None] = None
    name: Optional[str] = None
    tool_calls: Optional[list[ToolCall]] = None
    tool_call_id: Optional[str] = None

    @field_validator("content", mode="before")
    @classmethod
    def _content(cls, v: Any) -> Any:
        if isinstance(v, list):
            for i, part in enumerate(v):
                kind = part.get("type") if isinstance(part, dict) else None
                if kind is not None and kind != "text":
                    raise ValueError(f"part {i} has type {kind!r}; only text parts are supported")
        elif v is not None and not isinstance(v, str):
            raise ValueError("must be a string or a list of text parts")
        return v

    @model_validator(mode="after")
    def _needs_content(self) -> "ChatMessage":
        if self.content is None and self.role != "assistant":
            raise FieldError("content", f"a {self.role} message needs content")
        if self.tool_calls is not None and self.role != "assistant":
            raise FieldError("tool_calls", "only assistant messages carry tool_calls")
        if self.role == "tool" and self.tool_call_id is None:
            raise FieldError("tool_call_id", "a tool message needs the tool_call_id of the call it answers")
        return self

    @property
    def text(self) -> str:
        content = self.content or ""
        return "\n".join(p.text for p in content) if isinstance(content, list) else content

    def for_template(self) -> dict[str, Any]:
        """The message as chat templates expect it (transformers' convention): text content, `developer` as
        `system`, tool calls with their arguments as objects."""
        msg: dict[str, Any] = {"role": "system" if self.role == "developer" else self.role, "content": self.text}
        if self.name is not None:
            msg["name"] = self.name
        if self.tool_calls:
            msg["tool_calls"] = [{"id": c.id, "type": "function",
                                  "function": {"name": c.function.name, "arguments": _arguments(c.function.arguments)}}
                                 for c in self.tool_calls]
        if self.tool_call_id is not None:
            msg["tool_call_id"] = self.tool_call_id
        return msg


def _arguments(text: str) -> Any:
    """A call's arguments as an object for the template (vLLM does the same); text that is not JSON stays text."""
    try:
        return safejson.loads(text, max_depth=MAX_JSON_DEPTH)
    except ValueError:  # not JSON (a JSONLimitError is a ValueError too; FunctionCall refuses those first)
        return text


class FunctionDef(Strict):
    name: str = Field(pattern=r"^[a-zA-Z0-9_.-]{1,64}$")
    description: Optional[str] = None
    parameters: Optional[dict[str, Any]] = None  # a JSON schema; none: no arguments
    strict: Optional[StrictBool] = None  # arguments always follow the schema when a call is forced

    _parameters = field_validator("parameters")(_shallow)


class Tool(Strict):
    type: Literal["function"]
    function: FunctionDef


class NamedFunction(Strict):
    name: str


class NamedToolChoice(Strict):
    type: Literal["function"]
    function: NamedFunction


class ChatCompletionRequest(SamplingFields):
    """POST /v1/chat/completions."""

    messages: list[ChatMessage] = Field(json_schema_extra={"minItems": 1})
    max_tokens: Optional[StrictInt] = Field(None, ge=1)
    max_completion_tokens: Optional[StrictInt] = Field(None, ge=1)
    logprobs: StrictBool = False
    top_logprobs: Optional[StrictInt] = Field(None, ge=0, le=MAX_LOGPROBS)
    tools: Optional[list[Tool]] = None
    tool_choice: Union[Literal["none", "auto", "required"], NamedToolChoice, None] = None  # None: auto with tools
    parallel_tool_calls: Optional[StrictBool] = None  # None: true
    # vLLM's and transformers' template switches (server/fields.py lists the fields hearth only tolerates)
    chat_template_kwargs: Optional[dict[str, Any]] = None  # extra variables for the chat template
    add_generation_prompt: StrictBool = True  # end the prompt with the assistant's turn header
    continue_final_message: StrictBool = False  # the last (assistant) message is continued, not closed

    _template_kwargs = field_validator("chat_template_kwargs")(_shallow)

    @model_validator(mode="after")
    def _continue_final_message(self):
        if self.continue_final_message and self.add_generation_prompt:
            raise FieldError("continue_final_message", "continue_final_message needs add_generation_prompt false "
                                                       "(the last message is continued, so no new turn begins)")
        if self.continue_final_message and self.messages[-1].role != "assistant":
            raise FieldError("continue_final_message", "continue_final_message needs the last message to be the "
                                                       "assistant's")
        reserved = {"messages", "add_generation_prompt", "tools"} & set(self.chat_template_kwargs or {})
        if reserved:
            raise FieldError("chat_template_kwargs", f"chat_template_kwargs cannot set {sorted(reserved)[0]!r}")
        return self

    @field_validator("messages")
    @classmethod
    def _messages(cls, v: list[ChatMessage]) -> list[ChatMessage]:
        if not v:
            raise ValueError("must contain at least one message")
        return v

    @model_validator(mode="after")
    def _tool_choice_needs_tools(self):
        names = [t.function.name for t in self.tools or []]
        if len(set(names)) != len(names):
            raise FieldError("tools", "tool names must be unique")
        choice = self.tool_choice
        if isinstance(choice, NamedToolChoice) and choice.function.name not in names:
            raise FieldError("tool_choice", f"tool_choice names {choice.function.name!r}, which is not in tools")
        if choice == "required" and not names:
            raise FieldError("tool_choice", "tool_choice 'required' needs tools")
        if self.forces_tool_call and self.structure_fields():
            raise FieldError("tool_choice", "a forced tool call cannot be combined with response_format or "
                                            "structured outputs")
        return self

    @property
    def effective_tool_choice(self) -> str | NamedToolChoice:
        """'none' without tools; OpenAI's defaults otherwise ('auto' when tools are given)."""
        if not self.tools:
            return "none"
        return self.tool_choice if self.tool_choice is not None else "auto"

    @property
    def forces_tool_call(self) -> bool:
        return self.effective_tool_choice == "required" or isinstance(self.effective_tool_choice, NamedToolChoice)

    @model_validator(mode="after")
    def _top_logprobs_need_logprobs(self):
        if self.top_logprobs and not self.logprobs:
            raise FieldError("top_logprobs", "top_logprobs needs logprobs set to true")
        return self

    def requested_max_tokens(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens


class ChatTokenLogprob(TopLogprob):
    top_logprobs: list[TopLogprob] = Field(default_factory=list)


class ChatChoiceLogprobs(BaseModel):
    content: Optional[list[ChatTokenLogprob]] = None
    refusal: Optional[list[ChatTokenLogprob]] = None


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: Optional[str]  # None when the reply is tool calls only
    refusal: Optional[str] = None
    tool_calls: Optional[list[ToolCall]] = None


class ChatChoice(BaseModel):
    index: int
    message: AssistantMessage
    logprobs: Optional[ChatChoiceLogprobs] = None
    finish_reason: Optional[str] = None


class ChatCompletionResponse(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int = Field(default_factory=_now)
    model: str
    choices: list[ChatChoice]
    usage: UsageInfo
    system_fingerprint: Optional[str] = None


class ChatChunkChoice(BaseModel):
    index: int
    delta: dict[str, Any]  # {"role": "assistant", "content": ""} first, then {"content": "..."}, {} at the end
    logprobs: Optional[ChatChoiceLogprobs] = None
    finish_reason: Optional[str] = None


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChatChunkChoice]
    usage: Optional[UsageInfo] = None  # only with stream_options.include_usage (null until the last chunk)
    system_fingerprint: Optional[str] = None
