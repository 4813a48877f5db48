"""POST /tokenize and /detokenize (vLLM's extension): requests and responses."""

from __future__ import annotations

from typing import Optional

from pydantic import BaseModel, Field, StrictBool, StrictInt, field_validator

from hearth.server.protocol.chat import ChatMessage, Tool
from hearth.server.protocol.common import Strict


class TokenizeCompletionRequest(Strict):
    model: Optional[str] = None
    prompt: str
    add_special_tokens: StrictBool = True
    return_token_strs: StrictBool = False


class TokenizeChatRequest(Strict):
    model: Optional[str] = None
    messages: list[ChatMessage] = Field(json_schema_extra={"minItems": 1})
    tools: Optional[list[Tool]] = None
    add_generation_prompt: StrictBool = True
    add_special_tokens: StrictBool = False  # the template writes the special tokens itself
    return_token_strs: StrictBool = False

    @field_validator("messages")
    @classmethod
    def _messages(cls, v: list[ChatMessage]) -> list[ChatMessage]:
        if not v:
            raise ValueError("must contain at least one message")
        return v


class DetokenizeRequest(Strict):
    model: Optional[str] = None
    tokens: list[StrictInt]


class TokenizeResponse(BaseModel):
    count: int
    max_model_len: int
    tokens: list[int]
    token_strs: Optional[list[str]] = None


class DetokenizeResponse(BaseModel):
    prompt: str
