"""A conversation's KV cache kept between turns, so that a turn prefills only the tokens that are new.

A chat re-renders the whole history through the template each turn. The cache of the last turn already holds the
keys and values of every token fed into it (the prompt, then each generated token but the last sampled one); the new
prompt shares a prefix with those tokens: the old prompt and most of the answer. The part that differs (the answer
re-tokenized from its text may split differently, an exchange dropped from the front of the history to fit the
context, a /clear) is found by comparing token ids, and only the tokens after the longest common prefix are fed. At
least one token is always fed, since the next token's logits come from the last position fed.

The cache grows in power-of-two buckets of positions (at least 256, at most the model's context), its filled part
copied over: SmolLM2-135M's fp16 cache holds 23 KiB a token, 184 MiB at its full 8192 tokens, most of which a short
chat never uses (Llama-3.1-8B's would be 16 GiB at 128K), and copying is a memcpy once per doubling.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from hearth.fast.static_decode import cache_bucket
from hearth.model.llama import KVCache, Transformer


def common_prefix(a: list[int], b: list[int]) -> int:
    """How many leading ids a and b share."""
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


@dataclass
class PrefixCache:
    """One sequence's KV cache and the token ids whose keys and values it holds at positions 0..len(ids)-1.

    `start(model, prompt_ids, total)` readies the cache for a turn and returns how many leading prompt ids are
    cached already (the generator feeds the rest from there); the generator then records what it fed with `fed`.
    `cached` and `prompt` describe the last turn (for `hearth run --verbose`)."""

    cache: KVCache | None = None
    ids: list[int] = field(default_factory=list)
    cached: int = 0  # prompt tokens the last turn found in the cache
    prompt: int = 0  # prompt tokens of the last turn

    def start(self, model: Transformer, prompt_ids: list[int], total: int) -> int:
        """Keep the cached prefix of `prompt_ids` (all but its last id at most), make room for `total` positions."""
        n = min(common_prefix(self.ids, prompt_ids), len(prompt_ids) - 1)
        # Positions past n hold what the new prompt does not share: forgotten before anything is written over them,
        # so an interrupted prefill leaves the record true.
        del self.ids[n:]
        cache = self.cache
        if cache is None or cache.max_seq_len < total or cache.k.dtype != model.cache_dtype \
                or cache.k.device != model.device:
            if cache is None or cache.k.dtype != model.cache_dtype or cache.k.device != model.device:
                n, self.ids = 0, []
            new = model.new_cache(1, min(cache_bucket(total), model.config.max_seq_len))
            if n:
                new.k[:, :, :, :n] = cache.k[:, :, :, :n]
                new.v[:, :, :, :n] = cache.v[:, :, :, :n]
            self.cache = new
        self.cached, self.prompt = n, len(prompt_ids)
        return n

    def fed(self, ids: list[int]) -> None:
        """Record tokens just written into the cache after the ones it held."""
        self.ids.extend(ids)

    def forget(self) -> None:
        """Drop the record (the memory stays for the next turn)."""
        self.ids = []
