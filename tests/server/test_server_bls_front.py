"""`tensorrt_llm_bls` as a text front of the native backend: what upstream's BLS config asks of it beyond
the `ensemble` interface, through the real tritonserver.

- `accumulate_tokens`: each streamed response carries the whole text so far (the last one the whole answer).
- The BLS inputs this engine cannot serve (draft-model speculation, multimodal encoders) are refused naming
  the input, and the next request is served.
- No Python stub serves it (the engine process does)."""

from __future__ import annotations

import pytest

from tests.server.conftest import start_server
from tests.server.http_utils import post, stream

pytestmark = pytest.mark.server

PROMPT = "What is machine learning?"


@pytest.fixture(scope="module")
def acc_server(tiny_model, tmp_path_factory):
    yield from start_server(
        tiny_model, tmp_path_factory.mktemp("bls_front"), decoupled=True, extra={"accumulate_tokens": "true"}
    )


def test_accumulate_tokens_streams_the_whole_text_so_far(acc_server):
    url = f"{acc_server.http_url}/v2/models/tensorrt_llm_bls"
    body = {"text_input": PROMPT, "max_tokens": 16, "min_length": 16, "exclude_input_in_output": True}
    status, whole = post(f"{url}/generate", body)
    assert status == 200, whole
    events = stream(f"{url}/generate_stream", {"text_input": PROMPT, "max_tokens": 16, "min_length": 16,
                                               "stream": True})  # fmt: skip
    texts = [e["text_output"] for e in events]
    assert len(texts) > 2 and not any("error" in e for e in events)
    assert all(b.startswith(a) for a, b in zip(texts, texts[1:], strict=False)), texts
    assert texts[-1] == whole["text_output"]
    # the ensemble (no such parameter) still streams pieces
    pieces = [e["text_output"] for e in stream(f"{acc_server.http_url}/v2/models/ensemble/generate_stream",
                                               {"text_input": PROMPT, "max_tokens": 16, "min_length": 16,
                                                "stream": True})]  # fmt: skip
    assert "".join(pieces) == whole["text_output"] and len(pieces) == len(texts)


@pytest.mark.parametrize(
    "name, value",
    [("num_draft_tokens", [3]), ("use_draft_logits", [True]), ("image_url_input", ["http://x/y.png"])],
)
def test_bls_only_inputs_are_refused_by_name(acc_server, name, value):
    url = f"{acc_server.http_url}/v2/models/tensorrt_llm_bls/generate"
    status, out = post(url, {"text_input": PROMPT, "max_tokens": 4, name: value})
    assert status == 400 and name in out["error"], (status, out)
    status, out = post(url, {"text_input": PROMPT, "max_tokens": 4})
    assert status == 200, out


def test_no_python_stub_serves_the_bls(acc_server):
    stubs = [args for _, args in acc_server.children() if "triton_python_backend_stub" in args]
    assert stubs and not any("tensorrt_llm_bls" in line for line in stubs), stubs
