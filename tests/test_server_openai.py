"""Black-box tests: real `hearth serve smollm2` processes driven over HTTP by the official openai SDK.

Two servers start together (one with --api-key) and are shared by the module; each loads the 135M
default model, so startup takes seconds on 2 cores. Greedy (temperature 0) outputs are compared with
each other, never with pinned text, so the tests hold for any correct engine.
"""

from __future__ import annotations

import asyncio
import re
import time

import httpx
import openai
import pytest
from serve_kit import ServerProcess

pytestmark = pytest.mark.slow

MODEL = "smollm2"
KEY = "test-key-123"


@pytest.fixture(scope="module")
def adapter_dir(tmp_path_factory):
    from hearth.tune.lora import LoraConfig
    from lora_kit import make_adapter

    return make_adapter(tmp_path_factory.mktemp("adapter") / "tuned", LoraConfig(r=8, alpha=16), seed=0, std=0.03)


@pytest.fixture(scope="module")
def servers(tmp_path_factory, adapter_dir):
    tmp = tmp_path_factory.mktemp("serve")
    # "open" runs the exact fp32 path, so concurrent requests equal each one alone to the token; "keyed" runs the
    # default native 4-bit path (see test_engine.py on why that is not batch-invariant to the bit).
    procs = {"open": ServerProcess(tmp, "open", "--dtype", "float32", "--adapter", f"tuned={adapter_dir}"),
             "keyed": ServerProcess(tmp, "keyed", "--api-key", KEY, "--adapter", str(adapter_dir), threads=1)}
    try:
        for p in procs.values():
            p.wait_healthy()
        yield procs
    finally:
        for p in procs.values():
            p.stop()


@pytest.fixture(scope="module")
def url(servers) -> str:
    return servers["open"].url


@pytest.fixture(scope="module")
def client(url):
    with openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=120) as c:
        yield c


def chat(content: str) -> list[dict]:
    # An explicit short system message replaces SmolLM2's default one: shorter prompts, faster tests.
    return [{"role": "system", "content": "Be brief."}, {"role": "user", "content": content}]


def chat_text(client, content: str, **kw) -> str:
    return client.chat.completions.create(model=MODEL, messages=chat(content), **kw).choices[0].message.content


def metric(url: str, name: str) -> float:
    text = httpx.get(url + "/metrics").text
    m = re.search(rf"^{name} (\S+)$", text, re.M)
    assert m, f"{name} missing from /metrics"
    return float(m.group(1))


# ------------------------------------------------------------------------------------------------


def test_startup_line_and_models(servers, client):
    log = servers["open"].log_path.read_text()
    assert f"serving {MODEL} on http://127.0.0.1:{servers['open'].port}" in log
    models = client.models.list()
    assert [m.id for m in models.data] == [MODEL, "tuned"]  # the model, then its adapters
    assert client.models.retrieve(MODEL).id == MODEL and client.models.retrieve("tuned").parent == MODEL
    assert "adapter tuned:" in log
    with pytest.raises(openai.NotFoundError):  # adapters served beside it: a name must be one of them
        client.chat.completions.create(model="nope", messages=[{"role": "user", "content": "hi"}])


def test_chat_sync_stream_equals_non_stream(client):
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name a primary colour."}]
    whole = client.chat.completions.create(model=MODEL, messages=messages, temperature=0, max_tokens=20)
    text = whole.choices[0].message.content
    assert text and whole.choices[0].finish_reason in ("stop", "length")
    assert whole.usage.completion_tokens > 0 and whole.usage.total_tokens == whole.usage.prompt_tokens + whole.usage.completion_tokens
    stream = client.chat.completions.create(model=MODEL, messages=messages, temperature=0, max_tokens=20, stream=True)
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == text
    assert chunks[-1].choices[0].finish_reason == whole.choices[0].finish_reason


def test_max_completion_tokens_and_length(client):
    r = client.chat.completions.create(model=MODEL, messages=chat("Tell me a long story."),
                                       temperature=0, max_completion_tokens=5)
    assert r.choices[0].finish_reason == "length" and r.usage.completion_tokens == 5


