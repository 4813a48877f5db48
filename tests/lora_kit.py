"""PEFT LoRA adapters whose updates change a model's output, for tests of adapters served, run and exported."""

from __future__ import annotations

from pathlib import Path

import torch

from hearth.loader import load
from hearth.tune.lora import LoraConfig, apply_lora, lora_modules
from hearth.tune.peft_io import save_adapter


def make_adapter(directory: Path, cfg: LoraConfig, seed: int, std: float, model: str = "smollm2") -> Path:
    """An adapter for `model`. A fresh adapter is a no-op (B = 0): B is drawn with `std` instead, A initialised as
    PEFT does, both seeded."""
    lm = load(model, dtype="float32")
    torch.manual_seed(seed)  # A's Kaiming initialisation
    apply_lora(lm.model, cfg)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in lora_modules(lm.model).values():
            m.lora_B.weight.copy_(torch.randn(m.lora_B.weight.shape, generator=g) * std)
    return save_adapter(lm.model, cfg, directory, base_model=model)
