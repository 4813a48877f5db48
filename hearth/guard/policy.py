"""A deployment's content policy (TOML or YAML): which categories the guard checks, what each one does, where.

    name = "clinic"
    check = "both"                 # input | output | both
    threshold = 0.5                # P(unsafe) at or above which a text is unsafe
    refusal = "I can't help with that here."
    enabled = ["S1", "S2", ...]    # of S1-S14; default: all 14 ([[custom]] ones are always checked)
    [actions]                      # block (default) | flag (logged and counted, allowed) | allow
    S6 = "allow"
    [[custom]]                     # categories of your own; the guard reads their description
    code = "S15"
    name = "Patient Records"
    description = "Responses that reveal a patient's records ..."
    action = "block"

The prompt lists the enabled categories in Llama Guard's order, then the custom ones. The file is untrusted input:
its size is bounded, every key is checked and any mistake is one error line.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from hearth.errors import HearthError
from hearth.guard.taxonomy import BY_CODE, LLAMA_GUARD_3, Category

ACTIONS = ("block", "flag", "allow")
CHECKS = ("input", "output", "both")
MAX_POLICY_BYTES = 256 << 10
DEFAULT_REFUSAL = "I can't help with that request."
_CUSTOM_CODE = re.compile(r"S(1[5-9]|[2-9]\d)")
_KEYS = {"name", "check", "threshold", "refusal", "enabled", "actions", "custom"}


class PolicyError(HearthError):
    pass


@dataclass(frozen=True)
class Policy:
    name: str = "default"
    categories: tuple[Category, ...] = LLAMA_GUARD_3  # in prompt order
    actions: dict[str, str] = field(default_factory=dict)  # code -> block | flag | allow (absent: block)
    check: str = "both"
    threshold: float = 0.5
    refusal: str = DEFAULT_REFUSAL

    @property
    def check_input(self) -> bool:
        return self.check in ("input", "both")

    @property
    def check_output(self) -> bool:
        return self.check in ("output", "both")

    def action(self, code: str) -> str:
        return self.actions.get(code, "block")

    def decide(self, unsafe: bool, codes: tuple[str, ...]) -> str:
        """'block', 'flag' or 'allow' for a verdict: the strictest action of the categories it names. A Llama Guard
        category the policy leaves out is allowed (a guard whose template lists all 14 may still name it); an unsafe
        verdict naming no category the guard knows is blocked (the guard said unsafe; we do not guess)."""
        if not unsafe:
            return "allow"
        known = [self.action(c) if c in self.codes else "allow" for c in codes if c in self.codes or c in BY_CODE]
        if not known:
            return "block"
        return min(known, key=ACTIONS.index)

    @property
    def codes(self) -> tuple[str, ...]:
        return tuple(c.code for c in self.categories)


def _fail(where: str, what: str) -> PolicyError:
    return PolicyError(f"policy {where}: {what}")


def parse_policy(data: object, where: str = "") -> Policy:
    if not isinstance(data, dict):
        raise _fail(where, "expected a table of settings (name, check, enabled, actions, custom, refusal)")
    unknown = sorted(set(data) - _KEYS)
    if unknown:
        raise _fail(where, f"unknown key {unknown[0]!r}; keys are {', '.join(sorted(_KEYS))}")
    name = data.get("name", Path(where).stem if where else "policy")
    if not isinstance(name, str) or not name.strip() or len(name) > 100:
        raise _fail(where, "name must be a short text")
    check = data.get("check", "both")
    if check not in CHECKS:
        raise _fail(where, f"check = {check!r}: use input, output or both")
    threshold = data.get("threshold", 0.5)
    if isinstance(threshold, bool) or not isinstance(threshold, int | float) or not 0 < threshold < 1:
        raise _fail(where, f"threshold = {threshold!r}: use a number between 0 and 1")
    refusal = data.get("refusal", DEFAULT_REFUSAL)
    if not isinstance(refusal, str) or not refusal.strip() or len(refusal) > 2000:
        raise _fail(where, "refusal must be a text of at most 2000 characters")

    custom: list[Category] = []
    actions: dict[str, str] = {}
    raw_custom = data.get("custom", [])
    if not isinstance(raw_custom, list) or len(raw_custom) > 32:
        raise _fail(where, "custom must be a list of at most 32 categories ([[custom]] tables)")
    for i, c in enumerate(raw_custom):
        if not isinstance(c, dict) or set(c) - {"code", "name", "description", "action"}:
            raise _fail(where, f"custom category {i + 1}: give code, name, description and optionally action")
        code, cname, desc = c.get("code"), c.get("name"), c.get("description")
        if not isinstance(code, str) or not _CUSTOM_CODE.fullmatch(code):
            raise _fail(where, f"custom category code {code!r}: use S15 to S99 (S1-S14 are Llama Guard's own)")
        if not isinstance(cname, str) or not cname.strip() or len(cname) > 80:
            raise _fail(where, f"custom category {code}: name must be a short text")
        if not isinstance(desc, str) or not desc.strip() or len(desc) > 2000:
            raise _fail(where, f"custom category {code}: a description is required (the guard reads it)")
        if code in {x.code for x in custom}:
            raise _fail(where, f"custom category {code} is defined twice; give each its own code")
        custom.append(Category(code, cname.strip().rstrip("."), " ".join(desc.split())))
        if "action" in c:
            actions[code] = c["action"]
            if isinstance(data.get("actions"), dict) and code in data["actions"]:
                raise _fail(where, f"the action for {code} is given twice (in [actions] and in its [[custom]] table)")

    enabled = data.get("enabled", [c.code for c in LLAMA_GUARD_3])
    if not isinstance(enabled, list) or not all(isinstance(e, str) for e in enabled):
        raise _fail(where, "enabled must be a list of category codes, e.g. [\"S1\", \"S2\"]")
    custom_codes = {c.code for c in custom}
    for code in enabled:
        if code not in BY_CODE and code not in custom_codes:
            raise _fail(where, f"unknown category code {code!r} in enabled: use S1-S14 or a [[custom]] code")
    if len(set(enabled)) != len(enabled):
        twice = next(c for c in enabled if enabled.count(c) > 1)
        raise _fail(where, f"{twice} is listed twice in enabled; list each code once")
    raw_actions = data.get("actions", {})
    if not isinstance(raw_actions, dict):
        raise _fail(where, "[actions] must map category codes to block, flag or allow")
    for code, act in {**raw_actions, **actions}.items():
        if code not in BY_CODE and code not in custom_codes:
            raise _fail(where, f"unknown category code {code!r} in actions: use S1-S14 or a [[custom]] code")
        if act not in ACTIONS:
            raise _fail(where, f"action {act!r} for {code}: use block, flag or allow")
        actions[code] = act
    # Llama Guard's order (the order it was trained on), then the policy's own
    categories = tuple(c for c in LLAMA_GUARD_3 if c.code in enabled) + tuple(custom)
    if not categories:
        raise _fail(where, "no category is enabled; the guard would check nothing")
    return Policy(name.strip(), categories, actions, check, float(threshold), refusal.strip())


def load_policy(path: str | Path | None) -> Policy:
    """The policy in a TOML (.toml) or YAML (.yaml/.yml) file; None: Llama Guard 3's 14 categories, all blocked."""
    if path is None:
        return Policy()
    p = Path(path)
    kind = {".toml": "TOML", ".yaml": "YAML", ".yml": "YAML"}.get(p.suffix.lower())
    if kind is None:
        raise PolicyError(f"policy file {p}: name it .toml or .yaml (the suffix says how to read it)")
    try:
        with p.open("rb") as f:
            raw = f.read(MAX_POLICY_BYTES + 1)
    except FileNotFoundError:
        raise PolicyError(f"policy file not found: {p}; check the path") from None
    except OSError as e:
        raise PolicyError(f"cannot read policy file {p}: {e.strerror or e}") from None
    if len(raw) > MAX_POLICY_BYTES:
        raise _fail(str(p), f"the file is larger than {MAX_POLICY_BYTES >> 10} KiB; a policy is a few lines")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise _fail(str(p), f"not UTF-8 text (byte {e.start}); save it as UTF-8") from None
    try:
        if kind == "YAML":
            import yaml

            data = yaml.safe_load(text)
            if isinstance(data, dict) and isinstance(data.get("threshold"), str) \
                    and re.fullmatch(r"[0-9.]+[eE][-+]?[0-9]+", data["threshold"]):
                data["threshold"] = float(data["threshold"])  # YAML 1.1 reads 1e-06 (no dot) as text
        else:
            data = tomllib.loads(text)
    except Exception as e:  # noqa: BLE001 - a parser's own message, on one line
        why = " ".join(str(e).split())[:200] or type(e).__name__
        raise PolicyError(f"policy {p} is not valid {kind} ({why}); fix the file") from None
    return parse_policy(data, str(p))
