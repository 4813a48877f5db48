"""Issue 20: the web pages (chat at /, the operator's view at /dashboard) in a real browser: Debian's chromium driven
by Playwright (its own browser download is unreachable here: `make install` installs chromium with apt).

Real `hearth serve` subprocesses over random-weight models (no download): a model big enough to decode at a human
pace on one thread (~100 tokens/s, so that a stream can be watched and stopped), served with --capture and a LoRA
adapter of its own shapes; a tiny one behind --api-key-file; one with --no-ui. Model output is forced where a test
needs a given text: through the page's own JSON-schema box (a `const` string is the only answer the grammar allows),
or by a crafted event stream that Playwright answers in the server's place (page.route).

One browser for the module; each test gets a fresh context (empty localStorage) and fails on any uncaught error in
the page or any native dialog. The tests skip without playwright or without chromium (/usr/bin/chromium, or the
binary HEARTH_CHROMIUM names).
"""

from __future__ import annotations

import json
import os
import re
import sqlite3
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install -e '.[test]')")

import tiny  # noqa: E402
from serve_kit import ServerProcess  # noqa: E402
from store_kit import write_tiny_gguf  # noqa: E402

CHROMIUM = os.environ.get("HEARTH_CHROMIUM", "/usr/bin/chromium")
if not Path(CHROMIUM).exists():
    pytest.skip(f"no chromium at {CHROMIUM} (Debian's package: `make install` as root installs it)",
                allow_module_level=True)

pytestmark = pytest.mark.timeout(300)

KEY = "sesame-" + "x" * 24
PHONE = {"width": 390, "height": 844}
DESKTOP = {"width": 1280, "height": 800}
# ~12M parameters: ~8 ms a token on one core, so a stream takes long enough to watch and stop
PACED = dict(dim=512, n_layers=4, n_heads=8, n_kv_heads=4, hidden_dim=1408, max_seq_len=4096)


def write_model(path: Path, **config) -> Path:
    """A random-weight GGUF with tests/tiny.py's byte-level tokenizer (any text can be forced) and chat template."""
    from hearth.tokenizer import Tokenizer
    from hearth.weights.gguf_writer import write_gguf
    from hearth.weights.types import TokenizerData

    model = tiny.random_transformer(vocab_size=tiny.TOKENIZER_VOCAB, tie_embeddings=True, name="paced", **config)
    with tempfile.TemporaryDirectory() as d:
        tiny.train_tokenizer().save(str(Path(d) / "tokenizer.json"))
        data = TokenizerData(tokenizer_json=Path(d) / "tokenizer.json", bos_id=0, eos_ids=(2,), pad_id=0,
                             add_bos=False, chat_template=tiny.CHAT_TEMPLATE,
                             special_tokens={"bos_token": "<|endoftext|>", "eos_token": "<|im_end|>",
                                             "pad_token": "<|endoftext|>"})
        tok = Tokenizer.from_data(data)
    return write_gguf(path, model.config, tiny.state_dict_of(model), tok, tiny.CHAT_TEMPLATE,
                      metadata={"general.name": "paced"})


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    """name -> a healthy ServerProcess: "main" (--capture, adapter "tuned"), "keyed" (--api-key-file), "plain"
    (--no-ui). Started together, so their start-ups overlap."""
    from hearth.weights.adapters.targets import LoraConfig
    from lora_kit import make_adapter

    tmp = tmp_path_factory.mktemp("web")
    paced = write_model(tmp / "paced.gguf", **PACED)
    adapter = make_adapter(tmp / "tuned", LoraConfig(r=4, alpha=8), seed=0, std=0.5, model=str(paced))
    tiny_model = str(write_tiny_gguf(tmp / "tiny.gguf"))
    (tmp / "key").write_text(KEY + "\n")
    env = {"HEARTH_HOME": str(tmp / "home")}
    procs = {
        # --no-redact: Presidio's start-up (seconds) buys nothing here; redaction has its own tests
        "main": ServerProcess(tmp, "main", "--capture-db", str(tmp / "capture.sqlite"), "--no-redact",
                              "--adapter", f"tuned={adapter}", model=str(paced), threads=1, env=env),
        "keyed": ServerProcess(tmp, "keyed", "--api-key-file", str(tmp / "key"), model=tiny_model, threads=1,
                               env={"HEARTH_HOME": str(tmp / "home-keyed")}),
        "plain": ServerProcess(tmp, "plain", "--no-ui", model=tiny_model, threads=1,
                               env={"HEARTH_HOME": str(tmp / "home-plain")}),
    }
    procs["main"].db = tmp / "capture.sqlite"
    with ThreadPoolExecutor(len(procs)) as pool:
        try:
            list(pool.map(lambda p: p.wait_healthy(), procs.values()))
            yield procs
        finally:
            list(pool.map(lambda p: p.stop(), procs.values()))


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture
def open_page(browser):
    """open_page(url, viewport=DESKTOP) -> a page in a fresh context, loaded and ready (html[data-ready])."""
    contexts, errors = [], []

    def opener(url: str, viewport: dict = DESKTOP, ready: bool = True, **context_args):
        ctx = browser.new_context(viewport=viewport, **context_args)
        contexts.append(ctx)
        page = ctx.new_page()
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.on("dialog", lambda d: errors.append(f"a {d.type} dialog opened: {d.message}") or d.dismiss())
        page.goto(url)
        if ready:
            page.wait_for_selector("html[data-ready=true]", state="attached")
        return page

    yield opener
    for ctx in contexts:
        ctx.close()
    assert not errors, errors


