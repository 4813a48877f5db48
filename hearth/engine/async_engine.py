"""Runs the engine step loop on a background thread and streams outputs to asyncio consumers.

The model work happens off the event loop, so the HTTP server stays responsive; requests and aborts
cross into the engine thread through a lock-protected inbox, outputs come back through
`loop.call_soon_threadsafe` into one asyncio.Queue per request.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass

from hearth.engine.llm_engine import EngineConfig, LLMEngine
from hearth.engine.request import EngineRequest, FinishReason, RequestOutput
from hearth.errors import HearthError

log = logging.getLogger("hearth.engine")


class QueueFullError(HearthError):
    """Too many requests are waiting; the client should retry later (HTTP 429)."""


class EngineDeadError(HearthError):
    """The engine is shut down or crashed (HTTP 503)."""


def _put(loop: asyncio.AbstractEventLoop, queue: asyncio.Queue, item) -> None:
    try:
        loop.call_soon_threadsafe(queue.put_nowait, item)
    except RuntimeError:  # the consumer's event loop is already closed: nobody is listening
        pass


def _raise_dead(_):
    raise EngineDeadError("the engine shut down")


def _settle(loop: asyncio.AbstractEventLoop, future: asyncio.Future, fn, arg) -> None:
    """Run fn(arg) here and hand its result (or its exception) to the future on its own loop."""
    try:
        result, error = fn(arg), None
    except Exception as e:  # noqa: BLE001 - the caller gets it
        result, error = None, e

    def done():
        if not future.done():
            future.set_exception(error) if error is not None else future.set_result(result)

    try:
        loop.call_soon_threadsafe(done)
    except RuntimeError:  # the caller's loop is closed
        pass


@dataclass
class EngineStats:
    running: int
    waiting: int
    kv_blocks_used: int
    kv_blocks_total: int
    prefix_cache_queries: int = 0  # prompt tokens looked up in the prefix cache
    prefix_cache_hits: int = 0  # of those, found (their KV reused)


class AsyncEngine:
    def __init__(self, lm, config: EngineConfig | None = None, model_name: str | None = None):
        self.engine = LLMEngine(lm, config)
        self.config = self.engine.config
        self.tokenizer = lm.tokenizer
        self.chat_template = lm.chat_template
        self.max_model_len = self.engine.max_model_len
        self.embedding_dim = lm.model.config.dim
        self.model_name = model_name or lm.checkpoint.config.name
        self.adapters = dict(self.config.adapters)  # LoRA adapters served beside the model: name -> directory
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._inbox: list[tuple[EngineRequest, object]] = []  # (request, its structured-output matcher or None)
        self._aborts: list[str] = []
        self._calls: list[tuple] = []  # (fn, loop, future): work for the model between engine steps
        self._queues: dict[str, tuple[asyncio.AbstractEventLoop, asyncio.Queue]] = {}
        self._thread: threading.Thread | None = None
        self._stop = False
        self.error: BaseException | None = None

    # -- lifecycle ----------------------------------------------------------------------------------
    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="hearth-engine", daemon=True)
            self._thread.start()

    def shutdown(self) -> None:
        self._stop = True
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and not self._stop

    def stats(self) -> EngineStats:
        e = self.engine
        with self._lock:
            pending = len(self._inbox)
        return EngineStats(e.num_running, e.num_waiting + pending, e.blocks.num_used, e.blocks.num_blocks,
                           e.blocks.queried_tokens, e.blocks.hit_tokens)

    # -- requests -----------------------------------------------------------------------------------
    @property
    def max_group(self) -> int:
        """The most requests one HTTP request may start (n choices x prompts): a batch plus a full queue."""
        return self.config.max_num_seqs + self.config.max_waiting

    async def generate(self, req: EngineRequest) -> AsyncIterator[RequestOutput]:
        """Stream outputs for one request. Closing the iterator early aborts the request."""
        if not self.alive:
            raise EngineDeadError("the engine is not running (shutting down or failed); retry later")
        if req.params.structure is None:
            constraint = self.engine.validate(req)  # bad requests fail here, before they are queued
        else:  # compiling a grammar can take a while: not on the event loop, and never on the engine thread
            cancel = threading.Event()
            try:
                constraint = await asyncio.to_thread(self.engine.validate, req, cancel)
            except asyncio.CancelledError:  # the client left: stop the compile (its worker is killed), queue nothing
                cancel.set()
                raise
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()
        with self._lock:
            # waiting beyond what the free batch slots will take at the next step (an idle server takes a
            # group of max_num_seqs at once: they are not "queued")
            free = max(self.config.max_num_seqs - self.engine.num_running, 0)
            if self.engine.num_waiting + len(self._inbox) >= self.config.max_waiting + free:
                raise QueueFullError(f"the server is busy ({self.config.max_waiting} requests waiting); retry later")
            if req.request_id in self._queues:
                raise HearthError(f"duplicate request id {req.request_id}")
            self._queues[req.request_id] = (loop, queue)
            self._inbox.append((req, constraint))
        self._wake.set()
        finished = False
        try:
            while True:
                out = await queue.get()
                if isinstance(out, EngineDeadError):
                    raise out
                if isinstance(out, BaseException):
                    raise EngineDeadError(f"the engine failed: {out}")
                finished = out.finished
                yield out
                if finished:
                    return
        finally:
            if not finished:
                self.abort(req.request_id)

    async def call(self, fn):
        """Run fn(lm) on the engine thread between two steps (the model is not shared across threads) and return its
        result: for work outside generation, such as embeddings."""
        if not self.alive:
            raise EngineDeadError("the engine is not running (shutting down or failed); retry later")
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        with self._lock:
            self._calls.append((fn, loop, future))
        self._wake.set()
        return await future

    def abort(self, request_id: str) -> None:
        with self._lock:
            self._queues.pop(request_id, None)
            self._inbox = [(r, c) for r, c in self._inbox if r.request_id != request_id]
            self._aborts.append(request_id)
        self._wake.set()

    # -- the engine thread --------------------------------------------------------------------------
    def _deliver(self, out) -> None:
        with self._lock:
            target = self._queues.get(out.request_id) if isinstance(out, RequestOutput) else None
            if isinstance(out, RequestOutput) and out.finished:
                self._queues.pop(out.request_id, None)
        if target is not None:
            _put(*target, out)

    def _loop(self) -> None:
        try:
            while not self._stop:
                with self._lock:
                    inbox, self._inbox = self._inbox, []
                    aborts, self._aborts = self._aborts, []
                    calls, self._calls = self._calls, []
                for fn, loop, future in calls:
                    _settle(loop, future, fn, self.engine.lm)
                for rid in aborts:
                    self.engine.abort(rid)
                for req, constraint in inbox:
                    try:
                        self.engine.add_request(req, constraint)
                    except HearthError as e:  # raced validation: report as a finished, aborted request
                        log.warning("request %s rejected: %s", req.request_id, e)
                        self._deliver(RequestOutput(req.request_id, [], "", True, FinishReason.ABORT))
                if not self.engine.has_work():
                    self._wake.wait(timeout=0.5)
                    self._wake.clear()
                    continue
                for out in self.engine.step():
                    self._deliver(out)
        except BaseException as e:  # a bug: fail every waiting client instead of hanging them
            log.exception("engine loop crashed")
            self.error = e
            with self._lock:
                queues, self._queues = list(self._queues.values()), {}
            for loop, queue in queues:
                _put(loop, queue, e)
        finally:
            for rid in list(self.engine.seqs):
                self.engine.abort(rid)
            # consumers still waiting must not hang: tell them the engine is gone
            with self._lock:
                queues, self._queues = list(self._queues.values()), {}
                calls, self._calls = self._calls, []
            for loop, queue in queues:
                _put(loop, queue, EngineDeadError("the engine shut down"))
            for _, loop, future in calls:
                _settle(loop, future, _raise_dead, None)
