"""`--guard default|NAME|PATH`: which model classifies, and with which adapter.

- `default`: hearth's own guard, shipped in this package (hearth/guard/default: a LoRA adapter of SmolLM2-135M
  made by `hearth guard train`, with its recipe);
- a directory holding `adapter_config.json`: a guard adapter (from `hearth guard train -o DIR`), on the base its
  recipe.json names (else the default model);
- anything else: a whole guard model as `hearth run` takes one (a GGUF file, an HF directory, a store name), such
  as Llama Guard 3 1B, read with its own chat template.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from hearth.errors import HearthError

DEFAULT_DIR = Path(__file__).parent / "default"
DEFAULT_BASE = "smollm2"
ADAPTER_NAME = "guard"  # the name the engine serves the guard adapter under


@dataclass(frozen=True)
class GuardSource:
    base: str  # a model reference hearth.loader.load takes
    adapter: Path | None  # a PEFT LoRA directory applied on base; None: base is the guard
    label: str  # for logs and reports

    def describe(self) -> str:
        return f"{self.label} (adapter on {self.base})" if self.adapter else self.label


def _base_of(adapter: Path) -> str:
    recipe = adapter / "recipe.json"
    if recipe.is_file() and recipe.stat().st_size < (1 << 20):
        try:
            base = json.loads(recipe.read_text(encoding="utf-8")).get("base")
        except (ValueError, UnicodeDecodeError):
            raise HearthError(f"{recipe} is not valid JSON") from None
        if isinstance(base, str) and base:
            return base
    return DEFAULT_BASE


def resolve_guard(ref: str | None) -> GuardSource:
    if ref in (None, "", "default"):
        if not (DEFAULT_DIR / "adapter_config.json").is_file():
            raise HearthError("the default guard is not in this install (hearth/guard/default); make one with "
                              "`hearth guard train -o DIR` and pass --guard DIR")
        return GuardSource(_base_of(DEFAULT_DIR), DEFAULT_DIR, "default")
    p = Path(ref)
    if p.is_dir() and (p / "adapter_config.json").is_file():
        return GuardSource(_base_of(p), p, str(p))
    return GuardSource(ref, None, ref)
