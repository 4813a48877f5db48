"""Training data: JSONL → token ids with a per-token "learn this" mask → shuffled, packed, padded batches.

Record kinds (one JSON object per line):
    {"messages": [{"role", "content"}, ...]}   chat, rendered by the model's own template; loss on
                                              the assistant turns only (their text and end-of-turn token)
    {"prompt": str, "completion": str}         one exchange: as a chat (user → assistant) with the
                                              template, or raw text `prompt + completion + EOS`
    {"prompt", "chosen", "rejected"}          preference pairs (DPO)
    {"text": str}                             plain language modelling (distillation), loss everywhere

Assistant spans are found in characters, then mapped onto tokens by their offsets: the prefix of the
conversation up to each assistant turn is rendered with `add_generation_prompt=True` and the
conversation through that turn without it; the difference is what the assistant writes. Tokenizing the
whole text once and marking tokens by offset keeps the ids exactly those of the rendered prompt
(tokenizing the pieces separately can merge differently at the seams).

The file is untrusted: it is read one line at a time, each only up to a byte cap (`line_cap`), and a line is
checked for nesting depth (hearth.safejson), integer size and lone surrogates before it is parsed or tokenized,
so no line costs more than its cap in memory and none gives a traceback: each is a bad line or an example.
"""

from __future__ import annotations

import json
import logging
import random
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import torch

from hearth import safejson
from hearth.errors import HearthError
from hearth.tune.forward import IGNORE

log = logging.getLogger("hearth")

KINDS = ("sft", "dpo", "lm")


@dataclass
class Example:
    ids: list[int]
    mask: list[bool]  # mask[i]: token i is a target (the model learns to predict it from ids[:i])
    line: int = 0

    @property
    def n_targets(self) -> int:
        return sum(self.mask[1:])


@dataclass
class PrefPair:
    chosen: Example
    rejected: Example
    line: int = 0


@dataclass
class Dataset:
    items: list  # Example or PrefPair
    bad_lines: list[tuple[int, str]] = field(default_factory=list)
    truncated: int = 0
    dropped: int = 0  # examples over max_len tokens, and the lines in long_lines
    long_lines: list[int] = field(default_factory=list)  # lines over the byte cap, dropped unread


class _Bad(Exception):
    pass


# A line of tune data is read only up to a cap, before it is parsed or tokenized: json.loads and the tokenizer
# cost about a hundred times the line's size in memory (a 100 MB line took 13 GB), so an oversized line must never
# be held whole. The default follows from --max-len: English runs about 4 characters a token; 64 bytes a token
# leaves room for long tokens (indentation, runs of spaces) and for text that json.dumps escapes as \uXXXX (6 bytes
# a character), times 3 texts for a preference pair (prompt, chosen, rejected). Real text that long is far more
# than max_len tokens, so truncation would have kept only a small part of it. 1 MiB at the least, so a small
# --max-len never refuses ordinary lines.
BYTES_PER_TOKEN = 64
MIN_LINE_BYTES = 1 << 20
MAX_DEPTH = 64  # a chat record is 3 deep; 100k nested brackets overflow json's recursive parser
MAX_INT_DIGITS = 100  # no field of a record is a number; Python refuses to convert over 4300 digits anyway

_SKIP_CHUNK = 1 << 20
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


def line_cap(max_len: int) -> int:
    """The default longest line (bytes) read for examples of at most `max_len` tokens; see the note above."""
    return max(MIN_LINE_BYTES, 3 * BYTES_PER_TOKEN * max_len)


