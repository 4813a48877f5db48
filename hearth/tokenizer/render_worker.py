"""The chat-template render worker: a small child process that compiles and renders Jinja templates.

Run as a script (`python -I render_worker.py`, started by `hearth.tokenizer.sandbox`), it imports only the standard
library and jinja2: no torch, no hearth. A template comes from a model file, so it is untrusted. Jinja's sandbox stops
it from running code, but not from looping 10^10 times or building a 10 GB string, and a Python thread cannot be
stopped. A process can: the parent kills this one when a render outlives its budget. Inside, each render is bounded
as well, so a clean error (and a warm worker) comes back in the common case:

- time: an interval timer raises in the render (between bytecodes); RLIMIT_CPU kills the process if one C call
  (10**10**8) holds on past it, even when no parent is left to do so;
- memory: RLIMIT_AS caps the address space, so a huge string or list fails its allocation with MemoryError;
- output: the text is counted chunk by chunk as `Template.generate` yields it.

Protocol on stdin/stdout: frames of an 8-byte big-endian length and ASCII JSON. The worker first sends
{"ready": true}; then for each request {"source", "vars", "seconds", "max_chars", "memory", "check"} it answers
{"text": ...} or {"error": KIND, "message": ...}; KIND is syntax, raised, unsafe, failed, time, memory or output.
"""

from __future__ import annotations

import json
import math
import os
import resource
import signal
import struct
import sys
from datetime import datetime
from typing import Any

import jinja2
from jinja2.ext import Extension, loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment

HEADER = struct.Struct(">Q")
CACHED_TEMPLATES = 8  # a server renders one template; tests and tools a few


class _Raised(Exception):
    """raise_exception() from the template: the template's own message for the caller."""


class _OverTime(BaseException):
    """Not an Exception, so nothing in Jinja or the template's filters can catch it."""


class _OverOutput(BaseException):
    pass


def _raise(message: str):
    raise _Raised(str(message))


def _tojson(x: Any, ensure_ascii: bool = False, indent: int | None = None, separators=None, sort_keys: bool = False) -> str:
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


class _Generation(Extension):
    """`{% generation %}...{% endgeneration %}` (transformers marks assistant text with it): renders the body."""

    tags = {"generation"}

    def parse(self, parser):
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return jinja2.nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(lineno)

    def _body(self, caller):
        return caller()


def environment() -> ImmutableSandboxedEnvironment:
    """transformers' apply_chat_template environment: same settings, filters and globals."""
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[_Generation, loopcontrols])
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise
    env.globals["strftime_now"] = _strftime_now
    return env


def _on_alarm(signum, frame):
    raise _OverTime()


def _address_space() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[0]) * resource.getpagesize()


def _cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


class _Limits:
    """The render's limits, set on entry and lifted on exit (so replying and reading the next request never fail)."""

    def __init__(self, seconds: float, memory: int):
        self.seconds, self.memory = seconds, memory

    def __enter__(self):
        # Margin over the timer: the timer gives the clean error; this is for a C call that will not return.
        _lower(resource.RLIMIT_CPU, math.ceil(_cpu_seconds() + self.seconds + 2))
        _lower(resource.RLIMIT_AS, _address_space() + self.memory)
        signal.setitimer(signal.ITIMER_REAL, self.seconds)

    def __exit__(self, *exc):
        lift_limits()


_ORIGINAL = {r: resource.getrlimit(r) for r in (resource.RLIMIT_AS, resource.RLIMIT_CPU)}


def _lower(which: int, soft: int) -> None:
    hard = _ORIGINAL[which][1]
    resource.setrlimit(which, (soft if hard == resource.RLIM_INFINITY else min(soft, hard), hard))


def lift_limits() -> None:
    """Called again after each request: the one-shot timer may have fired inside a first call (then it raised)."""
    signal.setitimer(signal.ITIMER_REAL, 0)
    for which, limits in _ORIGINAL.items():
        resource.setrlimit(which, limits)


def _render(env, cache: dict, req: dict) -> dict:
    source = req["source"]
    template = cache.get(source)
    if template is None:
        try:
            template = env.from_string(source)  # the optimizer folds constants: compiling is bounded here too
        except jinja2.TemplateSyntaxError as e:
            return {"error": "syntax", "message": f"line {e.lineno}: {e.message}"}
        if len(cache) >= CACHED_TEMPLATES:
            cache.pop(next(iter(cache)))
        cache[source] = template
    if req.get("check"):
        return {"text": ""}
    limit, n, parts = req["max_chars"], 0, []
    for chunk in template.generate(**req["vars"]):
        n += len(chunk)
        if n > limit:
            raise _OverOutput()
        parts.append(chunk)
    return {"text": "".join(parts)}


def handle(env, cache: dict, req: dict) -> dict:
    try:
        with _Limits(req["seconds"], req["memory"]):
            return _render(env, cache, req)
    except _OverTime:
        return {"error": "time", "message": ""}
    except _OverOutput:
        return {"error": "output", "message": ""}
    except MemoryError:
        return {"error": "memory", "message": ""}
    except _Raised as e:
        return {"error": "raised", "message": str(e)}
    except jinja2.exceptions.SecurityError as e:
        return {"error": "unsafe", "message": str(e)}
    except Exception as e:  # noqa: BLE001 - any failure of the template is reported to the caller as one line
        return {"error": "failed", "message": f"{type(e).__name__}: {e}"}


def _read_exact(f, n: int) -> bytes | None:
    data = f.read(n)
    return data if len(data) == n else None


def main() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle; we end when stdin closes
    signal.signal(signal.SIGALRM, _on_alarm)
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # a render killed by RLIMIT_CPU leaves no core file
    out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # anything printed goes to stderr, never into the protocol
    inp = sys.stdin.buffer
    env, cache = environment(), {}

    def send(obj: dict) -> None:
        body = json.dumps(obj).encode("ascii")
        out.write(HEADER.pack(len(body)) + body)
        out.flush()

    send({"ready": True})
    while True:
        head = _read_exact(inp, HEADER.size)
        if head is None:
            return
        body = _read_exact(inp, HEADER.unpack(head)[0])
        if body is None:
            return
        reply = handle(env, cache, json.loads(body))
        try:
            lift_limits()
        except _OverTime:
            lift_limits()
        send(reply)


if __name__ == "__main__":
    main()
