"""Stored completions and feedback (hearth serve --capture): POST /v1/chat/completions/{id} and POST /v1/feedback."""

from __future__ import annotations

import math
from typing import Any, Optional, Union

from pydantic import field_validator

from hearth.server.protocol.common import Strict


class FeedbackRequest(Strict):
    """POST /v1/feedback: a score of -1, 0 or 1 (or any number in [-100, 100]), a comment, the answer wanted."""

    completion_id: str
    score: Union[int, float]
    comment: Optional[str] = None
    correction: Optional[str] = None

    @field_validator("score")
    @classmethod
    def _score(cls, v: Any) -> Any:
        if isinstance(v, bool) or not math.isfinite(v) or not -100 <= v <= 100:
            raise ValueError("must be a finite number in [-100, 100] (-1, 0 or 1 for thumbs down, none, up)")
        return v


class UpdateCompletionRequest(Strict):
    """POST /v1/chat/completions/{completion_id}: the stored completion's new metadata (it replaces the old)."""

    metadata: Optional[dict[str, str]] = None
