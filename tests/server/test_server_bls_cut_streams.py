"""Reliability: a storm of `tensorrt_llm_bls` streams that clients cut short (closed after the first event, or
left unread, then dropped) must leave the server serving, every cut stream's engine request must end and
free its KV blocks, and later requests must get the same answers as before (docs/reliability.md, soak run 2).

History: while the BLS was a Python model, its stub died with SIGSEGV after tens to a few hundred such streams
(a finished BLS response iterator freed without the GIL), and after a fix of that, the storm could still stall
the model (streams with no event for 180 s) inside the full suite on 2 cores. The BLS is now a text front of
the native backend (no Python stub, cancellation reaches the engine): this test guards that path."""

from __future__ import annotations

import json
import random
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.server.conftest import start_server
from tests.server.http_utils import post, stream

pytestmark = pytest.mark.server

PROMPTS = ["What is machine learning?", "Tell me about the ocean and the stars", "Why is the sky blue?"]
CUTTERS, NORMALS = 6, 2  # client threads
STORM_S, MAX_CUTS = 40.0, 1000
CHECK_EVERY_S = 1.0  # the engine process's liveness, checked this often during the storm
# How long any one request may wait: slowness under the storm is tolerated here, a dead process, a stall or
# a wrong answer is not.
WAIT_S = 60


@pytest.fixture(scope="module")
def storm_server(tiny_model, tmp_path_factory):
    yield from start_server(tiny_model, tmp_path_factory.mktemp("bls_cut_streams"), decoupled=True)


def _cut(port: int, prompt: str, stall: float | None) -> None:
    """One stream cut short: closed after its first event, or (`stall`) left unread for that long, then
    dropped with its unread responses."""
    body = json.dumps({"text_input": prompt, "max_tokens": 200, "min_length": 200, "stream": True}).encode()
    head = (
        f"POST /v2/models/tensorrt_llm_bls/generate_stream HTTP/1.1\r\nHost: localhost\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode()
    with socket.create_connection(("localhost", port), timeout=WAIT_S) as s:
        s.sendall(head + body)
        if stall is not None:
            time.sleep(stall)
            return
        seen = b""
        while b"data:" not in seen:
            chunk = s.recv(4096)
            if not chunk:
                return
            seen += chunk


def _text(events: list[dict]) -> str:
    assert events and not any("error" in e for e in events), events[-3:]
    return "".join(e["text_output"] for e in events)


def test_streams_cut_short_cost_nothing(storm_server):
    srv = storm_server
    stream_url = f"{srv.http_url}/v2/models/tensorrt_llm_bls/generate_stream"
    plain_url = f"{srv.http_url}/v2/models/tensorrt_llm_bls/generate"
    want = {p: _text(stream(stream_url, {"text_input": p, "max_tokens": 24, "stream": True})) for p in PROMPTS}
    status, plain = post(plain_url, {"text_input": PROMPTS[0], "max_tokens": 8})
    assert status == 200, plain
    engine = srv.engine_pids()
    assert len(engine) == 1, engine
    free = srv.metric("nv_trt_llm_kv_cache_block_metrics", "max")

    stop = threading.Event()
    cuts, normals, problems = [0], [0], []
    lock = threading.Lock()

    def cutter(seed: int) -> None:
        rng = random.Random(seed)
        while not stop.is_set():
            stall = rng.uniform(0.1, 0.6) if rng.random() < 0.5 else None
            try:
                _cut(srv.http_port, rng.choice(PROMPTS), stall)
            except OSError as e:  # a reset or a timeout: the server is in trouble, the checks below say how
                with lock:
                    problems.append(f"cut stream: {e!r}")
            with lock:
                cuts[0] += 1
                if cuts[0] >= MAX_CUTS:
                    stop.set()

    def normal(seed: int) -> None:
        rng = random.Random(seed)
        while not stop.is_set():
            p = rng.choice(PROMPTS)
            try:
                events = stream(stream_url, {"text_input": p, "max_tokens": 24, "stream": True}, timeout=WAIT_S)
                got = "".join(e.get("text_output", "") for e in events)
                ok = events and not any("error" in e for e in events) and got == want[p]
            except OSError as e:
                events, ok = [repr(e)], False
            with lock:
                if not ok:
                    problems.append(f"normal stream of {p!r}: {events[-1:]}")
                normals[0] += 1

    t0 = time.monotonic()
    with ThreadPoolExecutor(CUTTERS + NORMALS) as pool:
        futures = [pool.submit(cutter, i) for i in range(CUTTERS)] + [
            pool.submit(normal, 100 + i) for i in range(NORMALS)
        ]
        try:
            while not stop.is_set() and time.monotonic() - t0 < STORM_S:
                stop.wait(CHECK_EVERY_S)
                assert srv.engine_pids() == engine, (
                    f"the engine process {engine} died after {cuts[0]} streams cut short "
                    f"({time.monotonic() - t0:.0f} s into the storm)"
                )
        finally:
            stop.set()
        for f in futures:
            f.result()

    assert cuts[0] >= 200, f"only {cuts[0]} streams cut short in {STORM_S} s"
    assert srv.engine_pids() == engine, f"the engine process {engine} is gone after {cuts[0]} streams cut short"
    assert not problems, f"{len(problems)} problems in {cuts[0]} cut and {normals[0]} normal streams: {problems[:5]}"
    # The model still answers, the same as before, and every abandoned request has ended and freed its blocks.
    status, out = post(plain_url, {"text_input": PROMPTS[0], "max_tokens": 8}, timeout=WAIT_S)
    assert status == 200 and out["text_output"] == plain["text_output"], f"HTTP {status} {out}"
    for p in PROMPTS:
        assert _text(stream(stream_url, {"text_input": p, "max_tokens": 24, "stream": True})) == want[p]
    deadline = time.monotonic() + 30  # cancellations still on their way
    while srv.metric("nv_trt_llm_kv_cache_block_metrics", "free") != free and time.monotonic() < deadline:
        time.sleep(0.1)
    assert srv.metric("nv_trt_llm_kv_cache_block_metrics", "free") == free
