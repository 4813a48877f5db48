"""POST /v1/responses (OpenAI's Responses API, text and function tools): the request, its input items, the response
object and its stream events. hearth/server/responses.py turns a request into a chat completion and back.

The request is strict like the others (an unknown field is a 400 naming it), with two allowances:
- fields that change nothing here are accepted and ignored: `include` (no reasoning, no hosted tools: nothing to
  include; `message.output_text.logprobs` is honoured), `reasoning` (no reasoning model), `truncation`, `user`,
  `service_tier`, `safety_identifier`, the `prompt_cache_*` fields (prefix caching is always on), `context_management`,
  `max_tool_calls`, `text.verbosity`, `stream_options`;
- input items and their content parts accept fields beyond the ones read (`id`, `status`, `annotations`, `phase`...):
  clients send a response's output items back as the next input, and OpenAI adds fields to those often.
What cannot be honoured is a 400 naming the field: `background: true`, `conversation`, `prompt`, tools other than
functions, content other than text (images, files, audio), items other than messages and function calls/outputs.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Optional, Union

from pydantic import (BaseModel, ConfigDict, Discriminator, Field, StrictBool, StrictInt, Tag, field_validator,
                      model_validator)

from hearth.server.protocol.common import (MAX_LOGPROBS, SEED_MAX, FieldError, Stop, Strict, _now, _null_in_schema,
                                           _shallow)

MAX_INPUT_ITEMS = 4096
TOOL_NAME = r"^[a-zA-Z0-9_.-]{1,64}$"
LOGPROBS_INCLUDE = "message.output_text.logprobs"


class Lenient(Strict):
    """An input item or content part: the fields read are typed; others (ids, statuses, annotations) are ignored."""

    model_config = ConfigDict(extra="ignore", strict=True, json_schema_extra=_null_in_schema)


def _by_type(default: str | None, message: str) -> Discriminator:
    """Tell union members apart by `type` (a message item may leave it out: `default`); an unknown type is a 400
    with `message`."""

    def kind(v: Any) -> str | None:
        t = v.get("type", default) if isinstance(v, dict) else getattr(v, "type", default)
        return t if isinstance(t, str) else None

    return Discriminator(kind, custom_error_type="unsupported_type", custom_error_message=message)


class InputText(Lenient):
    type: Literal["input_text"]
    text: str


class OutputText(Lenient):
    type: Literal["output_text"]
    text: str


class Refusal(Lenient):
    type: Literal["refusal"]
    refusal: str


ContentPart = Annotated[Union[Annotated[InputText, Tag("input_text")], Annotated[OutputText, Tag("output_text")],
                              Annotated[Refusal, Tag("refusal")]],
                      _by_type(None, "unsupported content part type: hearth reads text only (input_text, output_text, "
                                     "refusal)")]


class MessageItem(Lenient):
    """A turn: `{"role": "user", "content": "Hi"}`, or content as text parts (input_text, output_text, refusal)."""

    type: Literal["message"] = "message"
    role: Literal["user", "system", "developer", "assistant"]
    content: Union[str, list[ContentPart]]

    @property
    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        return "\n".join(p.refusal if isinstance(p, Refusal) else p.text for p in self.content)


class FunctionCallItem(Lenient):
    """A call the model made (an earlier response's output item, sent back with its result)."""

    type: Literal["function_call"]
    call_id: str
    name: str
    arguments: str  # JSON text

    _arguments = field_validator("arguments")(_shallow)


class FunctionCallOutputItem(Lenient):
    """A call's result, for the model to answer from. `output`: text, or a list of text parts."""

    type: Literal["function_call_output"]
    call_id: str
    output: Union[str, list[ContentPart]]

    @property
    def text(self) -> str:
        if isinstance(self.output, str):
            return self.output
        return "\n".join(p.refusal if isinstance(p, Refusal) else p.text for p in self.output)


class ReasoningItem(Lenient):
    """A reasoning model's item, sent back by clients that replay output: there is no reasoning here to resume, so it
    is left out of the prompt."""

    type: Literal["reasoning"]


InputItem = Annotated[Union[Annotated[MessageItem, Tag("message")], Annotated[FunctionCallItem, Tag("function_call")],
                            Annotated[FunctionCallOutputItem, Tag("function_call_output")],
                            Annotated[ReasoningItem, Tag("reasoning")]],
                    _by_type("message", "unsupported item type: hearth reads message, function_call, "
                                        "function_call_output and reasoning items")]


class FunctionTool(Strict):
    type: Literal["function"]
    name: str = Field(pattern=TOOL_NAME)
    description: Optional[str] = None
    parameters: Optional[dict[str, Any]] = None  # a JSON schema; none: no arguments
    strict: Optional[StrictBool] = None  # arguments always follow the schema when a call is forced
    # accepted, changing nothing here: every tool is loaded and called directly
    defer_loading: Optional[StrictBool] = None
    allowed_callers: Optional[list[str]] = None
    output_schema: Optional[dict[str, Any]] = None

    _parameters = field_validator("parameters")(_shallow)


class FunctionChoice(Strict):
    type: Literal["function"]
    name: str


class AllowedTools(Strict):
    """Only these of `tools` may be called: `auto` (the model decides) or `required` (one must be)."""

    type: Literal["allowed_tools"]
    mode: Literal["auto", "required"]
    tools: list[dict[str, Any]]

    @field_validator("tools")
    @classmethod
    def _functions(cls, v: list[dict[str, Any]]) -> list[dict[str, Any]]:
        for i, t in enumerate(v):
            if t.get("type") != "function" or not isinstance(t.get("name"), str):
                raise FieldError(f"{i}", 'each allowed tool must be {"type": "function", "name": ...}')
        return v


class TextFormat(Strict):
    """`text.format`: plain text, any JSON object, or JSON following `schema`."""

    model_config = ConfigDict(extra="forbid", strict=True, populate_by_name=True, json_schema_extra=_null_in_schema)
    type: Literal["text", "json_object", "json_schema"]
    name: Optional[str] = None
    description: Optional[str] = None
    schema_: Optional[dict[str, Any]] = Field(None, alias="schema")
    strict: Optional[StrictBool] = None  # the output always follows the schema here, strict or not

    _schema = field_validator("schema_")(_shallow)

    @model_validator(mode="after")
    def _schema_with_its_type(self):
        if self.type != "json_schema" and self.schema_ is not None:
            raise FieldError("schema", f"schema is only allowed with type 'json_schema', not {self.type!r}")
        return self


class TextConfig(Strict):
    format: Optional[TextFormat] = None
    verbosity: Optional[Literal["low", "medium", "high"]] = None  # accepted; nothing to tune


def _refuse_set(name: str, why: str):
    def check(v: Any) -> Any:
        if v is not None and v is not False:
            raise ValueError(f"{name} is not supported by hearth: {why}")
        return v

    return field_validator(name)(check)


class ResponsesRequest(Strict):
    """POST /v1/responses."""

    model: Optional[str] = None  # None: the served model
    input: Union[str, Annotated[list[InputItem], Field(max_length=MAX_INPUT_ITEMS)]]
    instructions: Optional[str] = None
    tools: Optional[list[FunctionTool]] = None
    tool_choice: Union[Literal["none", "auto", "required"], FunctionChoice, AllowedTools, None] = None
    parallel_tool_calls: Optional[StrictBool] = None  # None: true
    text: Optional[TextConfig] = None
    temperature: Optional[float] = Field(None, ge=0, le=2)
    top_p: Optional[float] = Field(None, gt=0, le=1)
    max_output_tokens: Optional[StrictInt] = Field(None, ge=1)
    top_logprobs: Optional[StrictInt] = Field(None, ge=0, le=MAX_LOGPROBS)
    stream: StrictBool = False
    stream_options: Optional[dict[str, Any]] = None
    previous_response_id: Optional[str] = None
    store: Optional[StrictBool] = None  # None: true, as OpenAI's default
    metadata: Optional[dict[str, str]] = None
    include: Optional[list[str]] = None
    # accepted and ignored (module docstring)
    reasoning: Optional[dict[str, Any]] = None
    truncation: Optional[Literal["auto", "disabled"]] = None
    user: Optional[str] = None
    service_tier: Optional[str] = None
    safety_identifier: Optional[str] = None
    prompt_cache_key: Optional[str] = None
    prompt_cache_retention: Optional[str] = None
    prompt_cache_options: Optional[dict[str, Any]] = None
    context_management: Optional[list[dict[str, Any]]] = None
    max_tool_calls: Optional[StrictInt] = Field(None, ge=1)
    # refused when set
    background: Optional[StrictBool] = None
    conversation: Any = None
    prompt: Any = None
    # hearth's and vLLM's sampling extensions, as on chat completions (the openai SDK sends them in extra_body)
    seed: Optional[StrictInt] = Field(None, ge=0, le=SEED_MAX)
    stop: Stop = None
    presence_penalty: float = Field(0.0, ge=-2, le=2)
    frequency_penalty: float = Field(0.0, ge=-2, le=2)
    top_k: StrictInt = Field(0, ge=-1)
    min_p: float = Field(0.0, ge=0, le=1)
    repetition_penalty: float = Field(1.0, gt=0, le=10)
    ignore_eos: StrictBool = False

    _background = _refuse_set("background", "every response is answered while the request waits")
    _conversation = _refuse_set("conversation", "there is no Conversations API; use previous_response_id")
    _prompt = _refuse_set("prompt", "there are no stored prompt templates; send instructions and input")

    @field_validator("tools", mode="before")
    @classmethod
    def _only_functions(cls, v: Any) -> Any:
        for i, t in enumerate(v if isinstance(v, list) else ()):
            kind = t.get("type") if isinstance(t, dict) else None
            if isinstance(kind, str) and kind != "function":
                raise FieldError(f"{i}.type", f"tools of type {kind!r} are not supported: hearth runs function tools "
                                              "(the client calls them) only")
        return v

    @field_validator("input")
    @classmethod
    def _input(cls, v: Any) -> Any:
        if isinstance(v, list) and not v:
            raise ValueError("must contain at least one item")
        return v

    @model_validator(mode="after")
    def _tools_and_choice(self):
        names = [t.name for t in self.tools or []]
        if len(set(names)) != len(names):
            raise FieldError("tools", "tool names must be unique")
        choice = self.tool_choice
        if isinstance(choice, FunctionChoice) and choice.name not in names:
            raise FieldError("tool_choice", f"tool_choice names {choice.name!r}, which is not in tools")
        if isinstance(choice, AllowedTools):
            for i, t in enumerate(choice.tools):
                if t["name"] not in names:
                    raise FieldError(f"tool_choice.tools.{i}", f"{t['name']!r} is not in tools")
        if choice == "required" and not names:
            raise FieldError("tool_choice", "tool_choice 'required' needs tools")
        return self

    @property
    def wants_logprobs(self) -> bool:
        return LOGPROBS_INCLUDE in (self.include or ())


# ---------------------------------------------------------------------------------------------- the response


class Logprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int] = Field(default_factory=list)
    top_logprobs: list[dict[str, Any]] = Field(default_factory=list)


