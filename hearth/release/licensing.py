"""`hearth license check`: what the licence that travels with the weights asks of one deployment.

hearth.release.carried reads what came with the weights and names the licence (hearth's id, SPDX, ScanCode key).
This module checks each of its obligations against a Deployment: the derived model's name, monthly active users,
country and multimodality, distillation, the use case (screened against the acceptable-use policy's prohibited
categories). hearth ships no licence text: clauses are cited by section and paraphrased; the texts that bind are
those found with the weights (LicenseReport.files). What a release must carry (the licence copy, the Notice file,
"Built with Llama") is listed as a duty, never as a violation: the release adds it. An unknown licence is a
violation: nothing confirms a right to redistribute. A reader's aid, not legal advice.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from hearth.errors import HearthError
from hearth.release import carried as carry
from hearth.store import license as lic
from hearth.store.manifest import LicenseInfo

EU = frozenset("AT BE BG HR CY CZ DK EE FI FR DE GR HU IE IT LV LT LU MT NL PL PT RO SK SI ES SE".split())  # EU-27
MAU_LIMIT = 700_000_000


@dataclass
class Deployment:
    """What the check is about: every field optional; an unknown fact is never counted as a violation."""

    mau: int | None = None           # monthly active users of the licensee's products (Llama §2)
    country: str | None = None       # ISO 3166 alpha-2 of the licensee's domicile / principal place of business
    use_case: str | None = None      # free text, screened against the acceptable-use categories
    name: str | None = None          # the name the derived model is released under
    multimodal: bool | None = None   # None: read from the weights' config / metadata
    distill_into: str | None = None  # a student: a licence id or a model (name, GGUF file, HF directory)

    def __post_init__(self) -> None:
        if self.mau is not None and (isinstance(self.mau, bool) or not isinstance(self.mau, int) or self.mau < 0):
            raise HearthError(f"--mau must be a whole number of users (0 or more), not {self.mau!r}")
        if self.country is not None:
            cc = self.country.strip().upper()
            if not re.fullmatch(r"[A-Z]{2}", cc):
                raise HearthError(f"--country takes an ISO 3166 alpha-2 code such as DE or US, not {self.country!r}")
            self.country = "GR" if cc == "EL" else cc  # the EU writes Greece EL; ISO 3166 says GR
        for attr in ("use_case", "name", "distill_into"):
            value = getattr(self, attr)
            if value is not None and not value.strip():
                raise HearthError(f"--{attr.replace('_', '-')} is empty")


@dataclass
class Obligation:
    key: str
    applies: bool   # the clause binds this deployment (or may: a fact it depends on was not given)
    violated: bool  # the deployment as described breaks it
    clause: str     # where it comes from: "Llama 3.2 Community License §1.b.i"
    detail: str     # what it asks, in a sentence, and how this deployment stands


@dataclass
class LicenseReport:
    """`family`: hearth's licence id (llama3.2, apache-2.0, mit, gemma, ..., or unknown); `version`: its version."""

    family: str
    version: str | None
    spdx: str | None
    scancode_key: str | None
    evidence: list[str] = field(default_factory=list)
    files: dict[str, str] = field(default_factory=dict)
    obligations: list[Obligation] = field(default_factory=list)

    @property
    def violations(self) -> list[Obligation]:
        return [o for o in self.obligations if o.violated]

    @property
    def title(self) -> str:
        return title_of(self.family)

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["title"], d["violations"] = self.title, [o.key for o in self.violations]
        return d


# ------------------------------------------------------------------------------------ the licences hearth knows


@dataclass(frozen=True)
class LlamaTerms:
    title: str
    version: str
    release: str             # the "version release date" of §2
    use_policy: str          # the Acceptable Use Policy's address
    built_with: str | None   # §1.b.i(B), from Llama 3 on
    prefix: str | None       # §1.b.i: a derived model's name begins with this
    notice: str              # §1.b.iii: the line of the "Notice" text file
    no_improving_others: bool  # §1.b.v (Llama 2 and 3): no use of it or its outputs to improve another LLM
    eu_multimodal: bool        # the AUP withholds rights to multimodal models in the EU (3.2, 3.3, 4)


