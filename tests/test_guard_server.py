"""The guard in the server (issue 16, "In the server"): input checks, output checks behind a hold-back window,
POST /v1/moderations, the flag action, metrics, and `hearth serve --guard`'s options.

A tiny random-weight model (2 layers, 2K context, an F32 GGUF) serves, with a random LoRA adapter of it as the guard,
on the same engine as `hearth serve` puts it. The guard's answers are noise (P(unsafe) ~0.48), so the policy's
threshold decides every outcome: 0.000001 flags everything, 0.999999 nothing. The apps run in-process over one shared
engine, driven by the official openai SDK through a TestClient; one test starts the real `hearth serve --guard`.
"""

from __future__ import annotations

import json
import re
import socket
import threading

import httpx
import openai
import pytest
import torch
from fastapi.testclient import TestClient

import store_kit
import tiny
from hearth.engine.async_engine import AsyncEngine, EngineConfig
from hearth.guard.classifier import GuardFormat, Verdict
from hearth.guard.policy import Policy, parse_policy
from hearth.guard.taxonomy import OPENAI_CATEGORIES
from hearth.server.app import build_app
from hearth.server.guard_plan import same_weights
from hearth.server.guarding import ServerGuard
from serve_kit import ServerProcess
from store_kit import one_line_error, run_main

pytestmark = pytest.mark.usefixtures("one_thread")

EVERYTHING, NOTHING = 0.000001, 0.999999  # thresholds: flag every text, flag none
REFUSAL = "Not here, sorry."
HELLO = [{"role": "user", "content": "How do I bake bread?"}]
NOISE = {"temperature": 0, "extra_body": {"ignore_eos": True}}  # the tiny model's text, never ended early by EOS


def write_tiny(path):
    """A tiny F32 GGUF with a 2K context: the guard's instructions alone are ~580 of its tokens."""
    from hearth.weights.gguf_writer import write_gguf

    model = tiny.random_transformer(vocab_size=tiny.TOKENIZER_VOCAB, max_seq_len=2048, tie_embeddings=True)
    _, _, tok = store_kit._tiny_parts()
    return write_gguf(path, model.config, tiny.state_dict_of(model), tok, tiny.CHAT_TEMPLATE,
                      metadata={"general.name": "tiny"})


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    from hearth.tune.lora import LoraConfig
    from lora_kit import make_adapter

    d = tmp_path_factory.mktemp("guard")
    model = write_tiny(d / "tiny.gguf")
    guard = make_adapter(d / "guard", LoraConfig(r=4, alpha=8), seed=0, std=0.05, model=str(model))
    (guard / "recipe.json").write_text(json.dumps({"base": str(model)}))  # as `hearth guard train` names its base
    return model, guard


@pytest.fixture(scope="module")
def engine(files):
    from hearth.loader import load

    model, guard = files
    eng = AsyncEngine(load(str(model), dtype="float32"), EngineConfig(num_blocks=512, max_num_seqs=8,
                                                                         adapters={"guard": str(guard)}), "tiny")
    eng.start()
    yield eng
    eng.shutdown()


def policy(threshold: float, check: str = "both", **actions: str) -> Policy:
    return parse_policy({"threshold": threshold, "check": check, "refusal": REFUSAL, "actions": actions})


class NamesS1(GuardFormat):
    """A guard that, when unsafe, names S1 (Violent Crimes): a random adapter never writes category codes."""

    def verdict(self, answer, scores, dropped=0):
        return super().verdict("unsafe\nS1", scores, dropped)


class FlagsLongAnswers(GuardFormat):
    """Blocks an answer once it is longer than LIMIT characters: a stream's first windows pass, a later one is
    flagged. (It remembers the last answer it rendered: one stream at a time.)"""

    LIMIT = 10
    last = 0

    def render(self, turns, role):
        self.last = len(turns[-1]["content"]) if role == "assistant" else 0
        return super().render(turns, role)

    def verdict(self, answer, scores, dropped=0):
        v = super().verdict(answer, scores, dropped)
        return Verdict(v.score, True, (), "block", dropped, answer) if self.last > self.LIMIT else v


