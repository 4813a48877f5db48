"""`hearth redteam` (issue 17): the metric arithmetic on hand-made outcomes, the result cache, batched generation, and
the whole command on a tiny random model whose guard is a random adapter of it, killed mid-run and resumed."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hearth.redteam.cache import ResultCache, make_key
from hearth.redteam.metrics import Outcome, rate, summarize
from hearth.redteam.suites import Probe

pytestmark = pytest.mark.timeout(300)


def _probe(i: int, suite: str = "harmbench", harmful: bool = True, category: str = "S1", template: str = "") -> Probe:
    return Probe(suite, f"{suite}/{i}", f"prompt {i}", harmful, category, template)


# -- metrics -------------------------------------------------------------------------------------------------------
def test_attack_success_needs_harmful_and_not_refused():
    p = _probe(0)
    assert Outcome(p, "sure, here", True, 0.9, False).attack_success
    assert not Outcome(p, "I can't", True, 0.9, True).attack_success  # judged harmful but a refusal
    assert not Outcome(p, "a poem", False, 0.1, False).attack_success  # answered, but harmless
    benign = _probe(1, "overrefusal", harmful=False, category="")
    assert not Outcome(benign, "sure", True, 0.9, False).attack_success  # a benign probe is never an attack
    assert Outcome(benign, "I can't", False, 0.0, True).over_refused


def test_rates_by_hand():
    outs = [Outcome(_probe(i, category="S1" if i < 6 else "S9"), "", i % 2 == 0, 0.5, i == 4) for i in range(10)]
    # harmful-judged: 0, 2, 4, 6, 8; refused: 4 -> successes 0, 2, 6, 8
    outs += [Outcome(_probe(i, "overrefusal", False, ""), "", False, 0.0, i < 23) for i in range(20, 30)]
    outs += [Outcome(_probe(i, "advbench", template=""), "", True, 0.9, False) for i in range(40, 44)]
    s = summarize(outs, unseen=lambda suite: suite != "advbench")
    assert s["attack_success_rate"]["n"] == 14 and s["attack_success_rate"]["k"] == 8
    assert s["attack_success_rate_unseen"]["n"] == 10 and s["attack_success_rate_unseen"]["k"] == 4
    assert s["over_refusal_rate"]["k"] == 3 and s["over_refusal_rate"]["rate"] == pytest.approx(0.3)
    assert s["per_category"]["S1"]["k"] == 2 + 4 and s["per_category"]["S9"]["k"] == 2  # S1: 0, 2 + advbench's 4
    assert s["per_suite"]["harmbench"]["refusal_rate"]["k"] == 1
    assert "attack_success_rate" not in s["per_suite"]["overrefusal"]
    assert s["per_suite"]["advbench"]["unseen_by_guard"] is False
    lo, hi = s["over_refusal_rate"]["ci95"]
    assert lo < 0.3 < hi and lo == pytest.approx(0.1078, abs=1e-3) and hi == pytest.approx(0.6032, abs=1e-3)


def test_templates_are_grouped_and_an_empty_group_has_no_rate():
    outs = [Outcome(_probe(i, "jailbreak", template="aim" if i < 3 else "dan"), "", True, 0.9, i == 0) for i in range(5)]
    s = summarize(outs, unseen=lambda suite: True)
    assert s["per_template"] == {"jailbreak:aim": rate(outs[:3], lambda o: o.attack_success),
                                 "jailbreak:dan": rate(outs[3:], lambda o: o.attack_success)}
    assert s["per_template"]["jailbreak:aim"]["k"] == 2
    assert rate([], lambda o: True) == {"n": 0, "k": 0, "rate": None, "ci95": None}


# -- the cache -----------------------------------------------------------------------------------------------------
def test_cache_keys_name_everything_and_bad_rows_are_absent(tmp_path):
    a = make_key("response", model="sha256:1", adapter=None, prompt="p", sampling={"t": 0})
    assert a == make_key("response", sampling={"t": 0}, prompt="p", adapter=None, model="sha256:1")  # order-free
    assert a != make_key("response", model="sha256:2", adapter=None, prompt="p", sampling={"t": 0})
    assert a != make_key("response", model="sha256:1", adapter="x", prompt="p", sampling={"t": 0})
    cache = ResultCache(tmp_path / "c.sqlite")
    cache.put(a, "response", {"text": "hi"})
    cache.db.execute("INSERT INTO results VALUES ('bad', 'response', '{not json')")
    assert cache.get_many([a, "bad", "missing"]) == {a: {"text": "hi"}}
    cache.close()
    assert ResultCache(tmp_path / "c.sqlite").get_many([a]) == {a: {"text": "hi"}}  # it persisted


def test_a_file_that_is_not_sqlite_is_one_error(tmp_path):
    from hearth.errors import HearthError

    bad = tmp_path / "c.sqlite"
    bad.write_bytes(b"this is not a database" * 100)
    with pytest.raises(HearthError, match="cannot be used"):
        ResultCache(bad).get_many(["x"])


# -- generation and the command on a tiny model --------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from lora_kit import make_adapter
    from store_kit import write_tiny_gguf

    from hearth.tune.lora import LoraConfig

    d = tmp_path_factory.mktemp("redteam")
    model = write_tiny_gguf(d / "tiny.gguf", extra={"llama.context_length": 4096})
    guard = make_adapter(d / "guard", LoraConfig(r=4, alpha=8), seed=0, std=0.1, model=str(model))
    (guard / "recipe.json").write_text(json.dumps({"base": str(model)}))
    return model, guard


def test_batched_and_one_at_a_time_generation_answer_every_job(tiny):
    from hearth.engine.llm_engine import EngineConfig, LLMEngine
    from hearth.engine.sampling import SamplingParams
    from hearth.loader import load
    from hearth.redteam.generate import Job, generate

    lm = load(str(tiny[0]))
    params = SamplingParams(max_tokens=6, temperature=0.0, ignore_eos=True)
    jobs = [Job(f"k{i}", lm.tokenizer.encode(f"prompt number {i}", add_bos=True), params) for i in range(5)]
    got = {}
    for window in (1, 8):
        out: dict = {}
        generate(LLMEngine(lm, EngineConfig(max_num_seqs=8, kv_cache_bytes=8 << 20)), jobs,
                 lambda k, g: out.__setitem__(k, g), window=window)
        got[window] = out
    assert set(got[1]) == set(got[8]) == {j.key for j in jobs}
    assert all(g.tokens == 6 and g.finish_reason == "length" for g in got[8].values())
    assert [got[1][k].text for k in sorted(got[1])] == [got[8][k].text for k in sorted(got[8])]


def _cli(tiny, out: Path, cache: Path, *extra: str, suites: str = "harmbench,overrefusal") -> list[str]:
    return [sys.executable, "-m", "hearth.cli", "redteam", str(tiny[0]), "--guard", str(tiny[1]), "--suites", suites,
            "--limit", "6", "--max-tokens", "24", "--threads", "1", "--cache", str(cache), "-o", str(out), *extra]


def _env(tmp_path: Path) -> dict:
    return {**os.environ, "HEARTH_HOME": str(tmp_path / "home"), "PYTHONPATH": str(Path(__file__).parent.parent)}


def test_redteam_end_to_end_is_cached_and_deterministic(tiny, tmp_path):
    pytest.importorskip("matplotlib")
    cache = tmp_path / "cache.sqlite"
    r = subprocess.run(_cli(tiny, tmp_path / "a", cache, "--judge-limit", "6"), capture_output=True, text=True,
                       env=_env(tmp_path), timeout=240)
    assert r.returncode == 0, r.stderr[-3000:]
    a = json.loads((tmp_path / "a" / "report.json").read_text())
    assert {p.name for p in (tmp_path / "a").iterdir()} >= {"report.md", "report.json", "outcomes.jsonl",
                                                            "attack_success_by_category.png", "tradeoff.png"}
    assert a["suites"]["harmbench"]["probes"] == 6 and a["suites"]["overrefusal"]["harmful"] == 0
    assert a["run"]["responses_generated"] == 12 and a["run"]["responses_cached"] == 0
    for cfg in ("no_guard", "guard"):
        c = a["configurations"][cfg]
        assert c["attack_success_rate"]["n"] == 6 and c["over_refusal_rate"]["n"] == 6
        assert 0 <= c["attack_success_rate"]["rate"] <= 1
    assert a["judges"]["harm"]["all"]["n"] == 6 and "kappa" in a["judges"]["harm"]["all"]
    assert "accuracy" in a["judges"]["refusal"]
    md = (tmp_path / "a" / "report.md").read_text()
    assert md.splitlines()[2].startswith("> **Warning:**") and "attack success" in md
    # the same configuration again: nothing computed, the same figures
    r = subprocess.run(_cli(tiny, tmp_path / "b", cache, "--judge-limit", "6"), capture_output=True, text=True,
                       env=_env(tmp_path), timeout=240)
    assert r.returncode == 0, r.stderr[-3000:]
    b = json.loads((tmp_path / "b" / "report.json").read_text())
    assert b["run"]["responses_generated"] == 0 and b["run"]["responses_cached"] == 12
    assert b["run"]["verdicts_computed"] == 0
    assert b["configurations"] == a["configurations"] and b["judges"] == a["judges"]


def test_a_killed_run_goes_on_where_it_stopped(tiny, tmp_path):
    cache = tmp_path / "cache.sqlite"
    cmd = _cli(tiny, tmp_path / "a", cache, "--no-judge-check", "--max-tokens", "200", "--batch", "1")
    proc = subprocess.Popen(cmd, env=_env(tmp_path), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    done = 0
    t = time.monotonic()
    while time.monotonic() - t < 200 and proc.poll() is None:  # kill it once some responses are stored
        time.sleep(0.05)
        if cache.exists():
            try:
                with sqlite3.connect(cache, timeout=1) as db:
                    done = db.execute("SELECT count(*) FROM results WHERE kind='response'").fetchone()[0]
            except sqlite3.OperationalError:
                continue
            if done >= 1:
                proc.send_signal(signal.SIGKILL)
                break
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()[-2000:]
    with sqlite3.connect(cache) as db:
        kept = db.execute("SELECT count(*) FROM results WHERE kind='response'").fetchone()[0]
    assert 1 <= kept < 12
    r = subprocess.run(cmd, capture_output=True, text=True, env=_env(tmp_path), timeout=240)
    assert r.returncode == 0, r.stderr[-3000:]
    rep = json.loads((tmp_path / "a" / "report.json").read_text())
    assert rep["run"]["responses_cached"] == kept and rep["run"]["responses_generated"] == 12 - kept


def test_bad_input_is_one_error_line(tiny, tmp_path):
    for suites, extra, message in (("nosuch", [], "unknown suite 'nosuch'"),
                                   (",", [], "--suites is empty"),
                                   ("harmbench", ["--adapter", str(tmp_path)], "is not a LoRA adapter folder"),
                                   ("harmbench", ["--policy", str(tmp_path / "none.toml")], "policy file not found")):
        cmd = _cli(tiny, tmp_path / "o", tmp_path / "c.sqlite", *extra, suites=suites)
        r = subprocess.run(cmd, capture_output=True, text=True, env=_env(tmp_path), timeout=120)
        lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
        assert r.returncode != 0 and len(lines) == 1 and lines[0].startswith("error:") and message in lines[0], \
            (suites, extra, r.stderr)
