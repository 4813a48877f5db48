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
        self.dropped = 0  # exchanges the last turn dropped from the history to fit the context

    def prompt_ids(self, messages: list[dict]) -> list[int]:
        text = self.lm.chat_template.render(messages, add_generation_prompt=True)
        # The template writes BOS itself where the model wants one (as transformers' apply_chat_template).
        return self.lm.tokenizer.encode(text, add_bos=False)

    def _fit(self, user_text: str) -> tuple[list[dict], list[int]]:
        """The history plus the new message, and its prompt ids. When that and max_tokens exceed the context, the
        oldest exchanges are dropped (the system message stays), as Ollama and llama.cpp's chat do; `dropped` counts
        them. If the new message alone is too long, the generator's error says by how much."""
        messages = self.messages + [{"role": "user", "content": user_text}]
        ids = self.prompt_ids(messages)
        ctx = self.lm.model.config.max_seq_len
        first = 1 if messages[0]["role"] == "system" else 0
        self.dropped = 0
        while len(ids) + self.params.max_tokens > ctx and len(messages) - first > 1:
            messages = messages[:first] + messages[first + 2 :]  # one user turn and its answer
            ids = self.prompt_ids(messages)
            self.dropped += 1
        return messages, ids

    def send(self, user_text: str) -> Iterator[StreamChunk]:
        """Stream the assistant's answer; the turn joins the history only once it completes."""
        messages, ids = self._fit(user_text)
        parts = []
        for chunk in self.generator.stream(ids, self.params):
            parts.append(chunk.text)
            yield chunk
        self.messages = messages + [{"role": "assistant", "content": "".join(parts)}]

    def complete(self, user_text: str) -> Completion:
        messages, ids = self._fit(user_text)
        c = self.generator.complete(ids, self.params)
        self.messages = messages + [{"role": "assistant", "content": c.text}]
        return c
