"""The executor end to end on the tiny engine: batch invariance, in-flight admission, KV exhaustion
under both policies, cancellation, streaming callbacks, failures inside a step, statistics."""

import threading
import time

import pytest
import torch

from inflight_batcher import Output, QueueFullError, Request, SamplingParams
from tests.batcher.conftest import DEVICE, TEST_CONFIG, clone, hf_greedy, prompts


def greedy_requests(n: int, seed: int = 0, hi: int = 40) -> list[Request]:
    return [Request(p, max_new_tokens=4 + (i * 7) % 20, end_id=-1) for i, p in enumerate(prompts(n, hi=hi, seed=seed))]


def test_batch_invariance_vs_alone_and_hf(make_executor, solo, hf_model):
    reqs = greedy_requests(20)
    alone = [solo(clone(r)) for r in reqs]
    ex = make_executor()
    together = ex.generate(reqs)
    for r, a, t in zip(reqs, alone, together, strict=True):
        assert t.tokens == a.tokens
        assert t.tokens[0] == hf_greedy(hf_model, r.input_ids, r.max_new_tokens)
        assert t.finish_reason == "length" and t.finished
    st = ex.stats()
    assert st.completed == 20 and st.used_blocks == 0 and st.iteration > 0


def test_end_id_stops_and_is_not_returned(make_executor, hf_model):
    # Pick the end id as the 3rd token the model would produce greedily.
    p = [20, 21, 22, 23]
    free = hf_greedy(hf_model, p, 6)
    end = free[2]
    out = make_executor().generate([Request(p, max_new_tokens=6, end_id=end)])[0]
    assert out.finish_reason == "end_id" and out.tokens[0] == free[: free.index(end)]


def test_short_request_arriving_late_finishes_first(make_executor):
    ex = make_executor()
    finished_long: list[int] = []
    generating = threading.Event()

    def long_cb(out: Output) -> None:
        if len(out.tokens[0]) >= 5:
            generating.set()
        if out.finished:
            finished_long.append(out.request_id)

    longs = [
        ex.enqueue(Request(p, max_new_tokens=150, end_id=-1, streaming=True, callback=long_cb)) for p in prompts(4)
    ]
    assert generating.wait(30)  # the long ones are mid-generation
    seen_at_short_end: list[list[int]] = []
    done = threading.Event()

    def short_cb(out: Output) -> None:
        seen_at_short_end.append(list(finished_long))
        done.set()

    ex.enqueue(Request([9, 9, 9], max_new_tokens=3, end_id=-1, callback=short_cb))
    assert done.wait(30)
    assert seen_at_short_end == [[]]  # admitted at once and done while every long request still ran
    while len(finished_long) < 4:
        time.sleep(0.01)
    assert sorted(finished_long) == sorted(longs)


def test_chunked_context_matches_whole_prompt(make_executor, solo):
    long_prompt = prompts(1, lo=100, hi=101, seed=11)[0]
    ref = solo(Request(long_prompt, max_new_tokens=8, end_id=-1))
    ex = make_executor(enable_chunked_context=True, max_num_tokens=16)
    others = [Request(p, max_new_tokens=12, end_id=-1) for p in prompts(3, hi=10)]
    outs = ex.generate([Request(long_prompt, max_new_tokens=8, end_id=-1), *others])
    assert outs[0].tokens == ref.tokens
    assert [o.tokens for o in outs[1:]] == [solo(clone(r)).tokens for r in others]
    unchunked = make_executor(max_num_tokens=16)
    with pytest.raises(ValueError, match="more than max_num_tokens=16 per step and chunked context is off"):
        unchunked.enqueue(Request(long_prompt, max_new_tokens=8))


