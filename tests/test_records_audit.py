"""The audit log (hearth/records/audit.py, hearth/cli/audit.py): a hash chain that names each tampered line.

Each way of rewriting the file by hand (edit a byte, delete a line, swap two, insert a forged one, cut the end,
leave a partial line) must be found with the right kind at the right line, and only once: after a problem the
check picks the chain up again. Threads and processes appending at once must still leave one intact chain.
"""

from __future__ import annotations

import json
import multiprocessing
import re
import threading
import time
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from hearth.cli import audit as audit_cli
from hearth.errors import HearthError
from hearth.records.audit import ZERO, AuditLog, Problem, entry_hash, head_path, verify, verify_log


def _request(i: int) -> dict:
    return {"key_id": f"key-{i % 3}", "model": "smollm2", "endpoint": "/v1/chat/completions", "status": 200,
            "prompt_tokens": 10 + i, "completion_tokens": 20, "guard": "allow"}


def _fill(path: Path, n: int, durable: bool = False) -> list[bytes]:
    log = AuditLog(path, durable=durable)
    try:
        for i in range(n):
            log.append(**_request(i))
    finally:
        log.close()
    return path.read_bytes().splitlines(keepends=True)


def _write(path: Path, lines: list[bytes]) -> Path:
    path.write_bytes(b"".join(lines))
    return path


