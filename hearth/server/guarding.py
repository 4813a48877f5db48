"""The guard in the server (`hearth serve --guard`): prompts checked before they are generated, answers checked as
they stream, every verdict counted.

One ServerGuard per server. It classifies on an AsyncEngine: the served engine itself when the guard is a LoRA
adapter of the served model's own weights (its rows join the engine's batches beside other traffic, no second copy
of the weights, and prefix caching makes the fixed instructions free after the first check), otherwise an engine of
its own loaded beside it (guard_plan.py decides). Guard prompts render and tokenize in the server's prompt threads
(ServerContext.off_loop), the engine runs on its own thread: a check never blocks the event loop.

A check stops decoding the guard's answer as soon as its first token says safe (P(unsafe) below the policy's
threshold, classifier.GuardFormat.score): a safe check costs one prefill and one token; only an unsafe one decodes
the few tokens that name its categories.

Output checks (`HeldStream`): a stream's text waits in a hold-back window until it has been checked, each time
`holdback` characters are held and once more at the end, classifying the conversation with the answer so far as the
assistant's turn; a flagged window is never sent.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

from hearth.engine.request import EngineRequest
from hearth.engine.sampling import SamplingParams
from hearth.guard.classifier import ANSWER_TOKENS, GuardFormat, Verdict
from hearth.guard.policy import Policy
from hearth.server.errors import ServiceUnavailable

if TYPE_CHECKING:
    from hearth.server.common import ServerContext

log = logging.getLogger("hearth.guard")

DEFAULT_HOLDBACK = 256  # characters of an answer held back until checked
CONTENT_FILTER = "content_filter"  # OpenAI's finish_reason for an answer its filter stopped
GUARD_MODEL = "guard"  # the model name /v1/moderations answers with
# what clients written for OpenAI ask /v1/moderations for: accepted as names of the guard
OPENAI_MODERATION_PREFIXES = ("omni-moderation", "text-moderation")

T = TypeVar("T")


@dataclass(frozen=True)
class Check:
    """One verdict of the guard, where it was asked (input, output or moderation) and how long it took."""

    verdict: Verdict
    kind: str
    seconds: float

    @property
    def blocked(self) -> bool:
        return self.verdict.action == "block"


class ServerGuard:
    """The guard as the server runs it: its format and policy, the engine it classifies on (with `adapter`: as that
    LoRA adapter's rows), the hold-back window of output checks."""

    def __init__(self, engine, fmt: GuardFormat, adapter: str | None = None, holdback: int = DEFAULT_HOLDBACK):
        if holdback < 0:
            raise ValueError("holdback must be >= 0")
        self.engine, self.fmt, self.adapter, self.holdback = engine, fmt, adapter, holdback

    @classmethod
    def on(cls, engine, policy: Policy, adapter: str | None = None, **kw) -> ServerGuard:
        """A guard classifying with `engine`'s model (and tokenizer, chat template and context)."""
        return cls(engine, GuardFormat(engine.tokenizer, engine.chat_template, policy, engine.max_model_len), adapter,
                   **kw)

    @property
    def policy(self) -> Policy:
        return self.fmt.policy

    def model_name(self, asked: str | None) -> str | None:
        """The name to answer /v1/moderations with; None if `asked` names no guard."""
        if asked is None or asked == GUARD_MODEL:
            return GUARD_MODEL
        return asked if asked.startswith(OPENAI_MODERATION_PREFIXES) else None

    async def check(self, ctx: ServerContext, messages: list[dict], kind: str) -> Check:
        """Classify `messages` (user/assistant turns with text): the last user turn for kind 'input' and
        'moderation', the last assistant turn for 'output'. Counted in ctx.metrics; a decision other than allow is
        logged (codes and score, never content)."""
        start = time.monotonic()
        role = "assistant" if kind == "output" else "user"
        ids, dropped = await ctx.off_loop(self.fmt.prompt_ids, messages, role)
        req = EngineRequest(f"guard-{uuid.uuid4().hex}", ids, SamplingParams(max_tokens=ANSWER_TOKENS,
                            temperature=0.0), adapter=self.adapter,
                            score_token_ids=(self.fmt.safe_id, self.fmt.unsafe_id))
        text, scores = "", None
        outputs = self.engine.generate(req)
        try:
            async for out in outputs:
                text += out.new_text
                if out.scores is not None:
                    scores = out.scores
                    if self.fmt.score(scores) < self.policy.threshold:
                        break  # safe: the categories are not needed, stop decoding (closing aborts the request)
        finally:
            await outputs.aclose()
        if scores is None:  # the engine ended the request before its first token (shutting down)
            raise ServiceUnavailable("the guard's check was stopped before it answered; retry later")
        verdict = self.fmt.verdict(text, scores, dropped)
        done = Check(verdict, kind, time.monotonic() - start)
        record(ctx, done, self.policy)
        return done


def record(ctx: ServerContext, check: Check, policy: Policy) -> None:
    m, v = ctx.metrics, check.verdict
    m.guard_latency.labels(check.kind).observe(check.seconds)
    role = "assistant" if check.kind == "output" else "user"
    named = [c for c in v.categories if c in policy.codes]  # a code the policy lacks is no label (bounded set)
    for category in (named or ("unspecified",)) if v.unsafe else ("safe",):
        m.guard_decisions.labels(category, role, check.kind, v.action).inc()
    if v.action != "allow":
        log.warning("guard: %s %s (%s, P(unsafe)=%.3f)", v.action, check.kind,
                    ",".join(v.categories) or "no category named", v.score)


async def gather_all(aws: Iterable[Awaitable[T]]) -> list[T]:
    """asyncio.gather that cancels the rest when one fails (their guard requests are aborted) and raises that
    error itself (TaskGroup would wrap it in an ExceptionGroup, which errors.py does not map)."""
    tasks = [asyncio.ensure_future(a) for a in aws]
    try:
        return await asyncio.gather(*tasks)
    except BaseException:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise


# -- the conversation as the guard reads it ---------------------------------------------------------------------

def guard_turns(messages: Iterable) -> list[dict]:
    """A chat request's messages (protocol.ChatMessage) as the guard's two roles: user turns, and tool results (text
    from outside the conversation, as much input as the user's), as 'user'; the assistant's as 'assistant'. System
    and developer messages are the deployment's, not checked; empty turns are left out."""
    turns = []
    for m in messages:
        role = {"user": "user", "tool": "user", "assistant": "assistant"}.get(m.role)
        if role and m.text.strip():
            turns.append({"role": role, "content": m.text})
    return turns


def input_turns(turns: list[dict]) -> list[dict] | None:
    """The conversation ending with its last user turn (what an input check reads); None: nothing to check."""
    while turns and turns[-1]["role"] != "user":
        turns = turns[:-1]
    return turns or None


def with_answer(turns: list[dict] | None, answer: str) -> list[dict]:
    return [*(turns or ()), {"role": "assistant", "content": answer}]


class HeldStream:
    """One choice of a stream behind the output check. `push` takes each chunk's event and the text the model
    generated in it, and returns the events that may be sent now: none until `holdback` characters wait, then all
    of them once the answer so far has passed. `finish` checks what was not yet checked and returns the rest with
    the last event. Flagged (action block): `blocked` is set and the held events are dropped; the caller ends the
    choice with finish_reason content_filter."""

    def __init__(self, guard: ServerGuard, ctx: ServerContext, turns: list[dict] | None):
        self.guard, self.ctx, self.turns = guard, ctx, turns
        self.answer = ""
        self.held: list[str] = []
        self.held_chars = 0  # characters generated since the last check
        self.blocked = False

    async def push(self, event: str | None, text: str) -> list[str]:
        if self.blocked:
            return []
        self.answer += text
        self.held_chars += len(text)
        if event is not None:
            self.held.append(event)
        if self.held_chars < max(self.guard.holdback, 1):
            return []
        return await self._release()

    async def finish(self, event: str, text: str) -> list[str]:
        out = await self.push(None, text)
        if self.blocked:
            return []
        if self.held_chars:
            out += await self._release()
        if self.blocked:
            return []
        return [*out, *self.held, event]

    async def _release(self) -> list[str]:
        self.held_chars = 0
        if self.answer.strip():
            check = await self.guard.check(self.ctx, with_answer(self.turns, self.answer), "output")
            if check.blocked:
                self.blocked, self.held = True, []
                return []
        out, self.held = self.held, []
        return out


async def answers_blocked(ctx: ServerContext, answers: list[tuple[list[dict] | None, str]]) -> list[bool]:
    """Whether the guard blocks each whole (conversation, answer), side by side: a response that is not streamed is
    checked once, at the end. All False without output checks; an empty answer is not checked."""
    guard = ctx.guard
    if guard is None or not guard.policy.check_output:
        return [False] * len(answers)
    todo = [k for k, (_, answer) in enumerate(answers) if answer.strip()]
    checks = await gather_all(guard.check(ctx, with_answer(*answers[k]), "output") for k in todo)
    blocked = [False] * len(answers)
    for k, check in zip(todo, checks):
        blocked[k] = check.blocked
    return blocked


async def with_input_checks(ctx: ServerContext, conversations: list[list[dict] | None],
                            work: Awaitable[T]) -> tuple[T, list[bool]]:
    """Await `work` (the request's render and tokenization) while the guard checks each conversation's input, side
    by side: (work's result, blocked per conversation). None: nothing to check. Without input checks, work alone."""
    guard = ctx.guard
    if guard is None or not guard.policy.check_input or not any(conversations):
        return await work, [False] * len(conversations)
    task = asyncio.ensure_future(gather_all(guard.check(ctx, c, "input") for c in conversations if c))
    try:
        result = await work
    except BaseException:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        raise
    checks = iter(await task)
    return result, [bool(c) and next(checks).blocked for c in conversations]