@pytest.mark.parametrize("policy", ["guaranteed_no_evict", "max_utilization"])
def test_kv_exhaustion_all_finish_same_outputs(make_executor, solo, policy):
    streamed: dict[int, list[int]] = {}

    def collect(out: Output) -> None:
        streamed.setdefault(out.request_id, []).extend(out.new_tokens[0])

    reqs = [
        Request(p, max_new_tokens=30 + i % 10, end_id=-1, streaming=i % 2 == 0)
        for i, p in enumerate(prompts(12, lo=20, hi=50, seed=3))
    ]
    # Beam search requests take part too (they always reserve their whole length), and seeded sampling
    # ones (a pause must not change what a seed draws).
    for p in prompts(2, lo=10, hi=20, seed=4):
        reqs.append(Request(p, max_new_tokens=12, end_id=-1, sampling=SamplingParams(beam_width=2)))
    for i, p in enumerate(prompts(2, lo=30, hi=40, seed=5)):
        sp = SamplingParams(temperature=0.9, top_k=40, random_seed=i)
        reqs.append(Request(p, max_new_tokens=35, end_id=-1, sampling=sp))
    alone = [solo(clone(r)) for r in reqs]
    for r in reqs:
        if r.streaming:
            r.callback = collect
    # 12 blocks x 8 tokens = 96 tokens of KV; demand is ~12 x 75.
    ex = make_executor(batch_scheduler_policy=policy, max_tokens_in_paged_kv_cache=96, max_beam_width=2)
    assert ex.block_manager.num_blocks == 12
    outs = ex.generate(reqs, timeout=120)
    assert [o.tokens for o in outs] == [a.tokens for a in alone]
    for r, o in zip(reqs, outs, strict=True):  # streamed pieces add up to the output: none repeated
        if r.streaming:
            assert streamed[o.request_id] == o.tokens[0]
    st = ex.stats()
    if policy == "max_utilization":
        assert st.preemptions > 0 and any(r.num_preemptions for r in reqs[-2:])  # seeded ones were paused
    else:
        assert st.preemptions == 0
    assert st.used_blocks == 0


@pytest.mark.parametrize("policy", ["guaranteed_no_evict", "max_utilization"])
def test_request_larger_than_cache_rejected_at_once(make_executor, policy):
    ex = make_executor(batch_scheduler_policy=policy, max_tokens_in_paged_kv_cache=64)
    with pytest.raises(ValueError, match="whole cache has 8 blocks"):
        ex.enqueue(Request([5] * 40, max_new_tokens=25))
    assert ex.generate([Request([5] * 40, max_new_tokens=24)])[0].finish_reason == "length"


def test_cancel_queued_and_running_frees_blocks(make_executor):
    ex = make_executor(max_batch_size=1)
    finals: dict[int, Output] = {}
    got_token = threading.Event()
    all_done = threading.Event()

    def cb(out: Output) -> None:
        if out.tokens[0]:
            got_token.set()
        if out.finished:
            finals[out.request_id] = out
            if len(finals) == 2:
                all_done.set()

    running = ex.enqueue(Request([5] * 10, max_new_tokens=200, end_id=-1, streaming=True, callback=cb))
    queued = ex.enqueue(Request([6] * 10, max_new_tokens=5, callback=cb))  # batch of 1: it waits
    assert got_token.wait(30)
    assert ex.cancel(queued) and ex.cancel(running)
    assert all_done.wait(30)
    assert {o.finish_reason for o in finals.values()} == {"cancelled"}
    assert finals[queued].tokens == [[]] and 0 < len(finals[running].tokens[0]) < 200
    assert not ex.cancel(running)  # already ended
    assert not ex.cancel(12345)
    _wait_idle(ex)
    ex.block_manager.check([])
    assert ex.stats().cancelled == 2


def _wait_idle(ex, timeout: float = 10.0) -> None:
    end = time.time() + timeout
    while (ex.scheduler.has_work() or ex.stats().used_blocks) and time.time() < end:
        time.sleep(0.01)


def test_streaming_one_callback_per_step_and_one_final(make_executor):
    ex = make_executor()
    outs: list[Output] = []
    ex.generate([Request([3, 4, 5], max_new_tokens=7, end_id=-1, streaming=True, callback=outs.append)])
    assert [len(o.new_tokens[0]) for o in outs] == [1] * 7
    assert [o.finished for o in outs] == [False] * 6 + [True]
    assert [t for o in outs for t in o.new_tokens[0]] == outs[-1].tokens[0]
    # Not streaming: only the final.
    outs.clear()
    ex.generate([Request([3, 4, 5], max_new_tokens=7, end_id=-1, callback=outs.append)])
    assert len(outs) == 1 and outs[0].finished and len(outs[0].tokens[0]) == 7


