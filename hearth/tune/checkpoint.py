"""Training checkpoints that a crash cannot corrupt: write a temporary file, fsync, rename over the old one.

At any moment `state.pt` is either the previous complete checkpoint or the new complete one; a run
killed mid-write leaves only a stray `.tmp` file, removed by the next save.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from hearth.errors import HearthError

NAME = "state.pt"


def _fsync_dir(d: Path) -> None:
    try:
        fd = os.open(d, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_atomic(state: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def checkpoint_path(out_dir: Path) -> Path:
    return Path(out_dir) / "checkpoint" / NAME


def load_checkpoint(out_dir: Path) -> dict[str, Any]:
    path = checkpoint_path(out_dir)
    if not path.is_file():
        raise HearthError(f"nothing to resume: {path} does not exist; start without --resume")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a damaged file from outside hearth (ours are written atomically)
        raise HearthError(f"the checkpoint {path} cannot be read ({type(e).__name__}); delete it to start over, or choose another output directory") from None