def status(server) -> dict:
    r = httpx.get(server.url + "/hearth/status", timeout=10)
    assert r.status_code == 200, r.text
    return r.json()


def metrics(server) -> dict[str, float]:
    """Each unlabelled sample of /metrics, and histogram buckets as name{le}."""
    from prometheus_client.parser import text_string_to_metric_families

    out = {}
    for family in text_string_to_metric_families(httpx.get(server.url + "/metrics", timeout=10).text):
        for s in family.samples:
            key = s.name + (f"{{{s.labels['le']}}}" if "le" in s.labels else "")
            if "le" in s.labels or not s.labels:
                out[key] = s.value
    return out


def settings(page, **fields) -> None:
    """Fill the settings panel: system, temperature, top_p, max_tokens, schema (a dict or str)."""
    if not page.eval_on_selector("#settings", "d => d.open"):
        page.click("#settings summary")
    ids = {"system": "#system", "temperature": "#temperature", "top_p": "#top-p", "max_tokens": "#max-tokens",
           "schema": "#schema"}
    for name, value in fields.items():
        text = json.dumps(value) if isinstance(value, dict) else str(value)
        page.fill(ids[name], text)
        page.dispatch_event(ids[name], "change")


def send(page, text: str) -> None:
    page.fill("#prompt", text)
    page.press("#prompt", "Enter")


def last_answer(page):
    return page.locator(".msg.assistant").last


def wait_done(page, timeout: float = 30_000) -> None:
    page.wait_for_selector(".msg.assistant:last-child[aria-busy=false]", timeout=timeout)


def forced(text: str) -> dict:
    """A JSON schema whose only answer is the JSON string `text`."""
    return {"const": text}


def chats(page) -> list[dict]:
    return page.evaluate("JSON.parse(localStorage.getItem('hearth.chats.v1') || '[]')")


