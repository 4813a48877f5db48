"""The grammar worker: a small child process that compiles structured-output specs with llguidance, to prove them safe.

Run as a script (`python -I grammar_worker.py`, started by `hearth.engine.grammar_pool`), it imports only the
standard library and llguidance: no torch, no hearth. A JSON schema or grammar comes from a request, so it is
untrusted, and llguidance's native compiler recurses once per level of nesting: a chain of ~930 object-valued `$ref`
links, or ~2,700 Lark / ~3,500 GBNF rules each naming the next, overflows an 8 MiB stack and the process dies of
SIGSEGV (measured on llguidance 1.9.1). Compile time is unbounded too (a few hundred integer ranges take seconds). A
native call cannot be interrupted, but a process can be killed: the parent kills this one when a compile outlives its
budget, and a crash here costs only this process.

What it runs is exactly what the server will run next: the spec turned into an llguidance grammar, an `LLMatcher`
built against the model's vocabulary and its first token mask computed. So the worker needs the tokenizer: the crash
happens in grammar construction alone (`validate_grammar` without a tokenizer dies too), but the time and memory a
compile costs are mostly the lexer built over the vocabulary, and the budget must bound the same work the server
repeats. The compile runs on a thread with an 8 MiB stack; the server builds its copy on a 64 MiB one (see
grammar_pool.py), so a spec that fits here has an 8x margin there.

Protocol on stdin/stdout: frames of an 8-byte big-endian length and ASCII JSON. The worker first sends
{"ready": true}; then {"tokenizer": JSON, "eos": [ids]} answered {"ok": true} or {"error": "tokenizer", "message"},
then for each compile {"kind", "spec", "seconds", "memory"} answered {"grammar": TEXT} or {"error": "invalid",
"message"}. Over its memory the process dies (Rust aborts on a failed allocation); over its time the parent kills it.
"""

from __future__ import annotations

import json
import math
import os
import resource
import signal
import struct
import sys
import threading

HEADER = struct.Struct(">Q")
COMPILE_STACK_BYTES = 8 << 20  # the stack the proof is made on; the server's compile thread has 8x this

# JSON output may put whitespace between tokens, but only a little: a small model left free to emit whitespace can
# fill its whole budget with newlines (llama.cpp's schema grammars bound it the same way).
JSON_OPTIONS = {"whitespace_pattern": r"[\x20\x0A\x0D\x09]{0,16}"}


class InvalidSpec(ValueError):
    """The spec is not a grammar llguidance can use (a user error, with llguidance's message)."""


def to_grammar(kind: str, spec: str) -> str:
    """The llguidance grammar for a hearth Structure's (kind, spec); InvalidSpec for one that cannot be converted."""
    import llguidance

    try:
        if kind == "json":
            return llguidance.LLMatcher.grammar_from_json_schema(spec, overrides=JSON_OPTIONS)
        if kind == "regex":
            return llguidance.LLMatcher.grammar_from_regex(spec)
        if kind == "choice":
            return llguidance.grammar_from("choice", spec)
        return llguidance.grammar_from("grammar", spec)  # GBNF (llama.cpp) or Lark
    except (ValueError, RecursionError) as e:  # serde's "recursion limit exceeded", GBNF that does not convert
        raise InvalidSpec(str(e) or type(e).__name__) from None


def build_matcher(ll_tokenizer, grammar: str):
    """An LLMatcher for `grammar` with its first mask computed (the lexer states it builds are shared by every
    deep_copy); InvalidSpec with llguidance's message for a grammar it refuses."""
    import llguidance

    matcher = llguidance.LLMatcher(ll_tokenizer, grammar, log_level=0)
    if not matcher.is_error():
        matcher.compute_logit_bias()
    if matcher.is_error():
        raise InvalidSpec(matcher.get_error())
    return matcher


_ORIGINAL = {r: resource.getrlimit(r) for r in (resource.RLIMIT_AS, resource.RLIMIT_CPU)}


def _lower(which: int, soft: int) -> None:
    hard = _ORIGINAL[which][1]
    resource.setrlimit(which, (soft if hard == resource.RLIM_INFINITY else min(soft, hard), hard))


def _lift() -> None:
    for which, limits in _ORIGINAL.items():
        resource.setrlimit(which, limits)


def _address_space() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[0]) * resource.getpagesize()


def _compile(ll_tokenizer, req: dict) -> dict:
    try:
        grammar = to_grammar(req["kind"], req["spec"])
        build_matcher(ll_tokenizer, grammar)
        return {"grammar": grammar}
    except InvalidSpec as e:
        return {"error": "invalid", "message": str(e)}


def _on_thread(fn, *args):
    """fn(*args) on a fresh thread with COMPILE_STACK_BYTES of stack (the main thread's depends on `ulimit -s`)."""
    box: list = []
    old = threading.stack_size(COMPILE_STACK_BYTES)
    try:
        t = threading.Thread(target=lambda: box.append(fn(*args)), daemon=True)
        t.start()
    finally:
        threading.stack_size(old)
    t.join()
    return box[0] if box else {"error": "invalid", "message": "the grammar compiler failed"}


def _read_exact(f, n: int) -> bytes | None:
    data = f.read(n)
    return data if len(data) == n else None


def main() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle; we end when stdin closes
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # a compile that crashes leaves no core file
    out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # anything printed goes to stderr, never into the protocol
    inp = sys.stdin.buffer
    import llguidance

    def send(obj: dict) -> None:
        body = json.dumps(obj).encode("ascii")
        out.write(HEADER.pack(len(body)) + body)
        out.flush()

    send({"ready": True})
    ll_tokenizer = None
    while True:
        head = _read_exact(inp, HEADER.size)
        body = head and _read_exact(inp, HEADER.unpack(head)[0])
        if not body:
            return
        req = json.loads(body)
        if "tokenizer" in req:
            try:
                ll_tokenizer = llguidance.LLTokenizer(req["tokenizer"], eos_token=req["eos"])
                send({"ok": True})
            except Exception as e:  # noqa: BLE001 - reported to the parent, which names the model
                send({"error": "tokenizer", "message": str(e)})
            continue
        if ll_tokenizer is None:
            send({"error": "invalid", "message": "no tokenizer was sent"})
            continue
        # Bounds that hold even with no parent left to kill us: CPU time (a margin over the parent's own deadline)
        # and address space (the lexer of a pathological grammar can grow by gigabytes; llguidance aborts the process
        # when an allocation fails, which the parent reports as too complex).
        cpu = resource.getrusage(resource.RUSAGE_SELF)
        used = cpu.ru_utime + cpu.ru_stime
        _lower(resource.RLIMIT_CPU, math.ceil(used + req["seconds"] + 5))
        _lower(resource.RLIMIT_AS, _address_space() + req["memory"])
        try:
            reply = _on_thread(_compile, ll_tokenizer, req)
        finally:
            _lift()
        send(reply)


if __name__ == "__main__":
    main()
