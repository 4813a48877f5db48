"""POST /v1/moderations (OpenAI's schema): texts in, one result per text with its flag, categories and scores.

The request takes what the openai SDK's `client.moderations.create(model=..., input=...)` sends: a string, a list of
strings, or a list of multi-modal parts of which only text parts are supported here. The guard reads each text as a
user's message; their number and length are bounded as other endpoints bound theirs.
"""

from __future__ import annotations

from typing import Any, Optional, Union

from pydantic import BaseModel, field_validator

from hearth.server.protocol.common import Strict

MAX_MODERATION_INPUTS = 32  # texts per request: each is one guard request in the engine
MAX_MODERATION_CHARS = 65536  # characters per text; the guard's context bounds it further (a 400 beyond)


class ModerationRequest(Strict):
    """POST /v1/moderations."""

    model: Optional[str] = None
    input: Union[str, list[Any]]

    @field_validator("input", mode="before")
    @classmethod
    def _input(cls, v: Any) -> Any:
        items = [v] if isinstance(v, str) else v
        if not isinstance(items, list):
            raise ValueError("must be a string or a list of strings")
        if not items:
            raise ValueError("is empty: give a text to classify")
        if len(items) > MAX_MODERATION_INPUTS:
            raise ValueError(f"has {len(items)} items; at most {MAX_MODERATION_INPUTS} per request")
        for i, x in enumerate(items):
            if isinstance(x, dict):  # a multi-modal part: {"type": "text", "text": "..."}
                if x.get("type") != "text":
                    raise ValueError(f"item {i} has type {x.get('type')!r}; only text is supported")
                if set(x) != {"type", "text"} or not isinstance(x["text"], str):
                    raise ValueError(f"item {i}: a text part is {{\"type\": \"text\", \"text\": \"...\"}}")
                x = x["text"]
            if not isinstance(x, str):
                raise ValueError(f"item {i} must be a string")
            if not x.strip():
                raise ValueError("is empty: give a text to classify" if isinstance(v, str) else f"item {i} is empty")
            if len(x) > MAX_MODERATION_CHARS:
                raise ValueError(f"item {i} is {len(x)} characters long; at most {MAX_MODERATION_CHARS}")
        return v

    def texts(self) -> list[str]:
        items = [self.input] if isinstance(self.input, str) else self.input
        return [x["text"] if isinstance(x, dict) else x for x in items]


class ModerationResult(BaseModel):
    """OpenAI's categories (the ones an S-code corresponds to, taxonomy.OPENAI_NAMES) plus the policy's codes (S1-S14
    and its own) as extra keys. The guard scores a text as a whole, P(unsafe): a category it names carries that
    score, the others 0; `flagged` follows the policy (a category whose action is allow does not flag)."""

    flagged: bool
    categories: dict[str, bool]
    category_scores: dict[str, float]
    category_applied_input_types: dict[str, list[str]]


class ModerationResponse(BaseModel):
    id: str
    model: str
    results: list[ModerationResult]
