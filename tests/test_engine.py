"""The continuous-batching engine on the real default model.

Greedy output must not depend on what else is in the batch: every request is compared with the
simple single-sequence Generator (the path the reference tests pin to transformers and llama.cpp).
"""

from __future__ import annotations

import asyncio

import pytest
import torch

from hearth.engine.async_engine import AsyncEngine, QueueFullError
from hearth.engine.generate import Generator
from hearth.engine.llm_engine import EngineConfig, LLMEngine
from hearth.engine.request import EngineRequest, FinishReason
from hearth.engine.sampling import SamplingParams
from hearth.errors import ContextLengthError, HearthError
from hearth.loader import load

PROMPTS = [
    "The capital of France is", "Once upon a time", "def fib(n):", "The three primary colors are",
    "In 1492,", "Water boils at", "My favourite book is", "import numpy as np\n",
]
GREEDY = SamplingParams(temperature=0, max_tokens=12)


@pytest.fixture(scope="module")
def lm(smollm2_model_f32):
    # The exact fp32 path: batched and alone then agree to the token. With the native 4-bit path (dtype auto) a
    # last-bit difference in attention (batched vs alone) can cross an 8-bit activation rounding boundary and
    # flip a near-tie greedy token, as in llama.cpp; test_native_batch_mostly_equals_alone bounds that.
    return smollm2_model_f32


@pytest.fixture(scope="module")
def alone(lm):
    gen = Generator(lm.model, lm.tokenizer)
    return {p: gen.complete(lm.tokenizer.encode(p), GREEDY) for p in PROMPTS}


def drain(eng: LLMEngine) -> dict[str, dict]:
    res: dict[str, dict] = {}
    while eng.has_work():
        for o in eng.step():
            r = res.setdefault(o.request_id, {"ids": [], "text": "", "reason": None, "out": []})
            r["ids"] += o.new_token_ids
            r["text"] += o.new_text
            r["out"].append(o)
            if o.finished:
                r["reason"] = o.finish_reason
    return res


def test_native_batch_mostly_equals_alone():
    # The default native path: all-decode steps take the whole-token native route over the paged cache
    # (hearth/engine/runner.py, tests/test_cpu_paged_decode.py for its exactness)
    native = load("smollm2")
    assert native.decoder is not None
    gen = Generator(native.model, native.tokenizer, decoder=native.decoder)
    eng = LLMEngine(native, EngineConfig(max_num_seqs=8, max_num_batched_tokens=48, kv_cache_bytes=64 << 20))
    assert eng.runner.cpu_decoder is not None
    for i, p in enumerate(PROMPTS):
        eng.add_request(EngineRequest(f"r{i}", native.tokenizer.encode(p), GREEDY))
    res = drain(eng)
    assert eng.runner.native_steps >= GREEDY.max_tokens - 2
    same_prefix = []
    for i, p in enumerate(PROMPTS):
        ref = gen.complete(native.tokenizer.encode(p), GREEDY).token_ids
        got = res[f"r{i}"]["ids"]
        assert len(got) == len(ref)
        same_prefix.append(next((j for j, (a, b) in enumerate(zip(got, ref)) if a != b), len(ref)))
    assert sum(same_prefix) >= 0.75 * len(PROMPTS) * GREEDY.max_tokens, same_prefix
    assert eng.blocks.num_used == 0


@pytest.mark.parametrize("padded", [False, True], ids=["eager", "padded-decode"])
def test_batch_of_32_equals_each_request_alone(lm, alone, padded):
    # small token budget: prompts are prefilled in chunks while other sequences decode. padded: all-decode steps
    # take the CUDA-graph route (batch padded to a bucket, block tables to a width, scratch-block writes), here
    # run on the CPU without recording a graph
    eng = LLMEngine(lm, EngineConfig(max_num_seqs=32, max_num_batched_tokens=48, kv_cache_bytes=256 << 20,
                                     cuda_graphs=padded))
    assert (eng.runner.graphs is not None) == padded
    for i in range(32):
        eng.add_request(EngineRequest(f"r{i}", lm.tokenizer.encode(PROMPTS[i % len(PROMPTS)]), GREEDY))
    res = drain(eng)
    for i in range(32):
        ref = alone[PROMPTS[i % len(PROMPTS)]]
        assert res[f"r{i}"]["ids"] == ref.token_ids and res[f"r{i}"]["text"] == ref.text
    assert eng.blocks.num_used == 0
    assert not padded or eng.runner.graphs.steps > 0


@pytest.mark.parametrize("padded", [False, True], ids=["eager", "padded-decode"])
def test_preemption_under_kv_pressure_gives_same_output(lm, alone, padded):
    # 12 blocks of 4 tokens for 6 sequences of ~17 tokens each: the scheduler must preempt and recompute
    eng = LLMEngine(lm, EngineConfig(max_num_seqs=8, max_num_batched_tokens=64, block_size=4, num_blocks=12,
                                     cuda_graphs=padded))
    for i, p in enumerate(PROMPTS[:6]):
        eng.add_request(EngineRequest(f"p{i}", lm.tokenizer.encode(p), GREEDY))
    res = drain(eng)
    for i, p in enumerate(PROMPTS[:6]):
        assert res[f"p{i}"]["ids"] == alone[p].token_ids


