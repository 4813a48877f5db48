"""How fast `hearth redteam` answers and judges prompts: the engine's batching against one-at-a-time generation, and
the guard's verdicts with and without the prefix cache, measured in the same run on the same probes.

    python bench/redteam_speed.py [--model smollm2] [--suite advbench] [--n 48] [--max-tokens 64] [--guard default]

1. Responses: the same N probes (greedy, at most MAX_TOKENS tokens), generated one at a time (one request in flight,
   what a loop over `hearth run` does) and then batched (all in flight; continuous batching). Prompts per second of
   each, and their ratio. Both runs must give the same texts where the batch's numerics agree (printed: how many).
2. Verdicts: the guard's response classification of those (prompt, response) pairs, batched, with the engine's prefix
   cache on and off: the guard's ~700 tokens of instructions are shared by every verdict.
3. What it means for 1,000 prompts: the batched rates extrapolated (generation plus the two guard passes a red-team
   run makes), against the issue's bar of "not a day".

No cache file is used: every figure is computed here. Run it on a quiet machine (other processes on the 2 cores
distort both sides).
"""

from __future__ import annotations

import argparse
import time


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--suite", default="advbench")
    ap.add_argument("--n", type=int, default=48)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--guard", default="default")
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()

    import torch

    from hearth.engine.llm_engine import EngineConfig, LLMEngine
    from hearth.engine.sampling import SamplingParams
    from hearth.guard.classifier import GuardFormat, classify
    from hearth.guard.load import ADAPTER_NAME, resolve_guard
    from hearth.guard.policy import load_policy
    from hearth.loader import load
    from hearth.redteam.generate import Job, generate
    from hearth.redteam.suites import load_suite

    if args.threads:
        torch.set_num_threads(args.threads)
    probes = load_suite(args.suite, args.n, seed=0).probes
    guard = resolve_guard(args.guard)
    lm = load(args.model)
    adapters = {ADAPTER_NAME: str(guard.adapter)} if guard.adapter else {}
    params = SamplingParams(max_tokens=args.max_tokens, temperature=0.0)
    ids = [lm.tokenizer.encode(lm.chat_template.render([{"role": "user", "content": p.prompt}]), add_bos=False)
           for p in probes]
    jobs = [Job(p.id, i, params) for p, i in zip(probes, ids)]

    def run(window: int) -> tuple[float, dict]:
        got: dict = {}
        generate(LLMEngine(lm, EngineConfig()), jobs[:2], lambda k, g: None, window=2)  # warm-up: kernels, allocator
        engine = LLMEngine(lm, EngineConfig())  # a fresh prefix cache for each side
        t = time.perf_counter()
        generate(engine, jobs, lambda k, g: got.__setitem__(k, g), window=window)
        return time.perf_counter() - t, got

    print(f"{len(probes)} {args.suite} probes, {args.model}, greedy, at most {args.max_tokens} tokens each; "
          f"torch threads {torch.get_num_threads()}")
    t_one, one = run(1)
    t_batch, batch = run(len(jobs))
    tokens = sum(g.tokens for g in batch.values())
    same = sum(one[k].text == batch[k].text for k in batch)
    print(f"responses, one at a time: {len(jobs) / t_one:6.2f} prompts/s ({t_one:.1f} s)")
    print(f"responses, batched:       {len(jobs) / t_batch:6.2f} prompts/s ({t_batch:.1f} s, {tokens / t_batch:.0f} "
          f"tok/s)  ->  {t_one / t_batch:.2f}x one at a time")
    print(f"identical texts in both: {same}/{len(jobs)} (greedy; batched float sums may part near-ties)")

    policy = load_policy(None)
    items = [([{"role": "user", "content": p.prompt}, {"role": "assistant", "content": batch[p.id].text}], "assistant")
             for p in probes]
    rates = {}
    for caching in (False, True):
        glm = load(guard.base)  # a model carries one engine's served adapters: a fresh copy for each side
        engine = LLMEngine(glm, EngineConfig(adapters=adapters, enable_prefix_caching=caching))
        fmt = GuardFormat(glm.tokenizer, glm.chat_template, policy, engine.max_model_len)
        adapter = ADAPTER_NAME if guard.adapter else None
        classify(engine, fmt, items[:2], adapter=adapter)  # warm-up (and, with caching, the shared instructions)
        t = time.perf_counter()
        classify(engine, fmt, items, adapter=adapter)
        rates[caching] = len(items) / (time.perf_counter() - t)
        print(f"verdicts, prefix cache {'on ' if caching else 'off'}: {rates[caching]:6.2f} items/s")
    print(f"prefix cache: {rates[True] / rates[False]:.2f}x the verdicts per second")
    per_prompt = 1 / (len(jobs) / t_batch) + 2 / rates[True]  # a response, its harm verdict, its input check
    print(f"1,000 prompts: ~{1000 * per_prompt / 60:.0f} min (responses of at most {args.max_tokens} tokens and two "
          "guard passes, batched)")


if __name__ == "__main__":
    main()
