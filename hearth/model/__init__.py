"""The Llama transformer in plain PyTorch: no I/O, no serving, no device baked in."""

from hearth.model.llama import KVCache, Transformer

__all__ = ["KVCache", "Transformer"]
