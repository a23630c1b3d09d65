"""Bad values are refused on arrival with a message naming the field (reliability.md bad inputs 4-6, 8,
12); the executor keeps serving."""

import math

import pytest

from inflight_batcher import Request, SamplingParams, parse_word_list
from inflight_batcher.request import MAX_WORD_TOKENS, MAX_WORDS
from tensorrt_llm.runtime.sampling import is_greedy
from tests.batcher.conftest import VOCAB, hf_greedy


@pytest.mark.parametrize(
    "value, match",
    [(0, "max_new_tokens=0"), (-1, "max_new_tokens=-1"), (1.5, "max_new_tokens must be an integer"),
     ("8", "max_new_tokens must be an integer"), (True, "max_new_tokens must be an integer")],
)  # fmt: skip
def test_bad_max_new_tokens(value, match):
    with pytest.raises(ValueError, match=match):
        Request([5, 6], max_new_tokens=value)


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(temperature=-0.5), "temperature=-0.5"),
        (dict(temperature=math.nan), "temperature=nan"),
        (dict(temperature=math.inf), "temperature=inf"),
        (dict(temperature="hot"), "temperature must be a number"),
        (dict(top_p=1.5), "top_p=1.5"),
        (dict(top_p=-0.1), "top_p=-0.1"),
        (dict(top_k=-1), "top_k=-1"),
        (dict(top_k=2.5), "top_k must be an integer"),
        (dict(repetition_penalty=0.0), "repetition_penalty=0.0"),
        (dict(repetition_penalty=math.nan), "repetition_penalty=nan"),
        (dict(presence_penalty=1e9), "presence_penalty=1000000000.0"),
        (dict(frequency_penalty=-math.inf), "frequency_penalty=-inf"),
        (dict(min_length=-3), "min_length=-3"),
        (dict(beam_width=0), "beam_width=0"),
        (dict(random_seed=-1), "random_seed=-1"),
        (dict(random_seed=2**64), "random_seed=18446744073709551616"),
    ],
)
def test_bad_sampling_values(kw, match):
    with pytest.raises(ValueError, match=match):
        SamplingParams(**kw)


def test_top_p_zero_means_off_and_greedy_rule_matches_the_ops():
    for kw in [{}, dict(temperature=0.7), dict(top_k=1, temperature=0.7), dict(temperature=0.0, top_k=5),
               dict(top_p=0.0), dict(top_p=0.9), dict(top_k=5)]:  # fmt: skip
        sp = SamplingParams(**kw)
        assert sp.greedy == is_greedy(sp.temperature, sp.top_k, sp.top_p), kw


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(input_ids=[]), "input_ids is empty"),
        (dict(input_ids=[5, -1]), r"input_ids\[1\]=-1"),
        (dict(input_ids="hello"), "input_ids must be a list"),
        (dict(stop_words=[[5]] * (MAX_WORDS + 1)), f"at most {MAX_WORDS}"),
        (dict(stop_words=[[5] * 1_000_000]), f"must have 1..{MAX_WORD_TOKENS}"),
        (dict(bad_words=[[]]), r"bad_words\[0\] has 0 tokens"),
        (dict(bad_words=[5, 6]), r"bad_words\[0\] must be a list"),
        (dict(stop_words=[[5, -2]]), r"stop_words\[0\]\[1\]=-2"),
        (dict(streaming=True, sampling=SamplingParams(beam_width=2)), "streaming is not supported"),
        (dict(streaming="false"), "streaming must be a bool"),
    ],
)
def test_bad_request_fields(kw, match):
    kw.setdefault("input_ids", [5, 6])
    with pytest.raises(ValueError, match=match):
        Request(**kw)


