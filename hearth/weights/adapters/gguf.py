"""LoRA adapters as llama.cpp's GGUF adapter files (`llama-cli --lora adapter.gguf`, llama-cpp-python's `lora_path`),
written and read the way llama.cpp's `convert_lora_to_gguf.py` and `src/llama-adapter.cpp` do:

    general.architecture = "llama"   general.type = "adapter"   adapter.type = "lora"   adapter.lora.alpha = alpha
    blk.N.attn_q.weight.lora_a   A (r, in)        blk.N.attn_q.weight.lora_b   B (out, r)      (F32 here)

llama.cpp scales an update by alpha / r, as PEFT does. Its q and k weights keep each head's rotary pairs interleaved
(Meta's layout) where Hugging Face's and hearth's rotate them by halves; an update's output rows follow its weight's,
so B of q_proj / k_proj is permuted like those weights on the way out and back on the way in (A is untouched).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from hearth.errors import HearthError
from hearth.weights.adapters.targets import TARGETS, LoraConfig, expected_shapes
from hearth.weights.gguf_file import GGUFFile
from hearth.weights.gguf_reader import unpermute_rope
from hearth.weights.gguf_writer import hearth_to_gguf, permute_rope
from hearth.weights.names import gguf_to_hearth

_ATTR_TO_TARGET = {f"{sub}.{attr}": target for target, (sub, attr, _) in TARGETS.items()}


def _rope_heads(target: str, mc) -> int | None:
    return {"q_proj": mc.n_heads, "k_proj": mc.n_kv_heads}.get(target)


def _gguf_name(layer: int, target: str) -> str:
    sub, attr, _ = TARGETS[target]
    return hearth_to_gguf(f"layers.{layer}.{sub}.{attr}.weight")


def write_lora_gguf(path: str | Path, cfg: LoraConfig, weights: dict[tuple[int, str], tuple[torch.Tensor, torch.Tensor]],
                    mc, name: str | None = None, metadata: dict[str, str | int] | None = None) -> Path:
    """Write an adapter (peft.read_adapter's weights for a model of config `mc`) as one GGUF file, atomically, with
    `metadata` (strings and integers: llama.cpp's general.base_model.*, hearth.lineage) beside its own keys."""
    import gguf

    path = Path(path)
    if path.is_dir():
        raise HearthError(f"{path} is a directory; give the adapter GGUF file's path")
    if path.exists():
        raise HearthError(f"{path} already exists; remove it or choose another output path")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    writer = gguf.GGUFWriter(str(tmp), "llama")
    try:
        writer.add_type("adapter")
        writer.add_string("adapter.type", "lora")
        writer.add_float32("adapter.lora.alpha", float(cfg.alpha))
        if name:
            writer.add_name(name)
        for key, value in (metadata or {}).items():
            if isinstance(value, int):
                writer.add_uint32(key, value)
            else:
                writer.add_string(key, str(value))
        for (layer, target), (a, b) in sorted(weights.items()):
            heads = _rope_heads(target, mc)
            b = b.detach().to("cpu", torch.float32)
            if heads:
                b = permute_rope(b, heads)
            base = _gguf_name(layer, target)
            writer.add_tensor(f"{base}.lora_a", np.ascontiguousarray(a.detach().to("cpu", torch.float32).numpy()))
            writer.add_tensor(f"{base}.lora_b", np.ascontiguousarray(b.numpy()))
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
    finally:
        writer.close()
    tmp.replace(path)
    return path


def _field(f, key: str):
    return f.metadata.get(key)


def read_lora_gguf(path: str | Path, mc) -> tuple[LoraConfig, dict[tuple[int, str], tuple[torch.Tensor, torch.Tensor]]]:
    """A llama.cpp GGUF LoRA adapter as (config, {(layer, PEFT target): (A, B)}) in hearth's layout, checked against a
    model of config `mc`. One rank and one set of targets across layers (what PEFT and convert_lora_to_gguf make)."""
    import gguf

    path = Path(path)
    # hearth's own parser, not gguf.GGUFReader: an adapter file is as untrusted as a model file, and this one bounds
    # every count, length and tensor extent by the file's size before anything is allocated
    reader = GGUFFile(path)
    if _field(reader, "general.type") != "adapter" or _field(reader, "adapter.type") != "lora":
        raise HearthError(f"{path} is not a GGUF LoRA adapter (general.type {_field(reader, 'general.type')!r}, "
                          f"adapter.type {_field(reader, 'adapter.type')!r})")
    arch = _field(reader, "general.architecture")
    if arch != "llama":
        raise HearthError(f"{path} adapts a {arch!r} model; hearth runs llama models")
    pairs: dict[tuple[int, str], dict[str, torch.Tensor]] = {}
    for t in reader.tensors.values():
        base, _, which = t.name.rpartition(".")
        hearth_name = gguf_to_hearth(base) if which in ("lora_a", "lora_b") else None
        target = _ATTR_TO_TARGET.get(".".join(hearth_name.split(".")[2:4])) if hearth_name else None
        if target is None:
            raise HearthError(f"{path}: tensor {t.name} is not a LoRA update of a Llama projection")
        qtype = gguf.GGMLQuantizationType(t.type_id)
        if qtype not in (gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16, gguf.GGMLQuantizationType.BF16):
            raise HearthError(f"{path}: tensor {t.name} is {qtype.name}; hearth reads F32, F16 and BF16 adapters")
        data = gguf.quants.dequantize(reader.data(t), qtype).reshape(t.shape)
        layer = int(hearth_name.split(".")[1])
        if layer >= mc.n_layers:
            raise HearthError(f"adapter {path} does not fit this model: it has layer {layer}, the model has {mc.n_layers} layers")
        pairs.setdefault((layer, target), {})[which] = torch.from_numpy(np.array(data, dtype=np.float32))
    if not pairs:
        raise HearthError(f"{path} holds no LoRA tensors")
    ranks = {p["lora_a"].shape[0] for p in pairs.values() if "lora_a" in p}
    if len(ranks) != 1:
        raise HearthError(f"{path}: its updates have ranks {sorted(ranks)}; hearth needs one rank per adapter")
    r = ranks.pop()
    alpha = _field(reader, "adapter.lora.alpha")
    if alpha is not None and (isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not math.isfinite(alpha)):
        raise HearthError(f"{path}: adapter.lora.alpha = {str(alpha)[:40]!r} is not a finite number")
    alpha = float(alpha) if alpha else float(r)  # llama.cpp: no alpha (or 0) means scale 1
    targets = sorted({target for _, target in pairs}, key=list(TARGETS).index)
    cfg = LoraConfig(r=r, alpha=alpha, targets=tuple(targets))
    out: dict[tuple[int, str], tuple[torch.Tensor, torch.Tensor]] = {}
    for layer in range(mc.n_layers):
        for target in targets:
            p = pairs.get((layer, target), {})
            if set(p) != {"lora_a", "lora_b"}:
                raise HearthError(f"adapter {path} lacks layers.{layer}.{target}'s "
                                  f"{'lora_a' if 'lora_a' not in p else 'lora_b'} (hearth needs every layer of a target)")
            for which, shape in expected_shapes(mc, target, r).items():
                got = tuple(p["lora_a" if which == "lora_A" else "lora_b"].shape)
                if got != shape:
                    raise HearthError(f"adapter {path} does not fit this model: layers.{layer}.{target}.{which} has shape "
                                      f"{got}, the model needs {shape}")
            b = p["lora_b"]
            heads = _rope_heads(target, mc)
            out[(layer, target)] = (p["lora_a"], unpermute_rope(b, heads).contiguous() if heads else b)
    return cfg, out
