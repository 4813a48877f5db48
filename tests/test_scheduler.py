"""Scheduler and KV block manager: plain data, no model."""

from __future__ import annotations

import pytest

from hearth.engine.kv_blocks import BlockManager
from hearth.engine.scheduler import Scheduler, Sequence, Status


def seq(rid: str, n_prompt: int, max_tokens: int = 8) -> Sequence:
    return Sequence(rid, list(range(n_prompt)), n_prompt, max_tokens)


def run_step(s: Scheduler, sample_token: int = 7):
    plan = s.schedule()
    s.after_step(plan)
    for x in plan.scheduled:
        if x.seq.num_computed == len(x.seq.token_ids):
            x.seq.token_ids.append(sample_token)
    return plan


def test_block_manager_grows_frees_and_refuses():
    bm = BlockManager(4, 16)
    t: list[int] = []
    assert bm.grow(t, 17) and len(t) == 2 and bm.num_free == 2
    assert bm.grow(t, 32) and len(t) == 2  # still fits
    assert not bm.grow(t, 80) and len(t) == 2 and bm.num_free == 2  # needs 5: refused, unchanged
    bm.free(t)
    assert t == [] and bm.num_free == 4
    with pytest.raises(ValueError):
        BlockManager(0, 16)


def test_long_prompt_is_chunked_and_decodes_keep_running():
    s = Scheduler(BlockManager(100, 16), max_num_seqs=8, max_num_batched_tokens=64)
    a = seq("a", 10)
    s.add(a)
    run_step(s)  # a prefilled, sampled one token
    b = seq("b", 200)
    s.add(b)
    plan = s.schedule()
    sizes = {x.seq.request_id: x.num_tokens for x in plan.scheduled}
    assert sizes == {"a": 1, "b": 63}  # decode first, then a chunk of the long prompt within budget
    assert plan.num_tokens <= 64
    s.after_step(plan)
    assert b.num_computed == 63 and not [x for x in plan.scheduled if x.seq is b][0].samples


def test_admission_limited_by_free_blocks_and_max_seqs():
    s = Scheduler(BlockManager(4, 16), max_num_seqs=8, max_num_batched_tokens=1000)
    for i in range(3):
        s.add(seq(str(i), 30))  # 2 blocks each
    plan = s.schedule()
    assert [x.seq.request_id for x in plan.scheduled] == ["0", "1"]
    assert len(s.waiting) == 1
    s2 = Scheduler(BlockManager(100, 16), max_num_seqs=2, max_num_batched_tokens=1000)
    for i in range(3):
        s2.add(seq(str(i), 5))
    assert len(s2.schedule().scheduled) == 2


def test_preemption_frees_blocks_and_requeues_newest_first():
    bm = BlockManager(2, 4)
    s = Scheduler(bm, max_num_seqs=8, max_num_batched_tokens=100)
    a, b = seq("a", 4), seq("b", 4)
    s.add(a)
    s.add(b)
    run_step(s)  # both prefilled: 1 block each, both full, both sampled a token
    plan = s.schedule()  # each needs a second block: none free → b (newest) is preempted
    assert [x.seq.request_id for x in plan.scheduled] == ["a"]
    assert plan.preempted == [b] and b.status is Status.WAITING and b.num_computed == 0 and b.block_table == []
    assert s.waiting[0] is b


def test_finish_frees_blocks_wherever_the_sequence_is():
    bm = BlockManager(10, 4)
    s = Scheduler(bm)
    a, b = seq("a", 9), seq("b", 9)
    s.add(a)
    run_step(s)
    s.add(b)
    s.finish(a)
    s.finish(b)
    assert bm.num_free == 10 and not s.has_work()


def test_long_prefill_leaves_room_for_arrivals():
    """A short request arriving behind a long prompt starts at the next step, not after the whole prefill."""
    s = Scheduler(BlockManager(100, 16), max_num_seqs=8, max_num_batched_tokens=64)
    long = seq("long", 600)
    s.add(long)
    plan = run_step(s)
    assert [(x.seq.request_id, x.num_tokens) for x in plan.scheduled] == [("long", 64)]  # alone: the whole budget
    short = seq("short", 10)
    s.add(short)
    plan = run_step(s)
    sizes = {x.seq.request_id: x.num_tokens for x in plan.scheduled}
    assert sizes == {"long": 32, "short": 10}  # half the budget while someone waits; the arrival is admitted
    assert short.num_generated == 1  # its first token is drawn in this step
    plan = run_step(s)
    assert {x.seq.request_id: x.num_tokens for x in plan.scheduled} == {"long": 63, "short": 1}  # nobody waits


