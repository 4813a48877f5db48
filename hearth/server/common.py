"""What chat and completions serving share: engine request groups, sampling params, token text.

A `RequestGroup` runs the n engine requests behind one HTTP request (n choices, or several prompts)
and merges their outputs in arrival order. It is started before any response byte is sent, so a full
queue or an over-long prompt becomes a proper HTTP error, and closing it (client gone, error,
cancellation) aborts every request that has not finished, which frees its KV blocks.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TypeVar

from hearth.engine.request import EngineRequest, FinishReason, RequestOutput
from hearth.engine.sampling import SamplingParams
from hearth.engine.structured import Structure
from hearth.server.access_log import note_served
from hearth.server.errors import BadRequest, ModelNotFound, ServiceUnavailable
from hearth.server.metrics import Metrics
from hearth.server.protocol import SEED_MAX, SamplingFields
from hearth.tokenizer.limits import surely_too_long

if TYPE_CHECKING:
    from hearth.server.guarding import ServerGuard
    from hearth.server.records import ServerRecords

log = logging.getLogger("hearth")

LOGPROB_FLOOR = -9999.0  # JSON has no -inf; vLLM clamps the same way
# Threads that render chat templates and tokenize prompts. Their own pool, so a flood of slow prompts (each bounded by
# the render budget and the length check) waits here and never takes the threads other work runs in.
PROMPT_THREADS = 4

T = TypeVar("T")


def usage_info(n_prompt: int, generated: int, cached: int = 0):
    """The response's `usage`, with the prompt tokens the prefix cache supplied (OpenAI's cached_tokens)."""
    from hearth.server.protocol.common import PromptTokensDetails, UsageInfo

    return UsageInfo(prompt_tokens=n_prompt, completion_tokens=generated, total_tokens=n_prompt + generated,
                     prompt_tokens_details=PromptTokensDetails(cached_tokens=min(cached, n_prompt)))


def random_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


@dataclass
class ServerContext:
    """What every serving class needs: the engine, the names it answers to, metrics, token text."""

    engine: object
    model_names: tuple[str, ...]
    metrics: Metrics
    adapters: tuple[str, ...] = ()  # LoRA adapters served beside the model, requested by name as models
    guard: ServerGuard | None = None  # hearth serve --guard: input and output checks, /v1/moderations
    records: ServerRecords | None = None  # hearth serve --capture / the ledger / the audit log (records.py)
    lenient_names: bool = False  # a request naming another model is answered by this one (llama.cpp's way)
    _other_names: set[str] = field(default_factory=set)
    _token_str: dict[int, str] = field(default_factory=dict)
    _token_bytes: dict[int, list[int]] = field(default_factory=dict)
    _prompt_threads: ThreadPoolExecutor = field(
        default_factory=lambda: ThreadPoolExecutor(PROMPT_THREADS, thread_name_prefix="hearth-prompt"))

    async def off_loop(self, fn: Callable[..., T], *args) -> T:
        """`fn(*args)` in a prompt thread: rendering and tokenizing never block the event loop (/health, other
        streams). The tokenizer releases the GIL while it works (Tokenizer.encode), the template renders in its own
        process, so these threads slow nobody else down either."""
        return await asyncio.get_running_loop().run_in_executor(self._prompt_threads, fn, *args)

    def check_text_fits(self, text: str, what: str) -> None:
        """Refuse a text that cannot fit the context, from its length alone, before tokenizing it (a megabyte takes
        the tokenizer the better part of a second). The bound never refuses a text that fits: limits.py says why."""
        ctx = self.engine.max_model_len
        if surely_too_long(self.engine.tokenizer, text, ctx):
            chars = f"{what} are {len(text)} characters long in the chat template" if what == "messages" else \
                f"{what} is {len(text)} characters long"
            raise BadRequest(f"this model's maximum context length is {ctx} tokens, but the {chars}, more than {ctx} "
                             f"tokens can hold: shorten the {what}", param=what, code="context_length_exceeded")

    @property
    def model_name(self) -> str:
        return self.model_names[0]

    @functools.cached_property
    def fingerprint(self) -> str:
        """OpenAI's system_fingerprint: changes when hearth's version or the served model does."""
        import hashlib
        from importlib.metadata import version

        return "fp_" + hashlib.sha256(f"hearth {version('hearth')} {self.model_name}".encode()).hexdigest()[:10]

    def check_model(self, name: str | None, lenient: bool = True) -> str:
        """The name to answer with: the model's, or that of the adapter asked for (noted for the access log, the
        cost ledger and the audit log)."""
        if name is not None and name in self.adapters:
            note_served(name, name)
            return name
        guard = getattr(self.guard, "adapter", None) if self.guard is not None else None
        if name is not None and name == guard and name not in self.model_names:  # a classifier, never a chat model
            raise ModelNotFound(f"'{name}' is the guard: it classifies (POST /v1/moderations); ask for "
                                f"'{self.model_name}'", param="model")
        # one model served (no adapters to choose among): any name reaches it; with adapters a typo must not
        # silently get the base model
        if name is not None and name not in self.model_names and lenient and self.lenient_names and not self.adapters:
            if name not in self._other_names and len(self._other_names) < 1000:  # once per name (bounded)
                self._other_names.add(name)
                log.info("a request names the model %r; %s answers it (serve --strict-model-names: 404)",
                         name[:100], self.model_name)
        elif name is not None and name not in self.model_names:
            served = ", ".join(f"'{n}'" for n in (self.model_name, *self.adapters))
            raise ModelNotFound(f"the model '{name}' does not exist; this server serves {served}", param="model")
        note_served(self.model_name, None)
        return self.model_name

    def adapter(self, name: str | None) -> str | None:
        """The LoRA adapter a request's model names (None: the base model)."""
        return name if name is not None and name in self.adapters else None

    def token_str(self, token_id: int, as_id: bool = False) -> str:
        """A token's own text for logprob listings (special tokens included), as vLLM shows it;
        with `as_id`, vLLM's "token_id:123" form (return_tokens_as_token_ids)."""
        if as_id:
            return f"token_id:{token_id}"
        s = self._token_str.get(token_id)
        if s is None:
            tok = self.engine.tokenizer
            s = tok.decode([token_id], skip_special=False)
            if "\ufffd" in s:  # part of a character: OpenAI's "bytes:\xe6\x97" form, so such tokens stay distinct
                raw = tok.token_bytes(token_id)
                try:
                    raw.decode("utf-8")
                except UnicodeDecodeError:
                    s = "bytes:" + "".join(f"\\x{b:02x}" for b in raw)
            self._token_str[token_id] = s
        return s

    def token_bytes(self, token_id: int) -> list[int]:
        """The token's UTF-8 bytes (a part of a character for some), as OpenAI's logprob `bytes`."""
        b = self._token_bytes.get(token_id)
        if b is None:
            b = self._token_bytes[token_id] = list(self.engine.tokenizer.token_bytes(token_id))
        return b

    def check_token_ids(self, ids: list[int], param: str) -> None:
        vocab = self.engine.tokenizer.vocab_size
        for i, t in enumerate(ids):
            if not 0 <= t < vocab:
                raise BadRequest(f"{param}: token id {t} at position {i} is outside the vocabulary [0, {vocab})", param=param)

    def check_logit_bias(self, req: SamplingFields) -> None:
        vocab = self.engine.tokenizer.vocab_size
        for token, _ in req.logit_bias_pairs():
            if token >= vocab:
                raise BadRequest(f"logit_bias: token id {token} is outside the vocabulary [0, {vocab})", param="logit_bias")

    def check_fits(self, n_prompt: int, max_tokens: int | None, what: str) -> None:
        """max_tokens None: the caller asked for none (the rest of the context), so at least one must fit."""
        ctx = self.engine.max_model_len
        if n_prompt == 0:
            raise BadRequest(f"the {what} is empty: give at least one token of input", param=what)
        over = n_prompt + (max_tokens or 1) - ctx
        if over > 0:
            takes = "take" if what == "messages" else "takes"
            if max_tokens is None:
                msg = f"the {what} {takes} {n_prompt} tokens, leaving none to generate: shorten the {what}"
            else:
                msg = (f"the {what} {takes} {n_prompt} tokens and max_tokens is {max_tokens}: {over} tokens too many; "
                       f"shorten the {what} or lower max_tokens")
            raise BadRequest(f"this model's maximum context length is {ctx} tokens, but {msg}", param=what,
                             code="context_length_exceeded")


