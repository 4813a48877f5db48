"""What the endpoints' schemas share: strict request models (`extra="forbid"`: unknown fields are a 400), cross-field
errors (FieldError), JSON depth limits, the sampling fields of chat and completions, structured-output fields
(OpenAI's `response_format`, vLLM's `structured_outputs` / `guided_*`) -> Structure, prompts, usage.

Requests are validated strictly (no type coercion), so a misspelt or unsupported field is a 400 that names it instead
of being silently ignored. Fields real clients send that change nothing here (`user`, `store`, `metadata`,
`service_tier`...) are accepted. Extensions that vLLM also accepts (`top_k`, `min_p`, `repetition_penalty`,
`ignore_eos`) reach the sampler; the openai SDK sends them through `extra_body`.
"""

from __future__ import annotations

import math
import re
import time
from typing import Annotated, Any, Literal, Optional, Union, get_args

from pydantic import (BaseModel, ConfigDict, Field, StrictBool, StrictInt, WithJsonSchema, field_validator,
                      model_validator)

from hearth import safejson
from hearth.engine.structured import Structure


MAX_LOGPROBS = 20  # top alternatives per token (OpenAI: 20 for chat, 5 for legacy completions; vLLM: 20)
MAX_N = 128
SEED_MAX = 2**63 - 1
MAX_STOP = 16
# JSON text inside a request (tool-call arguments, a schema sent as a string) is parsed here, and json.loads recurses
# once per level: a RecursionError deep inside would be a 500. Far deeper than any real arguments or schema, and as
# deep as llguidance reads a schema (structured-output limits, hearth/engine/grammar_limits.py, may allow less).
MAX_JSON_DEPTH = 128
# logit_bias keys: ASCII digits only (str.isdigit also passes "²", which int() refuses); 12 digits is beyond any vocabulary
TOKEN_ID_KEY = r"^[0-9]{1,12}$"


class FieldError(ValueError):
    """A check across fields, naming the field to blame (pydantic reports those at the model level)."""

    def __init__(self, param: str, message: str):
        super().__init__(message)
        self.param = param


def _accepts_none(annotation: Any) -> bool:
    return annotation is None or type(None) in get_args(annotation)


def _null_in_schema(schema: dict[str, Any], cls: type[BaseModel]) -> None:
    """The JSON schema says what `_null_means_default` does: an optional field takes null too."""
    props = schema.get("properties", {})
    for name, field in cls.model_fields.items():
        key = field.alias or name
        if key in props and not field.is_required() and not _accepts_none(field.annotation):
            inner = props[key]
            outer = {k: inner.pop(k) for k in ("title", "default", "description") if k in inner}
            props[key] = {"anyOf": [inner, {"type": "null"}], **outer}


def _depth(value: Any) -> int:
    """How deeply a parsed JSON value nests (0 for a scalar), walked without recursion."""
    deepest, todo = 0, [(value, 1)]
    while todo:
        v, d = todo.pop()
        items = v.values() if isinstance(v, dict) else v if isinstance(v, list) else None
        if items is not None:
            deepest = max(deepest, d)
            todo.extend((x, d + 1) for x in items)
    return deepest


def _shallow(v: Any) -> Any:
    """A JSON value given as an object (a schema, tool parameters) or as JSON text, at most MAX_JSON_DEPTH deep:
    json.dumps, templates and the grammar compiler all recurse once per level, and a body may nest ~950 levels
    before its parse fails, deep enough for those to raise RecursionError (a 500)."""
    d = safejson.depth(v) if isinstance(v, str) else _depth(v)
    if d > MAX_JSON_DEPTH:
        raise ValueError(f"nested {d} levels deep; the limit is {MAX_JSON_DEPTH}")
    return v


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, json_schema_extra=_null_in_schema)

    @model_validator(mode="before")
    @classmethod
    def _null_means_default(cls, data: Any) -> Any:
        """`"n": null` is the default, as in OpenAI's schema ("integer or null") and vLLM: the openai SDK sends null
        for every argument a caller passes as None. Fields where null means something of its own keep it."""
        if not isinstance(data, dict):
            return data
        fields = cls.model_fields
        return {k: v for k, v in data.items()
                if not (v is None and k in fields and not _accepts_none(fields[k].annotation))}


class StreamOptions(Strict):
    include_usage: StrictBool = False