def test_a_passing_step_failure_is_retried_alone(make_executor, solo):
    ex = make_executor()
    real = ex.engine.forward
    calls = {"n": 0}

    def flaky(step, kv):
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("boom")
        return real(step, kv)

    ex.engine.forward = flaky
    try:
        out = ex.generate([Request([5, 6], max_new_tokens=10, end_id=-1)])[0]
    finally:
        ex.engine.forward = real
    assert out.tokens == solo(Request([5, 6], max_new_tokens=10, end_id=-1)).tokens  # not a token lost or doubled
    assert ex.stats().failed_steps == 1 and ex.stats().failed == 0


def test_a_poison_request_fails_alone_and_the_loop_goes_on(make_executor, solo):
    """A step that raises whenever one request is in it: that request fails, the others of the same steps
    get exactly their solo tokens (the step is run again one request at a time), and later requests pass."""
    ex = make_executor()
    real = ex.engine.forward

    def poisoned(step, kv):
        if 77 in step.input_ids.tolist():
            raise RuntimeError("boom")
        return real(step, kv)

    ex.engine.forward = poisoned
    try:
        reqs = [Request([6, 7], max_new_tokens=6, end_id=-1), Request([77, 5], max_new_tokens=6, end_id=-1)]
        reqs += [Request([8, 9, 10], max_new_tokens=6, end_id=-1)]
        good1, bad, good2 = ex.generate(reqs)
    finally:
        ex.engine.forward = real
    assert bad.finish_reason == "error" and "RuntimeError: boom" in bad.error
    assert good1.tokens == solo(Request([6, 7], max_new_tokens=6, end_id=-1)).tokens
    assert good2.tokens == solo(Request([8, 9, 10], max_new_tokens=6, end_id=-1)).tokens
    st = ex.stats()
    assert st.failed == 1 and st.failed_steps >= 1
    ok = ex.generate([Request([5, 6], max_new_tokens=10, end_id=-1)])[0]
    assert ok.finish_reason == "length" and len(ok.tokens[0]) == 10
    _wait_idle(ex)
    ex.block_manager.check([])


def test_a_dead_loop_fails_its_requests_and_refuses_new_ones(make_executor):
    """A fault outside any step (here the scheduler's intake) kills the loop thread: the requests it held
    end with the error, instead of their callers waiting forever, and the executor takes no more."""
    ex = make_executor()

    def broken(request):
        raise RuntimeError("intake broke")

    ex.scheduler.add = broken
    out = ex.generate([Request([6, 7], max_new_tokens=4, end_id=-1)], timeout=30)[0]
    assert out.finish_reason == "error" and "executor loop died" in out.error and "intake broke" in out.error
    with pytest.raises(RuntimeError, match="executor is shut down"):
        ex.generate([Request([6, 7], max_new_tokens=4, end_id=-1)])


def test_nan_logits_fail_only_that_request(make_executor, solo):
    ex = make_executor()
    real = ex.engine.forward

    def poisoned(step, kv):
        logits = real(step, kv).clone()
        # Poison the sequence whose new tokens include 77.
        ends = torch.cumsum(step.seq_lens, 0) - 1
        starts = ends - step.seq_lens + 1
        for b in range(len(ends)):
            if 77 in step.input_ids[starts[b] : ends[b] + 1].tolist():
                logits[b] = float("nan")
        return logits

    ex.engine.forward = poisoned
    try:
        bad, good = ex.generate([Request([77, 5], max_new_tokens=5), Request([6, 7], max_new_tokens=5, end_id=-1)])
    finally:
        ex.engine.forward = real
    assert bad.finish_reason == "error" and "NaN" in bad.error
    assert good.tokens == solo(Request([6, 7], max_new_tokens=5, end_id=-1)).tokens


def test_queue_full_rejected_immediately(make_executor):
    ex = make_executor(max_queue_size=2, max_batch_size=1)
    in_callback, release = threading.Event(), threading.Event()

    def hold(out: Output) -> None:  # freezes the executor thread after the first step (tests only)
        in_callback.set()
        release.wait(30)

    first = ex.enqueue(Request([5] * 4, max_new_tokens=100, end_id=-1, streaming=True, callback=hold))
    assert in_callback.wait(30)
    ex.enqueue(Request([5], max_new_tokens=2))
    ex.enqueue(Request([5], max_new_tokens=2))
    with pytest.raises(QueueFullError):
        ex.enqueue(Request([5], max_new_tokens=2))
    release.set()
    ex.cancel(first)


