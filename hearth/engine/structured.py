"""Structured output: generation constrained to a JSON schema, a regular expression, a grammar or a list of choices.

What llama.cpp's `--grammar`/`--json-schema`, vLLM's structured outputs and OpenAI's `response_format` do. The
grammar engine is llguidance (the one llama.cpp and vLLM use): it compiles the constraint against the tokenizer's
vocabulary and, before each token, says which tokens keep the output a valid prefix; the sampler masks the rest.
Written by hand here only the glue: the spec a request carries, and the per-sequence matcher the sampler owns.
"""

from __future__ import annotations

import json
import logging
import threading
import weakref
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor

from hearth.errors import HearthError

log = logging.getLogger("hearth")

Kind = Literal["json", "regex", "grammar", "choice"]

# JSON output may put whitespace between tokens, but only a little: a small model left free to emit whitespace can
# fill its whole budget with newlines (llama.cpp's schema grammars bound it the same way).
_JSON_OPTIONS = {"whitespace_pattern": r"[\x20\x0A\x0D\x09]{0,16}"}


@dataclass(frozen=True)
class Structure:
    """What the output must match. `spec`: a JSON schema (as JSON text; `{}` any JSON value), a regular expression,
    a GBNF or Lark grammar (llama.cpp's grammars/ files load as they are), or a JSON list of strings."""

    kind: Kind
    spec: str

    @classmethod
    def json_schema(cls, schema: Any) -> "Structure":
        if isinstance(schema, str):
            try:
                schema = json.loads(schema)
            except json.JSONDecodeError as e:
                raise HearthError(f"the JSON schema is not valid JSON ({e.msg} at line {e.lineno} column {e.colno})") from None
        if not isinstance(schema, (dict, bool)):
            raise HearthError(f"a JSON schema must be an object, not {type(schema).__name__}")
        return cls("json", json.dumps(schema))  # key order kept: properties come out in the schema's order

    @classmethod
    def json_object(cls) -> "Structure":
        """Any JSON object (OpenAI's `response_format: {"type": "json_object"}`)."""
        return cls("json", '{"type": "object"}')

    @classmethod
    def choice(cls, options: list[str]) -> "Structure":
        if not options or not all(isinstance(o, str) and o for o in options):
            raise HearthError("choice needs a non-empty list of non-empty strings")
        return cls("choice", json.dumps(options))

    def grammar(self) -> str:
        """The llguidance grammar (not yet checked against a vocabulary: see `check`)."""
        import llguidance

        if self.kind == "json":
            return llguidance.LLMatcher.grammar_from_json_schema(self.spec, overrides=_JSON_OPTIONS)
        if self.kind == "regex":
            return llguidance.LLMatcher.grammar_from_regex(self.spec)
        if self.kind == "choice":
            return llguidance.grammar_from("choice", self.spec)
        try:  # GBNF (llama.cpp) or Lark
            return llguidance.grammar_from("grammar", self.spec)
        except ValueError as e:
            raise HearthError(f"invalid grammar: {_first_line(str(e))}") from None

    def check(self, tokenizer) -> str:
        """The compiled grammar; HearthError naming the problem for a schema, regex or grammar that cannot be used."""
        import llguidance

        grammar = self.grammar()
        error = llguidance.LLMatcher.validate_grammar(grammar, ll_tokenizer(tokenizer))
        if error:
            raise HearthError(f"invalid {_WHAT[self.kind]}: {_first_line(error)}")
        return grammar


_WHAT = {"json": "JSON schema", "regex": "regular expression", "grammar": "grammar", "choice": "choice"}


def _first_line(message: str) -> str:
    lines = [ln.strip() for ln in message.strip().splitlines() if ln.strip()]
    # llguidance puts the position first and the reason after ("at 1(8): invalid regex ...", "error: unclosed group")
    reason = next((ln for ln in lines if ln.startswith("error:")), None)
    head = lines[0] if lines else "unknown error"
    return f"{head} ({reason.removeprefix('error:').strip()})" if reason and reason != head else head


_LL_TOKENIZERS: "weakref.WeakKeyDictionary[Any, Any]" = weakref.WeakKeyDictionary()
_LL_LOCK = threading.Lock()


def ll_tokenizer(tokenizer):
    """llguidance's view of a hearth Tokenizer (built once per tokenizer: ~0.7 s for a 49K vocabulary). It reads the
    same `tokenizers` JSON hearth encodes with, so both agree on every token's bytes and on special tokens."""
    import llguidance

    with _LL_LOCK:
        ll = _LL_TOKENIZERS.get(tokenizer)
        if ll is None:
            if not tokenizer.eos_ids:
                raise HearthError("structured output needs a model whose tokenizer has an end-of-sequence token")
            try:
                ll = llguidance.LLTokenizer(tokenizer.backend.to_str(), eos_token=list(tokenizer.eos_ids))
            except Exception as e:  # a vocabulary llguidance cannot read
                raise HearthError(f"structured output is not available for this tokenizer ({_first_line(str(e))})") from None
            _LL_TOKENIZERS[tokenizer] = ll
        return ll


class Constraint:
    """One sequence's position in its grammar: which tokens may come next, and the tokens chosen so far."""

    def __init__(self, structure: Structure, tokenizer):
        import llguidance

        self.structure = structure
        ll = ll_tokenizer(tokenizer)
        self.matcher = llguidance.LLMatcher(ll, structure.grammar(), log_level=0)
        if self.matcher.is_error():
            raise HearthError(f"invalid {_WHAT[structure.kind]}: {_first_line(self.matcher.get_error())}")

    def allowed(self, n_logits: int, device: torch.device) -> Tensor:
        """(n_logits,) bool: True where a token keeps the output valid (the end-of-sequence token once it is
        complete). Logits past the tokenizer's vocabulary (padding rows) are never allowed."""
        bias = torch.frombuffer(bytearray(self.matcher.compute_logit_bias()), dtype=torch.uint8)
        mask = torch.zeros(n_logits, dtype=torch.bool)
        n = min(n_logits, bias.numel())
        mask[:n] = bias[:n] != 0
        return mask.to(device, non_blocking=True)

    def accept(self, token: int) -> None:
        if not self.matcher.consume_token(token):
            # the sampler only draws allowed tokens, so this means a mask the logits did not respect (NaN logits)
            log.warning("structured output: token %d does not fit the %s; generation stops", token, self.structure.kind)

    @property
    def done(self) -> bool:
        """Nothing more may follow (the grammar is complete and ended, or the matcher failed)."""
        return self.matcher.is_stopped() or self.matcher.is_error()
