"""Responses kept for OpenAI's Responses API (`store: true`, its default): GET / DELETE /v1/responses/{id}, the input
items of one, and `previous_response_id`, which continues from a stored response's conversation.

    store = ResponseStore(home / "responses.sqlite")
    store.put(StoredResponse(id="resp_...", response={...}, input_items=[...], conversation=[...]))
    store.get("resp_...")       # StoredResponse or None
    store.delete("resp_...")    # True if it was there

Each row keeps the response object as answered, the request's own input items, and the whole conversation it
answered (earlier turns' input and output items, then this request's input; no instructions, which OpenAI does not
carry over either): a continuation reads one row, and deleting an earlier response leaves later ones whole. The
conversation is bounded by the model's context, since a request that does not fit is never stored.

Unlike the capture (capture.py), nothing is redacted: a continued conversation needs its words. The file is 0600.
Every method blocks on the disk: the server calls them from a thread of its own. A write is one transaction; a full
disk or a database locked past `busy_timeout` raises ResponsesUnavailable and leaves what is stored intact.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hearth.errors import HearthError

SCHEMA = """
CREATE TABLE IF NOT EXISTS responses (
    id TEXT PRIMARY KEY,
    created REAL NOT NULL,
    response TEXT NOT NULL,
    input_items TEXT NOT NULL,
    conversation TEXT NOT NULL
);
"""


class ResponsesUnavailable(HearthError):
    """The responses database could not be read or written (full disk, locked, damaged): that request fails."""


@dataclass(frozen=True)
class StoredResponse:
    id: str
    response: dict[str, Any]  # the response object, as answered
    input_items: list[dict[str, Any]]  # this request's input, as items
    conversation: list[dict[str, Any]]  # every item the response answered (earlier turns included)


class ResponseStore:
    """Stored responses in one SQLite file; thread-safe (one connection behind a lock)."""

    def __init__(self, path: Path, busy_timeout: float = 2.0):
        self.path = Path(path).expanduser()
        self._lock = threading.Lock()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            os.close(os.open(self.path, os.O_CREAT | os.O_RDWR, 0o600))  # conversations: the owner's eyes only
            self._db = sqlite3.connect(self.path, timeout=busy_timeout, isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")  # readers never wait for the writer
            self._db.executescript(SCHEMA)
        except sqlite3.DatabaseError as e:
            raise HearthError(f"{self.path} is not a responses database ({e}); move it away or remove it") from None
        except OSError as e:
            raise HearthError(f"cannot create the responses database {self.path}: {e.strerror or e}") from None

    def _error(self, e: sqlite3.Error, doing: str) -> ResponsesUnavailable:
        text = str(e)
        why = ("the disk is full" if "full" in text else "the database is locked by another process" if "locked" in text
               else text)
        return ResponsesUnavailable(f"the responses database {self.path} cannot be {doing}: {why}")

    def put(self, stored: StoredResponse) -> None:
        row = (stored.id, time.time(), json.dumps(stored.response, ensure_ascii=False),
               json.dumps(stored.input_items, ensure_ascii=False), json.dumps(stored.conversation, ensure_ascii=False))
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    self._db.execute("INSERT OR REPLACE INTO responses VALUES (?, ?, ?, ?, ?)", row)
                    self._db.execute("COMMIT")
                except BaseException:
                    if self._db.in_transaction:  # SQLite ends some failed transactions itself (SQLITE_FULL)
                        self._db.execute("ROLLBACK")
                    raise
            except sqlite3.Error as e:
                raise self._error(e, "written") from None

    def get(self, rid: str) -> StoredResponse | None:
        with self._lock:
            try:
                row = self._db.execute("SELECT response, input_items, conversation FROM responses WHERE id = ?",
                                       (rid,)).fetchone()
            except sqlite3.Error as e:
                raise self._error(e, "read") from None
        if row is None:
            return None
        return StoredResponse(rid, json.loads(row[0]), json.loads(row[1]), json.loads(row[2]))

    def delete(self, rid: str) -> bool:
        with self._lock:
            try:
                return self._db.execute("DELETE FROM responses WHERE id = ?", (rid,)).rowcount > 0
            except sqlite3.Error as e:
                raise self._error(e, "written") from None

    def close(self) -> None:
        with self._lock:
            self._db.close()
