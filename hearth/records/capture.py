"""Captured chat completions and their feedback, in SQLite: OpenAI's stored completions, kept on the owner's disk.

    store = CaptureStore(path, redact=Redactor().redact_json, retention_days=30)
    store.add(completion, messages, metadata, Served(model=..., key_id=..., ...))   # redacted before it is written
    store.list(after=None, limit=20, order="asc", metadata={"team": "a"})           # OpenAI's list page
    store.add_feedback("chatcmpl-...", score=-1, comment="wrong", correction="Paris")

What reaches the file has been through `redact` first (the request's messages, the answer, metadata values, feedback
comments and corrections): personal data never touches the disk, not even in SQLite's journal. The file is created
0600. Every write is one transaction, so a full disk or a locked database fails that write (CaptureUnavailable,
which the server answers with a 503) and leaves what is stored intact.

Connections: one per thread (sqlite3 objects are not shared across threads), WAL so readers never wait for the
writer, a short busy timeout so a locked database is an error, not a hung request.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hearth.errors import HearthError

MAX_METADATA_PAIRS = 16  # OpenAI's limits for `metadata`
MAX_METADATA_KEY = 64
MAX_METADATA_VALUE = 512
MAX_LIMIT = 100  # a page
MAX_TEXT = 64 << 10  # a feedback comment or correction
PURGE_EVERY = 600.0  # seconds between retention sweeps while serving

SCHEMA = """
CREATE TABLE IF NOT EXISTS completions (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT UNIQUE NOT NULL,
    created REAL NOT NULL,
    model TEXT NOT NULL,
    model_digest TEXT,
    adapter TEXT,
    key_id TEXT NOT NULL,
    guard TEXT,
    prompt_tokens INTEGER NOT NULL,
    completion_tokens INTEGER NOT NULL,
    duration_ms REAL,
    ttft_ms REAL,
    messages TEXT NOT NULL,
    completion TEXT NOT NULL,
    metadata TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS completions_created ON completions(created);
CREATE TABLE IF NOT EXISTS metadata (
    completion_id TEXT NOT NULL REFERENCES completions(id) ON DELETE CASCADE,
    key TEXT NOT NULL,
    value TEXT NOT NULL,
    PRIMARY KEY (completion_id, key)
);
CREATE INDEX IF NOT EXISTS metadata_pair ON metadata(key, value);
CREATE TABLE IF NOT EXISTS feedback (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    completion_id TEXT NOT NULL REFERENCES completions(id) ON DELETE CASCADE,
    created REAL NOT NULL,
    score REAL NOT NULL,
    comment TEXT,
    correction TEXT,
    key_id TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS feedback_completion ON feedback(completion_id);
"""


class CaptureUnavailable(HearthError):
    """The capture database could not take a write (full disk, locked, damaged): the request fails cleanly."""


class InvalidMetadata(HearthError, ValueError):
    """Metadata over OpenAI's limits, or not string to string."""


@dataclass(frozen=True)
class Served:
    """Who and what served a completion: kept beside it (never the API key itself, only its id)."""

    model: str
    key_id: str
    model_digest: str | None = None
    adapter: str | None = None
    guard: str | None = None  # "allowed", "blocked: S1", None where no guard ran
    prompt_tokens: int = 0
    completion_tokens: int = 0
    duration_ms: float | None = None
    ttft_ms: float | None = None


@dataclass
class Page:
    data: list[dict]
    has_more: bool

    def to_json(self) -> dict:
        return {"object": "list", "data": self.data, "first_id": self.data[0]["id"] if self.data else None,
                "last_id": self.data[-1]["id"] if self.data else None, "has_more": self.has_more}


@dataclass
class Record:
    """One captured completion with its feedback, as feedback.py exports it."""

    id: str
    created: float
    model: str
    messages: list[dict]
    answer: str | None
    feedback: list[dict] = field(default_factory=list)


def check_metadata(metadata: Any) -> dict[str, str] | None:
    """OpenAI's limits: at most 16 pairs, keys up to 64 characters, values up to 512, strings only."""
    if metadata is None:
        return None
    if not isinstance(metadata, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
        raise InvalidMetadata("metadata must be an object of string keys and string values")
    if len(metadata) > MAX_METADATA_PAIRS:
        raise InvalidMetadata(f"metadata has {len(metadata)} pairs; at most {MAX_METADATA_PAIRS} are allowed")
    for k, v in metadata.items():
        if not k or len(k) > MAX_METADATA_KEY:
            raise InvalidMetadata(f"metadata key {k[:80]!r} must be 1 to {MAX_METADATA_KEY} characters long")
        if len(v) > MAX_METADATA_VALUE:
            raise InvalidMetadata(f"metadata value of {k!r} is {len(v)} characters long; at most {MAX_METADATA_VALUE}")
    return dict(metadata)


def _unavailable(e: sqlite3.Error, path: Path) -> CaptureUnavailable:
    text = str(e)
    why = ("the disk is full" if "full" in text else "the database is locked by another process" if "locked" in text
           else text)
    return CaptureUnavailable(f"the capture database {path} cannot be written: {why}")


class CaptureStore:
    """Stored completions and feedback in one SQLite file. Thread-safe; every method blocks on the disk, so the server
    calls them from worker threads, never its event loop."""

    def __init__(self, path: Path, redact: Callable[[Any], Any] | None = None, retention_days: float | None = None,
                 busy_timeout: float = 2.0):
        self.path = Path(path).expanduser()
        self.redact = redact or (lambda value: value)
        self.retention_days = retention_days
        self.busy_timeout = busy_timeout
        self._local = threading.local()
        self._last_purge = 0.0
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_CREAT | os.O_RDWR, 0o600)  # conversations: the owner's eyes only
            os.close(fd)
            db = self._db()
            db.executescript(SCHEMA)
        except sqlite3.DatabaseError as e:
            raise HearthError(f"{self.path} is not a capture database ({e}); give another --capture path") from None
        except OSError as e:
            raise HearthError(f"cannot create the capture database {self.path}: {e.strerror or e}") from None
        self.purge_expired()

    def _db(self) -> sqlite3.Connection:
        db = getattr(self._local, "db", None)
        if db is None:
            db = sqlite3.connect(self.path, timeout=self.busy_timeout, isolation_level=None)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA foreign_keys=ON")
            db.execute("PRAGMA secure_delete=ON")  # deleted rows are overwritten, not left in free pages
            self._local.db = db
        return db

    def _write(self, fn: Callable[[sqlite3.Connection], Any]) -> Any:
        db = self._db()
        try:
            db.execute("BEGIN IMMEDIATE")
            try:
                out = fn(db)
                db.execute("COMMIT")
                return out
            except BaseException:
                if db.in_transaction:  # SQLite ends some failed transactions itself (SQLITE_FULL)
                    db.execute("ROLLBACK")
                raise
        except sqlite3.Error as e:
            raise _unavailable(e, self.path) from None

    def _read(self, sql: str, args: tuple = ()) -> list[tuple]:
        try:
            return self._db().execute(sql, args).fetchall()
        except sqlite3.Error as e:
            raise CaptureUnavailable(f"the capture database {self.path} cannot be read: {e}") from None

    # -- completions -------------------------------------------------------------------------------------------
    def add(self, completion: dict, messages: list[dict], metadata: dict[str, str] | None, served: Served) -> None:
        """Keep one chat completion (OpenAI's response object) and the messages that asked for it, redacted."""
        metadata = check_metadata(metadata) or {}
        clean_messages = self.redact(messages)
        clean_completion = self.redact(completion)
        clean_metadata = {k: self.redact(v) for k, v in metadata.items()}
        row = (completion["id"], float(completion.get("created") or time.time()), served.model, served.model_digest,
               served.adapter, served.key_id, served.guard, served.prompt_tokens, served.completion_tokens,
               served.duration_ms, served.ttft_ms, json.dumps(clean_messages), json.dumps(clean_completion),
               json.dumps(clean_metadata))

        def write(db):
            db.execute("INSERT INTO completions (id, created, model, model_digest, adapter, key_id, guard, prompt_tokens,"
                       " completion_tokens, duration_ms, ttft_ms, messages, completion, metadata)"
                       " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)", row)
            db.executemany("INSERT INTO metadata VALUES (?,?,?)", [(row[0], k, v) for k, v in clean_metadata.items()])
        self._write(write)
        if time.monotonic() - self._last_purge > PURGE_EVERY:
            self.purge_expired()

    def _seq(self, cid: str | None) -> int | None:
        if cid is None:
            return None
        rows = self._read("SELECT seq FROM completions WHERE id = ?", (cid,))
        return rows[0][0] if rows else None

    def list(self, after: str | None = None, limit: int = 20, order: str = "asc",
             metadata: dict[str, str] | None = None, model: str | None = None) -> Page:
        """A page of stored completions, oldest first (order "desc": newest first), after the one named `after`,
        only those whose metadata holds every pair of `metadata` (and of `model`, when given)."""
        limit = max(1, min(int(limit), MAX_LIMIT))
        where, args = [], []
        cursor = self._seq(after)
        if after is not None and cursor is None:
            raise KeyError(after)
        if cursor is not None:
            where.append("seq > ?" if order == "asc" else "seq < ?")
            args.append(cursor)
        for k, v in (metadata or {}).items():
            where.append("EXISTS (SELECT 1 FROM metadata m WHERE m.completion_id = c.id AND m.key = ? AND m.value = ?)")
            args += [k, v]
        if model is not None:
            where.append("model = ?")
            args.append(model)
        sql = "SELECT id FROM completions c" + (" WHERE " + " AND ".join(where) if where else "")
        sql += f" ORDER BY seq {'ASC' if order == 'asc' else 'DESC'} LIMIT ?"
        ids = [r[0] for r in self._read(sql, (*args, limit + 1))]
        return Page([self.get(i) for i in ids[:limit]], len(ids) > limit)

    def get(self, cid: str) -> dict | None:
        """The stored completion in OpenAI's shape, with its metadata and (hearth's addition) its feedback."""
        rows = self._read("SELECT completion, metadata, adapter, key_id, guard, model_digest, duration_ms, ttft_ms"
                          " FROM completions WHERE id = ?", (cid,))
        if not rows:
            return None
        completion, metadata, adapter, key_id, guard, digest, duration, ttft = rows[0]
        out = json.loads(completion)
        out["metadata"] = json.loads(metadata)
        out["request_id"] = cid
        out["feedback"] = self.feedback_for(cid)
        out["hearth"] = {"adapter": adapter, "key_id": key_id, "guard": guard, "model_digest": digest,
                         "duration_ms": duration, "ttft_ms": ttft}
        return out

    def messages(self, cid: str, after: str | None = None, limit: int = 20, order: str = "asc") -> Page | None:
        rows = self._read("SELECT messages FROM completions WHERE id = ?", (cid,))
        if not rows:
            return None
        msgs = [{"id": f"{cid}-{i}", **m} for i, m in enumerate(json.loads(rows[0][0]))]
        if order == "desc":
            msgs.reverse()
        if after is not None:
            at = next((i for i, m in enumerate(msgs) if m["id"] == after), None)
            if at is None:
                raise KeyError(after)
            msgs = msgs[at + 1:]
        limit = max(1, min(int(limit), MAX_LIMIT))
        return Page(msgs[:limit], len(msgs) > limit)

    def update_metadata(self, cid: str, metadata: dict[str, str]) -> dict | None:
        """Replace a completion's metadata (as OpenAI's update does); None for an unknown id."""
        metadata = {k: self.redact(v) for k, v in (check_metadata(metadata) or {}).items()}

        def write(db):
            n = db.execute("UPDATE completions SET metadata = ? WHERE id = ?", (json.dumps(metadata), cid)).rowcount
            if n:
                db.execute("DELETE FROM metadata WHERE completion_id = ?", (cid,))
                db.executemany("INSERT INTO metadata VALUES (?,?,?)", [(cid, k, v) for k, v in metadata.items()])
            return n
        return self.get(cid) if self._write(write) else None

    def delete(self, cid: str) -> bool:
        return bool(self._write(lambda db: db.execute("DELETE FROM completions WHERE id = ?", (cid,)).rowcount))

    # -- feedback ----------------------------------------------------------------------------------------------
    def add_feedback(self, cid: str, score: float, comment: str | None = None, correction: str | None = None,
                     key_id: str = "anonymous") -> dict | None:
        """Feedback on a stored completion (None: no such completion). The comment and correction are redacted."""
        for name, text in (("comment", comment), ("correction", correction)):
            if text is not None and len(text) > MAX_TEXT:
                raise InvalidMetadata(f"{name} is {len(text)} characters long; at most {MAX_TEXT}")
        comment = None if comment is None else self.redact(comment)
        correction = None if correction is None else self.redact(correction)
        now = time.time()

        def write(db):
            if not db.execute("SELECT 1 FROM completions WHERE id = ?", (cid,)).fetchone():
                return None
            return db.execute("INSERT INTO feedback (completion_id, created, score, comment, correction, key_id)"
                              " VALUES (?,?,?,?,?,?)", (cid, now, float(score), comment, correction, key_id)).lastrowid
        fid = self._write(write)
        if fid is None:
            return None
        return {"object": "feedback", "id": f"fb-{fid}", "completion_id": cid, "score": score, "comment": comment,
                "correction": correction, "created": int(now)}

    def feedback_for(self, cid: str) -> list[dict]:
        rows = self._read("SELECT id, created, score, comment, correction FROM feedback WHERE completion_id = ?"
                          " ORDER BY id", (cid,))
        return [{"object": "feedback", "id": f"fb-{i}", "completion_id": cid, "score": s, "comment": c,
                 "correction": k, "created": int(t)} for i, t, s, c, k in rows]

    # -- retention and export ----------------------------------------------------------------------------------
    def purge(self, before: float | None = None, ids: list[str] | tuple[str, ...] = ()) -> int:
        """Delete completions (with their metadata and feedback) created before `before` (epoch seconds) and those
        named in `ids`; the number deleted. secure_delete overwrites what they held; the WAL is checkpointed."""
        def write(db):
            n = 0
            if before is not None:
                n += db.execute("DELETE FROM completions WHERE created < ?", (before,)).rowcount
            for cid in ids:
                n += db.execute("DELETE FROM completions WHERE id = ?", (cid,)).rowcount
            return n
        n = self._write(write)
        if n:
            try:
                self._db().execute("PRAGMA wal_checkpoint(TRUNCATE)")  # the old pages leave the WAL file too
            except sqlite3.Error:
                pass
        return n

    def purge_expired(self) -> int:
        self._last_purge = time.monotonic()
        if self.retention_days is None:
            return 0
        return self.purge(before=time.time() - self.retention_days * 86400)

    def records(self, since: float | None = None) -> Iterator[Record]:
        """Every stored completion (created at or after `since`) with its feedback, oldest first, for export."""
        rows = self._read("SELECT id, created, model, messages, completion FROM completions"
                          + (" WHERE created >= ?" if since is not None else "") + " ORDER BY seq",
                          (since,) if since is not None else ())
        for cid, created, model, messages, completion in rows:
            choices = json.loads(completion).get("choices") or [{}]
            answer = ((choices[0] or {}).get("message") or {}).get("content")
            yield Record(cid, created, model, json.loads(messages), answer, self.feedback_for(cid))

    def count(self) -> int:
        return self._read("SELECT count(*) FROM completions")[0][0]

    def close(self) -> None:
        db = getattr(self._local, "db", None)
        if db is not None:
            db.close()
            self._local.db = None
