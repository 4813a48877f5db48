"""POST /v1/completions: raw prompts (text or token ids) → engine requests → OpenAI's legacy format.

Scoring clients (lm-evaluation-harness's `local-completions`) send token-id prompts with `echo`,
`logprobs` and `max_tokens` 0 or 1: `token_logprobs` then covers every prompt token (the first is
null) followed by the generated ones, so `token_logprobs[ctxlen:]` scores a continuation.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

from hearth.engine.request import EngineRequest, RequestOutput, TokenLogprob
from hearth.tokenizer.tokenizer import TextStreamDecoder
from hearth.server.access_log import note_usage
from hearth.server.common import (EventStream, RequestGroup, ServerContext, logprob, random_id, sampling_params,
                                  usage_info)
from hearth.server.errors import error_event
from hearth.server.guarding import CONTENT_FILTER, HeldStream, answers_blocked, with_input_checks
from hearth.server.protocol import CompletionChoice, CompletionLogprobs, CompletionRequest, CompletionResponse, UsageInfo


@dataclass
class _Prompt:
    ids: list[int]
    text: str  # echoed back: the caller's string, or the decoded token ids


@dataclass
class _Choice:
    """What one choice has accumulated (a stream resets `text` and `logprobs` after each chunk)."""

    prompt: _Prompt
    text: str = ""
    logprobs: CompletionLogprobs | None = None
    offset: int = 0  # text_offset of the next token: characters of text so far
    decoder: TextStreamDecoder | None = None  # counts them, a character split across tokens where it starts
    started: bool = False
    finish_reason: str | None = None
    generated: int = 0
    cached: int = 0  # its prompt tokens found in the prefix cache
    answer: str = ""  # the text generated (what an output check reads)
    turns: list[dict] | None = None  # the prompt as the guard reads it


class CompletionService:
    def __init__(self, ctx: ServerContext):
        self.ctx = ctx

    def _prompts(self, req: CompletionRequest, max_tokens: int) -> list[_Prompt]:
        """Blocking (tokenization): called in a prompt thread (ServerContext.off_loop)."""
        tok = self.ctx.engine.tokenizer
        prompts = []
        for j, p in enumerate(req.prompts()):
            where = "prompt" if isinstance(req.prompt, str) or isinstance(req.prompt[0], int) else f"prompt.{j}"
            if isinstance(p, str):
                self.ctx.check_text_fits(p, where)
                ids = tok.encode(p)  # the model's own BOS rule
                text = p
            else:
                self.ctx.check_token_ids(p, where)
                ids, text = list(p), (tok.decode(p) if req.echo else "")
            self.ctx.check_fits(len(ids), max_tokens, where)
            prompts.append(_Prompt(ids, text))
        return prompts

    def _guard_inputs(self, req: CompletionRequest) -> list[list[dict] | None]:
        """Blocking (token ids are decoded): each prompt as the user turn the guard reads (None: empty)."""
        tok = self.ctx.engine.tokenizer
        out = []
        prompts = req.prompts()
        for j, p in enumerate(prompts):
            if not isinstance(p, str):
                self.ctx.check_token_ids(p, "prompt" if len(prompts) == 1 else f"prompt.{j}")
            text = p if isinstance(p, str) else tok.decode(p)
            out.append([{"role": "user", "content": text}] if text.strip() else None)
        return out

    async def create(self, req: CompletionRequest) -> CompletionResponse | EventStream:
        """With a guard, each prompt is checked while it tokenizes; the choices of a blocked one carry the policy's
        refusal and finish_reason content_filter, and are never generated."""
        model = self.ctx.check_model(req.model)
        self.ctx.check_logit_bias(req)
        max_tokens = 16 if req.max_tokens is None else req.max_tokens  # OpenAI's default, also for null
        guard = self.ctx.guard
        inputs = await self.ctx.off_loop(self._guard_inputs, req) if guard is not None else [None] * len(req.prompts())
        prompts, blocked = await with_input_checks(self.ctx, inputs, self.ctx.off_loop(self._prompts, req, max_tokens))
        rid = random_id("cmpl")
        scoring = req.echo and req.logprobs is not None
        engine_reqs, choices, slots = [], [], []  # slots: the choice of each engine request
        for j, p in enumerate(prompts):
            for i in range(req.n):
                index = j * req.n + i
                c = _Choice(p, turns=inputs[j])
                if blocked[j]:
                    c.text, c.finish_reason, c.started = guard.policy.refusal, CONTENT_FILTER, True
                else:
                    engine_reqs.append(EngineRequest(
                        f"{rid}-{index}", p.ids, sampling_params(req, max_tokens, i),
                        logprobs=req.logprobs, prompt_logprobs=req.logprobs if scoring else None,
                        adapter=self.ctx.adapter(req.model),
                    ))
                    slots.append(index)
                choices.append(c)
        group = RequestGroup(self.ctx, engine_reqs)
        await group.start()
        n_prompt = sum(len(p.ids) for p in prompts)
        if req.stream:
            return EventStream(group, self._stream(req, group, rid, model, choices, slots, n_prompt))
        return await self._collect(req, group, rid, model, choices, slots, n_prompt)

    # -- logprobs in the legacy format ----------------------------------------------------------------
    def _add_logprobs(self, req: CompletionRequest, c: _Choice, entries: list[TokenLogprob | None], ids: list[int]) -> None:
        lp, k, as_ids = c.logprobs, req.logprobs, req.return_tokens_as_token_ids
        if c.decoder is None:
            c.decoder = self.ctx.engine.tokenizer.stream(skip_special=False)
        for token_id, e in zip(ids, entries):
            s = self.ctx.token_str(token_id, as_ids)
            lp.tokens.append(s)
            lp.text_offset.append(c.offset)
            c.offset += len(c.decoder.push(token_id))
            if e is None:  # the first prompt token: nothing predicts it
                lp.token_logprobs.append(None)
                lp.top_logprobs.append(None)
                continue
            lp.token_logprobs.append(logprob(e.logprob))
            top = {self.ctx.token_str(t, as_ids): logprob(v) for t, v in e.top[:k]}
            top.setdefault(s, logprob(e.logprob))  # the chosen token is always listed, as in vLLM
            lp.top_logprobs.append(top)

    def _update(self, req: CompletionRequest, c: _Choice, out: RequestOutput) -> None:
        want_lp = req.logprobs is not None
        if want_lp and c.logprobs is None:
            c.logprobs = CompletionLogprobs()
        if not c.started:
            c.started = True
            if req.echo:
                c.text += c.prompt.text
                if want_lp:
                    self._add_logprobs(req, c, out.prompt_logprobs or [None] * len(c.prompt.ids), c.prompt.ids)
        c.text += out.new_text
        c.answer += out.new_text
        if want_lp and out.logprobs:
            self._add_logprobs(req, c, out.logprobs, out.new_token_ids)
        if out.finished:
            c.finish_reason = out.finish_reason.value
            c.generated = out.num_generated_tokens
            c.cached = out.num_cached_tokens

    async def _collect(self, req, group: RequestGroup, rid, model, choices: list[_Choice], slots: list[int],
                       n_prompt: int):
        async for g, out in group.outputs():
            self._update(req, choices[slots[g]], out)
        blocked = await answers_blocked(self.ctx, [(choices[i].turns, choices[i].answer) for i in slots])
        for i, b in zip(slots, blocked):
            if b:  # nothing of it was sent: the whole answer is withheld
                choices[i].text, choices[i].logprobs = self.ctx.guard.policy.refusal, None
                choices[i].finish_reason = CONTENT_FILTER
        generated = sum(c.generated for c in choices)
        note_usage(n_prompt, generated)
        return CompletionResponse(
            id=rid, model=model,
            choices=[CompletionChoice(index=i, text=c.text, logprobs=c.logprobs, finish_reason=c.finish_reason)
                     for i, c in enumerate(choices)],
            usage=usage_info(n_prompt, generated, sum(c.cached for c in choices)),
            system_fingerprint=self.ctx.fingerprint,
        )

    async def _stream(self, req, group: RequestGroup, rid, model, choices: list[_Choice], slots: list[int],
                      n_prompt: int) -> AsyncIterator[str]:
        created = int(time.time())

        def event(chunk_choices: list[CompletionChoice], usage: UsageInfo | None = None) -> str:
            chunk = CompletionResponse(id=rid, created=created, model=model, choices=chunk_choices, usage=usage).model_dump()
            if not req.include_usage:
                del chunk["usage"]
            return f"data: {json.dumps(chunk, ensure_ascii=False)}\n\n"

        guard = self.ctx.guard
        held = None  # with output checks: each choice's events wait in a HeldStream until their text has passed
        if guard is not None and guard.policy.check_output:
            held = {i: HeldStream(guard, self.ctx, choices[i].turns) for i in slots}
        try:
            for i, c in enumerate(choices):
                if c.finish_reason == CONTENT_FILTER:  # its prompt was blocked
                    yield event([CompletionChoice(index=i, text=c.text, finish_reason=c.finish_reason)])
            async for g, out in group.outputs():
                i = slots[g]
                c = choices[i]
                self._update(req, c, out)
                chunk = None
                if c.text or c.finish_reason or (c.logprobs and c.logprobs.tokens):
                    chunk = event([CompletionChoice(index=i, text=c.text, logprobs=c.logprobs,
                                                    finish_reason=c.finish_reason)])
                c.text = ""
                if c.logprobs is not None:
                    c.logprobs = CompletionLogprobs()
                if held is None:
                    if chunk is not None:
                        yield chunk
                    continue
                step = held[i].finish if out.finished else held[i].push
                sent = await step(chunk, out.new_text)
                for e in sent:
                    yield e
                if held[i].blocked:
                    if not out.finished:  # the rest of this choice is not generated
                        group.stop(g)
                        c.generated = out.num_generated_tokens
                    yield event([CompletionChoice(index=i, text="", finish_reason=CONTENT_FILTER)])
            generated = sum(c.generated for c in choices)
            note_usage(n_prompt, generated)
            if req.include_usage:
                yield event([], usage_info(n_prompt, generated, sum(c.cached for c in choices)))
        except Exception as e:  # noqa: BLE001 - the status line is sent: report it in the stream
            yield error_event(e)
        finally:
            group.close()
        yield "data: [DONE]\n\n"
