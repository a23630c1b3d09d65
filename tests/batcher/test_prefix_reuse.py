"""Prefix reuse (`enable_kv_cache_reuse`): requests sharing a prefix take its cached KV blocks instead of
computing them, and that never changes a token: every output equals the run without reuse."""

import pytest

from inflight_batcher import Request, SamplingParams
from inflight_batcher.block_manager import BlockManager
from tests.batcher.conftest import BUILD, clone, prompts

TPB = BUILD["tokens_per_block"]


# -- the block manager alone ----------------------------------------------------------------------------
def _publish_all(bm: BlockManager, table: list[int], tokens: list[int]) -> list[int]:
    keys = bm.keys(tokens)
    bm.publish(table, tokens, keys, 0, None)
    return keys


def test_blocks_found_by_their_chain_and_only_whole():
    bm = BlockManager(8, 4, enable_reuse=True)
    a = list(range(10, 20))  # 2 full blocks + 2 tokens
    table = bm.allocate(3)
    _publish_all(bm, table, a)
    assert bm.lookup(a, bm.keys(a)) == table[:2]
    b = a[:4] + [99, 98, 97, 96]  # same first block, different second
    assert bm.lookup(b, bm.keys(b)) == table[:1]
    c = [1, 2, 3, 4] + a[4:8]  # same second block after a different first: the chain differs
    assert bm.lookup(c, bm.keys(c)) == []
    bm.free(table)
    assert bm.num_cached == 2 and bm.num_free == 8 and bm.num_used == 0
    bm.check([])


def test_a_key_collision_never_hands_over_another_prompts_blocks():
    bm = BlockManager(4, 2, enable_reuse=True)
    table = bm.allocate(1)
    _publish_all(bm, table, [5, 6])
    forged = bm.keys([7, 8])  # a chain key of other tokens made to collide with the cached one
    bm.block_of[forged[0]] = table[0]
    bm.made_of[forged[0]] = bm.made_of[bm.key_of[table[0]]]
    assert bm.lookup([7, 8], forged) == []


def test_cached_blocks_are_evicted_least_recently_freed_first_and_only_when_no_blank_one_is_left():
    bm = BlockManager(4, 2, enable_reuse=True)
    t1, t2 = bm.allocate(1), bm.allocate(1)
    _publish_all(bm, t1, [1, 1])
    _publish_all(bm, t2, [2, 2])
    b1, b2 = t1[0], t2[0]
    bm.free(t1)
    bm.free(t2)
    assert bm.allocate(2) and bm.num_cached == 2  # the two blank blocks went first
    (x,) = bm.allocate(1)
    assert x == b1 and bm.lookup([1, 1], bm.keys([1, 1])) == []  # evicted, no longer found
    assert bm.lookup([2, 2], bm.keys([2, 2])) == [b2]
    taken = bm.take([b2], 2)
    assert bm.num_cached == 0 and bm.ref_counts[b2] == 1 and bm.reused_blocks == 1
    bm.free(taken)
    bm.check()


# -- the executor -----------------------------------------------------------------------------------------
SYSTEM = prompts(1, lo=29, hi=30, seed=11)[0]  # 29 tokens: 3 full blocks of 8 + 5


def _chat_requests() -> list[Request]:
    tails = prompts(8, lo=1, hi=14, seed=12)
    sp = SamplingParams
    return [
        Request(SYSTEM + tails[0], max_new_tokens=12, end_id=-1),
        Request(SYSTEM + tails[1], max_new_tokens=9, end_id=-1, streaming=True),
        Request(SYSTEM[:24], max_new_tokens=10, end_id=-1),  # ends exactly at a block boundary
        Request(SYSTEM[:27], max_new_tokens=10, end_id=-1),  # ends inside a cached block
        Request(SYSTEM + tails[2], max_new_tokens=12, end_id=-1, sampling=sp(temperature=0.8, random_seed=4)),
        Request(SYSTEM + tails[3], max_new_tokens=8, end_id=-1, sampling=sp(beam_width=3)),
        Request(SYSTEM + tails[4], max_new_tokens=10, end_id=-1, sampling=sp(repetition_penalty=1.3)),
        Request(SYSTEM, max_new_tokens=16, end_id=-1, return_log_probs=True),
    ]


def _finals(ex, reqs, together: bool):
    if together:
        return ex.generate([clone(r) for r in reqs])
    return [ex.generate([clone(r)])[0] for r in reqs]


