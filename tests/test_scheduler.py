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
