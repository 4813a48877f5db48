"""Rebuild chats.jsonl, pairs.jsonl and corpus.jsonl from the chatterbot-corpus YAML files (BSD-3-Clause).

    pip install --no-deps chatterbot-corpus==1.3.3
    python examples/make_examples.py

Reads the package's data files directly (the package itself is never imported). Deterministic: the same
files give the same examples.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import yaml

HERE = Path(__file__).parent


def conversations(topic: str) -> list[list[str]]:
    spec = importlib.util.find_spec("chatterbot_corpus")
    root = Path(next(iter(spec.submodule_search_locations))) / "data" / "english"
    convs = yaml.safe_load((root / f"{topic}.yml").read_text(encoding="utf-8"))["conversations"]
    return [[str(t).strip() for t in c] for c in convs if all(isinstance(t, str) for t in c) and len(c) >= 2]


def short(c: list[str], limit: int = 220) -> bool:
    return all(len(t) <= limit and "```" not in t for t in c)


def write(name: str, records: list[dict]) -> None:
    (HERE / name).write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")


def main() -> None:
    qa = [c[:2] for t in ("science", "history", "computers", "literature", "health", "psychology") for c in conversations(t) if short(c)]
    multi = [c[:4] for c in conversations("conversations") if len(c) >= 4 and short(c)]
    chats = [{"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]} for q, a in qa[0:40:2]]
    for c in multi[:6]:
        roles = ["user", "assistant"] * 2
        chats.append({"messages": [{"role": r, "content": t} for r, t in zip(roles, c)]})
    write("chats.jsonl", chats)
    odd = qa[1:48:2]
    pairs = [{"prompt": q, "chosen": a, "rejected": odd[(i + 7) % len(odd)][1]} for i, (q, a) in enumerate(odd)]
    write("pairs.jsonl", pairs[:20])
    lines = [c for t in ("trivia", "sports", "movies", "food") for c in conversations(t) if short(c)]
    write("corpus.jsonl", [{"text": " ".join(c)} for c in lines[:40]])


if __name__ == "__main__":
    main()
