"""Compiling structured-output specs safely: limits, a worker process that proves a spec safe, a cache.

`GrammarCompiler.compile(structure)` returns a `CompiledGrammar` whose `matcher()` is a fresh per-request matcher
(an llguidance `deep_copy`: microseconds, the lexer states already built are shared). On the way:

1. the cache: a spec compiled before (or refused before, but for a timeout) costs a dict lookup, keyed by (kind,
   spec) per tokenizer (an LRU of CACHE_ENTRIES); callers asking for a spec being compiled wait for that compile;
2. `grammar_limits.check`: sizes, depths, `$ref` chains and rule counts, in Python;
3. a worker process (grammar_worker.py) runs the very compile the server is about to run, on an 8 MiB stack, with
   `limits.compile_seconds` to finish: a crash kills only the worker, a timeout gets it killed, and either way the
   request gets "invalid ...: too complex" (a 400) and the next compile starts a fresh worker;
4. only then the server builds its own matcher, on a thread with a 64 MiB stack (8x the worker's: the compiler's
   recursion depth is set by the spec, so what fit in 8 MiB fits with room).

A caller may pass a `threading.Event`: setting it (the client went away) kills the worker at once and raises
`CompileCancelled`. Nothing here runs on the engine's step thread: the engine compiles in `validate`, which the server
runs through `asyncio.to_thread`, and hands the matcher over with the request.
"""

from __future__ import annotations

import atexit
import queue
import threading
import time
import weakref
from collections import OrderedDict
from pathlib import Path
from typing import Any

from hearth.engine import grammar_limits
from hearth.engine.grammar_limits import StructureLimits
from hearth.engine.grammar_worker import HEADER, InvalidSpec, build_matcher
from hearth.errors import HearthError
from hearth.workerproc import POLL_SECONDS, WorkerGone, WorkerProcess

WORKER = Path(__file__).with_name("grammar_worker.py")
STARTUP_SECONDS = 120.0  # Python, llguidance and the vocabulary (~1 s for 49K tokens); not charged to a compile
SERVER_STACK_BYTES = 64 << 20  # 8x grammar_worker.COMPILE_STACK_BYTES
CACHE_ENTRIES = 128  # compiled grammars kept per compiler (a server sees a few schemas again and again)
DEFAULT_WORKERS = 2

_WHAT = {"json": "JSON schema", "regex": "regular expression", "grammar": "grammar", "choice": "choice"}


class CompileCancelled(HearthError):
    """The caller gave up on the compile (the client disconnected); nothing was cached."""


class WorkerUnavailable(HearthError):
    """No worker could be started (not the spec's fault: never cached)."""


class CompileTimeout(HearthError):
    """The compile outlived its budget. Not cached: on a machine busy for a while a usable spec may be slow once, and
    caching would not slow an attacker down (an expensive spec is easy to vary). Callers already waiting for the same
    spec share the outcome, so n choices of one request are refused after one budget, not n."""


def first_line(message: str) -> str:
    """llguidance's message in one line: it puts the position first and the reason after ("at 1(8): invalid regex
    ...", "error: unclosed group")."""
    lines = [ln.strip() for ln in message.strip().splitlines() if ln.strip()]
    reason = next((ln for ln in lines if ln.startswith("error:")), None)
    head = lines[0] if lines else "unknown error"
    return f"{head} ({reason.removeprefix('error:').strip()})" if reason and reason != head else head


class CompiledGrammar:
    """A spec compiled against one vocabulary: `matcher()` gives each request its own fresh copy."""

    def __init__(self, template):
        self._template = template

    def matcher(self):
        return self._template.deep_copy()


class _Pending:
    """A compile under way: callers that want the same spec wait for its outcome instead of compiling it again."""

    def __init__(self):
        self.done = threading.Event()
        self.result: CompiledGrammar | HearthError | None = None  # None when it ended without one (cancelled)


def _unwrap(result: "CompiledGrammar | HearthError") -> CompiledGrammar:
    if isinstance(result, HearthError):
        raise HearthError(str(result))  # a new exception each time: one raised object is not shared across threads
    return result


def _start_worker(tokenizer_json: str, eos: list[int]) -> WorkerProcess:
    """A worker process with the tokenizer loaded (one thread at a time uses it)."""
    deadline = time.monotonic() + STARTUP_SECONDS
    worker: WorkerProcess | None = None
    try:
        worker = WorkerProcess.start(WORKER, HEADER, "grammar worker", deadline)
        reply = worker.call({"tokenizer": tokenizer_json, "eos": eos}, deadline)
        if reply.get("error"):
            raise HearthError(f"structured output is not available for this tokenizer ({first_line(reply['message'])})")
        return worker
    except BaseException as e:
        if worker is not None:
            worker.kill()
        if isinstance(e, (WorkerGone, TimeoutError)):
            raise WorkerUnavailable("structured output is unavailable: the grammar worker process did not start") from None
        raise


