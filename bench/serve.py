"""Serving throughput and latency: N concurrent streaming clients against a real `hearth serve`.

    python bench/serve.py [--model smollm2] [--clients 1 8 32 64] [--max-tokens 64] [--port 8765]

Starts `hearth serve MODEL` (or uses --url of a running server), then for each N runs N clients at once,
each streaming one /v1/completions request with the official openai SDK. Reports aggregate generated
tokens/s, time to first token p50/p99, inter-token latency p50/p99, and the ratio of batched throughput
to sequential (N=1) throughput, measured in the same run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request

PROMPTS = [
    "The history of the printing press", "Write a short story about a lighthouse keeper.",
    "Explain how a refrigerator works.", "List some facts about the Moon:", "def quicksort(arr):",
    "The rules of chess are", "A recipe for bread:", "Once upon a time in a quiet village,",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pct(xs: list[float], q: float) -> float:
    xs = [x for x in xs if x == x]  # drop NaN (a request that produced no token)
    if not xs:
        return float("nan")
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q / 100 * (len(xs) - 1))))]


SAMPLING = dict(temperature=0)  # --temperature / --top-p


async def one_client(client, model: str, prompt: str, max_tokens: int) -> dict:
    t0 = time.perf_counter()
    stamps = []
    usage = None
    stream = await client.completions.create(
        model=model, prompt=prompt, max_tokens=max_tokens, stream=True, **SAMPLING,
        stream_options={"include_usage": True},
    )
    async for chunk in stream:
        if chunk.choices:  # one chunk per generated token (its text may be empty mid-character)
            stamps.append(time.perf_counter())
        if chunk.usage:
            usage = chunk.usage
    n = usage.completion_tokens if usage else len(stamps)
    ttft = stamps[0] - t0 if stamps else float("nan")
    itl = [b - a for a, b in zip(stamps, stamps[1:])]
    return {"tokens": n, "ttft": ttft, "itl": itl, "end": time.perf_counter()}


async def run_level(url: str, model: str, n: int, max_tokens: int) -> dict:
    from openai import AsyncOpenAI

    client = AsyncOpenAI(base_url=url, api_key=os.environ.get("HEARTH_API_KEY", "none"), max_retries=0, timeout=600)
    t0 = time.perf_counter()
    res = await asyncio.gather(*(one_client(client, model, PROMPTS[i % len(PROMPTS)], max_tokens) for i in range(n)))
    wall = time.perf_counter() - t0
    await client.close()
    tokens = sum(r["tokens"] for r in res)
    itl = [x for r in res for x in r["itl"]]
    return {
        "clients": n, "tokens": tokens, "wall_s": wall, "tok_s": tokens / wall,
        "ttft_p50": pct([r["ttft"] for r in res], 50), "ttft_p99": pct([r["ttft"] for r in res], 99),
        "itl_p50": pct(itl, 50), "itl_p99": pct(itl, 99),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32, 64])
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--url", default=None, help="use a running server (e.g. http://127.0.0.1:8000/v1)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--json-out", default=None)
    ap.add_argument("--temperature", type=float, default=0.0, help="0 (default): greedy")
    ap.add_argument("--top-p", type=float, default=1.0)
    args = ap.parse_args()
    SAMPLING.update(temperature=args.temperature, **({"top_p": args.top_p} if args.top_p < 1 else {}))

    proc = None
    url = args.url
    if url is None:
        port = free_port()
        cmd = [sys.executable, "-m", "hearth.cli", "serve", args.model, "--port", str(port), "--device", args.device]
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        url = f"http://127.0.0.1:{port}/v1"
        for _ in range(600):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1)
                break
            except OSError:
                if proc.poll() is not None:
                    sys.exit(f"server exited: {proc.stderr.read().decode()[-2000:]}")
                time.sleep(0.5)
    try:
        asyncio.run(run_level(url, args.model, 2, 4))  # warm-up
        rows = [asyncio.run(run_level(url, args.model, n, args.max_tokens)) for n in args.clients]
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(timeout=30)
    base = next((r["tok_s"] for r in rows if r["clients"] == 1), rows[0]["tok_s"])
    print(f"model {args.model}, {args.max_tokens} max tokens per request, device {args.device}")
    print("| clients | tokens | wall s | tok/s | vs sequential | TTFT p50 ms | TTFT p99 ms | ITL p50 ms | ITL p99 ms |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['clients']} | {r['tokens']} | {r['wall_s']:.1f} | {r['tok_s']:.1f} | {r['tok_s'] / base:.2f}x | "
              f"{1e3 * r['ttft_p50']:.0f} | {1e3 * r['ttft_p99']:.0f} | {1e3 * r['itl_p50']:.0f} | {1e3 * r['itl_p99']:.0f} |")
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
