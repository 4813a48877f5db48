"""A child Python process spoken to in length-prefixed JSON frames under a deadline: the client side that the grammar
compiler's pool (hearth/engine/grammar_pool.py) and the chat template's pool (hearth/tokenizer/sandbox.py) share.

The child is a stdlib-only script run as `python -I script` (no user site, no PYTHON* variables, not the current
directory on sys.path), which answers {"ready": true} once started and then one reply per request. A frame is the
child's `header` (a struct holding the body's length) followed by a JSON body; requests are written as ASCII JSON, so
lone surrogates survive the trip. Pipes are non-blocking and every read and write waits in a selector until a
deadline, so a child that stops answering costs its caller at most the time it was given: then TimeoutError, and the
caller kills the child (its state is unknown). A child that exits (a crash in native code, its memory cap) raises
WorkerGone. A `check` callable, called about every POLL_SECONDS while waiting, may raise to stop the wait early (a
client that went away).

A process forked from the owner (a server's worker) sees the object but not the child: it never kills or talks to it.
"""

from __future__ import annotations

import json
import os
import selectors
import struct
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

POLL_SECONDS = 0.05  # how often a wait with a `check` calls it


class WorkerGone(Exception):
    """The child died (a crash in native code, its memory cap) or did not start; the reply is lost."""


class WorkerProcess:
    """One child process, used by one thread at a time. `start` spawns it and waits for its ready frame."""

    def __init__(self, script: Path, header: struct.Struct, name: str):
        self.header, self.name = header, name
        self.owner = os.getpid()
        self.proc: subprocess.Popen | None = subprocess.Popen(
            [sys.executable, "-I", str(script)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL, bufsize=0)
        os.set_blocking(self.proc.stdin.fileno(), False)
        os.set_blocking(self.proc.stdout.fileno(), False)

    @classmethod
    def start(cls, script: Path, header: struct.Struct, name: str, deadline: float,
              check: Callable[[], None] | None = None) -> WorkerProcess:
        """A started child that has said it is ready; WorkerGone if it exits or answers anything else first,
        TimeoutError past `deadline`. On any failure the child is killed."""
        worker = cls(script, header, name)
        try:
            if worker.read(deadline, check) != {"ready": True}:
                raise WorkerGone(f"the {name} did not start")
        except BaseException:
            worker.kill()
            raise
        return worker

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.owner == os.getpid() and self.proc.poll() is None

    def kill(self) -> None:
        """Kill and reap the child (a forked copy of the owner leaves it alone)."""
        if self.proc is not None and self.owner == os.getpid():
            self.proc.kill()
            self.proc.wait()
            self.proc.stdin.close()
            self.proc.stdout.close()
        self.proc = None

    def call(self, request: dict, deadline: float, check: Callable[[], None] | None = None) -> dict:
        """Send `request`, return the reply; TimeoutError past `deadline`, WorkerGone if the child exits."""
        body = json.dumps(request).encode("ascii")
        self.write(self.header.pack(len(body)) + body, deadline, check)
        return self.read(deadline, check)

    def write(self, data: bytes, deadline: float, check: Callable[[], None] | None = None) -> None:
        view = memoryview(data)
        with selectors.DefaultSelector() as sel:
            sel.register(self.proc.stdin, selectors.EVENT_WRITE)
            while view:
                _wait(sel, deadline, check)
                try:
                    view = view[os.write(self.proc.stdin.fileno(), view):]
                except BlockingIOError:
                    continue
                except BrokenPipeError:
                    raise WorkerGone(f"the {self.name} exited") from None

    def read(self, deadline: float, check: Callable[[], None] | None = None) -> dict:
        buf, need = bytearray(), self.header.size
        with selectors.DefaultSelector() as sel:
            sel.register(self.proc.stdout, selectors.EVENT_READ)
            while len(buf) < need:
                _wait(sel, deadline, check)
                try:
                    chunk = os.read(self.proc.stdout.fileno(), max(need - len(buf), 1 << 16))
                except BlockingIOError:
                    continue
                if not chunk:
                    raise WorkerGone(f"the {self.name} exited")
                buf += chunk
                if need == self.header.size and len(buf) >= self.header.size:
                    need = self.header.size + self.header.unpack_from(buf)[0]
        return json.loads(bytes(buf[self.header.size:need]))


def _wait(sel: selectors.BaseSelector, deadline: float, check: Callable[[], None] | None) -> None:
    """Until the registered pipe is ready; `check()` between polls (it may raise); TimeoutError at the deadline."""
    while True:
        left = max(0.0, deadline - time.monotonic())
        if sel.select(left if check is None else min(POLL_SECONDS, left)):
            return
        if check is not None:
            check()
        if time.monotonic() >= deadline:
            raise TimeoutError