def _until(cancel: threading.Event | None):
    """The wait check that ends a compile when `cancel` is set."""
    if cancel is None:
        return None

    def check() -> None:
        if cancel.is_set():
            raise CompileCancelled("the compile was cancelled")
    return check


def _on_big_stack(fn, *args):
    """fn(*args) on a fresh thread with SERVER_STACK_BYTES of stack; its exception is re-raised here."""
    box: dict = {}

    def run():
        try:
            box["value"] = fn(*args)
        except BaseException as e:  # noqa: BLE001 - handed to the caller
            box["error"] = e

    with _STACK_LOCK:  # threading.stack_size is process-wide: set it only around this thread's start
        old = threading.stack_size(SERVER_STACK_BYTES)
        try:
            t = threading.Thread(target=run, name="hearth-grammar", daemon=True)
            t.start()
        finally:
            threading.stack_size(old)
    t.join()
    if "error" in box:
        raise box["error"]
    return box["value"]


_LL_TOKENIZERS: "weakref.WeakKeyDictionary[Any, Any]" = weakref.WeakKeyDictionary()
_LL_LOCK = threading.Lock()


def ll_tokenizer(tokenizer):
    """llguidance's view of a hearth Tokenizer (built once per tokenizer: ~0.7 s for a 49K vocabulary). It reads the
    same `tokenizers` JSON hearth encodes with, so both agree on every token's bytes and on special tokens."""
    import llguidance

    with _LL_LOCK:
        ll = _LL_TOKENIZERS.get(tokenizer)
        if ll is None:
            if not tokenizer.eos_ids:
                raise HearthError("structured output needs a model whose tokenizer has an end-of-sequence token")
            try:
                ll = llguidance.LLTokenizer(tokenizer.backend.to_str(), eos_token=list(tokenizer.eos_ids))
            except Exception as e:  # a vocabulary llguidance cannot read
                raise HearthError(f"structured output is not available for this tokenizer ({first_line(str(e))})") from None
            _LL_TOKENIZERS[tokenizer] = ll
        return ll


_STACK_LOCK = threading.Lock()


