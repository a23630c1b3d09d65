"""End to end through the real tritonserver: generate endpoints, gRPC streaming, cancellation, metrics."""

from __future__ import annotations

import queue
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from backend.detokenizer import decode
from tests.server.http_utils import post, stream

pytestmark = pytest.mark.server

PROMPTS = [
    "What is machine learning?",
    "机器学习是人工智能的一个分支。",
    "Emoji test: 🙂 🚀 and café",
    "The quick brown fox",
]


def completion_text(reference, prompt: str, n: int) -> str:
    return decode(reference.tokenizer, reference(prompt, n))


@pytest.mark.parametrize("model", ["ensemble", "tensorrt_llm_bls"])
@pytest.mark.parametrize("prompt", PROMPTS[:2])
def test_generate_equals_engine_greedy(server, reference, model, prompt):
    body = {"text_input": prompt, "max_tokens": 12, "bad_words": "", "stop_words": ""}
    status, out = post(f"{server.http_url}/v2/models/{model}/generate", body)
    assert status == 200, out
    tok = reference.tokenizer
    assert out["text_output"] == decode(tok, tok.encode(prompt) + reference(prompt, 12))
    status, out = post(f"{server.http_url}/v2/models/{model}/generate", {**body, "exclude_input_in_output": True})
    assert status == 200, out
    assert out["text_output"] == completion_text(reference, prompt, 12)


@pytest.mark.parametrize("model", ["ensemble", "tensorrt_llm_bls"])
@pytest.mark.parametrize("prompt", PROMPTS)
def test_generate_stream_concatenates_to_whole_text(server, reference, model, prompt):
    body = {"text_input": prompt, "max_tokens": 16, "stream": True, "exclude_input_in_output": True}
    events = stream(f"{server.http_url}/v2/models/{model}/generate_stream", body)
    assert events and all("error" not in e for e in events), events
    streamed = "".join(e.get("text_output", "") for e in events)
    whole = completion_text(reference, prompt, 16)
    assert streamed.encode() == whole.encode()
    status, out = post(f"{server.http_url}/v2/models/{model}/generate", {**body, "stream": False})
    assert status == 200 and out["text_output"].encode() == whole.encode()


def _grpc_inputs(ids: list[int], max_tokens: int, streaming: bool = True, **extra):
    import tritonclient.grpc as g

    def inp(name, arr, dt):
        t = g.InferInput(name, list(arr.shape), dt)
        t.set_data_from_numpy(arr)
        return t

    ins = [
        inp("input_ids", np.array([ids], np.int32), "INT32"),
        inp("input_lengths", np.array([[len(ids)]], np.int32), "INT32"),
        inp("request_output_len", np.array([[max_tokens]], np.int32), "INT32"),
        inp("streaming", np.array([[streaming]], bool), "BOOL"),
    ]
    for name, (arr, dt) in extra.items():
        ins.append(inp(name, arr, dt))
    return ins


class GrpcStream:
    """A tritonclient gRPC stream collecting responses in a queue."""

    def __init__(self, url: str):
        import tritonclient.grpc as g

        self.client = g.InferenceServerClient(url)
        self.q: queue.Queue = queue.Queue()
        self.client.start_stream(callback=lambda result, error: self.q.put((result, error)))

    def send(self, inputs, request_id: str = "", model: str = "tensorrt_llm"):
        self.client.async_stream_infer(model, inputs, request_id=request_id, enable_empty_final_response=True)

    def collect(self, timeout: float = 120) -> tuple[list[int], object]:
        tokens: list[int] = []
        while True:
            result, error = self.q.get(timeout=timeout)
            if error is not None:
                return tokens, error
            ids = result.as_numpy("output_ids")
            if ids is not None:
                tokens += ids.reshape(-1).tolist()
            if result.get_response().parameters["triton_final_response"].bool_param:
                return tokens, None

    def close(self, cancel: bool = False):
        self.client.stop_stream(cancel_requests=cancel)
        self.client.close()