def test_completions_async_stream_and_non_stream(url):
    async def main():
        async with openai.AsyncOpenAI(base_url=url + "/v1", api_key="x", max_retries=0) as ac:
            whole = await ac.completions.create(model=MODEL, prompt="The capital of France is", max_tokens=8, temperature=0)
            stream = await ac.completions.create(model=MODEL, prompt="The capital of France is", max_tokens=8,
                                                 temperature=0, stream=True)
            parts = [c.choices[0].text async for c in stream]
            return whole, parts

    whole, parts = asyncio.run(main())
    assert whole.object == "text_completion" and whole.usage.completion_tokens == 8
    assert "".join(parts) == whole.choices[0].text
    assert "Paris" in whole.choices[0].text


def test_n2_and_seed_reproducibility(client):
    kw = dict(model=MODEL, messages=chat("Write a word."), max_tokens=12, temperature=1.0, n=2)
    a = client.chat.completions.create(seed=7, **kw)
    b = client.chat.completions.create(seed=7, **kw)
    assert [c.index for c in a.choices] == [0, 1]
    assert [c.message.content for c in a.choices] == [c.message.content for c in b.choices]
    assert 2 <= a.usage.completion_tokens <= 24  # counted over both choices
    c = client.completions.create(model=MODEL, prompt=["One", "Two"], max_tokens=4, temperature=0, n=2)
    assert [ch.index for ch in c.choices] == [0, 1, 2, 3]
    assert c.choices[0].text == c.choices[1].text and c.choices[2].text == c.choices[3].text  # greedy


def test_stop_strings(client):
    prompt = "Count: 1, 2, 3, 4, 5,"
    full = client.completions.create(model=MODEL, prompt=prompt, max_tokens=12, temperature=0).choices[0].text
    assert len(full) > 4
    stop = full[3:5]
    cut = client.completions.create(model=MODEL, prompt=prompt, max_tokens=12, temperature=0, stop=[stop, "zzz"])
    assert cut.choices[0].text == full[: full.index(stop)] and cut.choices[0].finish_reason == "stop"
    one = client.completions.create(model=MODEL, prompt=prompt, max_tokens=12, temperature=0, stop=stop)
    assert one.choices[0].text == cut.choices[0].text


def test_logit_bias_bans_and_forces_tokens(client):
    """OpenAI's logit_bias through the SDK: banning the tokens greedy decoding chose makes it choose others; a +100
    bias makes every token the biased one."""
    def greedy_ids(**kw) -> list[int]:
        r = client.completions.create(model=MODEL, prompt="The capital of France is", max_tokens=4, temperature=0,
                                      logprobs=0, extra_body={"return_tokens_as_token_ids": True}, **kw)
        return [int(t.removeprefix("token_id:")) for t in r.choices[0].logprobs.tokens]

    chosen = greedy_ids()
    other = greedy_ids(logit_bias={str(t): -100 for t in chosen})
    assert len(other) == 4 and not set(chosen) & set(other), (chosen, other)
    forced = client.chat.completions.create(model=MODEL, messages=chat("Hi"), max_tokens=5, temperature=1.0, seed=1,
                                            logit_bias={"45": 100})  # 45: "=" in SmolLM2's vocabulary
    assert forced.choices[0].message.content == "=" * 5 and forced.choices[0].finish_reason == "length"


def test_lora_adapter_served_by_name(client, adapter_dir):
    """`serve --adapter tuned=DIR`: model="tuned" generates with the adapter (equal to the Generator on a model
    carrying it, fp32), the base model's name without it; /v1/models lists the adapter under its parent."""
    from hearth.engine.generate import Generator
    from hearth.engine.sampling import SamplingParams
    from hearth.loader import load
    from hearth.tune.peft_io import load_adapter

    cards = {m.id: m for m in client.models.list().data}
    assert set(cards) == {MODEL, "tuned"} and cards["tuned"].parent == MODEL and cards["tuned"].root == str(adapter_dir)
    prompt = "The capital of France is"

    def ids(model: str) -> list[int]:
        r = client.completions.create(model=model, prompt=prompt, max_tokens=8, temperature=0, logprobs=0,
                                      extra_body={"return_tokens_as_token_ids": True})
        assert r.model == model
        return [int(t.removeprefix("token_id:")) for t in r.choices[0].logprobs.tokens]

    ref = load("smollm2", dtype="float32")
    load_adapter(ref.model, adapter_dir)
    want = Generator(ref.model, ref.tokenizer).complete(ref.tokenizer.encode(prompt), SamplingParams(temperature=0, max_tokens=8))
    tuned, base = ids("tuned"), ids(MODEL)
    assert tuned == want.token_ids and tuned != base
    reply = client.chat.completions.create(model="tuned", messages=chat("Hi"), max_tokens=4, temperature=0)
    assert reply.model == "tuned" and reply.choices[0].message.content
    with pytest.raises(openai.BadRequestError, match="is a LoRA adapter; embeddings come from the base model"):
        client.embeddings.create(model="tuned", input="hello")
    with pytest.raises(openai.NotFoundError, match="serves 'smollm2', 'tuned'"):
        client.completions.create(model="tuned2", prompt="x", max_tokens=1)