def iter_lines(path: str | Path, max_bytes: int) -> Iterator[tuple[int, bytes | None]]:
    """(line number, bytes without the newline) for each line; None for a line longer than `max_bytes`, which is
    skipped to its end in 1 MiB pieces and never held whole."""
    path = Path(path)
    try:
        f = open(path, "rb")
    except FileNotFoundError:
        raise HearthError(f"data file {path} does not exist") from None
    except OSError as e:
        raise HearthError(f"cannot read {path}: {e.strerror}") from None
    with f:
        n = 0
        while True:
            try:
                line = f.readline(max_bytes + 1)
            except OSError as e:  # a directory, an I/O error
                raise HearthError(f"cannot read {path}: {e.strerror}") from None
            if not line:
                return
            n += 1
            if line.endswith(b"\n"):
                yield n, line[:-1]
            elif len(line) <= max_bytes:  # the last line, without a newline
                yield n, line
            else:
                while (rest := f.readline(_SKIP_CHUNK)) and not rest.endswith(b"\n"):
                    pass
                yield n, None


def _int(text: str) -> int:
    digits = len(text.lstrip("-"))
    if digits > MAX_INT_DIGITS:
        raise _Bad(f"holds an integer of {digits:,} digits; a record holds strings")
    return int(text)


def parse_line(raw: bytes) -> Any:
    """One JSONL line → its value; _Bad (with the reason) for anything that is not a JSON value of sane shape."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise _Bad(f"not UTF-8 text (byte {e.start + 1} of the line); training data must be JSONL") from None
    if (d := safejson.depth(text)) > MAX_DEPTH:  # a linear scan: json.loads recurses once per level
        raise _Bad(f"nested {d:,} levels deep; a record needs at most {MAX_DEPTH}")
    try:
        value = json.loads(text, parse_int=_int)  # not safejson.loads: it has no hook for integers
    except json.JSONDecodeError as e:
        raise _Bad(f"not valid JSON ({e.msg} at column {e.colno})") from None
    except RecursionError:  # not reached past the depth check; kept so no input can give a traceback
        raise _Bad(f"nested too deep; a record needs at most {MAX_DEPTH} levels") from None
    # \uD800-\uDFFF escapes: half of a surrogate pair without the other decodes to a str that no tokenizer takes
    if _SURROGATE_ESCAPE.search(text):
        try:
            json.dumps(value, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            raise _Bad("holds a lone UTF-16 surrogate (a \\uD800-\\uDFFF escape without its pair), which is not text") from None
    return value


def _str(rec: dict, key: str) -> str:
    v = rec.get(key)
    if not isinstance(v, str):
        raise _Bad(f"'{key}' must be a string" if key in rec else f"missing '{key}'")
    return v


def _spans_to_example(tokenizer, text: str, spans: list[tuple[int, int]], line: int, add_bos: bool) -> Example:
    enc = tokenizer.backend.encode(text, add_special_tokens=False)
    ids, mask = list(enc.ids), []
    for start, end in enc.offsets:
        mask.append(any(a <= start < b for a, b in spans))
    if add_bos and tokenizer.bos_id is not None:
        ids, mask = [tokenizer.bos_id] + ids, [False] + mask
    return Example(ids, mask, line)


def encode_chat(tokenizer, template, messages: list, line: int = 0) -> Example:
    """A conversation through the chat template; targets are the assistant turns."""
    if not isinstance(messages, list) or not messages:
        raise _Bad("'messages' must be a non-empty list")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
            raise _Bad(f"message {i} needs string 'role' and 'content'")
    full = template.render(messages, add_generation_prompt=False)
    spans, pos = [], 0
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        before = template.render(messages[:i], add_generation_prompt=True) if i else ""
        through = template.render(messages[: i + 1], add_generation_prompt=False)
        if through.startswith(before) and full.startswith(through) and len(through) > len(before):
            spans.append((len(before), len(through)))
            pos = len(through)
        else:  # a template that rewrites earlier turns: find the content itself after the last span
            at = full.find(m["content"], pos)
            if at < 0:
                raise _Bad(f"message {i}: the chat template does not reproduce the assistant text")
            spans.append((at, at + len(m["content"])))
            pos = at + len(m["content"])
    if not spans:
        raise _Bad("no assistant message: nothing to learn")
    return _spans_to_example(tokenizer, full, spans, line, add_bos=False)


def encode_completion(tokenizer, template, prompt: str, completion: str, use_template: bool, line: int = 0) -> Example:
    if use_template:
        return encode_chat(tokenizer, template, [{"role": "user", "content": prompt}, {"role": "assistant", "content": completion}], line)
    ex = _spans_to_example(tokenizer, prompt + completion, [(len(prompt), len(prompt) + len(completion))], line, tokenizer.add_bos)
    if tokenizer.eos_ids:  # learn to stop
        ex.ids.append(tokenizer.eos_ids[0])
        ex.mask.append(True)
    return ex


def encode_record(rec: Any, kind: str, tokenizer, template, use_template: bool, line: int):
    if not isinstance(rec, dict):
        raise _Bad(f"expected a JSON object, got {type(rec).__name__}")
    if kind == "dpo":
        prompt, chosen, rejected = _str(rec, "prompt"), _str(rec, "chosen"), _str(rec, "rejected")
        return PrefPair(
            encode_completion(tokenizer, template, prompt, chosen, use_template, line),
            encode_completion(tokenizer, template, prompt, rejected, use_template, line),
            line,
        )
    if "messages" in rec:
        return encode_chat(tokenizer, template, rec["messages"], line)
    if "prompt" in rec or "completion" in rec:
        return encode_completion(tokenizer, template, _str(rec, "prompt"), _str(rec, "completion"), use_template, line)
    if kind == "lm" and "text" in rec:
        ids = tokenizer.encode(_str(rec, "text"))
        return Example(ids, [True] * len(ids), line)
    want = "'messages' or 'prompt'/'completion'" + (" or 'text'" if kind == "lm" else "")
    raise _Bad(f"needs {want}")


def _fit(ex: Example, max_len: int, overlong: str) -> Example | None:
    """Cut an example to `max_len` tokens, or None (drop)."""
    if len(ex.ids) <= max_len:
        return ex
    if overlong == "drop":
        return None
    cut = Example(ex.ids[:max_len], ex.mask[:max_len], ex.line)
    return cut if cut.n_targets > 0 else None


def load_dataset(
    path: str | Path, tokenizer, template, kind: str = "sft", max_len: int = 1024, overlong: str = "truncate",
    on_bad_line: str = "stop", use_template: bool = True, max_line_bytes: int | None = None,
) -> Dataset:
    """Read and tokenize a JSONL file, one line at a time. Raises HearthError (with the line number) on the first
    bad line when on_bad_line="stop", and when nothing usable is left.

    A line longer than `max_line_bytes` (default: line_cap(max_len)) is never read whole: with overlong="drop" it
    is dropped like any overlong example; with "truncate" it is a bad line (it cannot be cut without reading it)."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}")
    if on_bad_line not in ("stop", "skip"):
        raise HearthError(f"--on-bad-line must be 'stop' or 'skip', not {on_bad_line!r}")
    if overlong not in ("truncate", "drop"):
        raise HearthError(f"--overlong must be 'truncate' or 'drop', not {overlong!r}")
    if max_len < 2:
        raise HearthError(f"--max-len must be at least 2 tokens, got {max_len}")
    cap = line_cap(max_len) if max_line_bytes is None else max_line_bytes
    if cap < 1:
        raise HearthError(f"--max-line-bytes must be at least 1, got {cap}")
    ds = Dataset([], [])
    records = 0
    for n, raw in iter_lines(path, cap):
        if raw is not None and not raw.strip():
            continue
        records += 1
        try:
            if raw is None:
                if overlong == "drop":
                    ds.long_lines.append(n)
                    ds.dropped += 1
                    continue
                raise _Bad(f"longer than {cap:,} bytes, the most read for --max-len {max_len} (a line that long cannot "
                           "be truncated without reading it whole); pass --overlong drop or raise --max-line-bytes")
            item = encode_record(parse_line(raw), kind, tokenizer, template, use_template, n)
        except (_Bad, HearthError) as e:
            if on_bad_line == "stop":
                raise HearthError(f"{path}:{n}: {e}; fix the line or pass --on-bad-line skip") from None
            ds.bad_lines.append((n, str(e)))
            continue
        parts = [item.chosen, item.rejected] if isinstance(item, PrefPair) else [item]
        fitted = [_fit(p, max_len, overlong) for p in parts]
        if any(f is None for f in fitted):
            ds.dropped += 1
            continue
        ds.truncated += sum(f is not p for f, p in zip(fitted, parts)) > 0
        ds.items.append(PrefPair(*fitted, n) if isinstance(item, PrefPair) else fitted[0])
    if ds.bad_lines:
        lines = ", ".join(str(n) for n, _ in ds.bad_lines[:10]) + (" ..." if len(ds.bad_lines) > 10 else "")
        log.warning("%s: skipped %d bad line(s): %s (first: %s)", path, len(ds.bad_lines), lines, ds.bad_lines[0][1])
    if ds.truncated:
        log.warning("%s: %d example(s) longer than %d tokens were truncated", path, ds.truncated, max_len)
    if ds.long_lines:
        lines = ", ".join(str(n) for n in ds.long_lines[:10]) + (" ..." if len(ds.long_lines) > 10 else "")
        log.warning("%s: %d line(s) longer than %s bytes were dropped unread: %s; raise --max-line-bytes to keep them",
                    path, len(ds.long_lines), f"{cap:,}", lines)
    # truncation drops an example only when its prompt alone fills max_len: no answer token would be left to learn
    in_prompt = overlong == "truncate"
    if ds.dropped > len(ds.long_lines):
        why = " (the prompt alone fills --max-len, leaving no answer tokens to learn)" if in_prompt else ""
        log.warning("%s: %d example(s) longer than %d tokens were dropped%s; raise --max-len to keep them", path,
                    ds.dropped - len(ds.long_lines), max_len, why)
    if not ds.items:
        if ds.dropped:
            where = " in its prompt" if in_prompt else ""
            raise HearthError(f"{path}: every example is longer than --max-len {max_len} tokens{where}; raise --max-len")
        why = "it has no records" if not records else "no record was usable"
        raise HearthError(f"{path}: empty dataset ({why}); give at least one example")
    return ds


