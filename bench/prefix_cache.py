"""Prefix caching: time to first token of a chat's later turns with and without reusing the cached KV blocks of the
earlier ones (`EngineConfig.enable_prefix_caching`, `hearth serve --no-prefix-caching`), measured in the same run.

    python bench/prefix_cache.py [--model smollm2] [--turns 4] [--system-chars 4000]

A conversation with a long system prompt (GPL-3's first SYSTEM_CHARS characters) runs turn by turn through the
engine, greedy, 16 tokens a reply; each turn's prompt is the whole history so far, as a chat client sends it.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hearth.engine.llm_engine import EngineConfig, LLMEngine  # noqa: E402
from hearth.engine.request import EngineRequest  # noqa: E402
from hearth.engine.sampling import SamplingParams  # noqa: E402
from hearth.loader import load  # noqa: E402

QUESTIONS = ["What is this text?", "Who wrote it?", "Can I sell copies?", "Must I share my changes?",
             "What about patents?", "Is there a warranty?"]


def conversation(lm, caching: bool, turns: int, system: str) -> list[tuple[int, float]]:
    eng = LLMEngine(lm, EngineConfig(enable_prefix_caching=caching, kv_cache_bytes=512 << 20))
    messages = [{"role": "system", "content": system}]
    rows = []
    for i in range(turns):
        messages.append({"role": "user", "content": QUESTIONS[i % len(QUESTIONS)]})
        ids = lm.tokenizer.encode(lm.chat_template.render(messages), add_bos=False)
        t0 = time.perf_counter()
        eng.add_request(EngineRequest(f"t{i}", ids, SamplingParams(max_tokens=16, temperature=0)))
        text, ttft = "", None
        while eng.has_work():
            for o in eng.step():
                ttft = ttft if ttft is not None else time.perf_counter() - t0
                text += o.new_text
        messages.append({"role": "assistant", "content": text})
        rows.append((len(ids), ttft))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--turns", type=int, default=4)
    ap.add_argument("--system-chars", type=int, default=4000)
    args = ap.parse_args()
    lm = load(args.model)
    system = Path("/usr/share/common-licenses/GPL-3").read_text()[: args.system_chars]
    conversation(lm, False, 1, system[:200])  # warm-up
    cold = conversation(lm, False, args.turns, system)
    warm = conversation(lm, True, args.turns, system)
    print(f"{args.model} on {lm.model.device}: a {args.turns}-turn chat, system prompt of {args.system_chars} characters")
    print(f"{'turn':>4} {'prompt tokens':>13} {'TTFT no cache':>14} {'TTFT cached':>12} {'speed-up':>9}")
    for i, ((n, c), (_, w)) in enumerate(zip(cold, warm)):
        print(f"{i + 1:>4} {n:>13} {c:>13.2f}s {w:>11.2f}s {c / w:>8.1f}x")


if __name__ == "__main__":
    main()