class OutputTextPart(BaseModel):
    type: Literal["output_text"] = "output_text"
    text: str
    annotations: list[Any] = Field(default_factory=list)
    logprobs: list[Logprob] = Field(default_factory=list)


class OutputMessage(BaseModel):
    id: str
    type: Literal["message"] = "message"
    role: Literal["assistant"] = "assistant"
    status: Literal["in_progress", "completed", "incomplete"] = "completed"
    content: list[OutputTextPart]


class FunctionCallOutput(BaseModel):
    """A call the model made: the client runs it and sends back a function_call_output item."""

    id: str
    type: Literal["function_call"] = "function_call"
    call_id: str
    name: str
    arguments: str
    status: Literal["in_progress", "completed", "incomplete"] = "completed"


class InputTokensDetails(BaseModel):
    cached_tokens: int = 0
    cache_write_tokens: int = 0


class OutputTokensDetails(BaseModel):
    reasoning_tokens: int = 0


class ResponseUsage(BaseModel):
    input_tokens: int
    input_tokens_details: InputTokensDetails = Field(default_factory=InputTokensDetails)
    output_tokens: int
    output_tokens_details: OutputTokensDetails = Field(default_factory=OutputTokensDetails)
    total_tokens: int


class ResponseError(BaseModel):
    code: str
    message: str


