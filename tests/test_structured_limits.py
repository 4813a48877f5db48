"""Hostile structured-output specs (issue 14, item 1): limits before any native compile, a worker process that a
crash or a timeout cannot take the server down with, a cache, cancellation. Each attack here killed the server
(SIGSEGV in llguidance's compiler) or gave a 500 before; now it is a 400 and the server keeps answering.

Tiny random-weight model and tokenizer (tests/store_kit.py): no download, fast."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import threading
import time

import httpx
import pytest

from hearth.engine.grammar_limits import StructureLimits, ref_depths
from hearth.engine.grammar_pool import CompileCancelled, GrammarCompiler
from hearth.engine.structured import Structure
from hearth.errors import HearthError
from serve_kit import ServerProcess
from store_kit import _tiny_parts, one_line_error, run_main, write_tiny_gguf

pytestmark = pytest.mark.timeout(180)


# -- the attacks ------------------------------------------------------------------------------------------------------
def ref_chain(n: int) -> dict:
    """n object-valued $ref links (~75 bytes each): llguidance 1.9.1 died of SIGSEGV past ~930 on an 8 MiB stack."""
    defs = {f"d{i}": {"type": "object", "properties": {"a": {"$ref": f"#/$defs/d{i + 1}"}}} for i in range(n)}
    defs[f"d{n}"] = {"type": "string"}
    return {"$defs": defs, "$ref": "#/$defs/d0"}


def nested(levels: int) -> dict:
    schema: dict = {"type": "string"}
    for _ in range(levels):
        schema = {"type": "object", "properties": {"a": schema}}
    return schema


def nested_text(levels: int) -> str:  # built as text: json.dumps of the dict would itself recurse too deeply
    return '{"type":"object","properties":{"a":' * levels + '{"type":"string"}' + "}}" * levels


def gbnf_chain(n: int) -> str:  # crashed past ~3,500 rules
    return "root ::= r0\n" + "".join(f"r{i} ::= r{i + 1}\n" for i in range(n)) + f'r{n} ::= "x"\n'


def lark_chain(n: int) -> str:  # crashed past ~2,700 rules
    return "start: r0\n" + "".join(f"r{i}: r{i + 1}\n" for i in range(n)) + f'r{n}: "x"\n'


def lark_embedding(schema: dict) -> str:
    """One Lark rule holding a JSON schema (llguidance's %json): the rule count and size pass the limits, so only the
    worker stands between this and a crash."""
    return "start: %json " + json.dumps(schema)


def slow_schema(n: int = 5000) -> str:
    """An object of n optional properties: llguidance 1.9.1's compile of it grows with the square of n, and no fuel
    limit stops it early (5,000 take ~1.4 s on a quiet 2-core machine, in 59 KB, within every limit: a margin of 4x
    over the 0.3 s budget these tests set). Integer ranges, used before, were capped by the lexer's fuel (1,000,000)
    at ~0.3 s, which raced that budget."""
    return json.dumps({"type": "object", "properties": {f"{i}": {} for i in range(n)}})


@pytest.fixture(scope="module")
def tok():
    return _tiny_parts()[2]


# -- limits: refused in Python, before any compile ----------------------------------------------------------------------
@pytest.mark.parametrize("structure, message", [
    (lambda: Structure.json_schema(ref_chain(1000)), r"^invalid JSON schema: too complex: a \$ref chain of 1001 links"),
    (lambda: Structure.json_schema(nested(40)), r"^invalid JSON schema: too complex: nested 81 levels deep"),
    (lambda: Structure("grammar", gbnf_chain(4000)), r"^invalid grammar: too complex: 4002 rules; the limit is 1000"),
    (lambda: Structure("grammar", lark_chain(3000)), r"^invalid grammar: too complex: 3002 rules"),
    (lambda: Structure("regex", "a" * 20000), r"^invalid regular expression: too complex: 20000 bytes"),
    (lambda: Structure.json_schema({"type": "string", "pattern": "a" * 20000}), r"too complex: a pattern of 20000"),
    (lambda: Structure.choice(["x" * 1000] * 200), r"^invalid choice: too complex: \d+ bytes; the limit is 131072"),
])
def test_limits_refuse_before_any_compile(tok, structure, message):
    compiler = GrammarCompiler(tok)
    with pytest.raises(HearthError, match=message) as e:
        compiler.compile(structure())
    assert "\n" not in str(e.value)
    assert compiler.compiles == 0 and not compiler._live  # no worker was asked, none started


def test_schema_text_nested_too_deeply_for_python_is_refused_when_given():
    """900 levels (the issue's 500): the text is measured before json.loads (which recursed), a dict before json.dumps."""
    with pytest.raises(HearthError, match=r"^invalid JSON schema: too complex: JSON nested 1801 levels deep"):
        Structure.json_schema(nested_text(900))
    deep = json.loads(nested_text(300))
    with pytest.raises(HearthError, match=r"^invalid JSON schema: too complex: nested over 128 levels"):
        Structure.json_schema(deep)


def test_ref_depths_follow_links_and_cut_recursion():
    assert ref_depths(json.loads(json.dumps(ref_chain(50)))) == (51, 101)
    tree = {"$defs": {"node": {"type": "object", "properties": {"kids": {"type": "array", "items": {"$ref": "#/$defs/node"}}}}},
            "$ref": "#/$defs/node"}
    assert ref_depths(tree) == (1, 4)  # a recursive schema is one link, not an endless chain
    assert ref_depths({"type": "object", "properties": {"$defs": {"$ref": "#"}}}) == (0, 3)  # a property named $defs


def test_limits_are_checked_when_made():
    for bad in (dict(max_depth=129), dict(max_rules=0), dict(compile_seconds=0), dict(memory_bytes=1 << 20)):
        with pytest.raises(ValueError, match="StructureLimits"):
            StructureLimits(**bad)


# -- the worker: what the limits let through cannot crash or stall the caller ------------------------------------------
def test_a_crash_in_the_compiler_kills_only_the_worker(tok):
    compiler = GrammarCompiler(tok)
    crash = Structure("grammar", lark_embedding(ref_chain(1000)))  # 1 rule, 75 KB: within every limit
    with pytest.raises(HearthError, match=r"^invalid grammar: too complex: the grammar compiler failed on it"):
        compiler.compile(crash)
    assert compiler.compiles == 1
    assert compiler.compile(Structure.json_schema({"type": "object"})).matcher() is not None  # a fresh worker
    with pytest.raises(HearthError, match="failed on it"):  # refused again from the cache: no second crash
        compiler.compile(crash)
    assert compiler.compiles == 2
    compiler.close()


def test_cache_avoids_recompiling(tok):
    compiler = GrammarCompiler(tok)
    person = Structure.json_schema({"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]})
    first = compiler.compile(person)
    t = time.perf_counter()
    again = compiler.compile(Structure.json_schema({"type": "object", "properties": {"name": {"type": "string"}},
                                                   "required": ["name"]}))
    hit = time.perf_counter() - t
    assert again is first and compiler.compiles == 1 and hit < 0.05
    a, b = first.matcher(), first.matcher()  # each request its own matcher: one's tokens do not move the other
    assert a.consume_token(tok.encode('{"', add_bos=False)[0]) and not b.get_error()
    assert a.compute_logit_bias() != b.compute_logit_bias()
    with pytest.raises(HearthError, match="unclosed group"):
        compiler.compile(Structure("regex", "(a"))
    with pytest.raises(HearthError, match="unclosed group"):
        compiler.compile(Structure("regex", "(a"))
    assert compiler.compiles == 2  # the refused spec was compiled once too
    compiler.close()


def test_the_same_spec_at_once_is_compiled_once(tok):
    """n choices of one request validate together: the others wait for the first compile instead of each taking a
    worker for it."""
    compiler = GrammarCompiler(tok, StructureLimits(compile_seconds=60))
    spec = Structure("json", slow_schema(1500))
    results = []
    threads = [threading.Thread(target=lambda: results.append(compiler.compile(spec))) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 4 and len(set(map(id, results))) == 1 and compiler.compiles == 1
    compiler.close()
    hasty = GrammarCompiler(tok, StructureLimits(compile_seconds=0.3))
    refused = []

    def slow_compile():
        try:
            hasty.compile(Structure("json", slow_schema()))
        except HearthError as e:
            refused.append(str(e))

    t = time.perf_counter()
    threads = [threading.Thread(target=slow_compile) for _ in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert refused == ["invalid JSON schema: too complex: compiling it took over 0.3 s"] * 4
    assert hasty.compiles == 1 and time.perf_counter() - t < 2  # one budget for all four, not four in a row
    hasty.close()


def test_over_the_time_budget_is_refused_without_blocking_another_compile(tok):
    compiler = GrammarCompiler(tok, StructureLimits(compile_seconds=0.3))
    warm = [threading.Thread(target=compiler.compile, args=(Structure("regex", r),)) for r in ("[0-9]+", "[a-z]+")]
    for w in warm:  # two at once: both workers start, as on a server that has been up a while
        w.start()
    for w in warm:
        w.join()
    assert len(compiler._live) == 2
    slow = {}

    def compile_slow():
        t = time.perf_counter()
        try:
            compiler.compile(Structure("json", slow_schema()))
        except HearthError as e:
            slow["error"] = str(e)
        slow["seconds"] = time.perf_counter() - t

    thread = threading.Thread(target=compile_slow)
    thread.start()
    time.sleep(0.1)
    t = time.perf_counter()
    compiler.compile(Structure.json_schema({"type": "array", "items": {"type": "integer"}}))  # the second worker
    other = time.perf_counter() - t
    thread.join()
    assert slow["error"] == "invalid JSON schema: too complex: compiling it took over 0.3 s"
    assert 0.3 <= slow["seconds"] < 3 and other < slow["seconds"]
    assert compiler.compiles == 4 and len(compiler._cache) == 3  # a timeout is not cached: the machine may be busy
    compiler.close()


def test_cancel_kills_the_compile_at_once(tok):
    compiler = GrammarCompiler(tok, StructureLimits(compile_seconds=60))
    cancel = threading.Event()
    threading.Timer(0.2, cancel.set).start()
    t = time.perf_counter()
    with pytest.raises(CompileCancelled):
        compiler.compile(Structure("json", slow_schema()), cancel)
    assert time.perf_counter() - t < 1.5  # not the seconds the compile would take
    assert not compiler._live  # the worker that was compiling is gone
    assert not compiler._cache  # nothing remembered: a later request compiles it again
    compiler.close()


def test_engine_compiles_in_validate_and_a_cancelled_request_never_starts(tmp_path):
    """AsyncEngine: the compile runs in validate (a worker thread); the step thread gets the matcher and never
    compiles; a client that leaves mid-compile stops it, and the request is never queued."""
    from hearth.engine import grammar_pool
    from hearth.engine.async_engine import AsyncEngine
    from hearth.engine.llm_engine import EngineConfig
    from hearth.engine.request import EngineRequest
    from hearth.engine.sampling import SamplingParams
    from hearth.loader import load

    lm = load(str(write_tiny_gguf(tmp_path / "tiny.gguf")))
    engine = AsyncEngine(lm, EngineConfig(max_num_seqs=4, kv_cache_bytes=8 << 20))
    compiled_on: list[str] = []
    real = grammar_pool.GrammarCompiler._compile

    def spy(self, structure, cancel):
        compiled_on.append(threading.current_thread().name)
        return real(self, structure, cancel)

    async def main():
        engine.start()
        params = SamplingParams(max_tokens=8, temperature=0, structure=Structure("regex", "[0-9]{3}"))
        outs = [o async for o in engine.generate(EngineRequest("a", [1, 2, 3], params))]
        assert len("".join(o.new_text for o in outs)) == 3
        spec = Structure("json", slow_schema())
        slow = SamplingParams(max_tokens=8, structure=spec)
        task = asyncio.ensure_future(anext(engine.generate(EngineRequest("gone", [1, 2], slow))))
        await asyncio.sleep(0.2)
        task.cancel()  # what the server does when the client disconnects
        t = time.perf_counter()
        with pytest.raises(asyncio.CancelledError):
            await task
        compiler = grammar_pool.compiler_for(lm.tokenizer, engine.config.structure_limits)
        while compiler._pending and time.perf_counter() - t < 2:  # the compile thread notices within 50 ms
            await asyncio.sleep(0.02)
        assert not compiler._pending
        assert not compiler._live  # the warm worker took the compile and was killed (finished, it would stay idle)
        assert (spec.kind, spec.spec) not in compiler._cache  # stopped, not finished
        await asyncio.sleep(0.2)
        assert "gone" not in engine.engine.seqs and engine.stats().waiting == 0

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(grammar_pool.GrammarCompiler, "_compile", spy)
        try:
            asyncio.run(main())
        finally:
            engine.shutdown()
    assert compiled_on and "hearth-engine" not in compiled_on


# -- a real server: each attack is a 400 with OpenAI's error body, and the server keeps serving ---------------------
@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("structured_limits")
    proc = ServerProcess(tmp, "limits", "--structure-timeout", "0.3", model=str(write_tiny_gguf(tmp / "tiny.gguf")),
                         threads=1)
    try:
        proc.wait_healthy()
        yield proc
    finally:
        proc.stop()


def completion(url: str, timeout: float = 30, **fields) -> httpx.Response:
    body = {"prompt": "hello", "max_tokens": 4, "temperature": 0, **fields}
    return httpx.post(url + "/v1/completions", json=body, timeout=timeout)


def assert_still_serving(server) -> None:
    assert server.proc.poll() is None, server.log_path.read_text()
    assert httpx.get(server.url + "/health", timeout=5).status_code == 200
    r = completion(server.url)
    assert r.status_code == 200 and r.json()["choices"][0]["finish_reason"] in ("stop", "length")


@pytest.mark.parametrize("fields, message", [
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": ref_chain(1000)}}},
     "too complex: a $ref chain of 1001 links"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": nested(450)}}},
     "nested 901 levels deep"),  # refused by the protocol's own depth check, or by Structure.json_schema
    ({"guided_json": nested_text(900)}, "nested 1801 levels deep"),
    ({"guided_grammar": gbnf_chain(4000)}, "too complex: 4002 rules"),
    ({"structured_outputs": {"grammar": lark_chain(3000)}}, "too complex: 3002 rules"),
    ({"guided_grammar": lark_embedding(ref_chain(1000))}, "too complex: the grammar compiler failed on it"),
])
def test_attacks_get_400_and_the_server_lives(server, fields, message):
    r = completion(server.url, **fields)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["type"] == "invalid_request_error" and message in error["message"], error
    assert_still_serving(server)


def test_slow_compile_is_refused_while_other_requests_are_served(server):
    async def main():
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
            body = {"prompt": "hi", "max_tokens": 4, "temperature": 0}
            slow = asyncio.ensure_future(client.post("/v1/completions", json={**body, "guided_json": slow_schema()}))
            await asyncio.sleep(0.2)
            t = time.perf_counter()
            plain = await client.post("/v1/completions", json=body)
            quick = time.perf_counter() - t
            r = await slow
            return r, plain, quick

    r, plain, quick = asyncio.run(main())
    assert r.status_code == 400 and "compiling it took over 0.3 s" in r.json()["error"]["message"], r.text
    assert plain.status_code == 200 and quick < 2.0
    assert_still_serving(server)


@pytest.fixture(scope="module")
def patient_server(tmp_path_factory):
    """A budget far longer than slow_schema's compile: whatever ends that compile early is the client leaving."""
    tmp = tmp_path_factory.mktemp("structured_patient")
    proc = ServerProcess(tmp, "patient", "--structure-timeout", "600", model=str(write_tiny_gguf(tmp / "tiny.gguf")),
                         threads=1)
    try:
        proc.wait_healthy()
        yield proc
    finally:
        proc.stop()


def grammar_workers(pid: int) -> set[int]:
    """The grammar worker processes a server has started (Linux /proc)."""
    children: set[int] = set()
    for task in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{task}/children") as f:
            children.update(int(c) for c in f.read().split())
    found = set()
    for c in children:
        try:
            with open(f"/proc/{c}/cmdline", "rb") as f:
                if b"grammar_worker.py" in f.read():
                    found.add(c)
        except FileNotFoundError:
            pass
    return found


def wait_for(condition, seconds: float):
    deadline = time.monotonic() + seconds
    while not (value := condition()) and time.monotonic() < deadline:
        time.sleep(0.02)
    return value


def test_a_client_that_leaves_stops_its_compile(patient_server):
    """A fresh server starts one worker for the compile. Left alone it would finish and stay, idle, for the next one;
    the client hanging up mid-compile gets it killed, and the server goes on serving."""
    server = patient_server
    assert not grammar_workers(server.proc.pid)
    body = json.dumps({"prompt": "hi", "max_tokens": 4, "guided_json": slow_schema()}).encode()
    conn = socket.create_connection(("127.0.0.1", server.port))
    conn.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                 b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
    workers = wait_for(lambda: grammar_workers(server.proc.pid), 30)
    assert len(workers) == 1
    time.sleep(0.2)  # into the compile (the worker reads the vocabulary first: ~0.1 s for the tiny one)
    conn.close()
    assert wait_for(lambda: not grammar_workers(server.proc.pid) & workers, 3), "the compile went on"
    assert_still_serving(server)
    r = completion(server.url, guided_json=json.dumps({"type": "array", "items": {"type": "integer"}}))
    assert r.status_code == 200 and r.json()["choices"][0]["text"].startswith("[")


def test_cli_generate_gives_one_error_line(tmp_path, capsys):
    """In-process, as the console script runs it: a crash would take pytest down with it (the CLI exited 139)."""
    gguf = write_tiny_gguf(tmp_path / "tiny.gguf")
    (tmp_path / "bad.json").write_text(json.dumps(ref_chain(1000)))
    (tmp_path / "bad.lark").write_text(lark_embedding(ref_chain(1000)))
    rc, _, err = run_main(capsys, "generate", str(gguf), "hi", "--max-tokens", "4", "--json-schema", str(tmp_path / "bad.json"))
    assert rc == 1
    one_line_error(rc, err, "invalid JSON schema: too complex", "$ref chain of 1001 links")
    rc, _, err = run_main(capsys, "generate", str(gguf), "hi", "--max-tokens", "4", "--grammar", str(tmp_path / "bad.lark"))
    assert rc == 1
    one_line_error(rc, err, "invalid grammar: too complex", "failed on it")
