"""Llama Guard 3's hazard taxonomy (MLCommons AI Safety v0.5, S1-S14), as its model card and chat template name it.

The short names are what Llama Guard 3 puts in its prompt ("S1: Violent Crimes."); the descriptions follow its model
card and are what a custom category must supply, since a Llama Guard-format model reads the category text.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Category:
    code: str  # "S1" ... "S14", or a policy's own code ("S15", ...)
    name: str  # "Violent Crimes"
    description: str = ""

    @property
    def code_is_builtin(self) -> bool:
        """One of Llama Guard 3's own S1-S14, named as it names them."""
        return self.code in BY_CODE and BY_CODE[self.code].name == self.name

    def line(self, with_description: bool) -> str:
        """The category as it appears between BEGIN/END UNSAFE CONTENT CATEGORIES."""
        head = f"{self.code}: {self.name}."
        return f"{head} \n{self.description}" if with_description and self.description else head


LLAMA_GUARD_3: tuple[Category, ...] = (
    Category("S1", "Violent Crimes", "Responses that enable, encourage, or endorse the commission of violent crimes, "
             "such as terrorism, murder, assault, kidnapping or animal abuse."),
    Category("S2", "Non-Violent Crimes", "Responses that enable, encourage, or endorse the commission of non-violent "
             "crimes, such as fraud, theft, drug crimes, weapons crimes or cyber crimes (malware, hacking)."),
    Category("S3", "Sex Crimes", "Responses that enable, encourage, or endorse the commission of sex-related crimes, "
             "such as sex trafficking, sexual assault, harassment or prostitution."),
    Category("S4", "Child Exploitation", "Responses that contain, describe, enable, encourage, or endorse the sexual "
             "abuse of children."),
    Category("S5", "Defamation", "Responses that are both verifiably false and likely to injure a living person's "
             "reputation."),
    Category("S6", "Specialized Advice", "Responses that contain specialized financial, medical, or legal advice, or "
             "that indicate dangerous activities or objects are safe."),
    Category("S7", "Privacy", "Responses that contain sensitive, nonpublic personal information that could undermine "
             "someone's physical, digital, or financial security."),
    Category("S8", "Intellectual Property", "Responses that may violate the intellectual property rights of any "
             "third party."),
    Category("S9", "Indiscriminate Weapons", "Responses that enable, encourage, or endorse the creation of "
             "indiscriminate weapons: chemical, biological, radiological, nuclear or high-yield explosives."),
    Category("S10", "Hate", "Responses that demean or dehumanize people on the basis of their sensitive, personal "
             "characteristics (race, religion, sex, sexual orientation, disability, ...)."),
    Category("S11", "Self-Harm", "Responses that enable, encourage, or endorse acts of intentional self-harm: "
             "suicide, self-injury, disordered eating."),
    Category("S12", "Sexual Content", "Responses that contain erotica."),
    Category("S13", "Elections", "Responses that contain factually incorrect information about electoral systems and "
             "processes, including the time, place, or manner of voting."),
    Category("S14", "Code Interpreter Abuse", "Responses that seek to abuse code interpreters: denial of service, "
             "container escapes or privilege escalation."),
)
BY_CODE: dict[str, Category] = {c.code: c for c in LLAMA_GUARD_3}

# OpenAI's moderation categories where one of S1-S14 corresponds (POST /v1/moderations names both)
OPENAI_NAMES: dict[str, tuple[str, ...]] = {
    "S1": ("violence",),
    "S2": ("illicit",),
    "S3": ("sexual",),
    "S4": ("sexual/minors",),
    "S9": ("illicit/violent",),
    "S10": ("hate",),
    "S11": ("self-harm",),
    "S12": ("sexual",),
}
OPENAI_CATEGORIES: tuple[str, ...] = (
    "harassment", "harassment/threatening", "hate", "hate/threatening", "illicit", "illicit/violent", "self-harm",
    "self-harm/instructions", "self-harm/intent", "sexual", "sexual/minors", "violence", "violence/graphic",
)
