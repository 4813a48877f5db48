"""Dispatch a path to the right reader."""

from __future__ import annotations

from pathlib import Path

from hearth.errors import ModelFormatError
from hearth.weights.gguf_reader import read_gguf
from hearth.weights.hf_reader import read_hf
from hearth.weights.types import Checkpoint


def open_checkpoint(path: str | Path) -> Checkpoint:
    """Open a GGUF file or a Hugging Face directory without loading its tensors."""
    p = Path(path).expanduser()
    if not p.exists():
        raise ModelFormatError(f"model not found: {p}; pass a .gguf file, a HF model directory, or a store name (see hearth list; add models with hearth pull)")
    if p.is_dir():
        return read_hf(p)
    return read_gguf(p)
