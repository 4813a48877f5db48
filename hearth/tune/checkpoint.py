"""Training checkpoints that a crash cannot corrupt: write a temporary file, fsync, rename over the old one.

At any moment `state.pt` is either the previous complete checkpoint or the new complete one; a run
killed mid-write leaves only a stray `.tmp` file, overwritten by the next save. A run killed before its
first checkpoint was complete leaves its log and at most that `.tmp`: `unsaved_run` recognises it, so
`--resume` can start it over instead of finding nothing to resume.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from hearth.errors import HearthError
from hearth.fsutil import atomic_open

NAME = "state.pt"


def save_atomic(state: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    # a fixed temporary name: unsaved_run recognises what a run killed mid-save left
    with atomic_open(path, tmp=path.with_name(path.name + ".tmp")) as f:
        torch.save(state, f)


def checkpoint_path(out_dir: Path) -> Path:
    return Path(out_dir) / "checkpoint" / NAME


# What a finished run writes after its last checkpoint (recipes.py): with one of these and no checkpoint, a
# directory holds someone's results, not a run of ours to start over.
RESULTS = ("adapter_model.safetensors", "adapter_config.json", "model", "summary.json")
# What train() writes before its first checkpoint is complete: the log (report.JsonLog writes log.tmp, then
# renames it) and the checkpoint directory, holding at most a half-written state.pt.tmp.
_LEFTOVERS = ("log.jsonl", "log.tmp", "checkpoint")


def unsaved_run(out_dir: Path) -> bool:
    """Whether `out_dir` holds a run that was stopped (killed) before its first checkpoint was complete: its log
    or checkpoint directory, no state.pt, nothing else in checkpoint/ but the temporary file, and no results.
    Nothing in it is worth keeping: the run can only start over."""
    out = Path(out_dir)
    ckpt = checkpoint_path(out)
    if ckpt.exists() or any((out / f).exists() for f in RESULTS):
        return False
    if ckpt.parent.exists() and (not ckpt.parent.is_dir() or any(p.name != NAME + ".tmp" for p in ckpt.parent.iterdir())):
        return False
    return any((out / f).exists() for f in _LEFTOVERS)


def load_checkpoint(out_dir: Path) -> dict[str, Any]:
    path = checkpoint_path(out_dir)
    if not path.is_file():
        raise HearthError(f"nothing to resume: {path} does not exist; run the same command without --resume")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a damaged file from outside hearth (ours are written atomically)
        raise HearthError(f"the checkpoint {path} cannot be read ({type(e).__name__}); to start the run over, remove it "
                          f"(rm {path}) and run the same command with --resume, or choose another output directory") from None


def saved_options(out_dir: Path) -> dict[str, Any] | None:
    """The command options saved with the run's checkpoint (read without loading its tensors), or None: no
    checkpoint yet, or one written before options were saved."""
    path = checkpoint_path(out_dir)
    if not path.is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # load_checkpoint reports a damaged file, with its remedy
        return None
    return state.get("options") or None


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def resume_options(saved: dict[str, Any], given: dict[str, Any], extendable: tuple[str, ...] = (),
                   overridable: tuple[str, ...] = ()) -> dict[str, Any]:
    """The options a resumed run continues with: the saved ones, with those given again on the command line.
    A given option must agree with its saved value, except `extendable` ones (a run's length) and `overridable`
    ones (checked another way, e.g. the data path, whose content the checkpoint's fingerprint checks); a
    conflict is one error line naming the option, the saved value and the given one."""
    for name, value in given.items():
        if name in saved and name not in extendable + overridable and saved[name] != value:
            raise HearthError(f"{_flag(name)} {value} differs from this run's saved {_flag(name)} {saved[name]}; leave "
                              f"it out to continue with the saved value (on --resume only {', '.join(map(_flag, extendable))} may change)")
    return {**saved, **given}