# ---- chat ---------------------------------------------------------------------------------------------------------
def test_tokens_arrive_one_by_one_with_the_answers_numbers(servers, open_page):
    """Enter sends (Shift+Enter is a new line), the answer grows in the page while it streams (seen by a
    MutationObserver), then shows its time to first token, tokens/s and, when it is not `stop`, its finish reason;
    the conversation is in localStorage."""
    main = servers["main"]
    page = open_page(main.url + "/")
    sent = []
    page.on("request", lambda r: sent.append(r.post_data_json) if r.url.endswith("/v1/chat/completions") else None)
    page.evaluate("""() => {
        window.__growth = [];
        new MutationObserver(() => {
            const c = document.querySelector('.msg.assistant:last-child .content');
            if (c) window.__growth.push([performance.now(), c.textContent.length]);
        }).observe(document.getElementById('messages'), {subtree: true, childList: true, characterData: true});
    }""")
    page.fill("#prompt", "first line")
    page.press("#prompt", "Shift+Enter")
    page.keyboard.type("second line")
    assert page.input_value("#prompt") == "first line\nsecond line" and not sent  # a new line, nothing sent
    settings(page, schema={"type": "string", "minLength": 200, "maxLength": 200}, temperature=0)
    page.press("#prompt", "Enter")
    wait_done(page)
    growth = page.evaluate("window.__growth")
    lengths = [n for _, n in growth]
    steps = sorted(set(lengths))
    assert len(steps) >= 5, growth  # many partial renders, not one at the end
    assert lengths == sorted(lengths) or max(lengths) == lengths[-1]
    assert growth[-1][0] - next(t for t, n in growth if n > 0) > 100  # spread over time (ms), not one burst
    body = sent[0]
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True} and body["temperature"] == 0
    assert body["messages"] == [{"role": "user", "content": "first line\nsecond line"}]
    assert body["store"] is True  # the server captures: answers are kept so that they can be rated
    text = json.loads(last_answer(page).locator(".content").inner_text())
    assert len(text) == 200
    meta = last_answer(page).locator(".meta").inner_text()
    assert re.search(r"first token \d+ ms · [\d.]+ tokens/s · \d+ tokens", meta), meta
    assert "length" not in meta
    settings(page, schema="", max_tokens=3)
    send(page, "Short, please")
    wait_done(page)
    assert last_answer(page).locator(".finish").get_attribute("data-finish") == "length"
    assert "token limit" in last_answer(page).locator(".meta").inner_text()
    saved = chats(page)
    assert len(saved) == 1 and [m["role"] for m in saved[0]["messages"]] == ["user", "assistant"] * 2
    assert saved[0]["title"] == "first line second line"
    assert saved[0]["messages"][1]["completion_id"].startswith("chatcmpl")


def test_stop_aborts_the_request_and_the_server_frees_it(servers, open_page):
    """Stop (the button, then Esc) aborts the fetch mid-answer: the server sees the connection close, aborts the
    engine request (running back to 0, its KV blocks freed) and generates no more tokens."""
    main = servers["main"]
    page = open_page(main.url + "/")
    before = status(main)
    assert before["engine"]["running"] == 0
    # the grammar allows nothing but 3,000 characters: ~2,000 tokens, far longer than the test waits
    settings(page, schema={"type": "string", "minLength": 3000, "maxLength": 3000}, max_tokens=3900)
    for how in ("button", "escape"):
        send(page, "Write a long answer")
        page.wait_for_function("() => document.querySelector('.msg.assistant:last-child .content').textContent.length > 30")
        assert status(main)["engine"]["running"] == 1
        if how == "button":
            page.click("#stop")
        else:
            page.keyboard.press("Escape")
        wait_done(page, timeout=5000)
        assert last_answer(page).locator(".finish").get_attribute("data-finish") == "stopped"
        deadline = time.monotonic() + 5
        while (now := status(main))["engine"]["running"] and time.monotonic() < deadline:
            time.sleep(0.05)
        assert now["engine"]["running"] == 0 and now["engine"]["waiting"] == 0
        assert now["engine"]["kv_blocks_used"] <= before["engine"]["kv_blocks_used"] + 1  # at most a cached prefix
        generated = now["tokens"]["generation"]
        time.sleep(0.5)
        assert status(main)["tokens"]["generation"] == generated  # nothing more is decoded
        assert metrics(main)["hearth_num_requests_running"] == 0
        shown = len(last_answer(page).locator(".content").inner_text())
        assert 30 < shown < 3000
    assert page.is_visible("#send") and not page.is_visible("#stop")


