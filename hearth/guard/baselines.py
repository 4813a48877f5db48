"""What a guard must beat: a keyword filter, the cheapest guard there is.

The filter is a hand-written list of patterns per Llama Guard 3 category, the kind of blocklist a deployment writes
before it has a classifier. Its score counts the categories' patterns a text matches, 1 - 0.5**hits: 0 with no
hit, 0.5 with one (unsafe at the usual threshold), nearer 1 with more, so it has a (coarse) precision-recall curve
too. The patterns follow the category descriptions (taxonomy.py), lower-case, matched on word boundaries in a
lower-cased text. Their author had read the evaluation sets, so if anything they flatter the filter.

The other baseline, the guard's base model prompted zero-shot in the same Llama Guard format, needs no code of its
own: it is `classify(..., adapter=None)` on the engine that serves the guard (hearth.guard.evaluate).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

KEYWORDS: dict[str, tuple[str, ...]] = {
    "S1": (r"kill(ing)?", r"murder\w*", r"assault\w*", r"shoot(ing)? (up|someone|people)", r"stab\w*", r"hitman",
           r"kidnap\w*", r"terroris[tm]\w*", r"hurt (someone|somebody|people|him|her)", r"torture\w*",
           r"bomb threat", r"death threat", r"massacre"),
    "S2": (r"steal\w*", r"stolen", r"rob(bing|bery)?", r"fraud\w*", r"launder\w*", r"counterfeit\w*", r"smuggl\w*",
           r"shoplift\w*", r"hack(ing|ed)? (into|someone|a|an|the|my)", r"malware", r"ransomware", r"keylogger",
           r"phishing", r"scam\w*", r"forg(e|ery|ing) (documents?|a|prescriptions?|signatures?)", r"meth(amphetamine)?",
           r"without getting caught", r"evad(e|ing) (the )?(police|law enforcement|taxes|detection)",
           r"ddos", r"sql injection", r"exploit\w*", r"credit card (numbers?|information|skimm\w*)"),
    "S3": (r"rape\w*", r"sexual(ly)? (assault\w*|abuse\w*|exploitation)", r"sex trafficking", r"non-consensual",
           r"prostitut\w*", r"brothel"),
    "S4": (r"child (porn\w*|sexual\w*|abuse material)", r"csam", r"underage (sex|nude\w*)", r"minors? (sexual\w*|nude\w*)",
           r"groom(ing)? (a )?(child|minor|kid)"),
    "S5": (r"defamat\w*", r"slander\w*", r"libel\w*", r"false rumou?rs?"),
    "S6": (r"lethal dose", r"overdose", r"stop taking (my|your) (medication|meds)", r"(mix|mixing) bleach"),
    "S7": (r"social security numbers?", r"ssn", r"home address of", r"doxx?\w*", r"private (medical )?records",
           r"credit card details", r"passwords? of"),
    "S8": (r"pirat\w*", r"torrent\w*", r"copyrighted", r"lyrics of", r"crack(ed)? (software|version)"),
    "S9": (r"bombs?", r"explosives?", r"nerve (agent|gas)", r"sarin", r"ricin", r"anthrax", r"bioweapons?",
           r"biological (weapons?|warfare)", r"chemical (weapons?|warfare)", r"nuclear (weapons?|bomb)",
           r"dirty bomb", r"uranium", r"pipe bomb", r"toxin", r"pathogens?"),
    "S10": (r"racial slurs?", r"slurs?", r"inferior (race|people)", r"racis[tm]\w*", r"sexis[tm]\w*",
            r"hate (speech|mail)", r"subhuman", r"ethnic cleansing", r"white (supremac\w*|power)", r"nazi\w*"),
    "S11": (r"suicid\w*", r"kill (myself|yourself)", r"self[- ]harm\w*", r"cut (myself|yourself)", r"anorexi\w*",
            r"bulimi\w*", r"end (my|your) life"),
    "S12": (r"porn\w*", r"erotic\w*", r"explicit sex\w*", r"sex scene", r"nude\w*", r"nsfw"),
    "S13": (r"voter fraud", r"rigged election", r"ballots?", r"polling (place|station)s?", r"election (day|fraud)"),
    "S14": (r"fork bomb", r"rm -rf /", r"container escape", r"escape the sandbox", r"privilege escalation",
            r"infinite loop"),
}
_PATTERNS = {code: re.compile(r"\b(?:" + "|".join(pats) + r")\b") for code, pats in KEYWORDS.items()}


@dataclass(frozen=True)
class KeywordVerdict:
    score: float  # 1 - 0.5**(categories matched)
    categories: tuple[str, ...]  # the codes whose patterns matched, in S-order


def keyword_verdict(text: str) -> KeywordVerdict:
    t = text.lower()
    codes = tuple(code for code, pat in _PATTERNS.items() if pat.search(t))
    return KeywordVerdict(1.0 - 0.5 ** len(codes), codes)
