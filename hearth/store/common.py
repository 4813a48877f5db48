"""What the store's modules and its callers share: where the store is, the check that keeps outputs out of it,
what a pull or import did, and sizes for people to read. Imports nothing of the store, so store.py and bundle.py
both build on it."""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from hearth.errors import HearthError
from hearth.store.manifest import Manifest


def default_home() -> Path:
    """$HEARTH_HOME, or ~/.hearth. Read at each call, never at import."""
    return Path(os.environ.get("HEARTH_HOME") or "~/.hearth").expanduser()


def check_outside_store(path: Path, what: str, root: Path | None = None) -> None:
    """Refuse to write `path` (an output the user named as `what`) inside the store: blobs and models there are the
    store's own, and a later `hearth rm` or `verify` would delete or condemn what was written."""
    root = root if root is not None else default_home()
    if Path(path).expanduser().resolve().is_relative_to(root.expanduser().resolve()):
        raise HearthError(f"{what} {path} is inside hearth's store ({root}); what is written inside the store by "
                          "hand is lost to `hearth rm` and `verify`: write somewhere else")


def refuse_overwrite(path: Path, force: bool, what: str = "-o") -> None:
    """One error line when the output `path` exists and the user did not give --force (`what`: the option named)."""
    if not force and os.path.lexists(path):
        kind = "a directory" if Path(path).is_dir() else "a file"
        raise HearthError(f"{what} {path}: {kind} of that name already exists; --force replaces it, or choose another path")


@contextlib.contextmanager
def replacing(path: Path, suffix: str = "") -> Iterator[Path]:
    """A fresh temporary path beside `path` (ending in `suffix`) to write a file or a directory to; on a clean exit it
    takes `path`'s place (a file atomically, by rename; a directory by two renames, the old one deleted after), on an
    error it is removed and `path` is left as it was."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp{suffix}")
    old = None
    try:
        yield tmp
        if os.path.lexists(path) and (tmp.is_dir() or path.is_dir()):  # rename cannot put one kind over the other
            old = path.with_name(tmp.name + ".old")
            os.replace(path, old)
        os.replace(tmp, path)
    finally:
        for leftover in (tmp, old):
            if leftover is not None and os.path.lexists(leftover):
                if leftover.is_dir() and not leftover.is_symlink():
                    shutil.rmtree(leftover, ignore_errors=True)
                else:
                    leftover.unlink(missing_ok=True)


@dataclass
class Result:
    """What a pull, import or copy did."""

    manifest: Manifest
    new_bytes: int = 0  # bytes of blobs this operation added to the store
    reused: int = 0  # blobs that were already there
    replaced: bool = False  # a model of that name existed and now points at these blobs
    skipped: bool = False  # --if-missing and the model was already there
    unchanged: bool = False  # the model of that name already had these very layers: nothing was written


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def human_count(n: int) -> str:
    for unit, div in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= div:
            return f"{n / div:.1f}{unit}"
    return str(n)