LLAMA: dict[str, LlamaTerms] = {
    lid: LlamaTerms(t, lid.removeprefix("llama"), rel, aup, bw, px, notice, lid in ("llama2", "llama3"),
                    lid in ("llama3.2", "llama3.3"))
    for lid, (t, rel, aup, bw, px, notice) in lic._LLAMA.items()  # the exact notice strings live there
}
LLAMA["llama4"] = LlamaTerms("Llama 4 Community License", "4", "April 5, 2025", "https://www.llama.com/llama4/use-policy",
                             "Built with Llama", "Llama", "Llama 4 is licensed under the Llama 4 Community License, "
                             "Copyright © Meta Platforms, Inc. All Rights Reserved.", False, True)
GEMMA_NOTICE = "Gemma is provided under and subject to the Gemma Terms of Use found at ai.google.dev/gemma/terms"


def title_of(family: str) -> str:
    if family in LLAMA:
        return LLAMA[family].title
    return {"llama": "a Llama community license (version not identified)", "unknown": "no licence identified"}.get(
        family) or lic.title(family) or family


def _student(ref: str) -> tuple[str | None, str | None]:
    """(licence id, model name) of a distillation student given as a licence id (llama3.2, apache-2.0) or a model."""
    spdx, ids, _ = carry.spdx_expression(ref)
    lid = carry.id_of(ref)
    if spdx or lid in lic._OTHERS or re.fullmatch(r"llama[\s_-]?[234](?:[._][0-9])?", ref.strip(), re.IGNORECASE):
        return (ids[0] if spdx else lid), None
    from hearth.loader import path_name

    try:
        family = check_license(ref, Deployment()).family
    except HearthError:  # not here: a model known by its name only, which may still say it is a Llama
        return carry.llama_ref(ref), ref
    return family, path_name(Path(ref)) if Path(ref).exists() else ref


# ------------------------------------------------------------------------------------ obligations


_TRAIT = (r"ethnic|\brace\b|racial|religio|gender|\bsex\b|sexual orientation|disabilit|national origin|nationality|"
          r"pregnan|skin colou?r|\bage\b|caste")
_SERVICE = r"job|applicant|hir(e|ing)|recruit|employ|candidate|credit|loan|mortgage|lend|housing|tenant|rent|landlord|insur|benefit"
_AUP = [  # (key, category, AUP section (Llama 2 - 4 number these alike), pattern, unless: a guarding use)
    ("violence", "violence or terrorism", "1.a.i", r"terroris|bomb|mass shooting|assassinat|incite\w* violence|"
     r"extremis|radicali[sz]", r"detect|moderat|prevent|counter|flag|report"),
    ("csam", "exploitation or harm to children (CSAM)", "1.a.ii", r"csam|child (sexual|porn|abuse|exploit)|"
     r"sexual\w* .{0,20}(child|minor)|underage (sex|nude|porn)", r"detect|moderat|report|prevent|flag"),
    ("trafficking", "human trafficking, exploitation, sexual violence", "1.a.iii", r"traffick|forced labou?r|"
     r"smuggl\w* (people|migrants)|sexual violence", r"detect|prevent|combat|report|support (for )?(victims|survivors)"),
    ("harassment", "harassment, abuse, threats or bullying", "1.b", r"harass|bully|stalk|threaten|intimidat|doxx?",
     r"detect|moderat|prevent|report|protect|flag"),
    ("discrimination", "discrimination in employment, credit, housing or other essential services", "1.c",
     f"({_TRAIT}).*({_SERVICE})|({_SERVICE}).*({_TRAIT})", None),
    ("unlicensed-practice", "unlicensed practice of a profession (legal, medical, financial)", "1.d",
     r"legal advice|medical advice|financial advice|investment advice|tax advice|diagnos|prescri|"
     r"(act|acting|serve|serving|replace|replacing) (as )?(a |an |the )?(lawyer|attorney|doctor|physician|pharmacist|"
     r"financial advis|accountant)", None),
    ("surveillance", "surveillance, biometric identification, inferring private information", "1.e",
     r"facial recognition|face recognition|biometric|surveil|gait recognition|emotion recognition|track\w* "
     r"(individuals|people|persons|employees|citizens|users)|identify (people|individuals|persons)|"
     r"infer\w* .{0,40}(sexual orientation|religio|ethnic|health)", None),
    ("malware", "malicious code, malware", "1.g", r"malware|ransomware|virus(es)?\b|trojan|keylog|botnet|"
     r"exploit (code|kit)|ddos|spyware|rootkit", r"detect|defen[cs]|classif|analy[sz]|protect"),
    ("weapons", "military, weapons (guns, explosives, CBRN)", "2.a-2.b", r"weapon|firearm|\bguns?\b|explosive|"
     r"ammunition|missile|nerve agent|itar\b|military target", None),
    ("critical-infrastructure", "operation of critical infrastructure, transport or heavy machinery", "2.d",
     r"power grid|electric(al)? grid|nuclear (plant|reactor)|water (treatment|supply)|scada|air traffic|railway|"
     r"critical infrastructure|heavy machinery|autonomous (vehicle|driving|car)|industrial control", None),
    ("self-harm", "self-harm, suicide, eating disorders", "2.e", r"suicid|self[- ]harm|eating disorder|pro[- ]ana\b"
     r"|cutting (myself|yourself|themselves)", r"prevent|crisis|support|helpline|hotline|counsel|detect|moderat"),
    ("disinformation", "fraud, disinformation, defamation, fake engagement", "3.a-3.b, 3.f", r"disinformation|"
     r"misinformation|propaganda|fake news|election (interference|manipulation)|astroturf|fake reviews?|fraud|scam|"
     r"phishing|defam", r"detect|fact[- ]?check|counter|prevent|flag|moderat"),
    ("impersonation", "impersonating a person without consent", "3.d", r"impersonat|pretend\w* to be|pos(e|ing) as|"
     r"deepfake|voice clon|fake (identity|identities|profiles?)", r"detect|prevent|flag"),
]
_AUP_RE = [(k, label, sec, re.compile(p, re.I), re.compile(u, re.I) if u else None) for k, label, sec, p, u in _AUP]


