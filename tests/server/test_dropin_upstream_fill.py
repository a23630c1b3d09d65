"""The model repository filled EXACTLY as the TensorRT-LLM backend's docs fill it, then served.

The lines: upstream `triton-inference-server/tensorrtllm_backend`, docs/llama.md, "Prepare configs" (the
copy read is commit 05ea856, whose script paths are the later `tensorrt_llm/triton_backend/...`; a copy at the
v0.19 tag was not available, and earlier copies run the same kind of lines from the repository root). After
`cp all_models/inflight_batcher_llm/ llama_ifb -r`,
`python3 tools/fill_template.py -i llama_ifb/<model>/config.pbtxt <substitutions>`, in this order:

preprocessing:
    tokenizer_dir:${HF_LLAMA_MODEL},triton_max_batch_size:64,preprocessing_instance_count:1
postprocessing:
    tokenizer_dir:${HF_LLAMA_MODEL},triton_max_batch_size:64,postprocessing_instance_count:1
tensorrt_llm_bls:
    triton_max_batch_size:64,decoupled_mode:False,bls_instance_count:1,accumulate_tokens:False,logits_datatype:TYPE_FP32,prompt_embedding_table_data_type:TYPE_FP16
ensemble:
    triton_max_batch_size:64,logits_datatype:TYPE_FP32
tensorrt_llm:
    triton_backend:tensorrtllm,triton_max_batch_size:64,decoupled_mode:False,max_beam_width:1,engine_dir:${ENGINE_PATH},max_tokens_in_paged_kv_cache:2560,max_attention_window_size:2560,kv_cache_free_gpu_mem_fraction:0.5,exclude_input_in_output:True,enable_kv_cache_reuse:False,batching_strategy:inflight_fused_batching,max_queue_delay_microseconds:0,encoder_input_features_data_type:TYPE_FP16,logits_datatype:TYPE_FP32,prompt_embedding_table_data_type:TYPE_FP16

(The same doc's streaming block has `accumulate_tokens:Truelogits_datatype:TYPE_FP32` in its BLS line, a
missing comma that upstream's own fill_template rejects, and `batching_strategy:inflight_batching`; so the
decoupled case here is the block above with `decoupled_mode:True`.)

Only the paths (`${HF_LLAMA_MODEL}`, `${ENGINE_PATH}`) and `decoupled_mode` (False, and True for the
streaming case) are substituted; each line runs `scripts/fill_template.py -i` as upstream runs its
tools/fill_template.py. Note the BLS line sets no `tokenizer_dir`: upstream's BLS tokenizes and detokenizes
by calling the `preprocessing` and `postprocessing` models, and so does ours then.

Every key of these lines exists in our templates (fill_template refuses a line naming a key its file
lacks): `test_upstream_lines_apply_unchanged` keeps it so.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from backend.detokenizer import decode
from tests.server.conftest import ROOT, serve_repo
from tests.server.http_utils import post, stream
from tests.server.test_dropin_text_output import upstream_grpc_texts

pytestmark = pytest.mark.server

UPSTREAM_LINES = {
    "preprocessing": "tokenizer_dir:${HF_LLAMA_MODEL},triton_max_batch_size:64,preprocessing_instance_count:1",
    "postprocessing": "tokenizer_dir:${HF_LLAMA_MODEL},triton_max_batch_size:64,postprocessing_instance_count:1",
    "tensorrt_llm_bls": "triton_max_batch_size:64,decoupled_mode:False,bls_instance_count:1,accumulate_tokens:False,"
    "logits_datatype:TYPE_FP32,prompt_embedding_table_data_type:TYPE_FP16",
    "ensemble": "triton_max_batch_size:64,logits_datatype:TYPE_FP32",
    "tensorrt_llm": "triton_backend:tensorrtllm,triton_max_batch_size:64,decoupled_mode:False,max_beam_width:1,"
    "engine_dir:${ENGINE_PATH},max_tokens_in_paged_kv_cache:2560,max_attention_window_size:2560,"
    "kv_cache_free_gpu_mem_fraction:0.5,exclude_input_in_output:True,enable_kv_cache_reuse:False,"
    "batching_strategy:inflight_fused_batching,max_queue_delay_microseconds:0,encoder_input_features_data_type:TYPE_FP16,"
    "logits_datatype:TYPE_FP32,prompt_embedding_table_data_type:TYPE_FP16",
}
# Keys of the upstream lines that our templates lack (findings): left out by the servers' fill only while absent.
PROMPTS = ["What is machine learning?", "机器学习是人工智能的一个分支。", "Emoji test: 🙂 🚀 and café"]


def upstream_line(model: str, tokenizer_dir: Path, engine_dir: Path, decoupled: bool) -> str:
    line = UPSTREAM_LINES[model].replace("${HF_LLAMA_MODEL}", str(tokenizer_dir))
    line = line.replace("${ENGINE_PATH}", str(engine_dir))
    return line.replace("decoupled_mode:False", f"decoupled_mode:{decoupled}")


def fill_upstream(repo: Path, tiny_model, decoupled: bool) -> dict[str, str]:
    """Copy the templates to `repo`, run the upstream lines through scripts/fill_template.py; returns the
    errors by model (empty when every line applied)."""
    model_dir, engine_dir = tiny_model
    if repo.exists():
        shutil.rmtree(repo)
    shutil.copytree(ROOT / "all_models" / "inflight_batcher_llm", repo)
    errors = {}
    for model in UPSTREAM_LINES:
        cfg = repo / model / "config.pbtxt"
        pairs = upstream_line(model, model_dir, engine_dir, decoupled).split(",")
        cmd = [sys.executable, str(ROOT / "scripts" / "fill_template.py"), "-i", str(cfg), ",".join(pairs)]
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode != 0:
            errors[model] = r.stderr.strip()
    return errors


@pytest.mark.parametrize("decoupled", [False, True])
def test_upstream_lines_apply_unchanged(tiny_model, tmp_path, decoupled):
    errors = fill_upstream(tmp_path / "repo", tiny_model, decoupled)
    assert not errors, errors


@pytest.fixture(scope="module", params=[False, True], ids=["non_decoupled", "decoupled"])
def upstream_server(request, tiny_model, tmp_path_factory):
    decoupled = request.param
    work = tmp_path_factory.mktemp("upstream_fill")
    errors = fill_upstream(work / "repo", tiny_model, decoupled)
    assert not errors, errors
    unfilled = {
        m: [k for k in ("tokenizer_dir",) if "${" + k + "}" in (work / "repo" / m / "config.pbtxt").read_text()]
        for m in ("tensorrt_llm_bls",)
    }
    assert unfilled == {"tensorrt_llm_bls": ["tokenizer_dir"]}  # the BLS really runs without a tokenizer_dir
    for srv in serve_repo(work / "repo", tiny_model, work):
        srv.decoupled = decoupled
        yield srv


def completion(reference, prompt: str, n: int) -> str:
    return decode(reference.tokenizer, reference(prompt, n))


@pytest.mark.parametrize("model", ["ensemble", "tensorrt_llm_bls"])
def test_generate_answers_reference_text(upstream_server, reference, model):
    for prompt in PROMPTS[:2]:
        # The README's body; exclude_input_in_output:True in the fill -> the completion alone.
        body = {"text_input": prompt, "max_tokens": 12, "bad_words": "", "stop_words": ""}
        status, out = post(f"{upstream_server.http_url}/v2/models/{model}/generate", body)
        assert status == 200, out
        assert out["text_output"] == completion(reference, prompt, 12)


@pytest.mark.parametrize("model", ["ensemble", "tensorrt_llm_bls"])
def test_streaming(upstream_server, reference, model):
    url = f"{upstream_server.http_url}/v2/models/{model}/generate_stream"
    if not upstream_server.decoupled:
        events = stream(url, {"text_input": PROMPTS[0], "max_tokens": 4, "stream": True})
        assert "decoupled" in events[-1].get("error", ""), events
        return
    for prompt in PROMPTS:
        events = stream(url, {"text_input": prompt, "max_tokens": 16, "stream": True})
        assert events and all("text_output" in e for e in events), events
        # Exact: the concatenated stream is the non-streamed text, byte for byte.
        assert "".join(e["text_output"] for e in events).encode() == completion(reference, prompt, 16).encode()


@pytest.mark.parametrize("model", ["ensemble", "tensorrt_llm_bls"])
def test_grpc_upstream_client_reading(upstream_server, reference, model):
    for streaming in [False, True] if upstream_server.decoupled else [False]:
        outs = upstream_grpc_texts(upstream_server.grpc_url, model, PROMPTS[1], 10, streaming)
        assert all(o is not None and o.shape == (1,) for o in outs), outs
        assert "".join(o[0].decode() for o in outs) == completion(reference, PROMPTS[1], 10)


@pytest.mark.parametrize("model", ["ensemble", "tensorrt_llm_bls"])
def test_http_json_infer_text_output_shape(upstream_server, reference, model):
    if upstream_server.decoupled:
        pytest.skip("the HTTP infer endpoint does not serve decoupled models")
    prompt = PROMPTS[0]
    body = {
        "inputs": [
            {"name": "text_input", "datatype": "BYTES", "shape": [1, 1], "data": [prompt]},
            {"name": "max_tokens", "datatype": "INT32", "shape": [1, 1], "data": [8]},
        ]
    }
    status, out = post(f"{upstream_server.http_url}/v2/models/{model}/infer", body)
    assert status == 200, out
    got = {o["name"]: o for o in out["outputs"]}
    assert got["text_output"]["shape"] == [1], got["text_output"]
    assert got["text_output"]["data"] == [completion(reference, prompt, 8)]
    assert np.asarray(got["text_output"]["data"]).ndim == 1
