"""Sampling parameters and the logits → next-token step.

Processing order follows transformers: repetition/presence/frequency penalties, temperature,
top-k, top-p, min-p, then a draw from a seeded generator. Temperature 0 is greedy.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from hearth.engine.structured import Constraint, Structure
from hearth.errors import HearthError

GREEDY_BELOW = 1e-5  # temperatures under this sample greedily


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
    structure: Structure | None = None  # output constrained to a JSON schema, regex, grammar or choice
    # (token id, bias) pairs added to the raw logits before anything else (OpenAI's logit_bias: -100 bans, 100 forces)
    logit_bias: tuple[tuple[int, float], ...] = ()

    def __post_init__(self) -> None:
        def bad(name: str, value, rule: str) -> HearthError:
            return HearthError(f"invalid {name}={value}: {rule}")

        if not isinstance(self.max_tokens, int) or self.max_tokens < 0:
            raise bad("max_tokens", self.max_tokens, "must be an integer >= 0")
        if not (math.isfinite(self.temperature) and 0 <= self.temperature <= 100):
            raise bad("temperature", self.temperature, "must be between 0 (greedy) and 100")
        if not isinstance(self.top_k, int) or self.top_k < 0:
            raise bad("top_k", self.top_k, "must be an integer >= 0 (0 turns it off)")
        if not (0 <= self.top_p <= 1):
            raise bad("top_p", self.top_p, "must be in [0, 1] (0: only the most likely token)")
        if not (0 <= self.min_p <= 1):
            raise bad("min_p", self.min_p, "must be in [0, 1]")
        if not (math.isfinite(self.repetition_penalty) and self.repetition_penalty > 0):
            raise bad("repetition_penalty", self.repetition_penalty, "must be a finite number > 0 (1.0 turns it off)")
        for name in ("presence_penalty", "frequency_penalty"):
            if not (-2 <= getattr(self, name) <= 2):
                raise bad(name, getattr(self, name), "must be between -2 and 2")
        if self.seed is not None and not (0 <= self.seed < 2**63):
            raise bad("seed", self.seed, "must be a non-negative 64-bit integer")
        for token, bias in self.logit_bias:
            if not isinstance(token, int) or token < 0:
                raise bad("logit_bias", token, "token ids must be integers >= 0")
            if not (math.isfinite(bias) and -100 <= bias <= 100):
                raise bad("logit_bias", f"{{{token}: {bias}}}", "biases must be between -100 and 100")
        if any(not isinstance(s, str) or not s for s in self.stop):
            raise HearthError("invalid stop: stop strings must be non-empty text")

    @property
    def greedy(self) -> bool:
        # below this, dividing fp32 logits by the temperature overflows to inf/NaN; the draw would be the argmax anyway
        return self.temperature < GREEDY_BELOW


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
        remove[0] = False  # and always the best token (top_p 0, or one below fp32's smallest number)
        logits = logits.masked_fill(torch.zeros_like(remove).scatter(0, idx, remove), float("-inf"))
    if p.min_p > 0:
        probs = logits.softmax(-1)
        logits = logits.masked_fill(probs < p.min_p * probs.max(), float("-inf"))
    return logits


class Sampler:
    """Chooses next tokens for one sequence; owns its random generator so a seed reproduces a run, and the matcher of
    its structured output (which needs the tokenizer)."""

    def __init__(self, params: SamplingParams, tokenizer=None, constraint: Constraint | None = None):
        """`constraint`: the structured output's matcher, compiled in advance (the engine compiles in `validate`, off
        its step thread); without one it is compiled here, which needs the tokenizer."""
        self.params = params
        self.constraint = constraint
        if params.structure is not None and constraint is None:
            if tokenizer is None:
                raise ValueError("a Sampler with structured output needs the tokenizer")
            self.constraint = Constraint.build(params.structure, tokenizer)
        self._bias: tuple[Tensor, Tensor] | None = None  # (ids, values) on the logits' device, made on first use
        self.seed = params.seed if params.seed is not None else torch.seed()
        self.generator = torch.Generator()
        self.generator.manual_seed(self.seed)

    def _generator(self, device: torch.device) -> torch.Generator:
        """The sampler's random stream on `device` (a GPU samples where its logits are), seeded alike."""
        if self.generator.device != device:
            self.generator = torch.Generator(device=device)
            self.generator.manual_seed(self.seed)
        return self.generator

    @property
    def plain_greedy(self) -> bool:
        """Greedy with no penalties: the next token is the argmax of the raw logits (computable on the device)."""
        return self.params.greedy and not self.uses_context and self.constraint is None and not self.params.logit_bias

    @property
    def done(self) -> bool:
        """Structured output that is complete: nothing may follow, the sequence ends."""
        return self.constraint is not None and self.constraint.done

    @property
    def uses_context(self) -> bool:
        """Whether the tokens seen so far matter (penalties); else callers may pass an empty context."""
        p = self.params
        return p.repetition_penalty != 1.0 or bool(p.presence_penalty) or bool(p.frequency_penalty)

    def _biased(self, logits: Tensor) -> Tensor:
        if self._bias is None or self._bias[0].device != logits.device:
            ids, values = zip(*self.params.logit_bias)
            if max(ids) >= logits.shape[-1]:
                raise HearthError(f"invalid logit_bias: token id {max(ids)} is outside the vocabulary [0, {logits.shape[-1]})")
            self._bias = (torch.tensor(ids, device=logits.device), torch.tensor(values, device=logits.device))
        ids, values = self._bias
        return logits.float().index_add(0, ids, values)  # a repeated id adds up, as separate biases would

    def __call__(self, logits: Tensor, context: Tensor) -> int:
        """The next token for (V,) logits on any device (a GPU's logits stay there: one id comes back)."""
        if self.params.logit_bias:
            logits = self._biased(logits)
        if self.constraint is None:
            return self._choose(logits, context)
        allowed = self.constraint.allowed(logits.shape[-1], logits.device)
        token = self._choose(logits.float().masked_fill(~allowed, float("-inf")), context)
        self.constraint.accept(token)
        return token

    def _choose(self, logits: Tensor, context: Tensor) -> int:
        p = self.params
        if self.plain_greedy:
            return int(torch.argmax(logits))
        logits = apply_penalties(logits.float(), context.to(logits.device), p)
        if p.greedy:
            return int(torch.argmax(logits))
        idx, probs = candidate_probs(logits, p)
        # inverse-CDF draw: one random number (torch.multinomial drew one per token: 4 ms a token at 128K on a CPU)
        cdf = probs.double().cumsum(-1)
        u = torch.rand(1, generator=self._generator(probs.device), device=probs.device, dtype=torch.float64) * cdf[-1]
        pick = torch.searchsorted(cdf, u, right=True).clamp_max(cdf.numel() - 1)
        # logits with NaN or all -inf (a broken model or adapter): the argmax, decided on the device (no sync)
        pick = torch.where(cdf[-1] > 0, pick, torch.argmax(probs))
        return int(idx[pick] if idx is not None else pick)


