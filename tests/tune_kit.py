"""Helpers (not tests) for the tune tests: a tiny random-weight model saved as a HF directory, and JSONL data."""

from __future__ import annotations

import functools
import json
from pathlib import Path

import tiny

VARIANT = "smollm_tied"  # 2 layers, dim 96, GQA 3:1, tied embeddings, chat template: ChatML


@functools.lru_cache(maxsize=None)
def model_dir(root: str, variant: str = VARIANT) -> Path:
    return tiny.save_hf_model(tiny.make_hf_model(variant), Path(root) / variant)


def chat_records(n: int) -> list[dict]:
    words = ["red", "green", "blue", "north", "south", "river", "stone", "cloud"]
    out = []
    for i in range(n):
        w = words[i % len(words)]
        out.append({"messages": [
            {"role": "system", "content": "Answer with one word."},
            {"role": "user", "content": f"Which word is number {i % len(words)}?"},
            {"role": "assistant", "content": w},
        ]})
    return out


def write_jsonl(path: Path, records: list, raw_lines: dict[int, str] | None = None) -> Path:
    """JSONL of `records`; raw_lines {line number: text} replaces those lines (1-based) verbatim."""
    lines = [json.dumps(r) for r in records]
    for n, text in (raw_lines or {}).items():
        lines[n - 1] = text
    path.write_text("\n".join(lines) + "\n")
    return path