def screen_use_case(text: str) -> list[tuple[str, str, str]]:
    """(key, category, AUP section) of each prohibited category the use case reads as: a keyword screen, not a review."""
    return [(k, label, sec) for k, label, sec, rx, unless in _AUP_RE if rx.search(text) and not (unless and unless.search(text))]


def _acceptable_use(d: Deployment, clause: str, policy: str, numbered: bool) -> list[Obligation]:
    if d.use_case is None:
        return [Obligation("acceptable-use", True, False, clause, f"every use must follow the {policy} (illegal, violent, "
                           "deceptive, weapons-related and other uses are prohibited); --use-case screens one")]
    hits = screen_use_case(d.use_case)
    if not hits:
        return [Obligation("acceptable-use", True, False, clause, f"the use case matches none of the {policy}'s "
                           "prohibited categories (a keyword screen, not a legal review)")]
    return [Obligation(f"aup:{k}", True, True, f"{policy} §{sec}" if numbered else policy,
                       f'the use case "{d.use_case}" falls under a prohibited use: {label}') for k, label, sec in hits]


def _norm(text: str) -> str:
    return " ".join(text.replace("©", "(c)").replace("“", '"').replace("”", '"').lower().split())


def _file(files: dict[str, str], prefix: str) -> list[str]:
    return [n for n in files if n.lower().startswith(prefix)]


def _named(name: str, prefix: str) -> bool:
    rx = r"llama[\s_-]?3(?![0-9])" if prefix == "Llama 3" else r"llama"
    return re.match(rx, name.strip(), re.IGNORECASE) is not None


