"""Scheduler policies on a simulated engine (no model): each step's plan is checked against the limits
and the block manager's integrity, then "run" by appending a fixed token."""

import pytest

from inflight_batcher.block_manager import BlockManager
from inflight_batcher.request import Request, RequestStatus
from inflight_batcher.scheduler import Scheduler, SchedulerOutput


def make(policy="guaranteed_no_evict", blocks=16, tpb=4, batch=8, tokens=64, chunked=False):
    return Scheduler(BlockManager(blocks, tpb), policy, batch, tokens, chunked)


def step(s: Scheduler, plan: SchedulerOutput, token: int = 7) -> list[Request]:
    """Apply `plan` as the executor would; returns the requests that finished."""
    assert plan.num_tokens <= s.max_num_tokens
    assert sum(r.beam_width for r in s.running) <= s.max_batch_size
    for sch in plan.seqs:
        assert len(sch.block_table) * s.bm.tokens_per_block >= sch.start + sch.num_new
    s.bm.check([q.block_table for r in s.running for q in r.seqs])
    assert s.bm.num_free >= s._outstanding(), "a reservation is not backed by free blocks"
    done = []
    for r in plan.requests:
        n = next(x.num_new for x in plan.seqs if x.request is r)
        r.num_computed_tokens += n
        if r.num_computed_tokens == r.num_tokens:
            r.seqs[0].tokens.append(token)
            if r.num_generated == r.max_new_tokens:
                r.status = RequestStatus.FINISHED_LENGTH
                s.remove(r)
                done.append(r)
    return done


def drain(s: Scheduler, limit: int = 500) -> tuple[list[Request], list[SchedulerOutput]]:
    finished, plans = [], []
    for _ in range(limit):
        if not s.has_work():
            break
        plan = s.schedule()
        plans.append(plan)
        finished += step(s, plan)
    assert not s.has_work(), "requests left after the step limit"
    s.bm.check([])
    return finished, plans


def test_guaranteed_no_evict_reserves_whole_length():
    s = make(blocks=10, tpb=4)
    reqs = [Request([5] * 8, max_new_tokens=12) for _ in range(3)]  # 20 tokens -> 5 blocks each
    for r in reqs:
        s.add(r)
    plan = s.schedule()
    assert len(plan.requests) == 2  # 2 x 5 reserved blocks fill the cache; the third waits
    finished, plans = drain(s)
    assert len(finished) == 3 and not any(p.preempted for p in plans)


def test_max_utilization_admits_more_and_pauses_newest():
    s = make("max_utilization", blocks=10, tpb=4)
    reqs = [Request([5] * 8, max_new_tokens=12) for _ in range(3)]
    for r in reqs:
        s.add(r)
    assert len(s.schedule().requests) == 3  # only the prompts' blocks are needed now
    finished, plans = drain(s)
    assert len(finished) == 3
    paused = [r for p in plans for r in p.preempted]
    assert paused and paused[0] is reqs[2]  # the newest goes first
    assert all(r.num_generated == 12 for r in reqs)


def test_step_mixes_context_and_generation():
    s = make()
    a = Request([5] * 6, max_new_tokens=4)
    s.add(a)
    step(s, s.schedule())
    b = Request([6] * 5, max_new_tokens=4)
    s.add(b)
    plan = s.schedule()
    assert [x.request for x in plan.generation] == [a] and [x.request for x in plan.context] == [b]
    assert plan.num_context_tokens == 5 and plan.num_tokens == 6
    drain(s)


def test_token_budget_and_chunked_context():
    s = make(tokens=16, chunked=True, blocks=32)
    r = Request([5] * 40, max_new_tokens=2)
    s.add(r)
    sizes = []
    while r.num_generated == 0:
        plan = s.schedule()
        sizes.append(plan.num_tokens)
        assert all(x.sample == (x.start + x.num_new == 40) for x in plan.seqs)
        step(s, plan)
    assert sizes == [16, 16, 8]
    drain(s)


def test_without_chunking_a_prompt_waits_for_budget():
    s = make(tokens=16, blocks=32)
    a, b = Request([5] * 10, max_new_tokens=3), Request([6] * 10, max_new_tokens=3)
    s.add(a)
    s.add(b)
    plan = s.schedule()
    assert plan.requests == [a]  # b's 10 tokens do not fit in the 6 left
    drain(s)


def test_batch_size_bound():
    s = make(batch=3, blocks=64)
    for _ in range(5):
        s.add(Request([5] * 3, max_new_tokens=5))
    assert len(s.schedule().requests) == 3
    finished, _ = drain(s)
    assert len(finished) == 5


def test_request_larger_than_cache_is_refused():
    for policy in ("guaranteed_no_evict", "max_utilization"):
        s = make(policy, blocks=4, tpb=4)
        s.check_fits(Request([5] * 8, max_new_tokens=8))  # exactly 16 tokens fit
        with pytest.raises(ValueError, match="whole cache has 4 blocks"):
            s.check_fits(Request([5] * 8, max_new_tokens=9))


def test_paused_request_recomputes_and_resumes_first():
    s = make("max_utilization", blocks=6, tpb=4, tokens=64)
    reqs = [Request([5] * 7, max_new_tokens=9) for _ in range(3)]
    for r in reqs:
        s.add(r)
    finished, plans = drain(s)
    resumed = [p for p in plans if any(x.start == 0 and x.request.num_preemptions for x in p.context)]
    assert resumed, "a paused request is recomputed from position 0"
    assert sorted(r.num_preemptions for r in reqs)[-1] >= 1
    assert len(finished) == 3


def test_reservations_are_not_lent_to_unreserved_requests():
    """Mixed: a reserved request's remaining reservation is never used by others (beam search requests
    reserve under max_utilization too)."""
    from inflight_batcher.request import SamplingParams

    s = make("max_utilization", blocks=12, tpb=4)
    beam = Request([5] * 4, max_new_tokens=4, sampling=SamplingParams(beam_width=2))
    assert s.reserve_blocks(beam) == 1 + 2 * (1 + 1)
    s.add(beam)
    plan = s.schedule()
    assert plan.requests == [beam] and s._outstanding() == 5 - 1
    big = Request([6] * 30, max_new_tokens=2)  # 8 blocks: only 12 - 1 - 4 = 7 are lendable
    s.add(big)
    step(s, plan)
    assert big not in s.schedule().requests