def test_an_adapter_is_picked_from_the_models_list(servers, open_page):
    """The picker lists /v1/models (the model, then its adapter); the adapter answers requests that name it."""
    main = servers["main"]
    page = open_page(main.url + "/")
    options = page.eval_on_selector_all("#model option", "os => os.map(o => [o.value, o.textContent])")
    assert options == [["paced", "paced"], ["tuned", "tuned (adapter)"]]
    settings(page, temperature=0, max_tokens=12)
    answers = {}
    for name in ("paced", "tuned"):
        page.select_option("#model", name)
        with page.expect_response(lambda r: r.url.endswith("/v1/chat/completions")) as got:
            send(page, "Tell me something")
        assert got.value.request.post_data_json["model"] == name
        wait_done(page)
        assert last_answer(page).locator(".who").inner_text() == name
        answers[name] = last_answer(page).locator(".content").inner_text()
        assert f'"model": "{name}"' in got.value.text() or f'"model":"{name}"' in got.value.text()
        page.click("#new-chat")
    assert answers["paced"] != answers["tuned"]  # greedy, same prompt: the adapter changes the answer
    page.reload()
    page.wait_for_selector("html[data-ready=true]", state="attached")
    assert page.input_value("#model") == "tuned"  # the choice is remembered


def test_regenerate_edit_and_copy(servers, open_page):
    main = servers["main"]
    page = open_page(main.url + "/", permissions=["clipboard-read", "clipboard-write"])
    settings(page, max_tokens=6)
    send(page, "Hello")
    wait_done(page)
    first = chats(page)[0]["messages"][1]["completion_id"]
    page.get_by_role("button", name="Answer again").click()
    wait_done(page)
    msgs = chats(page)[0]["messages"]
    assert len(msgs) == 2 and msgs[1]["completion_id"] != first  # replaced, not added
    page.get_by_role("button", name="Copy this message").last.click()
    assert page.evaluate("navigator.clipboard.readText()") == msgs[1]["content"]
    page.get_by_role("button", name="Edit and send again").click()
    page.fill(".edit textarea", "Hello again")
    page.locator(".edit").get_by_role("button", name="Send").click()
    wait_done(page)
    msgs = chats(page)[0]["messages"]
    assert [m["role"] for m in msgs] == ["user", "assistant"] and msgs[0]["content"] == "Hello again"
    assert msgs[1]["completion_id"] not in (first,)


def test_conversations_are_listed_renamed_exported_and_deleted(servers, open_page):
    main = servers["main"]
    page = open_page(main.url + "/")
    settings(page, max_tokens=4)
    send(page, "About rivers")
    wait_done(page)
    page.click("#new-chat")
    send(page, "About mountains")
    wait_done(page)
    titles = page.locator("#conversations .open").all_inner_texts()
    assert titles == ["About mountains", "About rivers"]  # newest first
    page.get_by_role("button", name="Rename About mountains").click()
    page.fill("#conversations input", "Peaks")
    page.press("#conversations input", "Enter")
    assert page.locator("#conversations .open").all_inner_texts() == ["Peaks", "About rivers"]
    with page.expect_download() as dl:
        page.get_by_role("button", name="Export Peaks as JSON").click()
    exported = json.loads(Path(dl.value.path()).read_text())
    assert exported["title"] == "Peaks" and exported["messages"][0]["content"] == "About mountains"
    with page.expect_download() as dl:
        page.click("#export-all")
    assert len(json.loads(Path(dl.value.path()).read_text())) == 2
    delete = page.get_by_role("button", name="Delete Peaks")
    delete.click()
    assert len(chats(page)) == 2  # the first click only asks
    delete.click()
    assert [c["title"] for c in chats(page)] == ["About rivers"]
    assert page.locator(".msg.user .content").inner_text() == "About rivers"  # the remaining one is opened
    page.reload()
    page.wait_for_selector("html[data-ready=true]", state="attached")
    assert page.locator("#conversations .open").all_inner_texts() == ["About rivers"]


