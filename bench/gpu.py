"""GPU decode speed: hearth vs transformers (eager), bf16, random weights of Llama-3.2-1B / 3.1-8B shapes.

    python bench/gpu.py [--models llama-3.2-1b llama-3.1-8b] [--prompt 128] [--new 128] [--seqs 64]

Batch 1: decode tokens/s of hearth's plain path (one Python call per layer, as `hearth run` ran before CUDA graphs),
its fixed-shape step replayed as a CUDA graph, the same step compiled with torch.compile before recording, and
hearth's Triton kernels for the step (hearth/fast/gpu_decode.py, what `hearth run` uses on a GPU) as a CUDA graph;
transformers' `generate` (eager, default SDPA attention) as the peer; the memory-bandwidth roofline (weights read once
per token at the measured device-to-device copy rate).

Batch `--seqs` (64): aggregate tokens/s of hearth's continuous-batching engine (all requests submitted at once, greedy,
`ignore_eos`, prefill included, CUDA-graph decode steps; and with them off) vs transformers `generate` on the same
batch. Speed does not depend on weight values, so random weights stand in for the real checkpoints. Writes
bench/results/gpu-<timestamp>.json.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from types import SimpleNamespace

import torch

from hearth.config import ModelConfig
from hearth.fast import apply_fast_path
from hearth.fast.static_decode import StaticDecoder
from hearth.model import Transformer
from hearth.model.llama import rope_frequencies

SHAPES = {
    "tiny": dict(dim=256, hidden_dim=512, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=1000, tie_embeddings=True),  # smoke test
    "llama-3.2-1b": dict(dim=2048, hidden_dim=8192, n_layers=16, n_heads=32, n_kv_heads=8, vocab_size=128256, tie_embeddings=True),
    "llama-3.1-8b": dict(dim=4096, hidden_dim=14336, n_layers=32, n_heads=32, n_kv_heads=8, vocab_size=128256, tie_embeddings=False),
}


def copy_bandwidth() -> float:
    x = torch.empty(1024**3, dtype=torch.bfloat16, device="cuda")
    y = torch.empty_like(x)
    for _ in range(3):
        y.copy_(x)
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(20):
        y.copy_(x)
    torch.cuda.synchronize()
    return 2 * x.numel() * 2 * 20 / (time.perf_counter() - t)


def build(shape: dict) -> Transformer:
    cfg = ModelConfig(**shape, rope_theta=500000.0, max_seq_len=4096)
    torch.manual_seed(0)
    with torch.device("cuda"):
        m = Transformer(cfg)
        torch.nn.init.normal_(m.tok_embeddings.weight, std=0.02)  # built without init (see Transformer)
    m = m.to(torch.bfloat16).eval()
    m.inv_freq = rope_frequencies(cfg).cuda()  # RoPE frequencies stay fp32 on the device, as hearth.loader sets them
    apply_fast_path(m)  # q|k|v and gate|up as single products, as `hearth run` does on a GPU
    return m


def timed(fn) -> float:
    torch.cuda.synchronize()
    t = time.perf_counter()
    fn()
    torch.cuda.synchronize()
    return time.perf_counter() - t


@torch.inference_mode()
def hearth_batch1(m: Transformer, prompt: int, new: int, mode: str) -> tuple[float, list[int], float]:
    """tokens/s, the greedy tokens, and seconds spent before the first timed token (compile + capture)."""
    ids = torch.randint(0, m.config.vocab_size, (1, prompt), device="cuda", generator=torch.Generator("cuda").manual_seed(1))
    if mode == "eager":
        def run():
            cache = m.new_cache(1, prompt + new + 1)
            nxt = m(ids, 0, cache, last_only=True)[:, -1].argmax(-1, keepdim=True)
            toks = [nxt]
            for i in range(new):
                nxt = m(nxt, prompt + i, cache)[:, -1].argmax(-1, keepdim=True)
                toks.append(nxt)
            return toks
        setup = timed(run)
        out = []
        dt = timed(lambda: out.append(run()))
        return new / dt, torch.cat(out[0], 1)[0].tolist(), setup
    # triton_nopdl: the same kernels launched without programmatic dependent launch
    dec = StaticDecoder(m, 1, prompt + new + 1, graphs=True, compile=mode == "compile",
                        kernels=mode.startswith("triton"), pdl=mode != "triton_nopdl")
    t0 = time.perf_counter()
    nxt = dec.prefill(ids).argmax(-1, keepdim=True)
    dec.step(nxt)  # compile (if asked) and record the graph
    torch.cuda.synchronize()
    setup = time.perf_counter() - t0
    best, toks = None, None
    for _ in range(2):
        dec.length = 0
        nxt = dec.prefill(ids).argmax(-1, keepdim=True)
        out = [nxt]

        def run():
            x = nxt
            for _ in range(new):
                x = dec.step(x).argmax(-1, keepdim=True)
                out.append(x)
        dt = timed(run)
        best = dt if best is None else min(best, dt)
        toks = torch.cat(out, 1)[0].tolist()
    if PROFILE and mode != "graph":
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(20):
                dec._fn(dec.tokens, dec.pos)
            torch.cuda.synchronize()
        print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=25, max_name_column_width=70))
    return new / best, toks, setup


PROFILE = False


@torch.inference_mode()
def hearth_generator(m: Transformer, prompt: int, new: int, sampling: bool) -> float:
    """Decode tokens/s through `Generator` as `hearth run`/`generate` drive it: the graph step plus, per token, the
    sampler, detokenization and stop checks on the host (prefill subtracted: time(new) - time(1))."""
    from hearth.engine.generate import Generator
    from hearth.engine.sampling import SamplingParams
    from hearth.tokenizer import Tokenizer

    gen = Generator(m, Tokenizer.placeholder(m.config.vocab_size))
    ids = torch.randint(0, m.config.vocab_size, (prompt,), generator=torch.Generator().manual_seed(1)).tolist()
    kw = dict(temperature=0.8, top_p=0.9, seed=0) if sampling else dict(temperature=0)

    def run(n):
        return timed(lambda: gen.complete(ids, SamplingParams(max_tokens=n, ignore_eos=True, **kw)))

    run(new)  # records the graph
    return (new - 1) / (run(new) - run(1))


def hf_model(shape: dict):
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(hidden_size=shape["dim"], intermediate_size=shape["hidden_dim"], num_hidden_layers=shape["n_layers"],
                      num_attention_heads=shape["n_heads"], num_key_value_heads=shape["n_kv_heads"],
                      vocab_size=shape["vocab_size"], tie_word_embeddings=shape["tie_embeddings"], rope_theta=500000.0,
                      max_position_embeddings=4096)
    with torch.device("cuda"):
        return LlamaForCausalLM(cfg).to(torch.bfloat16).eval()


@torch.inference_mode()
def hf_generate(m, batch: int, prompt: int, new: int) -> float:
    """Aggregate tokens/s of `generate` on `batch` prompts of `prompt` random ids (prefill included)."""
    ids = torch.randint(0, m.config.vocab_size, (batch, prompt), device="cuda")
    kw = dict(do_sample=False, pad_token_id=0, attention_mask=torch.ones_like(ids))
    m.generate(ids, max_new_tokens=8, min_new_tokens=8, **kw)
    dt = timed(lambda: m.generate(ids, max_new_tokens=new, min_new_tokens=new, **kw))
    return batch * new / dt


@torch.inference_mode()
def hf_batch1_decode(m, prompt: int, new: int) -> float:
    """Decode-only tokens/s at batch 1: (time for `new` tokens - time for 1) / (new - 1)."""
    ids = torch.randint(0, m.config.vocab_size, (1, prompt), device="cuda")
    kw = dict(do_sample=False, pad_token_id=0, attention_mask=torch.ones_like(ids))
    m.generate(ids, max_new_tokens=new, min_new_tokens=new, **kw)
    t_pre = timed(lambda: m.generate(ids, max_new_tokens=1, min_new_tokens=1, **kw))
    t_all = timed(lambda: m.generate(ids, max_new_tokens=new, min_new_tokens=new, **kw))
    return (new - 1) / (t_all - t_pre)


def hearth_engine(m: Transformer, seqs: int, prompt: int, new: int, graphs: bool) -> dict:
    from hearth.engine.llm_engine import EngineConfig, LLMEngine
    from hearth.engine.request import EngineRequest
    from hearth.engine.sampling import SamplingParams
    from hearth.tokenizer import Tokenizer

    cfg = m.config
    kv_per_token = 2 * cfg.n_layers * cfg.n_kv_heads * cfg.head_dim * 2
    lm = SimpleNamespace(model=m, tokenizer=Tokenizer.placeholder(cfg.vocab_size), dtype=torch.bfloat16)
    eng = LLMEngine(lm, EngineConfig(max_num_seqs=seqs, max_num_batched_tokens=2048, cuda_graphs=graphs,
                                     kv_cache_bytes=int(1.5 * seqs * (prompt + new) * kv_per_token)))
    params = SamplingParams(temperature=0, max_tokens=new, ignore_eos=True)
    g = torch.Generator().manual_seed(2)

    def run(n_new: int) -> int:
        p = SamplingParams(temperature=0, max_tokens=n_new, ignore_eos=True)
        for i in range(seqs):
            eng.add_request(EngineRequest(f"r{i}", torch.randint(0, cfg.vocab_size, (prompt,), generator=g).tolist(), p))
        n = 0
        while eng.has_work():
            n += sum(len(o.new_token_ids) for o in eng.step())
        return n

    run(new)  # warm-up: records the graphs this workload needs
    t = time.perf_counter()
    n = run(params.max_tokens)
    dt = time.perf_counter() - t
    assert n == seqs * new, n
    return dict(tok_s=n / dt, graph_steps=eng.runner.graphs.steps if eng.runner.graphs else 0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["llama-3.2-1b", "llama-3.1-8b"], choices=list(SHAPES))
    ap.add_argument("--prompt", type=int, default=128)
    ap.add_argument("--new", type=int, default=128)
    ap.add_argument("--seqs", type=int, default=64, help="concurrent sequences for the engine comparison")
    ap.add_argument("--modes", default="eager,graph,compile,triton", help="hearth batch-1 modes to run")
    ap.add_argument("--tune", action="store_true", help="torch.compile with inductor's coordinate-descent tuning")
    ap.add_argument("--profile", action="store_true", help="print the compiled step's top GPU kernels")
    ap.add_argument("--no-hf", action="store_true", help="skip the transformers peer")
    ap.add_argument("--generator", action="store_true", help="also time Generator (hearth run's loop) end to end")
    ap.add_argument("--no-engine", action="store_true", help="skip the batched comparison")
    args = ap.parse_args()
    global PROFILE
    PROFILE = args.profile
    if args.tune:
        import torch._inductor.config as inductor

        inductor.coordinate_descent_tuning = True
    bw = copy_bandwidth()
    print(f"GPU {torch.cuda.get_device_name()}, copy bandwidth {bw / 1e12:.2f} TB/s, torch {torch.__version__}", flush=True)
    rows = []
    for name in args.models:
        shape = SHAPES[name]
        row: dict = dict(model=name)
        m = build(shape)
        nbytes = sum(p.numel() * p.element_size() for p in m.parameters())
        row.update(weights_GB=nbytes / 1e9, roofline=bw / nbytes)
        toks = {}
        for mode in args.modes.split(","):
            tps, toks[mode], setup = hearth_batch1(m, args.prompt, args.new, mode)
            row[f"hearth_{mode}"], row[f"setup_{mode}_s"] = tps, setup
            print(f"{name} batch 1 hearth {mode}: {tps:.1f} tok/s ({100 * tps / row['roofline']:.0f}% of roofline "
                  f"{row['roofline']:.0f}), setup {setup:.1f} s", flush=True)
        if "triton" in args.modes.split(",") or args.generator:
            for sampling in (False, True):
                key = "generator_sampling" if sampling else "generator_greedy"
                row[key] = hearth_generator(m, args.prompt, args.new, sampling)
                print(f"{name} batch 1 hearth Generator ({'top-p 0.9 sampling' if sampling else 'greedy'}, as hearth "
                      f"run): {row[key]:.1f} tok/s", flush=True)
        ref = toks.get("eager")
        for mode, t in toks.items():
            row[f"same_tokens_{mode}"] = next((i for i, (a, b) in enumerate(zip(t, ref)) if a != b), len(t)) if ref else None
        if not args.no_engine:
            for graphs in (True, False):
                r = hearth_engine(m, args.seqs, args.prompt, args.new, graphs)
                key = "engine_graphs" if graphs else "engine_eager"
                row[key] = r["tok_s"]
                print(f"{name} {args.seqs} seqs hearth engine {'CUDA graphs' if graphs else 'eager'}: {r['tok_s']:.0f} tok/s "
                      f"({r['graph_steps']} graph steps)", flush=True)
        del m
        torch.cuda.empty_cache()
        if not args.no_hf:
            hf = hf_model(shape)
            row["hf_batch1"] = hf_batch1_decode(hf, args.prompt, args.new)
            print(f"{name} batch 1 transformers: {row['hf_batch1']:.1f} tok/s", flush=True)
            if not args.no_engine:
                row["hf_batchN"] = hf_generate(hf, args.seqs, args.prompt, args.new)
                print(f"{name} {args.seqs} seqs transformers generate: {row['hf_batchN']:.0f} tok/s", flush=True)
            del hf
            torch.cuda.empty_cache()
        rows.append(row)

    print(f"\n| model | weights GB | roofline tok/s | hearth batch-1 tok/s ({args.modes}) | % roofline (best) "
          f"| transformers batch-1 | best / transformers |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        ours = [r[f"hearth_{m}"] for m in args.modes.split(",")]
        best, hf = max(ours), r.get("hf_batch1")
        print(f"| {r['model']} | {r['weights_GB']:.2f} | {r['roofline']:.0f} | {' / '.join(f'{x:.0f}' for x in ours)} "
              f"| {100 * best / r['roofline']:.0f}% | {f'{hf:.0f}' if hf else '-'} | {f'{best / hf:.2f}x' if hf else '-'} |")
    if not args.no_engine:
        print(f"\n| model | {args.seqs} seqs: hearth engine, CUDA graphs | engine eager | transformers generate | graphs / transformers |")
        print("|---|---|---|---|---|")
        for r in rows:
            hf = r.get("hf_batchN")
            g = r["engine_graphs"]
            print(f"| {r['model']} | {g:.0f} | {r['engine_eager']:.0f} | {f'{hf:.0f}' if hf else '-'} "
                  f"| {f'{g / hf:.2f}x' if hf else '-'} |")
    out = Path(__file__).parent / "results" / f"gpu-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(dict(gpu=torch.cuda.get_device_name(), copy_bandwidth=bw, torch=torch.__version__,
                                   prompt=args.prompt, new=args.new, seqs=args.seqs, rows=rows), indent=1))
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
