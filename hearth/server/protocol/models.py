"""GET /v1/models: the served model and its adapters."""

from __future__ import annotations

from typing import Literal, Optional

from pydantic import BaseModel, Field

from hearth.server.protocol.common import _now


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int = Field(default_factory=_now)
    owned_by: str = "hearth"
    max_model_len: int
    root: Optional[str] = None  # for a LoRA adapter: its directory (as vLLM lists adapters)
    parent: Optional[str] = None  # for a LoRA adapter: the model it adapts


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]