def candidate_probs(logits: Tensor, p: SamplingParams, candidates: int = 1024) -> tuple[Tensor | None, Tensor]:
    """(token ids, probabilities) of what `filter_logits` keeps, without sorting the whole vocabulary: top-k and
    top-p look only at the best tokens (torch.topk: `candidates`, or 8x, 64x as many until they hold the nucleus of
    a flat distribution; the whole vocabulary sorted only past that). ids None: probabilities over every token.
    Sorting 128K logits for top-p took 20 ms a token on a CPU (6.8 ms at SmolLM2's 49K), longer than a decode step."""
    x = logits / p.temperature
    v = x.shape[-1]
    k = p.top_k if p.top_k and p.top_k < v else 0
    if not k and p.top_p >= 1.0:  # temperature (and min-p) alone: every token a candidate
        probs = x.softmax(-1)
        if p.min_p > 0:
            probs = probs.masked_fill(probs < p.min_p * probs.max(), 0.0)
        return None, probs
    if k:  # after top-k, the survivors' own softmax (filter_logits masks the rest to -inf)
        vals, idx = torch.topk(x, k)  # sorted, best first
        probs = vals.softmax(-1)
    else:
        lse = torch.logsumexp(x, -1)
        # a GPU sorts 128K logits in microseconds, and each widening below would read a sum back to the host
        n = v if x.is_cuda else candidates
        while True:  # widen the candidates until they hold the nucleus (a flat distribution: 8x, 64x, then all)
            vals, idx = torch.topk(x, n) if n < v else torch.sort(x, descending=True)
            probs = (vals - lse).exp()
            if n >= v or probs.sum() > p.top_p + 1e-4:
                break
            n *= 8
    if p.top_p < 1.0:
        before = probs.cumsum(-1) - probs  # mass of the better tokens
        probs = probs.masked_fill((before >= p.top_p) & (before > 0), 0.0)  # the best token always stays
    if p.min_p > 0:  # relative to the best survivor's probability after the filters above (as filter_logits)
        kept = probs / probs.sum()
        probs = probs.masked_fill(kept < p.min_p * kept.max(), 0.0)
    return idx, probs
