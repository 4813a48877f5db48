"""Plausibility limits on what a model file claims, checked before anything is allocated from it.

Model files come from outside. A four-byte edit of a layer count or a dimension must not make hearth
build a billion tensor names or allocate terabytes: every size a file declares is checked against the
file itself (the weights it implies must fit in its bytes; the layers it declares must have tensors)
and against absolute caps far above any real Llama-family model. Each violation is a ModelFormatError
naming the key and its value.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from hearth.config import ModelConfig
from hearth.errors import ModelFormatError

# Absolute caps, each well above the largest open Llama-family model (Llama 3.1 405B: 126 layers, dim 16384,
# FFN 53248, 128 heads, 128k vocabulary, 128k context; Gemma-style vocabularies reach 262k).
MAX_LAYERS = 1024
MAX_DIM = 1 << 17
MAX_HIDDEN_DIM = 1 << 20
MAX_HEADS = 4096
MAX_HEAD_DIM = 4096
MAX_VOCAB = 1 << 23
MAX_CONTEXT = 1 << 26
# The fewest bits a stored weight can take (llama.cpp's ternary TQ1_0 uses 1.69): a file of B bytes holds at
# most 8 * B weights, so settings that imply more describe weights the file does not have.
MIN_BITS_PER_WEIGHT = 1

_CAPS = {
    "n_layers": MAX_LAYERS, "dim": MAX_DIM, "hidden_dim": MAX_HIDDEN_DIM, "n_heads": MAX_HEADS,
    "n_kv_heads": MAX_HEADS, "head_dim": MAX_HEAD_DIM, "vocab_size": MAX_VOCAB, "max_seq_len": MAX_CONTEXT,
}


def show(v: Any) -> str:
    """A value for an error message: short, one line, never a megabyte of array."""
    if isinstance(v, (str, bytes)):
        r = repr(v[:40]) + ("..." if len(v) > 40 else "")
    elif isinstance(v, np.ndarray) or hasattr(v, "__len__"):
        try:
            r = f"an array of {len(v)} elements"
        except TypeError:
            r = type(v).__name__
    else:
        r = repr(v)[:60]
    return r.replace("\n", "\\n").replace("\r", "\\r")


def as_int(where: str, key: str, v: Any) -> int:
    """`v` as an int if it is one (an integral float too, as some config.json writers store them); else an error."""
    if isinstance(v, (bool, np.bool_)):
        raise ModelFormatError(f"{where}: {key} is {show(v)}, not an integer; the file is corrupt")
    if isinstance(v, (int, np.integer)):
        return int(v)
    if isinstance(v, (float, np.floating)) and math.isfinite(v) and float(v).is_integer():
        return int(v)
    raise ModelFormatError(f"{where}: {key} is {show(v)}, not an integer; the file is corrupt")


def as_float(where: str, key: str, v: Any) -> float:
    if isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, (bool, np.bool_)):
        f = float(v)
        if math.isfinite(f):
            return f
    raise ModelFormatError(f"{where}: {key} is {show(v)}, not a finite number; the file is corrupt")


def as_bool(where: str, key: str, v: Any) -> bool:
    if isinstance(v, (bool, np.bool_, int, np.integer)):
        return bool(v)
    raise ModelFormatError(f"{where}: {key} is {show(v)}, not a boolean; the file is corrupt")


def as_str(where: str, key: str, v: Any) -> str:
    if isinstance(v, str):
        return v
    raise ModelFormatError(f"{where}: {key} is {show(v)}, not a string; the file is corrupt")


def check_config(where: Path | str, cfg: ModelConfig, keys: Mapping[str, str], file_bytes: int, n_tensors: int) -> None:
    """Refuse settings no file of `file_bytes` bytes holding `n_tensors` tensors can back.

    keys: ModelConfig field -> the key the file stores it under, for the messages."""
    for name, cap in _CAPS.items():
        v = getattr(cfg, name)
        if not 0 < v <= cap:
            raise ModelFormatError(f"{where}: {keys.get(name, name)} = {v} is implausible (limit {cap}); the file is corrupt")
    if cfg.n_kv_heads > cfg.n_heads:
        raise ModelFormatError(f"{where}: {keys.get('n_kv_heads', 'n_kv_heads')} = {cfg.n_kv_heads} exceeds "
                               f"{keys.get('n_heads', 'n_heads')} = {cfg.n_heads}; the file is corrupt")
    # Every layer has its own tensors: more layers than tensors cannot all be stored, however they are named.
    if cfg.n_layers > n_tensors:
        raise ModelFormatError(f"{where}: {keys.get('n_layers', 'n_layers')} = {cfg.n_layers} but the file holds only "
                               f"{n_tensors} tensors; the file is corrupt or inconsistent")
    params = cfg.num_params()  # Python ints: no overflow however large the dimensions
    if params * MIN_BITS_PER_WEIGHT > 8 * file_bytes:
        raise ModelFormatError(
            f"{where}: its settings describe {params:,} weights ({keys.get('n_layers', 'n_layers')} = {cfg.n_layers}, "
            f"{keys.get('dim', 'dim')} = {cfg.dim}, {keys.get('vocab_size', 'vocab_size')} = {cfg.vocab_size}, "
            f"{keys.get('hidden_dim', 'hidden_dim')} = {cfg.hidden_dim}) but the weights hold only {file_bytes:,} bytes; "
            "the file is corrupt or inconsistent"
        )