def logprob(x: float) -> float:
    return max(x, LOGPROB_FLOOR) if x == x else LOGPROB_FLOOR


def sampling_params(req: SamplingFields, max_tokens: int, index: int, structure: Structure | None = None) -> SamplingParams:
    """The engine's parameters for choice `index` (seeds differ per choice so n samples differ); `structure`: one the
    request's own fields do not say (a forced tool call's)."""
    seed = None if req.seed is None else (req.seed + index) % (SEED_MAX + 1)
    return SamplingParams(
        max_tokens=max_tokens,
        temperature=1.0 if req.temperature is None else req.temperature,
        top_p=1.0 if req.top_p is None else req.top_p,
        top_k=max(req.top_k, 0),
        min_p=req.min_p,
        repetition_penalty=req.repetition_penalty,
        presence_penalty=req.presence_penalty,
        frequency_penalty=req.frequency_penalty,
        seed=seed,
        stop=req.stop_strings(),
        ignore_eos=req.ignore_eos,
        structure=structure or req.structure(),
        logit_bias=req.logit_bias_pairs(),
    )


class RequestGroup:
    """n engine requests answered as one: started together, merged, aborted together."""

    def __init__(self, ctx: ServerContext, requests: list[EngineRequest]):
        self.ctx = ctx
        self.engine = ctx.engine
        self.requests = requests
        self.arrival = time.monotonic()
        self._queue: asyncio.Queue = asyncio.Queue()
        self._tasks: list[asyncio.Task] = []
        self._buffer: list[tuple[int, RequestOutput]] = []
        self._open = set(range(len(requests)))
        self._stopped: set[int] = set()
        self._last: dict[int, float] = {}

    async def start(self) -> None:
        """Submit every request and wait until each has produced its first output (or failed)."""
        cap = self.engine.max_group
        if len(self.requests) > cap:
            raise BadRequest(f"this request needs {len(self.requests)} sequences (prompts x n) but the server takes at "
                             f"most {cap} at once (--max-num-seqs + --max-waiting); send fewer prompts or a smaller n",
                             param="n")
        for i, req in enumerate(self.requests):
            self._tasks.append(asyncio.create_task(self._pump(i, req)))
        seen: set[int] = set()
        try:
            while len(seen) < len(self.requests):
                i, item = await self._queue.get()
                if isinstance(item, BaseException):
                    raise item
                seen.add(i)
                self._buffer.append((i, item))
        except BaseException:
            self.close()
            raise

    async def _pump(self, i: int, req: EngineRequest) -> None:
        try:
            async for out in self.engine.generate(req):
                self._queue.put_nowait((i, out))
            self._queue.put_nowait((i, None))
        except Exception as e:  # noqa: BLE001 - handed to the consumer, which raises it
            self._queue.put_nowait((i, e))

    async def outputs(self) -> AsyncIterator[tuple[int, RequestOutput]]:
        """(index, output) until every request has finished. An aborted request raises 503."""
        try:
            while self._open:
                i, item = self._buffer.pop(0) if self._buffer else await self._queue.get()
                if i in self._stopped:
                    continue  # outputs queued before `stop`
                if isinstance(item, BaseException):
                    raise item
                if item is None:
                    if i in self._open:  # the stream ended without a finished output
                        raise ServiceUnavailable("the engine stopped this request (shutting down); retry later")
                    continue
                self._observe(i, item)
                yield i, item
        finally:
            self.close()

    def _observe(self, i: int, out: RequestOutput) -> None:
        now = time.monotonic()
        m = self.ctx.metrics
        if out.new_token_ids:
            last = self._last.get(i)
            if last is None:
                m.ttft.observe(now - self.arrival)
            else:
                gap = (now - last) / len(out.new_token_ids)
                for _ in out.new_token_ids:
                    m.itl.observe(gap)
            self._last[i] = now
        if out.finished:
            self._open.discard(i)
            if out.finish_reason == FinishReason.ABORT:
                raise ServiceUnavailable("the engine stopped this request (shutting down); retry later")
            m.prompt_tokens.inc(out.num_prompt_tokens)
            m.generation_tokens.inc(out.num_generated_tokens)
            m.e2e.observe(now - self.arrival)

    def stop(self, i: int) -> None:
        """Abort request i alone (its answer was flagged); `outputs` goes on with the others."""
        if i in self._open:
            self._tasks[i].cancel()
            self.engine.abort(self.requests[i].request_id)
            self._open.discard(i)
            self._stopped.add(i)

    def close(self) -> None:
        """Abort what has not finished. Synchronous, so it also runs inside a cancelled task."""
        for t in self._tasks:
            t.cancel()
        for i in sorted(self._open):
            self.engine.abort(self.requests[i].request_id)
        self._open.clear()


class EventStream:
    """SSE lines for a started RequestGroup. `aclose()` aborts the group even if iteration never began
    (an async generator closed before its first step skips its `finally`)."""

    def __init__(self, group: RequestGroup, events: AsyncIterator[str]):
        self.group = group
        self.events = events

    def __aiter__(self) -> AsyncIterator[str]:
        return self.events

    async def aclose(self) -> None:
        self.group.close()
        await self.events.aclose()
