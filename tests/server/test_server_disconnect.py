"""Reliability fault 1: a client that closes its HTTP SSE stream mid-generation. The request must end
early (not run on to max_tokens) and its KV blocks return.

Through every model that serves text or ids (`tensorrt_llm`, `ensemble`, `tensorrt_llm_bls`), tritonserver
cancels the request and the backend stops it: the request ends within a second of the client leaving. (The
`ensemble` is a text front of the native backend, not a Triton ensemble, which in 2.51 would not pass the
cancellation to its steps: issue #16 item 3.)"""

import http.client
import json
import time

import pytest

from tests.server.conftest import settled, start_server

LONG = 3000  # tokens a request would run without the abort: seconds on this model


@pytest.fixture(scope="module")
def long_server(tmp_path_factory):
    from tests.helpers import build_engine, make_tiny_llama

    d = tmp_path_factory.mktemp("long")
    make_tiny_llama(d / "hf", max_position_embeddings=4096)
    build_engine(d / "hf", d / "engine", max_batch_size=8, max_seq_len=4096)
    yield from start_server((d / "hf", d / "engine"), d / "server", decoupled=True)


def _output_tokens_sum(server) -> float:
    for line in server.metrics().splitlines():
        if line.startswith("nv_llm_output_token_len_sum") and 'model="tensorrt_llm"' in line:
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def _abandon(server, model: str, body: dict) -> tuple[float, float]:
    """Reads 3 events of a stream, closes the connection; the tokens the request produced, and the seconds
    from the close until the engine ended it."""
    before = settled(lambda: _output_tokens_sum(server))
    conn = http.client.HTTPConnection("localhost", server.http_port, timeout=30)
    conn.request("POST", f"/v2/models/{model}/generate_stream", json.dumps(body))
    resp = conn.getresponse()
    assert resp.status == 200
    events = 0
    while events < 3:
        if resp.fp.readline().startswith(b"data:"):
            events += 1
    conn.sock.close()
    conn.close()
    closed = time.monotonic()
    while _output_tokens_sum(server) == before and time.monotonic() < closed + 60:
        time.sleep(0.02)
    return _output_tokens_sum(server) - before, time.monotonic() - closed


TEXT = {"text_input": "What is machine learning?", "max_tokens": LONG, "min_length": LONG, "stream": True}
IDS = {"input_ids": [1, 5, 6, 7], "input_lengths": 4, "request_output_len": LONG, "min_length": LONG,
       "streaming": True}  # fmt: skip


@pytest.mark.parametrize(
    "model, body",
    [
        ("tensorrt_llm", IDS),
        ("tensorrt_llm_bls", TEXT),
        ("ensemble", TEXT),
    ],
)
def test_closing_the_stream_aborts_the_request(long_server, model, body):
    free = long_server.metric("nv_trt_llm_kv_cache_block_metrics", "max")
    generated, seconds = _abandon(long_server, model, body)
    assert 3 <= generated < LONG / 4, f"the abandoned request produced {generated} tokens"
    # The engine's request ends within a second (metrics refresh every 100 ms; CPU steps are slow).
    assert seconds < 1.5, f"the abandoned request ran on for {seconds:.2f} s"
    deadline = time.monotonic() + 10
    while long_server.metric("nv_trt_llm_kv_cache_block_metrics", "free") != free and time.monotonic() < deadline:
        time.sleep(0.05)
    assert long_server.metric("nv_trt_llm_kv_cache_block_metrics", "free") == free
    conn = http.client.HTTPConnection("localhost", long_server.http_port, timeout=30)
    conn.request("POST", "/v2/models/ensemble/generate", json.dumps({"text_input": "hi", "max_tokens": 4}))
    assert conn.getresponse().status == 200
