"""Continuous batching: which sequences run this step, and how many tokens each.

Each step has a token budget. Running sequences go first, decodes before prefills (a decode costs one token; a
sequence still prefilling takes the next chunk of its prompt), then waiting ones are admitted in arrival order while
the budget, the sequence limit and free KV blocks allow. Long prompts are cut into chunks, so a new prompt never
stalls running streams for more than one step; while others wait, a prefill takes at most half the budget, so a long
prompt does not hold back the requests that arrive after it. While sequences decode, the prompt tokens of one step
can be capped lower still (`max_prefill_with_decodes`): on a CPU a step's time grows with its tokens, and every
stream waits for the whole step. When blocks run out, the most recently admitted
sequence is preempted: its blocks are freed and it is recomputed later (vLLM's policy). With prefix caching
(kv_blocks.py) an admitted prompt starts after the cached blocks of its longest known prefix.
No torch: plain data in, a plan out.
"""

from __future__ import annotations

import enum
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from hearth.engine.kv_blocks import BlockManager, PrefixKeys


class Status(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


@dataclass
class Sequence:
    """The scheduler's view of a request: its tokens, how many are in the cache, its blocks."""

    request_id: str
    token_ids: list[int]  # prompt followed by generated tokens
    num_prompt: int
    max_tokens: int
    num_computed: int = 0  # tokens whose k/v are in the cache
    block_table: list[int] = field(default_factory=list)
    status: Status = Status.WAITING
    data: Any = None  # the engine's per-request state (sampler, detokenizer, ...)
    cacheable: bool = True  # may start from cached prefix blocks (not when every prompt position's logits are wanted)
    prefix: PrefixKeys = field(default_factory=PrefixKeys)
    adapter: int = 0  # the served LoRA adapter it runs with (hearth/engine/lora.py); 0: the base model
    cached_tokens: int = 0  # prompt tokens its first admission found in the prefix cache (usage's cached_tokens)

    @property
    def num_generated(self) -> int:
        return len(self.token_ids) - self.num_prompt


@dataclass
class ScheduledSeq:
    seq: Sequence
    num_tokens: int  # tokens to compute this step: token_ids[num_computed : num_computed + num_tokens]

    @property
    def samples(self) -> bool:
        """After this step the whole sequence is in the cache, so a next token is drawn."""
        return self.seq.num_computed + self.num_tokens == len(self.seq.token_ids)


@dataclass
class SchedulerOutput:
    scheduled: list[ScheduledSeq]
    preempted: list[Sequence] = field(default_factory=list)

    @property
    def num_tokens(self) -> int:
        return sum(s.num_tokens for s in self.scheduled)


class Scheduler:
    def __init__(self, blocks: BlockManager, max_num_seqs: int = 64, max_num_batched_tokens: int = 512,
                 max_prefill_with_decodes: int | None = None):
        self.blocks = blocks
        self.max_num_seqs = max_num_seqs
        self.budget = max_num_batched_tokens
        self.max_prefill_with_decodes = max_prefill_with_decodes  # None: no cap beyond the budget
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []

    def add(self, seq: Sequence) -> None:
        seq.status = Status.WAITING
        self.waiting.append(seq)

    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    def finish(self, seq: Sequence) -> None:
        """Remove a sequence wherever it is and free its blocks (finished or aborted)."""
        if seq in self.running:
            self.running.remove(seq)
        elif seq in self.waiting:
            self.waiting.remove(seq)
        self.blocks.free(seq.block_table)
        seq.status = Status.FINISHED

    def _preempt(self, seq: Sequence) -> None:
        self.running.remove(seq)
        self.blocks.free(seq.block_table)
        seq.num_computed = 0
        seq.status = Status.WAITING
        self.waiting.appendleft(seq)

    def schedule(self) -> SchedulerOutput:
        budget = self.budget
        out = SchedulerOutput([])
        scheduled_ids = set()
        # 1. running sequences, oldest first: decodes (one token each), then the chunks of prompts still prefilling,
        # so a prefill never holds back the streams already generating
        decoding = [s for s in self.running if len(s.token_ids) - s.num_computed == 1]
        prefilling = [s for s in self.running if len(s.token_ids) - s.num_computed != 1]
        # prompt tokens this step may take: capped while streams decode (each of them waits for the whole step)
        prefill_budget = budget
        if decoding and self.max_prefill_with_decodes is not None:
            prefill_budget = max(min(self.max_prefill_with_decodes, budget), 1)
        # While requests wait, a prompt still being prefilled takes at most half of that (vLLM's
        # long_prefill_token_threshold): a short request that arrives behind a long prompt starts at the next step
        # instead of after the whole prefill.
        chunk = max(prefill_budget // 2, 1) if self.waiting else prefill_budget
        for seq in decoding + prefilling:
            if budget <= 0:
                break
            if seq.status is not Status.RUNNING:
                continue  # preempted earlier in this loop
            left = len(seq.token_ids) - seq.num_computed
            if left > 1 and prefill_budget <= 0:
                continue
            n = 1 if left == 1 else min(left, budget, chunk, prefill_budget)
            while not self.blocks.grow(seq.block_table, seq.num_computed + n):
                victim = next((s for s in reversed(self.running) if id(s) not in scheduled_ids), None)
                if victim is None:
                    break
                self._preempt(victim)
                out.preempted.append(victim)
                if victim is seq:
                    break
            if seq.status is not Status.RUNNING or not self.blocks.blocks_for(seq.num_computed + n) <= len(seq.block_table):
                continue
            out.scheduled.append(ScheduledSeq(seq, n))
            scheduled_ids.add(id(seq))
            budget -= n
            if left > 1:
                prefill_budget -= n
        # 2. admit waiting sequences in arrival order (not ones just preempted this step)
        preempted = {id(s) for s in out.preempted}
        while self.waiting and min(budget, prefill_budget) > 0 and len(self.running) < self.max_num_seqs:
            seq = self.waiting[0]
            if id(seq) in preempted:
                break
            if seq.num_computed == 0 and not seq.block_table and seq.cacheable:
                # start after the cached blocks of its prefix (taken now; given back below if it cannot start)
                seq.block_table = self.blocks.match(seq.token_ids, seq.prefix)
                seq.num_computed = len(seq.block_table) * self.blocks.block_size
            hit_tokens = seq.num_computed
            n = min(len(seq.token_ids) - seq.num_computed, budget, prefill_budget)
            if not self.blocks.grow(seq.block_table, seq.num_computed + n):
                self.blocks.free(seq.block_table)  # give the cached blocks back (they stay findable)
                seq.num_computed = 0
                break
            if seq.cacheable and self.blocks.enable_caching:
                self.blocks.queried_tokens += len(seq.token_ids)
                self.blocks.hit_tokens += hit_tokens
                if not seq.num_generated:  # its first admission (a preempted one recomputes: that is no saving)
                    seq.cached_tokens = max(seq.cached_tokens, min(hit_tokens, seq.num_prompt))
            self.waiting.popleft()
            seq.status = Status.RUNNING
            self.running.append(seq)
            out.scheduled.append(ScheduledSeq(seq, n))
            budget -= n
            prefill_budget -= n
        return out

    def after_step(self, plan: SchedulerOutput) -> None:
        for s in plan.scheduled:
            seq = s.seq
            seq.num_computed += s.num_tokens
            if seq.cacheable:  # name the blocks now full, so later prompts with this prefix find them
                self.blocks.register(seq.block_table, seq.token_ids, seq.num_computed, seq.prefix)