@pytest.fixture(scope="module")
def serve(engine):
    """serve(policy, holdback=256, fmt=GuardFormat) -> an openai client of an app with that guard (None: no guard),
    and its TestClient (for /metrics and raw requests)."""
    clients: list[TestClient] = []

    def make(pol: Policy | None, holdback: int = 256, fmt=GuardFormat):
        guard = None
        if pol is not None:
            guard = ServerGuard(engine, fmt(engine.tokenizer, engine.chat_template, pol, engine.max_model_len), "guard",
                                holdback=holdback)
        http = TestClient(build_app(engine, served_model_name="tiny", guard=guard))
        http.__enter__()
        clients.append(http)
        return openai.OpenAI(base_url="http://testserver/v1", api_key="x", http_client=http, max_retries=0), http

    yield make
    for c in clients:
        c.__exit__(None, None, None)


def metric(http: TestClient, name: str, **labels: str) -> float:
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in http.get("/metrics").text.splitlines():
        m = re.fullmatch(rf"{name}\{{(.*)\}} (\S+)", line)
        if m and ",".join(sorted(m.group(1).split(","))) == want:
            return float(m.group(2))
    return 0.0


def chat_stream(client, **kw) -> tuple[str, str | None]:
    content, reason = "", None
    for chunk in client.chat.completions.create(model="tiny", messages=HELLO, stream=True, **kw):
        for c in chunk.choices:
            content += c.delta.content or ""
            reason = c.finish_reason or reason
    return content, reason


# ------------------------------------------------------------------------------------------------ moderations


def test_moderations_string_and_list(serve):
    client, _ = serve(policy(NOTHING))
    r = client.moderations.create(model="guard", input="How do I bake bread?")
    assert r.model == "guard" and r.id.startswith("modr-") and len(r.results) == 1
    res = r.results[0]
    assert res.flagged is False and res.categories.violence is False and res.category_scores.violence == 0.0
    cats, scores = res.categories.model_dump(by_alias=True), res.category_scores.model_dump(by_alias=True)
    codes = {f"S{i}" for i in range(1, 15)}
    assert set(OPENAI_CATEGORIES) | codes <= set(cats) and set(cats) == set(scores)  # OpenAI's names + the S-codes
    assert not any(cats.values())

    flagging, _ = serve(policy(EVERYTHING))
    r = flagging.moderations.create(input=["Hello", {"type": "text", "text": "Hi"}, "Bye"])
    assert [x.flagged for x in r.results] == [True, True, True]
    r = flagging.moderations.create(model="omni-moderation-latest", input="Hello")  # a name OpenAI clients send
    assert r.results[0].flagged and r.model == "omni-moderation-latest"

    named, _ = serve(policy(EVERYTHING, S1="flag"), fmt=NamesS1)
    res = named.moderations.create(input="Hello").results[0]
    cats, scores = res.categories.model_dump(by_alias=True), res.category_scores.model_dump(by_alias=True)
    assert res.flagged and cats["violence"] and cats["S1"] and not cats["S2"] and not cats["hate"]
    assert 0 < scores["S1"] == scores["violence"] <= 1 and scores["S2"] == 0


def test_moderation_errors_in_openai_shape(serve):
    client, http = serve(policy(NOTHING))
    for bad, says in (("", "empty"), ([], "empty"), (["ok", "  "], "item 1 is empty"), (["x"] * 33, "at most 32"),
                      ([{"type": "image_url", "image_url": {"url": "http://x"}}], "only text"), ([3], "string")):
        with pytest.raises(openai.BadRequestError) as e:
            client.moderations.create(input=bad)
        assert e.value.body["param"] == "input" and says in e.value.body["message"], e.value.body
    with pytest.raises(openai.NotFoundError) as e:
        client.moderations.create(model="gpt-4o", input="hi")
    assert e.value.body["param"] == "model"
    r = http.post("/v1/moderations", json={"input": "hi", "stream": True})
    assert r.status_code == 400 and r.json()["error"]["param"] == "stream"

    unguarded, http = serve(None)
    with pytest.raises(openai.NotFoundError) as e:
        unguarded.moderations.create(input="hi")
    assert "no guard" in e.value.body["message"] and e.value.body["code"] == "guard_not_enabled"
    assert http.get("/health").status_code == 200


# ------------------------------------------------------------------------------------------------ input checks


