"""What the store's modules and its callers share: where the store is, the check that keeps outputs out of it,
what a pull or import did, and sizes for people to read. Imports nothing of the store, so store.py and bundle.py
both build on it."""

from __future__ import annotations

import os
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


@dataclass
class Result:
    """What a pull, import or copy did."""

    manifest: Manifest
    new_bytes: int = 0  # bytes of blobs this operation added to the store
    reused: int = 0  # blobs that were already there
    replaced: bool = False  # a model of that name existed and now points at these blobs
    skipped: bool = False  # --if-missing and the model was already there


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

