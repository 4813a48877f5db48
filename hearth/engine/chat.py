"""A conversation: history of messages rendered through the model's chat template each turn."""

from __future__ import annotations

from collections.abc import Iterator

from hearth.engine.generate import Completion, Generator, StreamChunk
from hearth.engine.sampling import SamplingParams


class ChatSession:
    def __init__(self, lm, params: SamplingParams, system: str | None = None, compile: bool = False):
        self.lm = lm
        self.params = params
        self.system = system
        self.generator = Generator(lm.model, lm.tokenizer, compile=compile)
        self.reset()

    def reset(self) -> None:
        self.messages = [{"role": "system", "content": self.system}] if self.system else []

    def prompt_ids(self, messages: list[dict]) -> list[int]:
        text = self.lm.chat_template.render(messages, add_generation_prompt=True)
        # The template writes BOS itself where the model wants one (as transformers' apply_chat_template).
        return self.lm.tokenizer.encode(text, add_bos=False)

    def send(self, user_text: str) -> Iterator[StreamChunk]:
        """Stream the assistant's answer; the turn joins the history only once it completes."""
        messages = self.messages + [{"role": "user", "content": user_text}]
        parts = []
        for chunk in self.generator.stream(self.prompt_ids(messages), self.params):
            parts.append(chunk.text)
            yield chunk
        self.messages = messages + [{"role": "assistant", "content": "".join(parts)}]

    def complete(self, user_text: str) -> Completion:
        messages = self.messages + [{"role": "user", "content": user_text}]
        c = self.generator.complete(self.prompt_ids(messages), self.params)
        self.messages = messages + [{"role": "assistant", "content": c.text}]
        return c
