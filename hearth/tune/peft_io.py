"""A model's LoRA adapter to and from PEFT's on-disk format (the format itself: hearth/weights/adapters/peft.py).

save_adapter gathers the LoRALinear modules' matrices and writes them; load_adapter reads an adapter (PEFT
directory or llama.cpp GGUF file), wraps the model's target projections and loads the matrices into them.
"""

from __future__ import annotations

from pathlib import Path

import torch

from hearth.errors import HearthError
from hearth.tune.lora import TARGETS, LoraConfig, apply_lora, lora_modules
from hearth.weights.adapters.peft import read_adapter, write_adapter

_ATTR_TO_TARGET = {f"{sub}.{attr}": target for target, (sub, attr, _) in TARGETS.items()}


def save_adapter(model, cfg: LoraConfig, directory: str | Path, base_model: str | None = None, dtype: torch.dtype | None = None) -> Path:
    """Write the model's adapter as a PEFT LoRA adapter directory (atomic per file)."""
    mods = lora_modules(model)
    if not mods:
        raise HearthError("the model carries no LoRA adapter to save")
    weights = {}
    for path, m in mods.items():  # layers.N.attention.wq
        _, layer, sub, attr = path.split(".")
        weights[(int(layer), _ATTR_TO_TARGET[f"{sub}.{attr}"])] = (m.lora_A.weight, m.lora_B.weight)
    return write_adapter(directory, cfg, weights, base_model=base_model, dtype=dtype)


def load_adapter(model, directory: str | Path, dtype: torch.dtype = torch.float32):
    """Wrap `model`'s target projections and load a PEFT LoRA adapter into them (unmerged); see read_adapter."""
    cfg, weights = read_adapter(directory, model.config)
    apply_lora(model, cfg, dtype)
    mods = lora_modules(model)
    for (i, target), (a, b) in weights.items():
        parent, attr, _ = TARGETS[target]
        mod = mods[f"layers.{i}.{parent}.{attr}"]
        with torch.no_grad():
            mod.lora_A.weight.copy_(a.to(mod.lora_A.weight.dtype))
            mod.lora_B.weight.copy_(b.to(mod.lora_B.weight.dtype))
    for p in model.parameters():
        p.requires_grad_(False)
    return model
