"""The fixed-shape decode step (device-held position, attention over the whole cache under a mask) that CUDA graphs
and torch.compile run on a GPU: same logits and greedy tokens as the plain int-position path. On the CPU the
step runs eagerly; the CUDA-graph test runs only where a GPU is present."""

from __future__ import annotations

import pytest
import torch

from hearth.fast import apply_fast_path
from hearth.fast.static_decode import StaticDecoder, cache_bucket
from hearth.model import Transformer
from tiny import random_transformer

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny(seed: int = 0, **kw) -> Transformer:
    return random_transformer(seed, std=0.2, **{"max_seq_len": 64, **kw})


def reference(m: Transformer, ids: torch.Tensor, steps: int) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Greedy decoding with the plain path: int positions, cache sliced to the filled length."""
    cache = m.new_cache(ids.shape[0], 64)
    logits = m(ids, 0, cache, last_only=True)[:, -1]
    out, nxt, pos = [logits], logits.argmax(-1, keepdim=True), ids.shape[1]
    toks = [nxt]
    for _ in range(steps):
        logits = m(nxt, pos, cache)[:, -1]
        out.append(logits)
        nxt, pos = logits.argmax(-1, keepdim=True), pos + 1
        toks.append(nxt)
    return out, torch.cat(toks, 1)


def static(m: Transformer, ids: torch.Tensor, steps: int, max_seq_len: int = 64, device="cpu"):
    dec = StaticDecoder(m, ids.shape[0], max_seq_len)
    logits = dec.prefill(ids.to(device))
    out, nxt = [logits.cpu()], logits.argmax(-1, keepdim=True)
    toks = [nxt.cpu()]
    for _ in range(steps):
        logits = dec.step(nxt)
        out.append(logits.cpu().clone())
        nxt = logits.argmax(-1, keepdim=True)
        toks.append(nxt.cpu())
    return out, torch.cat(toks, 1)


@pytest.mark.parametrize("n_kv_heads", [1, 2, 4])
@torch.inference_mode()
def test_static_step_equals_plain_path(n_kv_heads):
    m = tiny(n_kv_heads=n_kv_heads)
    ids = torch.randint(0, 97, (2, 7), generator=torch.Generator().manual_seed(1))
    ref, ref_toks = reference(m, ids, 12)
    got, toks = static(m, ids, 12)
    for a, b in zip(ref, got):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5)
    assert torch.equal(toks, ref_toks)


@torch.inference_mode()
def test_static_step_with_fused_projections():
    m = tiny(seed=3)
    ids = torch.randint(0, 97, (1, 5), generator=torch.Generator().manual_seed(2))
    ref, ref_toks = reference(m, ids, 8)
    apply_fast_path(m)  # q|k|v and gate|up fused, as the GPU path runs them
    assert m.layers[0].attention.wqkv is not None
    got, toks = static(m, ids, 8, max_seq_len=32)
    for a, b in zip(ref, got):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-4)
    assert torch.equal(toks, ref_toks)


@torch.inference_mode()
def test_cache_full_and_prompt_too_long_are_errors():
    m = tiny()
    dec = StaticDecoder(m, 1, 8)
    with pytest.raises(ValueError, match="leaves no room"):
        dec.prefill(torch.zeros(1, 8, dtype=torch.long))
    dec.prefill(torch.zeros(1, 6, dtype=torch.long))
    dec.step(torch.zeros(1, 1, dtype=torch.long))
    dec.step(torch.zeros(1, 1, dtype=torch.long))
    with pytest.raises(ValueError, match="full"):
        dec.step(torch.zeros(1, 1, dtype=torch.long))


def test_cache_bucket():
    assert [cache_bucket(n) for n in (1, 256, 257, 1000, 5000)] == [256, 256, 512, 1024, 8192]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("compile", [False, True])
@torch.inference_mode()
def test_cuda_graph_replay_equals_plain_path(compile):
    m = tiny(seed=5).cuda()
    ids = torch.randint(0, 97, (2, 6), generator=torch.Generator().manual_seed(4))
    ref, ref_toks = reference(m, ids.cuda(), 10)
    dec = StaticDecoder(m, 2, 64, graphs=True, compile=compile)
    logits = dec.prefill(ids.cuda())
    got, nxt = [logits.cpu()], logits.argmax(-1, keepdim=True)
    toks = [nxt.cpu()]
    for _ in range(10):
        logits = dec.step(nxt)
        got.append(logits.cpu().clone())
        nxt = logits.argmax(-1, keepdim=True)
        toks.append(nxt.cpu())
    assert dec._graph is not None
    for a, b in zip(ref, got):
        torch.testing.assert_close(b, a.cpu(), rtol=1e-4, atol=1e-4)
    assert torch.equal(torch.cat(toks, 1), ref_toks.cpu())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_engine_graph_steps_equal_eager_steps():
    from types import SimpleNamespace

    from hearth.engine.llm_engine import EngineConfig, LLMEngine
    from hearth.engine.request import EngineRequest
    from hearth.engine.sampling import SamplingParams
    from hearth.tokenizer import Tokenizer

    m = tiny(seed=7, max_seq_len=128).cuda()
    lm = SimpleNamespace(model=m, tokenizer=Tokenizer.placeholder(97), dtype=torch.float32)
    g = torch.Generator().manual_seed(3)
    prompts = [torch.randint(0, 97, (n,), generator=g).tolist() for n in (3, 9, 17, 30, 5, 12)]
    outs = {}
    for graphs in (False, True):
        eng = LLMEngine(lm, EngineConfig(max_num_seqs=4, max_num_batched_tokens=32, block_size=4, num_blocks=64,
                                         cuda_graphs=graphs))
        for i, p in enumerate(prompts):
            eng.add_request(EngineRequest(f"r{i}", p, SamplingParams(temperature=0, max_tokens=20, ignore_eos=True)))
        got = {f"r{i}": [] for i in range(len(prompts))}
        while eng.has_work():
            for o in eng.step():
                got[o.request_id] += o.new_token_ids
        assert (eng.runner.graphs is not None and eng.runner.graphs.steps > 0) == graphs
        outs[graphs] = got
    assert outs[True] == outs[False]


def _generator_runs(device: str):
    from hearth.engine.generate import Generator
    from hearth.engine.sampling import SamplingParams
    from hearth.tokenizer import Tokenizer

    m = tiny(seed=9, max_seq_len=300).to(device)
    tok = Tokenizer.placeholder(97)
    prompt = torch.randint(0, 97, (11,), generator=torch.Generator().manual_seed(5)).tolist()
    outs = []
    for graphs in (False, True):
        gen = Generator(m, tok, graphs=graphs)
        greedy = gen.complete(prompt, SamplingParams(temperature=0, max_tokens=25, ignore_eos=True))
        sampled = gen.complete(prompt, SamplingParams(temperature=0.9, seed=3, max_tokens=25, ignore_eos=True,
                                                      repetition_penalty=1.3))
        outs.append((greedy.token_ids, greedy.text, sampled.token_ids))
        assert bool(gen._decoders) == graphs  # the fixed-shape route was taken (one decoder, cache of 256)
    assert outs[0] == outs[1]
    assert len(outs[0][0]) == 25


@torch.inference_mode()
def test_generator_fixed_shape_route_equals_plain_route():
    _generator_runs("cpu")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@torch.inference_mode()
def test_cuda_generator_graph_route_equals_plain_route():
    _generator_runs("cuda")


@torch.inference_mode()
def test_compiled_step_equals_plain_path_on_cpu():
    """The torch.compile'd fixed-shape step (what `--compile` runs on a GPU, here through inductor's CPU backend)."""
    m = tiny(seed=11)
    ids = torch.randint(0, 97, (1, 6), generator=torch.Generator().manual_seed(6))
    ref, ref_toks = reference(m, ids, 5)
    dec = StaticDecoder(m, 1, 64, graphs=False, compile=True)
    logits = dec.prefill(ids)
    got, nxt, toks = [logits], logits.argmax(-1, keepdim=True), [logits.argmax(-1, keepdim=True)]
    for _ in range(5):
        logits = dec.step(nxt).clone()
        got.append(logits)
        nxt = logits.argmax(-1, keepdim=True)
        toks.append(nxt)
    for a, b in zip(ref, got):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-4)
    assert torch.equal(torch.cat(toks, 1), ref_toks)
