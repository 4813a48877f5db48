"""POST /v1/embeddings: the request (text or token ids), float or base64 vectors."""

from __future__ import annotations

from typing import Any, Literal, Optional, Union

from pydantic import BaseModel, StrictInt, field_validator

from hearth.server.protocol.common import PromptField, Strict, prompt_shape


class EmbeddingRequest(Strict):
    """POST /v1/embeddings: one text, a list of texts, token ids or lists of token ids (as OpenAI's)."""

    model: Optional[str] = None
    input: PromptField
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: Optional[StrictInt] = None
    user: Optional[str] = None

    @field_validator("input")
    @classmethod
    def _input(cls, v: Any) -> Any:
        return prompt_shape(v)  # the same four shapes as a completion's prompt

    def inputs(self) -> list[str | list[int]]:
        v = self.input
        return [v] if isinstance(v, str) or isinstance(v[0], int) else list(v)


class Embedding(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: Union[list[float], str]  # base64 of little-endian float32 with encoding_format "base64"


class EmbeddingUsage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class EmbeddingResponse(BaseModel):
    object: Literal["list"] = "list"
    data: list[Embedding]
    model: str
    usage: EmbeddingUsage