def test_shutdown_ends_live_requests_with_a_final(engine_dir):
    from inflight_batcher import Executor, ExecutorConfig

    ex = Executor.from_engine_dir(engine_dir, ExecutorConfig(**TEST_CONFIG), device=DEVICE)
    finals: list[Output] = []
    ex.enqueue(Request([5] * 4, max_new_tokens=200, end_id=-1, callback=lambda o: o.finished and finals.append(o)))
    ex.shutdown()
    assert len(finals) == 1 and finals[0].finish_reason in ("cancelled", "length")
    with pytest.raises(RuntimeError, match="shut down"):
        ex.enqueue(Request([5]))
    ex.block_manager.check([])
    ex.shutdown()  # idempotent


def test_shutdown_with_drain_finishes_live_requests(engine_dir):
    from inflight_batcher import Executor, ExecutorConfig

    ex = Executor.from_engine_dir(engine_dir, ExecutorConfig(**TEST_CONFIG), device=DEVICE)
    finals: list[Output] = []
    for p in prompts(4):
        ex.enqueue(Request(p, max_new_tokens=20, end_id=-1, callback=lambda o: o.finished and finals.append(o)))
    ex.shutdown(drain_timeout=30)
    assert [o.finish_reason for o in finals] == ["length"] * 4
    ex.block_manager.check([])


def test_callback_exception_does_not_break_the_loop(make_executor):
    ex = make_executor()

    def bad(out: Output) -> None:
        raise ValueError("client bug")

    ex.enqueue(Request([5, 6], max_new_tokens=3, streaming=True, callback=bad))
    assert ex.generate([Request([5, 6], max_new_tokens=3, end_id=-1)])[0].finish_reason == "length"


def test_200_identical_requests(make_executor, solo):
    ref = solo(Request([50, 60, 70], max_new_tokens=6, end_id=-1))
    outs = make_executor().generate([Request([50, 60, 70], max_new_tokens=6, end_id=-1) for _ in range(200)])
    assert all(o.tokens == ref.tokens for o in outs)


