"""What serving LoRA adapters beside the model costs: decode throughput of the same batch with no adapter, with every
request on one adapter, and with the requests spread over three adapters and the base model.

    python bench/lora_serve.py [--model smollm2] [--dtype auto] [--requests 8] [--tokens 48] [--rank 16]

Adapters are made here (rank RANK on all seven projections, random B so they change the output). Each mix runs the
same prompts through the engine (`hearth serve`'s LLMEngine) in one process, twice, the best kept; reported: decode
tokens per second and the ratio against the base-only batch measured in the same run. Base-only steps keep the
native whole-token step (default dtype, CPU); steps with adapter rows run the eager path plus the low-rank updates.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from hearth.engine.llm_engine import EngineConfig, LLMEngine  # noqa: E402
from hearth.engine.request import EngineRequest  # noqa: E402
from hearth.engine.sampling import SamplingParams  # noqa: E402
from hearth.loader import load  # noqa: E402
from hearth.runtime import return_large_frees  # noqa: E402
from hearth.tune.lora import LoraConfig, apply_lora, lora_modules  # noqa: E402
from hearth.tune.peft_io import save_adapter  # noqa: E402

PROMPTS = ["The capital of France is", "Once upon a time", "def fib(n):", "The three primary colors are",
           "In 1492,", "Water boils at", "My favourite book is", "import numpy as np\n"]


def make_adapters(model: str, root: Path, n: int, rank: int) -> dict[str, str]:
    lm = load(model, dtype="float32")
    cfg = LoraConfig(r=rank, alpha=2 * rank)
    apply_lora(lm.model, cfg)
    out = {}
    for i in range(n):
        with torch.no_grad():
            for m in lora_modules(lm.model).values():
                m.lora_B.weight.normal_(0, 0.02)
        out[f"a{i}"] = str(save_adapter(lm.model, cfg, root / f"a{i}", base_model=model))
    return out


def decode_rate(eng: LLMEngine, tok, n: int, tokens: int, adapters: list[str | None]) -> float:
    params = SamplingParams(max_tokens=tokens, temperature=0, ignore_eos=True)
    for i in range(n):
        eng.add_request(EngineRequest(f"r{time.monotonic_ns()}-{i}", tok.encode(PROMPTS[i % len(PROMPTS)]), params,
                                      adapter=adapters[i % len(adapters)]))
    while any(s.num_computed < s.num_prompt for s in eng.scheduler.running) or eng.scheduler.waiting:
        eng.step()  # prompts prefilled: time the decode steps only
    t0, made = time.perf_counter(), 0
    while eng.has_work():
        made += sum(len(o.new_token_ids) for o in eng.step())
    return made / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--requests", type=int, default=8)
    ap.add_argument("--tokens", type=int, default=48)
    ap.add_argument("--rank", type=int, default=16)
    args = ap.parse_args()
    return_large_frees()  # as `hearth serve` does on a CPU
    with tempfile.TemporaryDirectory() as tmp:
        adapters = make_adapters(args.model, Path(tmp), 3, args.rank)
        lm = load(args.model, dtype=args.dtype)
        eng = LLMEngine(lm, EngineConfig(kv_cache_bytes=256 << 20, adapters=adapters))
        mixes = {"base only": [None], "one adapter": ["a0"], "3 adapters + base": ["a0", "a1", "a2", None]}
        rates = {name: 0.0 for name in [*mixes, "base, eager path"]}
        native = eng.runner.cpu_decoder
        for _ in range(2):
            for name, mix in mixes.items():
                rates[name] = max(rates[name], decode_rate(eng, lm.tokenizer, args.requests, args.tokens, mix))
            if native is not None:  # what the adapter steps' path costs without any update
                eng.runner.cpu_decoder = None
                rates["base, eager path"] = max(rates["base, eager path"],
                                                decode_rate(eng, lm.tokenizer, args.requests, args.tokens, [None]))
                eng.runner.cpu_decoder = native
        if native is None:
            del rates["base, eager path"]
    base = rates["base only"]
    print(f"{args.model} ({args.dtype}), {args.requests} requests x {args.tokens} tokens, rank {args.rank} on all "
          f"projections, {torch.get_num_threads()} threads")
    for name, rate in rates.items():
        print(f"  {name:<20} {rate:7.1f} tok/s   {rate / base:5.2f}x base")


if __name__ == "__main__":
    main()
