"""Issue 19: `hearth serve --capture` through the real `openai` SDK (OpenAI's stored completions), feedback, personal
data redacted before it reaches the disk (proven on the database file's bytes), a locked database failing only the
requests that store, purge on request, and the exported feedback read by `hearth tune`.

A real server subprocess over a tiny random-weight GGUF (tests/store_kit.py): no download, fast."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import time

import httpx
import openai
import pytest

import tune_kit
from serve_kit import ServerProcess
from store_kit import cli_env, write_tiny_gguf

pytestmark = pytest.mark.timeout(300)

# Each kind of personal data the redaction covers, as a user would type it
PII = {
    "email": "jane.doe@example.com",
    "phone": "+1 415 555 0132",
    "card": "4111 1111 1111 1111",
    "iban": "GB82 WEST 1234 5698 7654 32",
    "ssn": "078-05-1120",
    "nino": "QQ 12 34 56 C",
    "ip": "192.168.14.27",
}
SENTENCE = ("Hi, I am Jane, mail me at {email} or call {phone}. My card is {card}, IBAN {iban}, SSN {ssn}, "
            "NI number {nino}; I log in from {ip}.").format(**PII)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("capture")
    db = tmp / "capture.sqlite"
    proc = ServerProcess(tmp, "capture", "--capture-db", str(db), model=str(write_tiny_gguf(tmp / "tiny.gguf")),
                         threads=1, env={"HEARTH_HOME": str(tmp / "home")})
    try:
        proc.wait_healthy()
        proc.db, proc.home = db, tmp / "home"
        yield proc
    finally:
        proc.stop()


def client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key="k", max_retries=0, timeout=60)


def ask(server, content: str = "Hello", **extra):
    return client(server).chat.completions.create(model="tiny", messages=[{"role": "user", "content": content}],
                                                  max_tokens=6, temperature=0, **extra)


def test_stored_completions_through_the_openai_sdk(server):
    c = client(server)
    kept = ask(server, "What is the capital of France?", store=True, metadata={"team": "support", "case": "1"})
    other = ask(server, "Tell me a joke", store=True, metadata={"team": "sales"})
    ask(server, "Not kept")  # no store: nothing written
    ids = [x.id for x in c.chat.completions.list()]
    assert kept.id in ids and other.id in ids and len(ids) == len(set(ids))
    assert [x.id for x in c.chat.completions.list(metadata={"team": "support"})] == [kept.id]
    assert [x.id for x in c.chat.completions.list(metadata={"team": "support"}, order="desc")] == [kept.id]
    page = c.chat.completions.list(limit=1)
    assert len(page.data) == 1 and page.has_more
    assert [x.id for x in c.chat.completions.list(after=page.data[0].id, limit=100)] == ids[1:]
    got = c.chat.completions.retrieve(kept.id)
    assert got.id == kept.id and got.choices[0].message.content == kept.choices[0].message.content
    assert got.metadata == {"team": "support", "case": "1"}
    assert got.model_extra["hearth"]["model_digest"].startswith("sha256:")
    msgs = c.chat.completions.messages.list(kept.id)
    assert [(m.role, m.content) for m in msgs.data] == [("user", "What is the capital of France?")]
    updated = c.chat.completions.update(kept.id, metadata={"team": "support", "reviewed": "yes"})
    assert updated.metadata == {"team": "support", "reviewed": "yes"}
    assert [x.id for x in c.chat.completions.list(metadata={"reviewed": "yes"})] == [kept.id]
    deleted = c.chat.completions.delete(other.id)
    assert deleted.deleted and deleted.id == other.id
    with pytest.raises(openai.NotFoundError):
        c.chat.completions.retrieve(other.id)
    with pytest.raises(openai.NotFoundError):
        c.chat.completions.delete(other.id)


def test_a_streamed_answer_is_stored_whole(server):
    stream = ask(server, "Count to three", store=True, stream=True)
    text, rid = "", None
    for chunk in stream:
        rid = chunk.id
        if chunk.choices and chunk.choices[0].delta.content:
            text += chunk.choices[0].delta.content
    got = client(server).chat.completions.retrieve(rid)
    assert got.choices[0].message.content == text and got.choices[0].finish_reason == "length"


def test_feedback_is_kept_with_its_completion_and_bad_bodies_are_refused(server):
    done = ask(server, "Capital of Peru?", store=True)
    r = httpx.post(server.url + "/v1/feedback", json={"completion_id": done.id, "score": -1, "comment": "wrong",
                                                       "correction": "Lima"})
    assert r.status_code == 200, r.text
    assert r.json()["object"] == "feedback" and r.json()["correction"] == "Lima"
    fb = client(server).chat.completions.retrieve(done.id).model_extra["feedback"]
    assert [(f["score"], f["correction"]) for f in fb] == [(-1, "Lima")]
    bad = [({"completion_id": done.id}, 400, "score"),
           ({"completion_id": done.id, "score": "good"}, 400, "score"),
           ({"completion_id": done.id, "score": 1e9}, 400, "score"),
           ({"completion_id": done.id, "score": 1, "extra": 1}, 400, "extra"),
           ({"completion_id": "chatcmpl-nope", "score": 1}, 404, "chatcmpl-nope")]
    for body, status, needle in bad:
        r = httpx.post(server.url + "/v1/feedback", json=body)
        assert r.status_code == status and needle in r.json()["error"]["message"] + str(r.json()["error"]["param"]), r.text
    r = httpx.post(server.url + "/v1/feedback", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 400 and "error" in r.json()
    for metadata, needle in (({f"k{i}": "v" for i in range(17)}, "17 pairs"), ({"k" * 65: "v"}, "64"),
                             ({"k": "v" * 513}, "512")):
        with pytest.raises(openai.BadRequestError, match=needle):
            ask(server, "hi", store=True, metadata=metadata)
    r = httpx.get(server.url + "/v1/chat/completions", params={"limit": "0"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "limit"
    r = httpx.get(server.url + "/v1/chat/completions", params={"order": "sideways"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "order"
    assert httpx.get(server.url + "/v1/chat/completions", params={"after": "chatcmpl-x"}).status_code == 404
    assert httpx.get(server.url + "/health").status_code == 200


def test_personal_data_never_reaches_the_database_file(server):
    done = ask(server, SENTENCE, store=True, metadata={"contact": PII["email"]})
    r = httpx.post(server.url + "/v1/feedback", json={"completion_id": done.id, "score": -1,
                                                       "comment": f"call me on {PII['phone']}",
                                                       "correction": f"Write to {PII['email']}"})
    assert r.status_code == 200
    got = client(server).chat.completions.retrieve(done.id)
    stored = client(server).chat.completions.messages.list(done.id).data[0].content
    assert "<EMAIL_ADDRESS>" in stored and "<CREDIT_CARD>" in stored and "<IBAN_CODE>" in stored
    assert got.metadata == {"contact": "<EMAIL_ADDRESS>"}
    raw = b"".join(p.read_bytes() for p in server.db.parent.glob(server.db.name + "*"))  # the file, its WAL
    assert done.id.encode() in raw  # the record is there...
    for kind, value in PII.items():  # ...and none of what it held
        for form in {value, value.replace(" ", ""), value.replace(" ", "-")}:
            assert form.encode() not in raw, kind


def test_a_locked_database_fails_only_the_requests_that_store(server):
    before = client(server).chat.completions.list(limit=100).data
    lock = sqlite3.connect(server.db, timeout=5, isolation_level=None)
    lock.execute("BEGIN EXCLUSIVE")
    try:
        t = time.monotonic()
        with pytest.raises(openai.InternalServerError) as e:
            ask(server, "kept?", store=True)
        assert e.value.status_code == 503 and "locked" in str(e.value) and time.monotonic() - t < 30
        assert ask(server, "not kept").choices  # serving without capture goes on
    finally:
        lock.execute("ROLLBACK")
        lock.close()
    after = client(server).chat.completions.list(limit=100).data
    assert [x.id for x in after] == [x.id for x in before]  # nothing lost, nothing half-written
    assert ask(server, "kept now", store=True).id in [x.id for x in client(server).chat.completions.list(limit=100)]


def test_purge_by_id_and_date_from_the_cli(server, tmp_path):
    done = ask(server, "forget me", store=True)
    env = cli_env(server.home)

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "hearth.cli", *args], capture_output=True, text=True, env=env,
                              timeout=120)
    r = cli("capture", "purge", str(server.db), "--id", done.id)
    assert r.returncode == 0 and "deleted 1 captured completion" in r.stdout, r.stderr
    with pytest.raises(openai.NotFoundError):
        client(server).chat.completions.retrieve(done.id)
    r = cli("capture", "purge", str(server.db), "--before", "2000-01-01")
    assert r.returncode == 0 and "deleted 0 captured completions" in r.stdout, r.stderr
    r = cli("capture", "purge", str(server.db), "--before", "yesterday")
    assert r.returncode == 1 and r.stderr.count("error:") == 1 and "--before" in r.stderr


def test_exported_feedback_is_read_by_tune(server, tmp_path):
    """sft: a correction and a liked answer become chats; dpo: the correction is chosen over the answer."""
    liked = ask(server, "Say hello", store=True)
    fixed = ask(server, "Capital of Italy?", store=True)
    for cid, score, correction in ((liked.id, 1, None), (fixed.id, -1, "Rome")):
        body = {"completion_id": cid, "score": score, **({"correction": correction} if correction else {})}
        assert httpx.post(server.url + "/v1/feedback", json=body).status_code == 200
    env = cli_env(server.home)

    def cli(*args, timeout=240):
        return subprocess.run([sys.executable, "-m", "hearth.cli", *args], capture_output=True, text=True, env=env,
                              timeout=timeout)
    out = tmp_path / "fb.jsonl"
    r = cli("feedback", "export", str(server.db), "--format", "sft", "--val-fraction", "0", "-o", str(out))
    assert r.returncode == 0, r.stderr
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    answers = {x["messages"][-2]["content"]: x["messages"][-1]["content"] for x in lines}
    assert answers["Capital of Italy?"] == "Rome" and answers["Say hello"] == liked.choices[0].message.content
    dpo = tmp_path / "pairs.jsonl"
    r = cli("feedback", "export", str(server.db), "--format", "dpo", "--val-fraction", "0", "-o", str(dpo))
    assert r.returncode == 0, r.stderr
    pairs = [json.loads(x) for x in dpo.read_text().splitlines()]
    assert {"prompt": "Capital of Italy?", "chosen": "Rome", "rejected": fixed.choices[0].message.content} in pairs
    model = tune_kit.model_dir(str(tmp_path))
    r = cli("tune", str(model), "--data", str(out), "--val-data", str(out), "-o", str(tmp_path / "sft"),
            "--max-steps", "2", "--batch-size", "2", "--quiet")
    assert r.returncode == 0 and "2 steps" in r.stdout and "validation loss" in r.stdout, r.stderr
    summary = json.loads((tmp_path / "sft" / "summary.json").read_text())
    assert [d["rows"] for d in summary["lineage"]["data"]] == [len(lines), len(lines)]
    r = cli("tune", str(model), "--data", str(dpo), "--method", "dpo", "-o", str(tmp_path / "dpo"),
            "--max-steps", "1", "--batch-size", "1", "--val-fraction", "0", "--quiet")
    assert r.returncode == 0, r.stderr


def test_the_ledger_and_the_audit_log_see_every_request_without_content(server):
    import hashlib

    key_id = "key-" + hashlib.sha256(b"k").hexdigest()[:12]  # the SDK sends `Bearer k`

    def requests_counted() -> int:
        text = httpx.get(server.url + "/metrics").text
        return sum(int(float(line.rsplit(" ", 1)[1])) for line in text.splitlines()
                   if line.startswith("hearth_ledger_requests_total{") and f'key_id="{key_id}"' in line)
    before = requests_counted()
    ask(server, "secret question about my account")
    ask(server, "another")
    deadline = time.monotonic() + 10
    while requests_counted() < before + 2 and time.monotonic() < deadline:  # written by the records thread
        time.sleep(0.1)
    assert requests_counted() == before + 2
    env = cli_env(server.home)
    run = [sys.executable, "-m", "hearth.cli"]
    r = subprocess.run([*run, "audit", "verify"], capture_output=True, text=True, env=env, timeout=60)
    assert r.returncode == 0 and r.stdout.startswith("verified:"), r.stdout + r.stderr
    r = subprocess.run([*run, "audit", "show", "--last", "2", "--json"], capture_output=True, text=True, env=env, timeout=60)
    entries = json.loads(r.stdout)
    assert [(e["endpoint"], e["status"], e["key_id"], e["model"]) for e in entries] == \
        [("/v1/chat/completions", 200, key_id, "tiny")] * 2
    assert entries[0]["prompt_tokens"] > 0 and "secret" not in r.stdout
    log = (server.home / "audit" / "audit.jsonl").read_text()
    assert "secret" not in log and "account" not in log
    r = subprocess.run([*run, "cost", "--json"], capture_output=True, text=True, env=env, timeout=60)
    assert r.returncode == 0 and key_id in r.stdout, r.stderr
