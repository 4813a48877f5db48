"""Read a GGUF file: model config from metadata, memory-mapped tensors, tokenizer data.

The `gguf` package (maintained with llama.cpp) parses the container and dequantizes every block
type it knows; this module only maps GGUF's conventions onto hearth's.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hearth.config import ModelConfig, RopeScaling
from hearth.errors import ModelFormatError
from hearth.weights import limits
from hearth.weights.gguf_file import GGUFFile, GGUFTensorInfo, StringArray
from hearth.weights.names import gguf_to_hearth
from hearth.weights.types import Checkpoint, GGUFVocab, QuantizedTensor, TokenizerData

SUPPORTED_ARCHS = ("llama",)
# End-of-generation tokens llama.cpp also stops on when they are control tokens.
EOG_TEXTS = ("<|eot_id|>", "<|eom_id|>", "<|im_end|>", "<|end_of_text|>", "<|endoftext|>", "</s>", "<end_of_turn>")
TOKEN_TYPE_CONTROL = 3


def unpermute_rope(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """GGUF stores q/k rows with each head's rotary pairs interleaved (Meta's original layout);
    hearth uses Hugging Face's rotate-half layout. This inverts llama.cpp's convert permutation."""
    rows = w.shape[0]
    return w.reshape(n_heads, rows // n_heads // 2, 2, *w.shape[1:]).transpose(1, 2).reshape(w.shape)


def _check_tensor_types(f: GGUFFile) -> None:
    import gguf
    from gguf import quants

    for qt in {gguf.GGMLQuantizationType(t.type_id) for t in f.tensors.values()}:
        if qt in (gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16):
            continue
        block, type_size = gguf.GGML_QUANT_SIZES[qt]
        try:
            quants.dequantize(np.zeros((1, type_size), dtype=np.uint8), qt)
        except NotImplementedError:
            raise ModelFormatError(
                f"{f.path}: tensor type {qt.name} is not supported; requantize the file to Q8_0, Q4_K or F16 with llama-quantize"
            ) from None


def _config_from_metadata(path: Path, meta: dict[str, Any], tensor_names: set[str], n_vocab: int) -> ModelConfig:
    arch = meta.get("general.architecture")
    if arch not in SUPPORTED_ARCHS:
        raise ModelFormatError(
            f"{path}: architecture {limits.show(arch)} is not supported; hearth runs Llama-family models ({', '.join(SUPPORTED_ARCHS)})"
        )

    def get(key: str, default: Any = None) -> Any:
        v = meta.get(f"{arch}.{key}", default)
        if v is None:
            raise ModelFormatError(f"{path}: metadata key {arch}.{key} is missing; the file is incomplete, re-convert it")
        return v

    def get_int(key: str, default: Any = None) -> int:
        return limits.as_int(str(path), f"{arch}.{key}", get(key, default))

    def get_float(key: str, default: Any = None) -> float:
        return limits.as_float(str(path), f"{arch}.{key}", get(key, default))

    n_heads = get_int("attention.head_count")
    dim = get_int("embedding_length")
    if n_heads <= 0 or dim <= 0:
        raise ModelFormatError(f"{path}: head_count {n_heads} / embedding_length {dim} must be positive; the file is corrupt")
    scaling = None
    stype = meta.get(f"{arch}.rope.scaling.type")
    if stype == "linear":
        scaling = RopeScaling(kind="linear", factor=get_float("rope.scaling.factor"))
    elif stype not in (None, "none"):
        raise ModelFormatError(f"{path}: rope scaling {limits.show(stype)} is not supported (only linear and llama3)")
    name = meta.get("general.name", path.stem)
    try:
        return ModelConfig(
            vocab_size=get_int("vocab_size", n_vocab),
            dim=dim,
            n_layers=get_int("block_count"),
            n_heads=n_heads,
            n_kv_heads=get_int("attention.head_count_kv", n_heads),
            hidden_dim=get_int("feed_forward_length"),
            head_dim=get_int("attention.key_length", dim // n_heads),
            norm_eps=get_float("attention.layer_norm_rms_epsilon", 1e-5),
            rope_theta=get_float("rope.freq_base", 10000.0),
            rope_scaling=scaling,
            max_seq_len=get_int("context_length"),
            tie_embeddings="output.weight" not in tensor_names,
            name=name if isinstance(name, str) else path.stem,
        )
    except (ValueError, TypeError, ZeroDivisionError) as e:
        raise ModelFormatError(f"{path}: bad model metadata ({e}); the file is corrupt, re-convert it") from None


GGUF_KEYS = {  # ModelConfig field -> GGUF key (after "<arch>."), for plausibility messages
    "n_layers": "block_count", "dim": "embedding_length", "hidden_dim": "feed_forward_length",
    "n_heads": "attention.head_count", "n_kv_heads": "attention.head_count_kv", "head_dim": "attention.key_length",
    "vocab_size": "vocab_size", "max_seq_len": "context_length",
}


def _array(path: Path, meta: dict[str, Any], key: str, kind: str) -> Any:
    """A tokenizer array as the file stores it, checked for its type: "str" (StringArray), "int" or "float" (numpy)."""
    v = meta.get(key)
    if v is None:
        return None
    ok = isinstance(v, StringArray) if kind == "str" else (
        isinstance(v, np.ndarray) and (np.issubdtype(v.dtype, np.integer) if kind == "int" else np.issubdtype(v.dtype, np.number)))
    if not ok:
        raise ModelFormatError(f"{path}: {key} is {limits.show(v)} of the wrong type (an array of {kind}s expected); the file is corrupt")
    return v


def _tokenizer_from_metadata(path: Path, meta: dict[str, Any]) -> TokenizerData:
    tokens = _array(path, meta, "tokenizer.ggml.tokens", "str")
    if tokens is None or len(tokens) == 0:
        raise ModelFormatError(f"{path} has no tokenizer (tokenizer.ggml.tokens); re-convert it with its tokenizer")
    n = len(tokens)
    if n > limits.MAX_VOCAB:
        raise ModelFormatError(f"{path}: tokenizer.ggml.tokens holds {n} tokens (limit {limits.MAX_VOCAB}); the file is corrupt")
    tokens = tokens.tolist()
    types = _array(path, meta, "tokenizer.ggml.token_type", "int")
    types = [1] * n if types is None else types.tolist()
    scores = _array(path, meta, "tokenizer.ggml.scores", "float")
    merges = _array(path, meta, "tokenizer.ggml.merges", "str")
    for key, arr in (("token_type", types), ("scores", scores)):
        if arr is not None and len(arr) != n:
            raise ModelFormatError(f"{path}: tokenizer.ggml.{key} has {len(arr)} entries for {n} tokens; the file is corrupt")
    s = functools.partial(_opt_str, path, meta)
    vocab = GGUFVocab(
        model=s("tokenizer.ggml.model", "gpt2"),
        pre=s("tokenizer.ggml.pre", "default"),
        tokens=tokens,
        token_types=types,
        merges=merges.tolist() if merges is not None else [],
        scores=scores.astype(float).tolist() if scores is not None else [],
        add_space_prefix=_opt_bool(path, meta, "tokenizer.ggml.add_space_prefix", True),
    )

    def token_id(key: str) -> int | None:
        v = meta.get(f"tokenizer.ggml.{key}")
        if v is None:
            return None
        i = limits.as_int(str(path), f"tokenizer.ggml.{key}", v)
        if key in ("padding_token_id", "unknown_token_id") and not 0 <= i < n:
            return None  # converters write -1 (as u32) for "none"; nothing depends on these
        if not 0 <= i < n:
            raise ModelFormatError(f"{path}: tokenizer.ggml.{key} = {i} is outside the vocabulary of {n} tokens; the file is corrupt")
        return i

    bos, eos, pad = token_id("bos_token_id"), token_id("eos_token_id"), token_id("padding_token_id")
    eos_ids = [eos] if eos is not None else []
    eos_ids += [i for i in (token_id("eot_token_id"), token_id("eom_token_id")) if i is not None]
    for i, (text, ttype) in enumerate(zip(tokens, types)):
        if ttype == TOKEN_TYPE_CONTROL and text in EOG_TEXTS:
            eos_ids.append(i)
    add_bos = _opt_bool(path, meta, "tokenizer.ggml.add_bos_token", None)
    if add_bos is None:  # llama.cpp's default: SentencePiece vocabularies add BOS, byte-level BPE ones do not
        add_bos = vocab.model == "llama"
    special = {}
    for name, key in (("bos_token", "bos_token_id"), ("eos_token", "eos_token_id"), ("unk_token", "unknown_token_id"), ("pad_token", "padding_token_id")):
        idx = token_id(key)
        if idx is not None:
            special[name] = tokens[idx]
    template = meta.get("tokenizer.chat_template")
    return TokenizerData(
        gguf=vocab,
        bos_id=bos,
        eos_ids=tuple(dict.fromkeys(eos_ids)),
        pad_id=pad,
        add_bos=bool(add_bos),
        add_eos=_opt_bool(path, meta, "tokenizer.ggml.add_eos_token", False),
        chat_template=None if template is None else limits.as_str(str(path), "tokenizer.chat_template", template),
        special_tokens=special,
    )


def _opt_bool(path: Path, meta: dict[str, Any], key: str, default: bool | None) -> bool | None:
    v = meta.get(key)
    return default if v is None else limits.as_bool(str(path), key, v)


def _opt_str(path: Path, meta: dict[str, Any], key: str, default: str) -> str:
    return limits.as_str(str(path), key, meta.get(key, default))


def dequantize(f: GGUFFile, info: GGUFTensorInfo) -> torch.Tensor:
    """The tensor as float (F32/F16 as stored, block formats dequantized to fp32), in numpy shape."""
    import gguf
    from gguf import quants

    raw = f.data(info)
    qt = gguf.GGMLQuantizationType(info.type_id)
    if qt == gguf.GGMLQuantizationType.F32:
        arr = raw.view(np.float32).reshape(info.shape)
    elif qt == gguf.GGMLQuantizationType.F16:
        arr = raw.view(np.float16).reshape(info.shape)
    else:
        block, type_size = gguf.GGML_QUANT_SIZES[qt]
        rows = int(np.prod(info.shape[:-1])) if len(info.shape) > 1 else 1
        arr = quants.dequantize(raw.reshape(rows, -1), qt).reshape(info.shape)
    return torch.from_numpy(np.array(arr))  # own copy: the mmap stays read-only


# Formats hearth's native kernels multiply by in place (hearth/kernels): GGML type id -> name. F16 counts as
# blocks of 32 values (64 bytes), so its rows must hold a multiple of 32.
BLOCK_TYPES = {1: "F16", 2: "Q4_0", 3: "Q4_1", 8: "Q8_0"}


def _quantized(f: GGUFFile, info: GGUFTensorInfo, n_rot: int) -> QuantizedTensor:
    """The raw blocks as a (rows, row_bytes) uint8 tensor over the memory map; q/k rows un-permuted (a copy)."""
    rows, cols = info.shape
    raw = f.data(info).reshape(rows, -1)
    with warnings.catch_warnings():  # read-only mmap: nothing ever writes to these weights
        warnings.simplefilter("ignore", UserWarning)
        data = torch.from_numpy(raw)
    if n_rot:  # whole rows move, so the permutation works on blocks as on floats
        data = unpermute_rope(data, n_rot).contiguous()
    return QuantizedTensor(data, info.type_id, BLOCK_TYPES[info.type_id], (rows, cols))


# Arrays outside the tokenizer are handed on as Python lists only when small: a large one (which no Llama key
# is) stays out of Checkpoint.metadata, so it is never expanded into a list (~9x its bytes) nor copied on.
MAX_LISTED_ARRAY = 4096


def _plain_metadata(meta: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for k, v in meta.items():
        if k.startswith("tokenizer.ggml."):
            continue
        if isinstance(v, (np.ndarray, StringArray)):
            if len(v) > MAX_LISTED_ARRAY:
                continue
            v = v.tolist()
        out[k] = v
    return out


def read_gguf(path: Path) -> Checkpoint:
    """Open a GGUF file. Tensors stay memory-mapped until a LazyTensor is called."""
    f = GGUFFile(path)
    meta = f.metadata
    tokenizer = _tokenizer_from_metadata(path, meta)
    n_vocab = len(tokenizer.gguf.tokens)
    config = _config_from_metadata(path, meta, set(f.tensors), n_vocab)
    arch = meta["general.architecture"]
    keys = {k: f"{arch}.{v}" for k, v in GGUF_KEYS.items()}
    limits.check_config(path, config, keys, file_bytes=len(f.mm), n_tensors=len(f.tensors))
    _check_tensor_types(f)

    tensors, types, quantized = {}, {}, {}
    for info in f.tensors.values():
        if info.name == "rope_freqs.weight":  # llama3 rope scaling baked in as per-frequency divisors
            if math.prod(info.shape) != config.head_dim // 2:  # one divisor per rotary frequency
                raise ModelFormatError(f"{path}: rope_freqs.weight has shape {info.shape}, expected ({config.head_dim // 2},); "
                                       "the file is corrupt or inconsistent")
            factors = dequantize(f, info).float().tolist()
            config = dataclasses.replace(config, rope_freq_factors=tuple(factors))
            continue
        hname = gguf_to_hearth(info.name)
        if hname is None:
            raise ModelFormatError(f"{path}: unexpected tensor {info.name!r}; this is not a plain Llama model")
        n_rot = 0
        if hname.endswith("attention.wq.weight"):
            n_rot = config.n_heads
        elif hname.endswith("attention.wk.weight"):
            n_rot = config.n_kv_heads
        if n_rot and (len(info.shape) != 2 or info.shape[0] % (2 * n_rot)):  # else un-permuting fails inside torch
            raise ModelFormatError(f"{path}: tensor {info.name} has shape {info.shape}, which does not split into "
                                   f"{n_rot} heads of rotary pairs; the file is corrupt or inconsistent")

        def load(info=info, n_rot=n_rot) -> torch.Tensor:
            w = dequantize(f, info)
            return unpermute_rope(w, n_rot) if n_rot else w

        tensors[hname] = load
        types[hname] = f.type_name(info)
        if info.type_id in BLOCK_TYPES and len(info.shape) == 2 and info.shape[1] % 32 == 0:
            quantized[hname] = functools.partial(_quantized, f, info, n_rot)
    return Checkpoint(
        path=path,
        format="gguf",
        config=config,
        tensors=tensors,
        tokenizer=tokenizer,
        metadata=_plain_metadata(meta),
        tensor_types=types,
        quantized=quantized,
    )
