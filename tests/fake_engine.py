"""Helpers (not tests): an engine with AsyncEngine's surface and no model, for testing the server fast.

It "generates" deterministic tokens (a function of the prompt, the step and the seed) through the same
detokenizer and stop-string matcher as the real engine, with the tiny BPE tokenizer of tests/tiny.py,
and records what the server asked of it: requests, aborts, how many are running.
"""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass

import torch

from hearth.engine.async_engine import EngineDeadError, EngineStats, QueueFullError
from hearth.engine.generate import _StopMatcher, check_context
from hearth.engine.request import EngineRequest, FinishReason, RequestOutput, TokenLogprob
from hearth.errors import HearthError
from hearth.tokenizer import ChatTemplate, Tokenizer
from hearth.weights.types import TokenizerData

from tiny import CHAT_TEMPLATE, train_tokenizer

FIRST_NORMAL_ID = 3  # 0-2 are <|endoftext|> <|im_start|> <|im_end|>


def tiny_tokenizer() -> Tokenizer:
    data = TokenizerData(
        bos_id=0, eos_ids=(2,), pad_id=0, add_bos=False,
        special_tokens={"bos_token": "<|endoftext|>", "eos_token": "<|im_end|>"},
    )
    return Tokenizer(train_tokenizer(), data)


@dataclass
class Settings:
    token_delay: float = 0.0  # seconds between outputs
    eos_after: int | None = None  # emit EOS as this token (1-based), unless ignore_eos
    fail: BaseException | None = None  # raised by generate() before anything is queued
    fail_midway: BaseException | None = None  # raised after the first output


class FakeEngine:
    def __init__(self, max_model_len: int = 256, max_waiting: int = 8, model_name: str = "tiny"):
        self.tokenizer = tiny_tokenizer()
        self.chat_template = ChatTemplate(CHAT_TEMPLATE, self.tokenizer.special_tokens)
        self.max_model_len = max_model_len
        self.model_name = model_name
        self.max_waiting = max_waiting
        self.max_group = 64  # the most requests one HTTP request may start (AsyncEngine: max_num_seqs + max_waiting)
        self.settings = Settings()
        self.requests: list[EngineRequest] = []
        self.aborted: list[str] = []
        self.active: set[str] = set()
        self.alive = True

    embedding_dim = 8

    async def call(self, fn):
        """AsyncEngine.call over a stand-in model whose embedding of ids is a fixed unit vector per ids."""
        class Model:
            @staticmethod
            def embed(ids):
                g = torch.Generator().manual_seed(sum(ids) * 31 + len(ids))
                return torch.nn.functional.normalize(torch.randn(self.embedding_dim, generator=g), dim=0)

        class LM:
            model = Model()

        return fn(LM())

    def stats(self) -> EngineStats:
        return EngineStats(running=len(self.active), waiting=0, kv_blocks_used=4 * len(self.active), kv_blocks_total=64)

    def abort(self, request_id: str) -> None:
        if request_id in self.active:
            self.aborted.append(request_id)
            self.active.discard(request_id)

    def next_token(self, req: EngineRequest, step: int, rng: random.Random) -> int:
        span = self.tokenizer.vocab_size - FIRST_NORMAL_ID
        if req.params.temperature == 0:
            return FIRST_NORMAL_ID + (sum(req.prompt_ids) + 7 * step) % span
        return FIRST_NORMAL_ID + rng.randrange(span)

    def _top(self, token: int, k: int) -> list[tuple[int, float]]:
        others = [t for t in range(FIRST_NORMAL_ID, FIRST_NORMAL_ID + k + 1) if t != token]
        return ([(token, -0.25)] + [(t, -2.0 - j) for j, t in enumerate(others)])[:k]

    async def generate(self, req: EngineRequest):
        s = self.settings
        if not self.alive:
            raise EngineDeadError("the engine is not running")
        if s.fail is not None:
            raise s.fail
        for t in req.prompt_ids:
            if not 0 <= t < self.tokenizer.vocab_size:
                raise HearthError(f"invalid token id {t}")
        check_context(len(req.prompt_ids), req.params.max_tokens, self.max_model_len)
        if len(self.active) >= self.max_waiting:
            raise QueueFullError("the server is busy; retry later")
        if req.request_id in self.active:
            raise HearthError(f"duplicate request id {req.request_id}")
        self.requests.append(req)
        self.active.add(req.request_id)
        rng = random.Random(req.params.seed)
        decoder, stops = self.tokenizer.stream(), _StopMatcher(req.params.stop)
        p = req.params
        prompt_lps = None
        if req.prompt_logprobs is not None:
            prompt_lps = [None] + [
                TokenLogprob(t, -1.0 - 0.01 * i, self._top(t, req.prompt_logprobs)) for i, t in enumerate(req.prompt_ids[1:])
            ]
        finished = False
        try:
            if p.max_tokens == 0:
                finished = True
                yield RequestOutput(req.request_id, [], "", True, FinishReason.LENGTH, prompt_logprobs=prompt_lps,
                                    num_prompt_tokens=len(req.prompt_ids), num_generated_tokens=0)
                return
            for step in range(1, p.max_tokens + 1):
                await asyncio.sleep(s.token_delay)
                if req.request_id not in self.active:  # aborted
                    return
                token = self.next_token(req, step, rng)
                if s.eos_after == step and not p.ignore_eos:
                    token = self.tokenizer.eos_ids[0]
                lps = None
                if req.logprobs is not None:
                    lps = [TokenLogprob(token, -0.25, self._top(token, req.logprobs))]
                reason = None
                if token in self.tokenizer.eos_ids and not p.ignore_eos:
                    text, reason = stops.feed(decoder.flush())[0] + stops.flush(), FinishReason.STOP
                else:
                    text, stopped = stops.feed(decoder.push(token))
                    if stopped:
                        reason = FinishReason.STOP
                    elif step == p.max_tokens:
                        tail, stopped = stops.feed(decoder.flush())
                        text += tail + ("" if stopped else stops.flush())
                        reason = FinishReason.STOP if stopped else FinishReason.LENGTH
                finished = reason is not None
                yield RequestOutput(req.request_id, [token], text, finished, reason, logprobs=lps,
                                    prompt_logprobs=prompt_lps if step == 1 else None,
                                    num_prompt_tokens=len(req.prompt_ids), num_generated_tokens=step)
                if finished:
                    return
                if s.fail_midway is not None:
                    raise s.fail_midway
        finally:
            if not finished:
                self.abort(req.request_id)
            self.active.discard(req.request_id)