def test_append_writes_a_chain_that_verifies(tmp_path):
    path = tmp_path / "deep" / "audit" / "audit.jsonl"  # parent directories are created
    lines = _fill(path, 12, durable=True)
    entries = [json.loads(x) for x in lines]
    assert [e["seq"] for e in entries] == list(range(1, 13))
    assert entries[0]["prev"] == ZERO
    assert all(b["prev"] == a["hash"] for a, b in zip(entries, entries[1:]))
    assert all(entry_hash(e) == e["hash"] for e in entries)
    assert all(re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", e["time"]) for e in entries)
    assert list(entries[3]) == ["seq", "time", *_request(3), "prev", "hash"]
    assert json.loads(head_path(path).read_text()) == {"seq": 12, "hash": entries[-1]["hash"]}
    assert verify(path) == (12, [])
    assert verify_log(path).last == (12, entries[-1]["hash"])
    assert [e["seq"] for e in audit_cli.tail(path, 3)] == [10, 11, 12] and len(audit_cli.tail(path, 100)) == 12


def test_fields_must_be_scalars(tmp_path):
    log = AuditLog(tmp_path / "audit.jsonl", durable=False)
    try:
        for bad in ([1], {"a": 1}, b"bytes", (1, 2), object(), float("nan"), float("inf")):
            with pytest.raises(ValueError):
                log.append(key_id="k", value=bad)
        for reserved in ("seq", "time", "prev", "hash"):
            with pytest.raises(ValueError, match="set by the log"):
                log.append(**{reserved: 1})
        e = log.append(key_id="k" * 1000, ok=True, cost=0.25, nothing=None, status=429)
        assert len(e["key_id"]) == 256 and e["ok"] is True and e["nothing"] is None
        assert e["seq"] == 1  # the rejected calls wrote nothing
    finally:
        log.close()
    assert verify(tmp_path / "audit.jsonl") == (1, [])


def _forged(line: bytes, **changes) -> bytes:
    """A line rewritten with a recomputed hash: it is self-consistent, only the chain can tell."""
    e = {**json.loads(line), **changes}
    e["hash"] = entry_hash(e)
    return json.dumps(e, separators=(",", ":")).encode() + b"\n"


def _edit_one_byte(lines):
    i = lines[4].index(b'"key-1"') + 5
    return lines[:4] + [lines[4][:i] + b"9" + lines[4][i + 1:]] + lines[5:]


# Each tamper of a 20-entry log: (name, how, kind, line, seq, words in the detail). Exactly one problem each: the
# check resynchronises, so one change never makes every later line a problem.
TAMPERS = [
    ("edit one byte", _edit_one_byte, "edited", 5, 5, "hash does not match"),
    ("delete a middle line", lambda ls: ls[:9] + ls[10:], "removed", 10, 11, "seq 10 missing"),
    ("delete three lines", lambda ls: ls[:9] + ls[12:], "removed", 10, 13, "seqs 10..12 missing"),
    ("swap two lines", lambda ls: ls[:6] + [ls[7], ls[6]] + ls[8:], "reordered", 7, 8, "seq 8 comes before seq 7"),
    ("move a line down", lambda ls: ls[:3] + ls[4:9] + [ls[3]] + ls[9:], "reordered", 4, 5, "before seq 4"),
    ("insert a forged seq", lambda ls: ls[:8] + [_forged(ls[8], seq=42, prev="1" * 64)] + ls[8:],
     "inserted", 9, 42, "outside the chain"),
    ("insert a forged copy", lambda ls: ls[:8] + [_forged(ls[8], status=500)] + ls[8:], "inserted", 9, 9,
     "outside the chain"),
    ("duplicate a line", lambda ls: ls[:8] + [ls[7]] + ls[8:], "inserted", 9, 8, "a copy of line 8"),
    ("rewrite with a new hash", lambda ls: ls[:5] + [_forged(ls[5], status=500)] + ls[6:], "edited", 6, 6,
     "hash recomputed"),
    ("cut the last two lines", lambda ls: ls[:18], "truncated", 19, None, "seqs 19..20 removed from the end"),
    ("a garbage line", lambda ls: ls[:5] + [b"not json at all\n"] + ls[5:], "malformed", 6, None, "not JSON"),
    ("a partial line", lambda ls: ls[:5] + [ls[5][:40] + b"\n"] + ls[6:], "malformed", 6, None, "not JSON"),
    ("a partial last line", lambda ls: ls[:19] + [ls[19][:40]], "malformed", 20, None, "partial line"),
    ("an overlong line", lambda ls: ls[:5] + [b"x" * 70_000 + b"\n"] + ls[5:], "malformed", 6, None, "longer than"),
]


@pytest.fixture(scope="module")
def clean(tmp_path_factory) -> tuple[list[bytes], bytes]:
    path = tmp_path_factory.mktemp("clean") / "audit.jsonl"
    return _fill(path, 20), head_path(path).read_bytes()


@pytest.mark.parametrize("name,tamper,kind,line,seq,words", TAMPERS, ids=[t[0] for t in TAMPERS])
def test_each_tamper_is_named_once_at_its_line(tmp_path, clean, name, tamper, kind, line, seq, words):
    lines, head = clean
    path = _write(tmp_path / "audit.jsonl", tamper(list(lines)))
    head_path(path).write_bytes(head)
    _, problems = verify(path)
    assert len(problems) == 1, problems
    p = problems[0]
    assert (p.kind, p.line, p.seq) == (kind, line, seq), p
    assert words in p.detail, p


def test_two_tampers_are_two_problems(tmp_path, clean):
    lines, head = clean
    bad = _edit_one_byte(list(lines))
    path = _write(tmp_path / "audit.jsonl", bad[:14] + bad[15:])  # and seq 15 removed
    head_path(path).write_bytes(head)
    n, problems = verify(path)
    assert n == 19
    assert [(p.line, p.kind) for p in problems] == [(5, "edited"), (15, "removed")]
    assert str(problems[0]) == "line 5 (seq 5): edited: hash does not match its content"


def test_the_head_file_catches_what_the_chain_cannot(tmp_path, clean):
    lines, head = clean
    path = _write(tmp_path / "audit.jsonl", list(lines))
    assert verify(path)[1][0].detail.startswith("the head file audit.jsonl.head is missing")
    head_path(path).write_bytes(head)
    _write(path, lines[:18] + [_forged(lines[18], status=500)])  # cut after 18, a forged seq 19 appended
    (p,) = verify(path)[1]
    assert (p.kind, p.line) == ("truncated", 20), p  # the log ends at seq 19, the head says 20
    _write(path, lines[:19] + [_forged(lines[19], status=500)])  # the last entry rewritten, its hash recomputed
    (p,) = verify(path)[1]
    assert (p.kind, p.line, p.seq) == ("truncated", 20, 20) and "cut and rewritten" in p.detail, p
    head_path(path).write_text("{}")
    assert "damaged" in verify(path)[1][-1].detail


def test_reopening_continues_the_chain(tmp_path):
    path = tmp_path / "audit.jsonl"
    _fill(path, 3)
    log = AuditLog(path)
    e = log.append(key_id="k")
    log.close()
    assert e["seq"] == 4 and e["prev"] == json.loads(path.read_bytes().splitlines()[2])["hash"]
    assert verify(path) == (4, [])


def test_an_empty_or_absent_file_starts_a_chain(tmp_path):
    path = tmp_path / "audit.jsonl"
    path.touch()
    log = AuditLog(path)
    assert log.append(key_id="k")["prev"] == ZERO
    log.close()
    with pytest.raises(HearthError, match="not found"):
        verify(tmp_path / "absent.jsonl")


def test_a_damaged_tail_stops_the_writer(tmp_path, clean):
    lines, head = clean
    path = tmp_path / "audit.jsonl"
    head_path(path).write_bytes(head)
    for bad, words in [(lines[:19] + [lines[19][:40]], "line 20: it has no newline"),
                       (lines[:19] + [lines[19].replace(b"key-", b"KEY-")], "line 20: its hash does not match"),
                       (lines[:19] + [b"{}\n"], 'line 20: no "seq"'),
                       (lines[:17], "ends at seq 17 but its head file records seq 20")]:
        _write(path, bad)
        with pytest.raises(HearthError, match=re.escape(words)):
            AuditLog(path)
    # a crash between the log write and the head write leaves the head one behind: that is not damage
    _write(path, lines)
    head_path(path).write_text(json.dumps({"seq": 19, "hash": json.loads(lines[18])["hash"]}))
    log = AuditLog(path)
    assert log.append(key_id="k")["seq"] == 21
    log.close()
    assert verify(path) == (21, [])


def test_a_log_cut_while_open_is_not_continued(tmp_path):
    path = tmp_path / "audit.jsonl"
    log = AuditLog(path, durable=False)
    for i in range(5):
        log.append(**_request(i))
    _write(path, path.read_bytes().splitlines(keepends=True)[:3])
    with pytest.raises(HearthError, match="shrank"):
        log.append(key_id="k")
    log.close()
    with pytest.raises(ValueError, match="closed"):
        log.append(key_id="k")


def test_threads_append_one_chain(tmp_path):
    path = tmp_path / "audit.jsonl"
    log = AuditLog(path, durable=False)
    start = threading.Barrier(4)

    def work(t: int) -> None:
        start.wait()
        for i in range(50):
            log.append(key_id=f"thread-{t}", prompt_tokens=i)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    log.close()
    assert verify(path) == (200, [])
    seqs = [json.loads(x)["seq"] for x in path.read_bytes().splitlines()]
    assert seqs == list(range(1, 201))


def test_verify_while_appending_checks_the_log_as_it_was(tmp_path):
    """verify takes the head and the size at one moment between appends: a busy server is no false alarm."""
    path = tmp_path / "audit.jsonl"
    log = AuditLog(path, durable=False)
    log.append(key_id="first")
    done = threading.Event()

    def write() -> None:
        while not done.is_set():
            log.append(key_id="busy")

    writer = threading.Thread(target=write)
    writer.start()
    try:
        results = [verify_log(path) for _ in range(20)]
        tails = [audit_cli.tail(path, 5) for _ in range(20)]
    finally:
        done.set()
        writer.join()
        log.close()
    assert all(not v.problems and v.last[0] == v.entries for v in results), [v.problems for v in results][:3]
    assert all(None not in t for t in tails)


def _process_worker(path: str, name: str, start) -> None:
    """Runs in a spawned process: its own AuditLog on the shared file, appending when both processes are ready."""
    log = AuditLog(Path(path), durable=False)
    start.wait(60)
    for i in range(50):
        log.append(key_id=name, prompt_tokens=i)
    log.close()


def test_processes_append_one_chain(tmp_path):
    path = tmp_path / "audit.jsonl"
    ctx = multiprocessing.get_context("spawn")
    start = ctx.Barrier(2)
    procs = [ctx.Process(target=_process_worker, args=(str(path), f"proc-{i}", start)) for i in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0, 0]
    assert verify(path) == (100, [])
    names = [json.loads(x)["key_id"] for x in path.read_bytes().splitlines()]
    assert names.count("proc-0") == names.count("proc-1") == 50
    switches = sum(a != b for a, b in zip(names, names[1:]))
    print(f"\ntwo processes: the writer changed {switches} times in 100 entries")


def test_append_throughput(tmp_path):
    """Not a limit, a figure for the report: appends per second with and without fsync."""
    rates = {}
    for durable, n in ((False, 2000), (True, 200)):
        log = AuditLog(tmp_path / f"audit-{durable}.jsonl", durable=durable)
        t0 = time.perf_counter()
        for i in range(n):
            log.append(**_request(i))
        rates[durable] = n / (time.perf_counter() - t0)
        log.close()
    print(f"\naudit append: {rates[False]:,.0f}/s with durable=False, {rates[True]:,.0f}/s with durable=True")


# ---------------------------------------------------------------- the CLI


def _cli() -> typer.Typer:
    app = typer.Typer(add_completion=False)
    app.add_typer(audit_cli.app, name="audit")
    return app


def test_cli_verify_says_intact_or_names_each_problem(tmp_path):
    path = tmp_path / "audit.jsonl"
    lines = _fill(path, 6)
    r = CliRunner().invoke(_cli(), ["audit", "verify", str(path)])
    last = json.loads(lines[-1])["hash"]
    assert r.exit_code == 0, r.output
    assert r.output == f"verified: 6 entries, chain intact (last seq 6, hash {last[:12]}…)\n"
    _write(path, lines[:2] + lines[3:])
    r = CliRunner().invoke(_cli(), ["audit", "verify", str(path)])
    assert r.exit_code == 1
    assert r.output.splitlines() == ["line 3 (seq 4): removed: seq 3 missing before it (the chain breaks after line 2)"]
    r = CliRunner().invoke(_cli(), ["audit", "verify", str(path), "--json"])
    doc = json.loads(r.output)
    assert r.exit_code == 1 and doc["intact"] is False and doc["entries"] == 5
    assert [Problem(**p).kind for p in doc["problems"]] == ["removed"] and doc["last"]["hash"] == last
    r = CliRunner().invoke(_cli(), ["audit", "verify", str(tmp_path / "nope.jsonl")])
    assert isinstance(r.exception, HearthError) and "not found" in str(r.exception)


def test_cli_default_path_is_under_hearth_home(tmp_path, monkeypatch):
    monkeypatch.setenv("HEARTH_HOME", str(tmp_path))
    _fill(tmp_path / "audit" / "audit.jsonl", 2)
    r = CliRunner().invoke(_cli(), ["audit", "verify"])
    assert r.exit_code == 0 and r.output.startswith("verified: 2 entries"), r.output


def test_cli_show_prints_the_last_entries_terminal_safe(tmp_path):
    path = tmp_path / "audit.jsonl"
    _fill(path, 5)
    log = AuditLog(path, durable=False)
    log.append(key_id="evil\x1b[2J\u202e", model="m", status=200)
    log.close()
    r = CliRunner().invoke(_cli(), ["audit", "show", str(path), "--last", "3"])
    assert r.exit_code == 0, r.output
    out = r.output.splitlines()
    assert len(out) == 4 and out[0].split()[:3] == ["seq", "time", "key_id"] and out[0].split()[-1] == "hash"
    assert [row.split()[0] for row in out[1:]] == ["4", "5", "6"]
    assert "\x1b" not in r.output and "\u202e" not in r.output and "evil\\x1b[2J\\u202e" in out[3]
    r = CliRunner().invoke(_cli(), ["audit", "show", str(path), "-n", "2", "--json"])
    assert [e["seq"] for e in json.loads(r.output)] == [5, 6] and "\x1b" not in r.output