class GrammarCompiler:
    """Compiles specs for one tokenizer within `limits`, with up to `workers` compiles at a time in worker processes.
    Thread-safe; blocking (call it from a worker thread, never an event loop or the engine's step thread)."""

    def __init__(self, tokenizer, limits: StructureLimits | None = None, workers: int = DEFAULT_WORKERS):
        if not tokenizer.eos_ids:
            raise HearthError("structured output needs a model whose tokenizer has an end-of-sequence token")
        # weakly: the process-wide registry below is keyed by the tokenizer, and a value that held it would keep it
        self._tokenizer = weakref.ref(tokenizer)
        self.limits = limits or StructureLimits()
        self._ll_tokenizer = ll_tokenizer
        self._idle: queue.LifoQueue[WorkerProcess | None] = queue.LifoQueue()  # the warm one first; None: not started
        for _ in range(workers):
            self._idle.put(None)
        self._live: set[WorkerProcess] = set()
        self._lock = threading.Lock()
        self._cache: OrderedDict[tuple[str, str], CompiledGrammar | HearthError] = OrderedDict()
        self._pending: dict[tuple[str, str], _Pending] = {}  # compiles under way: later callers wait
        self.compiles = 0  # specs compiled (cache misses that got as far as the worker): for tests and metrics
        self._finalizer = weakref.finalize(self, _kill_all, self._live)

    def compile(self, structure, cancel: threading.Event | None = None) -> CompiledGrammar:
        """The compiled grammar for `structure` (a hearth Structure); HearthError naming the problem for a spec that is
        invalid or too complex; CompileCancelled when `cancel` is set before it is done."""
        key = (structure.kind, structure.spec)
        while True:
            with self._lock:
                hit = self._cache.get(key)
                if hit is not None:
                    self._cache.move_to_end(key)
                    return _unwrap(hit)
                pending = self._pending.get(key)
                if pending is None:
                    self._pending[key] = mine = _Pending()
                    break
            while not pending.done.wait(POLL_SECONDS):  # the same spec is being compiled (n choices of one request)
                if cancel is not None and cancel.is_set():
                    raise CompileCancelled("the compile was cancelled")
            if pending.result is not None:  # its outcome, even one not cached (a timeout); else (cancelled) try again
                return _unwrap(pending.result)
        result: CompiledGrammar | HearthError | None = None
        try:
            result = self._compile(structure, cancel)
        except (CompileCancelled, WorkerUnavailable):
            raise  # no outcome: a caller waiting for the same spec compiles it itself
        except HearthError as e:
            result = e
        finally:
            with self._lock:
                # refused specs (invalid, over a limit, crashing the compiler) are remembered: again costs nothing;
                # cached before the waiters wake, so a caller arriving after them finds it
                if result is not None and not isinstance(result, CompileTimeout):
                    self._cache[key] = result
                    while len(self._cache) > CACHE_ENTRIES:
                        self._cache.popitem(last=False)
                self._pending.pop(key, None)
            mine.result = result
            mine.done.set()
        return _unwrap(result)

    def _compile(self, structure, cancel: threading.Event | None) -> CompiledGrammar:
        what = _WHAT[structure.kind]
        grammar_limits.check(structure.kind, structure.spec, self.limits)
        self.compiles += 1
        reply = self._in_worker({"kind": structure.kind, "spec": structure.spec,
                                 "seconds": self.limits.compile_seconds, "memory": self.limits.memory_bytes}, cancel)
        if reply is None:
            raise CompileTimeout(f"invalid {what}: too complex: compiling it took over {self.limits.compile_seconds:g} s")
        if reply == "crashed":
            raise grammar_limits.too_complex(what, "the grammar compiler failed on it (out of stack or memory)")
        if reply.get("error"):
            raise HearthError(f"invalid {what}: {first_line(reply['message'])}")
        try:  # proven safe in the worker: the same work here, on a stack 8x as deep
            return CompiledGrammar(_on_big_stack(build_matcher, self._ll_tokenizer(self._live_tokenizer()), reply["grammar"]))
        except InvalidSpec as e:
            raise HearthError(f"invalid {what}: {first_line(str(e))}") from None

    def _in_worker(self, request: dict, cancel: threading.Event | None) -> dict | str | None:
        """The worker's reply; None past the time budget, "crashed" when the worker died on it."""
        worker = self._take(cancel)
        try:
            if worker is not None and not worker.alive:  # died while idle (killed from outside)
                worker = self._discard(worker)
            if worker is None:
                worker = self._start()
            # no grace past the budget: a native compile cannot stop itself, so only the kill ends it
            deadline = time.monotonic() + self.limits.compile_seconds
            return worker.call(request, deadline, _until(cancel))
        except TimeoutError:
            worker = self._discard(worker)
            return None
        except WorkerGone:
            worker = self._discard(worker)
            return "crashed"
        except BaseException:  # cancelled or interrupted: the worker's state is unknown, so it goes
            worker = self._discard(worker)
            raise
        finally:
            self._idle.put(worker)

    def _take(self, cancel: threading.Event | None) -> WorkerProcess | None:
        while True:
            try:
                return self._idle.get(timeout=POLL_SECONDS)
            except queue.Empty:
                if cancel is not None and cancel.is_set():
                    raise CompileCancelled("the compile was cancelled") from None

    def _live_tokenizer(self):
        tokenizer = self._tokenizer()
        if tokenizer is None:
            raise WorkerUnavailable("the model's tokenizer is gone")
        return tokenizer

    def _start(self) -> WorkerProcess:
        tokenizer = self._live_tokenizer()
        worker = _start_worker(tokenizer.backend.to_str(), list(tokenizer.eos_ids))
        with self._lock:
            self._live.add(worker)
        return worker

    def _discard(self, worker: WorkerProcess | None) -> None:
        if worker is not None:
            worker.kill()
            with self._lock:
                self._live.discard(worker)
        return None

    def close(self) -> None:
        """Stop the worker processes (a later compile starts new ones)."""
        with self._lock:
            live = list(self._live)
            self._live.clear()
        for w in live:
            w.kill()


def _kill_all(live: set) -> None:
    for w in list(live):
        w.kill()


_COMPILERS: "weakref.WeakKeyDictionary[object, dict[StructureLimits, GrammarCompiler]]" = weakref.WeakKeyDictionary()
_COMPILERS_LOCK = threading.Lock()


def compiler_for(tokenizer, limits: StructureLimits | None = None) -> GrammarCompiler:
    """The process's compiler for this tokenizer and limits (one worker pool and one cache each)."""
    limits = limits or StructureLimits()
    with _COMPILERS_LOCK:
        per = _COMPILERS.setdefault(tokenizer, {})
        if limits not in per:
            per[limits] = GrammarCompiler(tokenizer, limits)
        return per[limits]


@atexit.register
def _close_all() -> None:
    for per in list(_COMPILERS.values()):
        for c in per.values():
            c.close()
