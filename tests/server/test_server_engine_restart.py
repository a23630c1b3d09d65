"""A killed engine process: its requests in flight get a final error at once (no client waits for ever), the
backend starts a new one and says so in the log, and requests succeed again without anyone acting. A killed
Python-model stub: the launcher's watchdog reloads its model (Triton 2.51 never restarts a stub)."""

from __future__ import annotations

import os
import signal
import time

import pytest

from tests.server.conftest import start_server
from tests.server.http_utils import post

pytestmark = pytest.mark.server


@pytest.fixture(scope="module")
def restart_server(tiny_model, tmp_path_factory):
    yield from start_server(tiny_model, tmp_path_factory.mktemp("restart"), decoupled=True)


def _engine_pid(server) -> int:
    (pid,) = server.engine_pids()
    return pid


STREAMS = {
    "tensorrt_llm": {"input_ids": [1, 5, 6], "input_lengths": 3, "request_output_len": 240, "min_length": 240,
                     "streaming": True},
    "tensorrt_llm_bls": {"text_input": "hello", "max_tokens": 240, "min_length": 240, "stream": True},
    "ensemble": {"text_input": "hello", "max_tokens": 240, "min_length": 240, "stream": True},
}  # fmt: skip


@pytest.mark.parametrize("model", list(STREAMS))
def test_killed_engine_process_fails_its_requests_and_is_replaced(restart_server, model):
    url = f"{restart_server.http_url}/v2/models/ensemble/generate"
    body = {"text_input": "hello", "max_tokens": 8, "exclude_input_in_output": True}
    status, before = post(url, body)
    assert status == 200, before
    old = _engine_pid(restart_server)

    import json
    import urllib.request

    req = urllib.request.Request(
        f"{restart_server.http_url}/v2/models/{model}/generate_stream",
        data=json.dumps(STREAMS[model]).encode(),
        method="POST",
    )  # fmt: skip
    events = []
    t0 = time.monotonic()
    with urllib.request.urlopen(req, timeout=30) as r:  # a hang fails here, with a timeout
        for line in r:
            if not line.startswith(b"data:"):
                continue
            events.append(json.loads(line[5:]))
            if len(events) == 1:
                os.kill(old, signal.SIGKILL)  # mid-stream
    assert "error" in events[-1], events[-1]
    assert time.monotonic() - t0 < 20
    assert len(events) < 240

    deadline = time.monotonic() + 120
    while True:
        status, out = post(url, body)
        if status == 200:
            break
        assert status == 503 or "restart" in out.get("error", "") or "exited" in out.get("error", ""), out
        assert time.monotonic() < deadline, "no new engine process within 120 s"
        time.sleep(0.5)
    assert out["text_output"] == before["text_output"]  # the same greedy answer from the new process
    assert _engine_pid(restart_server) != old
    assert restart_server.log.read_text().count("restarted for model tensorrt_llm") >= 1


def _stub_pid(server, model: str) -> int:
    (pid,) = [p for p, args in server.children() if "triton_python_backend_stub" in args and f"/{model}/1/" in args]
    return pid


PY_MODEL_REQUESTS = {  # the Python models left (ensemble and BLS are text fronts of the native backend)
    "preprocessing": ("generate", {"QUERY": "hello", "REQUEST_OUTPUT_LEN": 6}),
    "postprocessing": (
        "infer",
        {
            "inputs": [
                {"name": "TOKENS_BATCH", "shape": [1, 1, 3], "datatype": "INT32", "data": [5, 6, 7]},
                {"name": "SEQUENCE_LENGTH", "shape": [1, 1], "datatype": "INT32", "data": [3]},
            ]
        },
    ),
}


@pytest.mark.parametrize("model", list(PY_MODEL_REQUESTS))
def test_killed_python_stub_is_replaced_by_the_launcher(restart_server, model):
    endpoint, body = PY_MODEL_REQUESTS[model]
    url = f"{restart_server.http_url}/v2/models/{model}/{endpoint}"
    status, before = post(url, body)
    assert status == 200, before
    old = _stub_pid(restart_server, model)
    os.kill(old, signal.SIGKILL)
    t0 = time.monotonic()
    while True:  # Triton alone answers 400 "Stub process ... is not healthy" from now on, for ever
        status, out = post(url, body)
        if status == 200 and _stub_pid(restart_server, model) != old:
            break
        assert time.monotonic() - t0 < 60, f"{model} not back within 60 s: {status} {out}"
        time.sleep(0.25)
    assert out == before  # the same answer from the new stub
    log = restart_server.log.read_text()
    assert f"the Python stub of model '{model}' (pid [{old}]) died; reloading it" in log
    assert f"model '{model}' reloaded in" in log


def test_clients_cannot_use_the_repository_api(restart_server):
    """Explicit model control (for the watchdog) must not let any client unload a model."""
    status, out = post(f"{restart_server.http_url}/v2/repository/models/tensorrt_llm/unload", {})
    assert status in (401, 403), (status, out)
    status, out = post(f"{restart_server.http_url}/v2/models/ensemble/generate", {"text_input": "hi", "max_tokens": 2})
    assert status == 200, out
