"""The engine model's sender: queued streaming outputs of a row go out as one response (backend/engine_model.py).

No engine, no server: outputs are put on the model's outbox by hand (as the executor's callback does), then
the send loop runs in the test's thread against fake pb_utils senders that record every response.
"""

from __future__ import annotations

import queue
import threading

import numpy as np
import pytest

from backend.request_parsing import ParsedRow
from inflight_batcher.request import Output

FINAL = 1  # fake_pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL


@pytest.fixture
def em(monkeypatch):
    import backend.engine_model as em
    import backend.metrics as mm
    import backend.triton_utils as tu
    from tests.server import fake_pb_utils as fp

    for mod in (tu, em):
        monkeypatch.setattr(mod, "pb_utils", fp)
    monkeypatch.setattr(mm, "pb_utils", None)
    return em


def _model(em):
    """An EngineModel with what the sender uses, and no executor."""
    import logging

    from backend.metrics import EngineMetrics

    m = em.EngineModel.__new__(em.EngineModel)
    m.logger = logging.getLogger("test")
    m.decoupled = True
    m._lock = threading.Lock()
    m._streams, m._by_id = set(), {}
    m._outbox = queue.Queue()
    m.metrics = EngineMetrics("tensorrt_llm", "1")
    m._zero_context_logits = np.zeros((1, 1, 1), np.float32)
    m._zero_generation_logits = np.zeros((1, 1, 1, 1), np.float32)
    return m


def _stream(em, n_rows: int = 1, streaming: bool = True, beam_width: int = 1, requested=()):
    from tests.server import fake_pb_utils as fp

    req = fp.Request({})
    s = em._Stream(request=req, triton_id="", streaming=streaming, sender=req.sender)
    s.requested = frozenset(requested)
    for b in range(n_rows):
        sampling = {"beam_width": beam_width}
        parsed = ParsedRow(input_ids=[1, 2], max_new_tokens=8, end_id=None, pad_id=None, sampling=sampling)
        s.rows.append(em._Row(batch_index=b, parsed=parsed, exec_id=b))
    return s


class _Gen:
    """Outputs of one greedy row, as the executor makes them: `tokens` and `log_probs` are whole lists."""

    def __init__(self, log_probs: bool = False):
        self.tokens: list[int] = []
        self.log_probs = log_probs

    def __call__(self, *new: int, reason: str | None = None, error: str | None = None) -> Output:
        self.tokens = self.tokens + list(new)
        lps = [-0.5 * (i + 1) for i in range(len(self.tokens))] if self.log_probs else None
        return Output(
            request_id=0,
            new_tokens=[list(new)],
            tokens=[list(self.tokens)],
            finished=reason is not None,
            finish_reason=reason,
            error=error,
            cum_log_probs=[sum(lps)] if lps else None,
            log_probs=[lps] if lps else None,
        )


def _run(m, items) -> None:
    """Queue all items, then run the send loop until the stop marker: everything is found queued."""
    for it in items:
        m._outbox.put(it)
    m._outbox.put(None)
    m._send_loop()


def _ids(resp) -> list[int]:
    return resp.tensors["output_ids"].reshape(-1).tolist()


def _prefix(resp) -> list[int]:
    return resp.tensors["stream_prefix_ids"].reshape(-1).tolist()


def test_queued_chunks_of_two_rows_merge_in_order(em):
    m = _model(em)
    s = _stream(em, n_rows=2)
    a, b = s.rows
    ga, gb = _Gen(log_probs=True), _Gen()
    # Row 1 appears first; row 0's final output closes its group; row 1 is still running.
    _run(m, [(s, b, gb(20)), (s, a, ga(10)), (s, b, gb(21)), (s, a, ga(11)), (s, a, ga(12, reason="length"))])
    sent = s.sender.responses
    assert [(r.tensors["batch_index"].item(), _ids(r), f) for r, f in sent] == [(1, [20, 21], 0), (0, [10, 11, 12], 0)]
    rb, ra = sent[0][0], sent[1][0]
    assert _prefix(rb) == [] and _prefix(ra) == []
    assert rb.tensors["sequence_length"].tolist() == [[2]] and ra.tensors["sequence_length"].tolist() == [[3]]
    assert not rb.tensors["stream_final"].item() and ra.tensors["stream_final"].item()
    # Log probs: the merged chunk carries one per merged token, the cumulative one is the latest.
    np.testing.assert_allclose(ra.tensors["output_log_probs"], [[[-0.5, -1.0, -1.5]]])
    np.testing.assert_allclose(ra.tensors["cum_log_probs"], [[-3.0]])
    assert rb.tensors["output_log_probs"].shape == (1, 1, 0)
    # Later, row 1 goes on alone: its prefix is everything sent before; the last response is final.
    _run(m, [(s, b, gb(22)), (s, b, gb(23, reason="end_id"))])
    r, f = s.sender.responses[-1]
    assert len(s.sender.responses) == 3 and f == FINAL
    assert _ids(r) == [22, 23] and _prefix(r) == [20, 21] and r.tensors["stream_final"].item()
    assert s.closed and s.final_sent


def test_one_item_at_a_time_is_one_response_per_output(em):
    """A sender that keeps up sends each output on its own, as it was produced."""
    m = _model(em)
    s = _stream(em)
    g = _Gen(log_probs=True)
    outs = [g(5), g(6, 7), g(8), g(reason="length")]  # the executor may send several tokens, or none
    for out in outs:
        _run(m, [(s, s.rows[0], out)])
    sent = s.sender.responses
    assert [_ids(r) for r, _ in sent] == [[5], [6, 7], [8], []]
    assert [_prefix(r) for r, _ in sent] == [[], [5], [5, 6, 7], [5, 6, 7, 8]]
    assert [f for _, f in sent] == [0, 0, 0, FINAL]
    assert [r.tensors["output_log_probs"].shape[-1] for r, _ in sent] == [1, 2, 1, 0]
    np.testing.assert_allclose(sent[1][0].tensors["output_log_probs"], [[[-1.0, -1.5]]])


