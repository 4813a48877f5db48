"""Read a Hugging Face model directory: config.json + (sharded) safetensors + tokenizer files."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from hearth.config import ModelConfig, RopeScaling
from hearth.errors import ModelFormatError
from hearth.weights.names import HF_IGNORED, hf_to_hearth
from hearth.weights.types import Checkpoint, TokenizerData

SUPPORTED_MODEL_TYPES = ("llama", "mistral")


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise ModelFormatError(f"cannot read {path}: {e.strerror}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ModelFormatError(f"{path} is not valid JSON ({e}); restore the file from the original model") from None


def config_from_hf(path: Path, cfg: dict[str, Any]) -> ModelConfig:
    mtype = cfg.get("model_type")
    if mtype not in SUPPORTED_MODEL_TYPES:
        raise ModelFormatError(
            f"{path}: model_type {mtype!r} is not supported; hearth runs Llama-family models ({', '.join(SUPPORTED_MODEL_TYPES)})"
        )
    scaling = None
    # transformers 4.x writes rope_theta + rope_scaling; 5.x writes one rope_parameters dict.
    rs = cfg.get("rope_scaling") or cfg.get("rope_parameters") or None
    if rs and rs.get("rope_type", rs.get("type", "default")) != "default":
        kind = rs.get("rope_type", rs.get("type"))
        if kind == "llama3":
            scaling = RopeScaling(
                kind="llama3",
                factor=float(rs["factor"]),
                low_freq_factor=float(rs.get("low_freq_factor", 1.0)),
                high_freq_factor=float(rs.get("high_freq_factor", 4.0)),
                original_max_position_embeddings=int(rs.get("original_max_position_embeddings", 8192)),
            )
        elif kind == "linear":
            scaling = RopeScaling(kind="linear", factor=float(rs["factor"]))
        else:
            raise ModelFormatError(f"{path}: rope_scaling type {kind!r} is not supported (llama3, linear)")
    try:
        n_heads = int(cfg["num_attention_heads"])
        dim = int(cfg["hidden_size"])
        max_len = int(cfg.get("max_position_embeddings", 2048))
        if cfg.get("sliding_window"):  # Mistral: attention beyond the window is not implemented; never exceed it
            max_len = min(max_len, int(cfg["sliding_window"]))
        return ModelConfig(
            vocab_size=int(cfg["vocab_size"]),
            dim=dim,
            n_layers=int(cfg["num_hidden_layers"]),
            n_heads=n_heads,
            n_kv_heads=int(cfg.get("num_key_value_heads") or n_heads),
            hidden_dim=int(cfg["intermediate_size"]),
            head_dim=int(cfg.get("head_dim") or dim // n_heads),
            norm_eps=float(cfg.get("rms_norm_eps", 1e-6)),
            rope_theta=float(cfg.get("rope_theta", (cfg.get("rope_parameters") or {}).get("rope_theta", 10000.0))),
            rope_scaling=scaling,
            max_seq_len=max_len,
            tie_embeddings=bool(cfg.get("tie_word_embeddings", False)),
            name=path.name,
        )
    except KeyError as e:
        raise ModelFormatError(f"{path}/config.json lacks {e.args[0]!r}; restore it from the original model") from None
    except (TypeError, ValueError) as e:
        raise ModelFormatError(f"{path}/config.json has a bad value: {e}") from None


def _weight_files(path: Path) -> list[Path]:
    index = path / "model.safetensors.index.json"
    single = path / "model.safetensors"
    if index.exists():
        files = sorted(set(_read_json(index).get("weight_map", {}).values()))
        if not files:
            raise ModelFormatError(f"{index} lists no weight files; restore it from the original model")
        missing = [f for f in files if not (path / f).exists()]
        if missing:
            raise ModelFormatError(f"{path}: shard {missing[0]} listed in the index is missing; copy all shards")
        return [path / f for f in files]
    if single.exists():
        return [single]
    raise ModelFormatError(
        f"{path} has no model.safetensors or model.safetensors.index.json; hearth reads safetensors weights only"
    )


def _tokenizer_from_dir(path: Path, cfg: dict[str, Any]) -> TokenizerData:
    tj = path / "tokenizer.json"
    if not tj.exists():
        raise ModelFormatError(f"{path} has no tokenizer.json; copy it from the original model")
    tc = _read_json(path / "tokenizer_config.json") if (path / "tokenizer_config.json").exists() else {}
    gen = _read_json(path / "generation_config.json") if (path / "generation_config.json").exists() else {}
    template = tc.get("chat_template")
    if (path / "chat_template.jinja").exists():
        template = (path / "chat_template.jinja").read_text(encoding="utf-8")
    if isinstance(template, list):  # named templates: use the default one
        template = next((t["template"] for t in template if t.get("name") == "default"), None)
    vocab = json.loads(tj.read_text(encoding="utf-8"))
    token_ids = {t["content"]: t["id"] for t in vocab.get("added_tokens", [])}

    def tok_text(v: Any) -> str | None:
        return v.get("content") if isinstance(v, dict) else v

    special = {k: tok_text(tc[k]) for k in ("bos_token", "eos_token", "unk_token", "pad_token") if tc.get(k)}

    def tok_id(name: str, key: str) -> list[int]:
        ids = gen.get(key, cfg.get(key))
        if ids is None and special.get(name) in token_ids:
            ids = token_ids[special[name]]
        if ids is None:
            return []
        return [int(i) for i in (ids if isinstance(ids, list) else [ids])]

    bos = tok_id("bos_token", "bos_token_id")
    eos = tok_id("eos_token", "eos_token_id")
    if special.get("eos_token") in token_ids:
        eos.append(token_ids[special["eos_token"]])
    pad = tok_id("pad_token", "pad_token_id")
    return TokenizerData(
        tokenizer_json=tj,
        bos_id=bos[0] if bos else None,
        eos_ids=tuple(dict.fromkeys(eos)),
        pad_id=pad[0] if pad else None,
        add_bos=tc.get("add_bos_token"),
        add_eos=bool(tc.get("add_eos_token", False)),
        chat_template=template,
        special_tokens={k: v for k, v in special.items() if v},
    )


def read_hf(path: Path) -> Checkpoint:
    """Open a HF model directory. Safetensors files are memory-mapped; tensors load lazily."""
    from safetensors import safe_open

    if not (path / "config.json").exists():
        raise ModelFormatError(f"{path} has no config.json; pass a GGUF file or a Hugging Face model directory")
    raw = _read_json(path / "config.json")
    config = config_from_hf(path, raw)
    tensors, types = {}, {}
    for f in _weight_files(path):
        try:
            handle = safe_open(str(f), framework="pt")
            keys = list(handle.keys())
        except Exception as e:
            raise ModelFormatError(f"{f} is not a readable safetensors file ({e}); re-download it") from None
        for key in keys:
            if HF_IGNORED.match(key):
                continue
            hname = hf_to_hearth(key)
            if hname is None:
                raise ModelFormatError(f"{f}: unexpected tensor {key!r}; this is not a plain Llama model")
            tensors[hname] = lambda h=handle, k=key: h.get_tensor(k)
            types[hname] = str(handle.get_slice(key).get_dtype())
    if config.tie_embeddings:
        tensors.pop("output.weight", None)
    elif "output.weight" not in tensors and "tok_embeddings.weight" in tensors:
        # Some checkpoints omit lm_head although config says untied: they mean tied.
        import dataclasses

        config = dataclasses.replace(config, tie_embeddings=True)
    return Checkpoint(
        path=path, format="hf", config=config, tensors=tensors,
        tokenizer=_tokenizer_from_dir(path, raw), metadata={"hf_config": raw}, tensor_types=types,
    )
