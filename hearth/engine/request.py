"""Requests and their outputs: the contract between the engine and whoever feeds it (server, tests).

Plain data, no torch: the scheduler and the HTTP layer both use these without touching the model.
"""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass, field

from hearth.engine.sampling import SamplingParams


class FinishReason(str, enum.Enum):
    STOP = "stop"  # EOS or a stop string
    LENGTH = "length"  # max_tokens reached
    ABORT = "abort"  # client went away or the server is shutting down


@dataclass
class EngineRequest:
    """One sequence to generate. Prompt ids are used verbatim (no BOS added, no re-tokenization)."""

    request_id: str
    prompt_ids: list[int]
    params: SamplingParams
    logprobs: int | None = None  # None: none; k >= 0: chosen token's logprob plus the top k per generated token
    prompt_logprobs: int | None = None  # same, for every prompt position (the first has none)
    adapter: str | None = None  # a LoRA adapter the engine serves (EngineConfig.adapters); None: the base model
    # token ids whose logprobs at the first generated position come back in the first output (RequestOutput.scores):
    # a classifier's answer read as a probability (the guard's P(unsafe) against P(safe), as in Llama Guard's paper)
    score_token_ids: tuple[int, ...] = ()
    arrival_time: float = field(default_factory=time.monotonic)


@dataclass
class TokenLogprob:
    token_id: int
    logprob: float
    top: list[tuple[int, float]] = field(default_factory=list)  # (token id, logprob), most likely first


@dataclass
class RequestOutput:
    """What one engine step produced for one request (a delta, not the whole text so far)."""

    request_id: str
    new_token_ids: list[int]
    new_text: str
    finished: bool = False
    finish_reason: FinishReason | None = None
    logprobs: list[TokenLogprob] | None = None  # one per new token, when asked for
    prompt_logprobs: list[TokenLogprob | None] | None = None  # only in the first output, when asked for
    scores: dict[int, float] | None = None  # EngineRequest.score_token_ids' logprobs, in the first output
    num_prompt_tokens: int = 0
    num_generated_tokens: int = 0
    num_cached_tokens: int = 0  # prompt tokens read from the prefix cache instead of computed
