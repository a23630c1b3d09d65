"""The client scripts against the session's server (their exit codes and what they print)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

from backend.detokenizer import decode

pytestmark = pytest.mark.server
ROOT = Path(__file__).resolve().parents[2]


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "client" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod  # dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


PROMPT = "What is machine learning?"


@pytest.mark.parametrize("streaming", [False, True])
def test_inflight_batcher_llm_client(server, reference, capsys, streaming):
    client = _load("inflight_batcher_llm_client")
    args = [
        "-u",
        server.grpc_url,
        "--tokenizer-dir",
        str(server.model_dir),
        "--text",
        PROMPT,
        "--request-output-len",
        "8",
        "--exclude-input-in-output",
    ] + (["-S"] if streaming else [])
    assert client.main(args) == 0
    out = capsys.readouterr().out
    assert out.rstrip("\n") == decode(reference.tokenizer, reference(PROMPT, 8))


@pytest.mark.parametrize("cancel", [False, True])
def test_inflight_batcher_llm_client_stop_after_ms(server, capsys, cancel):
    client = _load("inflight_batcher_llm_client")
    args = [
        "-u",
        server.grpc_url,
        "--tokenizer-dir",
        str(server.model_dir),
        "--text",
        PROMPT,
        "-S",
        "--request-output-len",
        "240",
        "--stop-after-ms",
        "100",
    ] + (["--stop-via-request-cancel"] if cancel else [])
    assert client.main(args) == 0
    err = capsys.readouterr().err
    assert ("cancelling" if cancel else "stop request") in err


@pytest.mark.parametrize("model", ["ensemble", "tensorrt_llm_bls"])
def test_end_to_end_grpc_client(server, reference, capsys, model):
    client = _load("end_to_end_grpc_client")
    expected = decode(reference.tokenizer, reference(PROMPT, 8))
    for extra in ([], ["-S"]):
        args = ["-u", server.grpc_url, "-p", PROMPT, "-o", "8", "--model-name", model, "--exclude-input-in-output"]
        assert client.main(args + extra) == 0
        assert capsys.readouterr().out.rstrip("\n") == expected


def test_http_generate_client(server, reference, capsys):
    client = _load("http_generate_client")
    for extra in ([], ["-S"]):
        args = ["-u", server.http_url, "-p", PROMPT, "-o", "8", "--param", "exclude_input_in_output=true"]
        assert client.main(args + extra) == 0
        assert capsys.readouterr().out.rstrip("\n") == decode(reference.tokenizer, reference(PROMPT, 8))
    assert client.main(["-u", server.http_url, "--param", "temperature=-1"]) == 1


def test_benchmark_serving(server, tmp_path, capsys):
    bench = _load("benchmark_serving")
    out = tmp_path / "bench.json"
    args = [
        "-u",
        server.http_url,
        "--num-requests",
        "12",
        "--concurrency",
        "4",
        "--input-len",
        "8",
        "--output-len",
        "6",
        "--json",
        str(out),
    ]
    assert bench.main(args) == 0
    s = json.loads(out.read_text())
    assert s["ok"] == 12 and s["output_tokens"] == 12 * 6
    assert 0 < s["ttft_ms"]["p50"] <= s["e2e_ms"]["p50"] and s["itl_ms"]["p99"] > 0
    assert "TTFT (ms)" in capsys.readouterr().out
    assert bench.main(args[:-2] + ["--request-rate", "20", "--model-name", "tensorrt_llm_bls"]) == 0