def _llama(lid: str, d: Deployment, files: dict[str, str], mm: bool | None) -> list[Obligation]:
    t = LLAMA[lid]
    ref, policy = f"{t.title} §", t.title.replace("Community License", "Acceptable Use Policy")
    copies = [n for n in _file(files, "licen") if carry.identify(files[n])[0] == lid]
    notices = [n for n in _file(files, "notice") if _norm(t.notice) in _norm(files[n])]
    out = [Obligation("license-copy", True, False, ref + "1.b.i", "ship a copy of this licence with the weights or any "
                      "derivative: " + (f"{copies[0]} came with them" if copies else
                                        f"no copy came with the weights; get the text from Meta ({t.use_policy.rsplit('/', 1)[0]})")),
           Obligation("notice", True, False, ref + "1.b.iii", f'every copy carries a "Notice" text file with the line: '
                      f'"{t.notice}"' + (f" ({notices[0]} has it)" if notices else " (none came with the weights: add one)"))]
    if t.built_with:
        out.append(Obligation("attribution", True, False, ref + "1.b.i", f'display "{t.built_with}" prominently on a '
                              "related website, user interface, blog post, about page or product documentation"))
    if t.prefix:
        named = d.name is not None
        bad = named and not _named(d.name, t.prefix)
        out.append(Obligation("naming", named, bad, ref + "1.b.i", f'a model made or improved with it (or its outputs) '
                              f'that you distribute must have a name beginning with "{t.prefix}"' + (
                                  f': "{d.name}" does not' if bad else f': "{d.name}" does' if named else " (--name checks one)")))
    out += _acceptable_use(d, ref + "1.b.iv", policy, True)
    over = d.mau is not None and d.mau > MAU_LIMIT
    out.append(Obligation("mau", d.mau is None or over, over, ref + "2 (Additional Commercial Terms)",
                          "more than 700 million monthly active users in the month before the release date "
                          f"({t.release}) means this licence grants nothing: request a licence from Meta" + (
                              "" if d.mau is None else f"; {d.mau:,} is {'over' if over else 'under'} the threshold")))
    if t.eu_multimodal:
        eu = None if d.country is None else d.country in EU
        bad = bool(mm) and bool(eu)
        why = ("the model is text-only" if mm is False else f"{d.country} is not in the EU" if eu is False else
               f"multimodal, {d.country} is in the EU" if bad else "undecided: " + " and ".join(
                   x for x, unknown in (("give --country", eu is None), ("--multimodal or --no-multimodal", mm is None)) if unknown))
        out.append(Obligation("eu-multimodal", mm is not False and eu is not False, bad, f"{policy} (multimodal models)",
                              "for multimodal Llama models, the rights of §1.a are not granted to individuals domiciled, "
                              "or companies with their principal place of business, in the EU (end users of a product "
                              "built on them excepted): " + why))
    if d.distill_into is not None:
        out.append(_distill(lid, t, d))
    return out


def _distill(lid: str, t: LlamaTerms, d: Deployment) -> Obligation:
    family, student = _student(d.distill_into)
    ref = f"{t.title} §1.b." + ("v" if t.no_improving_others else "i")
    if t.no_improving_others:
        ok = family == lid
        return Obligation("distillation", True, not ok, ref, f"Llama {t.version} and its outputs may not improve any "
                          f"other large language model (Llama {t.version} derivatives excepted): the student "
                          f'"{d.distill_into}" is ' + (f"a Llama {t.version} model" if ok else
                                                         f"not a Llama {t.version} model ({family or 'licence unknown'})"))
    name = d.name or student
    bad = d.name is None and name is not None and not _named(name, t.prefix)
    alone = f"; it cannot be released under {family} alone" if family and family != lid and family in lic._OTHERS else ""
    return Obligation("distillation", True, bad, ref, f"using its outputs to train another model is allowed, but that "
                      f'model is built with Llama: its name must begin with "{t.prefix}" and it carries these terms'
                      + alone + (f': "{name}" does not begin so' if bad else ""))


def _permissive(lid: str, d: Deployment, files: dict[str, str]) -> list[Obligation]:
    copies = [n for n in _file(files, "licen") if carry.identify(files[n])[0] == lid]
    have = f"{copies[0]} came with the weights" if copies else "no copy came with the weights: add the licence text"
    derived = d.name is not None or d.distill_into is not None
    if lid == "mit":
        return [Obligation("license-copy", True, False, "MIT License (its condition)", "keep the copyright notice and "
                           f"this permission notice in all copies or substantial portions: {have}")]
    notices = _file(files, "notice")
    return [Obligation("license-copy", True, False, "Apache License 2.0 §4(a)", f"give every recipient a copy of the licence: {have}"),
            Obligation("notice", bool(notices), False, "Apache License 2.0 §4(d)", "ship the attribution notices of the "
                       "NOTICE file with any derivative" + (f": keep {notices[0]}" if notices else ": no NOTICE file came with the weights")),
            Obligation("attribution", True, False, "Apache License 2.0 §4(c)", "keep the source's copyright, patent, "
                       "trademark and attribution notices"),
            Obligation("changes", derived, False, "Apache License 2.0 §4(b)", "files you modified must carry prominent "
                       "notices stating that you changed them" + ("" if derived else " (only if you modify it)"))]