Stop = Union[str, Annotated[list[str], Field(max_length=MAX_STOP)], None]


class JsonSchemaFormat(Strict):
    """OpenAI's `response_format.json_schema` (what the SDK's `chat.completions.parse` sends for a pydantic model)."""

    model_config = ConfigDict(extra="forbid", strict=True, populate_by_name=True)
    name: Optional[str] = None
    description: Optional[str] = None
    schema_: Optional[dict[str, Any]] = Field(None, alias="schema")  # no schema: any JSON object
    strict: Optional[StrictBool] = None  # the output always follows the schema here, strict or not

    _schema = field_validator("schema_")(_shallow)


class ResponseFormat(Strict):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: Optional[JsonSchemaFormat] = None

    @model_validator(mode="after")
    def _schema_with_its_type(self):
        if self.type == "json_schema" and self.json_schema is None:
            raise ValueError("type 'json_schema' needs a json_schema object")
        if self.type != "json_schema" and self.json_schema is not None:
            raise ValueError(f"json_schema is only allowed with type 'json_schema', not {self.type!r}")
        return self


class StructuredOutputs(Strict):
    """vLLM's `structured_outputs` (also its older `guided_json` / `guided_regex` / `guided_choice` / `guided_grammar`
    fields): one of a JSON schema, a regular expression, a list of choices or a grammar (GBNF or Lark)."""

    json_: Union[dict[str, Any], str, None] = Field(None, alias="json")
    regex: Optional[str] = None
    choice: Optional[list[str]] = None
    grammar: Optional[str] = None
    model_config = ConfigDict(extra="forbid", strict=True, populate_by_name=True)

    _json = field_validator("json_")(_shallow)

    @model_validator(mode="after")
    def _exactly_one(self):
        given = [k for k in ("json_", "regex", "choice", "grammar") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of json, regex, choice or grammar")
        return self

    def structure(self) -> Structure:
        return _structure(self.json_, self.regex, self.choice, self.grammar)


def _structure(json_schema, regex, choice, grammar) -> Structure | None:
    """The one of vLLM's four kinds that is given (callers check there is at most one)."""
    if json_schema is not None:
        return Structure.json_schema(json_schema)
    if regex is not None:
        return Structure("regex", regex)
    if choice is not None:
        return Structure.choice(choice)
    if grammar is not None:
        return Structure("grammar", grammar)
    return None


class SamplingFields(Strict):
    """Fields shared by chat and completions requests."""

    model: Optional[str] = None  # None: the served model
    temperature: Optional[float] = Field(None, ge=0, le=2)
    top_p: Optional[float] = Field(None, gt=0, le=1)
    n: StrictInt = Field(1, ge=1, le=MAX_N)
    stream: StrictBool = False
    stream_options: Optional[StreamOptions] = None
    stop: Stop = None
    seed: Optional[StrictInt] = Field(None, ge=0, le=SEED_MAX)
    presence_penalty: float = Field(0.0, ge=-2, le=2)
    frequency_penalty: float = Field(0.0, ge=-2, le=2)
    # vLLM extensions
    top_k: StrictInt = Field(0, ge=-1)  # 0 or -1: off
    min_p: float = Field(0.0, ge=0, le=1)
    repetition_penalty: float = Field(1.0, gt=0, le=10)
    ignore_eos: StrictBool = False
    return_tokens_as_token_ids: StrictBool = False  # logprob tokens as "token_id:123" (bytes-exact for scorers)
    # structured output: OpenAI's response_format, vLLM's structured_outputs and its older guided_* fields
    response_format: Optional[ResponseFormat] = None
    structured_outputs: Optional[StructuredOutputs] = None
    guided_json: Union[dict[str, Any], str, None] = None
    guided_regex: Optional[str] = None
    guided_choice: Optional[list[str]] = None
    guided_grammar: Optional[str] = None
    # accepted and ignored: they change nothing about the result
    user: Optional[str] = None
    store: Optional[StrictBool] = None
    metadata: Optional[dict[str, str]] = None
    service_tier: Optional[str] = None
    # token id (as a JSON key) -> bias added to its logit before sampling: -100 bans the token, 100 all but forces it
    logit_bias: Optional[dict[str, float]] = Field(None, json_schema_extra={
        "propertyNames": {"pattern": TOKEN_ID_KEY}, "additionalProperties": {"type": "number", "minimum": -100,
                                                                             "maximum": 100}})

    @field_validator("stop", mode="before")
    @classmethod
    def _stop(cls, v: Any) -> Any:
        if isinstance(v, list) and len(v) > MAX_STOP:
            raise ValueError(f"at most {MAX_STOP} stop strings are allowed")
        return v

    _guided_json = field_validator("guided_json")(_shallow)

    @field_validator("logit_bias")
    @classmethod
    def _logit_bias(cls, v):
        for key, bias in (v or {}).items():
            if not re.fullmatch(TOKEN_ID_KEY, key):
                raise ValueError(f"keys must be token ids (up to 12 ASCII digits), not {key!r}")
            if not (math.isfinite(bias) and -100 <= bias <= 100):
                raise ValueError(f"the bias of token {key} is {bias}; biases must be between -100 and 100")
        return v

    def logit_bias_pairs(self) -> tuple[tuple[int, float], ...]:
        return tuple((int(k), float(b)) for k, b in (self.logit_bias or {}).items())

    @model_validator(mode="after")
    def _stream_options_need_stream(self):
        if self.stream_options is not None and not self.stream:
            raise FieldError("stream_options", "stream_options is only allowed when stream is true")
        return self

    def structure_fields(self) -> list[str]:
        """The fields that structure the output, as given."""
        given = [k for k in ("response_format", "structured_outputs", "guided_json", "guided_regex", "guided_choice",
                             "guided_grammar") if getattr(self, k) is not None]
        if self.response_format is not None and self.response_format.type == "text":
            given.remove("response_format")
        return given

    @model_validator(mode="after")
    def _one_structure(self):
        given = self.structure_fields()
        if len(given) > 1:
            raise FieldError(given[1], f"give one way of structuring the output, not {' and '.join(given)}")
        return self

    def structure(self) -> Structure | None:
        """What the output must match, or None. Invalid JSON in a schema given as text is a HearthError (a 400)."""
        rf = self.response_format
        if rf is not None and rf.type == "json_object":
            return Structure.json_object()
        if rf is not None and rf.type == "json_schema":
            schema = rf.json_schema.schema_
            return Structure.json_object() if schema is None else Structure.json_schema(schema)
        if self.structured_outputs is not None:
            return self.structured_outputs.structure()
        return _structure(self.guided_json, self.guided_regex, self.guided_choice, self.guided_grammar)

    def stop_strings(self) -> tuple[str, ...]:
        stops = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        return tuple(s for s in stops if s)  # an empty stop string would match everywhere: ignore it

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


Prompt = Union[str, list[str], list[int], list[list[int]]]
# `prompt` and `input` are checked by hand (for clear messages); their schema says the same
# (the server also refuses an empty text and token ids outside the model's vocabulary)
_TEXT, _ID = {"type": "string", "minLength": 1}, {"type": "integer", "minimum": 0}
_PROMPT_SCHEMA = {"anyOf": [
    _TEXT,
    {"type": "array", "items": _TEXT, "minItems": 1},
    {"type": "array", "items": _ID, "minItems": 1},
    {"type": "array", "items": {"type": "array", "items": _ID, "minItems": 1}, "minItems": 1},
]}
PromptField = Annotated[Any, WithJsonSchema(_PROMPT_SCHEMA, mode="validation")]


def prompt_shape(v: Any) -> Prompt:
    """A completion's prompt or an embedding's input, checked: one of the four shapes of `Prompt`, not empty."""

    def is_int(x):
        return isinstance(x, int) and not isinstance(x, bool)

    shape = "a string, a list of strings, a list of token ids or a list of token-id lists"
    if isinstance(v, str):
        return v
    if not isinstance(v, list) or not v:
        raise ValueError(f"must be {shape} (and not empty)")
    if all(isinstance(x, str) for x in v) or all(is_int(x) for x in v):
        return v
    if all(isinstance(x, list) and x and all(is_int(t) for t in x) for x in v):
        return v
    raise ValueError(f"must be {shape}, without mixing kinds or empty lists")


def _now() -> int:
    return int(time.time())


class PromptTokensDetails(BaseModel):
    cached_tokens: int = 0  # read from the prefix cache (KV blocks of an earlier request's equal prefix)


class UsageInfo(BaseModel):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    prompt_tokens_details: Optional[PromptTokensDetails] = None


class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: Optional[list[int]] = None
