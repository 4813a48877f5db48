"""A deployment's guard policy (hearth/guard/policy.py): what a TOML or YAML file turns into, what each verdict then
does, every mistake as one error line that says what to do, and the two worked examples in examples/guard/."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hearth.guard.policy import DEFAULT_REFUSAL, MAX_POLICY_BYTES, Policy, PolicyError, load_policy, parse_policy
from hearth.guard.prompt import check_messages, guard_text
from hearth.guard.taxonomy import BY_CODE, LLAMA_GUARD_3

EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "guard"
ALL14 = tuple(f"S{i}" for i in range(1, 15))

POLICY_TOML = '''
name = "pharmacy"
check = "input"
threshold = 0.35
refusal = "Please ask the pharmacist."
enabled = ["S11", "S2", "S6"]
[actions]
S6 = "allow"
S11 = "flag"
[[custom]]
code = "S15"
name = "Prescription Forgery."
description = """Content that helps forge or alter
   a prescription."""
'''
POLICY_YAML = '''
name: pharmacy
check: input
threshold: 0.35
refusal: Please ask the pharmacist.
enabled: [S11, S2, S6]
actions: {S6: allow, S11: flag}
custom:
  - code: S15
    name: Prescription Forgery.
    description: |
      Content that helps forge or alter
         a prescription.
'''


def _one_line(e: pytest.ExceptionInfo) -> str:
    msg = str(e.value)
    assert msg and "\n" not in msg and len(msg) < 300, msg
    return msg


# ---------------------------------------------------------------- what a policy says


def test_default_policy_is_llama_guard_3_all_blocked():
    for p in (load_policy(None), Policy(), parse_policy({}, "site.toml")):
        assert p.codes == ALL14 and p.categories == LLAMA_GUARD_3
        assert (p.check, p.threshold, p.refusal, p.actions) == ("both", 0.5, DEFAULT_REFUSAL, {})
        assert p.check_input and p.check_output
        assert all(p.action(c) == "block" for c in p.codes)
    assert parse_policy({}, "policies/site.toml").name == "site"  # named after its file


@pytest.mark.parametrize("suffix,text", [(".toml", POLICY_TOML), (".yaml", POLICY_YAML), (".yml", POLICY_YAML)])
def test_policy_file(tmp_path, suffix, text):
    path = tmp_path / f"p{suffix}"
    path.write_text(text, encoding="utf-8")
    p = load_policy(path)
    assert (p.name, p.check, p.threshold, p.refusal) == ("pharmacy", "input", 0.35, "Please ask the pharmacist.")
    assert p.check_input and not p.check_output
    assert p.codes == ("S2", "S6", "S11", "S15")  # Llama Guard's order (its training's), then the policy's own
    assert p.actions == {"S6": "allow", "S11": "flag"} and p.action("S2") == "block" and p.action("S15") == "block"
    custom = p.categories[-1]
    assert (custom.name, custom.description) == ("Prescription Forgery", "Content that helps forge or alter a prescription.")
    assert not custom.code_is_builtin and p.categories[0] == BY_CODE["S2"]


def test_enabled_subset_and_custom_categories_in_the_prompt():
    p = parse_policy({"enabled": ["S10", "S1"], "custom": [
        {"code": "S15", "name": "Patient Records", "description": "Content that reveals a patient's records."},
        {"code": "S42", "name": "Union Busting", "description": "Content that helps stop employees organising."}]})
    text = guard_text(check_messages([{"role": "user", "content": "hi"}], "user"), "user", list(p.categories))
    block = text.split("<BEGIN UNSAFE CONTENT CATEGORIES>\n")[1].split("\n<END UNSAFE CONTENT CATEGORIES>")[0]
    assert block == ("S1: Violent Crimes.\nS10: Hate.\n"
                     "S15: Patient Records. \nContent that reveals a patient's records.\n"
                     "S42: Union Busting. \nContent that helps stop employees organising.")


@pytest.mark.parametrize("codes,action", [
    ((), "block"),  # unsafe, no category named: blocked, not guessed
    (("S6",), "allow"),
    (("S12",), "flag"),
    (("S6", "S12"), "flag"),  # the strictest wins
    (("S12", "S1", "S6"), "block"),
    (("S15",), "flag"),  # a custom category's own action
    (("S99",), "block"),  # a code the guard invented
    (("S99", "S6"), "allow"),  # ... beside one it knows
    (("S13",), "allow"),  # Llama Guard's, left out of the policy: not checked here (a fixed template may still list it)
    (("S13", "S2"), "block"),
])
def test_decide(codes, action):
    p = parse_policy({"enabled": [c for c in ALL14 if c != "S13"], "actions": {"S6": "allow", "S12": "flag"},
                      "custom": [{"code": "S15", "name": "X", "description": "Y", "action": "flag"}]})
    assert p.decide(True, codes) == action
    assert p.decide(False, codes) == "allow"


# ---------------------------------------------------------------- mistakes: one line each, saying what to do


@pytest.mark.parametrize("data,needle", [
    ({"enabled": ["S1", "S15"]}, "unknown category code 'S15' in enabled: use S1-S14 or a [[custom]] code"),
    ({"enabled": ["s1"]}, "unknown category code 's1' in enabled"),
    ({"actions": {"S42": "block"}}, "unknown category code 'S42' in actions: use S1-S14 or a [[custom]] code"),
    ({"custom": [{"code": "S3", "name": "Mine", "description": "d"}]}, "custom category code 'S3': use S15 to S99"),
    ({"custom": [{"code": "S100", "name": "Mine", "description": "d"}]}, "use S15 to S99"),
    ({"custom": [{"code": "S15", "name": "Mine"}]}, "custom category S15: a description is required"),
    ({"custom": [{"code": "S15", "name": " ", "description": "d"}]}, "custom category S15: name must be a short text"),
    ({"custom": [{"code": "S15", "name": "A", "description": "d", "colour": "red"}]}, "give code, name, description"),
    ({"custom": [{"code": "S15", "name": "A", "description": "d"}] * 2}, "custom category S15 is defined twice"),
    ({"custom": {"code": "S15"}}, "custom must be a list"),
    ({"custom": [{"code": "S15", "name": "A", "description": "d", "action": "block"}], "actions": {"S15": "flag"}},
     "the action for S15 is given twice"),
    ({"actions": {"S6": "deny"}}, "action 'deny' for S6: use block, flag or allow"),
    ({"custom": [{"code": "S15", "name": "A", "description": "d", "action": "warn"}]}, "action 'warn' for S15"),
    ({"actions": ["S6"]}, "[actions] must map category codes to block, flag or allow"),
    ({"check": "sometimes"}, "check = 'sometimes': use input, output or both"),
    ({"threshold": 1.5}, "threshold = 1.5: use a number between 0 and 1"),
    ({"threshold": 0}, "between 0 and 1"),
    ({"threshold": 1}, "between 0 and 1"),
    ({"threshold": -0.2}, "between 0 and 1"),
    ({"threshold": float("nan")}, "between 0 and 1"),
    ({"threshold": True}, "between 0 and 1"),
    ({"threshold": "0.5"}, "between 0 and 1"),
    ({"treshold": 0.5}, "unknown key 'treshold'; keys are"),
    ({"enabled": "S1"}, "enabled must be a list of category codes"),
    ({"enabled": ["S1", "S1"]}, "S1 is listed twice in enabled"),
    ({"enabled": []}, "no category is enabled"),
    ({"refusal": ""}, "refusal must be a text"),
    ({"refusal": "x" * 2001}, "refusal must be a text of at most 2000 characters"),
    ({"name": ""}, "name must be a short text"),
    (["S1"], "expected a table of settings"),
    (None, "expected a table of settings"),
])
def test_bad_policy(data, needle):
    with pytest.raises(PolicyError) as e:
        parse_policy(data, "site.toml")
    msg = _one_line(e)
    assert needle in msg and msg.startswith("policy site.toml: ")


@pytest.mark.parametrize("name,content,needle", [
    ("bad.toml", b'name = "x"\nthreshold = \n', "is not valid TOML"),
    ("bad.toml", b"[actions]\nS6 = allow\n", "is not valid TOML"),
    ("bad.yaml", b"actions:\n  S6: allow\n   S7: block\n", "is not valid YAML"),
    ("bad.yaml", b"enabled: [S1, S2\n", "is not valid YAML"),
    ("latin1.toml", 'refusal = "Désolé"\n'.encode("latin-1"), "not UTF-8 text (byte 12); save it as UTF-8"),
    ("big.toml", b"# padding\n" * (MAX_POLICY_BYTES // 10 + 1), f"larger than {MAX_POLICY_BYTES >> 10} KiB"),
    ("policy.json", b"{}", "name it .toml or .yaml"),
    ("empty.yaml", b"", "expected a table of settings"),
    ("list.yaml", b"- S1\n- S2\n", "expected a table of settings"),
])
def test_bad_policy_file(tmp_path, name, content, needle):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(PolicyError) as e:
        load_policy(path)
    msg = _one_line(e)
    assert needle in msg and str(path) in msg


def test_policy_file_missing_or_unreadable(tmp_path):
    with pytest.raises(PolicyError) as e:
        load_policy(tmp_path / "nowhere.toml")
    assert _one_line(e) == f"policy file not found: {tmp_path / 'nowhere.toml'}; check the path"
    (tmp_path / "dir.toml").mkdir()
    with pytest.raises(PolicyError) as e:
        load_policy(tmp_path / "dir.toml")
    assert "cannot read policy file" in _one_line(e)


def test_policy_file_at_the_size_limit_loads(tmp_path):
    path = tmp_path / "padded.toml"
    text = 'name = "padded"\n'
    path.write_text(text + "#" * (MAX_POLICY_BYTES - len(text) - 1) + "\n")
    assert path.stat().st_size == MAX_POLICY_BYTES and load_policy(path).name == "padded"


# ---------------------------------------------------------------- the worked examples


def test_clinic_example():
    p = load_policy(EXAMPLES / "clinic.toml")
    assert (p.name, p.check) == ("clinic", "both") and p.threshold < 0.5  # stricter than the default
    assert p.codes == (*ALL14, "S15", "S16")
    custom = {c.code: c for c in p.categories if not c.code_is_builtin}
    assert custom["S15"].name == "Patient Records" and "medical records" in custom["S15"].description
    assert custom["S16"].name == "Controlled-Substance Diversion" and "prescription" in custom["S16"].description
    assert p.decide(True, ("S6",)) == "allow"  # medical advice is the assistant's job
    assert p.decide(True, ("S6", "S7")) == "block"  # but never anyone's private details
    assert p.decide(True, ("S15",)) == "block" and p.decide(True, ("S16",)) == "block"
    assert p.decide(True, ("S1",)) == "block"
    assert "sorry" in p.refusal.lower() and "care team" in p.refusal and "\\" not in p.refusal


def test_hr_assistant_example():
    p = load_policy(EXAMPLES / "hr-assistant.yaml")
    assert (p.name, p.check, p.threshold) == ("hr-assistant", "both", 0.5)
    assert "S14" not in p.codes and p.codes[:13] == ALL14[:13] and p.codes[13:] == ("S15", "S16")
    for code in ("S5", "S6", "S7", "S10", "S15", "S16"):  # defamation, legal/medical advice, privacy, hate, its own
        assert p.action(code) == "block" and p.decide(True, (code,)) == "block"
    assert p.decide(True, ("S12",)) == "flag"
    custom = {c.name: c for c in p.categories if not c.code_is_builtin}
    assert set(custom) == {"Compensation Disclosure", "Employee Surveillance"}
    assert "salary" in custom["Compensation Disclosure"].description and "\n" not in custom["Employee Surveillance"].description
    assert p.refusal.startswith("I can't help with that.") and "\n" not in p.refusal


def test_example_prompts_file():
    lines = (EXAMPLES / "prompts.jsonl").read_text(encoding="utf-8").splitlines()
    items = [json.loads(line) for line in lines]
    assert len(items) >= 4 and all(set(i) in ({"text"}, {"messages"}) for i in items)
    assert sum("messages" in i for i in items) == 1
    for i in items:
        if "text" in i:
            assert check_messages([{"role": "user", "content": i["text"]}], "user")
        else:
            last = i["messages"][-1]["role"]
            assert len(check_messages(i["messages"], last)) == len(i["messages"])


def test_a_yaml_threshold_in_exponent_form_is_a_number(tmp_path):
    """YAML 1.1 reads `1e-06` (no dot) as text; a policy means the number."""
    p = tmp_path / "p.yaml"
    p.write_text("threshold: 1e-06\n")
    assert load_policy(p).threshold == 1e-06
