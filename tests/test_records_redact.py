"""hearth/records/redact.py: each kind found and left alone where it should be, typed placeholders, overlaps merged,
redact_json on an OpenAI chat request, no network ever (a fresh interpreter with sockets refused), bounded time on
adversarial input, and one Redactor shared by threads."""

from __future__ import annotations

import copy
import json
import os
import random
import re
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
import regex

from hearth.errors import HearthError
from hearth.records import redact
from hearth.records.redact import AVAILABLE, KINDS, MAX_JSON_DEPTH, Finding, Redactor

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def redactor() -> Redactor:
    return Redactor()


POSITIVE = [
    ("EMAIL_ADDRESS", "jane.doe@example.com"),
    ("EMAIL_ADDRESS", "bob.smith+tag@mail.example.co.uk"),
    ("EMAIL_ADDRESS", "name@müller.de"),
    ("EMAIL_ADDRESS", "JANE.DOE@EXAMPLE.COM"),
    ("PHONE_NUMBER", "+1 415 555 0132"),
    ("PHONE_NUMBER", "(415) 555-0132"),
    ("PHONE_NUMBER", "+44 20 7946 0958"),
    ("PHONE_NUMBER", "020 7946 0958"),
    ("PHONE_NUMBER", "+49 30 901820"),
    ("PHONE_NUMBER", "01 23 45 67 89"),
    ("CREDIT_CARD", "4111 1111 1111 1111"),
    ("CREDIT_CARD", "5500-0000-0000-0004"),
    ("CREDIT_CARD", "4111111111111111"),
    ("IBAN_CODE", "GB82 WEST 1234 5698 7654 32"),
    ("IBAN_CODE", "GB82WEST12345698765432"),
    ("IBAN_CODE", "DE89370400440532013000"),
    ("US_SSN", "536-22-8764"),
    ("US_SSN", "536 22 8764"),
    ("US_SSN", "078-05-1120"),  # a published sample presidio skips: masked all the same
    ("UK_NINO", "AB 12 34 56 C"),
    ("UK_NINO", "AB123456C"),
    ("UK_NINO", "QQ 12 34 56 C"),  # HMRC's example prefix
    ("IP_ADDRESS", "192.168.14.27"),
    ("IP_ADDRESS", "10.0.0.1/24"),
    ("IP_ADDRESS", "2001:db8::1"),
    ("IP_ADDRESS", "2001:0db8:85a3:0000:0000:8a2e:0370:7334"),
    ("IP_ADDRESS", "::ffff:192.0.2.1"),
]


@pytest.mark.parametrize("kind,value", POSITIVE, ids=[f"{k}:{v}" for k, v in POSITIVE])
def test_each_kind_is_replaced_by_its_typed_placeholder(redactor, kind, value):
    text = f"Note: {value}, then more text."
    assert redactor.redact(text) == f"Note: <{kind}>, then more text."
    assert redactor.find(text) == [Finding(kind, 6, 6 + len(value))]


NEGATIVE = [
    "In 2024 we sold 12,500 units at $1,299.99 each.",  # a year, a count, a price
    "Your PIN is 4821.",
    "Upgrade to version 3.2.1 or v1.2.3-rc.4.",
    "The meeting is at 10:30, the deploy on 2024-03-15T10:30:00Z.",
    "4111 1111 1111 1112",  # 16 digits, Luhn-invalid
    "GB82 WEST 1234 5698 7654 33",  # IBAN checksum wrong
    "user@localhost and a@b.c",  # no public suffix
    "999.1.1.1 and ::",  # not an address; the unspecified address is too weak alone
    "000-12-3456",  # an SSN area never issued
    "123456789",  # a bare 9-digit number: presidio's pattern is very weak without context
    "zip 94103-1234, ISBN 978-3-16-148410-0, timestamp 1718000000, order 12345678",
    "call 555-0132",  # no area code: no valid number
    "pi is 3.14159265, port 8080, HTTP/1.1 200 OK, chmod 755, 0x7fff5fbff8c8",
    "uuid 123e4567-e89b-12d3-a456-426614174000",
    "@app.route('/x') and foo@@bar.com",
    "x = [1, 2, 3, 4, 5, 6, 7, 8]; $12,345,678.90 on 1/2/2024",
]


