"""Content-addressed blobs: each file is stored once, named by its sha256, written atomically.

Layout under the store root:

    blobs/sha256-<hex>     finished blobs, read-only; a name is a promise about the content
    tmp/<pid>-<rand>/      one staging directory per running pull or import (see `Staging`)
    verified/sha256-<hex>  the (size, mtime, ctime, inode) a blob had when it last hashed correctly
    lock                   fcntl lock: commits, removals and garbage collection hold it

A blob is copied into a staging directory while it is hashed, fsynced, then renamed into `blobs/`;
a reader therefore sees a whole blob or none. Staging runs without the lock (two pulls copy at the
same time); only the commit (renames + manifest) is serialized. A staging directory whose owner died
(killed mid-copy) is recognised by its unlocked owner file and removed by the next writer.

Verification on load (see `Blobs.check`): a blob up to SMALL bytes is rehashed every time; a larger
one is rehashed only when its stat signature differs from the one recorded when it last hashed
correctly. Any write to a blob changes its ctime (which user space cannot set back), so that catches
edits, truncation and copies; silent media corruption that leaves the inode untouched is caught by
`hearth verify`, which always rehashes.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import logging
import os
import re
import secrets
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from hearth import safejson
from hearth.errors import HearthError
from hearth.fsutil import atomic_write, fsync_dir

log = logging.getLogger("hearth")

CHUNK = 4 << 20
SMALL = 16 << 20  # blobs up to this size are rehashed on every load (milliseconds)
DIGEST_RE = re.compile(r"^sha256:[0-9a-f]{64}\Z")  # \Z: "$" would pass a trailing newline
Advance = Callable[[int], None]


def _no_progress(_: int) -> None:
    pass


def short(digest: str) -> str:
    return digest[: len("sha256:") + 12]


def blob_filename(digest: str) -> str:
    if not DIGEST_RE.match(digest):
        raise HearthError(f"bad digest {digest!r}; expected sha256:<64 hex digits>")
    return digest.replace(":", "-", 1)


def copy_stream(src: BinaryIO, dst: BinaryIO, h, advance: Advance, limit: int | None = None) -> int:
    """Copy `src` to `dst` (at most `limit` bytes), feeding every chunk to the hash `h`; returns bytes copied."""
    n = 0
    while limit is None or n < limit:
        buf = src.read(CHUNK if limit is None else min(CHUNK, limit - n))
        if not buf:
            break
        h.update(buf)
        dst.write(buf)
        n += len(buf)
        advance(len(buf))
    return n


def hash_file(path: Path, advance: Advance = _no_progress) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while buf := f.read(CHUNK):
            h.update(buf)
            advance(len(buf))
    return "sha256:" + h.hexdigest()


@dataclass
class Staged:
    """A finished, hashed copy waiting in a staging directory for `Blobs.commit`."""

    path: Path
    digest: str
    size: int


class Staging:
    """A private directory for one pull/import. Its `owner` file stays flock'ed while the process lives,
    so a later writer can tell a live staging directory from one left by a killed process."""

    def __init__(self, blobs: "Blobs"):
        self.blobs = blobs
        blobs.tmp.mkdir(parents=True, exist_ok=True)
        self.dir = blobs.tmp / f"{os.getpid()}-{secrets.token_hex(4)}"
        self.dir.mkdir()
        self._owner = os.open(self.dir / "owner", os.O_RDWR | os.O_CREAT, 0o644)
        fcntl.flock(self._owner, fcntl.LOCK_EX)

    def stage_stream(self, src: BinaryIO, advance: Advance = _no_progress, limit: int | None = None) -> Staged:
        h = hashlib.sha256()
        path = self.dir / f"blob-{secrets.token_hex(6)}.partial"
        with open(path, "wb") as dst:
            size = copy_stream(src, dst, h, advance, limit)
            dst.flush()
            os.fsync(dst.fileno())
        return Staged(path, "sha256:" + h.hexdigest(), size)

    def stage_file(self, src: Path, advance: Advance = _no_progress) -> Staged:
        with open(src, "rb") as f:
            return self.stage_stream(f, advance)

    def stage_bytes(self, data: bytes) -> Staged:
        path = self.dir / f"blob-{secrets.token_hex(6)}.partial"
        with open(path, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        return Staged(path, "sha256:" + hashlib.sha256(data).hexdigest(), len(data))

    def close(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)
        os.close(self._owner)

    def __enter__(self) -> "Staging":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class Blobs:
    def __init__(self, root: Path):
        self.root = root
        self.dir = root / "blobs"
        self.tmp = root / "tmp"
        self.verified = root / "verified"

    def path(self, digest: str) -> Path:
        return self.dir / blob_filename(digest)

    def all_digests(self) -> set[str]:
        if not self.dir.is_dir():
            return set()
        return {p.name.replace("-", ":", 1) for p in self.dir.iterdir() if DIGEST_RE.match(p.name.replace("-", ":", 1))}

    def staging(self) -> Staging:
        """A new staging directory. Made under the store lock, so no sweep sees it before it is owned."""
        with store_lock(self.root):
            self.sweep_staging()
            return Staging(self)

    def sweep_staging(self) -> None:
        """Remove staging directories whose owner process is gone (a pull or import killed midway).
        Call with the store lock held."""
        if not self.tmp.is_dir():
            return
        for d in self.tmp.iterdir():
            try:
                fd = os.open(d / "owner", os.O_RDWR)
            except OSError:  # no owner file: debris
                shutil.rmtree(d, ignore_errors=True) if d.is_dir() else d.unlink(missing_ok=True)
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # alive
            finally:
                os.close(fd)
            shutil.rmtree(d, ignore_errors=True)

    def commit(self, staged: Staged) -> None:
        """Move a staged copy into place. The staged bytes were just hashed, so they replace whatever is
        there: a re-pull repairs a blob corrupted on disk."""
        self.dir.mkdir(parents=True, exist_ok=True)
        os.chmod(staged.path, 0o444)
        dst = self.path(staged.digest)
        os.replace(staged.path, dst)
        self.record_verified(staged.digest)

    def finish_commits(self) -> None:
        fsync_dir(self.dir)

    def remove(self, digest: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path(digest).unlink()
        with contextlib.suppress(FileNotFoundError):
            (self.verified / blob_filename(digest)).unlink()

    # ------------------------------------------------------------------------------- verification

    @staticmethod
    def _signature(st: os.stat_result) -> list[int]:
        return [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev]

    def record_verified(self, digest: str, st: os.stat_result | None = None) -> None:
        try:
            st = st or os.stat(self.path(digest))
            self.verified.mkdir(parents=True, exist_ok=True)
            atomic_write(self.verified / blob_filename(digest), json.dumps(self._signature(st)).encode(), durable=False)
        except OSError as e:  # a read-only store still loads; it just rehashes next time
            log.debug("cannot record verification of %s: %s", digest, e)

    def _cached(self, digest: str, st: os.stat_result) -> bool:
        try:
            # safejson: a record is a short list; anything bigger or nested is not one (and must not recurse)
            return safejson.read(self.verified / blob_filename(digest), max_depth=1, max_bytes=4096) == self._signature(st)
        except (OSError, ValueError):
            return False

    def trusted(self, digest: str, size: int) -> bool:
        """True if `check` would pass without hashing (a big blob whose stat matches the record)."""
        try:
            st = os.stat(self.path(digest))
        except OSError:
            return False
        return st.st_size == size > SMALL and self._cached(digest, st)

    def check(self, digest: str, size: int, *, deep: bool = False, advance: Advance = _no_progress) -> str | None:
        """None if the blob is intact, else what is wrong with it. `deep`: always rehash."""
        path = self.path(digest)
        try:
            st = os.stat(path)
        except FileNotFoundError:
            return "is missing"
        except OSError as e:
            return f"cannot be read ({e.strerror})"
        if st.st_size != size:
            return f"has {st.st_size} bytes, expected {size}"
        if not deep and st.st_size > SMALL and self._cached(digest, st):
            return None
        try:
            actual = hash_file(path, advance)
        except OSError as e:
            return f"cannot be read ({e.strerror})"
        if actual != digest:
            return "does not match its digest (the content changed on disk)"
        self.record_verified(digest, st)  # the signature from before hashing: a write meanwhile forces a rehash
        return None


@contextlib.contextmanager
def store_lock(root: Path) -> Iterator[None]:
    """Exclusive lock on the store for commits, removals and garbage collection."""
    root.mkdir(parents=True, exist_ok=True)
    fd = os.open(root / "lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.warning("waiting for another hearth process to finish writing the store at %s", root)
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def free_bytes(path: Path) -> int | None:
    try:
        return shutil.disk_usage(path).free
    except OSError:
        return None


def os_error(e: OSError, root: Path) -> HearthError:
    """An OSError while writing the store, as one line."""
    if e.errno == errno.ENOSPC:
        return HearthError(f"no space left on the device holding the store {root}; free some space or set HEARTH_HOME")
    if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return HearthError(f"cannot write to the store {root}: {e.strerror}; check its permissions or set HEARTH_HOME")
    where = f" ({e.filename})" if e.filename else ""
    return HearthError(f"store {root}: {e.strerror or e}{where}")