def test_engine_limits_checked_at_enqueue_and_executor_keeps_serving(make_executor, hf_model):
    ex = make_executor()  # engine: vocab 384, max_input_len 128, max_seq_len 256, max_beam_width 4
    cases = [
        (Request([5, VOCAB]), rf"input_ids\[1\]={VOCAB} is out of range.*vocab_size={VOCAB}"),
        (Request([5] * 129), "129 tokens, more than max_input_len=128"),
        (Request([5] * 128, max_new_tokens=2**31), "max_new_tokens=2147483648 .* max_seq_len=256"),
        (Request([5] * 100, max_new_tokens=157), r"at most 156 new tokens"),
        (Request([5], sampling=SamplingParams(beam_width=2)), "beam_width=2 is out of range: max_beam_width is 1"),
        (Request([5], end_id=VOCAB + 5), f"end_id={VOCAB + 5} is out of range"),
        (Request([5], bad_words=[[1, 999]]), r"bad_words\[0\]\[1\]=999"),
    ]
    for req, match in cases:
        with pytest.raises(ValueError, match=match):
            ex.enqueue(req)
    # Exactly at the limits works, and so does the next request.
    outs = ex.generate([Request([5] * 128, max_new_tokens=128, end_id=-1), Request([7, 8], max_new_tokens=4)])
    assert len(outs[0].tokens[0]) == 128 and outs[0].finish_reason == "length"
    assert outs[1].tokens[0] == hf_greedy(hf_model, [7, 8], 4, eos=2)


def test_same_client_id_twice_no_cross_talk(make_executor, solo):
    ex = make_executor()
    a, b = Request([10, 11, 12], max_new_tokens=6, client_id="x"), Request([40, 41], max_new_tokens=9, client_id="x")
    ref_a, ref_b = solo(Request([10, 11, 12], max_new_tokens=6)), solo(Request([40, 41], max_new_tokens=9))
    out_a, out_b = ex.generate([a, b])
    assert out_a.request_id != out_b.request_id
    assert out_a.tokens == ref_a.tokens and out_b.tokens == ref_b.tokens


def test_enqueue_twice_refused(make_executor):
    ex = make_executor()
    r = Request([5, 6], max_new_tokens=2)
    ex.generate([r])
    with pytest.raises(ValueError, match="already enqueued"):
        ex.enqueue(r)


def test_parse_word_list():
    assert parse_word_list([5, 6, 7, -1], [2, 3, -1, -1]) == [[5, 6], [7]]
    assert parse_word_list([], []) == []
    with pytest.raises(ValueError, match="offsets"):
        parse_word_list([5, 6], [2, 1])


def test_numpy_and_torch_inputs_are_accepted():
    import numpy as np
    import torch

    r = Request(np.array([5, 6], dtype=np.int32), max_new_tokens=np.int64(3), stop_words=np.array([[7, 8]]))
    assert r.input_ids == [5, 6] and type(r.input_ids[0]) is int and r.max_new_tokens == 3
    assert r.stop_words == [[7, 8]]
    assert Request(torch.tensor([9, 10])).input_ids == [9, 10]
    assert Request([5], streaming=np.bool_(True)).streaming is True
    sp = SamplingParams(temperature=np.float32(0.5), top_k=np.int32(3), random_seed=np.uint64(2**63))
    assert sp.top_k == 3 and sp.random_seed == 2**63 and abs(sp.temperature - 0.5) < 1e-7


def test_generate_with_a_bad_request_queues_none(make_executor):
    ex = make_executor()
    good = Request([5, 6], max_new_tokens=2)
    with pytest.raises(ValueError, match="out of range"):
        ex.generate([good, Request([5, VOCAB])])
    assert good.request_id is None and ex.stats().completed == 0


def test_list_prefix_reads_like_the_slice_it_stands_for():
    from inflight_batcher.request import ListPrefix

    src = list(range(20))
    view, ref = ListPrefix(src, 3, 12), src[3:12]
    for sl in [slice(None), slice(-4, None), slice(2, 5), slice(5, 2), slice(None, None, 2), slice(None, None, -1),
               slice(-100, 100), slice(8, 20)]:  # fmt: skip
        assert view[sl] == ref[sl], sl
    assert [view[i] for i in range(-9, 9)] == [ref[i] for i in range(-9, 9)]
    for bad in (9, -10):
        with pytest.raises(IndexError):
            view[bad]
    assert view == ref and ref == view and list(view) == ref and len(view) == 9 and repr(view) == repr(ref)
    src.append(99)  # the list grows (and its items past `end` change): the view does not
    src[15] = -1
    assert view == ref
