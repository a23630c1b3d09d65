"""The same model repository with `decoupled_mode:false`: one response per request, streaming refused."""

from __future__ import annotations

import pytest

from backend.detokenizer import decode
from tests.server.conftest import start_server
from tests.server.http_utils import post, stream

pytestmark = pytest.mark.server


@pytest.fixture(scope="module")
def plain_server(tiny_model, tmp_path_factory):
    # A short executor queue, to see requests beyond it refused at once (reliability.md fault 4).
    extra = {"executor_max_queue_size": "2", "executor_max_batch_size": "2"}
    yield from start_server(tiny_model, tmp_path_factory.mktemp("plain_server"), decoupled=False, extra=extra)


@pytest.mark.parametrize("model", ["ensemble", "tensorrt_llm_bls"])
def test_generate_and_streaming_refused(plain_server, reference, model):
    prompt = "What is machine learning?"
    status, out = post(
        f"{plain_server.http_url}/v2/models/{model}/generate",
        {"text_input": prompt, "max_tokens": 6, "exclude_input_in_output": True},
    )
    assert status == 200 and out["text_output"] == decode(reference.tokenizer, reference(prompt, 6))
    events = stream(
        f"{plain_server.http_url}/v2/models/{model}/generate_stream",
        {"text_input": prompt, "max_tokens": 6, "stream": True},
    )
    assert "decoupled" in events[-1].get("error", ""), events


def test_core_model_http_infer(plain_server, reference):
    ids = reference.tokenizer.encode("hello")
    body = {
        "inputs": [
            {"name": "input_ids", "datatype": "INT32", "shape": [1, len(ids)], "data": ids},
            {"name": "input_lengths", "datatype": "INT32", "shape": [1, 1], "data": [len(ids)]},
            {"name": "request_output_len", "datatype": "INT32", "shape": [1, 1], "data": [5]},
        ]
    }
    status, out = post(f"{plain_server.http_url}/v2/models/tensorrt_llm/infer", body)
    assert status == 200, out
    got = {o["name"]: o for o in out["outputs"]}
    assert got["output_ids"]["data"] == ids + reference("hello", 5)
    assert got["sequence_length"]["data"] == [len(ids) + 5]


def test_full_queue_refuses_at_once(plain_server):
    from concurrent.futures import ThreadPoolExecutor

    body = {"text_input": "hello", "max_tokens": 30}
    url = f"{plain_server.http_url}/v2/models/ensemble/generate"
    with ThreadPoolExecutor(24) as pool:
        results = list(pool.map(lambda _: post(url, body), range(24)))
    ok = [out for status, out in results if status == 200]
    refused = [out for status, out in results if status != 200]
    assert {status for status, _ in results} <= {200, 400, 503}, results
    assert ok and refused, results
    assert all("queue is full" in out.get("error", "") for out in refused), refused
    status, out = post(url, body)
    assert status == 200 and out["text_output"]


def _core_body(ids: list[int], n: int, request_id: str | None = None, **extra) -> dict:
    inputs = [
        {"name": "input_ids", "datatype": "INT32", "shape": [1, len(ids)], "data": ids},
        {"name": "input_lengths", "datatype": "INT32", "shape": [1, 1], "data": [len(ids)]},
        {"name": "request_output_len", "datatype": "INT32", "shape": [1, 1], "data": [n]},
        {"name": "min_length", "datatype": "INT32", "shape": [1, 1], "data": [n]},
    ]
    for name, (dtype, value) in extra.items():
        inputs.append({"name": name, "datatype": dtype, "shape": [1, 1], "data": [value]})
    body = {"inputs": inputs}
    if request_id is not None:
        body["id"] = request_id
    return body


def _wait_scheduled(server, running: bool) -> None:
    """Until the engine reports a request scheduled (`running`) or none: the metric is refreshed every
    stats_check_period_ms, so first wait for idle (no stale value of an earlier test), then for the start."""
    import time

    deadline = time.monotonic() + 60
    while (server.metric("nv_trt_llm_request_metrics", "scheduled") > 0) != running:
        assert time.monotonic() < deadline, f"the engine never became {'busy' if running else 'idle'}"
        time.sleep(0.02)


def test_short_request_overtakes_a_running_long_one(plain_server, reference):
    """Non-decoupled requests are batched in flight: a 1-token request sent while a 120-token one runs
    joins the running batch and is answered first (execute returns at once; responses go through the
    requests' response factories)."""
    import threading
    import time

    url = f"{plain_server.http_url}/v2/models/tensorrt_llm/infer"
    ids = reference.tokenizer.encode("hello")
    done: dict[str, float] = {}

    def run(name: str, n: int) -> None:
        status, out = post(url, _core_body(ids, n))
        assert status == 200, out
        done[name] = time.monotonic()

    _wait_scheduled(plain_server, running=False)
    long = threading.Thread(target=run, args=("long", 240))
    long.start()
    _wait_scheduled(plain_server, running=True)
    run("short", 1)
    long.join(120)
    assert done["short"] < done["long"], done


def test_stop_request_ends_a_running_non_decoupled_request(plain_server, reference):
    import threading

    url = f"{plain_server.http_url}/v2/models/tensorrt_llm/infer"
    ids = reference.tokenizer.encode("hello")
    result: dict = {}

    def run() -> None:
        result["long"] = post(url, _core_body(ids, 240, request_id="long-1"))

    _wait_scheduled(plain_server, running=False)
    t = threading.Thread(target=run)
    t.start()
    _wait_scheduled(plain_server, running=True)
    status, out = post(url, _core_body([1], 1, request_id="long-1", stop=("BOOL", True)))
    assert status == 200, out
    t.join(60)
    status, out = result["long"]
    assert status == 200, out
    got = {o["name"]: o for o in out["outputs"]}
    assert len(ids) < got["sequence_length"]["data"][0] < len(ids) + 240  # ended early, prompt included
