"""The audit log: one JSON line per served request, each holding the hash of the one before it.

An entry is `{"seq", "time", **fields, "prev", "hash"}`: the time (UTC, ms), what the server passes (key id, never
the key; model or adapter; endpoint; status; token counts; guard decision; no content), the previous entry's hash
(64 zeros for the first) and its own: sha256 of the canonical JSON (sorted keys, no spaces, ASCII) of the entry
without "hash". An edited, removed, swapped or inserted line breaks the chain where it is, and `verify` names it.
The chain cannot show that the LAST entries were cut off, so a head file beside the log (`<log>.head`: the last
seq and hash, replaced atomically) records where it should end. Both are written under one `fcntl.flock` on the
log, so threads and processes append to one chain. This catches accidents and casual edits; someone who may write
these files can rewrite the chain and head from the edited line on: keep the head's hash elsewhere to catch that.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import math
import os
import threading
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import BinaryIO

from hearth.errors import HearthError
from hearth.fsutil import atomic_write

ZERO = "0" * 64
MAX_LINE = 64 << 10  # bytes a line (with its newline) may hold; verify reads no more than this at once
MAX_STRING = 256  # characters a string field keeps
_RESERVED = ("seq", "time", "prev", "hash")
_HEX = frozenset("0123456789abcdef")
_RESTART = ": run `hearth audit verify`, then move the log and its .head aside to start a new one"


def default_path(home: Path) -> Path:
    """Where a deployment keeps its audit log: `<home>/audit/audit.jsonl` (the CLI passes $HEARTH_HOME)."""
    return Path(home) / "audit" / "audit.jsonl"


def head_path(path: Path) -> Path:
    return Path(path).with_name(Path(path).name + ".head")


def entry_hash(entry: dict) -> str:
    """sha256 of the canonical JSON of `entry` without its "hash"."""
    body = {k: v for k, v in entry.items() if k != "hash"}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)
    return hashlib.sha256(text.encode("ascii")).hexdigest()


def _check_fields(fields: dict) -> dict:
    out = {}
    for key, value in fields.items():
        if key in _RESERVED:
            raise ValueError(f"audit field {key!r} is set by the log itself")
        if not key.isidentifier() or not key.isascii() or len(key) > 64:
            raise ValueError(f"audit field name {key[:80]!r}: use a short ASCII identifier")
        if isinstance(value, str):
            value = value[:MAX_STRING]
            value.encode("utf-8")  # a lone surrogate is no text: UnicodeEncodeError, a ValueError
        elif isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"audit field {key!r} is {value}, which JSON cannot hold")
        elif value is not None and not isinstance(value, (int, float, bool)):
            raise ValueError(f"audit field {key!r} is a {type(value).__name__}; only str, int, float, bool and None "
                             "are kept (no content, no nesting)")
        out[key] = value
    return out


def _no_duplicates(pairs: list) -> dict:
    d = dict(pairs)
    if len(d) != len(pairs):
        raise ValueError("a key appears twice (readers would disagree on its value)")
    return d


def parse_entry(raw: bytes) -> dict:
    """One line (without its newline) as an entry; ValueError says why it is not one. The hash is not checked."""
    try:
        e = json.loads(raw.decode("utf-8"), object_pairs_hook=_no_duplicates)
    except RecursionError:
        raise ValueError("nested too deeply") from None
    except UnicodeDecodeError:
        raise ValueError("not UTF-8 text") from None
    except json.JSONDecodeError as err:
        raise ValueError(f"not JSON ({err.msg}, character {err.pos})" if raw.strip() else "an empty line") from None
    if not isinstance(e, dict):
        raise ValueError("not a JSON object")
    seq = e.get("seq")
    if type(seq) is not int or seq < 1:
        raise ValueError('no "seq" counting from 1')
    if not isinstance(e.get("time"), str):
        raise ValueError('no "time"')
    for key in ("prev", "hash"):
        v = e.get(key)
        if not (isinstance(v, str) and len(v) == 64 and _HEX.issuperset(v)):
            raise ValueError(f'"{key}" is not a sha256 in hex')
    for key, value in e.items():  # NaN and 1e999 parse as floats that JSON cannot hold
        if not (value is None or isinstance(value, (str, int)) or isinstance(value, float) and math.isfinite(value)):
            raise ValueError(f"field {key[:64]!r} is not a JSON scalar")
    return e


def _read_head(path: Path) -> tuple[int, str] | None:
    """The head file's (seq, hash); None when there is none; HearthError when it cannot be read."""
    try:
        h = json.loads(head_path(path).read_bytes()[:4096])
        if type(h["seq"]) is int and h["seq"] >= 0 and isinstance(h["hash"], str) and len(h["hash"]) == 64:
            return h["seq"], h["hash"]
    except FileNotFoundError:
        return None
    except (OSError, ValueError, TypeError, KeyError):
        pass
    raise HearthError(f"the audit head file {head_path(path)} is damaged: it should hold the last seq and hash")


