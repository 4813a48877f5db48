"""Structured output: generation constrained to a JSON schema, a regular expression, a grammar or a list of choices.

What llama.cpp's `--grammar`/`--json-schema`, vLLM's structured outputs and OpenAI's `response_format` do. The
grammar engine is llguidance (the one llama.cpp and vLLM use): it compiles the constraint against the tokenizer's
vocabulary and, before each token, says which tokens keep the output a valid prefix; the sampler masks the rest.
Written by hand here only the glue: the spec a request carries, and the per-sequence matcher the sampler owns.
Compiling a spec is untrusted work done elsewhere (limits, a worker process, a cache): grammar_pool.py.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor

from hearth import safejson
from hearth.engine.grammar_limits import MAX_JSON_DEPTH, StructureLimits
from hearth.engine.grammar_pool import CompiledGrammar, compiler_for
from hearth.errors import HearthError

log = logging.getLogger("hearth")

Kind = Literal["json", "regex", "grammar", "choice"]
# Reading a schema given as text: Python's json recurses once per level, and no schema deeper than llguidance's own
# reader allows (MAX_JSON_DEPTH) could be used anyway; the size bound is far above any limit a server configures
# (StructureLimits.max_bytes is checked at compile time).
_PARSE_MAX_BYTES = 16 << 20


def _depth_over(value: Any, limit: int) -> bool:
    """Whether a parsed JSON value nests deeper than `limit`, found without recursion (json.dumps would recurse)."""
    stack = [(value, 0)]
    while stack:
        v, d = stack.pop()
        if isinstance(v, (dict, list)):
            if d + 1 > limit:
                return True
            stack.extend((c, d + 1) for c in (v.values() if isinstance(v, dict) else v))
    return False


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
                schema = safejson.loads(schema, max_depth=MAX_JSON_DEPTH, max_bytes=_PARSE_MAX_BYTES)
            except safejson.JSONLimitError as e:
                raise HearthError(f"invalid JSON schema: too complex: {e}") from None
            except json.JSONDecodeError as e:
                raise HearthError(f"the JSON schema is not valid JSON ({e.msg} at line {e.lineno} column {e.colno})") from None
            except ValueError as e:  # an integer over Python's digit limit, invalid UTF-8
                raise HearthError(f"the JSON schema is not valid JSON ({e})") from None
        elif _depth_over(schema, MAX_JSON_DEPTH):
            raise HearthError(f"invalid JSON schema: too complex: nested over {MAX_JSON_DEPTH} levels deep")
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

    def check(self, tokenizer, limits: StructureLimits | None = None) -> CompiledGrammar:
        """The spec compiled for this tokenizer (safely: grammar_pool.py); HearthError naming the problem for a schema,
        regex or grammar that cannot be used or is too complex."""
        return compiler_for(tokenizer, limits).compile(self)


class Constraint:
    """One sequence's position in its grammar: which tokens may come next, and the tokens chosen so far."""

    def __init__(self, structure: Structure, matcher):
        self.structure = structure
        self.matcher = matcher

    @classmethod
    def build(cls, structure: Structure, tokenizer, limits: StructureLimits | None = None) -> "Constraint":
        """Compile (or find in the cache) and start matching: for callers that have not compiled in advance."""
        return cls(structure, structure.check(tokenizer, limits).matcher())

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