def split(items: list, val_fraction: float, seed: int) -> tuple[list, list]:
    """A seeded held-out split; at least one training item, and one validation item when asked for any."""
    if not 0.0 <= val_fraction < 1.0:
        raise HearthError(f"--val-fraction must be in [0, 1), got {val_fraction}")
    order = list(range(len(items)))
    random.Random(seed).shuffle(order)
    n_val = 0 if val_fraction == 0 or len(items) < 2 else max(1, round(len(items) * val_fraction))
    n_val = min(n_val, len(items) - 1)
    val = sorted(order[:n_val])
    keep = sorted(order[n_val:])
    return [items[i] for i in keep], [items[i] for i in val]


# ------------------------------------------------------------------------------------------ batches

@dataclass
class Batch:
    tokens: torch.Tensor  # (B, T)
    targets: torch.Tensor  # (B, T), IGNORE where nothing is learned
    doc_ids: torch.Tensor | None  # (B, T) for packed rows
    n_tokens: int = 0  # real (not padding) input tokens: what tokens/s counts

    @property
    def n_targets(self) -> int:
        return int((self.targets != IGNORE).sum())

    def to(self, device) -> "Batch":
        docs = None if self.doc_ids is None else self.doc_ids.to(device)
        return Batch(self.tokens.to(device), self.targets.to(device), docs, self.n_tokens)