def test_chat_logprobs(client):
    r = client.chat.completions.create(model=MODEL, messages=chat("Say hello."),
                                       temperature=0, max_tokens=6, logprobs=True, top_logprobs=3)
    content = r.choices[0].logprobs.content
    assert len(content) == r.usage.completion_tokens
    for t in content:
        assert len(t.top_logprobs) == 3 and t.logprob <= 0
        assert t.top_logprobs[0].token == t.token  # greedy picks the most likely token
        assert t.top_logprobs[0].logprob == pytest.approx(t.logprob, abs=1e-5)
        assert t.top_logprobs[0].logprob >= t.top_logprobs[1].logprob >= t.top_logprobs[2].logprob
    visible = [t.token for t in content if t.token != "<|im_end|>"]
    assert "".join(visible) == r.choices[0].message.content


def test_echo_scores_a_token_prompt_as_generation_did(client, url):
    prompt = httpx.post(url + "/tokenize", json={"prompt": "The quick brown fox", "add_special_tokens": False}).json()["tokens"]
    gen = client.completions.create(model=MODEL, prompt=prompt, max_tokens=6, temperature=0, logprobs=2,
                                    extra_body={"return_tokens_as_token_ids": True, "ignore_eos": True})
    lp = gen.choices[0].logprobs
    generated = [int(t.removeprefix("token_id:")) for t in lp.tokens]
    assert len(generated) == 6
    # Score prompt + generated tokens without generating: every prompt token gets a logprob but the first.
    scored = client.completions.create(model=MODEL, prompt=prompt + generated, max_tokens=0, echo=True, logprobs=1,
                                       temperature=0)
    s = scored.choices[0].logprobs
    assert scored.usage.completion_tokens == 0
    assert len(s.token_logprobs) == len(prompt) + 6 and s.token_logprobs[0] is None and s.top_logprobs[0] is None
    assert all(x <= 0 for x in s.token_logprobs[1:])
    assert s.token_logprobs[len(prompt):] == pytest.approx(lp.token_logprobs, abs=2e-3)
    # greedy continuation: each token is its position's most likely one (lm-eval's is_greedy)
    for tok_lp, top in zip(s.token_logprobs[len(prompt):], s.top_logprobs[len(prompt):]):
        assert tok_lp == pytest.approx(max(top.values()), abs=1e-6)
    assert scored.choices[0].text == httpx.post(url + "/detokenize", json={"tokens": prompt + generated}).json()["prompt"]


def test_lm_eval_local_completions_reads_our_scores(client, url):
    from lm_eval.models.openai_completions import LocalCompletionsAPI

    ctx = httpx.post(url + "/tokenize", json={"prompt": "Paris is the capital of", "add_special_tokens": False}).json()["tokens"]
    cont = httpx.post(url + "/tokenize", json={"prompt": " France", "add_special_tokens": False}).json()["tokens"]
    # exactly the payload lm-eval sends for loglikelihood requests
    out = client.completions.create(model=MODEL, prompt=[ctx + cont], temperature=0, max_tokens=1, logprobs=1,
                                    seed=1234, echo=True).model_dump()
    ((ll, greedy),) = LocalCompletionsAPI.parse_logprobs(out, tokens=[ctx + cont], ctxlens=[len(ctx)])
    assert -20 < ll < 0 and isinstance(greedy, bool)