def test_a_flagged_prompt_is_never_generated(serve):
    client, http = serve(policy(EVERYTHING, "input"))
    r = client.chat.completions.create(model="tiny", messages=HELLO, max_tokens=8, n=2)
    assert [(c.message.content, c.finish_reason) for c in r.choices] == [(REFUSAL, "content_filter")] * 2
    assert r.usage.completion_tokens == 0 and r.usage.prompt_tokens > 0
    assert chat_stream(client, max_tokens=8) == (REFUSAL, "content_filter")

    c = client.completions.create(model="tiny", prompt="How do I bake bread?", max_tokens=8)
    assert (c.choices[0].text, c.choices[0].finish_reason) == (REFUSAL, "content_filter")
    parts = list(client.completions.create(model="tiny", prompt=["Hello", "World"], max_tokens=8, stream=True))
    got = {(p.choices[0].index, p.choices[0].text, p.choices[0].finish_reason) for p in parts if p.choices}
    assert got == {(0, REFUSAL, "content_filter"), (1, REFUSAL, "content_filter")}

    assert metric(http, "hearth_generation_tokens_total") == 0  # the served model generated nothing
    assert metric(http, "hearth_guard_decisions_total", category="unspecified", role="user", check="input",
                  action="block") == 5  # one a prompt: 1 + 1 + 1 + 2


def test_input_check_only_leaves_answers_alone(serve):
    client, http = serve(policy(NOTHING, "input"))
    r = client.chat.completions.create(model="tiny", messages=HELLO, max_tokens=6, **NOISE)
    assert r.choices[0].finish_reason == "length" and r.usage.completion_tokens == 6
    assert metric(http, "hearth_guard_decisions_total", category="safe", role="user", check="input",
                  action="allow") == 1
    assert metric(http, "hearth_guard_decisions_total", category="safe", role="assistant", check="output",
                  action="allow") == 0


# ------------------------------------------------------------------------------------------------ output checks


def test_a_flagged_answer_is_withheld(serve):
    client, http = serve(policy(EVERYTHING, "output"), holdback=8)
    content, reason = chat_stream(client, max_tokens=60, **NOISE)
    assert (content, reason) == ("", "content_filter")  # the first window was flagged: nothing of it was sent
    r = client.chat.completions.create(model="tiny", messages=HELLO, max_tokens=20, **NOISE)
    assert (r.choices[0].message.content, r.choices[0].finish_reason) == (REFUSAL, "content_filter")
    parts = list(client.completions.create(model="tiny", prompt="Hello", max_tokens=60, stream=True, **NOISE))
    assert "".join(p.choices[0].text for p in parts if p.choices) == ""
    assert parts[-1].choices[0].finish_reason == "content_filter"
    assert metric(http, "hearth_guard_decisions_total", category="unspecified", role="assistant", check="output",
                  action="block") == 3

    whole = serve(None)[0].chat.completions.create(model="tiny", messages=HELLO, max_tokens=60, **NOISE)
    client, http = serve(policy(NOTHING, "output"), holdback=4, fmt=FlagsLongAnswers)
    content, reason = chat_stream(client, max_tokens=60, **NOISE)
    # the windows checked before the answer grew past LIMIT were sent, the one that did was not, nor anything after
    assert reason == "content_filter" and 0 < len(content) <= FlagsLongAnswers.LIMIT
    assert whole.choices[0].message.content.startswith(content) and len(whole.choices[0].message.content) > 20
    assert http.get("/health").status_code == 200


def test_a_held_back_stream_sends_the_same_text(serve):
    client, http = serve(policy(NOTHING, "output"), holdback=4)
    whole = client.chat.completions.create(model="tiny", messages=HELLO, max_tokens=40, **NOISE).choices[0]
    assert chat_stream(client, max_tokens=40, **NOISE) == (whole.message.content, "length")
    assert len(whole.message.content) > 4 * 2  # so that several windows were checked
    checks = metric(http, "hearth_guard_decisions_total", category="safe", role="assistant", check="output",
                    action="allow")
    assert checks >= 1 + 2  # the whole answer once (not streamed); the stream at each window and at its end
    assert metric(http, "hearth_guard_latency_seconds_count", check="output") == checks


