"""Tokenizers (byte-level BPE and SentencePiece) and chat templates."""

from hearth.tokenizer.chat import ChatTemplate
from hearth.tokenizer.tokenizer import Tokenizer, TextStreamDecoder

__all__ = ["ChatTemplate", "Tokenizer", "TextStreamDecoder"]
