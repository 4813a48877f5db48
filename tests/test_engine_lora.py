"""LoRA adapters served by the engine beside the base model (hearth/engine/lora.py), on the real default model.

The reference for a request with an adapter is the single-sequence Generator on a model carrying that adapter the
way `hearth run --adapter` and `hearth tune` do (LoRALinear, checked against PEFT in test_tune_peft.py). Requests of
two adapters and of the base model share every step; each must equal its own reference.
"""

from __future__ import annotations

import pytest

from hearth.engine.generate import Generator
from hearth.engine.llm_engine import EngineConfig, LLMEngine
from hearth.engine.request import EngineRequest
from hearth.engine.sampling import SamplingParams
from hearth.errors import HearthError
from hearth.loader import load
from hearth.tune.peft_io import load_adapter
from hearth.weights.adapters.targets import LoraConfig
from lora_kit import make_adapter

PROMPTS = ["The capital of France is", "Once upon a time", "def fib(n):", "Water boils at"]
GREEDY = SamplingParams(temperature=0, max_tokens=10)
ADAPTERS = {"all": LoraConfig(r=8, alpha=16), "qv": LoraConfig(r=4, alpha=8, targets=("q_proj", "v_proj"))}
B_STD = {"all": 0.03, "qv": 0.2}  # strong enough to change every prompt's greedy continuation


@pytest.fixture(scope="module")
def adapters(tmp_path_factory):
    root = tmp_path_factory.mktemp("adapters")
    return {name: make_adapter(root / name, cfg, seed, B_STD[name]) for seed, (name, cfg) in enumerate(ADAPTERS.items())}


@pytest.fixture(scope="module")
def references(adapters):
    """prompt -> {"": base tokens, adapter name: tokens}, each from the Generator alone (fp32)."""
    out = {p: {} for p in PROMPTS}
    for name in ["", *adapters]:
        lm = load("smollm2", dtype="float32")
        if name:
            load_adapter(lm.model, adapters[name])
        gen = Generator(lm.model, lm.tokenizer)
        for p in PROMPTS:
            out[p][name] = gen.complete(lm.tokenizer.encode(p), GREEDY).token_ids
    return out


def _run(eng: LLMEngine, requests: list[EngineRequest]) -> dict[str, list[int]]:
    for r in requests:
        eng.add_request(r)
    got: dict[str, list[int]] = {r.request_id: [] for r in requests}
    while eng.has_work():
        for o in eng.step():
            got[o.request_id] += o.new_token_ids
    return got


def test_adapters_change_the_output(references):
    # else the comparisons below could not tell an adapter applied from one ignored
    for p in PROMPTS:
        assert references[p]["all"] != references[p][""] and references[p]["qv"] != references[p][""], p


@pytest.mark.parametrize("graphs", [False, True], ids=["eager", "padded-decode"])
def test_mixed_batch_equals_each_request_alone(adapters, references, graphs):
    """padded-decode: base-only all-decode steps take the CUDA-graph route (run unrecorded on a CPU); steps with
    adapter rows never do."""
    lm = load("smollm2", dtype="float32")
    eng = LLMEngine(lm, EngineConfig(max_num_seqs=12, max_num_batched_tokens=24, kv_cache_bytes=64 << 20,
                                     adapters={k: str(v) for k, v in adapters.items()}, cuda_graphs=graphs))
    tok = lm.tokenizer
    reqs = [EngineRequest(f"{name or 'base'}-{i}", tok.encode(p), GREEDY, adapter=name or None)
            for i, p in enumerate(PROMPTS) for name in ["", "all", "qv"]]
    got = _run(eng, reqs)
    for r in reqs:
        want = references[PROMPTS[int(r.request_id.rsplit("-", 1)[1])]][r.adapter or ""]
        assert got[r.request_id] == want, r.request_id
    assert eng.blocks.num_used == 0
    if graphs:  # the graphs hold the base weights: recorded with the wrappers out of the way, put back after
        steps = eng.runner.graphs.steps
        base = _run(eng, [EngineRequest(f"g{i}", tok.encode(p), GREEDY) for i, p in enumerate(PROMPTS)])
        assert eng.runner.graphs.steps >= steps + GREEDY.max_tokens - 2
        assert all(base[f"g{i}"] == references[p][""] for i, p in enumerate(PROMPTS))
        from hearth.engine.lora import BatchedLoRA

        att = lm.model.layers[0].attention
        wrapper = getattr(att, "wqkv", None) or att.wq  # fused (the fast path) or plain
        assert isinstance(wrapper, BatchedLoRA)
        with eng.adapters.base_only():
            assert (getattr(att, "wqkv", None) or att.wq) is wrapper.base
        assert (getattr(att, "wqkv", None) or att.wq) is wrapper