def test_a_held_back_reply_with_tools_is_the_same(serve):
    """Tool-call parsing holds text back too (tool_calls.ReplyStream); behind the guard's window the reply is the
    same."""
    tools = [{"type": "function", "function": {"name": "now", "parameters": {"type": "object", "properties": {}}}}]

    def reply(client):
        chunks = list(client.chat.completions.create(model="tiny", messages=HELLO, max_tokens=40, tools=tools,
                                                     tool_choice="required", stream=True, temperature=0))
        deltas = [ch.delta for c in chunks for ch in c.choices]
        return ("".join(d.content or "" for d in deltas), [t.function.name for d in deltas for t in d.tool_calls or []],
                chunks[-1].choices[0].finish_reason)

    plain = reply(serve(None)[0])
    assert plain[0] or plain[1]
    assert reply(serve(policy(NOTHING, "output"), holdback=4)[0]) == plain


# ------------------------------------------------------------------------------------------------ flag, metrics, models


def test_flag_is_logged_counted_and_allowed(serve, caplog):
    client, http = serve(policy(EVERYTHING, S1="flag"), holdback=4, fmt=NamesS1)
    text, reason = chat_stream(client, max_tokens=24, **NOISE)
    assert text and reason == "length"
    assert metric(http, "hearth_guard_decisions_total", category="S1", role="user", check="input", action="flag") == 1
    assert metric(http, "hearth_guard_decisions_total", category="S1", role="assistant", check="output",
                  action="flag") >= 2
    assert "guard: flag input (S1" in caplog.text and "bread" not in caplog.text  # logged without content


def test_metric_names_and_the_guard_is_no_model(serve):
    client, http = serve(policy(NOTHING))
    client.moderations.create(input="hi")
    text = http.get("/metrics").text
    for name in ("hearth_guard_decisions_total", "hearth_guard_latency_seconds_bucket",
                 "hearth_guard_latency_seconds_count"):
        assert re.search(rf"^{name}{{.*check=\"moderation\"", text, re.M), name
    assert [m.id for m in client.models.list().data] == ["tiny"]
    with pytest.raises(openai.NotFoundError):  # the guard adapter answers as a classifier: not a model to chat with
        client.chat.completions.create(model="guard", messages=HELLO, max_tokens=2)


def test_checks_keep_the_event_loop_free(serve, engine):
    """While a guard check waits for the engine, other requests (here /health) are answered."""
    client, http = serve(policy(NOTHING))
    done = threading.Event()
    stall = threading.Event()

    def slow(lm):  # holds the engine thread, so the moderation's guard request waits
        stall.set()
        done.wait(10)

    import asyncio

    async def hold():
        await engine.call(slow)

    t = threading.Thread(target=lambda: asyncio.run(hold()))
    t.start()
    stall.wait(10)
    result = {}
    m = threading.Thread(target=lambda: result.setdefault("r", client.moderations.create(input="hi")))
    m.start()
    assert http.get("/health").status_code == 200  # answered while the check waits
    assert m.is_alive()
    done.set()
    m.join(30)
    t.join(10)
    assert result["r"].results[0].flagged is False


def test_same_weights(files, tmp_path):
    model, _ = files
    copy = tmp_path / "copy.gguf"
    copy.write_bytes(model.read_bytes())
    nothing = tmp_path / "nothing.toml"
    nothing.write_text(f"threshold = {NOTHING}\n")
    other = write_tiny(tmp_path / "other.gguf")
    other.write_bytes(other.read_bytes()[:-1] + bytes([other.read_bytes()[-1] ^ 1]))
    assert same_weights(model, model) and same_weights(model, copy) and not same_weights(model, other)


# ------------------------------------------------------------------------------------------------ hearth serve