def _io(ex: Example) -> tuple[list[int], list[int]]:
    """Inputs and shifted targets of one example (IGNORE where the next token is not learned)."""
    tgt = [t if m else IGNORE for t, m in zip(ex.ids[1:], ex.mask[1:])]
    return ex.ids[:-1], tgt


def collate(rows: list[list[Example]], packed: bool, pad_id: int = 0) -> Batch:
    """Each row is one or more examples laid end to end (packed), right-padded to the longest row."""
    built = []
    for row in rows:
        toks, tgts, docs = [], [], []
        for d, ex in enumerate(row):
            i, t = _io(ex)
            toks += i
            tgts += t
            docs += [d] * len(i)
        built.append((toks, tgts, docs))
    width = max(len(b[0]) for b in built)
    tokens = torch.full((len(rows), width), pad_id, dtype=torch.long)
    targets = torch.full((len(rows), width), IGNORE, dtype=torch.long)
    doc_ids = torch.full((len(rows), width), -1, dtype=torch.long)
    for r, (toks, tgts, docs) in enumerate(built):
        tokens[r, : len(toks)] = torch.tensor(toks, dtype=torch.long)
        targets[r, : len(tgts)] = torch.tensor(tgts, dtype=torch.long)
        doc_ids[r, : len(docs)] = torch.tensor(docs, dtype=torch.long)
    return Batch(tokens, targets, doc_ids if packed else None, sum(len(b[0]) for b in built))


