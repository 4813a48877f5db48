"""Captured completions and their feedback → data `hearth tune` reads (the flywheel's return path).

    sft  {"messages": [...the conversation..., {"role": "assistant", "content": ANSWER}]}
         ANSWER: the correction a user gave (any score), else the model's own answer when its score reached
         `min_score` (a thumbs up is 1)
    dpo  {"prompt": LAST USER TURN, "chosen": CORRECTION, "rejected": THE MODEL'S ANSWER}
         for an answer scored below 0 that came with a correction

A completion's newest feedback decides. Examples are deduplicated (the same conversation and answer once) and split
into training and validation by a hash of their text, so an example stays on its side of the split when the export
is run again over more data. The text was redacted when it was captured; nothing here reads anything else.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from hearth.errors import HearthError
from hearth.records.capture import Record

FORMATS = ("sft", "dpo")


@dataclass
class Exported:
    train: Path
    val: Path | None
    n_train: int
    n_val: int
    considered: int  # completions read
    with_feedback: int
    duplicates: int


def _text(content) -> str:
    """A message's text: a string, or the text parts of an OpenAI content array."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")
    return ""


def _conversation(messages: list[dict]) -> list[dict]:
    return [{"role": m.get("role"), "content": _text(m.get("content"))} for m in messages
            if isinstance(m, dict) and m.get("role") in ("system", "user", "assistant") and _text(m.get("content"))]


def example(record: Record, fmt: str, min_score: float = 1.0) -> dict | None:
    """The training example `record` gives in `fmt`, None when its feedback gives none."""
    if not record.feedback:
        return None
    last = record.feedback[-1]
    score, correction = last.get("score"), (last.get("correction") or "").strip() or None
    convo = _conversation(record.messages)
    if not convo or convo[-1]["role"] != "user":
        return None
    if fmt == "sft":
        target = correction or (record.answer if score is not None and score >= min_score and record.answer else None)
        return {"messages": [*convo, {"role": "assistant", "content": target}]} if target else None
    if correction is None or score is None or score >= 0 or not record.answer or correction == record.answer.strip():
        return None
    return {"prompt": convo[-1]["content"], "chosen": correction, "rejected": record.answer}


def _in_val(key: str, val_fraction: float) -> bool:
    return int(key[:8], 16) / 0xFFFFFFFF < val_fraction


def export(records: Iterable[Record], fmt: str, out: Path, min_score: float = 1.0, val_fraction: float = 0.1) -> Exported:
    """Write `out` (training lines) and `<out stem>.val.jsonl` beside it (validation lines, when any)."""
    if fmt not in FORMATS:
        raise HearthError(f"--format must be sft or dpo, not {fmt!r}")
    if not 0 <= val_fraction < 1:
        raise HearthError(f"--val-fraction must be in [0, 1), not {val_fraction}")
    out = Path(out)
    if out.suffix != ".jsonl":
        raise HearthError(f"-o {out}: the data file's name must end in .jsonl")
    val_path = out.with_name(out.stem + ".val.jsonl")
    seen: set[str] = set()
    train, val = [], []
    considered = with_feedback = duplicates = 0
    for record in records:
        considered += 1
        with_feedback += bool(record.feedback)
        ex = example(record, fmt, min_score)
        if ex is None:
            continue
        line = json.dumps(ex, ensure_ascii=False, sort_keys=True)
        key = hashlib.sha256(line.encode()).hexdigest()
        if key in seen:
            duplicates += 1
            continue
        seen.add(key)
        (val if _in_val(key, val_fraction) else train).append(line)
    if not train and val:  # too few to split: keep them all for training
        train, val = val, []
    out.parent.mkdir(parents=True, exist_ok=True)
    for path, lines in ((out, train), (val_path, val)):
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text("".join(x + "\n" for x in lines), encoding="utf-8")
        tmp.replace(path)
    if not val:
        val_path.unlink(missing_ok=True)
    return Exported(out, val_path if val else None, len(train), len(val), considered, with_feedback, duplicates)