def test_prompt_tokens_are_capped_while_others_decode():
    """max_prefill_with_decodes: a step that decodes takes at most that many prompt tokens (over all prompts), so a
    stream beside a long prompt waits for a small step; alone, the prompt gets the whole budget again."""
    s = Scheduler(BlockManager(200, 16), max_num_seqs=8, max_num_batched_tokens=64, max_prefill_with_decodes=16)
    a = seq("a", 4, max_tokens=100)
    s.add(a)
    run_step(s)  # a decodes from now on
    long, other = seq("long", 300), seq("other", 40)
    s.add(long)
    s.add(other)
    plan = run_step(s)
    assert {x.seq.request_id: x.num_tokens for x in plan.scheduled} == {"a": 1, "long": 16}  # all 16 to the first
    plan = run_step(s)
    # while "other" waits, the long prompt takes half of the 16 and "other" is admitted with the rest
    assert {x.seq.request_id: x.num_tokens for x in plan.scheduled} == {"a": 1, "long": 8, "other": 8}
    s.finish(a)
    plan = run_step(s)  # nobody decodes and nobody waits: the whole budget again, oldest prompt first
    assert {x.seq.request_id: x.num_tokens for x in plan.scheduled} == {"long": 64}
    unlimited = Scheduler(BlockManager(200, 16), max_num_seqs=8, max_num_batched_tokens=64)
    b = seq("b", 4, max_tokens=100)
    unlimited.add(b)
    run_step(unlimited)
    unlimited.add(seq("long", 300))
    assert {x.seq.request_id: x.num_tokens for x in run_step(unlimited).scheduled} == {"b": 1, "long": 63}


# ---------------------------------------------------------------------------------------- prefix caching


def test_prefix_cache_shares_full_blocks_and_never_the_last_token():
    from hearth.engine.kv_blocks import PrefixKeys

    bm = BlockManager(10, 4, enable_caching=True)
    a, ka = [], PrefixKeys()
    tokens = list(range(10))
    assert bm.match(tokens, ka) == [] and bm.grow(a, 10)
    bm.register(a, tokens, 10, ka)  # blocks 0 and 1 are full (tokens 0-7); block 2 holds 8, 9: not named
    kb = PrefixKeys()
    b = bm.match(tokens[:9] + [99], kb)  # same first 8 tokens
    assert b == a[:2] and bm.num_used == 3  # shared, not copied
    assert bm.match(tokens[:8], PrefixKeys()) == a[:1]  # 8 tokens: the last must be computed, so one block only
    bm.free(a)
    assert bm.num_used == 2  # b (and the second match) still hold the two shared blocks; a's third is free
    bm.free(b)
    assert bm.match([7] + tokens[1:], PrefixKeys()) == []  # a block's name covers every token before it


def test_prefix_cache_evicts_named_blocks_last_and_oldest_first():
    from hearth.engine.kv_blocks import PrefixKeys

    bm = BlockManager(4, 2, enable_caching=True)
    x, y = [], []
    assert bm.grow(x, 2) and bm.grow(y, 2)
    bm.register(x, [1, 2], 2, PrefixKeys())
    bm.register(y, [3, 4], 2, PrefixKeys())
    bm.free(x)
    bm.free(y)  # both free and named; x freed first
    assert bm.num_free == 4
    z = []
    assert bm.grow(z, 4)  # the two unnamed blocks go first
    assert bm.match([1, 2, 0], PrefixKeys()) and bm.match([3, 4, 0], PrefixKeys())
    bm.free(z)
    w = []
    assert bm.grow(w, 8) is False  # 4 blocks wanted: 2 free, 2 held by the matches above
    bm2 = BlockManager(3, 2, enable_caching=True)
    x, y = [], []
    bm2.grow(x, 2), bm2.grow(y, 2)
    bm2.register(x, [1, 2], 2, PrefixKeys()), bm2.register(y, [3, 4], 2, PrefixKeys())
    bm2.free(x), bm2.free(y)
    assert bm2.grow([], 4)  # the unnamed block, then the oldest named (x's)
    assert bm2.match([1, 2, 0], PrefixKeys()) == [] and bm2.match([3, 4, 0], PrefixKeys()) != []


def test_scheduler_starts_a_prompt_after_its_cached_prefix():
    bm = BlockManager(100, 4, enable_caching=True)
    s = Scheduler(bm, max_num_seqs=8, max_num_batched_tokens=64)
    a = seq("a", 18)
    s.add(a)
    run_step(s)  # 18 prompt tokens computed: blocks 0-3 full and named
    b = Sequence("b", list(range(16)) + [50, 51, 52], 19, 8)
    s.add(b)
    plan = run_step(s)
    assert {x.seq.request_id: x.num_tokens for x in plan.scheduled} == {"a": 1, "b": 3}  # b: 16 tokens cached
    assert b.block_table[:4] == a.block_table[:4] and bm.hit_tokens == 16 and bm.queried_tokens == 18 + 19
    no_cache = Sequence("c", list(range(16)) + [9], 17, 8, cacheable=False)  # e.g. wants prompt logprobs
    s.add(no_cache)
    plan = run_step(s)
    assert [x.num_tokens for x in plan.scheduled if x.seq is no_cache] == [17]


def test_a_prompt_that_cannot_start_gives_its_cached_blocks_back():
    bm = BlockManager(5, 4, enable_caching=True)
    s = Scheduler(bm, max_num_seqs=8, max_num_batched_tokens=64)
    a = seq("a", 9, max_tokens=30)
    s.add(a)
    run_step(s)  # 3 blocks: 2 full, named
    b = Sequence("b", list(range(8)) + list(range(100, 120)), 28, 4)  # 8 cached tokens, then 20 more: 5 more blocks
    s.add(b)
    free_before = bm.num_free
    plan = run_step(s)
    assert [x.seq.request_id for x in plan.scheduled] == ["a"] and s.waiting[0] is b
    assert b.num_computed == 0 and b.block_table == [] and bm.num_free == free_before  # nothing held while waiting
