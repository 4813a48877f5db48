"""Files that readers see whole or not at all: write a temporary file, (fsync,) rename it over the target.

Used by the store (manifests, blob signatures) and by training (checkpoints, logs, the loss curve). A rename is
atomic on one file system, so a reader (or a process killed mid-write) sees the old content or the new, never a
mix; `durable=True` also fsyncs the file before the rename and its directory after, so the new name survives a
power cut.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any


def fsync_dir(path: Path) -> None:
    """Flush a directory's entries (a rename into it) to disk."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_open(path: Path, mode: str = "wb", durable: bool = True, tmp: Path | None = None,
                **kwargs: Any) -> Iterator[IO]:
    """Open a temporary file beside `path` for writing; on a clean exit it replaces `path`, on an error it is removed
    and `path` keeps its old content. `tmp` names the temporary file (default: a hidden name unique to this write),
    for callers whose crash recovery looks for a known leftover."""
    path = Path(path)
    tmp = Path(tmp) if tmp is not None else path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        with open(tmp, mode, **kwargs) as f:
            yield f
            f.flush()
            if durable:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    if durable:
        fsync_dir(path.parent)


def atomic_write(path: Path, data: bytes, durable: bool = True) -> None:
    """Write `data` to `path` so that readers see the old content or the new, never a mix."""
    with atomic_open(path, durable=durable) as f:
        f.write(data)


def save_png(fig, path: Path) -> Path:
    """Write a matplotlib figure to `path` as PNG (atomically: a reader never sees half a plot) and close it."""
    import matplotlib.pyplot as plt

    try:
        with atomic_open(path, durable=False, tmp=path.with_name(path.name + ".tmp.png")) as f:
            fig.savefig(f, format="png")
    finally:
        plt.close(fig)
    return path
