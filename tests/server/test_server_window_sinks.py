"""`max_attention_window_size` and `sink_token_length` from config.pbtxt through tritonserver: answers equal
the engine's own greedy tokens with the same window and sinks (which differ from the full-attention ones);
and what the backend says of a sink count the window cannot hold."""

from __future__ import annotations

import pytest

from backend.detokenizer import decode
from backend.engine_core import attention_window_kwargs
from backend.params import Params
from tests.server.conftest import start_server
from tests.server.http_utils import post

pytestmark = pytest.mark.server

WINDOW, SINKS = 12, 4
PROMPT = "The quick brown fox jumps over the lazy dog. Machine learning is a field of study in artificial"


def _params(**kv: str) -> Params:
    return Params({"parameters": {k: {"string_value": v} for k, v in kv.items()}})


def test_window_and_sinks_read_and_checked():
    assert attention_window_kwargs(_params(max_attention_window_size="12", sink_token_length="4")) == dict(
        attention_window=12, sink_tokens=4
    )
    assert attention_window_kwargs(_params(sink_token_length="${sink_token_length}")) == dict(
        attention_window=None, sink_tokens=0
    )
    with pytest.raises(ValueError, match=r"sink_token_length \(12\) must be fewer than max_attention_window_size"):
        attention_window_kwargs(_params(max_attention_window_size="12", sink_token_length="12"))
    with pytest.raises(ValueError, match="sink_token_length must be >= 0"):
        attention_window_kwargs(_params(sink_token_length="-1"))


@pytest.fixture(scope="module")
def sink_server(tiny_model, tmp_path_factory):
    extra = {"max_attention_window_size": str(WINDOW), "sink_token_length": str(SINKS)}
    yield from start_server(tiny_model, tmp_path_factory.mktemp("sinks"), decoupled=True, extra=extra)


def _greedy(engine_dir, ids: list[int], n: int, **window) -> list[int]:
    from inflight_batcher import Executor, ExecutorConfig, Request
    from tensorrt_llm.runtime import Engine

    ex = Executor(Engine.from_dir(engine_dir, device="cpu", **window), ExecutorConfig())
    try:
        return ex.generate([Request(input_ids=ids, max_new_tokens=n)])[0].tokens[0]
    finally:
        ex.shutdown()


def test_served_tokens_are_the_windowed_engines(sink_server, reference, tiny_model):
    _, engine_dir = tiny_model
    tok = reference.tokenizer
    ids = tok.encode(PROMPT)
    assert len(ids) > WINDOW + SINKS  # the window hides keys from the first step on
    expected = _greedy(engine_dir, ids, 12, attention_window=WINDOW, sink_tokens=SINKS)
    assert expected != _greedy(engine_dir, ids, 12, attention_window=WINDOW)  # the sinks matter
    body = {"text_input": PROMPT, "max_tokens": 12, "bad_words": "", "stop_words": "", "exclude_input_in_output": True}
    status, out = post(f"{sink_server.http_url}/v2/models/ensemble/generate", body)
    assert status == 200, out
    assert out["text_output"] == decode(tok, expected)
