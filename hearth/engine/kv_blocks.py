"""Bookkeeping for the paged KV cache: which fixed-size blocks are free, which a sequence owns, and (with prefix
caching) which full blocks hold the keys and values of a known run of tokens.

Prefix caching (vLLM's automatic prefix caching): a block whose tokens are all in the cache is named by its tokens
and the name of the block before it, so a name stands for the whole prefix up to that block's end. A new request
whose prompt starts with named blocks takes them as they are (reference-counted; never written again, since a
sequence only writes past its last full block) and computes only the rest: a multi-turn chat or a shared system
prompt is prefilled once. Freed named blocks stay findable until their memory is needed: unnamed free blocks are
handed out first, then named ones, least recently freed first.

No torch here: the runner turns block tables into tensors; this module only counts.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from dataclasses import dataclass, field


@dataclass
class PrefixKeys:
    """A sequence's block keys, computed once each, and how many of its blocks are named in the cache."""

    keys: list[tuple] = field(default_factory=list)
    registered: int = 0
    salt: object = None  # what else the KV depends on (a served LoRA adapter's name): the first block's parent


class BlockManager:
    def __init__(self, num_blocks: int, block_size: int, enable_caching: bool = False):
        if num_blocks <= 0 or block_size <= 0:
            raise ValueError("num_blocks and block_size must be positive")
        self.num_blocks, self.block_size = num_blocks, block_size
        self.enable_caching = enable_caching
        self._free: deque[int] = deque(range(num_blocks))  # free, holding nothing anyone can find
        self._cached_free: OrderedDict[int, None] = OrderedDict()  # free but named: evicted oldest first
        self._refs = [0] * num_blocks
        self._by_key: dict[tuple, int] = {}  # (parent key, tokens) -> block
        self._key: dict[int, tuple] = {}  # block -> its key
        self.hit_tokens = 0  # tokens of admitted prompts found in the cache (the scheduler counts; for metrics)
        self.queried_tokens = 0  # tokens of admitted prompts looked up

    @property
    def num_free(self) -> int:
        return len(self._free) + len(self._cached_free)

    @property
    def num_used(self) -> int:
        return self.num_blocks - self.num_free

    def blocks_for(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)

    def can_grow(self, table: list[int], num_tokens: int) -> bool:
        return self.blocks_for(num_tokens) - len(table) <= self.num_free

    def _take(self) -> int:
        if self._free:
            block = self._free.popleft()
        else:  # evict the least recently freed named block
            block, _ = self._cached_free.popitem(last=False)
            del self._by_key[self._key.pop(block)]
        self._refs[block] = 1
        return block

    def grow(self, table: list[int], num_tokens: int) -> bool:
        """Extend `table` in place to hold `num_tokens` tokens; False (and no change) if blocks run out."""
        need = self.blocks_for(num_tokens) - len(table)
        if need > self.num_free:
            return False
        for _ in range(max(need, 0)):
            table.append(self._take())
        return True

    def free(self, table: list[int]) -> None:
        for block in table:
            self._refs[block] -= 1
            if self._refs[block] == 0:
                if block in self._key:
                    self._cached_free[block] = None
                else:
                    self._free.append(block)
        table.clear()

    # -- prefix caching ---------------------------------------------------------------------------------
    def _keys(self, token_ids: list[int], n_blocks: int, known: PrefixKeys) -> list[tuple]:
        """The keys of the first n_blocks full blocks of token_ids (computed once per sequence, kept in `known`)."""
        keys = known.keys
        bs = self.block_size
        for i in range(len(keys), n_blocks):
            parent = keys[i - 1] if i else known.salt
            keys.append((hash(parent), tuple(token_ids[i * bs : (i + 1) * bs])))
        return keys

    def match(self, token_ids: list[int], known: PrefixKeys) -> list[int]:
        """Take the cached blocks that hold a prefix of token_ids (all but its last token, which must be computed for
        its logits) and return them as the start of a block table; [] without caching or on a miss."""
        if not self.enable_caching:
            return []
        keys = self._keys(token_ids, (len(token_ids) - 1) // self.block_size, known)
        blocks = []
        for key in keys:
            block = self._by_key.get(key)
            if block is None:
                break
            blocks.append(block)
        for block in blocks:
            if self._refs[block] == 0:
                del self._cached_free[block]
            self._refs[block] += 1
        known.registered = len(blocks)  # (called on an empty table: these are its named blocks)
        return blocks

    def register(self, table: list[int], token_ids: list[int], num_computed: int, known: PrefixKeys) -> None:
        """Name the sequence's blocks that are now full of computed tokens, so later requests can find them."""
        if not self.enable_caching:
            return
        full = min(num_computed // self.block_size, len(table))
        keys = self._keys(token_ids, full, known)
        for i in range(known.registered, full):
            block, key = table[i], keys[i]
            if block not in self._key and key not in self._by_key:  # else: the same tokens live in another block
                self._by_key[key] = block
                self._key[block] = key
        known.registered = max(known.registered, full)