@pytest.mark.parametrize("together", [False, True], ids=["one-by-one", "batched"])
def test_reuse_changes_no_token(make_executor, together):
    reqs = _chat_requests()
    plain = make_executor(max_beam_width=3)
    want = _finals(plain, reqs, together)
    ex = make_executor(max_beam_width=3, enable_kv_cache_reuse=True)
    _finals(ex, reqs[:1], False)  # the system prompt's blocks are cached
    got = _finals(ex, reqs, together)
    for w, g in zip(want, got, strict=True):
        assert g.tokens == w.tokens and g.finish_reason == w.finish_reason
        if w.cum_log_probs is not None:
            assert g.cum_log_probs == pytest.approx(w.cum_log_probs, abs=1e-4)
    st = ex.stats()
    # Every later request found at least the system prompt's first blocks.
    assert st.reused_blocks >= 2 * (len(reqs) - 1)
    assert st.reused_tokens == st.reused_blocks * TPB
    assert st.used_blocks == 0 and st.free_blocks == st.max_blocks and 0 < st.cached_blocks <= st.max_blocks
    ex.block_manager.check([])


def test_a_repeated_prompt_computes_only_its_last_block(make_executor):
    ex = make_executor(enable_kv_cache_reuse=True)
    prompt = prompts(1, lo=40, hi=41, seed=3)[0]  # 5 full blocks
    first = ex.generate([Request(prompt, max_new_tokens=6, end_id=-1)])[0]
    before = ex.stats()
    again = ex.generate([Request(prompt, max_new_tokens=6, end_id=-1)])[0]
    after = ex.stats()
    assert again.tokens == first.tokens
    assert after.reused_blocks - before.reused_blocks == 4  # (40 - 1) // 8: the last token is computed
    assert after.context_tokens in (0, 8)  # the last step's context tokens (a later step may be decode)


def test_eviction_under_pressure_leaks_nothing_and_keeps_outputs(make_executor, solo):
    # 16 blocks of 8 tokens: the 12 prompts' blocks cannot all stay cached; reuse and eviction interleave.
    ps = prompts(12, lo=20, hi=40, seed=21)
    reqs = [Request(p, max_new_tokens=10, end_id=-1) for p in ps] + [Request(ps[0], max_new_tokens=10, end_id=-1)]
    ex = make_executor(enable_kv_cache_reuse=True, max_tokens_in_paged_kv_cache=16 * TPB)
    got = [ex.generate([clone(r)])[0] for r in reqs]
    got += ex.generate([clone(r) for r in reqs[:4]])
    for r, g in zip(reqs + reqs[:4], got, strict=True):
        assert g.tokens == solo(clone(r)).tokens
    st = ex.stats()
    assert st.used_blocks == 0 and st.free_blocks == st.max_blocks
    ex.block_manager.check([])


def test_reuse_composes_with_chunked_context_and_preemption(make_executor, solo):
    # max_num_tokens 16: prompts run in chunks, the first chunk starting after the reused blocks;
    # max_utilization on a small cache pauses requests, whose own blocks are then found again on resume.
    ps = prompts(6, lo=10, hi=30, seed=5)
    reqs = [Request(SYSTEM + p, max_new_tokens=24, end_id=-1) for p in ps]
    ex = make_executor(
        enable_kv_cache_reuse=True,
        enable_chunked_context=True,
        max_num_tokens=16,
        batch_scheduler_policy="max_utilization",
        max_tokens_in_paged_kv_cache=24 * TPB,
    )
    ex.generate([clone(reqs[0])])
    got = ex.generate([clone(r) for r in reqs])
    for r, g in zip(reqs, got, strict=True):
        assert g.tokens == solo(clone(r)).tokens
    st = ex.stats()
    assert st.reused_blocks > 0 and st.used_blocks == 0
    ex.block_manager.check([])


def test_per_request_perf_metrics_count_reused_new_and_evicting_blocks(make_executor):
    # 8 blocks of 8 tokens. A: 40-token prompt + 6 new = 6 blocks, all blank; its 5 computed whole blocks
    # stay cached, its last goes back blank. B (A's prompt): takes 4 cached blocks (the last prompt token is
    # always computed) and allocates 2 blank ones (blank again after: A's copy of their content is the
    # cached one). C (another prompt, 6 blocks): 3 blank blocks are left, the other 3 evict cached ones.
    import time

    ex = make_executor(enable_kv_cache_reuse=True, max_tokens_in_paged_kv_cache=8 * TPB)
    a, c = prompts(2, lo=40, hi=41, seed=5)
    t0 = time.time_ns()
    outs = [ex.generate([Request(p, max_new_tokens=6, end_id=-1, return_perf_metrics=True)])[0] for p in (a, a, c)]
    t1 = time.time_ns()
    kv = [(o.perf.kv_alloc_new_blocks, o.perf.kv_reused_blocks, o.perf.kv_alloc_total_blocks) for o in outs]
    assert kv == [(6, 0, 6), (2, 4, 2), (3, 0, 6)]
    for o in outs:
        p = o.perf
        assert t0 <= p.arrival_time_ns <= p.first_scheduled_time_ns <= p.first_token_time_ns <= p.last_token_time_ns
        assert p.last_token_time_ns <= t1
    plain = ex.generate([Request(a, max_new_tokens=2, end_id=-1)])[0]
    assert plain.perf is None  # only when asked for
