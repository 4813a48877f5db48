"""GPU decode speed: hearth vs transformers (eager), bf16, random weights of Llama-3.2-1B / 3.1-8B shapes.

    python bench/gpu.py [--models llama-3.2-1b llama-3.1-8b] [--new 128] [--prompt 128]

Batch-1 decode tokens/s for both runners in the same process, the memory-bandwidth roofline
(weights read once per token at the measured device-to-device copy rate) and the ratios.
Speed does not depend on weight values, so random weights stand in for the real checkpoints.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from hearth.config import ModelConfig
from hearth.model import Transformer

SHAPES = {
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


@torch.inference_mode()
def hearth_decode(shape: dict, prompt: int, new: int) -> tuple[float, int]:
    cfg = ModelConfig(**shape, rope_theta=500000.0, max_seq_len=4096)
    with torch.device("cuda"):
        m = Transformer(cfg).to(torch.bfloat16).eval()
    nbytes = sum(p.numel() * p.element_size() for p in m.parameters())
    ids = torch.randint(0, cfg.vocab_size, (1, prompt), device="cuda")
    for rep in range(2):
        cache = m.new_cache(1, prompt + new)
        nxt = m(ids, 0, cache, last_only=True)[:, -1].argmax(-1, keepdim=True)
        torch.cuda.synchronize()
        t = time.perf_counter()
        for i in range(new):
            nxt = m(nxt, prompt + i, cache)[:, -1].argmax(-1, keepdim=True)
        torch.cuda.synchronize()
        dt = time.perf_counter() - t
    del m
    torch.cuda.empty_cache()
    return new / dt, nbytes


@torch.inference_mode()
def hf_decode(shape: dict, prompt: int, new: int) -> float:
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(hidden_size=shape["dim"], intermediate_size=shape["hidden_dim"], num_hidden_layers=shape["n_layers"],
                      num_attention_heads=shape["n_heads"], num_key_value_heads=shape["n_kv_heads"],
                      vocab_size=shape["vocab_size"], tie_word_embeddings=shape["tie_embeddings"], rope_theta=500000.0,
                      max_position_embeddings=4096)
    with torch.device("cuda"):
        m = LlamaForCausalLM(cfg).to(torch.bfloat16).eval()
    ids = torch.randint(0, cfg.vocab_size, (1, prompt), device="cuda")
    kw = dict(do_sample=False, pad_token_id=0)
    m.generate(ids, max_new_tokens=new, min_new_tokens=new, **kw)
    torch.cuda.synchronize()
    t = time.perf_counter(); m.generate(ids, max_new_tokens=1, min_new_tokens=1, **kw); torch.cuda.synchronize()
    t_pre = time.perf_counter() - t
    t = time.perf_counter(); m.generate(ids, max_new_tokens=new, min_new_tokens=new, **kw); torch.cuda.synchronize()
    t_all = time.perf_counter() - t
    del m
    torch.cuda.empty_cache()
    return (new - 1) / (t_all - t_pre)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    ap.add_argument("--prompt", type=int, default=128)
    ap.add_argument("--new", type=int, default=128)
    ap.add_argument("--no-hf", action="store_true", help="skip the transformers peer")
    args = ap.parse_args()
    bw = copy_bandwidth()
    print(f"GPU {torch.cuda.get_device_name()}, copy bandwidth {bw / 1e12:.2f} TB/s, torch {torch.__version__}")
    print("| model | weights GB | roofline tok/s | hearth tok/s | % roofline | transformers tok/s | hearth / transformers |")
    print("|---|---|---|---|---|---|---|")
    rows = []
    for name in args.models:
        ours, nbytes = hearth_decode(SHAPES[name], args.prompt, args.new)
        roof = bw / nbytes
        theirs = None if args.no_hf else hf_decode(SHAPES[name], args.prompt, args.new)
        rows.append(dict(model=name, weight_GB=nbytes / 1e9, roofline=roof, hearth=ours, transformers=theirs))
        t = f"{theirs:.1f} | {ours / theirs:.2f}x" if theirs else "- | -"
        print(f"| {name} | {nbytes / 1e9:.2f} | {roof:.0f} | {ours:.1f} | {100 * ours / roof:.0f}% | {t} |", flush=True)
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
