"""Single-sequence generation: prefill, decode with a KV cache, stop rules, streaming text.

This is the simple, obviously-correct path that `hearth run` / `hearth generate` use and that every
faster path (batched engine, compiled decode) is tested against.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch

from hearth.errors import ContextLengthError
from hearth.engine.prefix_reuse import PrefixCache
from hearth.engine.sampling import Sampler, SamplingParams
from hearth.model import Transformer
from hearth.fast.cpu_decode import CPUDecoder
from hearth.fast.static_decode import StaticDecoder, cache_bucket
from hearth.tokenizer import Tokenizer


@dataclass
class StreamChunk:
    """Text that became final with this step (may be empty while a character or stop string is pending)."""

    text: str
    token_id: int | None
    finish_reason: str | None = None  # "stop" | "length" on the last chunk


@dataclass
class Completion:
    prompt_ids: list[int]
    token_ids: list[int] = field(default_factory=list)
    text: str = ""
    finish_reason: str = "length"


def check_context(n_prompt: int, max_tokens: int, context: int) -> None:
    if n_prompt == 0:
        raise ContextLengthError("the prompt is empty; give at least one token of input")
    over = n_prompt + max_tokens - context
    if over > 0:
        raise ContextLengthError(
            f"prompt ({n_prompt} tokens) + max tokens ({max_tokens}) exceeds the model's context of {context} "
            f"by {over}; shorten the prompt or lower --max-tokens"
        )


class _StopMatcher:
    """Holds back text that might be the start of a stop string; cuts at the first full match."""

    def __init__(self, stops: tuple[str, ...]):
        self.stops = stops
        self.pending = ""

    def feed(self, text: str) -> tuple[str, bool]:
        self.pending += text
        if not self.stops:
            out, self.pending = self.pending, ""
            return out, False
        hits = [i for i in (self.pending.find(s) for s in self.stops) if i >= 0]
        if hits:
            out = self.pending[: min(hits)]
            self.pending = ""
            return out, True
        # keep the longest tail that is a prefix of some stop string
        keep = 0
        for s in self.stops:
            for n in range(min(len(s) - 1, len(self.pending)), 0, -1):
                if self.pending.endswith(s[:n]):
                    keep = max(keep, n)
                    break
        cut = len(self.pending) - keep
        out, self.pending = self.pending[:cut], self.pending[cut:]
        return out, False

    def flush(self) -> str:
        out, self.pending = self.pending, ""
        return out


class Generator:
    """Runs one prompt at a time through a model with a preallocated KV cache.

    On a GPU each decode step is a CUDA-graph replay of the fixed-shape step (hearth/fast/static_decode.py), one
    recorded per cache size (powers of two): hearth's Triton kernels where they apply (batch 1, bf16/fp16;
    triton=False turns them off; pdl: programmatic dependent launch, None: on Hopper and later), else the torch ops;
    `compile=True` compiles the torch ops with torch.compile instead. graphs=False keeps the plain per-layer path,
    for debugging (None: graphs on CUDA). decoder: the loaded model's whole-step CPU decoder (LoadedModel.decoder),
    which then runs the one-token steps of the plain path.
    """

    def __init__(self, model: Transformer, tokenizer: Tokenizer, graphs: bool | None = None, compile: bool = False,
                 decoder: CPUDecoder | None = None, triton: bool = True, pdl: bool | None = None):
        self.model = model
        self.tokenizer = tokenizer
        if graphs is None:
            graphs = model.device.type == "cuda"
        self.graphs, self.compile = graphs, compile
        self.decoder, self.triton, self.pdl = decoder, triton, pdl
        self._decoders: dict[int, StaticDecoder] = {}

    def _decoder(self, n_tokens: int) -> StaticDecoder:
        size = min(cache_bucket(n_tokens), self.model.config.max_seq_len)
        if size not in self._decoders:
            self._decoders[size] = StaticDecoder(self.model, 1, size, compile=self.compile,  # graphs on CUDA
                                                 kernels=None if self.triton else False, pdl=self.pdl)
        return self._decoders[size]

    @property
    def device(self) -> torch.device:
        return self.model.device

    @torch.inference_mode()
    def stream(self, prompt_ids: list[int], params: SamplingParams,
               prefix: PrefixCache | None = None) -> Iterator[StreamChunk]:
        """Yield text as it becomes final; the last chunk carries the finish reason.

        prefix: a conversation's cache kept between calls (hearth/engine/prefix_reuse.py): the prompt's leading tokens
        already in it are not fed again, and it keeps what this call feeds, for the next. The plain path only; the
        CUDA-graph path prefills in full into its own cache (the record is then forgotten)."""
        cfg = self.model.config
        check_context(len(prompt_ids), params.max_tokens, cfg.max_seq_len)
        if params.max_tokens == 0:
            yield StreamChunk("", None, "length")
            return
        sampler = Sampler(params, self.tokenizer)
        decoder = self.tokenizer.stream()
        stops = _StopMatcher(params.stop)
        context = torch.tensor(prompt_ids, dtype=torch.long)
        generated: list[int] = []
        tokens = torch.tensor([prompt_ids], dtype=torch.long, device=self.device)
        if self.graphs:
            if prefix is not None:
                prefix.forget()
                prefix.cached, prefix.prompt = 0, len(prompt_ids)
            dec = self._decoder(len(prompt_ids) + params.max_tokens)
            logits = dec.prefill(tokens)[0]

            def step(token: int) -> torch.Tensor:
                return dec.step(torch.tensor([[token]], device=self.device))[0]
        else:
            total = len(prompt_ids) + params.max_tokens
            start = 0 if prefix is None else prefix.start(self.model, prompt_ids, total)
            cache = self.model.new_cache(1, total) if prefix is None else prefix.cache
            forward = self.model if self.decoder is None else functools.partial(self.decoder.forward, self.model)
            logits = forward(tokens[:, start:], start, cache, last_only=True)[0, -1]
            if prefix is not None:
                prefix.fed(prompt_ids[start:])
            pos = len(prompt_ids)

            def step(token: int) -> torch.Tensor:
                nonlocal pos
                pos += 1
                out = forward(torch.tensor([[token]], device=self.device), pos - 1, cache)[0, -1]
                if prefix is not None:
                    prefix.fed([token])
                return out
        while True:
            if sampler.uses_context and generated:
                nxt = sampler(logits, torch.cat([context, torch.tensor(generated)]))
            else:
                nxt = sampler(logits, context)
            generated.append(nxt)
            if nxt in self.tokenizer.eos_ids and (not params.ignore_eos or sampler.done):
                yield StreamChunk(stops.feed(decoder.flush())[0] + stops.flush(), nxt, "stop")
                return
            text, stopped = stops.feed(decoder.push(nxt))
            if stopped:
                yield StreamChunk(text, nxt, "stop")
                return
            if len(generated) >= params.max_tokens or sampler.done:  # or structured output that is complete
                tail, stopped = stops.feed(decoder.flush())
                reason = "stop" if stopped or sampler.done else "length"
                yield StreamChunk(text + tail + ("" if stopped else stops.flush()), nxt, reason)
                return
            yield StreamChunk(text, nxt)
            logits = step(nxt)

    def complete(self, prompt_ids: list[int], params: SamplingParams) -> Completion:
        out = Completion(prompt_ids=list(prompt_ids))
        parts = []
        for chunk in self.stream(prompt_ids, params):
            parts.append(chunk.text)
            if chunk.token_id is not None:
                out.token_ids.append(chunk.token_id)
            if chunk.finish_reason:
                out.finish_reason = chunk.finish_reason
        out.text = "".join(parts)
        return out
