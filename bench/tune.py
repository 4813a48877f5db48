"""LoRA training speed and peak memory: hearth vs transformers + peft, same model, data, sequence length, batch.

    python bench/tune.py [--steps 8] [--batch 4] [--seq 128] [--rank 16] [--threads 2]

The default model (smollm2, dequantized to fp32) is written once as a HF directory so both sides start
from identical weights. Each side runs in its own process (peak RSS is per process): the same random token
batches, LoRA r on all seven projections, AdamW, loss on every token, fp32 on the CPU (or bf16 on CUDA).
The first step is a warm-up and is not timed. Prints tokens/s and peak memory of each and the ratios.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def _batches(a, vocab: int):
    g = torch.Generator().manual_seed(0)
    return [torch.randint(0, vocab, (a.batch, a.seq + 1), generator=g) for _ in range(a.steps + 1)]


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_hearth(a, model_dir: str) -> dict:
    from hearth.loader import load
    from hearth.tune.forward import lm_loss_sum
    from hearth.tune.lora import LoraConfig, apply_lora

    lm = load(model_dir, dtype="float32")
    apply_lora(lm.model, LoraConfig(r=a.rank, alpha=2 * a.rank, targets=tuple(TARGETS)))
    params = [p for p in lm.model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4)
    lm.model.train()
    t0, n = 0.0, 0
    for i, b in enumerate(_batches(a, lm.model.config.vocab_size)):
        if i == 1:
            t0 = time.perf_counter()
        loss, k = lm_loss_sum(lm.model, b[:, :-1], b[:, 1:], None, a.grad_checkpointing)
        (loss / k).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        n += b[:, :-1].numel() if i else 0
    return {"tokens_per_s": n / (time.perf_counter() - t0), "peak_mb": _peak_mb()}


def run_hf(a, model_dir: str) -> dict:
    import peft
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    model = peft.get_peft_model(model, peft.LoraConfig(r=a.rank, lora_alpha=2 * a.rank, target_modules=TARGETS, lora_dropout=0.0))
    if a.grad_checkpointing:
        model.gradient_checkpointing_enable()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    model.train()
    t0, n = 0.0, 0
    for i, b in enumerate(_batches(a, model.config.vocab_size)):
        if i == 1:
            t0 = time.perf_counter()
        out = model(input_ids=b[:, :-1], labels=b[:, :-1].clone())  # HF shifts labels itself: same targets
        out.loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        n += b[:, :-1].numel() if i else 0
    return {"tokens_per_s": n / (time.perf_counter() - t0), "peak_mb": _peak_mb()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--grad-checkpointing", action="store_true")
    ap.add_argument("--model-dir", default="/tmp/hearth-bench-tune/smollm2-hf")
    ap.add_argument("--side", choices=("hearth", "hf"), help=argparse.SUPPRESS)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    if a.side:
        print(json.dumps((run_hearth if a.side == "hearth" else run_hf)(a, a.model_dir)))
        return
    if not Path(a.model_dir, "config.json").exists():
        from hearth.loader import load
        from hearth.tune.export import write_model

        write_model(load("smollm2", dtype="float32"), "safetensors", a.model_dir)
    res = {}
    for side in ("hearth", "hf"):
        argv = [sys.executable, __file__, "--side", side] + [x for x in sys.argv[1:]]
        out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
        res[side] = json.loads(out)
        print(f"{side:7s} {res[side]['tokens_per_s']:8.0f} tok/s   peak RSS {res[side]['peak_mb']:7.0f} MB", flush=True)
    print(f"hearth / transformers+peft: speed x{res['hearth']['tokens_per_s'] / res['hf']['tokens_per_s']:.2f}, "
          f"peak memory x{res['hearth']['peak_mb'] / res['hf']['peak_mb']:.2f}  "
          f"(batch {a.batch}, seq {a.seq}, LoRA r={a.rank} on 7 projections, {a.threads} threads)")


if __name__ == "__main__":
    main()
