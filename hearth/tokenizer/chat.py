"""Chat prompts rendered from the model's own Jinja template, in a sandbox.

Mirrors transformers' `apply_chat_template` (same Jinja settings, filters and globals) so the
prompt hearth feeds the model is the one the model was trained on.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

import jinja2
from jinja2.ext import Extension, loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment

from hearth.errors import HearthError

# Used only when a model ships no template (llama.cpp and Ollama fall back the same way).
CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


class TemplateError(HearthError):
    pass


def _raise(message: str):
    raise TemplateError(f"chat template refused the conversation: {message}")


def _tojson(x: Any, ensure_ascii: bool = False, indent: int | None = None, separators=None, sort_keys: bool = False) -> str:
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


class _Generation(Extension):
    """`{% generation %}...{% endgeneration %}` (transformers marks assistant text with it): renders the body."""

    tags = {"generation"}

    def parse(self, parser):
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return jinja2.nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(lineno)

    def _body(self, caller):
        return caller()


class ChatTemplate:
    """`render(messages, add_generation_prompt=True)` → the prompt text, special tokens included."""

    def __init__(self, source: str | None, special_tokens: dict[str, str] | None = None):
        self.is_fallback = source is None
        self.source = source if source is not None else CHATML
        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[_Generation, loopcontrols])
        env.filters["tojson"] = _tojson
        env.globals["raise_exception"] = _raise
        env.globals["strftime_now"] = _strftime_now
        try:
            self.template = env.from_string(self.source)
        except jinja2.TemplateSyntaxError as e:
            raise TemplateError(f"the model's chat template does not parse (line {e.lineno}: {e.message})") from None
        self.special_tokens = dict(special_tokens or {})

    def render(self, messages: list[dict[str, Any]], add_generation_prompt: bool = True, **kwargs: Any) -> str:
        if not messages:
            raise TemplateError("a chat needs at least one message")
        for i, m in enumerate(messages):
            if not isinstance(m, dict) or "role" not in m or "content" not in m:
                raise TemplateError(f"message {i} needs 'role' and 'content'")
        try:
            # tools/documents default to None as in transformers, so `tools is not none` is false
            context = {"tools": None, "documents": None, **self.special_tokens, **kwargs}
            return self.template.render(messages=messages, add_generation_prompt=add_generation_prompt, **context)
        except TemplateError:
            raise
        except jinja2.exceptions.SecurityError as e:
            raise TemplateError(f"chat template tried an unsafe operation: {e}") from None
        except Exception as e:
            raise TemplateError(f"chat template failed: {type(e).__name__}: {e}") from None
