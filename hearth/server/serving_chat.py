"""POST /v1/chat/completions: messages → the model's chat template → n engine requests → OpenAI JSON/SSE.

With a guard (guarding.py), the prompt is checked while it renders and a blocked one is answered with the policy's
refusal and finish_reason content_filter; answers are checked at the end, or, streamed, behind a hold-back window.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator

from hearth.engine.request import EngineRequest, TokenLogprob
from hearth.server import tool_calls
from hearth.server.access_log import current, note_guard, note_usage
from hearth.server.common import (EventStream, RequestGroup, ServerContext, logprob, random_id, sampling_params,
                                  usage_info)
from hearth.server.errors import BadRequest, error_event
from hearth.server.guarding import (CONTENT_FILTER, HeldStream, answers_blocked, guard_turns, input_turns,
                                    with_input_checks)
from hearth.server.protocol import (
    AssistantMessage,
    ChatChoice,
    ChatChoiceLogprobs,
    ChatChunkChoice,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatCompletionResponse,
    ChatTokenLogprob,
    TopLogprob,
    UsageInfo,
)


class ChatService:
    def __init__(self, ctx: ServerContext):
        self.ctx = ctx

    def prompt_ids(self, req: ChatCompletionRequest) -> list[int]:
        """Blocking (a render up to its budget, a tokenization): called in a prompt thread (ServerContext.off_loop)."""
        engine = self.ctx.engine
        messages, extra = tool_calls.prompt(req.messages, tool_calls.offered(req), engine.chat_template.source)
        text = engine.chat_template.render(messages, add_generation_prompt=req.add_generation_prompt,
                                           **(req.chat_template_kwargs or {}), **extra)
        if req.continue_final_message:  # transformers' way: cut what the template wrote after the last message
            last = messages[-1].get("content")
            at = text.rfind(last) if isinstance(last, str) and last else -1
            if at < 0:
                raise BadRequest("continue_final_message: the chat template does not write the last message as "
                                 "given, so it cannot be continued", param="continue_final_message")
            text = text[: at + len(last)]
        self.ctx.check_text_fits(text, "messages")
        # The template writes BOS itself where the model wants one (as transformers' apply_chat_template).
        return engine.tokenizer.encode(text, add_bos=False)

    async def create(self, req: ChatCompletionRequest) -> ChatCompletionResponse | EventStream:
        """A response, or (stream=True) an SSE stream whose requests are already admitted by the engine. With a
        guard, the prompt is checked while it renders; a blocked one is never generated (`_refuse`)."""
        model = self.ctx.check_model(req.model)
        self.ctx.check_logit_bias(req)
        started = time.perf_counter()
        if self._keeps(req):  # metadata over OpenAI's limits is refused before any work
            from hearth.records.capture import InvalidMetadata, check_metadata

            try:
                check_metadata(req.metadata)
            except InvalidMetadata as e:
                raise BadRequest(str(e), param="metadata") from None
        turns = guard_turns(req.messages) if self.ctx.guard is not None else None
        ids, blocked = await with_input_checks(self.ctx, [input_turns(turns or [])],
                                               self.ctx.off_loop(self.prompt_ids, req))
        ctx_len = self.ctx.engine.max_model_len
        max_tokens = req.requested_max_tokens()
        if max_tokens is None:  # the rest of the context, as vLLM does
            self.ctx.check_fits(len(ids), None, "messages")
            max_tokens = ctx_len - len(ids)
        self.ctx.check_fits(len(ids), max_tokens, "messages")
        rid = random_id("chatcmpl")
        if self.ctx.guard is not None:
            note_guard("blocked: input" if blocked[0] else "allowed")
        if blocked[0]:
            refused = self._refuse(req, rid, model, len(ids))
            if not req.stream:
                await self._keep(req, refused.model_dump(), len(ids), 0, "blocked: input", started)
            return refused
        top = (req.top_logprobs or 0) if req.logprobs else None
        group = RequestGroup(self.ctx, [
            EngineRequest(f"{rid}-{i}", ids, sampling_params(req, max_tokens, i, tool_calls.forced_structure(req)),
                          logprobs=top, adapter=self.ctx.adapter(req.model))
            for i in range(req.n)
        ])
        await group.start()
        if req.stream:
            return EventStream(group, self._stream(req, group, rid, model, len(ids), turns, started))
        return await self._collect(req, group, rid, model, len(ids), turns, started)

    def _refuse(self, req, rid: str, model: str, n_prompt: int) -> ChatCompletionResponse | EventStream:
        """The answer to a prompt the guard blocked: the policy's refusal, finish_reason content_filter."""
        refusal = self.ctx.guard.policy.refusal
        usage = UsageInfo(prompt_tokens=n_prompt, completion_tokens=0, total_tokens=n_prompt)
        note_usage(n_prompt, 0)
        if not req.stream:
            return ChatCompletionResponse(id=rid, model=model, usage=usage, choices=[
                ChatChoice(index=i, message=AssistantMessage(content=refusal), finish_reason=CONTENT_FILTER)
                for i in range(req.n)])
        event = _events(req, rid, model, self.ctx.fingerprint)

        async def events() -> AsyncIterator[str]:
            for i in range(req.n):
                yield event([ChatChunkChoice(index=i, delta={"role": "assistant", "content": ""})])
                yield event([ChatChunkChoice(index=i, delta={"content": refusal})])
                yield event([ChatChunkChoice(index=i, delta={}, finish_reason=CONTENT_FILTER)])
            if req.include_usage:
                yield event([], usage)
            yield "data: [DONE]\n\n"

        return EventStream(RequestGroup(self.ctx, []), events())

    @staticmethod
    def _tool_names(req: ChatCompletionRequest) -> set[str]:
        return {t.function.name for t in req.tools or []}

    def _logprobs(self, req: ChatCompletionRequest, entries: list[TokenLogprob] | None) -> list[ChatTokenLogprob]:
        k = req.top_logprobs or 0

        def top(token_id: int, lp: float) -> TopLogprob:
            s = self.ctx.token_str(token_id, req.return_tokens_as_token_ids)
            return TopLogprob(token=s, logprob=logprob(lp), bytes=self.ctx.token_bytes(token_id))

        out = []
        for e in entries or []:
            t = top(e.token_id, e.logprob)
            out.append(ChatTokenLogprob(**t.model_dump(), top_logprobs=[top(i, lp) for i, lp in e.top[:k]]))
        return out

    def _keeps(self, req: ChatCompletionRequest) -> bool:
        records = self.ctx.records
        return records is not None and records.wants(req.store)

    async def _keep(self, req: ChatCompletionRequest, completion: dict, n_prompt: int, n_generated: int,
                    guard: str | None, started: float) -> None:
        """Store the completion (`store: true`, or a server that captures everything): redacted, in a thread; a
        database that cannot take it fails the request with a 503."""
        if not self._keeps(req):
            return
        from hearth.records.capture import Served

        records, usage = self.ctx.records, current()
        served = Served(model=completion["model"], key_id=usage.key_id if usage is not None else "anonymous",
                        model_digest=records.model_digest, adapter=self.ctx.adapter(req.model), guard=guard,
                        prompt_tokens=n_prompt, completion_tokens=n_generated,
                        duration_ms=round((time.perf_counter() - started) * 1000, 1))
        messages = [m.model_dump(exclude_none=True) for m in req.messages]
        await records.run(records.capture.add, completion, messages, req.metadata, served)

    async def _collect(self, req, group: RequestGroup, rid: str, model: str, n_prompt: int,
                       turns: list[dict] | None, started: float) -> ChatCompletionResponse:
        texts = [[] for _ in range(req.n)]
        lps: list[list[ChatTokenLogprob]] = [[] for _ in range(req.n)]
        reasons: list[str | None] = [None] * req.n
        generated = [0] * req.n
        cached = 0
        async for i, out in group.outputs():
            texts[i].append(out.new_text)
            if req.logprobs:
                lps[i].extend(self._logprobs(req, out.logprobs))
            if out.finished:
                reasons[i] = out.finish_reason.value
                generated[i] = out.num_generated_tokens
                cached = max(cached, out.num_cached_tokens)
        answers = ["".join(t) for t in texts]
        asked = input_turns(turns or [])
        blocked = await answers_blocked(self.ctx, [(asked, a) for a in answers])
        choices = []
        for i in range(req.n):
            if blocked[i]:  # nothing of it was sent: the whole answer is withheld
                choices.append(ChatChoice(index=i, message=AssistantMessage(content=self.ctx.guard.policy.refusal),
                                          finish_reason=CONTENT_FILTER))
                continue
            text = answers[i]
            reply = tool_calls.Reply(text, [])
            if req.effective_tool_choice != "none":
                reply = tool_calls.parse(text, self._tool_names(req), _call_id)
                if req.forces_tool_call and not reply.calls:  # cut short by max_tokens
                    reply = tool_calls.cut_call(text, self._tool_names(req), _call_id, _named(req))
            choices.append(ChatChoice(
                index=i,
                message=AssistantMessage(content=reply.content, tool_calls=reply.calls or None),
                logprobs=ChatChoiceLogprobs(content=lps[i]) if req.logprobs else None,
                finish_reason="tool_calls" if reply.calls and reasons[i] != "length" else reasons[i],
            ))
        usage = usage_info(n_prompt, sum(generated), cached)
        note_usage(n_prompt, sum(generated))
        decision = None if self.ctx.guard is None else "blocked: output" if any(blocked) else "allowed"
        if decision is not None:
            note_guard(decision)
        response = ChatCompletionResponse(id=rid, model=model, choices=choices, usage=usage,
                                          system_fingerprint=self.ctx.fingerprint)
        await self._keep(req, response.model_dump(), n_prompt, sum(generated), decision, started)
        return response

    async def _stream(self, req, group: RequestGroup, rid: str, model: str, n_prompt: int,
                      turns: list[dict] | None, started: float) -> AsyncIterator[str]:
        include_usage = req.include_usage
        event = _events(req, rid, model, self.ctx.fingerprint)
        guard = self.ctx.guard
        held = None  # with output checks: each choice's events wait in a HeldStream until their text has passed
        if guard is not None and guard.policy.check_output:
            held = [HeldStream(guard, self.ctx, input_turns(turns or [])) for _ in range(req.n)]

        def content_filter(i: int) -> str:
            return event([ChatChunkChoice(index=i, delta={}, finish_reason=CONTENT_FILTER)])

        generated = cached = 0
        kept = [[] for _ in range(req.n)] if self._keeps(req) else None  # the text, for the capture
        reasons: list[str | None] = [None] * req.n
        replies = None
        if req.effective_tool_choice != "none":
            replies = [tool_calls.ReplyStream(self._tool_names(req), req.forces_tool_call, _call_id, _named(req))
                       for _ in range(req.n)]
        try:
            for i in range(req.n):
                yield event([ChatChunkChoice(index=i, delta={"role": "assistant", "content": ""})])
            async for i, out in group.outputs():
                lp = ChatChoiceLogprobs(content=self._logprobs(req, out.logprobs)) if req.logprobs else None
                text = replies[i].feed(out.new_text) if replies else out.new_text
                if kept is not None:
                    kept[i].append(out.new_text)
                if out.finished:
                    generated += out.num_generated_tokens
                    cached = max(cached, out.num_cached_tokens)
                    reason = reasons[i] = out.finish_reason.value
                    delta = {"content": text} if text else {}
                    if replies:
                        reply = replies[i].finish()
                        if reply.content:
                            delta["content"] = text + reply.content
                        if reply.calls:
                            delta["tool_calls"] = [{"index": k, **c.model_dump()} for k, c in enumerate(reply.calls)]
                            reason = "tool_calls" if reason != "length" else reason
                    last = event([ChatChunkChoice(index=i, delta=delta, logprobs=lp, finish_reason=reason)])
                    if held is None:
                        yield last
                        continue
                    for e in await held[i].finish(last, out.new_text):
                        yield e
                    if held[i].blocked:
                        yield content_filter(i)
                else:
                    chunk = None
                    if text or (lp and lp.content):
                        chunk = event([ChatChunkChoice(index=i, delta={"content": text}, logprobs=lp)])
                    if held is None:
                        if chunk is not None:
                            yield chunk
                        continue
                    for e in await held[i].push(chunk, out.new_text):
                        yield e
                    if held[i].blocked:  # the rest of this choice is not generated
                        group.stop(i)
                        generated += out.num_generated_tokens
                        yield content_filter(i)
            note_usage(n_prompt, generated)
            decision = None
            if held is not None:
                decision = "blocked: output" if any(h.blocked for h in held) else "allowed"
                note_guard(decision)
            if include_usage:
                yield event([], usage_info(n_prompt, generated, cached))
            if kept is not None:
                refusal = guard.policy.refusal if guard is not None else ""
                choices = [{"index": i, "message": {"role": "assistant", "content": refusal if held and held[i].blocked
                                                    else "".join(kept[i])},
                            "finish_reason": CONTENT_FILTER if held and held[i].blocked else reasons[i]}
                           for i in range(req.n)]
                completion = {"id": rid, "object": "chat.completion", "created": int(time.time()), "model": model,
                              "choices": choices, "usage": {"prompt_tokens": n_prompt, "completion_tokens": generated,
                                                            "total_tokens": n_prompt + generated}}
                await self._keep(req, completion, n_prompt, generated, decision, started)
        except Exception as e:  # noqa: BLE001 - the status line is sent: report it in the stream
            yield error_event(e)
        finally:
            group.close()
        yield "data: [DONE]\n\n"


def _named(req: ChatCompletionRequest) -> str | None:
    """The tool a forced call must name: a named tool_choice's, or the only tool's with "required"."""
    choice = req.effective_tool_choice
    if choice == "required" and len(req.tools or []) == 1:
        return req.tools[0].function.name
    return None if isinstance(choice, str) else choice.function.name


def _call_id() -> str:
    return random_id("call")


def _events(req: ChatCompletionRequest, rid: str, model: str, fingerprint: str | None = None):
    """The function that writes one SSE event of this response's chunks (`usage` only with include_usage)."""
    created = int(time.time())

    def event(choices: list[ChatChunkChoice], usage: UsageInfo | None = None) -> str:
        chunk = ChatCompletionChunk(id=rid, created=created, model=model, choices=choices, usage=usage,
                                    system_fingerprint=fingerprint).model_dump()
        if not req.include_usage:
            del chunk["usage"]
        return f"data: {json.dumps(chunk, ensure_ascii=False)}\n\n"

    return event