@pytest.mark.parametrize("text", NEGATIVE)
def test_ordinary_text_and_numbers_are_left_alone(redactor, text):
    assert redactor.find(text) == []
    assert redactor.redact(text) == text


def test_a_sentence_with_every_kind(redactor):
    text = ("Hi, I am Jane, mail me at jane.doe@example.com or call +1 415 555 0132. My card is 4111 1111 1111 1111, "
            "IBAN GB82 WEST 1234 5698 7654 32, SSN 078-05-1120, NI number QQ 12 34 56 C; I log in from 192.168.14.27.")
    assert redactor.redact(text) == (
        "Hi, I am Jane, mail me at <EMAIL_ADDRESS> or call <PHONE_NUMBER>. My card is <CREDIT_CARD>, "
        "IBAN <IBAN_CODE>, SSN <US_SSN>, NI number <UK_NINO>; I log in from <IP_ADDRESS>.")
    found = redactor.find(text)
    assert [f.kind for f in found] == list(AVAILABLE)
    assert all(a.end <= b.start for a, b in zip(found, found[1:]))  # sorted, no overlap


@pytest.mark.parametrize("text,expected", [
    ("call 020 7946 0958 42 times", "call <PHONE_NUMBER> 42 times"),
    ("room 12 020 7946 0958", "room 12 <PHONE_NUMBER>"),
    ("from +1 415 555 0132 2024-03-15 on", "from <PHONE_NUMBER> 2024-03-15 on"),
    ("415-555-0132 10:30", "<PHONE_NUMBER> 10:30"),
    ("2024-03-15 10:30", "2024-03-15 10:30"),  # a date and a time, not (202) 403-1510
    ("2024 12 500 3000 4500", "2024 12 500 3000 4500"),
])
def test_a_number_next_to_other_numbers(redactor, text, expected):
    """phonenumbers alone finds nothing in the first four (the neighbours spoil its candidate)."""
    assert redactor.redact(text) == expected


def test_overlaps_become_one_span_typed_by_the_longest():
    merge = redact._merge
    # A card number that the phone matcher also sees part of: the card (longer) wins, nothing of either is left.
    assert merge([(10, 29, 1.0, "CREDIT_CARD"), (15, 29, 0.4, "PHONE_NUMBER")]) == [Finding("CREDIT_CARD", 10, 29)]
    # Partial overlap: the union, typed by the longer one.
    assert merge([(0, 10, 0.5, "US_SSN"), (8, 30, 0.4, "PHONE_NUMBER")]) == [Finding("PHONE_NUMBER", 0, 30)]
    # Same length: the higher score.
    assert merge([(0, 10, 0.4, "PHONE_NUMBER"), (0, 10, 0.6, "IP_ADDRESS")]) == [Finding("IP_ADDRESS", 0, 10)]
    # Touching is not overlapping; order of input does not matter.
    assert merge([(5, 9, 0.5, "UK_NINO"), (0, 5, 1.0, "EMAIL_ADDRESS")]) == [
        Finding("EMAIL_ADDRESS", 0, 5), Finding("UK_NINO", 5, 9)]
    # A chain of overlaps is one span.
    assert merge([(0, 4, 0.5, "US_SSN"), (3, 8, 0.5, "US_SSN"), (7, 20, 0.4, "PHONE_NUMBER")]) == [
        Finding("PHONE_NUMBER", 0, 20)]


def test_replacement_keeps_the_text_between_findings(redactor):
    text = "a@example.com+1 415 555 0132\n4111111111111111|192.168.0.1"
    out = redactor.redact(text)
    assert out == "<EMAIL_ADDRESS><PHONE_NUMBER>\n<CREDIT_CARD>|<IP_ADDRESS>"
    assert redactor.redact("") == "" and redactor.find("") == []