def test_prompt_logprobs_and_logprobs_match_a_full_forward(lm):
    ids = lm.tokenizer.encode("The quick brown fox jumps over the lazy dog")
    eng = LLMEngine(lm, EngineConfig(max_num_batched_tokens=5, kv_cache_bytes=64 << 20))  # several chunks
    eng.add_request(EngineRequest("a", ids, SamplingParams(temperature=0, max_tokens=2), logprobs=3, prompt_logprobs=2))
    eng.add_request(EngineRequest("echo0", ids, SamplingParams(temperature=0, max_tokens=0), prompt_logprobs=0))
    res = drain(eng)
    with torch.inference_mode():
        full = torch.log_softmax(lm.model(torch.tensor([ids + res["a"]["ids"]]))[0], -1)
    for rid in ("a", "echo0"):
        plp = res[rid]["out"][0].prompt_logprobs
        assert plp[0] is None and len(plp) == len(ids)
        for i in range(1, len(ids)):
            assert plp[i].token_id == ids[i]
            assert abs(plp[i].logprob - float(full[i - 1, ids[i]])) < 1e-3
    assert res["echo0"]["ids"] == [] and res["echo0"]["reason"] is FinishReason.LENGTH
    gen_lps = [lp for o in res["a"]["out"] for lp in (o.logprobs or [])]
    assert len(gen_lps) == 2 and len(gen_lps[0].top) == 3
    assert gen_lps[0].top[0][0] == res["a"]["ids"][0]  # greedy: the chosen token is the most likely
    assert abs(gen_lps[0].logprob - float(full[len(ids) - 1, res["a"]["ids"][0]])) < 1e-3


def test_bad_requests_are_refused_before_queueing(lm):
    eng = LLMEngine(lm, EngineConfig(kv_cache_bytes=8 << 20))
    with pytest.raises(HearthError, match="invalid token id"):
        eng.add_request(EngineRequest("x", [1, 10**9], GREEDY))
    with pytest.raises(ContextLengthError, match="by 2"):
        eng.add_request(EngineRequest("y", [1] * (eng.max_model_len - 10), SamplingParams(max_tokens=12)))
    assert not eng.has_work()


def test_async_engine_streams_aborts_and_bounds_its_queue(lm, alone):
    async def main():
        eng = AsyncEngine(lm, EngineConfig(kv_cache_bytes=64 << 20))
        eng.start()
        try:
            prompt = PROMPTS[0]
            text = "".join([o.new_text async for o in eng.generate(EngineRequest("a", lm.tokenizer.encode(prompt), GREEDY))])
            assert text == alone[prompt].text
            # a consumer that stops early aborts its request and frees its blocks
            agen = eng.generate(EngineRequest("b", lm.tokenizer.encode(prompt), SamplingParams(temperature=0, max_tokens=200)))
            await agen.__anext__()
            await agen.aclose()
            for _ in range(100):
                if eng.stats().running == 0 and eng.stats().kv_blocks_used == 0:
                    break
                await asyncio.sleep(0.05)
            assert eng.stats().running == 0 and eng.stats().kv_blocks_used == 0
            # a full waiting queue refuses new work instead of growing without end
            eng.config.max_waiting = 0  # every slot of the waiting queue "taken"
            eng.config.max_num_seqs = 0  # and no free batch slot to take the request at the next step
            with pytest.raises(QueueFullError):
                await eng.generate(EngineRequest("c", [1, 2], GREEDY)).__anext__()
        finally:
            eng.shutdown()

    asyncio.run(main())


def test_shutdown_ends_waiting_consumers_with_an_error(lm):
    from hearth.engine.async_engine import EngineDeadError

    async def main():
        eng = AsyncEngine(lm, EngineConfig(kv_cache_bytes=64 << 20))
        eng.start()
        agen = eng.generate(EngineRequest("s", lm.tokenizer.encode("Hello"), SamplingParams(temperature=0, max_tokens=500, ignore_eos=True)))
        await agen.__anext__()
        await asyncio.get_running_loop().run_in_executor(None, eng.shutdown)
        with pytest.raises(EngineDeadError):
            async for _ in agen:
                pass

    asyncio.run(asyncio.wait_for(main(), 120))


def test_async_engine_call_runs_on_the_engine_thread_between_steps(lm):
    """Embeddings run as AsyncEngine.call: on the engine thread, while a stream keeps generating; errors reach the
    caller; after shutdown a call fails instead of hanging."""
    import threading

    from hearth.engine.async_engine import EngineDeadError

    async def main():
        eng = AsyncEngine(lm, EngineConfig(kv_cache_bytes=64 << 20))
        eng.start()
        agen = eng.generate(EngineRequest("s", lm.tokenizer.encode("Hello"),
                                          SamplingParams(temperature=0, max_tokens=40, ignore_eos=True)))
        await agen.__anext__()
        thread = await eng.call(lambda _: threading.current_thread().name)
        assert thread == "hearth-engine"
        ids = lm.tokenizer.encode("A sentence to embed.")
        vec = await eng.call(lambda m: m.model.embed(ids))
        assert torch.equal(vec, lm.model.embed(ids))
        with pytest.raises(ZeroDivisionError):
            await eng.call(lambda _: 1 / 0)
        rest = [o async for o in agen]  # the stream was not disturbed
        assert rest[-1].finished and rest[-1].num_generated_tokens == 40
        await asyncio.get_running_loop().run_in_executor(None, eng.shutdown)
        with pytest.raises(EngineDeadError):
            await eng.call(lambda _: 1)

    asyncio.run(asyncio.wait_for(main(), 120))


