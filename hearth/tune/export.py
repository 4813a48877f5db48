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
from hearth.tune.lora import dense_state_dict, lora_modules
from hearth.store.common import refuse_overwrite, replacing
from hearth.weights.gguf_writer import QTYPES, write_gguf
from hearth.weights.hf_writer import write_hf

FORMATS = ("safetensors", "gguf")
QUANTS = ("auto", "q8_0", "q4_1", "q4_0", "f16", "bf16", "f32")  # --quant of a GGUF export


def _writable(t: str) -> str:
    """The GGUF type hearth writes for a tensor the base stores as `t`: the same where the writer has it (Q8_0, Q4_0,
    Q4_1, Q5_0, Q5_1, F16, BF16, F32); a K-quant or i-quant as the plain block type of about its bits."""
    t = t.upper()
    if t in QTYPES:
        return t
    if t.startswith(("Q6", "Q8")):
        return "Q8_0"
    if t.startswith("Q5"):
        return "Q5_1"
    if t.startswith(("Q2", "Q3", "Q4", "IQ", "TQ")):
        return "Q4_1"
    return "F16"


def _coarse(t: str) -> bool:
    """A type whose step is coarser than a LoRA update: 5 bits or fewer a weight."""
    return t.upper().startswith(("Q2", "Q3", "Q4", "Q5", "IQ", "TQ"))


def gguf_types(ckpt, quant: str = "auto", changed: frozenset[str] | set[str] = frozenset()) -> tuple[str, dict[str, str] | None]:
    """(the type of the 2-D weights, per-tensor exceptions) a GGUF export is written in. auto: the base checkpoint's
    own types, tensor by tensor (hearth/quantize.py's mix for a hearth-quantized base: embeddings Q8_0 beside Q4_1),
    where hearth can write them (`_writable`), except that the weights in `changed` (an adapter merged into them) are
    Q8_0 where the base holds them in 5 bits or fewer: the base's weights sit exactly on its 4-bit grid and a LoRA
    update is mostly smaller than half a step, so re-quantized to the base's type most weights round back to the
    base's values (on smollm2 + a LoRA adapter, 10% of the adapter's effect on the logits was left; Q8_0 kept it all).
    q8_0/q4_1/q4_0: that type everywhere, the embedding kept 8-bit for 4-bit as `hearth quantize` does;
    f16/bf16/f32: unquantized."""
    from hearth.quantize import keep_embeddings_8bit

    quant = quant.lower()
    if quant not in QUANTS:
        raise HearthError(f"unknown --quant {quant!r}; choose one of {', '.join(QUANTS)}")
    if quant != "auto":
        qtype = quant.upper()
        return qtype, keep_embeddings_8bit(qtype)
    types = {n: "Q8_0" if n in changed and _coarse(t) else _writable(t)
             for n, t in ckpt.tensor_types.items() if n.endswith(".weight") and "norm" not in n}
    if not types:
        return "F32", None
    counts: dict[str, int] = {}
    for t in types.values():
        counts[t] = counts.get(t, 0) + 1
    return max(counts, key=counts.get), types


def _license(ckpt):
    from hearth.store.lineage import license_info

    return license_info(ckpt)  # an unreadable README is no reason to refuse the export


def _license_files(ckpt) -> list[Path]:
    from hearth.store.license import hf_license_files

    if ckpt.format != "hf":
        return []
    directory = ckpt.path if ckpt.path.is_dir() else ckpt.path.parent
    return hf_license_files(directory)


def adapted_weights(model) -> frozenset[str]:
    """The state-dict names of the weights a LoRA adapter on `model` changes once merged."""
    return frozenset(f"{name}.weight" for name in lora_modules(model))