def test_feedback_reaches_the_database(servers, open_page):
    """Good / Bad and "Suggest a better answer" post to /v1/feedback; the rows are in the capture database."""
    main = servers["main"]
    page = open_page(main.url + "/")
    assert page.is_visible("#capture-note")
    settings(page, max_tokens=5)
    send(page, "What is the capital of Peru?")
    wait_done(page)
    cid = chats(page)[0]["messages"][1]["completion_id"]
    page.get_by_role("button", name="Good answer").click()
    page.wait_for_selector(".msg.assistant button[aria-pressed=true]")
    page.get_by_role("button", name="Suggest a better answer").click()
    page.fill("#better-text", "Lima")
    page.fill("#better-comment", "the capital")
    page.locator("#better").get_by_role("button", name="Send").click()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with sqlite3.connect(main.db) as db:
            rows = db.execute("SELECT score, comment, correction FROM feedback WHERE completion_id = ? ORDER BY id",
                              (cid,)).fetchall()
        if len(rows) == 2:
            break
        time.sleep(0.1)
    assert rows == [(1.0, None, None), (-1.0, "the capital", "Lima")]
    with sqlite3.connect(main.db) as db:
        assert db.execute("SELECT model FROM completions WHERE id = ?", (cid,)).fetchone() == ("paced",)


# ---- untrusted output ---------------------------------------------------------------------------------------------
ATTACKS = [
    "<script>window.__pwned = 'script'</script>",
    "<img src=x onerror=window.__pwned='img'>",
    "[click me](javascript:window.__pwned='link')",
    "<a href=javascript:window.__pwned='a'>raw link</a>",
    "<svg onload=window.__pwned='svg'></svg>",
    "<iframe srcdoc='<script>parent.__pwned=1</script>'></iframe>",
    "<details open ontoggle=window.__pwned='details'>x</details>",
    "![pic](javascript:window.__pwned='image')",
    "[entity](jav&#x09;ascript:window.__pwned='entity')",
    "[data](data:text/html;base64,PHNjcmlwdD5hbGVydCgxKTwvc2NyaXB0Pg==)",
    "<math><mtext><table><mglyph><style><img src=x onerror=window.__pwned='mxss'>",
    "<form action=javascript:window.__pwned='form'><button>go</button></form>",
    "```\"><img src=x onerror=window.__pwned='fence'>\nx = 1\n```",
    "<style>body{display:none}</style>",
    "<base href=javascript:/>",
]


DANGEROUS = """root => {
    const bad = [];
    for (const el of root.querySelectorAll('*')) {
        const tag = el.tagName.toLowerCase();
        if (['script', 'iframe', 'svg', 'form', 'style', 'base', 'object', 'embed', 'math', 'link', 'meta'].includes(tag))
            bad.push(tag);
        for (const a of el.attributes) {
            if (a.name.startsWith('on') || a.name === 'style' || a.name === 'srcdoc') bad.push(`${tag} ${a.name}`);
            if (['href', 'src', 'action', 'formaction', 'xlink:href'].includes(a.name)
                && /^\\s*(javascript|data|vbscript):/i.test(a.value)) bad.push(`${tag} ${a.name}=${a.value}`);
        }
    }
    return bad;
}"""


def assert_nothing_ran(page) -> None:
    content = last_answer(page).locator(".content")
    assert content.evaluate(DANGEROUS) == []
    for link in content.locator("a").all():  # following a link runs nothing either (none leads anywhere here)
        link.click(no_wait_after=True)
    page.wait_for_timeout(150)  # an onerror / onload / ontoggle would have fired by now
    assert page.evaluate("window.__pwned") is None
    origin = page.evaluate("location.origin")
    scripts = page.evaluate("[...document.scripts].map(s => s.src)")
    assert scripts and all(s.startswith(origin + "/ui/") for s in scripts), scripts  # only the page's own
    assert page.is_visible("#prompt")  # no style from an answer hid the page


def test_model_output_is_shown_never_run(servers, open_page):
    """A real server forced (by the page's own JSON-schema box) to answer with script, an image with onerror and a
    javascript: link: they are shown as text, and nothing runs."""
    main = servers["main"]
    page = open_page(main.url + "/")
    payload = " ".join(ATTACKS[:3])
    settings(page, schema=forced(payload), max_tokens=400)
    send(page, "Say something dangerous")
    wait_done(page)
    assert json.loads(chats(page)[0]["messages"][1]["content"]) == payload  # the model really wrote it
    shown = last_answer(page).locator(".content").inner_text()
    assert "<script>window.__pwned = 'script'</script>" in shown and "<img src=x onerror" in shown
    assert_nothing_ran(page)


