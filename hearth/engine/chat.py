"""A conversation: history of messages rendered through the model's chat template each turn.

The whole history is rendered and tokenized each turn, but only the tokens past what the last turn left in the KV
cache are fed to the model (hearth/engine/prefix_reuse.py), so a turn costs its new tokens, not the history's.
"""

from __future__ import annotations

from collections.abc import Iterator

from hearth.engine.generate import Completion, Generator, StreamChunk
from hearth.engine.prefix_reuse import PrefixCache
from hearth.engine.sampling import SamplingParams
from hearth.errors import ContextLengthError
from hearth.tokenizer.limits import surely_too_long


class ChatSession:
    def __init__(self, lm, params: SamplingParams, system: str | None = None, compile: bool = False,
                 graphs: bool | None = None, triton: bool = True, pdl: bool | None = None, reuse: bool = True):
        """compile, graphs, triton, pdl: the Generator's (hearth/engine/generate.py). reuse: keep the KV cache from
        turn to turn (False: every turn prefills the whole history, as before; for comparison)."""
        self.lm = lm
        self.params = params
        self.system = system
        self.generator = Generator(lm.model, lm.tokenizer, graphs=graphs, compile=compile,
                                   decoder=getattr(lm, "decoder", None), triton=triton, pdl=pdl)
        self.prefix = PrefixCache() if reuse else None
        self.prompt_tokens = 0  # the last turn's prompt, in tokens
        self.reset()

    @property
    def cached_tokens(self) -> int:
        """How many of the last turn's prompt tokens were already in the KV cache (not fed again)."""
        return 0 if self.prefix is None else self.prefix.cached

    def reset(self) -> None:
        """Forget the conversation (the system message stays); the cache's memory is kept for the next turn."""
        self.messages = [{"role": "system", "content": self.system}] if self.system else []
        self.dropped = 0  # exchanges the last turn dropped from the history to fit the context

    def prompt_ids(self, messages: list[dict]) -> list[int]:
        # The template writes BOS itself where the model wants one (as transformers' apply_chat_template).
        return self.lm.tokenizer.encode(self._render(messages), add_bos=False)

    def _render(self, messages: list[dict]) -> str:
        return self.lm.chat_template.render(messages, add_generation_prompt=True)

    def _fit(self, user_text: str) -> tuple[list[dict], list[int]]:
        """The history plus the new message, and its prompt ids. When that and max_tokens exceed the context, the
        oldest exchanges are dropped (the system message stays), as Ollama and llama.cpp's chat do; `dropped` counts
        them. If the new message alone is too long, the generator's error says by how much. A prompt that surely
        cannot fit (from its length: limits.py) is not tokenized at all."""
        ctx = self.lm.model.config.max_seq_len
        messages = self.messages + [{"role": "user", "content": user_text}]
        first = 1 if messages[0]["role"] == "system" else 0
        self.dropped = 0
        while True:
            text = self._render(messages)
            fits = not surely_too_long(self.lm.tokenizer, text, ctx)
            ids = self.lm.tokenizer.encode(text, add_bos=False) if fits else None
            if (ids is not None and len(ids) + self.params.max_tokens <= ctx) or len(messages) - first <= 1:
                break
            messages = messages[:first] + messages[first + 2 :]  # one user turn and its answer
            self.dropped += 1
        if ids is None:
            raise ContextLengthError(f"the prompt is {len(text)} characters long in the chat template, more than the "
                                     f"model's context of {ctx} tokens can hold; shorten it")
        return messages, ids

    def send(self, user_text: str) -> Iterator[StreamChunk]:
        """Stream the assistant's answer; the exchange joins the history once the answer completes.

        Stopped by the user (Ctrl-C: KeyboardInterrupt, or the stream closed early), the question stays in the
        history and the partial answer is dropped, as `ollama run` does; an error (the message too long for the
        context) leaves the history as it was."""
        messages, ids = self._fit(user_text)
        self.prompt_tokens = len(ids)
        parts = []
        try:
            for chunk in self.generator.stream(ids, self.params, self.prefix):
                parts.append(chunk.text)
                yield chunk
        except (KeyboardInterrupt, GeneratorExit):
            self.messages = messages
            raise
        self.messages = messages + [{"role": "assistant", "content": "".join(parts)}]

    def complete(self, user_text: str) -> Completion:
        messages, ids = self._fit(user_text)
        self.prompt_tokens = len(ids)
        c = Completion(prompt_ids=list(ids))
        for chunk in self.generator.stream(ids, self.params, self.prefix):
            c.text += chunk.text
            if chunk.token_id is not None:
                c.token_ids.append(chunk.token_id)
            c.finish_reason = chunk.finish_reason or c.finish_reason
        self.messages = messages + [{"role": "assistant", "content": c.text}]
        return c
