"""Write a Llama model as a Hugging Face directory that transformers (and hearth) load.

Files: config.json (LlamaForCausalLM), model.safetensors, tokenizer.json, tokenizer_config.json,
generation_config.json.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

import torch

from hearth.config import ModelConfig, RopeScaling
from hearth.errors import HearthError
from hearth.weights.names import hearth_to_hf


def _llama3_from_factors(cfg: ModelConfig) -> RopeScaling:
    """GGUF keeps llama3 scaling only as per-frequency divisors; recover the usual parameters."""
    from hearth.weights.gguf_writer import llama3_rope_factors

    factors = list(cfg.rope_freq_factors or ())
    factor = max(factors)
    for low, high, orig in ((1.0, 4.0, 8192), (1.0, 4.0, 4096), (1.0, 4.0, 16384), (1.0, 4.0, 32768)):
        guess = RopeScaling("llama3", factor, low, high, orig)
        ref = llama3_rope_factors(dataclasses.replace(cfg, rope_scaling=guess, rope_freq_factors=None))
        if all(math.isclose(a, b, rel_tol=1e-4) for a, b in zip(ref, factors)) and len(ref) == len(factors):
            return guess
    raise HearthError(
        "this model's rope frequency factors match no llama3 scaling config; it cannot be written as a HF directory"
    )


def hf_config(cfg: ModelConfig, bos_id: int | None = None, eos_ids: tuple[int, ...] = (), dtype: str = "float32") -> dict[str, Any]:
    scaling = cfg.rope_scaling
    if scaling is None and cfg.rope_freq_factors is not None:
        scaling = _llama3_from_factors(cfg)
    rope_scaling = None
    if scaling is not None and scaling.kind == "llama3":
        rope_scaling = {
            "rope_type": "llama3",
            "factor": scaling.factor,
            "low_freq_factor": scaling.low_freq_factor,
            "high_freq_factor": scaling.high_freq_factor,
            "original_max_position_embeddings": scaling.original_max_position_embeddings,
        }
    elif scaling is not None and scaling.kind == "linear":
        rope_scaling = {"rope_type": "linear", "factor": scaling.factor}
    elif scaling is not None:
        raise HearthError(f"rope scaling {scaling.kind!r} cannot be written to config.json (llama3, linear)")
    eos: Any = list(eos_ids) if len(eos_ids) > 1 else (eos_ids[0] if eos_ids else None)
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.dim,
        "intermediate_size": cfg.hidden_dim,
        "num_hidden_layers": cfg.n_layers,
        "num_attention_heads": cfg.n_heads,
        "num_key_value_heads": cfg.n_kv_heads,
        "head_dim": cfg.head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": cfg.max_seq_len,
        "rms_norm_eps": cfg.norm_eps,
        "rope_theta": cfg.rope_theta,
        "rope_scaling": rope_scaling,
        "tie_word_embeddings": cfg.tie_embeddings,
        "attention_bias": False,
        "mlp_bias": False,
        "bos_token_id": bos_id,
        "eos_token_id": eos,
        "torch_dtype": dtype,
    }


def _token_text(tokenizer: Any, key: str, idx: int | None) -> str | None:
    text = tokenizer.special_tokens.get(key)
    if text is None and idx is not None:
        text = tokenizer.backend.id_to_token(idx)
    return text


def write_hf(
    directory: str | Path,
    config: ModelConfig,
    state_dict: dict[str, torch.Tensor],
    tokenizer: Any,
    chat_template: str | None = None,
    dtype: torch.dtype | None = None,
) -> Path:
    """Write a HF Llama directory. `tokenizer` is a hearth Tokenizer; `dtype` casts the weights (None: as given)."""
    from safetensors.torch import save_file
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import processors

    from hearth.weights.gguf_writer import _check_state_dict

    _check_state_dict(config, state_dict)
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)

    tensors = {}
    for name, t in state_dict.items():
        if name == "output.weight" and config.tie_embeddings:
            continue
        t = t.detach().to("cpu")
        if dtype is not None:
            t = t.to(dtype)
        tensors[hearth_to_hf(name)] = t.contiguous().clone()
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    st_dtype = str(next(iter(tensors.values())).dtype).removeprefix("torch.")

    bos, eos_ids = tokenizer.bos_id, tuple(tokenizer.eos_ids)
    (out / "config.json").write_text(json.dumps(hf_config(config, bos, eos_ids, st_dtype), indent=2) + "\n")

    backend = HFTokenizer.from_str(tokenizer.backend.to_str())
    probe = backend.encode("a", add_special_tokens=True).ids
    adds_bos = bos is not None and bool(probe) and probe[0] == bos
    if tokenizer.add_bos and not adds_bos:
        bos_text = backend.id_to_token(bos)
        backend.post_processor = processors.TemplateProcessing(
            single=f"{bos_text} $A", pair=f"{bos_text} $A {bos_text} $B", special_tokens=[(bos_text, bos)]
        )
    backend.save(str(out / "tokenizer.json"))

    tc: dict[str, Any] = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "add_bos_token": bool(tokenizer.add_bos),
        "add_eos_token": bool(tokenizer.add_eos),
        "clean_up_tokenization_spaces": False,
        "model_max_length": config.max_seq_len,
    }
    for key, idx in (("bos_token", bos), ("eos_token", eos_ids[0] if eos_ids else None), ("pad_token", tokenizer.pad_id)):
        text = _token_text(tokenizer, key, idx)
        if text is not None:
            tc[key] = text
    if tokenizer.special_tokens.get("unk_token"):
        tc["unk_token"] = tokenizer.special_tokens["unk_token"]
    if chat_template is not None:
        tc["chat_template"] = chat_template
    (out / "tokenizer_config.json").write_text(json.dumps(tc, indent=2, ensure_ascii=False) + "\n")

    gen: dict[str, Any] = {"_from_model_config": False}
    if bos is not None:
        gen["bos_token_id"] = bos
    if eos_ids:
        gen["eos_token_id"] = list(eos_ids) if len(eos_ids) > 1 else eos_ids[0]
    if tokenizer.pad_id is not None:
        gen["pad_token_id"] = tokenizer.pad_id
    (out / "generation_config.json").write_text(json.dumps(gen, indent=2) + "\n")
    return out