def test_email_pattern_matches_presidios_on_ordinary_text():
    """The bounded pattern is presidio's language (the simple path) wherever the RFC's lengths hold."""
    from presidio_analyzer.predefined_recognizers import EmailRecognizer

    flags = regex.DOTALL | regex.MULTILINE | regex.IGNORECASE
    theirs = regex.compile(EmailRecognizer.PATTERNS[0].regex, flags)
    ours = regex.compile(redact.EMAIL_PATTERN, flags)
    corpus = ["write to jane.doe@example.com today", "bob.smith+tag@mail.example.co.uk,", "<x@xn--80ak6aa92e.com>",
              "name@müller.de.", "user@localhost", "mailto:carol_d@exa-mple.org?subject=hi",
              "jo-hn.doe-@ex--ample.com",
              "\"quoted\"@example.com", "first.last@sub.domain.io; second@example.net", "o'brien@example.ie",
              "x@a.b.c.d.e.example.com", "@app.route", "foo@@bar.com", "a.@example.com", ".a@example.com",
              "user%host@example.com", "email=me@x.org&y=1", "path/to/user@example.com", "jane@example.com-foo",
              "ja ne@example.com", "x" * 64 + "@example.com", "{\"email\":\"jane@example.com\"}", "jane@-example.com",
              "jane@example-.com", "ünïcödé@例子.公司", "a_b-c.d+e@f-g.h_i.jk"]
    for text in corpus:
        assert [m.span() for m in ours.finditer(text)] == [m.span() for m in theirs.finditer(text)], text


def test_kinds_choose_what_is_redacted():
    only_email = Redactor(kinds=["EMAIL_ADDRESS"])
    assert only_email.kinds == ("EMAIL_ADDRESS",) and only_email.available == AVAILABLE
    assert only_email.redact("jane@example.com +1 415 555 0132") == "<EMAIL_ADDRESS> +1 415 555 0132"
    assert Redactor(kinds=[]).redact("jane@example.com") == "jane@example.com"
    assert set(AVAILABLE) < set(KINDS) and "PERSON" not in AVAILABLE and "LOCATION" not in AVAILABLE


@pytest.mark.parametrize("kinds,message", [
    (["PERSON"], "named-entity model"),
    (["EMAIL_ADDRESS", "LOCATION"], "named-entity model"),
    (["PASSPORT"], "unknown redaction kind 'PASSPORT'"),
    ("EMAIL_ADDRESS", "a list of names"),
])
def test_kinds_that_cannot_be_redacted_are_refused(kinds, message):
    with pytest.raises(HearthError, match=message):
        Redactor(kinds=kinds)


def test_phone_regions_are_checked():
    with pytest.raises(HearthError, match="unknown phone regions"):
        Redactor(kinds=["PHONE_NUMBER"], phone_regions=["XX"])
    us_only = Redactor(kinds=["PHONE_NUMBER"], phone_regions=["US"])
    assert us_only.redact("020 7946 0958 or +44 20 7946 0958") == "020 7946 0958 or <PHONE_NUMBER>"


def test_past_the_phone_budget_runs_are_masked_unchecked():
    spent = Redactor(kinds=["PHONE_NUMBER"], phone_budget=0)
    text = "call 020 7946 0958 on 2024-03-15, PIN 4821"
    assert spent.redact(text) == "call <PHONE_NUMBER> on <PHONE_NUMBER>, PIN 4821"  # fewer than 7 digits: left
    some = Redactor(kinds=["PHONE_NUMBER"], phone_budget=len("020 7946 0958"))
    assert some.redact_json(["call 020 7946 0958", "on 2024-03-15"]) == ["call <PHONE_NUMBER>", "on <PHONE_NUMBER>"]
    assert some.redact("on 2024-03-15") == "on 2024-03-15"  # a new call, a new budget


def test_a_kind_that_stopped_being_detected_fails_start_up(monkeypatch):
    monkeypatch.setitem(redact.SELF_CHECK, "IBAN_CODE", "GB00 NOT AN IBAN")
    with pytest.raises(HearthError, match="self-check failed: IBAN_CODE"):
        Redactor(kinds=["IBAN_CODE"])