def test_stream_include_usage(client):
    stream = client.chat.completions.create(model=MODEL, messages=chat("Hi!"), temperature=0,
                                            max_tokens=8, stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    last = chunks[-1]
    assert last.choices == [] and last.usage is not None
    assert last.usage.total_tokens == last.usage.prompt_tokens + last.usage.completion_tokens
    assert 0 < last.usage.completion_tokens <= 8
    assert all(c.usage is None for c in chunks[:-1])


def test_api_key(servers):
    keyed = servers["keyed"].url + "/v1"
    no_key = {"Authorization": openai.Omit()}  # the SDK insists on a key; drop its header instead
    for key, headers, words in (("wrong-key", None, "invalid API key"), ("unused", no_key, "missing API key")):
        with openai.OpenAI(base_url=keyed, api_key=key, max_retries=0) as c:
            with pytest.raises(openai.AuthenticationError, match=words):
                c.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=2,
                                          extra_headers=headers)
    r = httpx.post(keyed + "/completions", json={"prompt": "hi", "max_tokens": 1})
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    with openai.OpenAI(base_url=keyed, api_key=KEY, max_retries=0) as c:
        assert c.chat.completions.create(model=MODEL, messages=chat("hi"), max_tokens=2).choices
        # the default 4-bit path serves the adapter too (named after its directory), its decode steps natively
        # (compared by log-probabilities: this small adapter need not change a greedy answer of 8 tokens, and on
        # some CPUs the 4-bit path's text with and without it is the same)
        streams = [c.completions.create(model=m, prompt="The capital of France is", max_tokens=8, temperature=0,
                                        logprobs=1) for m in ("tuned", MODEL)]
        tuned, base = (s.choices[0].logprobs.token_logprobs for s in streams)
        assert streams[0].model == "tuned" and tuned != pytest.approx(base, abs=1e-3)
    assert httpx.get(servers["keyed"].url + "/health").status_code == 200


def test_64_concurrent_streams_match_each_prompt_alone(client, url):
    # Short raw prompts: on 2 CPU cores prefill dominates (~100 tokens/s), and this is about batching.
    prompts = [f"Fact {i}: the number {i}" for i in range(8)]
    alone = {p: client.completions.create(model=MODEL, prompt=p, temperature=0, max_tokens=10).choices[0].text
             for p in prompts}

    async def one(ac, p):
        stream = await ac.completions.create(model=MODEL, prompt=p, temperature=0, max_tokens=10, stream=True)
        text, reason = [], None
        async for c in stream:
            text.append(c.choices[0].text)
            reason = c.choices[0].finish_reason or reason
        return p, "".join(text), reason

    async def main():
        async with openai.AsyncOpenAI(base_url=url + "/v1", api_key="x", max_retries=0, timeout=300) as ac:
            return await asyncio.gather(*(one(ac, prompts[i % 8]) for i in range(64)))

    results = asyncio.run(main())
    assert len(results) == 64
    for p, text, reason in results:
        assert reason in ("stop", "length")
        assert text == alone[p], (p, text, alone[p])
    assert metric(url, "hearth_num_requests_running") == 0


def test_disconnect_mid_stream_frees_the_engine(url):
    body = {"model": MODEL, "prompt": "Once upon a time", "max_tokens": 2000, "ignore_eos": True, "stream": True}
    with httpx.Client(base_url=url, timeout=60) as c:
        with c.stream("POST", "/v1/completions", json=body) as r:
            assert r.status_code == 200
            lines = r.iter_lines()
            for _ in range(6):
                next(lines)
            assert metric(url, "hearth_num_requests_running") == 1
            assert metric(url, "hearth_kv_blocks_used") > 0
    deadline = time.monotonic() + 15
    while metric(url, "hearth_num_requests_running") != 0 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert metric(url, "hearth_num_requests_running") == 0
    assert metric(url, "hearth_num_requests_waiting") == 0
    assert metric(url, "hearth_kv_blocks_used") == 0


def test_errors_reach_the_sdk(client):
    with pytest.raises(openai.BadRequestError, match="too many"):
        client.completions.create(model=MODEL, prompt="hi", max_tokens=10**6)
    with pytest.raises(openai.BadRequestError, match="temperature"):
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}], temperature=5)
    with pytest.raises(openai.BadRequestError, match="audio"):
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}],
                                       modalities=["text", "audio"], audio={"voice": "alloy", "format": "wav"})
    raw = client.chat.completions.with_raw_response.create(  # tolerated: ignored, and said so
        model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=2, extra_body={"frobnicate": True})
    assert "frobnicate" in raw.headers["warning"] and raw.parse().choices
    assert chat_text(client, "hi", max_tokens=2)  # still serving