def _rss_mib() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) // 1024 for line in f if line.startswith("VmRSS"))


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
def test_cpu_kv_pool_is_zero_and_costs_memory_only_as_it_fills(dtype):
    """A server's KV budget (1 GiB by default) is not made resident at start; the pool still reads as zeros and
    takes writes."""
    from hearth.config import ModelConfig
    from hearth.model.paged import PagedKVCache

    cfg = ModelConfig(vocab_size=97, dim=64, n_layers=8, n_heads=4, n_kv_heads=4, hidden_dim=128, max_seq_len=64)
    before = _rss_mib()
    pool = PagedKVCache(cfg, num_blocks=4096, block_size=64, device="cpu", dtype=dtype)  # 2 x 256 MiB (fp16), 2 x 512 MiB (fp32)
    assert pool.k.dtype == dtype and pool.k.shape == (8, 4096 * 64, 4, 16)
    assert _rss_mib() - before < 64
    assert torch.count_nonzero(pool.k[:, :5000]) == 0 and torch.count_nonzero(pool.v[-1, -5000:]) == 0
    pool.k[0, :64] = 1.5
    assert pool.k[0, :64].float().sum().item() == 1.5 * 64 * 4 * 16


def test_context_is_capped_to_what_the_cache_holds(lm, caplog):
    """A KV cache smaller than the model's context serves the context it holds (and says so), instead of
    advertising the model's and refusing every request that asks for the rest of it."""
    with caplog.at_level("WARNING", logger="hearth"):
        eng = LLMEngine(lm, EngineConfig(num_blocks=4, block_size=16))
    assert eng.max_model_len == 64 < lm.model.config.max_seq_len
    assert "serving a context of 64" in caplog.text
    with pytest.raises(ContextLengthError):
        eng.add_request(EngineRequest("x", [1] * 60, SamplingParams(max_tokens=5)))
    eng.add_request(EngineRequest("y", [1] * 60, SamplingParams(max_tokens=4)))  # exactly the whole cache
    while eng.has_work():
        eng.step()


def test_prefix_cache_reuses_a_chat_prefix_and_keeps_outputs(lm):
    """Turn two of a chat (and another chat with the same system prompt) start after the cached blocks of the first
    turn's prompt; on the exact fp32 path the greedy tokens equal the single-sequence Generator's. Prompt-logprob
    requests compute every position and get the same numbers either way."""
    system = "You are a careful assistant. " * 12
    first = [{"role": "system", "content": system}, {"role": "user", "content": "Name a river."}]
    ids1 = lm.tokenizer.encode(lm.chat_template.render(first), add_bos=False)
    gen = Generator(lm.model, lm.tokenizer)
    reply = gen.complete(ids1, GREEDY)
    second = first + [{"role": "assistant", "content": reply.text}, {"role": "user", "content": "And a mountain?"}]
    ids2 = lm.tokenizer.encode(lm.chat_template.render(second), add_bos=False)
    eng = LLMEngine(lm, EngineConfig(kv_cache_bytes=64 << 20))
    eng.add_request(EngineRequest("t1", ids1, GREEDY))
    assert drain(eng)["t1"]["ids"] == reply.token_ids
    queried = eng.blocks.queried_tokens
    eng.add_request(EngineRequest("t2", ids2, GREEDY))
    got = drain(eng)["t2"]["ids"]
    hit = eng.blocks.hit_tokens
    assert hit >= (len(ids1) // 16 - 1) * 16 and eng.blocks.queried_tokens == queried + len(ids2)
    assert got == gen.complete(ids2, GREEDY).token_ids
    # prompt logprobs: no reuse, same numbers as on an engine without the cache
    cold = LLMEngine(lm, EngineConfig(kv_cache_bytes=64 << 20, enable_prefix_caching=False))
    for e in (eng, cold):
        e.add_request(EngineRequest("lp", ids2, SamplingParams(temperature=0, max_tokens=1), prompt_logprobs=0))
    warm_lp = [o for o in drain(eng)["lp"]["out"] if o.prompt_logprobs][0].prompt_logprobs
    cold_lp = [o for o in drain(cold)["lp"]["out"] if o.prompt_logprobs][0].prompt_logprobs
    assert eng.blocks.hit_tokens == hit  # not looked up
    assert [e.logprob for e in warm_lp[1:]] == pytest.approx([e.logprob for e in cold_lp[1:]], abs=1e-4)
