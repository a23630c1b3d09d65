"""Overlapped scheduling (step n+1 launched before step n's tokens are read) changes when the host
learns tokens, never which tokens: every output equals the same run without overlap."""

import pytest

from inflight_batcher import Output, Request, SamplingParams
from inflight_batcher.executor import Executor
from tests.batcher.conftest import prompts


def _mixed_requests() -> list[Request]:
    ps = prompts(12, lo=3, hi=30, seed=7)
    sp = SamplingParams
    return [
        Request(ps[0], max_new_tokens=20, end_id=-1),
        Request(ps[1], max_new_tokens=9, end_id=-1, streaming=True),
        Request(ps[2], max_new_tokens=16, end_id=-1, sampling=sp(temperature=0.9, random_seed=3)),
        Request(ps[3], max_new_tokens=16, end_id=-1, sampling=sp(temperature=1.3, top_k=20, top_p=0.8, random_seed=5)),
        Request(ps[4], max_new_tokens=16, end_id=-1, sampling=sp(min_length=6), bad_words=[[11], [12]]),
        Request(ps[5], max_new_tokens=16, end_id=-1, return_log_probs=True, streaming=True),
        # Not overlappable: their steps are read before the next is scheduled.
        Request(ps[6], max_new_tokens=12, end_id=-1, sampling=sp(repetition_penalty=1.4)),
        Request(ps[7], max_new_tokens=12, end_id=-1, bad_words=[[40, 41]]),
        Request(ps[8], max_new_tokens=1, end_id=-1),
        Request(ps[9], max_new_tokens=2, end_id=-1, streaming=True),
        Request(ps[10], max_new_tokens=14, end_id=-1, sampling=sp(temperature=0.7, random_seed=9), streaming=True),
        Request(ps[11], max_new_tokens=25, end_id=-1, return_log_probs=True),
    ]


def _run(ex: Executor, reqs: list[Request]) -> tuple[list[Output], dict[int, list[int]]]:
    streamed: dict[int, list[int]] = {}

    def cb(i: int):
        def f(out: Output) -> None:
            streamed.setdefault(i, []).extend(out.new_tokens[0])

        return f

    for i, r in enumerate(reqs):
        if r.streaming:
            r.callback = cb(i)
    return ex.generate(reqs), streamed


def _count_feeds(ex: Executor) -> dict[str, int]:
    """Counts the steps whose input ids came from the previous step's tokens on the device."""
    seen = {"fed": 0}
    real = ex._feed_placeholders

    def spy(plan, prev, step):
        seen["fed"] += 1
        real(plan, prev, step)

    ex._feed_placeholders = spy
    return seen


def test_overlap_gives_the_same_outputs(make_executor):
    plain = make_executor(overlap_scheduling=False)
    base, base_streamed = _run(plain, _mixed_requests())
    ex = make_executor(overlap_scheduling=True)
    seen = _count_feeds(ex)
    got, got_streamed = _run(ex, _mixed_requests())
    assert seen["fed"] > 10  # it did overlap
    for a, b in zip(base, got, strict=True):
        assert (a.tokens, a.finish_reason) == (b.tokens, b.finish_reason)
        if a.log_probs is not None:
            assert b.log_probs[0] == pytest.approx(a.log_probs[0], abs=1e-5)
            assert b.cum_log_probs == pytest.approx(a.cum_log_probs, abs=1e-4)
    assert got_streamed == base_streamed
    for i, toks in got_streamed.items():  # a stream's chunks add up to its final tokens, no placeholder
        assert toks == got[i].tokens[0]
    assert all(len(o.tokens[0]) == r.max_new_tokens for o, r in zip(got, _mixed_requests(), strict=True))


def test_overlap_with_end_ids_and_stop_words(make_executor):
    """A request that ends on a token read late has already run one more step: that token is dropped."""
    plain = make_executor(overlap_scheduling=False)
    ps = prompts(6, lo=4, hi=20, seed=11)
    free = plain.generate([Request(p, max_new_tokens=12, end_id=-1) for p in ps])
    # End ids and stop words taken from each prompt's own free run, so that they do hit mid-way.
    reqs = (
        lambda: [  # noqa: E731
            Request(ps[0], max_new_tokens=12, end_id=free[0].tokens[0][3]),
            Request(ps[1], max_new_tokens=12, end_id=-1, stop_words=[free[1].tokens[0][4:6]]),
            Request(ps[2], max_new_tokens=12, end_id=free[2].tokens[0][0], streaming=True),
            Request(ps[3], max_new_tokens=12, end_id=-1, stop_words=[[free[3].tokens[0][2]]], streaming=True),
            Request(ps[4], max_new_tokens=12, end_id=free[4].tokens[0][7], sampling=SamplingParams(min_length=9)),
            Request(ps[5], max_new_tokens=12, end_id=-1),
        ]
    )
    base, base_streamed = _run(plain, reqs())
    ex = make_executor(overlap_scheduling=True)
    got, got_streamed = _run(ex, reqs())
    assert [(o.tokens, o.finish_reason) for o in got] == [(o.tokens, o.finish_reason) for o in base]
    assert got_streamed == base_streamed
    assert [o.finish_reason for o in got][:4] == ["end_id", "stop_words", "end_id", "stop_words"]


@pytest.mark.parametrize("policy", ["max_utilization", "guaranteed_no_evict"])
def test_overlap_under_kv_pressure(make_executor, solo, policy):
    """A small cache: under max_utilization requests are paused and recomputed (the step before a
    possible pause is read first, so no placeholder is ever recomputed)."""
    ex = make_executor(max_tokens_in_paged_kv_cache=24 * 8, batch_scheduler_policy=policy)
    ps = prompts(16, lo=5, hi=30, seed=3)
    reqs = [Request(p, max_new_tokens=24, end_id=-1) for p in ps]
    outs = ex.generate(reqs)
    for p, o in zip(ps, outs, strict=True):
        assert o.tokens == solo(Request(p, max_new_tokens=24, end_id=-1)).tokens
    if policy == "max_utilization":
        assert ex.stats().preemptions > 0


def test_cancel_while_a_step_is_in_flight(make_executor):
    ex = make_executor(overlap_scheduling=True)
    got: list[Output] = []
    state = {"id": None}

    def cb(out: Output) -> None:
        got.append(out)
        if len(got) == 3:
            ex.cancel(state["id"])

    req = Request(prompts(1, seed=2)[0], max_new_tokens=200, end_id=-1, streaming=True, callback=cb)
    state["id"] = ex.enqueue(req)
    other = ex.generate([Request(prompts(1, seed=4)[0], max_new_tokens=30, end_id=-1)])[0]
    assert other.finish_reason == "length"
    for _ in range(200):
        if got and got[-1].finished:
            break
        import time

        time.sleep(0.01)
    final = got[-1]
    assert final.finished and final.finish_reason == "cancelled"
    assert -1 not in final.tokens[0]
    streamed = [t for o in got for t in o.new_tokens[0]]
    assert streamed == final.tokens[0]
