"""Sampling parameters and the logits → next-token step.

Processing order follows transformers: repetition/presence/frequency penalties, temperature,
top-k, top-p, min-p, then a draw from a seeded generator. Temperature 0 is greedy.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from hearth.errors import HearthError


@dataclass(frozen=True)
class SamplingParams:
    max_tokens: int = 256
    temperature: float = 0.8
    top_k: int = 0  # 0: off
    top_p: float = 1.0
    min_p: float = 0.0
    repetition_penalty: float = 1.0  # 1.0: off; >1 discourages tokens already in the context
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    ignore_eos: bool = False

    def __post_init__(self) -> None:
        def bad(name: str, value, rule: str) -> HearthError:
            return HearthError(f"invalid {name}={value}: {rule}")

        if not isinstance(self.max_tokens, int) or self.max_tokens < 0:
            raise bad("max_tokens", self.max_tokens, "must be an integer >= 0")
        if not (math.isfinite(self.temperature) and 0 <= self.temperature <= 100):
            raise bad("temperature", self.temperature, "must be between 0 (greedy) and 100")
        if not isinstance(self.top_k, int) or self.top_k < 0:
            raise bad("top_k", self.top_k, "must be an integer >= 0 (0 turns it off)")
        if not (0 < self.top_p <= 1):
            raise bad("top_p", self.top_p, "must be in (0, 1]")
        if not (0 <= self.min_p <= 1):
            raise bad("min_p", self.min_p, "must be in [0, 1]")
        if not (math.isfinite(self.repetition_penalty) and self.repetition_penalty > 0):
            raise bad("repetition_penalty", self.repetition_penalty, "must be > 0 (1.0 turns it off)")
        for name in ("presence_penalty", "frequency_penalty"):
            if not (-2 <= getattr(self, name) <= 2):
                raise bad(name, getattr(self, name), "must be between -2 and 2")
        if self.seed is not None and not (0 <= self.seed < 2**63):
            raise bad("seed", self.seed, "must be a non-negative 64-bit integer")
        if any(not isinstance(s, str) or not s for s in self.stop):
            raise HearthError("invalid stop: stop strings must be non-empty text")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


def apply_penalties(logits: Tensor, context: Tensor, p: SamplingParams) -> Tensor:
    """logits (V,) fp32; context: 1-D tensor of ids seen so far (prompt + generated)."""
    if context.numel() == 0:
        return logits
    if p.repetition_penalty != 1.0:
        seen = logits[context]
        logits = logits.clone()
        logits[context] = torch.where(seen > 0, seen / p.repetition_penalty, seen * p.repetition_penalty)
    if p.presence_penalty or p.frequency_penalty:
        counts = torch.bincount(context, minlength=logits.shape[-1]).to(logits.dtype)
        logits = logits - p.frequency_penalty * counts - p.presence_penalty * (counts > 0).to(logits.dtype)
    return logits


def filter_logits(logits: Tensor, p: SamplingParams) -> Tensor:
    """Temperature, top-k, top-p and min-p on (V,) fp32 logits; removed entries become -inf."""
    logits = logits / p.temperature
    if p.top_k and p.top_k < logits.shape[-1]:
        kth = torch.topk(logits, p.top_k).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if p.top_p < 1.0:
        sorted_logits, idx = torch.sort(logits, descending=True)
        cum = sorted_logits.softmax(-1).cumsum(-1)
        remove = cum - sorted_logits.softmax(-1) >= p.top_p  # keep the smallest set reaching top_p
        logits = logits.masked_fill(torch.zeros_like(remove).scatter(0, idx, remove), float("-inf"))
    if p.min_p > 0:
        probs = logits.softmax(-1)
        logits = logits.masked_fill(probs < p.min_p * probs.max(), float("-inf"))
    return logits


class Sampler:
    """Chooses next tokens for one sequence; owns its random generator so a seed reproduces a run."""

    def __init__(self, params: SamplingParams):
        self.params = params
        self.generator = torch.Generator()
        self.generator.manual_seed(params.seed if params.seed is not None else torch.seed())

    @property
    def plain_greedy(self) -> bool:
        """Greedy with no penalties: the next token is the argmax of the raw logits (computable on the device)."""
        p = self.params
        return p.greedy and p.repetition_penalty == 1.0 and not p.presence_penalty and not p.frequency_penalty

    def __call__(self, logits: Tensor, context: Tensor) -> int:
        p = self.params
        logits = apply_penalties(logits.float().cpu(), context.cpu(), p)
        if p.greedy:
            return int(torch.argmax(logits))
        probs = filter_logits(logits, p).softmax(-1)
        return int(torch.multinomial(probs, 1, generator=self.generator))
