"""Chat templates and prompts cannot hang or stall the server (issue 14, item 3).

A template comes from the model file, so it is untrusted. Jinja's sandbox keeps it from running code, but before
this a template looping 10^10 times or building a 10 GB string hung the event loop for good (/health dead, SIGTERM
ignored). Now each render runs in a worker process on a budget (hearth/tokenizer/sandbox.py), off the event loop,
and a prompt too long for the context is refused from its length before it is tokenized
(hearth/tokenizer/limits.py). The last tests drive a real `hearth serve` and `hearth run` on a tiny model whose
template is hostile.
"""

from __future__ import annotations

import asyncio
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time

import httpx
import pytest

from fake_engine import FakeEngine, tiny_tokenizer
from hearth.server.app import build_app
from hearth.tokenizer import ChatTemplate, Tokenizer
from hearth.tokenizer.chat import CHATML, RenderBudget, TemplateBudgetError
from hearth.tokenizer.limits import chars_per_token, surely_too_long
from hearth.tokenizer.sandbox import RenderPool
from hearth.weights.types import TokenizerData

HI = [{"role": "user", "content": "hi"}]
FAST = RenderBudget(seconds=0.5)

HOSTILE = {
    "nested_range": "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
    "string_product": "{{ 'x' * 100000 * 100000 }}",
    "center": "{{ '' | center(10**9) }}",
    "percent_width": "{{ '%*s' % (10**9, '') }}",
    "doubling": "{% set ns = namespace(s='x') %}{% for i in range(64) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}{{ ns.s }}",
    "output_flood": "{% set line = '0123456789' * 10000 %}{% for i in range(100000) %}{{ line }}{% endfor %}",
    "bigint_power": "{% set a = 7 %}{{ a ** 1000000000 > 1 }}",
    "folded_at_compile": "{{ 7 ** 1000000000 > 1 }}",  # Jinja's optimizer computes constants while compiling
}
WHICH_LIMIT = {"nested_range": "ran longer", "string_product": "memory", "center": "memory", "percent_width": "memory",
               "doubling": "memory|ran longer", "output_flood": "characters", "bigint_power": "ran longer",
               "folded_at_compile": "ran longer"}


@pytest.fixture(scope="module")
def pool():
    p = RenderPool(size=1)
    yield p
    p.close()


# ---------------------------------------------------------------- the render budget


@pytest.mark.parametrize("name", list(HOSTILE))
def test_hostile_template_ends_in_a_budget_error_quickly(pool, name):
    start = time.monotonic()
    with pytest.raises(TemplateBudgetError) as err:
        ChatTemplate(HOSTILE[name], budget=FAST, pool=pool).render(HI)
    took = time.monotonic() - start
    msg = str(err.value)
    assert "render budget" in msg and re.search(WHICH_LIMIT[name], msg) and "\n" not in msg, msg
    assert took < FAST.seconds + 1.5, took  # the worker's timer, or the kill one second past the budget
    assert ChatTemplate(CHATML, pool=pool).render(HI) == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"


def test_a_worker_that_stops_answering_is_killed_and_replaced(pool):
    """The hard bound: a worker that does not answer (here: stopped, as one stuck in a C call) is killed one second
    past the budget, and the next render gets a fresh one."""
    tpl = ChatTemplate(CHATML, budget=FAST, pool=pool)
    tpl.render(HI)
    worker = pool._workers[0].proc
    os.kill(worker.pid, signal.SIGSTOP)
    start = time.monotonic()
    with pytest.raises(TemplateBudgetError, match="render budget"):
        tpl.render(HI)
    assert FAST.seconds < time.monotonic() - start < FAST.seconds + 2
    assert worker.poll() is not None  # killed and reaped
    assert tpl.render(HI).startswith("<|im_start|>user") and pool._workers[0].proc.pid != worker.pid


def test_worker_imports_jinja_only_and_renders_fast(pool):
    tpl = ChatTemplate(CHATML, pool=pool)
    conversation = [{"role": "user" if i % 2 == 0 else "assistant", "content": f"message {i} " * 20} for i in range(8)]
    tpl.render(conversation)
    maps = open(f"/proc/{pool._workers[0].proc.pid}/maps").read()
    assert "torch" not in maps and "tokenizers" not in maps
    n, start = 50, time.perf_counter()
    for _ in range(n):
        tpl.render(conversation)
    per_render = (time.perf_counter() - start) / n
    assert per_render < 0.01, per_render  # a pipe round trip: about 0.3 ms on an idle machine


