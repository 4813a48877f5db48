"""The same model code on a CUDA GPU (skipped where there is none: CI has none; run on the device).

Tiny random-weight variants are saved as HF directories, loaded on CUDA in fp32/bf16/fp16 and
compared with hearth on the CPU (fp32, the path the reference tests pin) and with transformers on CUDA.
"""

from __future__ import annotations

import copy

import pytest
import torch

import tiny
from hearth.engine.generate import Generator
from hearth.engine.sampling import SamplingParams
from hearth.loader import load

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

VARIANTS = ["llama2_mha", "smollm_tied", "llama32_scaled"]


@pytest.fixture(scope="module", params=VARIANTS)
def hf_dir(request, tmp_path_factory):
    if request.param not in tiny.VARIANTS:
        pytest.skip(f"no tiny variant {request.param}")
    model = tiny.make_hf_model(request.param)
    return tiny.save_hf_model(model, tmp_path_factory.mktemp(request.param)), model


@pytest.fixture(autouse=True)
def no_tf32():
    old = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32 = old


@torch.inference_mode()
def test_cuda_fp32_matches_cpu(hf_dir):
    path, _ = hf_dir
    ids = torch.tensor([list(tiny.corpus_ids(300))])
    cpu = load(str(path), device="cpu", dtype="float32").model(ids)[0]
    gpu = load(str(path), device="cuda", dtype="float32").model(ids.cuda())[0].cpu()
    assert (gpu - cpu).abs().max() < 1e-3


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
@torch.inference_mode()
def test_cuda_half_precision_close_to_fp32_and_to_transformers(hf_dir, dtype):
    path, hf_model = hf_dir
    ids = list(tiny.corpus_ids(300))
    ref = tiny.hf_logits(hf_model, ids)
    lm = load(str(path), device="cuda", dtype=dtype)
    assert lm.model.tok_embeddings.weight.dtype == getattr(torch, dtype)
    ours = lm.model(torch.tensor([ids], device="cuda"))[0].cpu()
    # a copy: casting the shared fp32 model in place would round its weights for later tests
    hf_half = copy.deepcopy(hf_model).to("cuda", getattr(torch, dtype))
    theirs = hf_half(torch.tensor([ids], device="cuda")).logits[0].float().cpu()
    # hearth in half precision is no further from fp32 than transformers in the same precision (+ slack)
    d_ours, d_theirs = (ours - ref).abs().max().item(), (theirs - ref).abs().max().item()
    assert d_ours <= 1.5 * d_theirs + 1e-3, (d_ours, d_theirs)
    assert (ours.argmax(-1) == ref.argmax(-1)).float().mean() > 0.9


def test_cuda_generation_streams_and_uses_kv_cache(hf_dir):
    path, _ = hf_dir
    ids = list(tiny.corpus_ids(40))
    cpu = load(str(path), device="cpu", dtype="float32")
    gpu = load(str(path), device="cuda", dtype="float32")
    params = SamplingParams(temperature=0, max_tokens=24, ignore_eos=True)
    a = Generator(cpu.model, cpu.tokenizer).complete(ids, params).token_ids
    b = Generator(gpu.model, gpu.tokenizer).complete(ids, params).token_ids
    assert a == b
    # seeded sampling runs on the GPU too
    s = SamplingParams(temperature=0.9, top_p=0.9, top_k=50, seed=7, max_tokens=16, ignore_eos=True)
    g = Generator(gpu.model, gpu.tokenizer)
    assert g.complete(ids, s).token_ids == g.complete(ids, s).token_ids


