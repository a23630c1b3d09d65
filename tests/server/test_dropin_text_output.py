"""Drop-in checks against the session's server (templates filled by `make_model_repo`, decoupled): what the
TensorRT-LLM backend's own clients read.

- `text_output` is 1-D per request like upstream's (postprocessing returns one bytes element per beam, the
  BLS forwards it), so upstream's `end_to_end_grpc_client.py` line `result.as_numpy('text_output')[0].decode()`
  works, streamed and not, through the ensemble and the BLS.
- A BLS stream ends with the final flag alone (no empty response), so every SSE event carries `text_output`.
- The ensemble's `prompt_table_extra_id` reaches the engine (`prompt_table_extra_ids`), which refuses it.
"""

from __future__ import annotations

import queue

import numpy as np
import pytest

from backend.detokenizer import decode
from tests.server.http_utils import post, stream

pytestmark = pytest.mark.server

PROMPTS = ["What is machine learning?", "机器学习是人工智能的一个分支。"]


def upstream_grpc_texts(url: str, model: str, prompt: str, max_tokens: int, streaming: bool) -> list[np.ndarray]:
    """Every response's `text_output` array, read as upstream's end_to_end_grpc_client.py does: a stream,
    `stop_stream()` to wait for the end (no empty final response asked for), then `as_numpy('text_output')`."""
    import tritonclient.grpc as g

    def inp(name, arr, dt):
        t = g.InferInput(name, list(arr.shape), dt)
        t.set_data_from_numpy(arr)
        return t

    inputs = [
        inp("text_input", np.array([[prompt.encode()]], dtype=object), "BYTES"),
        inp("max_tokens", np.array([[max_tokens]], np.int32), "INT32"),
        inp("stream", np.array([[streaming]], bool), "BOOL"),
        inp("exclude_input_in_output", np.array([[True]], bool), "BOOL"),
    ]
    results: queue.Queue = queue.Queue()
    client = g.InferenceServerClient(url)
    client.start_stream(callback=lambda result, error: results.put((result, error)))
    client.async_stream_infer(model, inputs, request_id="1")
    client.stop_stream()  # waits until the request is complete
    client.close()
    outs = []
    while not results.empty():
        result, error = results.get()
        assert error is None, error
        outs.append(result.as_numpy("text_output"))
    return outs


@pytest.mark.parametrize("streaming", [False, True])
@pytest.mark.parametrize("model", ["ensemble", "tensorrt_llm_bls"])
def test_grpc_text_output_is_1d_like_upstream(server, reference, model, streaming):
    for prompt in PROMPTS:
        outs = upstream_grpc_texts(server.grpc_url, model, prompt, 10, streaming)
        assert outs and all(o is not None and o.shape == (1,) for o in outs), [getattr(o, "shape", o) for o in outs]
        text = "".join(o[0].decode() for o in outs)  # upstream: output[0].decode()
        assert text == decode(reference.tokenizer, reference(prompt, 10))
        if not streaming:
            assert len(outs) == 1


@pytest.mark.parametrize("model", ["ensemble", "tensorrt_llm_bls"])
def test_every_sse_event_has_text_output(server, reference, model):
    prompt = PROMPTS[1]
    body = {"text_input": prompt, "max_tokens": 12, "stream": True, "exclude_input_in_output": True}
    events = stream(f"{server.http_url}/v2/models/{model}/generate_stream", body)
    assert events and all("text_output" in e for e in events), events
    assert "".join(e["text_output"] for e in events) == decode(reference.tokenizer, reference(prompt, 12))


def test_ensemble_prompt_table_extra_id_reaches_the_engine(server, reference):
    url = f"{server.http_url}/v2/models/ensemble/generate"
    body = {"text_input": PROMPTS[0], "max_tokens": 4, "exclude_input_in_output": True}
    status, out = post(url, {**body, "prompt_table_extra_id": 5})
    assert status == 400, out
    assert "prompt_table_extra_ids" in out["error"] or "prompt tuning" in out["error"], out
    # 0 is the neutral value (no prompt table): served.
    status, out = post(url, {**body, "prompt_table_extra_id": 0})
    assert status == 200 and out["text_output"] == decode(reference.tokenizer, reference(PROMPTS[0], 4)), out
