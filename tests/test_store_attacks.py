"""The store against hostile files: bundles crafted with tarfile, manifests edited or replaced on disk.

Each test reproduces one attack from issue 14 (items 4 and 5). The bundles here are written by hand (an HF
manifest over a few small blobs, no torch model needed), so that every field an attacker controls can be set.
A refused import must leave the store exactly as it was: same manifests, same blobs, no temp debris.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
from pathlib import Path

import pytest

from store_kit import one_line_error, run_main

ESC_BYTES = ("\x1b", "\x9b", "\x07", "\u202e")


def digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


WEIGHTS, CONFIG, LICENSE = b"W" * 3000, b'{"model_type": "llama"}\n', b"MIT License\n"


def layer(kind: str, data: bytes, filename: str | None, media_type: str = "application/octet-stream", **edit) -> dict:
    return {"kind": kind, "digest": digest(data), "size": len(data), "media_type": media_type, "filename": filename, **edit}


def manifest(name: str = "victim", layers: list[dict] | None = None, **edit) -> dict:
    summary = {"architecture": "llama", "model_name": "Tiny", "parameters": 1000, "quantization": "F32",
               "context_length": 512, "n_layers": 2, "n_heads": 4, "n_kv_heads": 2, "dim": 64, "hidden_dim": 128,
               "vocab_size": 300, "rope_theta": 10000.0, "tied_embeddings": True}
    return {"name": name, "format": "hf",
            "layers": layers if layers is not None else [layer("weights", WEIGHTS, "model.safetensors"),
                                                         layer("params", CONFIG, "config.json")],
            "summary": summary, "license": None, "source": "a test", "created": "2026-12-07T00:00:00+00:00",
            "schema": 1, **edit}


def bundle(path: Path, m: dict, blobs: list[bytes] | None = None, extra: list[tuple[tarfile.TarInfo, bytes]] = ()) -> Path:
    """A bundle laid out as `hearth export` writes one: the document first, then each blob once."""
    blobs = blobs if blobs is not None else [WEIGHTS, CONFIG]
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tf:
        doc = json.dumps({"format": "hearth-bundle", "version": 1, "manifest": m}).encode()
        info = tarfile.TarInfo("hearth-bundle.json")
        info.size = len(doc)
        tf.addfile(info, io.BytesIO(doc))
        for data in dict.fromkeys(blobs):
            info = tarfile.TarInfo("blobs/" + digest(data).replace(":", "-"))
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
        for info, data in extra:
            tf.addfile(info, io.BytesIO(data))
    return path


def snapshot(home: Path) -> dict[str, bytes | str]:
    """Every file and link in the store but the lock and the verification cache: path -> bytes or link target.
    (Empty directories, e.g. tmp/ made by the first import, do not count.)"""
    out: dict[str, bytes | str] = {}
    if not home.exists():
        return out
    for p in sorted(home.rglob("*")):
        rel = p.relative_to(home).as_posix()
        if rel == "lock" or rel.startswith("verified"):
            continue
        if p.is_symlink():
            out[rel] = "link:" + os.readlink(p)
        elif p.is_file():
            out[rel] = p.read_bytes()
    return out


def no_debris(home: Path) -> None:
    for d in ("tmp", "models", "manifests"):
        left = [p.name for p in (home / d).iterdir() if p.name.startswith(".") or d == "tmp"] if (home / d).is_dir() else []
        assert left == [], f"{d}: {left}"


def refused(capsys, home: Path, bundle_path: Path, *needles: str, args: tuple[str, ...] = ()) -> str:
    """Import `bundle_path`: one error line naming `needles`, and the store as it was."""
    before = snapshot(home)
    rc, _, err = run_main(capsys, "import", str(bundle_path), *args)
    assert rc == 1
    line = one_line_error(rc, err, *needles)
    assert snapshot(home) == before
    no_debris(home)
    return line


@pytest.fixture
def stored(home, tmp_path, capsys) -> Path:
    """A store already holding the model `victim` (and nothing else)."""
    rc, out, err = run_main(capsys, "import", str(bundle(tmp_path / "good.hearth", manifest())))
    assert rc == 0, err
    assert "imported victim" in out
    return home


def test_a_good_handmade_bundle_imports(stored, capsys):
    assert json.loads((stored / "manifests" / "victim.json").read_text())["name"] == "victim"
    assert os.readlink(stored / "models" / "victim" / "config.json").endswith(digest(CONFIG).replace(":", "-"))
    rc, out, _ = run_main(capsys, "verify")
    assert rc == 0 and "all intact" in out


# ------------------------------------------------------------------------------ 4: disk exhaustion


def _sparse(name: str, stored: bytes, realsize: int) -> tuple[tarfile.TarInfo, bytes]:
    """A GNU sparse member (PAX format 0.1): `stored` bytes at offset 0 that extract to `realsize` bytes."""
    info = tarfile.TarInfo(name)
    info.size = len(stored)
    info.pax_headers = {"GNU.sparse.map": f"0,{len(stored)}", "GNU.sparse.size": str(realsize)}
    return info, stored


def test_sparse_member_that_expands_to_a_gigabyte(home, tmp_path, capsys):
    """Before: 10 KB of bundle wrote 1 GiB into tmp/ before the digest was checked. Now: refused at once."""
    huge = 1 << 30
    fake = "sha256:" + "ab" * 32
    m = manifest(layers=[{"kind": "weights", "digest": fake, "size": huge, "media_type": "x", "filename": "model.safetensors"}])
    path = bundle(tmp_path / "sparse.hearth", m, blobs=[], extra=[_sparse("blobs/" + fake.replace(":", "-"), b"x" * 4096, huge)])
    assert path.stat().st_size < 20_000
    with tarfile.open(path) as tf:  # what the attack relies on: tarfile expands it
        member = tf.getmembers()[1]
        assert member.issparse() and member.size == huge
    refused(capsys, home, path, "lacks layer weights (model.safetensors)", f"lists {huge} bytes of layers, the bundle holds 10240",
            "nothing was imported")


def test_sparse_member_of_a_plausible_size_is_refused_too(home, tmp_path, capsys):
    data = b"\0" * 8192
    m = manifest(layers=[layer("weights", data, "model.safetensors")])
    path = bundle(tmp_path / "sparse-small.hearth", m, blobs=[],
                  extra=[_sparse("blobs/" + digest(data).replace(":", "-"), b"\0" * 512, len(data))])
    path.write_bytes(path.read_bytes() + b"\0" * 20_000)  # room enough that no size check refuses it first
    refused(capsys, home, path, "sparse entry", "nothing was imported")


def test_member_larger_than_the_bundle(home, tmp_path, capsys):
    """A member header claiming more bytes than the file has (the manifest lists small layers)."""
    path = bundle(tmp_path / "big-member.hearth", manifest())
    raw = bytearray(path.read_bytes())
    with tarfile.open(path) as tf:
        info = tf.getmembers()[1]
    hdr = tarfile.TarInfo(info.name)
    hdr.size = 1 << 30
    block = hdr.tobuf(tarfile.USTAR_FORMAT)
    raw[info.offset:info.offset + 512] = block
    path.write_bytes(bytes(raw))
    refused(capsys, home, path, "claims 1073741824 bytes, more than the bundle holds")


def test_no_room_on_the_disk(home, tmp_path, capsys, monkeypatch):
    import hearth.store.bundle as bundle_mod

    monkeypatch.setattr(bundle_mod, "free_bytes", lambda path: 100)
    refused(capsys, home, bundle(tmp_path / "b.hearth", manifest()), "not enough space to import victim", "100 B free")


# --------------------------------------------------------------- 5: names and sizes checked first


@pytest.mark.parametrize("filename,needle", [
    ("a" * 300 + ".safetensors", "too long"),
    ("/".join(["d" * 200] * 6) + "/model.safetensors", "too long"),
    ("model\x00.safetensors", "control characters"),
    ("dir\n/model.safetensors", "control characters"),
])
def test_file_names_the_filesystem_cannot_hold(home, tmp_path, capsys, filename, needle):
    """Before: the manifest was committed, then the link failed: an unloadable model and a temp dir in models/."""
    m = manifest(layers=[layer("weights", WEIGHTS, filename), layer("params", CONFIG, "config.json")])
    refused(capsys, home, bundle(tmp_path / "long.hearth", m), needle, "nothing was imported")


def test_a_file_that_is_also_a_directory(home, tmp_path, capsys):
    m = manifest(layers=[layer("weights", WEIGHTS, "model"), layer("params", CONFIG, "model/config.json")])
    refused(capsys, home, bundle(tmp_path / "clash.hearth", m), "'model/config.json' lies inside 'model'")


def test_links_that_fail_leave_no_model(home, tmp_path, capsys, monkeypatch):
    """Whatever the filesystem refuses while the links are built, no manifest is written and no temp dir stays."""
    import errno

    def fail(*a, **k):
        raise OSError(errno.ENAMETOOLONG, "File name too long")

    monkeypatch.setattr(os, "symlink", fail)
    refused(capsys, home, bundle(tmp_path / "b.hearth", manifest()), "file name too long")


def test_one_digest_with_two_sizes(home, tmp_path, capsys):
    """Before: imported, then `hearth verify` failed (the blob cannot have both sizes)."""
    m = manifest(layers=[layer("card", WEIGHTS, "README.md", size=len(WEIGHTS) - 1),  # the first listing is wrong
                         layer("weights", WEIGHTS, "model.safetensors"), layer("params", CONFIG, "config.json")])
    refused(capsys, home, bundle(tmp_path / "two-sizes.hearth", m), "listed with two sizes")


def test_a_bundle_never_replaces_a_model_without_force(stored, tmp_path, capsys):
    """Before: the import replaced `victim` silently and gc deleted its weights."""
    other = b"X" * 2000
    evil = bundle(tmp_path / "evil.hearth", manifest(layers=[layer("weights", other, "model.safetensors")]), blobs=[other])
    refused(capsys, stored, evil, "already in the store with other weights", "--force")
    rc, _, err = run_main(capsys, "pull", str(evil))  # the same bundle through `pull`
    one_line_error(rc, err, "already in the store with other weights")
    assert (stored / "blobs" / digest(WEIGHTS).replace(":", "-")).is_file()

    rc, out, err = run_main(capsys, "import", str(tmp_path / "good.hearth"))  # the same model again: a repair
    assert rc == 0, err
    rc, out, err = run_main(capsys, "import", str(evil), "--name", "beside")
    assert rc == 0 and "imported beside" in out

    rc, out, err = run_main(capsys, "import", str(evil), "--force")
    assert rc == 0 and "replaced the old one" in out, err
    assert not (stored / "blobs" / digest(WEIGHTS).replace(":", "-")).exists()  # collected, as asked


# ------------------------------------------------------------------------- terminal escapes


HOSTILE = "\x1b]0;pwned\x07\x1b[2J\x9b31m\u202e"


def test_strings_from_files_never_reach_the_terminal_raw(home, tmp_path, capsys):
    lic = b"Licensed \x1b[2Jto\tyou\nline two\x1b]0;title\x07\n"
    m = manifest(layers=[layer("weights", WEIGHTS, "model.safetensors"), layer("params", CONFIG, "config.json"),
                         layer("license", lic, "LICENSE")],
                 source="from " + HOSTILE, license={"id": None, "name": "[bold]MIT" + HOSTILE, "source": "LICENSE" + HOSTILE,
                                                     "link": "http://x" + HOSTILE})
    m["summary"]["model_name"] = "Tiny" + HOSTILE
    m["summary"]["architecture"] = "llama" + HOSTILE
    rc, _, err = run_main(capsys, "import", str(bundle(tmp_path / "esc.hearth", m, blobs=[WEIGHTS, CONFIG, lic])))
    assert rc == 0, err
    for args in (("list",), ("list", "--json"), ("show", "victim"), ("show", "victim", "--json"),
                 ("show", "victim", "--license"), ("verify",)):
        rc, out, err = run_main(capsys, *args)
        assert rc == 0, (args, err)
        for c in ESC_BYTES:
            assert c not in out and c not in err, (args, c, out)
    rc, out, _ = run_main(capsys, "show", "victim")
    assert "\\x1b]0;pwned\\x07" in out and "[bold]MIT" in out  # shown as written, not acted on (nor parsed as markup)
    rc, out, _ = run_main(capsys, "show", "victim", "--license")
    assert "Licensed \\x1b[2Jto\tyou\nline two" in out  # multi-line text keeps its lines and tabs
    rc, out, _ = run_main(capsys, "show", "victim", "--json")
    assert json.loads(out)["model"] == "Tiny" + HOSTILE  # the JSON still carries the exact value


def test_error_messages_quoting_file_values_are_escaped(home, tmp_path, capsys):
    """Every `error:` line goes through the same filter, whether or not its message quoted the value with repr."""
    m = manifest(layers=[layer("weights" + HOSTILE, WEIGHTS, "model.safetensors")])
    line = refused(capsys, home, bundle(tmp_path / "esc-err.hearth", m), "manifest is invalid", "layer kind")
    assert not any(c in line for c in ESC_BYTES)
    rc, _, err = run_main(capsys, "import", str(tmp_path / f"evil{HOSTILE}.hearth"))  # a file name from a shell glob
    line = one_line_error(rc, err, "bundle not found", "evil\\x1b]0;pwned\\x07")
    assert not any(c in err for c in ESC_BYTES)
    rc, _, err = run_main(capsys, "show", "x" + HOSTILE)
    one_line_error(rc, err, "invalid model name")
    assert not any(c in err for c in ESC_BYTES)


# --------------------------------------------------------------------- damaged manifests on disk


def _unused_blob(home: Path) -> Path:
    data = b"left by nobody"
    p = home / "blobs" / digest(data).replace(":", "-")
    p.write_bytes(data)
    return p


@pytest.mark.parametrize("damage", ["deep", "directory", "fifo", "device", "truncated"])
def test_a_bad_manifest_spoils_only_its_own_model(stored, tmp_path, capsys, damage):
    """Before: a manifest nested 100k deep broke every store command (RecursionError); a directory in its place
    stopped garbage collection for good (and `rm` could not remove it); a FIFO hung every command."""
    bad = stored / "manifests" / "bad.json"
    keep = b"a blob only the truncated manifest names"
    if damage == "deep":
        bad.write_text("[" * 100_000 + "]" * 100_000)
    elif damage == "directory":
        bad.mkdir()
        (bad / "x").write_text("x")
    elif damage == "fifo":
        os.mkfifo(bad)
    elif damage == "device":
        bad.symlink_to("/dev/zero")
    else:
        (stored / "blobs" / digest(keep).replace(":", "-")).write_bytes(keep)
        text = json.dumps(manifest("bad", layers=[layer("weights", keep, "model.safetensors")]))
        bad.write_text(text[: len(text) // 2 + 200])
    rc, out, err = run_main(capsys, "list")
    assert rc == 0 and "victim" in out and "manifest of bad is damaged" in err
    rc, out, err = run_main(capsys, "show", "victim")
    assert rc == 0, err
    rc, _, err = run_main(capsys, "show", "bad")
    one_line_error(rc, err, "manifest of 'bad' is damaged")
    rc, _, err = run_main(capsys, "verify")
    one_line_error(rc, err, "manifest of bad is damaged")

    # garbage collection goes on (here: run by a copy's removal) and keeps what the damaged file names
    unused = _unused_blob(stored)
    assert run_main(capsys, "cp", "victim", "copy")[0] == 0
    rc, out, err = run_main(capsys, "rm", "copy")
    assert rc == 0, err
    assert not unused.exists()
    assert (stored / "blobs" / digest(WEIGHTS).replace(":", "-")).exists()
    if damage == "truncated":
        assert (stored / "blobs" / digest(keep).replace(":", "-")).exists()

    rc, out, err = run_main(capsys, "rm", "bad")
    assert rc == 0 and "removed bad" in out, err
    assert not os.path.lexists(bad)
    rc, out, err = run_main(capsys, "list")
    assert rc == 0 and "victim" in out and err == ""
    if damage == "truncated":
        assert not (stored / "blobs" / digest(keep).replace(":", "-")).exists()


def test_a_deep_bundle_manifest_is_refused(home, tmp_path, capsys):
    m = manifest()
    m["source"] = json.loads("[" * 50 + "]" * 50)
    refused(capsys, home, bundle(tmp_path / "deep.hearth", m), "nested 52 levels deep")
    path = tmp_path / "deeper.hearth"
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tf:
        doc = ("[" * 100_000 + "]" * 100_000).encode()
        info = tarfile.TarInfo("hearth-bundle.json")
        info.size = len(doc)
        tf.addfile(info, io.BytesIO(doc))
    refused(capsys, home, path, "hearth-bundle.json is damaged", "nested 100000 levels deep")


# -------------------------------------------------------------------------------- leftovers


def test_leftovers_of_killed_writers_are_swept(stored, tmp_path, capsys):
    dead = stored / "tmp" / "12345-deadbeef"
    dead.mkdir(parents=True)
    (dead / "blob-1.partial").write_bytes(b"x" * 100)
    (stored / "models" / ".victim.999.abcd.tmp").mkdir()
    (stored / "models" / ".victim.999.abcd.tmp" / "config.json").symlink_to("nowhere")
    (stored / "models" / ".victim.999.abcd.old").mkdir()
    (stored / "manifests" / ".victim.json.999.abcd.tmp").write_text("{")
    rc, _, err = run_main(capsys, "cp", "victim", "v2")
    assert rc == 0, err
    assert run_main(capsys, "rm", "v2")[0] == 0  # rm runs garbage collection, which sweeps
    no_debris(stored)
    rc, out, _ = run_main(capsys, "verify")
    assert rc == 0 and "all intact" in out


def test_pull_of_a_directory_with_an_unstorable_file_name(home, tmp_path, capsys):
    """Before: a licence file named with an escape sequence made `hearth pull` end in a ValueError traceback."""
    from store_kit import write_tiny_hf

    d = write_tiny_hf(tmp_path / "m")
    (d / "LICENSE.\x1b]0;pwned\x07").write_text("MIT")
    rc, _, err = run_main(capsys, "pull", str(d), "--name", "m")
    one_line_error(rc, err, "cannot add m", "control characters")
    assert not any(c in err for c in ESC_BYTES)
    assert not (home / "manifests").exists() or list((home / "manifests").iterdir()) == []


def test_the_chat_banner_escapes_the_model_files_name(tmp_path, capsys, monkeypatch):
    """`hearth run FILE` on a terminal names the model by the file's stem (a store name when it has one), and says
    its GGUF general.name in --verbose descriptions: both are strings an attacker chooses."""
    import io
    import sys

    from store_kit import write_tiny_gguf

    gguf = write_tiny_gguf(tmp_path / ("Tiny" + HOSTILE + ".gguf"), name="Tiny" + HOSTILE)

    class Tty(io.StringIO):
        def isatty(self):
            return True

    monkeypatch.setattr(sys, "stdin", Tty("/bye\n"))
    rc, out, err = run_main(capsys, "run", str(gguf))
    assert rc == 0, err
    assert "chatting with Tiny\\x1b]0;pwned\\x07" in err
    assert not any(c in out + err for c in ESC_BYTES)


def test_the_real_command_exits_1_with_one_error_line(home, tmp_path):
    """End to end, as a user runs it: `hearth import` of the 10 KB sparse bundle in a child process."""
    from store_kit import run_cli

    fake = "sha256:" + "cd" * 32
    m = manifest(layers=[{"kind": "weights", "digest": fake, "size": 1 << 30, "media_type": "x", "filename": "model.safetensors"}])
    path = bundle(tmp_path / "sparse.hearth", m, blobs=[], extra=[_sparse("blobs/" + fake.replace(":", "-"), b"x" * 4096, 1 << 30)])
    r = run_cli(home, "import", str(path))
    assert r.returncode == 1
    one_line_error(r.returncode, r.stderr, "truncated or lacks layer weights (model.safetensors)")
    assert r.stderr.count("\n") == 1 and snapshot(home) == {}