def _gemma(d: Deployment, files: dict[str, str]) -> list[Obligation]:
    ref = "Gemma Terms of Use §3.1"
    notices = [n for n in _file(files, "notice") if _norm(GEMMA_NOTICE) in _norm(files[n])]
    out = [Obligation("use-restrictions", True, False, ref, "pass the use restrictions of §3.2 (the Prohibited Use "
                      "Policy) on as an enforceable provision of your terms, and tell recipients they apply"),
           Obligation("license-copy", True, False, ref, "give every recipient a copy of the Gemma Terms of Use"),
           Obligation("notice", True, False, ref, f'ship a "Notice" text file saying: "{GEMMA_NOTICE}"'
                      + (f" ({notices[0]} has it)" if notices else " (none came with the weights: add one)")),
           Obligation("changes", True, False, ref, "modified files carry prominent notices that you modified them")]
    out += _acceptable_use(d, "Gemma Terms of Use §3.2", "Gemma Prohibited Use Policy", False)
    if d.distill_into is not None:
        out.append(Obligation("distillation", True, False, "Gemma Terms of Use §1.1(e)", "a model trained on Gemma's "
                              "outputs by distillation is a Model Derivative: these terms travel with it"))
    return out


def _obligations(lid: str, d: Deployment, files: dict[str, str], mm: bool | None) -> list[Obligation]:
    if lid in LLAMA:
        return _llama(lid, d, files, mm)
    if lid in ("apache-2.0", "mit"):
        return _permissive(lid, d, files)
    if lid == "gemma":
        return _gemma(d, files)
    if lid == "unknown":
        return [Obligation("unknown-license", True, True, "no licence identified", "nothing hearth found grants a right "
                           "to use or redistribute these weights, so no obligation can be confirmed: ask the provider "
                           "for the licence; redistribution is not advised")]
    summary = lic.summarize(LicenseInfo(id=lid, name=title_of(lid), source="")) if lid != "llama" else []
    text = summary[1] if len(summary) > 1 and lid in lic._OTHERS else (
        "a Llama community license whose version hearth could not tell: its §2 (700 million monthly active users), "
        "Notice file and Acceptable Use Policy apply; read the text that came with the weights" if lid == "llama" else
        "hearth has no summary of these terms: read the licence that came with the weights")
    return [Obligation("terms", True, False, title_of(lid), text)]


# ------------------------------------------------------------------------------------ the check


def check_license(path_or_ref: str | Path, deployment: Deployment) -> LicenseReport:
    """The licence that travels with a model and how `deployment` stands against each of its obligations."""
    c = carry.gather(str(path_or_ref))
    evidence: list[str] = []
    by_text = carry.from_texts(c.texts, evidence)
    declared, expression, members, op = carry.from_declared(c, evidence)
    family = by_text or declared or "unknown"
    if by_text == "llama" and declared in LLAMA:
        family = declared  # the text is a Llama licence, the metadata says which
    elif by_text and declared and by_text != declared and by_text not in members:
        evidence.append(f"the licence text says {by_text} where the metadata says {declared}: the text decides")
    mm = deployment.multimodal
    if mm is None:
        mm = carry.multimodal(c, evidence)
    else:
        evidence.append(f"multimodal: {'yes' if mm else 'no'} (as given)")
    spdx, key = carry.keys_of(family) if family not in ("unknown", "llama") else (None, None)
    obligations = _obligations(family, deployment, c.texts, mm)
    if expression and family in members:
        spdx = expression
        if op == "OR":
            evidence.append(f"{expression}: a choice of licences; the obligations are those of {family}")
        else:
            for other in (m for m in members if m != family):
                obligations += [Obligation(f"{other}:{o.key}", o.applies, o.violated, o.clause, o.detail)
                                for o in _obligations(other, deployment, c.texts, mm)]
    if family == "unknown":
        evidence.append(f"no licence identified in {c.source}" + (f" ({', '.join(c.texts)} unrecognised)" if c.texts else ""))
    m = re.search(r"-([0-9]+(?:\.[0-9]+)*)$", family)
    version = LLAMA[family].version if family in LLAMA else (m.group(1) if m else None)
    return LicenseReport(family, version, spdx, key, evidence, dict(c.texts), obligations)