class IncompleteDetails(BaseModel):
    reason: Literal["max_output_tokens", "content_filter"]


class ResponseObject(BaseModel):
    """A response, as POST /v1/responses answers and GET /v1/responses/{id} returns it."""

    id: str
    object: Literal["response"] = "response"
    created_at: int = Field(default_factory=_now)
    completed_at: Optional[int] = None
    status: Literal["completed", "incomplete", "in_progress", "failed"]
    error: Optional[ResponseError] = None
    incomplete_details: Optional[IncompleteDetails] = None
    instructions: Optional[str] = None
    max_output_tokens: Optional[int] = None
    model: str
    output: list[Union[OutputMessage, FunctionCallOutput]] = Field(default_factory=list)
    parallel_tool_calls: bool = True
    previous_response_id: Optional[str] = None
    reasoning: dict[str, Any] = Field(default_factory=lambda: {"effort": None, "summary": None})
    store: bool = True
    temperature: float = 1.0
    text: dict[str, Any] = Field(default_factory=lambda: {"format": {"type": "text"}})
    tool_choice: Union[str, dict[str, Any]] = "auto"
    tools: list[dict[str, Any]] = Field(default_factory=list)
    top_p: float = 1.0
    top_logprobs: int = 0
    truncation: str = "disabled"
    usage: Optional[ResponseUsage] = None
    user: Optional[str] = None
    metadata: dict[str, str] = Field(default_factory=dict)
    service_tier: str = "default"
    background: bool = False


class ResponseStreamEvent(BaseModel):
    """One server-sent event of a streamed response (`event: <type>`): response.created, response.in_progress,
    response.output_item.added, response.content_part.added, response.output_text.delta, response.output_text.done,
    response.content_part.done, response.function_call_arguments.delta / .done, response.output_item.done, then
    response.completed (or response.incomplete; after an error: error and response.failed)."""

    model_config = ConfigDict(extra="allow")
    type: str
    sequence_number: int


class DeletedResponse(BaseModel):
    id: str
    object: Literal["response.deleted"] = "response.deleted"
    deleted: Literal[True] = True


class InputItemList(BaseModel):
    object: Literal["list"] = "list"
    data: list[dict[str, Any]]
    first_id: Optional[str] = None
    last_id: Optional[str] = None
    has_more: bool = False