def test_grpc_streaming_core_model(server, reference):
    tok = reference.tokenizer
    s = GrpcStream(server.grpc_url)
    try:
        for prompt in PROMPTS[:2]:
            ids = tok.encode(prompt)
            s.send(_grpc_inputs(ids, 12), request_id="7")
            tokens, err = s.collect()
            assert err is None, err
            assert tokens == reference(prompt, 12)
    finally:
        s.close()


def test_grpc_non_streaming_returns_prompt_and_completion(server, reference):
    tok = reference.tokenizer
    s = GrpcStream(server.grpc_url)
    try:
        ids = tok.encode(PROMPTS[0])
        s.send(_grpc_inputs(ids, 8, streaming=False))
        tokens, err = s.collect()
        assert err is None and tokens == ids + reference(PROMPTS[0], 8)
    finally:
        s.close()


def test_32_concurrent_streams(server, reference):
    prompts = [f"{PROMPTS[i % 4]} #{i}" for i in range(32)]
    expected = {p: completion_text(reference, p, 10) for p in prompts}

    def one(p):
        model = "ensemble" if prompts.index(p) % 2 == 0 else "tensorrt_llm_bls"
        events = stream(
            f"{server.http_url}/v2/models/{model}/generate_stream",
            {"text_input": p, "max_tokens": 10, "stream": True, "exclude_input_in_output": True},
        )
        return p, "".join(e.get("text_output", "") for e in events), events

    with ThreadPoolExecutor(32) as pool:
        results = list(pool.map(one, prompts))
    for p, text, events in results:
        assert text == expected[p], (p, events[-1:])


def test_16_concurrent_grpc_streams_deliver_every_token_once(server, reference):
    """Under load the sender may merge a stream's queued tokens into one response: each token still
    arrives exactly once, in order, and each response's stream_prefix_ids is what came before it."""
    tok = reference.tokenizer
    prompts = [f"{PROMPTS[i % 4]} ({i})" for i in range(16)]
    n = 48
    expected = {p: reference(p, n) for p in prompts}

    def one(p):
        s = GrpcStream(server.grpc_url)
        try:
            s.send(_grpc_inputs(tok.encode(p), n))
            chunks, prefixes, finals = [], [], []
            while True:
                result, error = s.q.get(timeout=120)
                assert error is None, error
                ids = result.as_numpy("output_ids")
                if ids is not None:
                    chunks.append(ids.reshape(-1).tolist())
                    prefixes.append(result.as_numpy("stream_prefix_ids").reshape(-1).tolist())
                    finals.append(bool(result.as_numpy("stream_final").reshape(-1)[0]))
                if result.get_response().parameters["triton_final_response"].bool_param:
                    return p, chunks, prefixes, finals
        finally:
            s.close(cancel=True)  # never waits for a stream that stopped answering

    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(one, prompts))
    for p, chunks, prefixes, finals in results:
        assert [t for c in chunks for t in c] == expected[p], p
        seen: list[int] = []
        for c, prefix in zip(chunks, prefixes, strict=True):
            assert prefix == seen
            seen += c
        assert finals[-1] and not any(finals[:-1])
    _wait_idle(server)