def test_random_cancellations_under_load(make_executor):
    """Soak in miniature: several threads enqueue, others cancel at random; every request gets exactly
    one final, and no block is leaked."""
    import random

    ex = make_executor(batch_scheduler_policy="max_utilization", max_tokens_in_paged_kv_cache=256)
    finals: dict[int, int] = {}
    lock = threading.Lock()
    ids: list[int] = []

    def cb(out: Output) -> None:
        if out.finished:
            with lock:
                finals[out.request_id] = finals.get(out.request_id, 0) + 1

    def client(seed: int) -> None:
        rng = random.Random(seed)
        for p in prompts(15, seed=seed):
            rid = ex.enqueue(Request(p, max_new_tokens=rng.randint(1, 40), streaming=rng.random() < 0.5, callback=cb))
            with lock:
                ids.append(rid)
            if rng.random() < 0.4:
                time.sleep(rng.random() * 0.01)
                ex.cancel(rid)

    threads = [threading.Thread(target=client, args=(s,)) for s in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    end = time.time() + 60
    while len(finals) < len(ids) and time.time() < end:
        time.sleep(0.01)
    assert sorted(finals) == sorted(ids) and set(finals.values()) == {1}
    _wait_idle(ex)
    ex.block_manager.check([])
    st = ex.stats()
    assert st.completed + st.cancelled == 60 and st.used_blocks == 0 and st.active == 0


def test_stats_during_and_after_a_run(make_executor):
    # Not overlapped: a step's callbacks then come before the next step is scheduled.
    ex = make_executor(max_tokens_in_paged_kv_cache=800, overlap_scheduling=False)
    seen = []
    reqs = [Request(p, max_new_tokens=10, end_id=-1, streaming=True, callback=lambda o: seen.append(ex.stats()))
            for p in prompts(6, lo=10, hi=20)]  # fmt: skip
    ex.generate(reqs)
    first = seen[0]  # after the first step: every prompt in its context phase
    assert first.scheduled == 6 and first.context_requests == 6 and first.active == 6
    assert first.context_tokens == sum(len(r.input_ids) for r in reqs)
    assert first.used_blocks > 0 and first.used_blocks + first.free_blocks == first.max_blocks == 100
    mid = seen[6 * 3]
    assert mid.generation_requests == 6 and mid.context_tokens == 0
    end = ex.stats()
    assert end.completed == 6 and end.used_blocks == 0 and end.active == 0 and end.queued == 0
    assert end.tokens_per_block == 8 and end.iteration == 10 and end.max_batch_size == 32


@pytest.mark.parametrize(
    "cfg",
    [
        dict(batch_scheduler_policy="max_utilization", enable_chunked_context=True, max_num_tokens=24,
             max_tokens_in_paged_kv_cache=120),
        dict(batch_scheduler_policy="guaranteed_no_evict", enable_chunked_context=True, max_num_tokens=24,
             max_tokens_in_paged_kv_cache=120),
        dict(batch_scheduler_policy="max_utilization", max_batch_size=3, max_tokens_in_paged_kv_cache=200),
    ],
)  # fmt: skip
def test_outputs_do_not_depend_on_limits(make_executor, solo, cfg):
    """Whatever the policy, chunking, token budget, batch size and cache size: the outputs of alone."""
    reqs = [Request(p, max_new_tokens=5 + i * 3, end_id=-1) for i, p in enumerate(prompts(8, lo=5, hi=60, seed=9))]
    reqs.append(Request([8, 9, 10, 11, 12], max_new_tokens=10, end_id=-1, sampling=SamplingParams(beam_width=2)))
    reqs.append(Request([13, 14], max_new_tokens=20, sampling=SamplingParams(temperature=1.0, random_seed=5)))
    alone = [solo(clone(r)) for r in reqs]
    ex = make_executor(max_beam_width=2, **cfg)
    assert [o.tokens for o in ex.generate(reqs, timeout=120)] == [a.tokens for a in alone]


def test_every_eos_id_of_the_engine_ends_a_request(engine_dir, solo):
    """A checkpoint with several eos ids (Llama-3 instruct: <|end_of_text|>, <|eot_id|>): a request with no
    end_id stops at any of them; an explicit end_id replaces them all."""
    from dataclasses import replace

    from inflight_batcher import Executor, ExecutorConfig
    from tensorrt_llm.runtime import Engine

    prompt = prompts(1, seed=3)[0]
    ref = solo(Request(prompt, max_new_tokens=10, end_id=-1)).tokens[0]
    k = next(i for i in range(1, len(ref)) if ref[i] not in ref[:i])  # the first new token after the first
    unused = next(t for t in range(1000) if t not in ref)
    engine = Engine.from_dir(engine_dir, device=DEVICE)
    engine.config = replace(engine.config, model=replace(engine.config.model, eos_token_id=[unused, ref[k]]))
    ex = Executor(engine, ExecutorConfig(**TEST_CONFIG))
    try:
        out = ex.generate([Request(prompt, max_new_tokens=10)])[0]
        assert out.tokens[0] == ref[:k] and out.finish_reason == "end_id"
        out = ex.generate([Request(prompt, max_new_tokens=10, end_id=unused)])[0]
        assert out.tokens[0] == ref and out.finish_reason == "length"
    finally:
        ex.shutdown()


def test_a_huge_seed_is_its_own_business(make_executor):
    """random_seed is UINT64: 2**64 - 1 samples reproducibly and never fails the other requests of its step
    (it used to overflow the step's int64 tensors: every request in the step failed)."""
    ex = make_executor()
    huge = SamplingParams(temperature=1.0, random_seed=2**64 - 1)
    reqs = [Request([5, 6, 7], max_new_tokens=6, end_id=-1, sampling=huge)] + [
        Request(p, max_new_tokens=6, end_id=-1) for p in prompts(3, seed=5)
    ]
    outs = ex.generate(reqs)
    assert all(o.finish_reason == "length" for o in outs), [o.error for o in outs]
    again = ex.generate([Request([5, 6, 7], max_new_tokens=6, end_id=-1, sampling=huge)])[0]
    assert again.tokens == outs[0].tokens
