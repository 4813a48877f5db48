"""LoRA adapters in PEFT's on-disk format, written by hearth (tune/) and read from PEFT (engine/, tune/).

    adapter_config.json          {"peft_type": "LORA", "r", "lora_alpha", "lora_dropout", "target_modules", ...}
    adapter_model.safetensors    base_model.model.model.layers.N.self_attn.q_proj.lora_A.weight  (r, in)
                                 base_model.model.model.layers.N.self_attn.q_proj.lora_B.weight  (out, r)

Names come from hearth's HF name table (weights/names.py): hearth's wq is HF's q_proj in the same
rotate-half layout, so an adapter's matrices need no permutation either way.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import torch

from hearth.errors import HearthError
from hearth.weights.adapters.gguf import read_lora_gguf
from hearth.weights.adapters.targets import ALL_TARGETS, TARGETS, LoraConfig, expected_shapes
from hearth.weights.names import hearth_to_hf

CONFIG = "adapter_config.json"
WEIGHTS = "adapter_model.safetensors"
PREFIX = "base_model.model."
_KEY = re.compile(r"^base_model\.model\.model\.layers\.(\d+)\.(self_attn|mlp)\.(\w+)\.(lora_A|lora_B)(?:\.default)?\.weight$")


def _peft_key(hearth_path: str, which: str) -> str:
    return PREFIX + hearth_to_hf(f"{hearth_path}.weight").removesuffix(".weight") + f".{which}.weight"


def write_adapter(directory: str | Path, cfg: LoraConfig, weights: dict[tuple[int, str], tuple[torch.Tensor, torch.Tensor]],
                  base_model: str | None = None, dtype: torch.dtype | None = None) -> Path:
    """Write an adapter, {(layer, PEFT target): (lora_A (r, in), lora_B (out, r))}, as a PEFT LoRA adapter directory
    (atomic per file)."""
    from safetensors.torch import save_file

    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    tensors = {}
    for (layer, target), pair in weights.items():
        sub, attr, _ = TARGETS[target]
        for which, t in zip(("lora_A", "lora_B"), pair):
            t = t.detach().to("cpu")
            tensors[_peft_key(f"layers.{layer}.{sub}.{attr}", which)] = (t.to(dtype) if dtype is not None else t).contiguous().clone()
    tmp = out / (WEIGHTS + ".tmp")
    save_file(tensors, str(tmp), metadata={"format": "pt"})
    tmp.replace(out / WEIGHTS)
    config = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base_model,
        "r": cfg.r,
        "lora_alpha": cfg.alpha,
        "lora_dropout": cfg.dropout,
        "target_modules": sorted(cfg.targets),
        "bias": "none",
        "fan_in_fan_out": False,
        "use_rslora": False,
        "use_dora": False,
        "init_lora_weights": True,
        "inference_mode": True,
        "modules_to_save": None,
        "layers_to_transform": None if cfg.layers is None else list(cfg.layers),
        "rank_pattern": {},
        "alpha_pattern": {},
        "revision": None,
    }
    tmp = out / (CONFIG + ".tmp")
    tmp.write_text(json.dumps(config, indent=2) + "\n")
    tmp.replace(out / CONFIG)
    return out


def read_adapter_config(directory: Path) -> tuple[LoraConfig, dict[str, Any]]:
    path = directory / CONFIG
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        raise HearthError(f"{directory} is not a PEFT adapter: {CONFIG} is missing") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise HearthError(f"{path} is not valid JSON ({e})") from None
    if not isinstance(raw, dict) or raw.get("peft_type") != "LORA":
        raise HearthError(f"{path}: only LoRA adapters are supported (peft_type {raw.get('peft_type') if isinstance(raw, dict) else None!r})")
    unsupported = [k for k in ("use_dora", "modules_to_save", "rank_pattern", "alpha_pattern", "layers_pattern") if raw.get(k)]
    if raw.get("bias", "none") != "none":
        unsupported.append("bias")
    if raw.get("fan_in_fan_out"):
        unsupported.append("fan_in_fan_out")
    if unsupported:
        raise HearthError(f"{path}: adapter options hearth does not support: {', '.join(unsupported)}")
    targets = raw.get("target_modules")
    if isinstance(targets, str):
        if targets != "all-linear":
            raise HearthError(f"{path}: target_modules as a pattern ({targets!r}) is not supported; list the modules")
        targets = list(ALL_TARGETS)
    if not isinstance(targets, list) or any(t not in TARGETS for t in targets):
        raise HearthError(f"{path}: target_modules {targets!r} are not Llama projections ({', '.join(ALL_TARGETS)})")
    try:
        r, alpha = int(raw["r"]), float(raw["lora_alpha"])
    except (KeyError, TypeError, ValueError):
        raise HearthError(f"{path}: needs numeric 'r' and 'lora_alpha'") from None
    if raw.get("use_rslora"):
        alpha = alpha * math.sqrt(r)  # rsLoRA scales by alpha/sqrt(r); ours is alpha/r
    layers = raw.get("layers_to_transform")
    if isinstance(layers, int) and not isinstance(layers, bool):
        layers = [layers]
    if layers is not None and (not isinstance(layers, list) or not layers or len(layers) > 4096
                               or any(not isinstance(i, int) or isinstance(i, bool) or i < 0 for i in layers)):
        raise HearthError(f"{path}: layers_to_transform must be a list of block indices, got {layers!r}")
    return LoraConfig(r=r, alpha=alpha, dropout=0.0, targets=tuple(targets),
                      layers=None if layers is None else tuple(layers)), raw


def read_adapter(directory: str | Path, mc) -> tuple[LoraConfig, dict[tuple[int, str], tuple[torch.Tensor, torch.Tensor]]]:
    """A PEFT LoRA adapter's config and matrices (or a llama.cpp GGUF adapter's: gguf.py), checked against
    a model of config `mc`:
    (layer, PEFT target) -> (lora_A (r, in), lora_B (out, r)), for every layer and every target the config lists.

    Refuses, in one line, an adapter made for another base model: layers the model lacks, or matrices
    whose shapes do not match its projections.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    directory = Path(directory)
    if directory.suffix == ".gguf" and directory.is_file():  # llama.cpp's adapter format
        return read_lora_gguf(directory, mc)
    if not directory.is_dir():
        raise HearthError(f"adapter {directory} is not a directory (expected {CONFIG} + {WEIGHTS}) or a GGUF adapter file")
    cfg, raw = read_adapter_config(directory)
    made_for = raw.get("base_model_name_or_path") or "another model"
    wfile = directory / WEIGHTS
    if not wfile.is_file():
        if (directory / "adapter_model.bin").is_file():
            raise HearthError(f"{directory} holds adapter_model.bin (pickle); hearth reads only {WEIGHTS}")
        raise HearthError(f"{directory} is not a PEFT adapter: {WEIGHTS} is missing")
    try:
        tensors = load_file(str(wfile))
    except (SafetensorError, OSError) as e:
        raise HearthError(f"{wfile} cannot be read ({e})") from None
    n_layers = mc.n_layers
    found: dict[tuple[int, str, str], torch.Tensor] = {}
    for key, t in tensors.items():
        m = _KEY.match(key)
        if not m or m.group(3) not in TARGETS or TARGETS[m.group(3)][2] != m.group(2):
            raise HearthError(f"{wfile}: unexpected tensor {key}; not a LoRA adapter for a Llama model")
        layer = int(m.group(1))
        if layer >= n_layers:
            raise HearthError(f"adapter {directory} does not fit this model: it has layer {layer}, the model has {n_layers} layers "
                              f"(made for {made_for})")
        found[(layer, m.group(3), m.group(4))] = t
    out: dict[tuple[int, str], tuple[torch.Tensor, torch.Tensor]] = {}
    if cfg.layers is not None and cfg.layers[-1] >= n_layers:
        raise HearthError(f"adapter {directory} does not fit this model: its layers_to_transform names layer "
                          f"{cfg.layers[-1]}, the model has {n_layers} layers (made for {made_for})")
    for i in range(n_layers) if cfg.layers is None else cfg.layers:
        for target in cfg.targets:
            pair = []
            for which, shape in expected_shapes(mc, target, cfg.r).items():
                t = found.pop((i, target, which), None)
                if t is None:
                    raise HearthError(f"adapter {directory} lacks layers.{i}.{target}.{which} though its config targets {target}")
                if tuple(t.shape) != shape:
                    raise HearthError(
                        f"adapter {directory} does not fit this model: layers.{i}.{target}.{which} has shape {tuple(t.shape)}, "
                        f"the model needs {shape} (made for {made_for})")
                pair.append(t)
            out[(i, target)] = (pair[0], pair[1])
    if found:
        (i, target, which) = next(iter(found))
        if not cfg.carries(i):
            raise HearthError(f"adapter {directory} has layers.{i}.{target}.{which} but its layers_to_transform leaves "
                              f"layer {i} out")
        raise HearthError(f"adapter {directory} has layers.{i}.{target}.{which} but its config does not list {target} in target_modules")
    return cfg, out
