"""Write a (possibly fine-tuned) model for the ecosystem: a Hugging Face directory or a GGUF file, or into
hearth's store. LoRA adapters are merged and NF4 weights dequantized on the way out; the base model's
license travels with the result (README front matter / GGUF general.license).
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import torch

from hearth.errors import HearthError
from hearth.tune.lora import dense_state_dict
from hearth.weights.gguf_writer import write_gguf
from hearth.weights.hf_writer import write_hf

FORMATS = ("safetensors", "gguf")


def _license(ckpt):
    from hearth.store import license as lic

    try:
        if ckpt.format == "gguf":
            return lic.from_gguf_metadata(ckpt.metadata)
        directory = ckpt.path if ckpt.path.is_dir() else ckpt.path.parent
        return lic.from_hf_dir(directory)
    except Exception:  # an unreadable README is no reason to refuse the export
        return None


def _license_files(ckpt) -> list[Path]:
    from hearth.store.license import hf_license_files

    if ckpt.format != "hf":
        return []
    directory = ckpt.path if ckpt.path.is_dir() else ckpt.path.parent
    return hf_license_files(directory)


def write_model(loaded, fmt: str, path: str | Path, dtype: torch.dtype | None = None, note: str | None = None) -> Path:
    """Write `loaded.model` (adapters merged) as fmt "safetensors" (a HF directory) or "gguf" (one file)."""
    if fmt not in FORMATS:
        raise HearthError(f"--format must be one of {', '.join(FORMATS)}, not {fmt!r}")
    path = Path(path)
    cfg = loaded.model.config
    state = {k: v.detach() for k, v in dense_state_dict(loaded.model).items()}
    if cfg.tie_embeddings:
        state.pop("output.weight", None)
    info = _license(loaded.checkpoint)
    template = None if loaded.chat_template.is_fallback else loaded.chat_template.source
    if fmt == "gguf":
        if path.is_dir():
            raise HearthError(f"{path} is a directory; give the GGUF file's path")
        if path.exists():
            raise HearthError(f"{path} already exists; remove it or choose another output path")
        path.parent.mkdir(parents=True, exist_ok=True)
        meta = {"general.name": f"{cfg.name}"}
        if info is not None and info.id:
            meta["general.license"] = info.id
        qtype = {torch.float16: "F16", torch.bfloat16: "BF16"}.get(dtype, "F32")
        tmp = path.with_name(path.name + ".tmp")
        write_gguf(tmp, cfg, state, loaded.tokenizer, template, qtype=qtype, metadata=meta)
        tmp.replace(path)
        return path
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise HearthError(f"{path} exists and is not an empty directory; choose another output path")
    write_hf(path, cfg, state, loaded.tokenizer, template, dtype=dtype)
    for f in _license_files(loaded.checkpoint):
        shutil.copy2(f, path / f.name)
    front = ["---"] + ([f"license: {info.id}"] if info is not None and info.id else []) + ["library_name: hearth", "---", ""]
    (path / "README.md").write_text("\n".join(front) + (note or f"Exported by hearth from {loaded.checkpoint.path.name}.") + "\n")
    return path


def merge_into_store(loaded, name: str, note: str | None = None):
    """Write the merged model as a HF directory in a temporary place and pull it into the store as `name`."""
    from hearth.store import Store

    store = Store()
    with tempfile.TemporaryDirectory(prefix="hearth-merge-") as tmp:
        d = write_model(loaded, "safetensors", Path(tmp) / name, note=note)
        return store.pull(str(d), name=name)
