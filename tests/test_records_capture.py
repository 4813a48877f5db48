"""hearth/records/capture.py and feedback.py in-process: OpenAI's list semantics, retention, a full disk that fails
one write and loses nothing, and the export rules (which feedback makes which example, deduplication, the split)."""

from __future__ import annotations

import json
import os
import time

import pytest

from hearth.records.capture import CaptureStore, CaptureUnavailable, InvalidMetadata, Served
from hearth.records.feedback import export


def completion(cid: str, answer: str = "Paris", created: float | None = None) -> dict:
    return {"id": cid, "object": "chat.completion", "created": int(created or time.time()), "model": "m",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": answer}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}}


def add(store, cid, question="Capital of France?", answer="Paris", metadata=None, created=None):
    store.add(completion(cid, answer, created), [{"role": "user", "content": question}], metadata,
              Served(model="m", key_id="key-abc"))


def test_pages_filters_and_private_file(tmp_path):
    store = CaptureStore(tmp_path / "c.sqlite")
    assert os.stat(tmp_path / "c.sqlite").st_mode & 0o777 == 0o600
    for i in range(5):
        add(store, f"c{i}", metadata={"even": str(i % 2 == 0)})
    page = store.list(limit=2)
    assert [d["id"] for d in page.data] == ["c0", "c1"] and page.has_more
    assert [d["id"] for d in store.list(after="c1", limit=10).data] == ["c2", "c3", "c4"]
    assert [d["id"] for d in store.list(order="desc", limit=2).data] == ["c4", "c3"]
    assert [d["id"] for d in store.list(metadata={"even": "True"}).data] == ["c0", "c2", "c4"]
    with pytest.raises(KeyError):
        store.list(after="nope")
    with pytest.raises(InvalidMetadata):
        add(store, "bad", metadata={"k": 1})
    assert store.get("c0")["hearth"]["key_id"] == "key-abc" and store.get("nope") is None


def test_a_full_disk_fails_the_write_and_keeps_what_is_stored(tmp_path):
    store = CaptureStore(tmp_path / "c.sqlite")
    add(store, "kept")
    db = store._db()
    pages = db.execute("PRAGMA page_count").fetchone()[0]
    db.execute(f"PRAGMA max_page_count = {pages + 1}")  # SQLite's own SQLITE_FULL, as a full disk gives it
    with pytest.raises(CaptureUnavailable, match="disk is full"):
        add(store, "big", question="x" * 200_000)
    assert [d["id"] for d in store.list().data] == ["kept"]
    assert store.add_feedback("kept", 1) is not None  # small writes still fit: the store works on


def test_retention_and_purge(tmp_path):
    old = time.time() - 40 * 86400
    store = CaptureStore(tmp_path / "c.sqlite")
    add(store, "old", created=old)
    add(store, "new")
    store.add_feedback("old", -1, correction="x")
    store.close()
    store = CaptureStore(tmp_path / "c.sqlite", retention_days=30)  # the sweep at start
    assert [d["id"] for d in store.list().data] == ["new"]
    assert store.purge(ids=["new"]) == 1 and store.count() == 0


def test_export_rules_dedup_and_stable_split(tmp_path):
    store = CaptureStore(tmp_path / "c.sqlite")
    add(store, "liked", "Say hi", "Hi!")
    add(store, "liked2", "Say hi", "Hi!")  # the same chat again: exported once
    add(store, "fixed", "Capital of Peru?", "Quito")
    add(store, "meh", "Weather?", "Sunny")
    add(store, "silent", "Time?", "Noon")  # no feedback: nothing
    for cid, score, fix in (("liked", 1, None), ("liked2", 1, None), ("fixed", -1, "Lima"), ("meh", 0, None)):
        store.add_feedback(cid, score, correction=fix)
    out = tmp_path / "d.jsonl"
    done = export(store.records(), "sft", out, val_fraction=0)
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert done.n_train == 2 and done.duplicates == 1 and done.considered == 5 and done.with_feedback == 4
    assert {r["messages"][-1]["content"] for r in rows} == {"Hi!", "Lima"}
    done = export(store.records(), "dpo", out, val_fraction=0)
    assert [json.loads(x) for x in out.read_text().splitlines()] == [
        {"prompt": "Capital of Peru?", "chosen": "Lima", "rejected": "Quito"}]
    for i in range(200):
        add(store, f"n{i}", f"Question {i}?", "answer")
        store.add_feedback(f"n{i}", 1)
    first = export(store.records(), "sft", out, val_fraction=0.2)
    val_lines = set((tmp_path / "d.val.jsonl").read_text().splitlines())
    assert 20 < first.n_val < 70 and first.n_train + first.n_val == 202
    add(store, "later", "One more?", "yes")
    store.add_feedback("later", 1)
    export(store.records(), "sft", out, val_fraction=0.2)
    assert val_lines <= set((tmp_path / "d.val.jsonl").read_text().splitlines())  # the split is stable