def test_budget_is_checked():
    for bad in (dict(seconds=0), dict(max_output_chars=0), dict(memory_bytes=1 << 20)):
        with pytest.raises(ValueError):
            RenderBudget(**bad)


def test_messages_survive_the_trip_to_the_worker(pool):
    """Lone surrogates (from bytes that were not UTF-8), non-BMP characters and nested data arrive intact."""
    tpl = ChatTemplate("{% for m in messages %}{{ m.content }}|{{ m.meta | tojson }}{% endfor %}", pool=pool)
    out = tpl.render([{"role": "user", "content": "a\ud800b 😀 é", "meta": {"k": [1, 2.5, None, True, "ü"]}}])
    assert out == 'a\ud800b 😀 é|{"k": [1, 2.5, null, true, "ü"]}'


# ---------------------------------------------------------------- a prompt's length, before tokenizing


def _spm() -> Tokenizer:
    from tiny import train_spm_tokenizer

    return Tokenizer(train_spm_tokenizer(), TokenizerData(bos_id=1, eos_ids=(2,), add_bos=True))


def _smollm2() -> Tokenizer:
    from hearth.loader import resolve_model
    from hearth.weights import open_checkpoint

    return Tokenizer.from_data(open_checkpoint(resolve_model("smollm2")).tokenizer)


