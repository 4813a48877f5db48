"""A distillation student's shape from a small JSON file: Hugging Face config names or hearth's own.

    {"num_hidden_layers": 4, "hidden_size": 192, "num_attention_heads": 3, "num_key_value_heads": 1,
     "intermediate_size": 512}

Every key left out is the teacher's (vocabulary, norm epsilon, RoPE base, context, ...), so `{}` is a fresh
model of the teacher's own shape and `{"num_hidden_layers": 8}` the teacher's shape with 8 layers. head_dim is
the teacher's only while neither the width nor the head count changes (otherwise width / heads). Unknown keys,
a key given under both names and values of the wrong type are one error line each.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from hearth.config import ModelConfig
from hearth.errors import HearthError

# Hugging Face config.json name → hearth's ModelConfig field
HF_NAMES = {
    "hidden_size": "dim", "num_hidden_layers": "n_layers", "num_attention_heads": "n_heads",
    "num_key_value_heads": "n_kv_heads", "intermediate_size": "hidden_dim", "vocab_size": "vocab_size",
    "max_position_embeddings": "max_seq_len", "rms_norm_eps": "norm_eps", "rope_theta": "rope_theta",
    "tie_word_embeddings": "tie_embeddings", "head_dim": "head_dim",
}
_INTS = ("vocab_size", "dim", "n_layers", "n_heads", "n_kv_heads", "hidden_dim", "head_dim", "max_seq_len")
_FLOATS = ("norm_eps", "rope_theta")
KEYS = sorted(set(HF_NAMES) | set(HF_NAMES.values()))


def _value(src: Path, key: str, field: str, v: Any) -> Any:
    if field in _INTS and not (isinstance(v, int) and not isinstance(v, bool) and v > 0):
        raise HearthError(f"{src}: {key} must be a positive integer, not {v!r}")
    if field in _FLOATS and not (isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0):
        raise HearthError(f"{src}: {key} must be a positive number, not {v!r}")
    if field == "tie_embeddings" and not isinstance(v, bool):
        raise HearthError(f"{src}: {key} must be true or false, not {v!r}")
    return float(v) if field in _FLOATS else v


def student_config(path: Path, teacher: ModelConfig) -> ModelConfig:
    """The student's ModelConfig: the file's keys (either naming) over the teacher's shape."""
    try:
        given = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise HearthError(f"{path}: not a readable JSON student config ({e})") from None
    if not isinstance(given, dict):
        raise HearthError(f"{path}: a student config is a JSON object such as {{\"num_hidden_layers\": 4, \"hidden_size\": 192}}")
    unknown = sorted(k for k in given if k not in KEYS)
    if unknown:
        raise HearthError(f"{path}: unknown key(s) {', '.join(unknown)}; a student config takes {', '.join(KEYS)}")
    fields: dict[str, Any] = {}
    for key, v in given.items():
        field = HF_NAMES.get(key, key)
        if field in fields:
            raise HearthError(f"{path}: {field} is given twice (as {key} and under its other name); keep one")
        fields[field] = _value(path, key, field, v)
    base = teacher.to_dict()
    base.pop("extra", None)
    base["name"] = "llama"
    if "head_dim" not in fields and ("dim" in fields or "n_heads" in fields):
        base["head_dim"] = 0  # width / heads
    if fields.get("head_dim", base["head_dim"]) != teacher.head_dim:  # RoPE per-frequency factors fit one head_dim
        base["rope_scaling"], base["rope_freq_factors"] = None, None
    try:
        return ModelConfig.from_dict({**base, **fields})
    except (ValueError, TypeError) as e:
        raise HearthError(f"{path}: not a usable student config ({str(e).removeprefix('model config: ')})") from None


def describe(cfg: ModelConfig) -> str:
    return (f"{cfg.n_layers} layers, hidden_size {cfg.dim}, {cfg.n_heads} heads ({cfg.n_kv_heads} key/value), "
            f"intermediate_size {cfg.hidden_dim}, {cfg.num_params() / 1e6:.1f}M parameters")
