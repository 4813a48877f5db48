"""What a red-team run has already computed, in SQLite: each response and each guard verdict under a key that names
everything it depends on (the model's digest, the adapter's, the prompt, the sampling; the guard's digest, the
policy, the role, the conversation). A killed run finds what it finished and goes on from there; a second run of the
same configuration computes nothing.

One row is committed as each result arrives (WAL, synchronous=NORMAL: a crash loses at most the row being written,
never the file). Values are JSON objects; a row that does not parse is treated as absent and recomputed.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from collections.abc import Iterable
from pathlib import Path

from hearth.errors import HearthError

SCHEMA = "CREATE TABLE IF NOT EXISTS results (key TEXT PRIMARY KEY, kind TEXT NOT NULL, value TEXT NOT NULL)"


def make_key(kind: str, **parts) -> str:
    """A stable key for `parts` (JSON-able values): the SHA-256 of their canonical JSON."""
    blob = json.dumps({"kind": kind, **parts}, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def file_digest(path: Path, chunk: int = 1 << 20) -> str:
    """sha256 of a file, or of a folder's files (names and contents, in name order): a model or an adapter."""
    h = hashlib.sha256()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for p in files:
        if path.is_dir():
            h.update(str(p.relative_to(path)).encode() + b"\0")
        with open(p, "rb") as f:
            while block := f.read(chunk):
                h.update(block)
    return "sha256:" + h.hexdigest()


class ResultCache:
    def __init__(self, path: Path):
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.db = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=False)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=NORMAL")
            self.db.execute(SCHEMA)
        except sqlite3.DatabaseError as e:
            raise HearthError(f"the red-team cache {self.path} cannot be used ({e}); delete it or pass --cache "
                              "elsewhere") from None
        self.hits = 0
        self.writes = 0

    def get_many(self, keys: Iterable[str]) -> dict[str, dict]:
        keys = list(dict.fromkeys(keys))
        found: dict[str, dict] = {}
        for i in range(0, len(keys), 500):  # SQLite's bound on parameters per statement
            part = keys[i:i + 500]
            rows = self.db.execute(f"SELECT key, value FROM results WHERE key IN ({','.join('?' * len(part))})", part)
            for key, value in rows:
                try:
                    v = json.loads(value)
                except ValueError:
                    continue
                if isinstance(v, dict):
                    found[key] = v
        self.hits += len(found)
        return found

    def put(self, key: str, kind: str, value: dict) -> None:
        self.db.execute("INSERT OR REPLACE INTO results (key, kind, value) VALUES (?, ?, ?)",
                        (key, kind, json.dumps(value, ensure_ascii=False)))
        self.writes += 1

    def close(self) -> None:
        self.db.close()
