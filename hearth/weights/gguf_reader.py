"""Read a GGUF file: model config from metadata, memory-mapped tensors, tokenizer data.

The `gguf` package (maintained with llama.cpp) parses the container and dequantizes every block
type it knows; this module only maps GGUF's conventions onto hearth's.
"""

from __future__ import annotations

import dataclasses
import functools
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hearth.config import ModelConfig, RopeScaling
from hearth.errors import ModelFormatError
from hearth.weights.gguf_file import GGUFFile, GGUFTensorInfo
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
            f"{path}: architecture {arch!r} is not supported; hearth runs Llama-family models ({', '.join(SUPPORTED_ARCHS)})"
        )

    def get(key: str, default: Any = None) -> Any:
        v = meta.get(f"{arch}.{key}", default)
        if v is None:
            raise ModelFormatError(f"{path}: metadata key {arch}.{key} is missing; the file is incomplete, re-convert it")
        return v

    n_heads = int(get("attention.head_count"))
    dim = int(get("embedding_length"))
    if n_heads <= 0 or dim <= 0:
        raise ModelFormatError(f"{path}: head_count {n_heads} / embedding_length {dim} must be positive; the file is corrupt")
    scaling = None
    stype = meta.get(f"{arch}.rope.scaling.type")
    if stype == "linear":
        scaling = RopeScaling(kind="linear", factor=float(get("rope.scaling.factor")))
    elif stype not in (None, "none"):
        raise ModelFormatError(f"{path}: rope scaling {stype!r} is not supported (only linear and llama3)")
    try:
        return _build_config(path, meta, arch, get, n_heads, dim, scaling, tensor_names, n_vocab)
    except (ValueError, TypeError, ZeroDivisionError) as e:
        raise ModelFormatError(f"{path}: bad model metadata ({e}); the file is corrupt, re-convert it") from None


def _build_config(path, meta, arch, get, n_heads, dim, scaling, tensor_names, n_vocab) -> ModelConfig:
    return ModelConfig(
        vocab_size=int(meta.get(f"{arch}.vocab_size", n_vocab)),
        dim=dim,
        n_layers=int(get("block_count")),
        n_heads=n_heads,
        n_kv_heads=int(meta.get(f"{arch}.attention.head_count_kv", n_heads)),
        hidden_dim=int(get("feed_forward_length")),
        head_dim=int(meta.get(f"{arch}.attention.key_length", dim // n_heads)),
        norm_eps=float(meta.get(f"{arch}.attention.layer_norm_rms_epsilon", 1e-5)),
        rope_theta=float(meta.get(f"{arch}.rope.freq_base", 10000.0)),
        rope_scaling=scaling,
        max_seq_len=int(get("context_length")),
        tie_embeddings="output.weight" not in tensor_names,
        name=str(meta.get("general.name", path.stem)),
    )


def _tokenizer_from_metadata(path: Path, meta: dict[str, Any]) -> TokenizerData:
    tokens = meta.get("tokenizer.ggml.tokens")
    if not tokens:
        raise ModelFormatError(f"{path} has no tokenizer (tokenizer.ggml.tokens); re-convert it with its tokenizer")
    types = list(meta.get("tokenizer.ggml.token_type", [1] * len(tokens)))
    vocab = GGUFVocab(
        model=str(meta.get("tokenizer.ggml.model", "gpt2")),
        pre=str(meta.get("tokenizer.ggml.pre", "default")),
        tokens=list(tokens),
        token_types=types,
        merges=list(meta.get("tokenizer.ggml.merges", [])),
        scores=list(meta.get("tokenizer.ggml.scores", [])),
        add_space_prefix=bool(meta.get("tokenizer.ggml.add_space_prefix", True)),
    )
    bos = meta.get("tokenizer.ggml.bos_token_id")
    eos = meta.get("tokenizer.ggml.eos_token_id")
    eos_ids = [int(eos)] if eos is not None else []
    for key in ("tokenizer.ggml.eot_token_id", "tokenizer.ggml.eom_token_id"):
        if meta.get(key) is not None:
            eos_ids.append(int(meta[key]))
    for i, (text, ttype) in enumerate(zip(tokens, types)):
        if ttype == TOKEN_TYPE_CONTROL and text in EOG_TEXTS:
            eos_ids.append(i)
    add_bos = meta.get("tokenizer.ggml.add_bos_token")
    if add_bos is None:  # llama.cpp's default: SentencePiece vocabularies add BOS, byte-level BPE ones do not
        add_bos = vocab.model == "llama"
    special = {}
    for name, key in (("bos_token", "bos_token_id"), ("eos_token", "eos_token_id"), ("unk_token", "unknown_token_id"), ("pad_token", "padding_token_id")):
        idx = meta.get(f"tokenizer.ggml.{key}")
        if idx is not None and 0 <= int(idx) < len(tokens):
            special[name] = tokens[int(idx)]
    pad = meta.get("tokenizer.ggml.padding_token_id")
    return TokenizerData(
        gguf=vocab,
        bos_id=int(bos) if bos is not None else None,
        eos_ids=tuple(dict.fromkeys(eos_ids)),
        pad_id=int(pad) if pad is not None else None,
        add_bos=bool(add_bos),
        add_eos=bool(meta.get("tokenizer.ggml.add_eos_token", False)),
        chat_template=meta.get("tokenizer.chat_template"),
        special_tokens=special,
    )


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


def read_gguf(path: Path) -> Checkpoint:
    """Open a GGUF file. Tensors stay memory-mapped until a LazyTensor is called."""
    f = GGUFFile(path)
    meta = f.metadata
    tokenizer = _tokenizer_from_metadata(path, meta)
    n_vocab = len(meta.get("tokenizer.ggml.tokens") or [])
    config = _config_from_metadata(path, meta, set(f.tensors), n_vocab)
    _check_tensor_types(f)

    tensors, types, quantized = {}, {}, {}
    for info in f.tensors.values():
        if info.name == "rope_freqs.weight":  # llama3 rope scaling baked in as per-frequency divisors
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
        metadata={k: v for k, v in meta.items() if not k.startswith("tokenizer.ggml.")},
        tensor_types=types,
        quantized=quantized,
    )