def test_redact_json_on_a_chat_request(redactor):
    request = {
        "model": "tiny",
        "messages": [
            {"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": "I am at jane.doe@example.com, +44 20 7946 0958."},
            {"role": "assistant", "content": None, "tool_calls": [
                {"id": "call_1", "type": "function",
                 "function": {"name": "lookup", "arguments": "{\"card\": \"4111 1111 1111 1111\"}"}}]},
            {"role": "user", "content": [{"type": "text", "text": "from 192.168.14.27"}]},
        ],
        "metadata": {"contact": "jane.doe@example.com", "team": "support"},
        "jane.doe@example.com": "a key is kept",
        "temperature": 0.2, "max_tokens": 16, "stream": False, "stop": None, "n": 1,
    }
    before = copy.deepcopy(request)
    out = redactor.redact_json(request)
    assert request == before  # the input is untouched
    assert out == {
        "model": "tiny",
        "messages": [
            {"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": "I am at <EMAIL_ADDRESS>, <PHONE_NUMBER>."},
            {"role": "assistant", "content": None, "tool_calls": [
                {"id": "call_1", "type": "function",
                 "function": {"name": "lookup", "arguments": "{\"card\": \"<CREDIT_CARD>\"}"}}]},
            {"role": "user", "content": [{"type": "text", "text": "from <IP_ADDRESS>"}]},
        ],
        "metadata": {"contact": "<EMAIL_ADDRESS>", "team": "support"},
        "jane.doe@example.com": "a key is kept",
        "temperature": 0.2, "max_tokens": 16, "stream": False, "stop": None, "n": 1,
    }
    assert list(out) == list(request)  # key order kept
    assert out["messages"] is not request["messages"] and out["metadata"] is not request["metadata"]
    assert redactor.redact_json("call +1 415 555 0132") == "call <PHONE_NUMBER>"
    assert redactor.redact_json(42) == 42 and redactor.redact_json(None) is None
    assert redactor.redact_json(("a@example.com", 1)) == ["<EMAIL_ADDRESS>", 1]


def test_redact_json_is_iterative_and_depth_capped(redactor):
    def nested(depth):
        value = "jane@example.com"
        for _ in range(depth):
            value = [value]
        return value

    out = redactor.redact_json(nested(MAX_JSON_DEPTH))
    for _ in range(MAX_JSON_DEPTH):
        out = out[0]
    assert out == "<EMAIL_ADDRESS>"
    with pytest.raises(HearthError, match="nested deeper"):
        redactor.redact_json(nested(MAX_JSON_DEPTH + 1))
    loop: list = []
    loop.append(loop)
    with pytest.raises(HearthError, match="nested deeper"):  # not JSON, but no hang
        redactor.redact_json(loop)


NO_NETWORK = textwrap.dedent("""
    import json, socket, sys
    tried = []

    def refuse(*args, **kwargs):
        tried.append(repr(args[-1:]))
        raise OSError("the network is off in this test")

    socket.socket.connect = socket.socket.connect_ex = refuse
    socket.create_connection = socket.getaddrinfo = socket.gethostbyname = refuse
    sys.addaudithook(lambda event, args: tried.append(event) if event in (
        "socket.connect", "socket.getaddrinfo", "socket.gethostbyname", "socket.sendto", "urllib.Request") else None)

    from hearth.records.redact import Redactor   # the import of presidio, spaCy, tldextract, phonenumbers
    r = Redactor()
    out = r.redact_json({"a": "jane.doe@example.com, x@mail.example.co.uk, +1 415 555 0132", "b": ["192.168.1.2"]})
    ours = list(tried)
    import os, pathlib
    written = sorted(str(p) for p in pathlib.Path(os.environ["HOME"]).rglob("*"))

    import tldextract                            # the control: tldextract's default extractor does try
    tldextract.extract("x@example.com")
    print(json.dumps({"out": out, "ours": ours, "written": written, "control": tried[len(ours):]}))
""")


