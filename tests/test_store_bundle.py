"""Bundles for air-gapped machines: export → import round trip, and every kind of damage refused with
a message naming the bad layer while the receiving store stays exactly as it was."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pytest

from store_kit import blob_files, flip_byte, manifest_json, one_line_error, run_main, write_tiny_gguf, write_tiny_hf


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """One GGUF and one HF model exported from a source store."""
    import os

    t = tmp_path_factory.mktemp("bundles")
    src_home = t / "source-home"
    old = os.environ.get("HEARTH_HOME")
    os.environ["HEARTH_HOME"] = str(src_home)
    try:
        from hearth.store import Store

        store = Store()
        store.pull(str(write_tiny_gguf(t / "tiny.gguf", license="apache-2.0")), name="tiny")
        store.pull(str(write_tiny_hf(t / "tiny-hf", readme="---\nlicense: mit\n---\n# Tiny\n")), name="tiny-hf")
        store.export("tiny", t / "tiny.hearth")
        store.export("tiny-hf", t / "tiny-hf.hearth")
    finally:
        os.environ.pop("HEARTH_HOME") if old is None else os.environ.__setitem__("HEARTH_HOME", old)
    return {"dir": t, "gguf": t / "tiny.hearth", "hf": t / "tiny-hf.hearth",
            "manifests": {n: manifest_json(src_home, n) for n in ("tiny", "tiny-hf")}}


def members(bundle: Path) -> list[tuple[tarfile.TarInfo, bytes]]:
    with tarfile.open(bundle) as tf:
        return [(m, tf.extractfile(m).read()) for m in tf.getmembers()]


def rewrite(bundle: Path, out: Path, edit) -> Path:
    """Copy a bundle, letting `edit(name, data) -> data | None` change or drop members."""
    with tarfile.open(out, "w", format=tarfile.PAX_FORMAT) as tf:
        for m, data in members(bundle):
            data = edit(m.name, data)
            if data is None:
                continue
            info = tarfile.TarInfo(m.name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return out


def assert_untouched(home: Path) -> None:
    """Nothing half-imported: no manifest, no blob, no staging debris."""
    assert blob_files(home) == []
    assert not (home / "manifests").exists() or list((home / "manifests").iterdir()) == []
    assert not (home / "tmp").exists() or list((home / "tmp").iterdir()) == []


# ------------------------------------------------------------------------------------ round trip


@pytest.mark.parametrize("which,name", [("gguf", "tiny"), ("hf", "tiny-hf")])
def test_export_import_round_trip(exported, home, capsys, which, name):
    bundle = exported[which]
    names = [m.name for m, _ in members(bundle)]
    assert names[0] == "hearth-bundle.json"
    doc = json.loads(members(bundle)[0][1])
    assert doc["format"] == "hearth-bundle" and doc["version"] == 1 and doc["manifest"]["name"] == name
    assert sorted(names[1:]) == sorted({"blobs/" + x["digest"].replace(":", "-") for x in doc["manifest"]["layers"]})

    rc, out, err = run_main(capsys, "import", str(bundle))
    assert rc == 0, err
    assert f"imported {name}" in out
    assert manifest_json(home, name)["layers"] == exported["manifests"][name]["layers"]
    rc, out, _ = run_main(capsys, "verify")
    assert rc == 0 and "all intact" in out
    rc, out, err = run_main(capsys, "generate", name, "Hello", "--temperature", "0", "--max-tokens", "2")
    assert rc == 0, err
    # importing again is harmless; under another name it shares every blob
    n = len(blob_files(home))
    rc, out, err = run_main(capsys, "import", str(bundle), "--name", "again")
    assert rc == 0 and "already stored" in out
    assert len(blob_files(home)) == n


def test_pull_accepts_a_bundle(exported, home, capsys):
    rc, out, err = run_main(capsys, "pull", str(exported["gguf"]), "--name", "via-pull")
    assert rc == 0, err
    assert "pulled via-pull" in out and manifest_json(home, "via-pull")["format"] == "gguf"
    rc, _, err = run_main(capsys, "pull", str(exported["gguf"]), "--license", str(exported["gguf"]))
    one_line_error(rc, err, "--license cannot change the license of a bundle")


def test_export_refuses_a_corrupt_blob(exported, tmp_path, capsys, monkeypatch):
    home = tmp_path / "h"
    monkeypatch.setenv("HEARTH_HOME", str(home))
    assert run_main(capsys, "import", str(exported["gguf"]))[0] == 0
    m = manifest_json(home, "tiny")
    flip_byte(home / "blobs" / m["layers"][0]["digest"].replace(":", "-"), 3000)
    out = tmp_path / "out.hearth"
    rc, _, err = run_main(capsys, "export", "tiny", "-o", str(out))
    one_line_error(rc, err, "corrupt on disk", "weights (tiny.gguf)")
    assert not out.exists() and list(tmp_path.glob(".out.hearth*")) == []


def test_export_bad_destination(exported, home, capsys, tmp_path):
    assert run_main(capsys, "import", str(exported["gguf"]))[0] == 0
    rc, _, err = run_main(capsys, "export", "tiny", "-o", str(tmp_path / "no-such-dir" / "x.hearth"))
    one_line_error(rc, err, "does not exist")
    rc, _, err = run_main(capsys, "export", "tiny", "-o", str(tmp_path))
    one_line_error(rc, err, "is a directory")


# ------------------------------------------------------------------------------------ damage


def _weights_member(bundle: Path) -> str:
    doc = json.loads(members(bundle)[0][1])
    return "blobs/" + doc["manifest"]["layers"][0]["digest"].replace(":", "-")


def test_flipped_byte_in_a_blob(exported, home, tmp_path, capsys):
    target = _weights_member(exported["gguf"])

    def flip(name, data):
        if name == target:
            data = bytearray(data)
            data[len(data) // 2] ^= 0x10
            return bytes(data)
        return data

    bad = rewrite(exported["gguf"], tmp_path / "flipped.hearth", flip)
    rc, _, err = run_main(capsys, "import", str(bad))
    one_line_error(rc, err, "is damaged", "layer weights (tiny.gguf) does not match its digest", "nothing was imported")
    assert_untouched(home)


@pytest.mark.parametrize("where", ["inside the weights", "inside a later blob", "at a member boundary", "inside the manifest"])
def test_truncated_bundle(exported, home, tmp_path, capsys, where):
    data = exported["hf"].read_bytes()
    offsets = {}
    with tarfile.open(exported["hf"]) as tf:
        ms = tf.getmembers()
        for m in ms:
            offsets[m.name] = (m.offset, m.offset_data, m.size)
    doc = json.loads(members(exported["hf"])[0][1])
    first_blob = "blobs/" + doc["manifest"]["layers"][0]["digest"].replace(":", "-")
    last = ms[-1].name
    cut = {
        "inside the weights": offsets[first_blob][1] + offsets[first_blob][2] // 2,
        "inside a later blob": offsets[last][1] + offsets[last][2] // 2 if offsets[last][2] > 1 else offsets[last][1],
        "at a member boundary": offsets[last][0],
        "inside the manifest": offsets["hearth-bundle.json"][1] + 10,
    }[where]
    bad = tmp_path / "truncated.hearth"
    bad.write_bytes(data[:cut])
    rc, _, err = run_main(capsys, "import", str(bad))
    if where == "inside the manifest":
        one_line_error(rc, err, "hearth-bundle.json")
    else:
        line = one_line_error(rc, err, "truncated", "nothing was imported")
        assert "layer " in line
        if where == "inside the weights":
            assert "weights (model.safetensors)" in line
    assert_untouched(home)


def test_swapped_manifest_digest(exported, home, tmp_path, capsys):
    def swap(name, data):
        if name == "hearth-bundle.json":
            doc = json.loads(data)
            doc["manifest"]["layers"][0]["digest"] = "sha256:" + "0" * 64
            return json.dumps(doc).encode()
        return data

    bad = rewrite(exported["gguf"], tmp_path / "swapped.hearth", swap)
    rc, _, err = run_main(capsys, "import", str(bad))
    one_line_error(rc, err, "was altered", "layer weights (tiny.gguf) lists sha256:000000000000", "nothing was imported")
    assert_untouched(home)


def test_manifest_digests_exchanged_between_layers(exported, home, tmp_path, capsys):
    """Two real digests exchanged: every blob is present, but sizes no longer match their layers."""
    def exchange(name, data):
        if name == "hearth-bundle.json":
            doc = json.loads(data)
            a, b = doc["manifest"]["layers"][0], doc["manifest"]["layers"][1]
            a["digest"], b["digest"] = b["digest"], a["digest"]
            return json.dumps(doc).encode()
        return data

    bad = rewrite(exported["gguf"], tmp_path / "exchanged.hearth", exchange)
    rc, _, err = run_main(capsys, "import", str(bad))
    one_line_error(rc, err, "was altered", "bytes but its manifest says", "nothing was imported")
    assert_untouched(home)


def test_missing_extra_and_foreign_members(exported, home, tmp_path, capsys):
    target = _weights_member(exported["gguf"])
    dropped = rewrite(exported["gguf"], tmp_path / "dropped.hearth", lambda n, d: None if n == target else d)
    rc, _, err = run_main(capsys, "import", str(dropped))
    one_line_error(rc, err, "lacks layer weights (tiny.gguf)")

    def add_foreign(name, data):
        return data
    foreign = rewrite(exported["gguf"], tmp_path / "foreign.hearth", add_foreign)
    with tarfile.open(foreign, "a") as tf:
        info = tarfile.TarInfo("../../etc/evil")
        info.size = 3
        tf.addfile(info, io.BytesIO(b"bad"))
    rc, _, err = run_main(capsys, "import", str(foreign))
    one_line_error(rc, err, "unexpected entry '../../etc/evil'")

    evil = rewrite(exported["gguf"], tmp_path / "evil-name.hearth", lambda n, d: (
        json.dumps({**json.loads(d), "manifest": {**json.loads(d)["manifest"],
                    "layers": [{**json.loads(d)["manifest"]["layers"][0], "filename": "../../x"}] + json.loads(d)["manifest"]["layers"][1:]}}).encode()
        if n == "hearth-bundle.json" else d))
    rc, _, err = run_main(capsys, "import", str(evil))
    one_line_error(rc, err, "manifest is invalid", "unsafe file name")
    assert_untouched(home)


@pytest.mark.parametrize("content,needle", [
    (b"", "not a hearth bundle"),
    (b"GGUF-but-not-really", "not a hearth bundle"),
    (None, "does not start with hearth-bundle.json"),
])
def test_not_a_bundle(home, tmp_path, capsys, content, needle):
    path = tmp_path / "x.hearth"
    if content is None:
        with tarfile.open(path, "w") as tf:
            info = tarfile.TarInfo("README")
            info.size = 2
            tf.addfile(info, io.BytesIO(b"hi"))
    else:
        path.write_bytes(content)
    rc, _, err = run_main(capsys, "import", str(path))
    one_line_error(rc, err, needle)
    rc, _, err = run_main(capsys, "import", str(tmp_path / "absent.hearth"))
    one_line_error(rc, err, "bundle not found")
    assert_untouched(home)


def test_bundle_from_a_newer_hearth(exported, home, tmp_path, capsys):
    def bump(name, data):
        if name == "hearth-bundle.json":
            return json.dumps({**json.loads(data), "version": 99}).encode()
        return data

    rc, _, err = run_main(capsys, "import", str(rewrite(exported["gguf"], tmp_path / "v99.hearth", bump)))
    one_line_error(rc, err, "version 99", "update it")
    assert_untouched(home)
