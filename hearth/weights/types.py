"""The contract every reader fulfils, whatever the file format."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from hearth.config import ModelConfig
from hearth.errors import ModelFormatError

# A tensor that is read (and dequantized) only when called, so loading can stream with a progress
# bar and convert each tensor to the target dtype before the next is read.
LazyTensor = Callable[[], torch.Tensor]


@dataclass
class QuantizedTensor:
    """A 2-D weight kept in its GGUF block format: `data` is uint8 (rows, row_bytes), usually a view of the mmap."""

    data: torch.Tensor
    type_id: int  # GGML type id (F16=1, Q4_0=2, Q4_1=3, Q8_0=8)
    type_name: str
    shape: tuple[int, int]  # logical (rows, cols)


@dataclass
class GGUFVocab:
    """A tokenizer as GGUF stores it (`tokenizer.ggml.*`)."""

    model: str  # "gpt2" (byte-level BPE) | "llama" (SentencePiece BPE)
    pre: str  # pre-tokenizer name, e.g. "smollm", "llama-bpe", "default"
    tokens: list[str]
    token_types: list[int]
    merges: list[str]
    scores: list[float]
    add_space_prefix: bool = True


@dataclass
class TokenizerData:
    """Everything needed to build the tokenizer: exactly one of `tokenizer_json` / `gguf` is set."""

    tokenizer_json: Path | None = None
    gguf: GGUFVocab | None = None
    bos_id: int | None = None
    eos_ids: tuple[int, ...] = ()
    pad_id: int | None = None
    add_bos: bool | None = None  # None: decide from the tokenizer's own post-processor
    add_eos: bool = False
    chat_template: str | None = None
    special_tokens: dict[str, str] = field(default_factory=dict)  # e.g. bos_token -> "<s>" for templates


@dataclass
class Checkpoint:
    """A model on disk, opened but not loaded: shape, lazily read tensors, tokenizer, metadata."""

    path: Path
    format: str  # "gguf" | "hf"
    config: ModelConfig
    tensors: dict[str, LazyTensor]  # hearth state-dict names
    tokenizer: TokenizerData
    metadata: dict[str, Any] = field(default_factory=dict)
    tensor_types: dict[str, str] = field(default_factory=dict)  # name -> storage type (Q4_1, F16, ...)
    # name -> the tensor still in its block format, for the types hearth's kernels read in place (GGUF only)
    quantized: dict[str, Callable[[], QuantizedTensor]] = field(default_factory=dict)

    def check_complete(self) -> None:
        """Raise ModelFormatError when a tensor the configuration calls for is missing (e.g. a block_count that
        does not match the layers stored): at pull time, before the store accepts a model that cannot load."""
        from hearth.weights.names import expected_names

        missing = expected_names(self.config.n_layers, self.config.tie_embeddings) - set(self.tensors)
        if missing:
            first = min(missing, key=lambda n: (len(n), n))
            raise ModelFormatError(f"{self.path}: missing tensor {first} ({len(missing)} in all) for the "
                                   f"{self.config.n_layers} layers its settings declare; the file is incomplete or inconsistent")

    @property
    def quantization(self) -> str:
        """The dominant storage type of the weight matrices, like llama.cpp's file type."""
        counts: dict[str, int] = {}
        for name, t in self.tensor_types.items():
            if name.endswith(".weight") and "norm" not in name:
                counts[t] = counts.get(t, 0) + 1
        return max(counts, key=counts.get) if counts else "unknown"
