"""Streams beside a long prompt: how long decoding requests wait while a long prompt is prefilled, and what the cap on
prompt tokens per mixed step (`EngineConfig.max_prefill_with_decodes`, `hearth serve --max-prefill-with-decodes`)
costs the long prompt.

    python bench/prefill_stall.py [--model smollm2] [--streams 4] [--prompt-tokens 2048] [--caps 0 256 128 64]

For each cap (0: none, the whole step budget) in one run: STREAMS short requests start decoding, then a prompt of
PROMPT_TOKENS tokens (GPL-3's text) arrives. Reported: the streams' largest and median gap between tokens while the
long prompt was being prefilled, and the long prompt's time to first token; ratios against cap 0 measured in the
same run. On a GPU a step costs about the same for 1 or 512 tokens, so there the cap only slows the long prompt.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hearth.engine.llm_engine import EngineConfig, LLMEngine  # noqa: E402
from hearth.engine.request import EngineRequest  # noqa: E402
from hearth.engine.sampling import SamplingParams  # noqa: E402
from hearth.loader import load  # noqa: E402
from hearth.runtime import return_large_frees  # noqa: E402

GPL3 = "/usr/share/common-licenses/GPL-3"


def run(lm, cap: int, streams: int, long_ids: list[int], budget: int) -> dict:
    eng = LLMEngine(lm, EngineConfig(max_num_batched_tokens=budget, max_prefill_with_decodes=cap,
                                     kv_cache_bytes=512 << 20))
    short = lm.tokenizer.encode("Once upon a time")
    for i in range(streams):  # decode until well after the long prompt's first token
        eng.add_request(EngineRequest(f"s{i}", short, SamplingParams(max_tokens=4000, temperature=0, ignore_eos=True)))
    while any(len(s.token_ids) - s.num_prompt < 2 for s in eng.scheduler.running) or eng.scheduler.waiting:
        eng.step()  # the streams are decoding
    t0 = time.perf_counter()
    eng.add_request(EngineRequest("long", long_ids, SamplingParams(max_tokens=1, temperature=0)))
    last = {f"s{i}": t0 for i in range(streams)}
    gaps: list[float] = []
    ttft = None
    while ttft is None:
        outs = eng.step()
        now = time.perf_counter()
        for o in outs:
            if o.request_id == "long":
                ttft = now - t0
            elif o.new_token_ids:
                gaps.append(now - last[o.request_id])
                last[o.request_id] = now
    for i in range(streams):
        eng.abort(f"s{i}")
    return {"gap_max": max(gaps), "gap_p50": statistics.median(gaps), "ttft": ttft}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--streams", type=int, default=4)
    ap.add_argument("--prompt-tokens", type=int, default=2048)
    ap.add_argument("--budget", type=int, default=512, help="max_num_batched_tokens (the step budget)")
    ap.add_argument("--caps", type=int, nargs="+", default=[0, 256, 128, 64])
    args = ap.parse_args()
    return_large_frees()  # as `hearth serve` does on a CPU
    lm = load(args.model)
    long_ids = lm.tokenizer.encode(Path(GPL3).read_text())[: args.prompt_tokens]
    print(f"{args.model} on {lm.model.device}: {args.streams} streams decoding, then a {len(long_ids)}-token prompt; "
          f"step budget {args.budget}")
    run(lm, 0, 1, long_ids[:256], args.budget)  # warm-up
    rows = [(cap, run(lm, cap, args.streams, long_ids, args.budget)) for cap in args.caps]
    base = rows[0][1]
    print(f"{'cap':>5} {'stream gap max':>15} {'gap p50':>8} {'long TTFT':>10} {'gap max vs cap ' + str(rows[0][0]):>18} "
          f"{'TTFT vs':>8}")
    for cap, r in rows:
        print(f"{cap or 'none':>5} {r['gap_max']:>14.2f}s {r['gap_p50']:>7.2f}s {r['ttft']:>9.2f}s "
              f"{r['gap_max'] / base['gap_max']:>17.2f}x {r['ttft'] / base['ttft']:>7.2f}x")


if __name__ == "__main__":
    main()
