"""POST /v1/completions: the request (a prompt of text or token ids), the response."""

from __future__ import annotations

from typing import Any, Literal, Optional

from pydantic import BaseModel, Field, StrictBool, StrictInt, field_validator, model_validator

from hearth.server.protocol.common import (MAX_LOGPROBS, FieldError, Prompt, PromptField, SamplingFields, UsageInfo,
                                           _now, prompt_shape)


class CompletionRequest(SamplingFields):
    """POST /v1/completions. A prompt of token ids is used verbatim: no BOS added, no re-tokenization."""

    prompt: PromptField
    max_tokens: Optional[StrictInt] = Field(16, ge=0)
    echo: StrictBool = False
    logprobs: Optional[StrictInt] = Field(None, ge=0, le=MAX_LOGPROBS)
    best_of: Optional[StrictInt] = None
    suffix: Optional[str] = None

    @field_validator("prompt")
    @classmethod
    def _prompt(cls, v: Any) -> Prompt:
        return prompt_shape(v)

    @field_validator("suffix")
    @classmethod
    def _no_suffix(cls, v):
        if v:
            raise ValueError("not supported")
        return v

    @model_validator(mode="after")
    def _best_of(self):
        if self.best_of is not None and self.best_of != self.n:
            raise FieldError("best_of", "best_of is not supported (other than best_of == n)")
        return self

    def prompts(self) -> list[str | list[int]]:
        """The prompt as a list of prompts, each text or token ids."""
        p = self.prompt
        if isinstance(p, str) or isinstance(p[0], int):
            return [p]
        return list(p)


class CompletionLogprobs(BaseModel):
    """The legacy format: parallel lists, one entry per token (prompt tokens first when echoing)."""

    tokens: list[str] = Field(default_factory=list)
    token_logprobs: list[Optional[float]] = Field(default_factory=list)
    top_logprobs: list[Optional[dict[str, float]]] = Field(default_factory=list)
    text_offset: list[int] = Field(default_factory=list)


class CompletionChoice(BaseModel):
    index: int
    text: str
    logprobs: Optional[CompletionLogprobs] = None
    finish_reason: Optional[str] = None


class CompletionResponse(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int = Field(default_factory=_now)
    model: str
    choices: list[CompletionChoice]
    usage: Optional[UsageInfo] = None
    system_fingerprint: Optional[str] = None