def test_error_output_is_never_merged(em):
    m = _model(em)
    s = _stream(em)
    g = _Gen()
    _run(m, [(s, s.rows[0], g(1)), (s, s.rows[0], g(2)), (s, s.rows[0], g(3, reason="error", error="boom"))])
    (first, f1), (err, f2) = s.sender.responses
    assert _ids(first) == [1, 2] and f1 == 0 and first.error is None
    assert err.error is not None and "boom" in err.error.message() and f2 == FINAL


def test_separate_streams_and_non_streaming_rows(em):
    m = _model(em)
    s1, s2 = _stream(em), _stream(em)
    plain = _stream(em, streaming=False)
    g1, g2, gp = _Gen(), _Gen(), _Gen()
    items = [
        (s1, s1.rows[0], g1(1)),
        (s2, s2.rows[0], g2(9)),
        (plain, plain.rows[0], gp(4, 5, reason="length")),
        (s1, s1.rows[0], g1(2, reason="end_id")),
        (s2, s2.rows[0], g2(8)),
    ]
    _run(m, items)
    assert [(_ids(r), f) for r, f in s1.sender.responses] == [([1, 2], FINAL)]
    assert [(_ids(r), f) for r, f in s2.sender.responses] == [([9, 8], 0)]
    ((r, f),) = plain.sender.responses
    assert f == FINAL and r.tensors["output_ids"].tolist() == [[[1, 2, 4, 5]]]  # prompt + completion


def test_requested_outputs_only(em):
    m = _model(em)
    s = _stream(em, requested=("output_ids", "sequence_length"))
    g = _Gen()
    _run(m, [(s, s.rows[0], g(3)), (s, s.rows[0], g(4, reason="length"))])
    ((r, f),) = s.sender.responses
    assert sorted(r.tensors) == ["output_ids", "sequence_length"] and _ids(r) == [3, 4] and f == FINAL


def test_beam_outputs_are_not_concatenated(em):
    row = _stream(em, beam_width=2).rows[0]
    beams = [
        Output(request_id=0, new_tokens=[[1], [2]], tokens=[[1], [2]]),
        Output(request_id=0, new_tokens=[[2, 3], [1, 4]], tokens=[[2, 3], [1, 4]], finished=True),
    ]
    assert em.merge_outputs(row, beams) is beams[-1]


def test_long_stream_prefix_buffer_grows(em):
    m = _model(em)
    s = _stream(em)
    g = _Gen()
    for t in range(40):  # past max_new_tokens (8) and the first buffer
        _run(m, [(s, s.rows[0], g(t))])
    sent = [r for r, _ in s.sender.responses]
    assert all(_prefix(r) == list(range(i)) for i, r in enumerate(sent))


# -- with the executor on a tiny model, and a sender slower than the engine ------------------------------
@pytest.fixture(scope="module")
def engine_dir(tmp_path_factory):
    from tests.helpers import build_engine, make_tiny_llama

    d = tmp_path_factory.mktemp("coalescing_engine")
    make_tiny_llama(d / "hf")
    return build_engine(d / "hf", d / "engine", max_batch_size=8)


def test_lagging_sender_merges_and_delivers_every_token_once(em, engine_dir):
    """Each send takes 5 ms (the H100 case: a response costs more than an engine step): the responses
    carry several tokens, and the streamed ids of each request are exactly its non-streamed ids."""
    import time

    from tests.server import fake_pb_utils as fp

    class SlowSender(fp.Sender):
        def send(self, response=None, flags=0):
            time.sleep(0.005)
            super().send(response, flags)

    cfg = {
        "name": "tensorrt_llm",
        "model_transaction_policy": {"decoupled": True},
        "parameters": {"gpt_model_path": {"string_value": str(engine_dir)}, "device": {"string_value": "cpu"}},
    }
    m = em.EngineModel()
    m.initialize(fp.model_args(cfg))
    try:
        n = 24

        def request(i: int, streaming: bool):
            inputs = {"input_ids": [[1, 5 + i, 6, 7 + 2 * i]], "input_lengths": [4], "request_output_len": [n]}
            r = fp.Request({**inputs, "streaming": [streaming], "exclude_input_in_output": [True]})
            r.sender = SlowSender()
            return r

        streamed = [request(i, True) for i in range(8)]
        m.execute(streamed)
        assert all(r.sender.done.wait(120) for r in streamed)
        whole = [request(i, False) for i in range(8)]
        m.execute(whole)
        assert all(r.sender.done.wait(120) for r in whole)
        n_responses = n_tokens = 0
        for rs, rw in zip(streamed, whole, strict=True):
            ((full, _),) = rw.sender.responses
            expected = full.tensors["output_ids"].reshape(-1).tolist()
            chunks = [resp.tensors["output_ids"].reshape(-1).tolist() for resp, _ in rs.sender.responses]
            prefixes = [resp.tensors["stream_prefix_ids"].reshape(-1).tolist() for resp, _ in rs.sender.responses]
            assert [t for c in chunks for t in c] == expected and expected  # may end early, on end_id
            assert prefixes == [[t for c in chunks[:k] for t in c] for k in range(len(chunks))]
            assert [f for _, f in rs.sender.responses] == [0] * (len(chunks) - 1) + [FINAL]
            n_responses += len(chunks)
            n_tokens += len(expected)
        assert n_responses < n_tokens  # merged under load
    finally:
        m.finalize()
