"""The whole-token native decode step over the engine's paged KV cache (DecodePlan.step_paged, CPUDecoder.paged) and
the engine's use of it for all-decode steps on the CPU (ModelRunner's native route)."""

from __future__ import annotations

import pytest
import torch

import tiny
from hearth.engine.llm_engine import EngineConfig, LLMEngine
from hearth.kernels import gguf_ops
from hearth.loader import load
from hearth.model.paged import PagedKVCache
from test_quant_kernels import tiny_gguf  # noqa: F401  (the tiny GGUF models, a module fixture)

pytestmark = [
    pytest.mark.skipif(gguf_ops() is None, reason="hearth's native CPU kernels are not available here"),
    pytest.mark.usefixtures("one_thread"),
]


def _contiguous(model, ids: list[int], n: int):
    """A B=1 contiguous cache holding the first n tokens' k/v (a prompt prefilled), with room for one more."""
    cache = model.new_cache(1, n + 1)
    with torch.inference_mode():
        model(torch.tensor([ids[:n]]), 0, cache)
    return cache


def _paged_step(lm, lengths: list[int], block_size: int = 4, seed: int = 0):
    """Sequences of `lengths` cached tokens copied into a paged pool with shuffled blocks; one step_paged for all of
    them against one contiguous step per sequence. Returns (paged logits, contiguous logits, pool, the pool as the
    contiguous steps wrote it)."""
    model, dec = lm.model, lm.decoder
    ids = list(tiny.corpus_ids(max(lengths) + 8))
    need = [-(-(n + 1) // block_size) for n in lengths]
    num_blocks = sum(need) + 3
    perm = torch.randperm(num_blocks, generator=torch.Generator().manual_seed(seed)).tolist()
    tables, used = [], 0
    for k in need:
        tables.append(perm[used : used + k])
        used += k
    width = max(need) + 1
    pool = PagedKVCache(model.config, num_blocks, block_size, torch.device("cpu"), model.cache_dtype)
    want = PagedKVCache(model.config, num_blocks, block_size, torch.device("cpu"), model.cache_dtype)
    pool.k.normal_(), pool.v.normal_()  # stale contents in slots nobody reads
    want.k.copy_(pool.k), want.v.copy_(pool.v)
    ref_logits = []
    tokens = [ids[n + b] for b, n in enumerate(lengths)]  # each row's next token (different rows, different tokens)
    for b, n in enumerate(lengths):
        cache = _contiguous(model, ids[b:], n)
        slots = torch.tensor([tables[b][p // block_size] * block_size + p % block_size for p in range(n + 1)])
        pool.k[:, slots[:n]] = cache.k[:, 0, :, :n].transpose(1, 2)
        pool.v[:, slots[:n]] = cache.v[:, 0, :, :n].transpose(1, 2)
        with torch.inference_mode():
            cos, sin = dec._tables(model, n)
            ref_logits.append(dec._plan.step(torch.tensor([tokens[b]]), cache.k, cache.v, cos, sin, n)[0])
        want.k[:, slots] = cache.k[:, 0].transpose(1, 2)
        want.v[:, slots] = cache.v[:, 0].transpose(1, 2)
    table = torch.full((len(lengths), width), num_blocks - 1, dtype=torch.long)
    for b, t in enumerate(tables):
        table[b, : len(t)] = torch.tensor(t)
    with torch.inference_mode():
        got = dec.paged(model, torch.tensor(tokens), torch.tensor(lengths), pool, table)
    return got, torch.stack(ref_logits), pool, want


@pytest.mark.parametrize("kv", ["f16", "f32"])
@pytest.mark.parametrize("name", ["Q4_1", "Q8_0"])
@pytest.mark.parametrize("lengths", [[37], [5, 70, 33]], ids=["B1", "B3"])
def test_paged_step_is_the_contiguous_step(tiny_gguf, name, lengths, kv):  # noqa: F811
    """Through shuffled blocks, the same logits to the bit and the same k/v written, as the contiguous whole step
    gives each sequence alone (past 64 positions: two attention chunks), with fp16 (the default) or fp32 caches."""
    _, paths = tiny_gguf
    lm = load(str(paths[name]), kv_cache=kv)
    assert lm.decoder is not None
    assert lm.model.cache_dtype == {"f16": torch.float16, "f32": torch.float32}[kv]
    got, ref, pool, want = _paged_step(lm, lengths)
    assert torch.equal(got, ref)
    assert torch.equal(pool.k, want.k) and torch.equal(pool.v, want.v)


def test_paged_step_on_two_threads(tiny_gguf):  # noqa: F811
    _, paths = tiny_gguf
    lm = load(str(paths["Q4_1"]))
    one, *_ = _paged_step(lm, [5, 70, 33], seed=1)
    torch.set_num_threads(2)
    try:
        two, ref, pool, want = _paged_step(lm, [5, 70, 33], seed=1)
    finally:
        torch.set_num_threads(1)
    assert torch.equal(two, one) and torch.equal(two, ref)
    assert torch.equal(pool.k, want.k)


def test_paged_step_refuses_bad_tables(tiny_gguf):  # noqa: F811
    _, paths = tiny_gguf
    lm = load(str(paths["Q8_0"]))
    model, dec = lm.model, lm.decoder
    pool = PagedKVCache(model.config, 4, 4, torch.device("cpu"), model.cache_dtype)
    with torch.inference_mode():
        with pytest.raises(RuntimeError, match="outside the block table"):
            dec.paged(model, torch.tensor([5]), torch.tensor([8]), pool, torch.tensor([[0, 1]]))
        with pytest.raises(RuntimeError, match="outside the pool"):
            dec.paged(model, torch.tensor([5]), torch.tensor([3]), pool, torch.tensor([[4]]))


def test_engine_keeps_the_padded_route_when_asked(tiny_gguf):  # noqa: F811
    """cuda_graphs=True on a CPU keeps the padded (graph-shaped) route; the native one is not used alongside it."""
    _, paths = tiny_gguf
    lm = load(str(paths["Q4_1"]))
    eng = LLMEngine(lm, EngineConfig(max_num_seqs=4, max_num_batched_tokens=32, kv_cache_bytes=8 << 20,
                                     cuda_graphs=True))
    assert eng.runner.graphs is not None and eng.runner.cpu_decoder is None


@pytest.mark.parametrize("targets,layers", [
    (("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"), None),
    (("q_proj", "v_proj", "down_proj"), None),
    (("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"), (1,)),
], ids=["all", "some", "top-block"])
def test_paged_step_with_lora_is_the_per_layer_path(tiny_gguf, targets, layers, tmp_path):  # noqa: F811
    """Served LoRA adapters inside the native step (DecodePlan.add_lora / step_paged_lora): a sequence with an adapter
    gets what the per-layer path with BatchedLoRA gives it (the updates summed in another order: equal to ~1e-6,
    far below what the adapter changes), a sequence without one in the same step its base logits to the bit."""
    from hearth.engine.lora import ServedAdapters
    from hearth.tune.lora import LoraConfig
    from lora_kit import make_adapter

    ref, paths = tiny_gguf
    adapter = make_adapter(tmp_path / "adapter", LoraConfig(r=4, alpha=8, targets=targets, layers=layers), seed=0, std=0.1,
                           model=str(paths["Q4_1"]))

    lm = load(str(paths["Q4_1"]))
    model, dec = lm.model, lm.decoder
    served = ServedAdapters(model, {"a": str(adapter)})
    assert served.register_native(model, dec)
    ids = list(tiny.corpus_ids(48))
    n = 37
    served.groups = [(1, None)]  # the prompt prefilled with the adapter (per-layer path)
    cache = _contiguous(model, ids, n)
    pool = PagedKVCache(model.config, 4, 64, torch.device("cpu"), model.cache_dtype)
    with torch.inference_mode():
        for first in (0, 128):  # the prompt's k/v for two sequences: blocks 0-1 and 2-3
            pool.k[:, first : first + n] = cache.k[:, 0, :, :n].transpose(1, 2)
            pool.v[:, first : first + n] = cache.v[:, 0, :, :n].transpose(1, 2)
        tok = torch.tensor([ids[n]])
        want = model(tok.view(1, 1), n, cache)[0, 0]  # the model alone: the per-layer path for one token
        served.clear()
        base = model(tok.view(1, 1), n, _contiguous(model, ids, n))[0, 0]
        table = torch.tensor([[0, 1], [2, 3]])
        # row 0 with the adapter, row 1 (the same cache contents) without: one step
        got = dec.paged(model, torch.tensor([ids[n], ids[n]]), torch.tensor([n, n]), pool, table, torch.tensor([1, 0]))
        plain_step = dec.paged(model, tok, torch.tensor([n]), pool, table[1:])
    assert (want - base).abs().max().item() > 0.1  # the adapter matters
    assert (got[0] - want).abs().max().item() < 1e-4, (got[0] - want).abs().max().item()
    assert torch.equal(got[1], plain_step[0])  # a row without an adapter: untouched, to the bit
    # the contiguous step with the adapter on every row (`hearth run --adapter`): the paged step's arithmetic
    served.groups = [(1, None)]
    cache = _contiguous(model, ids, n)
    dec.adapter = 1
    try:
        with torch.inference_mode():
            one = dec.forward(model, tok.view(1, 1), n, cache)[0, 0]  # the contiguous whole step
    finally:
        dec.adapter = 0
    assert torch.equal(one, got[0])