@pytest.mark.parametrize("make", [tiny_tokenizer, _spm, _smollm2], ids=["bpe", "spm", "smollm2"])
def test_length_bound_never_refuses_a_text_that_fits(make):
    tok = make()
    L = chars_per_token(tok)
    assert L is not None and 4 <= L <= 128
    rnd = random.Random(0)
    # what makes tokens long (runs of spaces, special tokens) or yields none (SmolLM2 has no piece for "\x04")
    pieces = [" " * 70, "\x04", "\x1d\x06", "<|im_start|>", "<|endoftext|>", "😀", "e\u0301", "你好", "\t\n", "word ", "1234"]
    for _ in range(200):
        text = "".join(rnd.choice(pieces) for _ in range(rnd.randrange(1, 60)))
        n = len(tok.encode(text, add_bos=False))
        for budget in (1, n - 1, n, n + 1, len(text) // L):
            if budget >= 0 and surely_too_long(tok, text, budget):
                assert n > budget, (text, n, budget)
    assert surely_too_long(tok, "x" * (100 * L + 1), 100) and not surely_too_long(tok, "x" * 100, 100)


def test_no_bound_for_a_tokenizer_that_drops_characters():
    assert chars_per_token(Tokenizer.placeholder(50)) is None  # whitespace-split words: spaces become no token
    assert not surely_too_long(Tokenizer.placeholder(50), " " * 10**6, 10)


def test_chat_session_drops_or_refuses_megabytes_without_tokenizing():
    """The CLI's chat: history too long by its length alone loses its oldest exchanges, and a message too long
    alone is one ContextLengthError, neither tokenizing the megabyte."""
    from types import SimpleNamespace

    from store_kit import _tiny_parts
    from hearth.engine.chat import ChatSession
    from hearth.engine.sampling import SamplingParams
    from hearth.errors import ContextLengthError
    from hearth.model import Transformer

    cfg, state, tok = _tiny_parts()
    model = Transformer(cfg).eval()
    model.load_state_dict(state, strict=False)
    counting = CountingTokenizer(tok)
    lm = SimpleNamespace(model=model, tokenizer=counting, chat_template=ChatTemplate(CHATML, tok.special_tokens))
    session = ChatSession(lm, SamplingParams(max_tokens=2, temperature=0, ignore_eos=True))
    big = "lorem ipsum " * 100_000
    session.messages = [{"role": "user", "content": big}, {"role": "assistant", "content": "ok"}]
    c = session.complete("Hi")
    assert session.dropped == 1 and len(c.token_ids) == 2 and session.messages[0]["content"] == "Hi"
    with pytest.raises(ContextLengthError, match="characters long in the chat template.*context of 512 tokens"):
        session.complete(big)
    assert counting.encoded_chars < 1000


# ---------------------------------------------------------------- the server (in process, fake engine)

HOSTILE_BY_MESSAGE = (
    "{% set last = messages[-1]['content'] %}"
    "{% if last == 'loop' %}" + HOSTILE["nested_range"] + "{% elif last == 'product' %}" + HOSTILE["string_product"]
    + "{% elif last == 'center' %}" + HOSTILE["center"] + "{% elif last == 'percent' %}" + HOSTILE["percent_width"]
    + "{% elif last == 'double' %}" + HOSTILE["doubling"] + "{% else %}" + CHATML + "{% endif %}"
)


class CountingTokenizer:
    """The engine's tokenizer, counting the characters it was asked to encode."""

    def __init__(self, tok: Tokenizer):
        self.tok, self.encoded_chars = tok, 0

    def __getattr__(self, name):
        return getattr(self.tok, name)

    def encode(self, text, *args, **kwargs):
        self.encoded_chars += len(text)
        return self.tok.encode(text, *args, **kwargs)


def _app(budget: RenderBudget = FAST):
    engine = FakeEngine(max_model_len=256)
    engine.chat_template = ChatTemplate(HOSTILE_BY_MESSAGE, engine.tokenizer.special_tokens, budget=budget)
    engine.tokenizer = CountingTokenizer(engine.tokenizer)
    return engine, build_app(engine, max_body_bytes=4 << 20)


async def _health_while(client: httpx.AsyncClient, work) -> tuple[object, float]:
    """Run `work` while polling /health every 10 ms; the result and the longest the loop kept /health waiting."""
    task = asyncio.ensure_future(work)
    worst = 0.0
    while not task.done():
        start = time.monotonic()
        assert (await client.get("/health")).status_code == 200
        await asyncio.sleep(0.01)
        worst = max(worst, time.monotonic() - start - 0.01)  # a loop blocked during the sleep counts too
    return task.result(), worst


def test_server_answers_a_hostile_render_with_400_and_stays_responsive():
    engine, app = _app()

    async def main():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://test") as c:
            for attack in ("loop", "product", "center", "percent", "double"):
                start = time.monotonic()
                chat = c.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": attack}]})
                r, worst = await _health_while(c, chat)
                assert r.status_code == 400, r.text
                err = r.json()["error"]
                assert "chat template" in err["message"] and "render budget" in err["message"], err
                assert time.monotonic() - start < FAST.seconds + 1.5
                assert worst < 0.35, (attack, worst)
            tok = await c.post("/tokenize", json={"messages": [{"role": "user", "content": "loop"}]})
            assert tok.status_code == 400 and "render budget" in tok.json()["error"]["message"]
            ok = await c.post("/v1/chat/completions", json={"messages": HI, "max_tokens": 2})
            assert ok.status_code == 200 and ok.json()["choices"][0]["message"]["content"], ok.text

    asyncio.run(main())


def test_megabyte_prompts_are_refused_without_tokenizing():
    engine, app = _app(RenderBudget())
    big = "lorem ipsum dolor sit amet " * 60_000  # 1.6 MB

    async def main():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://test", timeout=30) as c:
            start = time.monotonic()
            three = asyncio.gather(c.post("/v1/completions", json={"prompt": big, "max_tokens": 1}),
                                   c.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": big}]}),
                                   c.post("/v1/embeddings", json={"input": ["hello", big]}))
            (completion, chat, embedding), worst = await _health_while(c, three)
            for r, param in ((completion, "prompt"), (chat, "messages"), (embedding, "input.1")):
                assert r.status_code == 400, r.text
                err = r.json()["error"]
                assert err["code"] == "context_length_exceeded" and err["param"] == param, err
                assert "maximum context length is 256 tokens" in err["message"], err
            assert engine.tokenizer.encoded_chars < 10_000  # the megabytes were never tokenized
            assert time.monotonic() - start < 5 and worst < 1.0, worst
            ok = await c.post("/v1/completions", json={"prompt": "lorem ipsum", "max_tokens": 2})
            assert ok.status_code == 200, ok.text

    asyncio.run(main())


# ---------------------------------------------------------------- a real `hearth serve` and `hearth run`


@pytest.fixture(scope="module")
def hostile_model(tmp_path_factory):
    """A tiny random-weight GGUF whose tokenizer.chat_template attacks when the last message names an attack."""
    from store_kit import _tiny_parts
    from hearth.weights.gguf_writer import write_gguf

    cfg, state, tok = _tiny_parts()
    return write_gguf(tmp_path_factory.mktemp("hostile") / "hostile.gguf", cfg, state, tok, HOSTILE_BY_MESSAGE)


def _streams(url: str, stop: threading.Event, result: dict) -> None:
    """Completion streams back to back until `stop`; records when each event came and whether each stream ended."""
    body = {"prompt": "Once upon a time", "max_tokens": 100, "ignore_eos": True, "temperature": 0, "stream": True}
    times, ended = [], []
    while not stop.is_set():
        last = None
        with httpx.stream("POST", url + "/v1/completions", json=body, timeout=120) as r:
            for line in r.iter_lines():
                if line.startswith("data: "):
                    times.append(time.monotonic())
                    last = line
        ended.append(last == "data: [DONE]")
    result.update(times=times, ended=ended)


def test_real_server_survives_hostile_templates_and_megabyte_prompts(tmp_path, hostile_model):
    from serve_kit import ServerProcess

    server = ServerProcess(tmp_path, "hostile", "--dtype", "float32", "--kv-cache-gib", "0.05",
                           "--max-body-bytes", str(4 << 20), model=str(hostile_model), threads=1)
    try:
        server.wait_healthy()
        url, health = server.url, []

        def poll(stop: threading.Event) -> None:
            while not stop.is_set():
                start = time.monotonic()
                assert httpx.get(url + "/health", timeout=10).status_code == 200
                health.append(time.monotonic() - start)
                time.sleep(0.02)

        stream: dict = {}
        stop = threading.Event()
        threads = [threading.Thread(target=poll, args=(stop,)), threading.Thread(target=_streams, args=(url, stop, stream))]
        for t in threads:
            t.start()
        time.sleep(0.3)  # the streams are under way
        for attack in ("loop", "product", "center", "percent", "double"):
            start = time.monotonic()
            r = httpx.post(url + "/v1/chat/completions", json={"messages": [{"role": "user", "content": attack}]},
                           timeout=30)
            assert r.status_code == 400 and "render budget" in r.json()["error"]["message"], r.text
            assert time.monotonic() - start < 2 + 2.5, attack  # the default budget is 2 s
            if attack == "loop":
                loop = (start, time.monotonic())
        big = "lorem ipsum dolor sit amet " * 60_000  # 1.6 MB
        start = time.monotonic()
        r = httpx.post(url + "/v1/completions", json={"prompt": big, "max_tokens": 1}, timeout=30)
        assert r.status_code == 400 and r.json()["error"]["code"] == "context_length_exceeded", r.text
        assert time.monotonic() - start < 3  # the tiny tokenizer takes ~5 s a megabyte: this one was not tokenized
        stop.set()
        for t in threads:
            t.join(timeout=120)
        times = stream["times"]
        assert all(stream["ended"]) and len(times) > 100, stream["ended"]
        assert sum(loop[0] < t < loop[1] for t in times) > 10  # tokens kept coming while the template looped
        assert max(b - a for a, b in zip(times, times[1:])) < 1.0
        # Milliseconds on an idle machine; the bound leaves room for a busy one and is still far below the 2 s a
        # render on the event loop would hold it (before, /health never answered again).
        assert max(health) < 1.0, sorted(health)[-5:]
        r = httpx.post(url + "/v1/chat/completions", json={"messages": HI, "max_tokens": 3}, timeout=30)
        assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 3, r.text
    finally:
        server.stop()
    assert server.proc.returncode == 0  # SIGTERM ends it cleanly (before, only SIGKILL did)


def test_cli_run_gives_one_error_line_for_a_hostile_template(hostile_model):
    start = time.monotonic()
    p = subprocess.run([sys.executable, "-m", "hearth.cli", "run", str(hostile_model), "loop", "--max-tokens", "2"],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 1, p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: the chat template exceeded its render budget"), p.stderr
    assert time.monotonic() - start < 60