def test_prefix_cache_is_per_adapter(adapters, references):
    """The same prompt under the base model then an adapter: the adapter's KV differs, so no cached block is shared."""
    lm = load("smollm2", dtype="float32")
    eng = LLMEngine(lm, EngineConfig(kv_cache_bytes=64 << 20, adapters={"all": str(adapters["all"])}))
    ids = lm.tokenizer.encode(PROMPTS[0] * 8)  # several full blocks
    base = _run(eng, [EngineRequest("b", ids, GREEDY)])["b"]
    before = eng.blocks.hit_tokens
    tuned = _run(eng, [EngineRequest("a", ids, GREEDY, adapter="all")])["a"]
    assert eng.blocks.hit_tokens == before  # nothing reused across models
    again = _run(eng, [EngineRequest("a2", ids, GREEDY, adapter="all")])["a2"]
    assert eng.blocks.hit_tokens > before  # reused within the adapter
    ref = load("smollm2", dtype="float32")
    load_adapter(ref.model, adapters["all"])
    assert again == tuned == Generator(ref.model, ref.tokenizer).complete(ids, GREEDY).token_ids
    assert base == Generator(lm.model, lm.tokenizer).complete(ids, GREEDY).token_ids


def test_native_cpu_path_with_adapters(adapters, references):
    """The default 4-bit path (fused q|k|v and gate|up in GGUF blocks): adapter rows get their updates in the fused
    columns, in the eager steps (prefill) and inside the native whole-token decode step (its parity with the
    per-layer path: test_cpu_paged_decode.py). Mostly equal to the fp32 references (the 4-bit arithmetic flips near
    ties, see test_engine.py::test_native_batch_mostly_equals_alone)."""
    lm = load("smollm2")
    eng = LLMEngine(lm, EngineConfig(kv_cache_bytes=64 << 20, adapters={k: str(v) for k, v in adapters.items()}))
    assert eng.runner.cpu_decoder is not None
    tok = lm.tokenizer
    assert eng.runner.native_lora  # the adapters are in the native step too
    base_only = _run(eng, [EngineRequest(f"b{i}", tok.encode(p), GREEDY) for i, p in enumerate(PROMPTS)])
    assert eng.runner.native_steps >= GREEDY.max_tokens - 2
    steps = eng.runner.native_steps
    tuned = _run(eng, [EngineRequest(f"{name}{i}", tok.encode(p), GREEDY, adapter=name)
                       for i, p in enumerate(PROMPTS) for name in ("all", "qv")])
    assert eng.runner.native_steps >= steps + GREEDY.max_tokens - 2  # decode steps with adapter rows stay native
    agree = total = 0
    for i, p in enumerate(PROMPTS):
        for name, ids in [("", base_only[f"b{i}"]), ("all", tuned[f"all{i}"]), ("qv", tuned[f"qv{i}"])]:
            ref = references[p][name]
            agree += next((j for j, (a, b) in enumerate(zip(ids, ref)) if a != b), len(ref))
            total += len(ref)
    assert agree >= 0.75 * total, (agree, total)


def test_unknown_or_unfit_adapters_are_refused(adapters, tmp_path):
    lm = load("smollm2", dtype="float32")
    eng = LLMEngine(lm, EngineConfig(kv_cache_bytes=16 << 20, adapters={"qv": str(adapters["qv"])}))
    with pytest.raises(HearthError, match=r"no adapter named 'nope' is served \(adapters: qv\)"):
        eng.add_request(EngineRequest("x", [1, 2], GREEDY, adapter="nope"))
    plain = LLMEngine(lm, EngineConfig(kv_cache_bytes=16 << 20))
    with pytest.raises(HearthError, match="adapters: none"):
        plain.add_request(EngineRequest("x", [1, 2], GREEDY, adapter="qv"))
    with pytest.raises(HearthError, match="already carries served adapters"):
        LLMEngine(lm, EngineConfig(kv_cache_bytes=16 << 20, adapters={"qv": str(adapters["qv"])}))
    with pytest.raises(HearthError, match="is not a directory"):
        LLMEngine(load("smollm2", dtype="float32"), EngineConfig(kv_cache_bytes=16 << 20, adapters={"x": str(tmp_path / "no")}))