class AuditLog:
    """Appends hash-chained entries to `path` (its parent directories are created).

    Opening reads the last entry to continue the chain. A damaged tail, or a head file that disagrees with it,
    raises HearthError naming the problem: the server refuses to start rather than fork the chain. `durable=False`
    skips the fsyncs (faster; a power cut may then lose the last entries, and the head with them). Open one per
    process, after any fork: a forked copy shares the open file, and with it the flock."""

    def __init__(self, path: Path, durable: bool = True):
        self.path = Path(path)
        self.durable = durable
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        try:
            self._fd: int | None = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as err:
            raise HearthError(f"cannot open the audit log {self.path}: {err.strerror}") from None
        self._size, self._seq, self._hash = -1, 0, ZERO  # _size: the file's bytes when its tail was last known
        try:
            with self._locked():
                self._sync()
        except BaseException:
            self.close()
            raise

    def append(self, **fields) -> dict:
        """Write one entry (and the head) under the lock; returns it. Values must be JSON scalars (ValueError),
        strings are cut to 256 characters."""
        body = _check_fields(fields)
        with self._locked():
            self._sync()
            now = datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")
            entry = {"seq": self._seq + 1, "time": now, **body, "prev": self._hash}
            entry["hash"] = entry_hash(entry)
            line = json.dumps(entry, separators=(",", ":"), ensure_ascii=True).encode("ascii") + b"\n"
            if len(line) > MAX_LINE:
                raise ValueError(f"audit entry of {len(line)} bytes is over the limit of {MAX_LINE}")
            size, self._size = self._size, -1  # unknown until the write is known whole
            if os.write(self._fd, line) != len(line):  # one write on an O_APPEND fd: no other writer splits it
                raise OSError(f"short write to the audit log {self.path} (disk full?)")
            if self.durable:
                os.fsync(self._fd)
            self._size, self._seq, self._hash = size + len(line), entry["seq"], entry["hash"]
            atomic_write(head_path(self.path), json.dumps({"seq": self._seq, "hash": self._hash}).encode() + b"\n",
                         durable=self.durable)
        return entry

    def close(self) -> None:
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None

    def __enter__(self) -> AuditLog:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """This object's thread lock, then the flock that other processes (and other AuditLogs) take."""
        with self._lock:
            if self._fd is None:
                raise ValueError(f"the audit log {self.path} is closed")
            fcntl.flock(self._fd, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(self._fd, fcntl.LOCK_UN)

    def _sync(self) -> None:
        """Under the lock: if the file is not as this process left it, read its tail (and check the head)."""
        size = os.fstat(self._fd).st_size
        if size == self._size:
            return
        if 0 <= size < self._size:
            raise HearthError(f"the audit log {self.path} shrank from {self._size} to {size} bytes while open: "
                              f"entries were removed; refusing to continue the chain{_RESTART}")
        self._seq, self._hash, prev = self._read_tail(size)
        self._check_head(prev)
        self._size = size

    def _read_tail(self, size: int) -> tuple[int, str, str]:
        """(seq, hash, prev) of the last entry; HearthError naming the line when it is damaged."""
        if size == 0:
            return 0, ZERO, ZERO
        data = os.pread(self._fd, min(size, MAX_LINE + 1), size - min(size, MAX_LINE + 1))
        start = data.rfind(b"\n", 0, len(data) - 1) + 1
        if not data.endswith(b"\n"):
            why = "it has no newline at its end (a write cut short?)"
        elif start == 0 and len(data) < size:
            why = f"it is longer than {MAX_LINE} bytes"
        else:
            try:
                e = parse_entry(data[start:-1])
                if entry_hash(e) == e["hash"]:
                    return e["seq"], e["hash"], e["prev"]
                why = "its hash does not match its content"
            except ValueError as err:
                why = str(err)
        with open(self.path, "rb") as f:  # only now, to name the line: count them
            line = sum(b.count(b"\n") for b in iter(lambda: f.read(1 << 20), b"")) + (not data.endswith(b"\n"))
        raise HearthError(f"the audit log {self.path} ends in a damaged entry (line {line}: {why}); refusing to "
                          f"continue a chain that cannot be read{_RESTART}")

    def _check_head(self, prev: str) -> None:
        head = _read_head(self.path)
        hseq, hhash = head if head is not None else (0, ZERO)
        if (hseq, hhash) in ((self._seq, self._hash), (self._seq - 1, prev)):
            return  # the head one behind: the log was written and the head not yet (a crash); the next append fixes it
        what = "is missing" if head is None else f"records seq {hseq}"
        raise HearthError(f"the audit log {self.path} ends at seq {self._seq} but its head file {what}: entries were "
                          f"removed or added behind hearth's back; refusing to continue the chain{_RESTART}")


@dataclass
class Problem:
    """One thing wrong with the log, named by its first bad line (1-based) and that line's seq (None: none)."""
    line: int
    seq: int | None
    kind: str  # "edited" | "removed" | "reordered" | "inserted" | "malformed" | "truncated"
    detail: str

    def __str__(self) -> str:
        where = f"line {self.line}" + (f" (seq {self.seq})" if self.seq is not None else "")
        return f"{where}: {self.kind}: {self.detail}"


def _lines(f: BinaryIO, size: int) -> Iterator[tuple[int, dict | None, str]]:
    """(line number, entry or None, "" or what is wrong with it) per line of the first `size` bytes of `f`, reading at
    most MAX_LINE bytes at once."""
    def read() -> bytes:
        return f.readline(min(MAX_LINE + 1, size - f.tell()))

    for n, raw in enumerate(iter(read, b""), 1):
        if len(raw) > MAX_LINE:
            while raw and not raw.endswith(b"\n"):
                raw = read()
            yield n, None, f"longer than {MAX_LINE} bytes"
        elif not raw.endswith(b"\n"):
            yield n, None, "no newline at its end: a partial line (a write cut short, or the file cut)"
        else:
            try:
                e = parse_entry(raw[:-1])
                yield n, e, "" if entry_hash(e) == e["hash"] else "hash does not match its content"
            except ValueError as err:
                yield n, None, str(err)


@dataclass
class _Link:
    """An entry the chain continues from: its line, seq and stored hash, and how it was reached."""
    line: int
    seq: int
    hash: str
    pred: _Link | None = None  # the entry before it
    linked: bool = False  # it continued `pred` properly
    weak: bool = False  # its hash does not match its content (reported)


def _links(a: _Link, e: dict) -> bool:
    return e["prev"] == a.hash and e["seq"] == a.seq + 1


@dataclass
class _Checker:
    """The chain walked line by line: each break is classified from the anchor (the last good entry), the one
    before it and the next line, reported once, and the walk picks the chain up again after it."""
    problems: dict[int, list[Problem]] = field(default_factory=dict)  # by line
    gaps: deque = field(default_factory=lambda: deque(maxlen=32))  # (problem, seqs missing): a later line may refill
    anchor: _Link = field(default_factory=lambda: _Link(0, 0, ZERO))
    malformed: int = 0  # malformed lines since the anchor (each may have been an entry)
    watch: dict[int, tuple[int, str] | None] = field(default_factory=dict)  # seq -> (line, hash), for the head

    def report(self, line: int, seq: int | None, kind: str, detail: str) -> Problem:
        self.problems.setdefault(line, []).append(p := Problem(line, seq, kind, detail))
        return p

    def accept(self, line: int, e: dict, pred: _Link | None, linked: bool, weak: bool = False, seq: int | None = None):
        self.anchor = _Link(line, e["seq"] if seq is None else seq, e["hash"], pred, linked, weak)
        if self.anchor.seq in self.watch:
            self.watch[self.anchor.seq] = (line, e["hash"])
        self.malformed = 0

    def entry(self, line: int, e: dict, edited: str, nxt: tuple[int, dict] | None) -> bool:
        """Check one entry against the chain (`edited`: why its hash is wrong, or ""); `nxt`: the next line when
        it is an entry with a good hash. True when it also used up `nxt` (a swapped pair)."""
        a, seq = self.anchor, e["seq"]
        if edited:
            self.report(line, seq, "edited", edited)
            # the next entry names this one's stored hash as its prev: continue from it
            self.accept(line, e, a, False, weak=True, seq=a.seq + 1 if e["prev"] == a.hash else max(seq, a.seq))
            return False
        n_line, n = nxt if nxt is not None else (0, None)
        gap = next((g for g in self.gaps if seq in g[1]), None) if seq <= a.seq else None
        after = f"line {a.line}" if a.line else "the start"
        if _links(a, e):
            self.accept(line, e, a, True)
        elif self.malformed and a.seq < seq <= a.seq + 1 + self.malformed:
            self.accept(line, e, a, False)  # the malformed lines before it held its predecessors (reported)
        elif a.pred is not None and (a.linked or a.weak) and _links(a.pred, e):
            # the anchor and this entry both continue the one before the anchor: one of them is extra
            if a.linked and e["hash"] == a.hash:
                self.report(line, seq, "inserted", f"a copy of line {a.line}")
            elif a.linked and not (n is not None and _links(_Link(line, seq, e["hash"]), n)):
                self.report(line, seq, "inserted", f"it repeats seq {seq} of line {a.line}, which the chain "
                            "continues from")
            else:
                detail = f"an entry outside the chain: line {line} (seq {seq}) continues from line {a.pred.line}"
                if old := self.problems.get(a.line):  # reported as edited: it was never a chain entry
                    old[-1].kind, old[-1].detail = "inserted", detail + " (and its hash does not match its content)"
                else:
                    self.report(a.line, a.seq, "inserted", detail)
                self.accept(line, e, a.pred, True)
        elif gap is not None:  # a seq reported missing turns up later: it was moved, not removed
            gap[1].discard(seq)
            if gap[0].kind == "removed":
                gap[0].kind, gap[0].detail = "reordered", f"seq {gap[0].seq} comes before seq {seq} (line {line})"
        elif n is not None and _links(a, n):
            if _links(_Link(n_line, n["seq"], n["hash"]), e):
                self.report(line, seq, "reordered", f"seq {seq} comes before seq {n['seq']} (line {n_line}): "
                            "the two lines were swapped")
                self.accept(n_line, n, a, True)
                self.accept(line, e, self.anchor, True)
                return True
            self.report(line, seq, "inserted", f"an entry outside the chain: line {n_line} (seq {n['seq']}) "
                        f"continues from {after}")
        elif seq > a.seq + 1:
            if e["prev"] == a.hash:
                self.report(line, seq, "edited", f"its seq jumps from {a.seq} to {seq} but its prev is the hash of "
                            f"{after}: the seq was changed and the hash recomputed")
            else:
                missing = f"seq {a.seq + 1}" if seq == a.seq + 2 else f"seqs {a.seq + 1}..{seq - 1}"
                p = self.report(line, seq, "removed", f"{missing} missing before it (the chain breaks after {after})")
                if seq - a.seq <= 4096:
                    self.gaps.append((p, set(range(a.seq + 1, seq))))
            self.accept(line, e, a, False)
        elif seq <= a.seq:
            self.report(line, seq, "inserted", f"seq {seq} does not follow seq {a.seq} ({after}): a repeated or "
                        "forged seq")
        else:  # the next seq, but its prev is not the anchor's hash
            if a.line == 0:
                self.report(line, seq, "edited", "the first entry's prev is not 64 zeros")
            elif a.line not in self.problems:
                self.report(a.line, a.seq, "edited", f"the next entry (line {line}) names another hash as its prev: "
                            "this one was rewritten and its hash recomputed")
            self.accept(line, e, a, False)
        return False

    def finish(self, lines: int, head: tuple[int, str] | None | str, path: Path) -> list[Problem]:
        """Report what moved lines left missing, and compare the end of the chain with the head file (`head`:
        (seq, hash), None when there is none, or why it is unreadable)."""
        for p, missing in self.gaps:
            if p.kind == "reordered" and missing:
                self.report(p.line, p.seq, "removed", f"seqs {', '.join(map(str, sorted(missing)))} missing near it")
        last, end, name = self.anchor, lines + 1, head_path(path).name
        if not isinstance(head, tuple):
            if head is not None or last.seq > 1:
                why = "is missing" if head is None else f"is damaged ({head})"
                self.report(end, None, "truncated", f"the head file {name} {why}: whether entries were cut from the "
                            "end cannot be checked")
        elif head[0] > last.seq + self.malformed:  # a partial last line is the entry the head names: reported
            cut = f"seq {head[0]}" if head[0] == last.seq + 1 else f"seqs {last.seq + 1}..{head[0]}"
            ends = f"ends at seq {last.seq} (line {last.line})" if last.seq else "holds no entry"
            self.report(end, None, "truncated", f"the log {ends} but its head file records seq {head[0]}: {cut} "
                        "removed from the end")
        elif (at := self.watch.get(head[0])) is not None and at[1] != head[1]:
            self.report(at[0], head[0], "truncated", f"the head file records hash {head[1][:12]}… for seq {head[0]}, "
                        f"the log {at[1][:12]}…: the end of the log was cut and rewritten")
        elif head[0] + 1 < last.seq:  # one entry past the head is a crash between the two writes; more is not
            line = (self.watch.get(head[0] + 2) or (last.line, ""))[0]
            self.report(line, head[0] + 2, "inserted", f"the head file records seq {head[0]} as the last entry: "
                        f"{last.seq - head[0]} entries follow it, written behind hearth's back")
        return [p for line in sorted(self.problems) for p in self.problems[line]]


@dataclass
class Verification:
    """What verify_log found."""
    entries: int  # lines that held an entry
    problems: list[Problem]  # in line order
    last: tuple[int, str] | None  # (seq, hash) the chain ends at; None for an empty log


def verify(path: Path) -> tuple[int, list[Problem]]:
    """Check the chain of the log at `path` and its head file: (entries read, problems in line order)."""
    v = verify_log(path)
    return v.entries, v.problems


def verify_log(path: Path) -> Verification:
    """`verify`, with where the chain ends. Streams the file as it was when the check began (appends go on); each
    problem is reported once at its first bad line, and the check picks the chain up again after it."""
    path = Path(path)
    if not path.is_file():
        raise HearthError(f"audit log {path} not found" + (" (it is a directory)" if path.is_dir() else ""))
    check, entries, lines = _Checker(), 0, 0
    with open(path, "rb") as f:
        fcntl.flock(f, fcntl.LOCK_SH)  # the head and the size at one moment between appends
        try:
            size = os.fstat(f.fileno()).st_size
            head = _read_head(path)
        except HearthError:
            head = "not a seq and a hash"
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
        if isinstance(head, tuple):
            check.watch = {head[0]: None, head[0] + 2: None}
        items = _lines(f, size)
        cur = next(items, None)
        while cur is not None:
            (lines, e, why), nxt = cur, next(items, None)
            if e is None:
                check.report(lines, None, "malformed", why)
                check.malformed += 1
            elif check.entry(lines, e, why, nxt[:2] if nxt is not None and nxt[1] is not None and not nxt[2] else None):
                entries, lines, nxt = entries + 2, nxt[0], next(items, None)  # a swapped pair, both checked
            else:
                entries += 1
            cur = nxt
    last = (check.anchor.seq, check.anchor.hash) if check.anchor.line else None
    return Verification(entries, check.finish(lines, head, path), last)
