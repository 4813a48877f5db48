"""Lineage records read back from files anyone can hand us (hearth/store/lineage.py): a hostile or broken record
costs the lineage, never the model; a good one is kept by the store as a layer and summarised by `hearth show`.
The whole chain through tune, merge, quantize, bundle and release: tests/test_tune_cli.py."""

from __future__ import annotations

import json

import pytest

from hearth.store import lineage as L
from store_kit import manifest_json, run_main, write_tiny_gguf

TUNE = {"step": "tune", "base": {"ref": "smollm2", "digest": "sha256:" + "a" * 64, "license": "apache-2.0"},
        "data": [{"path": "/data/chats.jsonl", "sha256": "b" * 64, "rows": 200}], "settings": {"method": "lora"},
        "tokens": 5000, "seconds": 12.5, "energy_kwh": None, "builder": "hearth 0.1.0", "finished": "2026-12-01T00:00:00+00:00"}
MERGE = {"step": "merge", "base": {"ref": "smollm2", "digest": "sha256:" + "a" * 64}, "adapter": TUNE}
QUANT = {"step": "quantize", "base": {"ref": "mine", "digest": "sha256:" + "c" * 64}, "settings": {"qtype": "Q8_0"},
         "parent": MERGE}


def test_chain_describe_relation_and_root():
    assert [r["step"] for r in L.chain(QUANT)] == ["quantize", "merge", "tune"]
    assert L.describe(QUANT) == "quantize Q8_0 ← merge ← tune lora on chats.jsonl (200 rows) ← smollm2"
    assert L.relation(QUANT) == "merge" and L.relation({"step": "quantize", "base": {"ref": "x"}}) == "quantized"
    assert L.relation({**TUNE, "step": "distill"}) == "finetune" and L.relation(None) is None
    assert L.root(QUANT)["ref"] == "smollm2"
    # a merge whose base carried a lineage lists that lineage once, though the tune run names it as its parent too
    base_lineage = {"step": "quantize", "base": {"ref": "root"}, "settings": {"qtype": "Q4_1"}}
    merged = {**MERGE, "adapter": {**TUNE, "parent": base_lineage}, "parent": base_lineage}
    assert [r["step"] for r in L.chain(merged)] == ["merge", "tune", "quantize"]


def test_a_cycle_or_an_endless_chain_is_cut():
    deep: dict = {"step": "quantize", "base": {"ref": "x0"}}
    for i in range(1, 40):
        deep = {"step": "quantize", "base": {"ref": f"x{i}"}, "settings": {"qtype": str(i)}, "parent": deep}
    assert len(L.chain(deep)) == L.CHAIN_STEPS


@pytest.mark.parametrize("text", ["[1, 2]", "not json", "{" * 10_000, "\"a\"", json.dumps({"x": "y" * (300 << 10)}),
                                  b"\xff\xfe"])
def test_parse_refuses_what_is_not_a_bounded_object(text):
    assert L.parse(text) is None


def test_training_keeps_only_well_formed_fields():
    hostile = {"step": 7, "base": "smollm2", "data": [{"path": 1, "sha256": "x", "rows": 2},
                                                      {"path": "ok.jsonl", "sha256": "d" * 64, "rows": True},
                                                      {"path": "good.jsonl", "sha256": "e" * 64, "rows": 3}, "junk"],
               "settings": ["not", "a", "dict"], "tokens": "many", "seconds": 2}
    t = L.training({"step": "merge", "adapter": hostile})
    assert t["data"] == [{"path": "good.jsonl", "sha256": "e" * 64, "rows": 3}]
    assert t["base"] == {"ref": None, "digest": None, "license": None} and t["settings"] == {}
    assert t["tokens"] is None and t["seconds"] == 2 and t["step"] == "tune"
    assert L.training({"step": "quantize"}) is None


@pytest.mark.parametrize("value", ["{" * 5000, "[]", "x" * (300 << 10)])
def test_a_gguf_with_a_broken_record_is_stored_and_shown_without_one(tmp_path, monkeypatch, capsys, value):
    monkeypatch.setenv("HEARTH_HOME", str(tmp_path / "home"))
    gguf = write_tiny_gguf(tmp_path / "m.gguf", extra={L.KEY: value})
    rc, _, err = run_main(capsys, "pull", str(gguf), "--name", "m")
    assert rc == 0, err
    assert not [x for x in manifest_json(tmp_path / "home", "m")["layers"] if x["kind"] == "lineage"]
    rc, out, _ = run_main(capsys, "show", "m", "--json")
    assert rc == 0 and json.loads(out)["lineage"] is None
    params = json.loads(next(p for p in (tmp_path / "home" / "blobs").rglob("*") if p.is_file()
                             and p.stat().st_size < 100_000 and b"general.name" in p.read_bytes()).read_bytes())
    assert L.KEY not in params  # not copied into the params layer either


def test_a_gguf_with_a_record_gets_a_lineage_layer(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HEARTH_HOME", str(tmp_path / "home"))
    gguf = write_tiny_gguf(tmp_path / "m.gguf", extra=L.gguf_metadata(QUANT))
    rc, _, err = run_main(capsys, "pull", str(gguf), "--name", "m")
    assert rc == 0, err
    assert [x["kind"] for x in manifest_json(tmp_path / "home", "m")["layers"]].count("lineage") == 1
    rc, out, _ = run_main(capsys, "show", "m", "--json")
    assert json.loads(out)["lineage"] == QUANT and json.loads(out)["made"].startswith("quantize Q8_0 ← merge")