def test_crafted_streams_run_nothing(servers, open_page):
    """Each attack in a stream that Playwright answers in the server's place: marked + DOMPurify + the CSP."""
    main = servers["main"]
    page = open_page(main.url + "/")
    answer = {"text": ""}

    def stream(route):
        events = [{"id": "chatcmpl-x", "object": "chat.completion.chunk", "created": 0, "model": "paced",
                   "choices": [{"index": 0, "delta": {"content": answer["text"][i:i + 7]}, "finish_reason": None}]}
                  for i in range(0, len(answer["text"]), 7)]
        events.append({"id": "chatcmpl-x", "object": "chat.completion.chunk", "created": 0, "model": "paced",
                       "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
        body = "".join(f"data: {json.dumps(e)}\n\n" for e in events) + "data: [DONE]\n\n"
        route.fulfill(status=200, headers={"content-type": "text/event-stream"}, body=body)

    page.route("**/v1/chat/completions", stream)
    for attack in ATTACKS:
        answer["text"] = f"Here you go:\n\n{attack}\n\nThe end."
        page.click("#new-chat")
        send(page, "Attack")
        wait_done(page)
        assert "The end." in last_answer(page).inner_text()
        assert_nothing_ran(page)
    answer["text"] = "```python\ndef f():\n    return '<b>'\n```"  # highlighting keeps code text as text
    page.click("#new-chat")
    send(page, "Code")
    wait_done(page)
    code = last_answer(page).locator("pre code")
    page.wait_for_selector(".msg.assistant pre code.hljs")
    assert code.inner_text().rstrip("\n") == "def f():\n    return '<b>'" and code.locator(".hljs-keyword").count() >= 1
    assert page.evaluate("window.__pwned") is None


# ---- the API key --------------------------------------------------------------------------------------------------
def test_the_page_asks_for_the_api_key(servers, open_page):
    """With --api-key-file the page loads without the key; its API calls get 401, it asks for the key (a wrong one is
    asked again), keeps it in sessionStorage and sends it as a bearer token."""
    keyed = servers["keyed"]
    assert httpx.get(keyed.url + "/").status_code == 200
    assert httpx.get(keyed.url + "/v1/models").status_code == 401
    page = open_page(keyed.url + "/", ready=False)
    dialog = page.get_by_role("dialog", name="API key needed")
    dialog.wait_for()
    page.fill("#api-key", "wrong key")
    page.press("#api-key", "Enter")
    dialog.wait_for()
    page.wait_for_function("() => document.querySelector('dialog p').textContent.includes('refused')")
    page.fill("#api-key", KEY)
    page.get_by_role("button", name="Use key").click()
    page.wait_for_selector("html[data-ready=true]", state="attached")
    assert page.eval_on_selector_all("#model option", "os => os.map(o => o.value)") == ["tiny"]
    assert page.evaluate("sessionStorage.getItem('hearth.apiKey')") == KEY
    assert page.evaluate("localStorage.getItem('hearth.apiKey')") is None
    auth = []
    page.on("request", lambda r: auth.append(r.headers.get("authorization")) if "/v1/" in r.url else None)
    settings(page, max_tokens=4)
    send(page, "Hello")
    wait_done(page)
    assert auth == [f"Bearer {KEY}"] and not last_answer(page).locator(".failed").count()
    assert page.is_hidden("#capture-note") and not page.get_by_role("button", name="Good answer").count()
    page.reload()  # the same tab keeps the key
    page.wait_for_selector("html[data-ready=true]", state="attached")
    assert not page.get_by_role("dialog").count()


# ---- the dashboard ------------------------------------------------------------------------------------------------
def histogram_quantile(q: float, m: dict[str, float], name: str) -> float | None:
    """Prometheus' histogram_quantile over /metrics' buckets, written again here (status.py has its own)."""
    bounds = sorted((float(k[len(name) + 8:-1]), v) for k, v in m.items() if k.startswith(name + "_bucket{"))
    total = bounds[-1][1]
    if not total:
        return None
    rank, low, below = q * total, 0.0, 0.0
    for le, count in bounds:
        if count >= rank:
            if le == float("inf"):
                return low
            return le if count == below else low + (le - low) * (rank - below) / (count - below)
        low, below = le, count
    return low


def test_dashboard_shows_the_numbers_of_metrics(servers, open_page):
    main = servers["main"]
    for _ in range(2):  # some traffic to count
        r = httpx.post(main.url + "/v1/chat/completions", timeout=60,
                       json={"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 8})
        assert r.status_code == 200
    page = open_page(main.url + "/dashboard")
    m = metrics(main)
    page.wait_for_function("() => document.getElementById('gen-tokens').dataset.value !== undefined")
    values = page.evaluate("""Object.fromEntries(['running', 'waiting', 'kv', 'gen-tokens', 'prompt-tokens']
        .map(id => [id, Number(document.getElementById(id).dataset.value)]))""")
    assert values["running"] == m["hearth_num_requests_running"] == 0
    assert values["waiting"] == m["hearth_num_requests_waiting"] == 0
    assert values["kv"] == pytest.approx(m["hearth_kv_cache_usage_perc"])
    assert values["gen-tokens"] == m["hearth_generation_tokens_total"] > 0
    assert values["prompt-tokens"] == m["hearth_prompt_tokens_total"] > 0
    assert int(page.inner_text("#gen-tokens").replace(",", "")) == m["hearth_generation_tokens_total"]
    for key, name in (("ttft", "hearth_time_to_first_token_seconds"), ("itl", "hearth_inter_token_latency_seconds")):
        row = page.locator(f"#latency tr[data-key={key}]")
        assert float(row.get_attribute("data-count")) == m[name + "_count"]
        for q in (50, 90, 99):
            want = histogram_quantile(q / 100, m, name)
            assert float(row.get_attribute(f"data-p{q}")) == pytest.approx(want, rel=1e-9), (key, q)
    assert page.inner_text("#model-name") == "paced" and page.inner_text("#adapters") == "tuned"
    assert page.inner_text("#capture").startswith("on") and page.inner_text("#guard") == "off"
    assert "no guard runs" in page.inner_text("#guard-decisions")
    cost = page.inner_text("#cost")  # the ledger (on by default) has charged the requests
    assert "Tokens" in cost and "Energy" in cost and "$ / 1M tokens" in cost
    assert page.locator("#api-prices tr").count() >= 3
    page.wait_for_function("() => document.getElementById('chart').getAttribute('aria-label').startsWith('Generated')")
    # the chart is drawn: some pixels in the accent colour
    drawn = page.evaluate("""() => { const c = document.getElementById('chart');
        const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data; let n = 0;
        for (let i = 3; i < d.length; i += 4) if (d[i]) n++; return n; }""")
    assert drawn > 500


# ---- phone, page routes, size ---------------------------------------------------------------------------------------
def test_phone_layout(servers, open_page):
    """At 390x844 nothing scrolls sideways (long code lines and tables scroll inside the answer), the composer is
    on screen, and the side bar opens from its button."""
    main = servers["main"]
    page = open_page(main.url + "/", viewport=PHONE, is_mobile=True, has_touch=True, device_scale_factor=2)
    wide = ("A table:\n\n| " + " | ".join(f"column {i}" for i in range(12)) + " |\n|" + "---|" * 12 + "\n| "
            + " | ".join("x" * 12 for _ in range(12)) + " |\n\n```python\nprint('" + "y" * 300 + "')\n```\n"
            + "z" * 400)
    page.route("**/v1/chat/completions", lambda route: route.fulfill(
        status=200, headers={"content-type": "text/event-stream"},
        body="data: " + json.dumps({"id": "chatcmpl-p", "object": "chat.completion.chunk", "created": 0, "model": "paced",
                                    "choices": [{"index": 0, "delta": {"content": wide}, "finish_reason": "stop"}]})
             + "\n\ndata: [DONE]\n\n"))
    for i in range(3):
        send(page, f"Question {i} " + "w" * 200)
        wait_done(page)
    for url in ("/", "/dashboard"):
        if url != "/":
            page.goto(main.url + url)
            page.wait_for_selector("html[data-ready=true]", state="attached")
        width = page.evaluate("[document.documentElement.scrollWidth, document.body.scrollWidth]")
        assert max(width) <= PHONE["width"], (url, width)
    page.goto(main.url + "/")
    page.wait_for_selector("html[data-ready=true]", state="attached")
    box = page.locator("#composer").bounding_box()
    assert box["y"] >= 0 and box["y"] + box["height"] <= PHONE["height"] and box["width"] <= PHONE["width"]
    assert page.is_visible("#send") and page.is_visible("#prompt")
    sidebar = page.locator("#sidebar")
    assert sidebar.bounding_box()["x"] + sidebar.bounding_box()["width"] <= 0  # off screen
    page.click("#toggle-sidebar")
    page.wait_for_function("() => document.getElementById('sidebar').getBoundingClientRect().x >= 0")
    assert page.get_attribute("#toggle-sidebar", "aria-expanded") == "true"
    page.locator("#conversations .open").first.click()  # choosing a conversation closes it
    page.wait_for_function("() => document.getElementById('sidebar').getBoundingClientRect().right <= 0")


def test_page_routes_headers_and_no_ui(servers):
    """The pages carry a strict CSP (scripts from this server only, no inline script anywhere in them); the static
    files need no key, the status does; --no-ui serves no page and keeps the API."""
    main, keyed, plain = servers["main"], servers["keyed"], servers["plain"]
    for path in ("/", "/dashboard"):
        r = httpx.get(main.url + path)
        csp = r.headers["content-security-policy"]
        assert r.status_code == 200 and "script-src 'self'" in csp and "unsafe" not in csp
        assert "frame-ancestors 'none'" in csp and r.headers["x-content-type-options"] == "nosniff"
        scripts = re.findall(r"<script[^>]*>", r.text)
        assert scripts and all('src="ui/' in s and 'type="module"' in s for s in scripts)
        assert not re.search(r"<script[^>]*>[^<]", r.text)  # no inline script
        assert not re.search(r"\son[a-z]+\s*=", r.text) and "style=" not in r.text  # no handlers, no inline style
        assert "http://" not in r.text and "https://" not in r.text  # nothing from elsewhere
    r = httpx.get(main.url + "/ui/chat.js", headers={"accept-encoding": "gzip"})
    assert r.headers["content-encoding"] == "gzip" and r.headers["content-type"].startswith("text/javascript")
    assert httpx.get(main.url + "/ui/chat.js", headers={"if-none-match": r.headers["etag"]}).status_code == 304
    assert httpx.get(main.url + "/ui/vendor/marked.LICENSE").status_code == 404  # only web files are served
    assert httpx.get(main.url + "/ui/../../app.py").status_code == 404
    assert httpx.get(keyed.url + "/ui/chat.js").status_code == 200
    assert httpx.get(keyed.url + "/hearth/status").status_code == 401
    assert httpx.get(keyed.url + "/hearth/status", headers={"authorization": f"Bearer {KEY}"}).status_code == 200
    for path in ("/", "/dashboard", "/ui/chat.js"):
        assert httpx.get(plain.url + path).status_code == 404, path
    assert httpx.get(plain.url + "/hearth/status").status_code == 200
    assert httpx.get(plain.url + "/v1/models").json()["data"][0]["id"] == "tiny"


def test_page_is_small_and_quick(servers, open_page):
    """The chat page's first load: what crosses the wire, and the time until it answers input (its modules run and
    the models are listed). Printed for the record; bounded loosely for a shared 2-core machine."""
    main = servers["main"]
    page = open_page(main.url + "/")
    got = page.evaluate("""() => {
        const nav = performance.getEntriesByType('navigation')[0];
        const res = performance.getEntriesByType('resource');
        return {transfer: nav.transferSize + res.reduce((n, r) => n + r.transferSize, 0),
                body: nav.decodedBodySize + res.reduce((n, r) => n + r.decodedBodySize, 0),
                files: res.length + 1, ready: performance.getEntriesByName('hearth-ready')[0].startTime};
    }""")
    print(f"\nchat page: {got['files']} files, {got['transfer'] / 1024:.1f} KiB transferred "
          f"({got['body'] / 1024:.1f} KiB uncompressed), ready after {got['ready']:.0f} ms")
    assert got["transfer"] < 100 * 1024
    assert got["ready"] < 5000
