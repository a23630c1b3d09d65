"""reliability.md bad inputs 1, 2, 4-11 through HTTP and gRPC: a clear error, then a valid request works."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.server.http_utils import post
from tests.server.test_server_e2e import GrpcStream, _grpc_inputs

pytestmark = pytest.mark.server

VALID = {"text_input": "What is machine learning?", "max_tokens": 4}


def assert_valid_request_works(server, model="ensemble"):
    status, out = post(f"{server.http_url}/v2/models/{model}/generate", VALID)
    assert status == 200 and out["text_output"], out


# (case, body, words expected in the error message: any of them, case-insensitive)
HTTP_BAD = [
    ("empty prompt", {**VALID, "text_input": ""}, ["empty"]),
    ("NUL in prompt", {**VALID, "text_input": "a\u0000b"}, ["NUL"]),
    ("max_tokens 0", {**VALID, "max_tokens": 0}, ["request_output_len", "max_tokens"]),
    ("max_tokens negative", {**VALID, "max_tokens": -5}, ["request_output_len", "max_tokens"]),
    ("max_tokens 2^31", {**VALID, "max_tokens": 2**31}, ["max_tokens", "int", "range"]),
    ("temperature negative", {**VALID, "temperature": -1.0}, ["temperature"]),
    ("top_p above 1", {**VALID, "top_p": 1.5}, ["top_p"]),
    ("top_p negative", {**VALID, "top_p": -0.1}, ["top_p"]),
    ("top_k negative", {**VALID, "top_k": -1}, ["top_k"]),
    ("repetition_penalty 0", {**VALID, "repetition_penalty": 0.0}, ["repetition_penalty"]),
    ("presence_penalty huge", {**VALID, "presence_penalty": 1e9}, ["presence_penalty"]),
    ("beam_width above limit", {**VALID, "beam_width": 4}, ["beam_width"]),
    ("too many stop words", {**VALID, "stop_words": [f"w{i}" for i in range(2000)]}, ["stop", "words"]),
    ("megabyte stop word", {**VALID, "stop_words": ["x" * (1 << 20)]}, ["stop", "word"]),
    ("lora input", {**VALID, "lora_task_id": 3}, ["lora"]),
    ("guided decoding", {**VALID, "guided_decoding_guide_type": "json"}, ["guided"]),
    ("context logits", {**VALID, "return_context_logits": True}, ["context logits", "context_logits"]),
]


# JSON values of the wrong type are refused by tritonserver's own HTTP front end before any model runs.
# Its messages do not name the field and its status is 500 (Triton 2.51 behaviour, not ours to change).
FRONTEND_BAD = [
    ("max_tokens float", {**VALID, "max_tokens": 2.5}),
    ("max_tokens string", {**VALID, "max_tokens": "ten"}),
    ("temperature text", {**VALID, "temperature": "hot"}),
    ("top_k fractional", {**VALID, "top_k": 1.5}),
    ("stream as string", {**VALID, "stream": "false"}),
]


@pytest.mark.parametrize("case,body", FRONTEND_BAD, ids=[c[0] for c in FRONTEND_BAD])
def test_http_wrong_json_types(server, case, body):
    status, out = post(f"{server.http_url}/v2/models/ensemble/generate", body)
    assert status >= 400 and "JSON" in out.get("error", ""), (status, out)
    assert_valid_request_works(server)


def test_http_unknown_field_is_ignored(server):
    # The generate extension passes keys that are not inputs as request parameters: no error.
    status, out = post(f"{server.http_url}/v2/models/ensemble/generate", {**VALID, "no_such_input": 1})
    assert status == 200 and out["text_output"]


@pytest.mark.parametrize("model", ["ensemble", "tensorrt_llm_bls"])
@pytest.mark.parametrize("case,body,words", HTTP_BAD, ids=[c[0] for c in HTTP_BAD])
def test_http_bad_input(server, model, case, body, words):
    status, out = post(f"{server.http_url}/v2/models/{model}/generate", body)
    assert 400 <= status < 500, (status, out)
    msg = out.get("error", "")
    assert any(w.lower() in msg.lower() for w in words), msg
    assert_valid_request_works(server, model)


@pytest.mark.parametrize(
    "raw",
    [
        b'{"text_input": "hi", "max_tokens": ',
        b"not json",
        b'{"text_input": "hi", "max_tokens": 4, "max_tokens": 5}',
        b'{"text_input": "\\ud800", "max_tokens": 4}',
        b"[1, 2, 3]",
    ],
    ids=["truncated", "not json", "duplicate key", "lone surrogate", "array body"],
)
def test_http_malformed_body(server, raw):
    status, out = post(f"{server.http_url}/v2/models/ensemble/generate", raw)
    if status == 200:
        # Duplicate keys: the parser keeps one value; that is an answer, not a crash.
        assert "text_output" in out
    else:
        # tritonserver's JSON parser answers 500 with its parse error (Triton 2.51 behaviour).
        assert status >= 400 and out.get("error"), (status, out)
    assert_valid_request_works(server)


@pytest.mark.parametrize("url", ["/v2/models/no_such_model/generate", "/v2/models/ensemble/versions/7/generate"])
def test_http_unknown_model_or_version(server, url):
    status, out = post(server.http_url + url, VALID)
    assert 400 <= status < 500 and out.get("error"), (status, out)
    assert_valid_request_works(server)


def test_http_multilingual_round_trip(server):
    for text in ["مرحبا بالعالم", "机器学习 🙂 👍🏽", "naïve café résumé"]:
        status, out = post(f"{server.http_url}/v2/models/ensemble/generate", {**VALID, "text_input": text})
        assert status == 200 and out["text_output"].startswith(text), out


def test_http_whitespace_and_special_only_prompts_are_served(server):
    # Both tokenize to a non-empty prompt (BOS + tokens): valid input, documented as such.
    for text in ["   ", "<s></s>"]:
        status, out = post(f"{server.http_url}/v2/models/ensemble/generate", {**VALID, "text_input": text})
        assert status == 200, out


def _grpc_error(server, inputs, request_id="", model="tensorrt_llm"):
    s = GrpcStream(server.grpc_url)
    try:
        s.send(inputs, request_id=request_id, model=model)
        return s.collect(timeout=120)
    finally:
        s.close()


def _grpc_valid(server, reference):
    tokens, err = _grpc_error(server, _grpc_inputs(reference.tokenizer.encode("hello"), 3))
    assert err is None and len(tokens) == 3


def _limits(server):
    cfg = json.loads((server.engine_dir / "config.json").read_text())
    return cfg["model"]["vocab_size"], cfg["build"]["max_input_len"], cfg["build"]["max_seq_len"]


def test_grpc_token_ids_out_of_vocab(server, reference):
    vocab, _, _ = _limits(server)
    for ids in ([1, -3, 5], [1, vocab, 5]):
        _, err = _grpc_error(server, _grpc_inputs(ids, 4))
        assert err is not None and "vocab" in str(err), err
    _grpc_valid(server, reference)


def test_grpc_prompt_length_limits(server, reference):
    vocab, max_in, max_seq = _limits(server)
    tokens, err = _grpc_error(server, _grpc_inputs([5] * max_in, 2))
    assert err is None and len(tokens) == 2
    _, err = _grpc_error(server, _grpc_inputs([5] * (max_in + 1), 2))
    assert err is not None and "max_input_len" in str(err), err
    # Prompt + output over max_seq_len: the output is clipped to the sequence limit (documented).
    tokens, err = _grpc_error(server, _grpc_inputs([5] * 8, max_seq + 50))
    assert err is None and len(tokens) == max_seq - 8
    _grpc_valid(server, reference)


def test_grpc_bad_sampling_values(server, reference):
    ids = reference.tokenizer.encode("hello")
    cases = {
        "temperature": (np.array([[np.nan]], np.float32), "FP32"),
        "runtime_top_p": (np.array([[np.inf]], np.float32), "FP32"),
        "runtime_top_k": (np.array([[-2]], np.int32), "INT32"),
        "beam_width": (np.array([[0]], np.int32), "INT32"),
    }
    for name, value in cases.items():
        _, err = _grpc_error(server, _grpc_inputs(ids, 4, **{name: value}))
        assert err is not None and name.replace("runtime_", "") in str(err), (name, err)
    _grpc_valid(server, reference)


def test_grpc_invalid_utf8_prompt(server, reference):
    import tritonclient.grpc as g

    for raw in [b"\xff\xfe bad", b"\xed\xa0\x80 surrogate"]:
        text = g.InferInput("text_input", [1, 1], "BYTES")
        text.set_data_from_numpy(np.array([[raw]], dtype=object))
        mt = g.InferInput("max_tokens", [1, 1], "INT32")
        mt.set_data_from_numpy(np.array([[4]], np.int32))
        for model in ["ensemble", "tensorrt_llm_bls"]:
            _, err = _grpc_error(server, [text, mt], model=model)
            assert err is not None and "UTF-8" in str(err), err
    _grpc_valid(server, reference)


def test_grpc_tensor_api_misuse(server, reference):
    import tritonclient.grpc as g

    ids = reference.tokenizer.encode("hello")

    def inp(name, arr, dt):
        t = g.InferInput(name, list(arr.shape), dt)
        t.set_data_from_numpy(arr)
        return t

    base = _grpc_inputs(ids, 4)
    wrong_dtype = [inp("input_ids", np.array([ids], np.float32), "FP32"), *base[1:]]
    wrong_shape = [base[0], inp("input_lengths", np.array([[1, 2]], np.int32), "INT32"), *base[2:]]
    missing = [base[0], base[1], base[3]]  # no request_output_len
    extra = [*base, inp("no_such_input", np.array([[1]], np.int32), "INT32")]
    for inputs, word in [
        (wrong_dtype, "input_ids"),
        (wrong_shape, "input_lengths"),
        (missing, "request_output_len"),
        (extra, "no_such_input"),
    ]:
        _, err = _grpc_error(server, inputs)
        assert err is not None and word in str(err), (word, err)
    _grpc_valid(server, reference)


def test_grpc_unknown_model(server, reference):
    _, err = _grpc_error(server, _grpc_inputs([1, 2], 2), model="no_such_model")
    assert err is not None and "no_such_model" in str(err)
    _grpc_valid(server, reference)