@pytest.fixture
def busy_port():
    """A port already taken: an option checked after `listen` would fail as 'already in use' instead."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        yield str(s.getsockname()[1])


@pytest.mark.parametrize("policy_text, says", [
    ('enabled = ["S1", "S77x"]\n', "unknown category code 'S77x'"),
    ('threshold = 2\n', "threshold"),
    ('check = "input"\n[actions]\nS3 = "hide"\n', "action 'hide'"),
    ("name = \n", "not valid TOML"),
])
def test_a_bad_policy_is_one_error_line(files, home, tmp_path, capsys, busy_port, policy_text, says):
    model, guard = files
    path = tmp_path / "policy.toml"
    path.write_text(policy_text)
    rc, _, err = run_main(capsys, "serve", str(model), "--port", busy_port, "--guard", str(guard),
                          "--guard-policy", str(path))
    one_line_error(rc, err, says)


def test_guard_options_are_checked_before_the_port(files, home, tmp_path, capsys, busy_port):
    model, guard = files
    rc, _, err = run_main(capsys, "serve", str(model), "--port", busy_port, "--guard-policy", str(tmp_path / "p.toml"))
    one_line_error(rc, err, "--guard-policy needs --guard")
    rc, _, err = run_main(capsys, "serve", str(model), "--port", busy_port, "--guard", str(tmp_path / "nothing-here"))
    one_line_error(rc, err, "guard model not found")


def test_a_guard_model_without_a_usable_template_is_one_error_line(files, home, tmp_path, capsys):
    """A Llama Guard-style template that fixes its own categories cannot take the default policy's 14."""
    from hearth.weights.gguf_writer import write_gguf

    model, _ = files
    cfg, state, tok = store_kit._tiny_parts()
    fixed = ("{{ '<|im_start|>user\\nBEGIN UNSAFE CONTENT CATEGORIES\\nS1: Violent Crimes.\\n' }}"
             "{% for m in messages %}{{ m['content'] }}{% endfor %}{{ '<|im_end|>\\n<|im_start|>assistant\\n' }}")
    guard = write_gguf(tmp_path / "fixed.gguf", cfg, state, tok, fixed, metadata={"general.name": "fixed"})
    threads = torch.get_num_threads()
    try:
        rc, _, err = run_main(capsys, "serve", str(model), "--port", "0", "--dtype", "float32", "--guard", str(guard))
    finally:
        torch.set_num_threads(threads)
    one_line_error(rc, err, "does not list S2")


def test_hearth_serve_guard(files, tmp_path):
    """The real command. The guard adapter of the served model's weights runs on its engine; an adapter of another
    model gets that model loaded in an engine of its own, started and stopped with the server."""
    from hearth.tune.lora import LoraConfig
    from lora_kit import make_adapter

    model, guard = files
    pol = tmp_path / "clinic.yaml"
    pol.write_text(f"check: input\nthreshold: {EVERYTHING:f}\nrefusal: {REFUSAL}\nenabled: [S1, S2, S15]\n"
                   "custom:\n  - {code: S15, name: Patient Records, description: Responses that reveal records.}\n")
    nothing = tmp_path / "nothing.toml"
    nothing.write_text(f"threshold = {NOTHING}\n")
    other = write_tiny(tmp_path / "other.gguf")
    other.write_bytes(other.read_bytes()[:-1] + bytes([other.read_bytes()[-1] ^ 1]))  # other weights
    other_guard = make_adapter(tmp_path / "other-guard", LoraConfig(r=4, alpha=8), seed=1, std=0.05, model=str(other))
    (other_guard / "recipe.json").write_text(json.dumps({"base": str(other)}))
    procs = {"shared": ServerProcess(tmp_path, "shared", "--dtype", "float32", "--guard", str(guard), "--guard-policy",
                                     str(pol), "--guard-holdback", "64", model=str(model), threads=1),
             "own": ServerProcess(tmp_path, "own", "--dtype", "float32", "--guard", str(other_guard), "--guard-policy",
                                  str(nothing), model=str(model), threads=1)}
    try:
        for p in procs.values():
            p.wait_healthy()
        client = openai.OpenAI(base_url=procs["shared"].url + "/v1", api_key="x", max_retries=0, timeout=60)
        res = client.moderations.create(input="Hello").results[0]
        cats = res.categories.model_dump(by_alias=True)
        assert res.flagged and {"S1", "S2", "S15", "violence"} <= set(cats) and "S3" not in cats
        r = client.chat.completions.create(model="tiny", messages=HELLO, max_tokens=4)
        assert (r.choices[0].message.content, r.choices[0].finish_reason) == (REFUSAL, "content_filter")
        assert "hearth_guard_decisions_total" in httpx.get(procs["shared"].url + "/metrics").text

        own = openai.OpenAI(base_url=procs["own"].url + "/v1", api_key="x", max_retries=0, timeout=60)
        assert not own.moderations.create(input="Hello").results[0].flagged
        r = own.chat.completions.create(model="tiny", messages=HELLO, max_tokens=4, **NOISE)
        assert r.choices[0].finish_reason == "length"
    finally:
        for p in procs.values():
            p.stop()
    assert all(p.proc.returncode == 0 for p in procs.values())
    shared, own = (p.log_path.read_text() for p in procs.values())
    assert "on the served engine" in shared and "policy 'clinic'" in shared, shared
    assert "in its own engine" in own, own
