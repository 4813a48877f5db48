"""The store survives what happens to real machines: a pull killed mid-copy or mid-commit, two pulls at
once, a writer waiting for the lock, debris from dead processes, atomic file replacement."""

from __future__ import annotations

import fcntl
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from store_kit import blob_files, cli_env, manifest_json, run_main, write_tiny_gguf, write_tiny_hf

# Run `hearth pull` in a child whose copy (or commit) announces itself and then hangs, so the test can
# kill it at exactly that point. The product has no test hooks: the child replaces a function.
HANG_IN_COPY = """
import sys, time
import hearth.store.blobs as blobs
def hang(src, dst, h, advance, limit=None):
    buf = src.read(1 << 16); h.update(buf); dst.write(buf); dst.flush()
    print("COPYING", flush=True)
    time.sleep(600)
blobs.copy_stream = hang
"""
HANG_BEFORE_MANIFEST = """
import sys, time
from hearth.store.store import Store
def hang(self, manifest):
    print("COMMITTING", flush=True)
    time.sleep(600)
Store._write_manifest = hang
"""
SLOW_COPY = """
import time
import hearth.store.blobs as blobs
real = blobs.copy_stream
def slow(*a, **k):
    time.sleep(1.0)  # both pulls are now copying at the same time
    return real(*a, **k)
blobs.copy_stream = slow
"""
RUN_MAIN = "\nfrom hearth.cli import main\nsys.exit(main(sys.argv[1:]))\n"


@pytest.fixture(scope="module")
def src(tmp_path_factory):
    t = tmp_path_factory.mktemp("robust")
    return {"a": write_tiny_gguf(t / "a.gguf", license="mit"), "b": write_tiny_gguf(t / "b.gguf", seed_shift=0.02),
            "hf": write_tiny_hf(t / "hf")}


def start(home: Path, prelude: str, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", "import sys\n" + prelude + RUN_MAIN, *args], env=cli_env(home),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for_line(p: subprocess.Popen, marker: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = p.stdout.readline()
        if marker in line:
            return
        if not line and p.poll() is not None:
            raise AssertionError(f"child exited {p.returncode} before {marker}: {p.stderr.read()}")
    raise AssertionError(f"timed out waiting for {marker}")


def kill(p: subprocess.Popen) -> None:
    p.send_signal(signal.SIGKILL)
    p.wait(timeout=30)
    p.stdout.close()
    p.stderr.close()


def test_pull_killed_mid_copy_leaves_a_valid_store_and_the_next_pull_finishes(home, src, capsys):
    assert run_main(capsys, "pull", str(src["a"]), "--name", "m")[0] == 0
    before = manifest_json(home, "m")
    p = start(home, HANG_IN_COPY, "pull", str(src["b"]), "--name", "m")
    wait_for_line(p, "COPYING")
    partial = list((home / "tmp").glob("*/blob-*.partial"))
    assert len(partial) == 1 and partial[0].stat().st_size > 0
    kill(p)

    # The store is valid and still has the old model; the half copy is debris in tmp/, not a blob.
    rc, out, err = run_main(capsys, "verify")
    assert rc == 0 and "all intact" in out, out + err
    assert manifest_json(home, "m") == before
    assert partial[0].exists()
    rc, _, err = run_main(capsys, "generate", "m", "Hi", "--temperature", "0", "--max-tokens", "1")
    assert rc == 0, err

    # The next pull sweeps the dead staging directory and finishes the job.
    rc, out, err = run_main(capsys, "pull", str(src["b"]), "--name", "m", "--force")
    assert rc == 0, err
    assert not partial[0].exists() and list((home / "tmp").iterdir()) == []
    assert manifest_json(home, "m")["layers"][0]["size"] == src["b"].stat().st_size
    rc, out, _ = run_main(capsys, "verify")
    assert rc == 0 and "all intact" in out and "belong to no model" not in out


def test_pull_killed_between_blobs_and_manifest(home, src, capsys):
    p = start(home, HANG_BEFORE_MANIFEST, "pull", str(src["hf"]), "--name", "h")
    wait_for_line(p, "COMMITTING")
    kill(p)
    assert blob_files(home)  # blobs are in place ...
    assert not (home / "manifests" / "h.json").exists()  # ... but the model is not visible
    rc, out, err = run_main(capsys, "verify")
    assert rc == 0 and "belong to no model" in out, out + err
    rc, out, _ = run_main(capsys, "list")
    assert "empty" in out
    rc, out, err = run_main(capsys, "pull", str(src["hf"]), "--name", "h")
    assert rc == 0, err
    assert "already stored" in out  # the interrupted pull's blobs were reused
    rc, out, _ = run_main(capsys, "verify")
    assert rc == 0 and "all intact" in out and "belong to no model" not in out


def test_two_pulls_at_once(home, src, capsys):
    procs = [start(home, SLOW_COPY, "pull", str(src["a"]), "--name", n) for n in ("one", "two")]
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
    rc, out, err = run_main(capsys, "verify")
    assert rc == 0 and "all intact" in out and "belong to no model" not in out, out + err
    one, two = manifest_json(home, "one"), manifest_json(home, "two")
    assert one["layers"] == two["layers"]
    assert len(blob_files(home)) == len(one["layers"])  # each shared blob once
    assert list((home / "tmp").iterdir()) == []


def test_a_writer_waits_for_the_lock(home, src, caplog):
    from hearth.store import Store
    from hearth.store.blobs import store_lock

    result = {}
    with store_lock(home):
        t = threading.Thread(target=lambda: result.setdefault("r", Store().pull(str(src["a"]), name="w")))
        t.start()
        time.sleep(1.0)
        assert t.is_alive() and not (home / "manifests" / "w.json").exists()
    t.join(timeout=120)
    assert result["r"].manifest.name == "w"
    assert "waiting for another hearth process" in caplog.text


def test_sweep_removes_only_dead_staging_dirs(home):
    from hearth.store.blobs import Blobs

    blobs = Blobs(home)
    dead = home / "tmp" / "999-dead"
    dead.mkdir(parents=True)
    (dead / "owner").touch()
    (dead / "blob-x.partial").write_bytes(b"half")
    live = home / "tmp" / "998-live"
    live.mkdir()
    fd = os.open(live / "owner", os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)  # another process's open file description: flock is per description
    try:
        with blobs.staging() as st:
            assert st.dir.exists()
            assert not dead.exists() and live.exists()
        assert not st.dir.exists()
    finally:
        os.close(fd)


def test_write_atomic_keeps_the_old_file_when_the_rename_fails(tmp_path, monkeypatch):
    from hearth import fsutil

    target = tmp_path / "m.json"
    fsutil.atomic_write(target, b"old")
    monkeypatch.setattr(fsutil.os, "replace", lambda *a: (_ for _ in ()).throw(OSError(28, "No space left on device")))
    with pytest.raises(OSError):
        fsutil.atomic_write(target, b"new")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["m.json"]  # no temp file left behind


def test_no_space_is_one_line(home, src, capsys, monkeypatch):
    from hearth.store import blobs

    monkeypatch.setattr(blobs.shutil, "disk_usage", lambda p: type("U", (), {"free": 10})())
    rc, _, err = run_main(capsys, "pull", str(src["a"]))
    assert rc == 1 and err.startswith("error: not enough space") and len(err.strip().splitlines()) == 1
