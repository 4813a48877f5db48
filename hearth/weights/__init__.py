"""Readers that turn a weights file or directory into a `Checkpoint`: config, lazy tensors, tokenizer data."""

from hearth.weights.types import Checkpoint, GGUFVocab, TokenizerData
from hearth.weights.open import open_checkpoint

__all__ = ["Checkpoint", "GGUFVocab", "TokenizerData", "open_checkpoint"]
