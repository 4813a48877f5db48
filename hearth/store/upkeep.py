"""Keeping a store usable whatever is found in it: reading manifest files defensively, telling which blobs a
damaged manifest may still need, and sweeping what killed or failed writers left behind.

A manifest file may be anything by the time it is read (a directory, a FIFO, a link to /dev/zero, a 100 MB
file, JSON nested 100k deep); each of these must spoil only its own model, never a store command or the
garbage collection that keeps the disk from filling.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import stat
import time
from pathlib import Path

from hearth.store.blobs import Blobs
from hearth.store.manifest import MAX_BYTES, ManifestError

_DIGEST_BYTES = re.compile(rb"sha256:[0-9a-f]{64}")
SALVAGE_MAX = 64 << 20  # a damaged manifest bigger than this is not scanned for digests: gc waits instead
STALE_RECORD_S = 3600  # a verification record's temp file older than this belongs to no live writer


def read_manifest_file(path: Path) -> bytes:
    """A manifest's bytes. Only a regular file of at most MAX_BYTES is read (ManifestError otherwise): a
    directory, a FIFO (O_NONBLOCK: opening it does not wait for a writer) or /dev/zero is not a manifest.
    OSError (FileNotFoundError included) propagates."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ManifestError("it is not a regular file")
        if st.st_size > MAX_BYTES:
            raise ManifestError(f"it is {st.st_size} bytes, more than a manifest may be ({MAX_BYTES})")
        with os.fdopen(os.dup(fd), "rb") as f:
            return f.read(MAX_BYTES + 1)
    finally:
        os.close(fd)


def digests_mentioned(path: Path) -> set[str] | None:
    """Every digest written in a damaged manifest's bytes, which garbage collection must keep (a directory,
    FIFO or device mentions none), or None if the file cannot be read (then nothing can be collected)."""
    try:
        st = os.stat(path)
        if not stat.S_ISREG(st.st_mode):
            return set()
        if st.st_size > SALVAGE_MAX:
            return None
        with open(path, "rb") as f:
            return {m.decode() for m in _DIGEST_BYTES.findall(f.read(SALVAGE_MAX))}
    except FileNotFoundError:
        return set()
    except OSError:
        return None


def sweep_leftovers(blobs: Blobs, models: Path, manifests: Path) -> None:
    """Debris of writers that were killed or failed (call with the store lock held): staging directories whose
    owner is gone, half-built or replaced HF link directories and manifest temp files (all made under the lock,
    so none is in use now), and verification records' temp files older than an hour (written without the lock)."""
    blobs.sweep_staging()
    for pattern, where in ((".*.tmp", models), (".*.old", models), (".*.tmp", manifests)):
        with contextlib.suppress(OSError):
            for p in where.glob(pattern):
                if p.is_dir() and not p.is_symlink():
                    shutil.rmtree(p, ignore_errors=True)
                else:
                    p.unlink(missing_ok=True)
    cutoff = time.time() - STALE_RECORD_S
    with contextlib.suppress(OSError):
        for p in blobs.verified.glob(".*.tmp"):
            with contextlib.suppress(OSError):
                if p.lstat().st_mtime < cutoff:
                    p.unlink()
