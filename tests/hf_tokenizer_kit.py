"""transformers' tokenizer for a GGUF file, built once and cached across modules and runs."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest


def transformers_gguf_tokenizer(config, tmp_path_factory, gguf_path: Path):
    """transformers' tokenizer built from the GGUF. Building it takes ~15 s (transformers reads GGUF
    metadata with gguf.GGUFReader, slow on 49k tokens + 49k merges), so its result is saved with
    save_pretrained under pytest's cache dir, keyed by the file and the transformers version, and
    reloaded (~1 s) by later modules and runs.
    """
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    transformers = pytest.importorskip("transformers")
    from transformers import AutoTokenizer

    st = gguf_path.stat()
    key = f"{gguf_path.stem}-{st.st_size}-{int(st.st_mtime)}-transformers-{transformers.__version__}"
    cache_provider = getattr(config, "cache", None)
    root = cache_provider.mkdir("hearth-transformers-gguf-tokenizer") if cache_provider else tmp_path_factory.getbasetemp()
    cache = Path(root) / key
    if (cache / "tokenizer_config.json").exists():
        return AutoTokenizer.from_pretrained(str(cache))
    tok = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
    partial = Path(root) / f"{key}.partial-{os.getpid()}"
    tok.save_pretrained(str(partial))
    try:
        partial.rename(cache)
    except OSError:  # saved meanwhile by another process
        shutil.rmtree(partial, ignore_errors=True)
    return tok
