"""`enable_kv_cache_reuse: true` through tritonserver: prompts sharing a prefix take its cached KV blocks
(the `reused` series of `nv_trt_llm_kv_cache_block_metrics` counts them), and every answer equals the
engine's own output without reuse, alone and under concurrency."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from tests.server.conftest import start_server
from tests.server.http_utils import post, stream

SYSTEM = "You are a helpful assistant. Answer briefly and kindly, and never repeat the question. "


@pytest.fixture(scope="module")
def reuse_server(tiny_model, tmp_path_factory):
    yield from start_server(
        tiny_model, tmp_path_factory.mktemp("reuse"), decoupled=True, extra={"enable_kv_cache_reuse": "true"}
    )


def _reused(server) -> float:
    return server.metric("nv_trt_llm_kv_cache_block_metrics", "reused")


def _wait_metric(server, pred, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not pred() and time.monotonic() < deadline:
        time.sleep(0.05)


def test_a_shared_prefix_is_reused_and_changes_no_token(reuse_server, reference):
    tok = reference.tokenizer
    questions = ["What is the ocean?", "Tell me a story", "Why is the sky blue?", "Name three colors"]
    before = _reused(reuse_server)
    url = f"{reuse_server.http_url}/v2/models/tensorrt_llm/generate"

    def ask(q: str) -> list[int]:
        ids = tok.encode(SYSTEM + q)
        status, out = post(url, {"input_ids": ids, "input_lengths": len(ids), "request_output_len": 12,
                                 "exclude_input_in_output": True})  # fmt: skip
        assert status == 200, out
        return out["output_ids"]

    assert ask(questions[0]) == reference(SYSTEM + questions[0], 12)  # fills the cache
    with ThreadPoolExecutor(4) as pool:  # then all at once, each finding the system prompt's blocks
        got = list(pool.map(ask, questions * 2))
    for q, g in zip(questions * 2, got, strict=True):
        assert g == reference(SYSTEM + q, 12), q
    _wait_metric(reuse_server, lambda: _reused(reuse_server) > before)
    assert _reused(reuse_server) > before


def test_streamed_text_through_the_ensemble_is_unchanged(reuse_server, reference):
    tok = reference.tokenizer
    body = {"text_input": SYSTEM + "Hello there", "max_tokens": 10, "stream": True}
    url = f"{reuse_server.http_url}/v2/models/ensemble/generate_stream"
    first = "".join(e.get("text_output", "") for e in stream(url, body))
    again = "".join(e.get("text_output", "") for e in stream(url, body))
    want = tok.decode(reference(SYSTEM + "Hello there", 10), skip_special_tokens=True)
    assert first == again
    assert again.strip() == want.strip()
    # Idle again: every block is free (cached ones count as free), none leaked.
    _wait_metric(
        reuse_server,
        lambda: reuse_server.metric("nv_trt_llm_kv_cache_block_metrics", "used") == 0,
    )
    assert reuse_server.metric("nv_trt_llm_kv_cache_block_metrics", "used") == 0


def _one(v) -> int:
    return int(np.asarray(v).reshape(-1)[0])


def test_perf_metrics_report_each_requests_blocks_and_times(reuse_server, reference):
    # TensorRT-LLM's `return_perf_metrics` outputs, on the engine model, the ensemble and the BLS.
    tok = reference.tokenizer
    ids = tok.encode(SYSTEM + "Report your metrics")
    body = {"input_ids": ids, "input_lengths": len(ids), "request_output_len": 4, "return_perf_metrics": True}
    url = f"{reuse_server.http_url}/v2/models/tensorrt_llm/generate"
    t0 = time.time_ns()
    outs = [post(url, body) for _ in range(2)]
    t1 = time.time_ns()
    for status, out in outs:
        assert status == 200, out
        times = [_one(out[k]) for k in ("arrival_time_ns", "first_scheduled_time_ns", "first_token_time_ns")]
        assert t0 <= times[0] <= times[1] <= times[2] <= _one(out["last_token_time_ns"]) <= t1
        assert _one(out["total_draft_tokens"]) == 0 and float(np.asarray(out["acceptance_rate"]).reshape(-1)[0]) == 0
    first, again = (out for _, out in outs)
    # The repeat finds every whole block of its prompt but the one holding the last token (always computed).
    assert _one(again["kv_cache_reused_blocks"]) == (len(ids) - 1) // 8 >= 1
    assert _one(first["kv_cache_reused_blocks"]) <= _one(again["kv_cache_reused_blocks"])
    assert _one(again["kv_cache_alloc_total_blocks"]) == -(-(len(ids) + 4) // 8) - (len(ids) - 1) // 8
    plain = post(url, {**body, "return_perf_metrics": False})[1]
    assert "kv_cache_reused_blocks" not in plain

    text = {"text_input": SYSTEM + "Report your metrics", "max_tokens": 3, "return_perf_metrics": True}
    events = list(stream(f"{reuse_server.http_url}/v2/models/ensemble/generate_stream", {**text, "stream": True}))
    assert events and all(_one(e["kv_cache_reused_blocks"]) >= 1 for e in events)
    status, bls = post(f"{reuse_server.http_url}/v2/models/tensorrt_llm_bls/generate", text)
    assert status == 200, bls
    assert _one(bls["kv_cache_reused_blocks"]) >= 1 and _one(bls["first_token_time_ns"]) > 0


def test_openai_usage_reports_cached_prompt_tokens(reuse_server, reference):
    # vLLM's --enable-prompt-tokens-details: usage.prompt_tokens_details.cached_tokens, the prompt tokens found
    # in the prefix cache (whole blocks of 8; the last prompt token is always computed).
    pytest.importorskip("fastapi", reason="needs fastapi and uvicorn: pip install -e '.[serve]'")
    import json
    import urllib.request

    from tests.server.conftest import openai_front_end

    prompt = SYSTEM + "Which cached tokens?"
    n_prompt = len(reference.tokenizer.encode(prompt))
    body = {"model": "ensemble", "prompt": prompt, "max_tokens": 5, "temperature": 0}
    with openai_front_end(reuse_server.grpc_port, "--enable-prompt-tokens-details") as base:
        url = f"{base}/v1/completions"
        status, first = post(url, body)
        assert status == 200, first
        status, again = post(url, body)
        assert status == 200, again
        assert again["choices"][0]["text"] == first["choices"][0]["text"]  # reuse changes no token
        assert again["usage"]["prompt_tokens"] == n_prompt
        assert again["usage"]["prompt_tokens_details"] == {"cached_tokens": (n_prompt - 1) // 8 * 8}
        assert (n_prompt - 1) // 8 >= 1
        # n choices of one prompt count its cached tokens once; streamed usage carries them too
        status, two = post(url, {**body, "n": 2})
        assert status == 200, two
        assert two["usage"]["prompt_tokens_details"] == {"cached_tokens": (n_prompt - 1) // 8 * 8}
        req = urllib.request.Request(
            url,
            data=json.dumps({**body, "stream": True, "stream_options": {"include_usage": True}}).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=120) as r:
            events = [json.loads(x[5:]) for x in (ln.decode().strip() for ln in r) if x.startswith("data: {")]
        usage = [e["usage"] for e in events if e.get("usage")]
        assert usage and usage[-1]["prompt_tokens_details"] == {"cached_tokens": (n_prompt - 1) // 8 * 8}
