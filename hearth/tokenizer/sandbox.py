"""Chat templates rendered in worker processes, each render bounded in time, memory and output.

Why a process and not a deadline-checking sandbox: a Jinja sandbox can check a clock in its calls and loops, but
not inside one C call (`'x' * 10**10`, `10 ** 10 ** 8`, `s.center(10**9)`), and a Python thread cannot be stopped;
a process can be killed. So the bound is provable: the caller waits at most `seconds` + a grace and then kills the
worker (a new one starts on the next render), and the worker's own address space is capped (RLIMIT_AS). The worker
(`render_worker.py`) imports only jinja2, starts once and stays warm, so a normal render costs a pipe round trip
(well under a millisecond) on top of Jinja's own time.

`RenderPool.call` blocks its thread (never an event loop: the server calls it through `asyncio.to_thread`).
"""

from __future__ import annotations

import atexit
import queue
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from hearth.tokenizer.render_worker import HEADER
from hearth.workerproc import WorkerGone, WorkerProcess

WORKER = Path(__file__).with_name("render_worker.py")
STARTUP_SECONDS = 60.0  # starting Python and importing jinja2; not charged to a render (a busy machine is slow)
KILL_GRACE_SECONDS = 1.0  # past the budget, before the worker is killed (its own timer usually answers first)
DEFAULT_WORKERS = 2


@dataclass(frozen=True)
class RenderBudget:
    """What one render of a chat template may take. A normal chat template renders in well under a millisecond into
    a few KB; the output cap is far above any prompt a context window can hold (the caller checks that bound)."""

    seconds: float = 2.0
    max_output_chars: int = 8 << 20
    memory_bytes: int = 512 << 20  # address space the render may add to the worker's

    def __post_init__(self):
        if not self.seconds > 0 or self.max_output_chars < 1 or self.memory_bytes < (16 << 20):
            raise ValueError(f"a render budget needs seconds > 0, max_output_chars >= 1, memory_bytes >= 16 MiB: {self}")


class _Worker:
    """One worker process, started on first use and again after it was killed or died; used by one thread at a time
    (the pool hands it out)."""

    def __init__(self):
        self._child: WorkerProcess | None = None

    @property
    def proc(self) -> subprocess.Popen | None:  # the live child process, if any (its pid, for tests and diagnostics)
        return self._child.proc if self._child is not None else None

    def kill(self) -> None:
        if self._child is not None:
            self._child.kill()
        self._child = None

    def call(self, request: dict, seconds: float) -> dict:
        try:
            if self._child is None or not self._child.alive:  # not started, dead, or a forked copy's (left alone)
                self.kill()
                self._child = WorkerProcess.start(WORKER, HEADER, "template worker", time.monotonic() + STARTUP_SECONDS)
            deadline = time.monotonic() + seconds + KILL_GRACE_SECONDS
            return self._child.call(request, deadline)
        except BaseException:  # late, dead, or the caller interrupted: the worker's state is unknown, so it goes
            self.kill()
            raise


class RenderPool:
    """Up to `size` warm workers, shared by every thread; a caller waits for a free one."""

    def __init__(self, size: int = DEFAULT_WORKERS):
        self._workers = [_Worker() for _ in range(size)]
        self._idle: queue.LifoQueue[_Worker] = queue.LifoQueue()  # the warm one first: a second starts only if needed
        for w in self._workers:
            self._idle.put(w)

    def call(self, request: dict, budget: RenderBudget) -> dict:
        """The worker's reply to `request` (see render_worker.py), or {"error": "time"} when it had to be killed,
        {"error": "crashed"} when it died (a C-level failure, the memory cap hit outside Python's allocator)."""
        request = {**request, "seconds": budget.seconds, "max_chars": budget.max_output_chars,
                   "memory": budget.memory_bytes}
        worker = self._idle.get()
        try:
            return worker.call(request, budget.seconds)
        except TimeoutError:
            return {"error": "time", "message": ""}
        except WorkerGone:
            return {"error": "crashed", "message": ""}
        finally:
            self._idle.put(worker)

    def close(self) -> None:
        for w in self._workers:
            w.kill()


_default: RenderPool | None = None
_default_lock = threading.Lock()


def default_pool() -> RenderPool:
    """The process's shared pool, started on first use and closed at exit."""
    global _default
    with _default_lock:
        if _default is None:
            _default = RenderPool()
            atexit.register(_default.close)
        return _default