def pack(examples: list[Example], max_len: int) -> list[list[Example]]:
    """Greedy, order-preserving packing: start a new row when the next example does not fit."""
    rows, cur, used = [], [], 0
    for ex in examples:
        n = len(ex.ids) - 1
        if cur and used + n > max_len:
            rows.append(cur)
            cur, used = [], 0
        cur.append(ex)
        used += n
    if cur:
        rows.append(cur)
    return rows


class BatchStream:
    """Micro-batch k of an endless, seeded sequence of epochs: reshuffled each epoch, packed or one
    example per row. Indexable by k, so a resumed run continues at exactly the next micro-batch."""

    def __init__(self, items: list, batch_size: int, max_len: int, packed: bool, seed: int, pad_id: int = 0):
        if not items:
            raise HearthError("no training examples left after the validation split")
        self.items, self.batch_size, self.max_len, self.packed = items, batch_size, max_len, packed
        self.seed, self.pad_id = seed, pad_id
        self._epochs: dict[int, list[list]] = {}  # the epoch in use (one at a time: rows hold examples)
        self._lens: dict[int, int] = {}  # micro-batches in each epoch seen so far

    def epoch_rows(self, epoch: int) -> list[list]:
        if epoch not in self._epochs:
            order = list(range(len(self.items)))
            random.Random(self.seed * 1_000_003 + epoch).shuffle(order)
            items = [self.items[i] for i in order]
            rows = pack(items, self.max_len) if self.packed else [[x] for x in items]
            self._epochs = {epoch: [rows[i : i + self.batch_size] for i in range(0, len(rows), self.batch_size)]}
            self._lens[epoch] = len(self._epochs[epoch])
        return self._epochs[epoch]

    def _len(self, epoch: int) -> int:
        if epoch not in self._lens:
            self.epoch_rows(epoch)
        return self._lens[epoch]

    def micro_batches_per_epoch(self) -> int:
        return self._len(0)

    def rows(self, k: int) -> list[list]:
        epoch = 0
        while k >= self._len(epoch):
            k -= self._len(epoch)
            epoch += 1
        return self.epoch_rows(epoch)[k]

    def epoch_of(self, k: int) -> float:
        n = self.micro_batches_per_epoch()
        return k / n

    def __getitem__(self, k: int) -> Batch:
        return collate(self.rows(k), self.packed, self.pad_id)


def eval_batches(items: list[Example], batch_size: int, pad_id: int = 0) -> Iterator[Batch]:
    """Validation batches: every item once, in order, unpacked."""
    for i in range(0, len(items), batch_size):
        yield collate([[x] for x in items[i : i + batch_size]], False, pad_id)
