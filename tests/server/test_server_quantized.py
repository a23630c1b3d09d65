"""A quantized engine (FP8 weights and activations, FP8 KV cache) served through tritonserver: its answers,
streamed and not, concurrent, are the engine's own greedy tokens computed in-process."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest

from backend.detokenizer import decode
from tests.server.conftest import start_server
from tests.server.http_utils import post, stream

pytestmark = pytest.mark.server

PROMPTS = ["What is machine learning?", "Tell me a story", "Why is the sky blue?", "How do I count to nine?"]


@pytest.fixture(scope="module")
def quantized(tiny_model, tmp_path_factory):
    from tests.helpers import build_engine

    model_dir, _ = tiny_model
    engine = build_engine(
        model_dir, tmp_path_factory.mktemp("fp8") / "engine", max_batch_size=8, quant_algo="FP8",
        kv_cache_quant_algo="FP8",
    )  # fmt: skip
    return model_dir, engine


@pytest.fixture(scope="module")
def fp8_server(quantized, tmp_path_factory):
    yield from start_server(quantized, tmp_path_factory.mktemp("fp8_server"), decoupled=True)


@pytest.fixture(scope="module")
def expected(quantized):
    from transformers import AutoTokenizer

    from inflight_batcher import Executor, ExecutorConfig, Request

    model_dir, engine_dir = quantized
    tok = AutoTokenizer.from_pretrained(str(model_dir))
    ex = Executor.from_engine_dir(engine_dir, ExecutorConfig(), device="cpu")
    assert ex.kv.data.dtype.itemsize == 1  # the FP8 cache, not a float one
    outs = ex.generate([Request(input_ids=tok.encode(p), max_new_tokens=12) for p in PROMPTS])
    ex.shutdown()
    return {p: decode(tok, o.tokens[0]) for p, o in zip(PROMPTS, outs, strict=True)}


def test_fp8_engine_serves_its_own_tokens(fp8_server, expected):
    url = f"{fp8_server.http_url}/v2/models/ensemble/generate"
    body = {"max_tokens": 12, "bad_words": "", "stop_words": "", "exclude_input_in_output": True}

    def ask(prompt: str) -> str:
        status, out = post(url, {"text_input": prompt, **body})
        assert status == 200, out
        return out["text_output"]

    with ThreadPoolExecutor(4) as pool:
        answers = dict(zip(PROMPTS, pool.map(ask, PROMPTS), strict=True))
    assert answers == expected
    events = stream(f"{url}_stream", {"text_input": PROMPTS[0], "stream": True, **body})
    assert "".join(e.get("text_output", "") for e in events) == expected[PROMPTS[0]]
