"""Responses for many prompts at once on a synchronous LLMEngine: the engine batches whatever is in flight (continuous
batching) and its prefix cache prefills a prompt's shared beginning (a jailbreak template, the chat template's system
prompt) once. Requests are added in the order given, so prompts that share a prefix arrive together.

`window` bounds the requests in flight; window=1 is one-at-a-time generation, what bench/redteam_speed.py compares
the batch against.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from hearth.engine.request import EngineRequest
from hearth.engine.sampling import SamplingParams


@dataclass(frozen=True)
class Job:
    key: str  # the caller's id for the result (a cache key)
    prompt_ids: list[int]
    params: SamplingParams
    adapter: str | None = None


@dataclass(frozen=True)
class Generated:
    text: str
    finish_reason: str  # stop | length
    prompt_tokens: int
    tokens: int


def generate(engine, jobs: Sequence[Job], on_done: Callable[[str, Generated], None], window: int = 64) -> None:
    """Run `jobs` on `engine` (an LLMEngine), calling on_done(key, result) as each finishes (in finishing order)."""
    nxt = 0
    live: dict[str, tuple[Job, list[str]]] = {}
    while nxt < len(jobs) or live:
        while nxt < len(jobs) and len(live) < window:
            job = jobs[nxt]
            rid = f"rt{nxt}"
            engine.add_request(EngineRequest(rid, job.prompt_ids, job.params, adapter=job.adapter))
            live[rid] = (job, [])
            nxt += 1
        for out in engine.step():
            job, parts = live[out.request_id]
            parts.append(out.new_text)
            if out.finished:
                del live[out.request_id]
                reason = out.finish_reason.value if out.finish_reason is not None else "stop"
                on_done(job.key, Generated("".join(parts), reason, out.num_prompt_tokens, out.num_generated_tokens))