def write_model(loaded, fmt: str, path: str | Path, dtype: torch.dtype | None = None, note: str | None = None,
                quant: str = "auto", force: bool = False, metadata: dict | None = None,
                lineage: dict | None = None) -> Path:
    """Write `loaded.model` (adapters merged) as fmt "safetensors" (a HF directory of `dtype`, default fp32) or "gguf"
    (one file, its weights in `quant`'s types: gguf_types; auto with a `dtype` means that float type). An existing
    `path` is replaced only with `force` (a directory only if it holds a model); the result is written beside it and
    renamed into place. `lineage` (hearth/store/lineage.py) goes into the GGUF's metadata or the directory's
    lineage.json."""
    from hearth.store import lineage as L

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
        refuse_overwrite(path, force)
        path.parent.mkdir(parents=True, exist_ok=True)
        meta = {"general.name": f"{cfg.name}"}
        if info is not None and info.id:
            meta["general.license"] = info.id
        meta.update(L.gguf_metadata(lineage) if lineage is not None else {})
        meta.update(metadata or {})  # a release's: general.base_model.*, general.license*
        if quant == "auto" and dtype is not None:
            qtype, types = {torch.float16: "F16", torch.bfloat16: "BF16"}.get(dtype, "F32"), None
        else:
            qtype, types = gguf_types(loaded.checkpoint, quant, adapted_weights(loaded.model))
        with replacing(path, ".gguf") as tmp:
            write_gguf(tmp, cfg, state, loaded.tokenizer, template, qtype=qtype, metadata=meta, tensor_qtypes=types)
        return path
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        refuse_overwrite(path, force)
        if not path.is_dir() or not (path / "config.json").is_file():
            raise HearthError(f"-o {path} exists and holds no model (no config.json); --force replaces only a model "
                              "directory or a file: choose another output path")
    with replacing(path) as tmp:
        write_hf(tmp, cfg, state, loaded.tokenizer, template, dtype=dtype)
        for f in _license_files(loaded.checkpoint):
            shutil.copy2(f, tmp / f.name)
        if lineage is not None:
            (tmp / L.FILE).write_text(L.to_json(lineage), encoding="utf-8")
        front = ["---"] + ([f"license: {info.id}"] if info is not None and info.id else []) + ["library_name: hearth", "---", ""]
        (tmp / "README.md").write_text("\n".join(front) + (note or f"Exported by hearth from {loaded.checkpoint.path.name}.") + "\n")
    return path


def merge_into_store(loaded, name: str, note: str | None = None, force: bool = True, lineage: dict | None = None):
    """Write the merged model as a HF directory in a temporary place and pull it into the store as `name` (replacing
    a model of that name unless `force` is False: `hearth tune --merge` has trained for minutes by then), with
    `lineage` as its store layer."""
    from hearth.store import Store

    store = Store()
    with tempfile.TemporaryDirectory(prefix="hearth-merge-") as tmp:
        d = write_model(loaded, "safetensors", Path(tmp) / name, note=note, lineage=lineage)
        return store.pull(str(d), name=name, force=force)


def describe_gguf(path: Path, base, quant: str = "auto") -> str:
    """`gguf, Q4_1 weights as the base's, 98.4 MB (base 98.4 MB)`: what an export wrote, beside its base checkpoint."""
    from hearth.quantize import file_bytes
    from hearth.store.common import human_bytes
    from hearth.weights import open_checkpoint

    ckpt = open_checkpoint(path)
    counts: dict[str, int] = {}
    for name, t in ckpt.tensor_types.items():
        if name.endswith(".weight") and "norm" not in name:
            counts[t] = counts.get(t, 0) + 1
    mix = " + ".join(f"{n} {t}" for t, n in sorted(counts.items(), key=lambda kv: -kv[1]))
    same = ckpt.quantization == base.quantization
    note = "" if same or quant != "auto" or not _coarse(base.quantization) else (
        f"; the adapter's weights as Q8_0: re-quantized to the base's {base.quantization} an update mostly rounds away "
        f"(--quant {base.quantization.lower()} writes that anyway)")
    return (f"gguf, weights {mix} (the base: {base.quantization}), {human_bytes(file_bytes(path))} "
            f"(base {human_bytes(file_bytes(base.path))}){note}")
