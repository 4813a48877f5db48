"""What the guard costs a server: the same chat turns against `hearth serve MODEL` and `hearth serve MODEL --guard`.

    python bench/guard_overhead.py [--model smollm2] [--guard default|PATH] [--policy FILE] [--rounds 3]
                                   [--clients 8] [--max-tokens 128] [--holdback 256]

Starts both servers (the guarded one with a policy that checks input and output, unless --policy names another), then,
in each round and alternating between them, measures a streamed chat turn of ~60 prompt tokens and MAX_TOKENS answer
tokens (ignore_eos, greedy): its end-to-end latency with one client (and its first token), and the throughput of
CLIENTS clients at once. The best of the rounds is kept; printed: the added latency and the throughput lost, against
issue 16's targets (at most 15 % each), measured in the same run. Every turn has its own opening words, so that only
what a real server shares stays in the prefix cache: the template's system text and the guard's instructions.

--guard PATH runs before the default guard exists (a guard adapter directory, `hearth guard train -o DIR`). A guard that
blocks a turn shortens it: the blocked turns are counted and a warning printed (--policy with `threshold = 0.999999`
flags nothing while every check still runs).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

TARGET = 0.15  # issue 16: at most 15 % more latency, at most 15 % less throughput
SYSTEM = "You are a helpful assistant. Answer clearly and in full sentences."
TOPICS = ["how bread rises when it is baked", "why the sky looks blue during the day", "how a bicycle stays upright",
          "what makes a good night's sleep", "how bees make honey in their hives", "why leaves change colour",
          "how a refrigerator keeps food cold", "what causes the tides of the sea"]
ASK = ("I am preparing a short talk for my neighbours at the community centre next week, and I would like to explain "
       "{topic}. Please describe it simply, step by step, with one everyday example they will recognise.")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(args, extra: list[str], log: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    cmd = [sys.executable, "-m", "hearth.cli", "serve", args.model, "--port", str(port), "--device", args.device,
           "--no-access-log", *(["--threads", str(args.threads)] if args.threads else []), *extra]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=open(log, "w"))
    for _ in range(1200):
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1)
            return proc, f"http://127.0.0.1:{port}"
        except OSError:
            if proc.poll() is not None:
                sys.exit(f"server exited:\n{log.read_text()[-2000:]}")
            time.sleep(0.5)
    proc.kill()
    sys.exit(f"server not healthy after 10 minutes:\n{log.read_text()[-2000:]}")


async def turn(client, model: str, k: int, max_tokens: int) -> dict:
    messages = [{"role": "system", "content": SYSTEM},
                {"role": "user", "content": f"(request {k}) " + ASK.format(topic=TOPICS[k % len(TOPICS)])}]
    t0 = time.perf_counter()
    first, usage, reason = None, None, None
    stream = await client.chat.completions.create(model=model, messages=messages, max_tokens=max_tokens, stream=True,
                                                  temperature=0, stream_options={"include_usage": True},
                                                  extra_body={"ignore_eos": True})
    async for chunk in stream:
        for c in chunk.choices:
            if c.delta.content and first is None:
                first = time.perf_counter() - t0
            reason = c.finish_reason or reason
        usage = chunk.usage or usage
    return {"latency": time.perf_counter() - t0, "ttft": first or float("nan"), "reason": reason,
            "tokens": usage.completion_tokens if usage else 0, "prompt": usage.prompt_tokens if usage else 0}


async def measure(url: str, model: str, clients: int, max_tokens: int, k0: int) -> dict:
    from openai import AsyncOpenAI

    async with AsyncOpenAI(base_url=url + "/v1", api_key=os.environ.get("HEARTH_API_KEY", "none"), max_retries=0,
                           timeout=1200) as client:
        alone = await turn(client, model, k0, max_tokens)
        t0 = time.perf_counter()
        many = await asyncio.gather(*(turn(client, model, k0 + 1 + i, max_tokens) for i in range(clients)))
        wall = time.perf_counter() - t0
    turns = [alone, *many]
    return {"latency": alone["latency"], "ttft": alone["ttft"], "tok_s": sum(t["tokens"] for t in many) / wall,
            "prompt": alone["prompt"], "blocked": sum(t["reason"] == "content_filter" for t in turns)}


def counters(url: str) -> dict[str, float]:
    """The guarded server's guard checks and prefix-cache tokens (looked up, found)."""
    text = urllib.request.urlopen(url + "/metrics", timeout=10).read().decode()

    def total(name: str) -> float:
        return sum(float(v) for v in re.findall(rf"^{name}(?:\{{[^}}]*\}})? (\S+)$", text, re.M))

    return {"checks": total("hearth_guard_decisions_total"), "queried": total("hearth_prefix_cache_queries_total"),
            "hits": total("hearth_prefix_cache_hits_total")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--guard", default="default", help="default, a guard adapter directory, or a guard model")
    ap.add_argument("--policy", default=None, help="policy file (default: all 14 categories, check = both)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--holdback", type=int, default=256)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=None, help="each server's CPU threads (default: serve's own)")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        policy = args.policy
        if policy is None:
            policy = Path(tmp) / "both.toml"
            policy.write_text('name = "bench"\ncheck = "both"\n')
        procs = []
        try:
            plain = start(args, [], Path(tmp) / "plain.log")
            procs.append(plain[0])
            guarded = start(args, ["--guard", args.guard, "--guard-policy", str(policy),
                                   "--guard-holdback", str(args.holdback)], Path(tmp) / "guarded.log")
            procs.append(guarded[0])
            urls = {"unguarded": plain[1], "guarded": guarded[1]}
            for url in urls.values():
                asyncio.run(measure(url, args.model, 2, 8, 10_000))  # warm-up: first steps, caches
            best: dict[str, dict] = {}
            blocked = 0
            for r in range(args.rounds):
                for name, url in (urls.items() if r % 2 == 0 else reversed(urls.items())):
                    m = asyncio.run(measure(url, args.model, args.clients, args.max_tokens, 100 * (r + 1)))
                    print(f"round {r + 1} {name}: latency {m['latency']:.2f} s, first text {m['ttft']:.2f} s, "
                          f"{args.clients} clients {m['tok_s']:.1f} tok/s", file=sys.stderr)
                    b = best.setdefault(name, dict(m))
                    b["latency"], b["ttft"] = min(b["latency"], m["latency"]), min(b["ttft"], m["ttft"])
                    b["tok_s"] = max(b["tok_s"], m["tok_s"])
                    blocked += m["blocked"] if name == "guarded" else 0
            seen = counters(urls["guarded"])
            where = re.search(r"guard: (.* (?:on the served engine|in its own engine).*)",
                              (Path(tmp) / "guarded.log").read_text())
        finally:
            for p in procs:
                p.terminate()
                p.wait(timeout=30)

    u, g = best["unguarded"], best["guarded"]
    added = g["latency"] / u["latency"] - 1
    lost = 1 - g["tok_s"] / u["tok_s"]
    print(f"model {args.model}, device {args.device}; guard {where.group(1) if where else args.guard}")
    print(f"a chat turn of {u['prompt']} prompt tokens and {args.max_tokens} answer tokens, streamed; best of "
          f"{args.rounds} rounds; {seen['checks']:.0f} guard checks in all; the guarded server's prefix cache found "
          f"{seen['hits']:.0f} of {seen['queried']:.0f} prompt tokens")
    print("| | unguarded | guarded | change | target |")
    print("|---|---|---|---|---|")
    print(f"| latency, 1 client | {u['latency']:.2f} s | {g['latency']:.2f} s | {100 * added:+.1f} % | "
          f"<= +{100 * TARGET:.0f} % {'ok' if added <= TARGET else 'MISSED'} |")
    print(f"| first text, 1 client | {u['ttft']:.2f} s | {g['ttft']:.2f} s | {g['ttft'] - u['ttft']:+.2f} s | "
          f"(held back {args.holdback} characters) |")
    print(f"| throughput, {args.clients} clients | {u['tok_s']:.1f} tok/s | {g['tok_s']:.1f} tok/s | "
          f"{-100 * lost:+.1f} % | >= -{100 * TARGET:.0f} % {'ok' if lost <= TARGET else 'MISSED'} |")
    if blocked:
        print(f"warning: the guard blocked {blocked} turns (shorter answers: the guarded figures flatter it); "
              "use a policy that flags nothing, e.g. threshold = 0.999999, to time every check", file=sys.stderr)


if __name__ == "__main__":
    main()