def test_cuda_engine_batch_equals_each_request_alone(hf_dir):
    """The continuous-batching engine (paged KV cache, chunked prefill) on the GPU."""
    from hearth.engine.llm_engine import EngineConfig, LLMEngine
    from hearth.engine.request import EngineRequest

    path, _ = hf_dir
    gpu = load(str(path), device="cuda", dtype="float32")
    corpus = list(tiny.corpus_ids(200))
    prompts = [corpus[i * 13 : i * 13 + 5 + i * 7] for i in range(12)]
    params = SamplingParams(temperature=0, max_tokens=16, ignore_eos=True)
    gen = Generator(gpu.model, gpu.tokenizer)
    alone = [gen.complete(p, params).token_ids for p in prompts]
    eng = LLMEngine(gpu, EngineConfig(max_num_seqs=12, max_num_batched_tokens=32, kv_cache_bytes=16 << 20))
    for i, p in enumerate(prompts):
        eng.add_request(EngineRequest(str(i), p, params))
    got: dict[str, list[int]] = {str(i): [] for i in range(len(prompts))}
    while eng.has_work():
        for o in eng.step():
            got[o.request_id] += o.new_token_ids
    assert [got[str(i)] for i in range(len(prompts))] == alone
    assert eng.blocks.num_used == 0


@torch.inference_mode()
def test_cuda_default_dtype_fuses_projections_and_matches_plain_bf16(hf_dir):
    """dtype auto on CUDA: bf16 with q|k|v and gate|up fused; generation through the CUDA-graph decoder equals the
    plain unfused bf16 model's logits closely and its greedy tokens."""
    path, _ = hf_dir
    ids = list(tiny.corpus_ids(40))
    auto = load(str(path), device="cuda")
    plain = load(str(path), device="cuda", dtype="bfloat16")
    assert auto.dtype == torch.bfloat16 and auto.model.layers[0].attention.wqkv is not None
    assert getattr(plain.model.layers[0].attention, "wqkv", None) is None  # plain modules
    x = torch.tensor([ids], device="cuda")
    a, b = auto.model(x)[0].float(), plain.model(x)[0].float()
    assert (a - b).abs().max().item() <= 0.05 * b.abs().max().item()
    params = SamplingParams(temperature=0, max_tokens=12, ignore_eos=True)
    gen = Generator(auto.model, auto.tokenizer)
    out = gen.complete(ids, params).token_ids
    assert gen._decoders  # the CUDA-graph route was taken
    assert all(d.kernels for d in gen._decoders.values())  # through hearth's Triton kernels (gpu_decode.py)
    assert_near_greedy(plain.model, ids, out)


def assert_near_greedy(plain, ids: list[int], out: list[int]) -> None:
    """Each token in `out` is the plain model's greedy choice on the same prefix, or within a bf16 near-tie of it (a
    random tiny model's logits are nearly flat, and free-running greedy parts at the first tie)."""
    ref = plain(torch.tensor([ids + out[:-1]], device="cuda"))[0, len(ids) - 1 :].float()
    chosen = ref[torch.arange(len(out), device="cuda"), torch.tensor(out, device="cuda")]
    gap = ref.max(-1).values - chosen
    assert gap.max().item() <= 0.03 * ref.abs().max().item(), (out, gap.tolist())
    assert (gap == 0).sum().item() >= len(out) // 2


@torch.inference_mode()
def test_cuda_engine_lone_sequence_runs_the_triton_step(hf_dir):
    """A single request through the engine (bf16): its decode steps replay hearth's Triton step over the paged cache."""
    from hearth.engine.llm_engine import EngineConfig, LLMEngine
    from hearth.engine.request import EngineRequest

    path, _ = hf_dir
    lm = load(str(path), device="cuda")
    plain = load(str(path), device="cuda", dtype="bfloat16")
    ids = list(tiny.corpus_ids(40))
    eng = LLMEngine(lm, EngineConfig(max_num_seqs=4, kv_cache_bytes=16 << 20))
    eng.add_request(EngineRequest("0", ids, SamplingParams(temperature=0, max_tokens=12, ignore_eos=True)))
    out: list[int] = []
    while eng.has_work():
        for o in eng.step():
            out += o.new_token_ids
    assert len(out) == 12 and eng.runner.graphs.triton_buckets
    assert_near_greedy(plain.model, ids, out)
    assert eng.blocks.num_used == 0