def test_nothing_touches_the_network(tmp_path):
    """A fresh interpreter (so the imports are inside the check) with every way to a socket refused and recorded."""
    env = {**os.environ, "HOME": str(tmp_path), "XDG_CACHE_HOME": str(tmp_path / "cache"),
           "PYTHONPATH": str(ROOT), "TLDEXTRACT_CACHE": str(tmp_path / "tld")}
    env.pop("TLDEXTRACT_PUBLIC_SUFFIX_LIST_URLS", None)
    proc = subprocess.run([sys.executable, "-c", NO_NETWORK], env=env, capture_output=True, text=True, timeout=180,
                          cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got["out"] == {"a": "<EMAIL_ADDRESS>, <EMAIL_ADDRESS>, <PHONE_NUMBER>", "b": ["<IP_ADDRESS>"]}
    assert got["ours"] == []
    assert got["control"], "the check would not have seen tldextract's download"
    assert got["written"] == []  # no suffix-list cache, nothing else


def _timed(redactor, text):
    start = time.perf_counter()
    out = redactor.redact(text)
    return out, time.perf_counter() - start


N = 200_000
PATHOLOGICAL = {
    "digits and separators": ("1234 5678-90.12 " * (N // 16 + 1))[:N],
    "at signs": "@" * N,
    "dots": "." * N,
    "at signs and dots": "@." * (N // 2),
    "local parts without end": ("a-" * 40 + "@") * (N // 81),  # presidio's own e-mail pattern: >60 s for 32 KB
    "distinct phone lines": "".join(f"call 415 555 {i % 10000:04d} ext {i}\n" for i in range(N // 25)),
    "dotted quads": "1.1.1." * (N // 6),
}


@pytest.mark.parametrize("name", list(PATHOLOGICAL))
def test_adversarial_input_takes_bounded_time(redactor, name):
    out, seconds = _timed(redactor, PATHOLOGICAL[name])
    assert seconds < 10, f"{name}: {seconds:.1f} s"  # ~1 s or less on one core
    if name == "digits and separators":
        assert out.startswith("<PHONE_NUMBER>") and not re.search(r"\d{4}", out)  # past the budget: masked
    if name == "distinct phone lines":
        assert "415 555" not in out and out.count("<PHONE_NUMBER>") == N // 25  # checked, then masked unchecked


def test_a_megabyte_of_mixed_text(redactor):
    rng = random.Random(0)
    words = "the of and to in is that for it as was with be by on not this are or from at which but have".split()
    secrets = ["jane.doe@example.com", "+1 415 555 0132", "(415) 555-0133", "020 7946 0958", "4111 1111 1111 1111",
               "GB82 WEST 1234 5698 7654 32", "536-22-8764", "AB123456C", "192.168.14.27", "2001:db8::1"]
    ordinary = ["2024", "12,500", "$1,299.99", "3.2.1", "10:30", "4821", "2024-03-15", "x = 42;", "HTTP/1.1"]
    parts, size = [], 0
    while size < 1_000_000:
        x = rng.random()
        w = rng.choice(secrets) if x < 0.01 else rng.choice(ordinary) if x < 0.05 else rng.choice(words)
        parts.append(w + ("\n" if rng.random() < 0.05 else " "))
        size += len(parts[-1])
    text = "".join(parts)
    out, seconds = _timed(redactor, text)
    assert seconds < 15, f"{seconds:.1f} s"  # ~1 s on one core
    for secret in secrets:
        assert secret not in out, secret
    for word in ordinary:
        assert word in out, word


def test_one_redactor_shared_by_threads(redactor):
    texts = [f"user{i}@example.com called +1 415 555 {i:04d} from 10.0.{i % 256}.{i % 7}, paid with "
             f"4111 1111 1111 1111 in {2000 + i}; IBAN DE89370400440532013000, NI AB 12 34 56 C, SSN 536-22-{1000 + i}"
             for i in range(60)]
    expected = [redactor.redact(t) for t in texts]
    assert all("<EMAIL_ADDRESS>" in e and "<US_SSN>" in e for e in expected)
    results: dict[int, list[str]] = {}
    barrier = threading.Barrier(8)

    def work(k):
        order = list(range(len(texts)))
        random.Random(k).shuffle(order)
        barrier.wait()
        got = {i: redactor.redact(texts[i]) for i in order}
        results[k] = [got[i] for i in range(len(texts))]

    threads = [threading.Thread(target=work, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(results) == 8 and all(r == expected for r in results.values())