def _wait_idle(server, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    used = active = None
    while time.monotonic() < deadline:
        used = server.metric("nv_trt_llm_kv_cache_block_metrics", "used")
        active = server.metric("nv_trt_llm_request_metrics", "active")
        if used == 0 and active == 0:
            return
        time.sleep(0.1)
    raise AssertionError(f"KV blocks not freed: used={used} active={active}")


def _wait_busy(server, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.metric("nv_trt_llm_kv_cache_block_metrics", "used") > 0:
            return
        time.sleep(0.02)
    raise AssertionError("the request never took KV blocks")


def test_grpc_cancellation_frees_kv_blocks(server, reference):
    tok = reference.tokenizer
    s = GrpcStream(server.grpc_url)
    s.send(_grpc_inputs(tok.encode(PROMPTS[0]), 240), request_id="cancel-me")
    s.q.get(timeout=60)  # first chunk: the request runs
    _wait_busy(server)
    s.close(cancel=True)
    _wait_idle(server)


def test_stop_request_ends_stream_and_frees_kv_blocks(server, reference):
    tok = reference.tokenizer
    s = GrpcStream(server.grpc_url)
    stopper = GrpcStream(server.grpc_url)
    try:
        s.send(_grpc_inputs(tok.encode(PROMPTS[0]), 240), request_id="stop-me")
        s.q.get(timeout=60)
        stopper.send(_grpc_inputs([1], 0, stop=(np.array([[True]]), "BOOL")), request_id="stop-me")
        _, err = stopper.collect()
        assert err is None, err
        t0 = time.monotonic()
        tokens, err = s.collect(timeout=60)
        assert err is None and time.monotonic() - t0 < 30
        assert len(tokens) < 240
        _wait_idle(server)
    finally:
        s.close()
        stopper.close()


def test_metrics_families_present(server):
    # The token-length histograms have series once a request has finished.
    status, _ = post(f"{server.http_url}/v2/models/ensemble/generate", {"text_input": "hello", "max_tokens": 2})
    assert status == 200
    import time

    deadline = time.monotonic() + 10
    while "# TYPE nv_llm_input_token_len" not in server.metrics() and time.monotonic() < deadline:
        time.sleep(0.05)
    text = server.metrics()
    for family in [
        "nv_trt_llm_request_metrics",
        "nv_trt_llm_runtime_memory_metrics",
        "nv_trt_llm_kv_cache_block_metrics",
        "nv_trt_llm_inflight_batcher_metrics",
        "nv_trt_llm_general_metrics",
        "nv_trt_llm_request_outcome_metrics",
        "nv_llm_input_token_len",
        "nv_llm_output_token_len",
    ]:
        assert f"# TYPE {family}" in text, family
    # Series this engine has no value for are left out rather than reported as a constant 0.
    assert "nv_trt_llm_disaggregated_serving_metrics" not in text
    assert 'memory_type="pinned"' not in text
    assert 'kv_cache_block_type="reused"' in text  # 0 unless enable_kv_cache_reuse is on
    assert server.metric("nv_trt_llm_kv_cache_block_metrics", "max") > 0
    assert server.metric("nv_trt_llm_kv_cache_block_metrics", "tokens_per") == 8


def test_stop_words_bad_words_end_id_log_probs(server, reference):
    url = f"{server.http_url}/v2/models/ensemble/generate"
    prompt = PROMPTS[0]
    tok = reference.tokenizer
    full = reference(prompt, 16)
    # Stop word: a word made of the 3rd and 4th generated tokens -> the output ends right after them.
    stop_text = decode(tok, full[2:4])
    stop_ids = tok.encode(stop_text, add_special_tokens=False)
    status, out = post(
        url, {"text_input": prompt, "max_tokens": 16, "stop_words": [stop_text], "exclude_input_in_output": True}
    )
    assert status == 200, out
    expected = reference(prompt, 16, stop_words=[stop_ids])
    assert out["text_output"] == decode(tok, expected)
    assert len(expected) < 16
    # Bad word: the first generated token is banned -> a different first token.
    bad_text = decode(tok, full[:1])
    status, out = post(
        url, {"text_input": prompt, "max_tokens": 4, "bad_words": [bad_text], "exclude_input_in_output": True}
    )
    assert status == 200, out
    bad_ids = tok.encode(bad_text, add_special_tokens=False)
    assert out["text_output"] == decode(tok, reference(prompt, 4, bad_words=[bad_ids]))
    # end_id: the 2nd generated token ends the request (and is not in the output).
    status, out = post(
        url, {"text_input": prompt, "max_tokens": 16, "end_id": full[1], "exclude_input_in_output": True}
    )
    assert status == 200 and out["text_output"] == decode(tok, reference(prompt, 16, end_id=full[1]))
    # Log probs: one per generated token, cumulative = sum.
    status, out = post(
        url, {"text_input": prompt, "max_tokens": 6, "return_log_probs": True, "exclude_input_in_output": True}
    )
    assert status == 200, out
    lps = np.asarray(out["output_log_probs"], dtype=np.float64).reshape(-1)
    assert lps.size == 6 and np.all(lps <= 0)
    assert abs(float(np.asarray(out["cum_log_probs"]).reshape(-1)[0]) - lps.sum()) < 1e-3


def test_same_request_id_twice_no_cross_talk(server, reference):
    tok = reference.tokenizer
    streams = [GrpcStream(server.grpc_url) for _ in range(2)]
    try:
        for s, prompt in zip(streams, PROMPTS[:2], strict=True):
            s.send(_grpc_inputs(tok.encode(prompt), 12), request_id="same-id")
        for s, prompt in zip(streams, PROMPTS[:2], strict=True):
            tokens, err = s.collect()
            assert err is None and tokens == reference(prompt, 12)
    finally:
        for s in streams:
            s.close(cancel=True)


def test_200_identical_requests_at_once(server, reference):
    body = {"text_input": PROMPTS[0], "max_tokens": 4, "exclude_input_in_output": True}
    expected = completion_text(reference, PROMPTS[0], 4)
    with ThreadPoolExecutor(200) as pool:
        results = list(pool.map(lambda _: post(f"{server.http_url}/v2/models/ensemble/generate", body), range(200)))
    assert all(status == 200 and out["text_output"] == expected for status, out in results)
    _wait_idle(server)


def test_clean_start_prints_no_error(server):
    """On a machine without a GPU the launcher turns off what needs one: the server's log has no error line
    (Triton's are `E<date> ...`) and no NVML / DCGM / pinned-memory complaints."""
    import re

    log = server.log.read_text()
    assert "tritonserver ready" in log
    log = log.split("tritonserver ready")[0]  # the start; later tests send bad requests on purpose
    errors = [line for line in log.splitlines() if re.match(r"E\d{4} ", line)]
    assert errors == []
    for noise in ("NVML", "DCGM", "pinned memory"):
        assert noise not in log, noise


def test_huge_random_seed_hurts_no_other_request(server, reference):
    """A UINT64 seed >= 2**63 (valid for the interface) among normal requests: all of them succeed (it used
    to fail every request of its step)."""
    url = f"{server.http_url}/v2/models/ensemble/generate"
    normal = {"text_input": PROMPTS[0], "max_tokens": 8, "exclude_input_in_output": True}
    seeded = {**normal, "random_seed": 2**64 - 1, "temperature": 1.0}
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda b: post(url, b), [seeded] + [normal] * 7))
    assert all(status == 200 for status, _ in results), results
    expected = completion_text(reference, PROMPTS[0], 8)
    assert all(out["text_output"] == expected for _, out in results[1:])
    assert post(url, seeded)[1]["text_output"] == results[0][1]["text_output"]  # the seed is reproducible


def test_rejected_requests_are_counted(server):
    """A request refused at arrival (bad input) counts in the outcome metric family, as failed and cancelled
    requests do (Triton's own nv_inference_request_failure cannot see it: the request was already accepted)."""
    import time

    before = server.metric("nv_trt_llm_request_outcome_metrics", "rejected")
    status, _ = post(
        f"{server.http_url}/v2/models/ensemble/generate", {"text_input": "hello", "max_tokens": 4, "top_p": 2.0}
    )
    assert status == 400
    deadline = time.monotonic() + 10
    while server.metric("nv_trt_llm_request_outcome_metrics", "rejected") < before + 1:
        assert time.monotonic() < deadline
        time.sleep(0.05)
