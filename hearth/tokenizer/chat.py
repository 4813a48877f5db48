"""Chat prompts rendered from the model's own Jinja template, in a sandbox, in a worker process, on a budget.

Mirrors transformers' `apply_chat_template` (same Jinja settings, filters and globals: render_worker.py) so the
prompt hearth feeds the model is the one the model was trained on. The template comes from a model file, so it is
untrusted: Jinja's sandbox keeps it from running code, and the render budget (time, memory, output) keeps it from
hanging or exhausting the process that renders it (sandbox.py says how).
"""

from __future__ import annotations

from typing import Any

from hearth.errors import HearthError
from hearth.tokenizer.sandbox import RenderBudget, RenderPool, default_pool

__all__ = ["CHATML", "ChatTemplate", "RenderBudget", "TemplateBudgetError", "TemplateError"]

# Used only when a model ships no template (llama.cpp and Ollama fall back the same way).
CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


class TemplateError(HearthError):
    pass


class TemplateBudgetError(TemplateError):
    """The template took more time, memory or output than its render budget allows (a hostile or broken template)."""


class ChatTemplate:
    """`render(messages, add_generation_prompt=True)` → the prompt text, special tokens included.

    Rendering happens in a worker process (`hearth.tokenizer.sandbox`), bounded by `budget`; `render` blocks the
    calling thread for at most about `budget.seconds`, so async callers run it in a thread."""

    def __init__(self, source: str | None, special_tokens: dict[str, str] | None = None,
                 budget: RenderBudget = RenderBudget(), pool: RenderPool | None = None):
        self.is_fallback = source is None
        self.source = source if source is not None else CHATML
        self.special_tokens = dict(special_tokens or {})
        self.budget = budget
        self._pool = pool
        self._call({"source": self.source, "check": True}, parsing=True)  # a broken template fails at load

    def render(self, messages: list[dict[str, Any]], add_generation_prompt: bool = True, **kwargs: Any) -> str:
        if not messages:
            raise TemplateError("a chat needs at least one message")
        for i, m in enumerate(messages):
            if not isinstance(m, dict) or "role" not in m or "content" not in m:
                raise TemplateError(f"message {i} needs 'role' and 'content'")
        # tools/documents default to None as in transformers, so `tools is not none` is false
        context = {"tools": None, "documents": None, **self.special_tokens, **kwargs,
                   "messages": messages, "add_generation_prompt": add_generation_prompt}
        return self._call({"source": self.source, "vars": context})

    def _call(self, request: dict, parsing: bool = False) -> str:
        try:
            reply = (self._pool or default_pool()).call(request, self.budget)
        except (TypeError, ValueError) as e:  # json.dumps: a value no template could be given (not JSON data)
            raise TemplateError(f"chat template input is not JSON data: {e}") from None
        if "text" in reply:
            return reply["text"]
        kind, message = reply["error"], reply.get("message", "")
        what = "compiling the chat template" if parsing else "the chat template"
        b = self.budget
        if kind == "syntax":
            raise TemplateError(f"the model's chat template does not parse ({message})")
        if kind == "raised":
            raise TemplateError(f"chat template refused the conversation: {message}")
        if kind == "unsafe":
            raise TemplateError(f"chat template tried an unsafe operation: {message}")
        if kind == "failed":
            raise TemplateError(f"chat template failed: {message}")
        limit = {
            "time": f"ran longer than {b.seconds:g} s",
            "memory": f"needed more than {b.memory_bytes >> 20} MiB of memory",
            "output": f"wrote more than {b.max_output_chars} characters",
        }.get(kind, f"stopped its worker, over {b.seconds:g} s or {b.memory_bytes >> 20} MiB")
        raise TemplateBudgetError(f"{what} exceeded its render budget ({limit}); the model's chat template is hostile "
                                  "or broken")