def test_structured_outputs_through_the_sdk(client, url):
    """`chat.completions.parse` with a pydantic model (OpenAI's response_format json_schema), JSON mode streamed,
    vLLM's structured_outputs on /v1/completions, and a schema the server cannot use."""
    import json

    from pydantic import BaseModel

    class City(BaseModel):
        name: str
        country: str
        population_millions: float

    r = client.chat.completions.parse(model=MODEL, messages=chat("Describe Paris."), response_format=City,
                                      temperature=0.8, seed=3, max_tokens=100)
    assert r.choices[0].finish_reason == "stop"
    assert isinstance(r.choices[0].message.parsed, City), r.choices[0].message.content
    stream = client.chat.completions.create(model=MODEL, messages=chat("Some data, please."), stream=True,
                                            response_format={"type": "json_object"}, temperature=0, max_tokens=100)
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    if chunks[-1].choices[0].finish_reason == "stop":
        assert isinstance(json.loads(text), dict)
    assert text.lstrip().startswith("{")
    c = client.completions.create(model=MODEL, prompt="The year was", max_tokens=10, temperature=1.2, seed=1, n=2,
                                  extra_body={"structured_outputs": {"regex": " (19|20)[0-9]{2}"}})
    assert all(re.fullmatch(r" (19|20)[0-9]{2}", ch.text) for ch in c.choices), [ch.text for ch in c.choices]
    c = client.completions.create(model=MODEL, prompt="Pick:", max_tokens=5, extra_body={"guided_choice": ["A", "B"]})
    assert c.choices[0].text in ("A", "B")
    with pytest.raises(openai.BadRequestError, match="invalid JSON schema: Invalid type: frob"):
        client.chat.completions.create(model=MODEL, messages=chat("hi"), response_format={
            "type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "frob"}}})
    with pytest.raises(openai.BadRequestError, match="needs a json_schema object"):
        client.chat.completions.create(model=MODEL, messages=chat("hi"), response_format={"type": "json_schema"})
    with pytest.raises(openai.BadRequestError, match="not response_format and guided_regex"):
        client.chat.completions.create(model=MODEL, messages=chat("hi"), response_format={"type": "json_object"},
                                       extra_body={"guided_regex": "a+"})


def test_tool_calls_through_the_sdk(client):
    """Forced calls (tool_choice required / named) come back as tool_calls whose arguments follow the tool's schema,
    streamed or not; the results go back in the history and the conversation continues."""
    import json

    import jsonschema

    weather = {"type": "object", "properties": {"city": {"type": "string"}, "unit": {"enum": ["celsius", "fahrenheit"]}},
               "required": ["city"]}
    tools = [{"type": "function", "function": {"name": "get_weather", "description": "Current weather in a city",
                                               "parameters": weather}},
             {"type": "function", "function": {"name": "add", "description": "Add two numbers", "parameters": {
                 "type": "object", "properties": {"a": {"type": "number"}, "b": {"type": "number"}},
                 "required": ["a", "b"]}}}]
    messages = chat("What is the weather in Paris?")
    r = client.chat.completions.create(model=MODEL, messages=messages, tools=tools, tool_choice="required",
                                       parallel_tool_calls=False, temperature=0, max_tokens=60)
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    (call,) = choice.message.tool_calls
    assert call.function.name in ("get_weather", "add") and call.id
    jsonschema.validate(json.loads(call.function.arguments), tools[[t["function"]["name"] for t in tools].index(
        call.function.name)]["function"]["parameters"])
    named = {"type": "function", "function": {"name": "get_weather"}}
    stream = client.chat.completions.create(model=MODEL, messages=messages, tools=tools, tool_choice=named,
                                            temperature=0, max_tokens=60, stream=True)
    deltas = [c.choices[0] for c in stream if c.choices]
    assert deltas[-1].finish_reason == "tool_calls"
    (streamed,) = [tc for d in deltas for tc in d.delta.tool_calls or []]
    assert streamed.function.name == "get_weather"
    assert json.loads(streamed.function.arguments)["city"]  # a city, per the schema
    history = messages + [choice.message.model_dump(exclude_none=True),
                          {"role": "tool", "tool_call_id": call.id, "content": "18 degrees and sunny"}]
    r = client.chat.completions.create(model=MODEL, messages=history, tools=tools, tool_choice="none",
                                       temperature=0, max_tokens=30)
    assert r.choices[0].message.content and not r.choices[0].message.tool_calls
    # a forced call cut short by max_tokens: the call so far, finish_reason length, never the call's text as content
    for stream in (False, True):
        cut = client.chat.completions.create(model=MODEL, messages=messages, tools=tools, tool_choice=named,
                                             temperature=0, max_tokens=6, stream=stream)
        if stream:
            deltas = [c.choices[0] for c in cut if c.choices]
            content = "".join(d.delta.content or "" for d in deltas)
            calls = [tc for d in deltas for tc in d.delta.tool_calls or []]
            finish = deltas[-1].finish_reason
        else:
            content, calls, finish = cut.choices[0].message.content, cut.choices[0].message.tool_calls, \
                cut.choices[0].finish_reason
        assert not content and finish == "length", (stream, content)
        assert [c.function.name for c in calls] == ["get_weather"]



def test_embeddings_through_the_sdk(client):
    import numpy as np

    texts = ["A cat sat on the mat.", "A kitten was sitting on the rug.", "Stock markets fell sharply today."]
    r = client.embeddings.create(model=MODEL, input=texts)  # the SDK asks for base64 and decodes it
    e = np.array([d.embedding for d in r.data])
    assert e.shape == (3, 576) and np.allclose(np.linalg.norm(e, axis=1), 1, atol=1e-5)
    assert e[0] @ e[1] > e[0] @ e[2]  # the two cats are closer than cat and stocks
    floats = client.embeddings.create(model=MODEL, input=texts[0], encoding_format="float").data[0].embedding
    assert np.allclose(floats, e[0], atol=1e-6)
    assert r.usage.prompt_tokens == r.usage.total_tokens > 3
    short = client.embeddings.create(model=MODEL, input=texts, dimensions=64)  # OpenAI's shortened embeddings
    s = np.array([d.embedding for d in short.data])
    assert s.shape == (3, 64) and np.allclose(np.linalg.norm(s, axis=1), 1, atol=1e-5)
    assert np.allclose(s, e[:, :64] / np.linalg.norm(e[:, :64], axis=1, keepdims=True), atol=1e-5)
    with pytest.raises(openai.BadRequestError, match="dimensions"):
        client.embeddings.create(model=MODEL, input="x", dimensions=5000)


def test_prefix_cache_metrics(client, url):
    """A repeated chat prefix is found in the prefix cache, and /metrics says so."""
    before = metric(url, "hearth_prefix_cache_hits_total")
    long_system = [{"role": "system", "content": "Answer in one word. " * 20}]
    for q in ("Name a colour.", "Name a fruit."):
        client.chat.completions.create(model=MODEL, messages=long_system + [{"role": "user", "content": q}],
                                       max_tokens=2, temperature=0)
    assert metric(url, "hearth_prefix_cache_hits_total") - before >= 64  # the shared system prompt's blocks
    assert metric(url, "hearth_prefix_cache_queries_total") > metric(url, "hearth_prefix_cache_hits_total")


def test_usage_reports_cached_prompt_tokens_and_a_fingerprint(client):
    """Prefix caching: the second request with the same long prompt reads its blocks from the cache, and says so in
    OpenAI's usage.prompt_tokens_details.cached_tokens."""
    long = "Tell me about the history of the river Thames and the bridges across it. " * 8
    first = client.chat.completions.create(model=MODEL, messages=chat(long), max_tokens=2, temperature=0)
    again = client.chat.completions.create(model=MODEL, messages=chat(long), max_tokens=2, temperature=0)
    assert again.usage.prompt_tokens == first.usage.prompt_tokens > 64
    assert 0 < again.usage.prompt_tokens_details.cached_tokens <= again.usage.prompt_tokens
    assert first.system_fingerprint and first.system_fingerprint == again.system_fingerprint
