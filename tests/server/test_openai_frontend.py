"""The OpenAI-compatible front end, end to end: the official `openai` client -> openai_frontend -> the real
tritonserver (started by the launcher with `--openai_port`) -> the engine. One server for the module.

The tiny model has random weights, so its text is noise; what is checked is what the API promises:
streamed text == non-streamed text, stop strings, seeds, `n`, usage, finish reasons, errors, cancellation.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.server.conftest import ROOT, _free_ports, openai_front_end, settled
from tests.server.http_utils import post

pytestmark = pytest.mark.server
openai = pytest.importorskip("openai", reason="needs the openai client: pip install -e '.[dev]'")
pytest.importorskip("fastapi", reason="needs fastapi and uvicorn: pip install -e '.[serve]'")

# A template of the common shape (role markers, BOS from the template, generation prompt).
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
PROMPT = "What is machine learning?"
LONG = 1000  # tokens an abandoned request would run to


class Stack:
    def __init__(self, work: Path, hf: Path, http: int, grpc: int, metrics: int, port: int):
        self.work, self.hf = work, hf
        self.http_url, self.grpc_port, self.metrics_port, self.port = f"http://localhost:{http}", grpc, metrics, port
        self.url = f"http://localhost:{port}"
        self.client = openai.OpenAI(base_url=f"{self.url}/v1", api_key="unused", max_retries=0, timeout=120)

    def triton_metric(self, family: str, label: str) -> float:
        with urllib.request.urlopen(f"http://localhost:{self.metrics_port}/metrics", timeout=10) as r:
            for line in r.read().decode().splitlines():
                if line.startswith(family + "{") and label in line and 'model="tensorrt_llm"' in line:
                    return float(line.rsplit(" ", 1)[1])
        return 0.0


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    pytest.importorskip("pytriton", reason="needs nvidia-pytriton (tritonserver): pip install -e '.[serve]'")
    sys.path.insert(0, str(ROOT / "scripts"))
    from quickstart_server import make_model_repo

    from tests.helpers import build_engine, make_tiny_llama

    work = tmp_path_factory.mktemp("openai")
    make_tiny_llama(work / "hf", max_position_embeddings=1024)
    build_engine(work / "hf", work / "engine", max_batch_size=8, max_seq_len=1024, max_input_len=256)
    # The same tokenizer without a chat template, for the standalone front end's 400.
    shutil.copytree(work / "hf", work / "hf_plain")
    cfg_path = work / "hf" / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg_path.write_text(json.dumps({**cfg, "chat_template": CHAT_TEMPLATE}))
    repo = make_model_repo(work / "repo", work / "engine", work / "hf", decoupled=True)
    http, grpc, metrics, port = _free_ports(4)
    log = work / "launcher.log"
    cmd = [sys.executable, str(ROOT / "scripts" / "launch_triton_server.py"), "--model_repo", str(repo)]
    cmd += ["--http_port", str(http), "--grpc_port", str(grpc), "--metrics_port", str(metrics)]
    # Two front-end processes on one port (uvicorn workers): every test below goes through either.
    cmd += ["--openai_port", str(port), "--openai_workers", "2", "--force", "--ready-timeout", "300"]
    cmd += ["--backend-directory", str(work / "backends")]
    with open(log, "w") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env={**os.environ, "TRTLLM_DEVICE": "cpu"})
    deadline = time.monotonic() + 300
    while "OpenAI API ready" not in log.read_text():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"the launcher did not start the OpenAI API:\n{log.read_text()[-4000:]}")
        time.sleep(0.25)
    yield Stack(work, work / "hf", http, grpc, metrics, port)
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail("the launcher did not stop in 60 s")
    with socket.socket() as s:  # the launcher stopped the front end too
        assert s.connect_ex(("localhost", port)) != 0, "the OpenAI front end outlived the launcher"


def _tokenizer(stack):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(stack.hf))


def test_models_health_metrics(stack):
    assert {m.id for m in stack.client.models.list()} == {"ensemble", "tensorrt_llm_bls"}
    assert stack.client.models.retrieve("ensemble").id == "ensemble"
    with urllib.request.urlopen(f"{stack.url}/health", timeout=10) as r:
        assert r.status == 200
    with urllib.request.urlopen(f"{stack.url}/metrics", timeout=10) as r:
        assert "nv_trt_llm_request_metrics" in r.read().decode()


def test_completion_is_the_triton_text_apis_completion(stack):
    """Greedy: the same text as tritonserver's own ensemble, with OpenAI's usage and finish reason."""
    r = stack.client.completions.create(model="ensemble", prompt=PROMPT, max_tokens=12, temperature=0)
    status, out = post(
        f"{stack.http_url}/v2/models/ensemble/generate",
        {"text_input": PROMPT, "max_tokens": 12, "temperature": 0.0, "exclude_input_in_output": True},
    )
    assert status == 200, out
    assert r.choices[0].text == out["text_output"]
    assert r.object == "text_completion" and r.model == "ensemble"
    assert r.usage.prompt_tokens == len(_tokenizer(stack).encode(PROMPT))
    n = r.usage.completion_tokens
    assert r.choices[0].finish_reason == ("length" if n == 12 else "stop")
    echo = stack.client.completions.create(model="ensemble", prompt=PROMPT, max_tokens=12, temperature=0, echo=True)
    assert echo.choices[0].text == PROMPT + r.choices[0].text


def _stream_text(stream, n: int = 1) -> tuple[list[str], list, object]:
    texts, finish, usage = [""] * n, [None] * n, None
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for c in chunk.choices:
            texts[c.index] += (c.delta.content or "") if hasattr(c, "delta") else c.text
            finish[c.index] = c.finish_reason or finish[c.index]
    return texts, finish, usage


@pytest.mark.parametrize("chat", [False, True], ids=["completions", "chat"])
def test_stream_concatenates_to_the_whole_text(stack, chat):
    kw = dict(model="tensorrt_llm_bls", max_tokens=40, temperature=0)
    if chat:
        create, kw["messages"] = stack.client.chat.completions.create, [{"role": "user", "content": PROMPT}]
    else:
        create, kw["prompt"] = stack.client.completions.create, PROMPT
    whole = create(**kw)
    texts, finish, usage = _stream_text(create(**kw, stream=True, stream_options={"include_usage": True}))
    text = whole.choices[0].message.content if chat else whole.choices[0].text
    assert texts[0] == text and text
    assert finish[0] == whole.choices[0].finish_reason
    assert usage == whole.usage


def test_continuous_usage_counts_every_token(stack):
    """vLLM's `continuous_usage_stats`: each chunk's usage is the tokens so far, so a client (a benchmark)
    counts tokens exactly, even those whose text is held back (a chunk per engine response)."""
    kw = dict(model="ensemble", prompt=PROMPT, max_tokens=24, temperature=0, extra_body={"ignore_eos": True})
    opts = {"include_usage": True, "continuous_usage_stats": True}
    counts = [
        (len(chunk.choices), chunk.usage.completion_tokens)
        for chunk in stack.client.completions.create(**kw, stream=True, stream_options=opts)
    ]
    assert [n for _, n in counts] == sorted(n for _, n in counts) and counts[-1] == (0, 24)
    chunks = [n for c, n in counts if c]
    assert len(chunks) > 1 and chunks[0] >= 1 and chunks[-1] == 24  # streamed, not one last chunk


def test_chat_template_and_usage(stack):
    tok = _tokenizer(stack)
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": PROMPT}]
    r = stack.client.chat.completions.create(model="ensemble", messages=messages, max_tokens=8, temperature=0)
    prompt = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert prompt.endswith("<|assistant|>")
    assert r.usage.prompt_tokens == len(tok.encode(prompt, add_special_tokens=False))
    assert r.choices[0].message.role == "assistant" and r.object == "chat.completion"
    # The same prompt as a completion: the same greedy text.
    c = stack.client.completions.create(model="ensemble", prompt=tok.encode(prompt, add_special_tokens=False),
                                        max_tokens=8, temperature=0)  # fmt: skip
    assert c.choices[0].text == r.choices[0].message.content


def _stop_candidate(text: str) -> str:
    """A stop string from the middle of `text`: printable, not at its start."""
    for i in range(3, len(text) - 2):
        s = text[i : i + 2]
        if s.isprintable() and "\ufffd" not in s and text.find(s) == i:
            return s
    pytest.skip(f"no usable stop string in {text!r}")


def test_stop_strings(stack):
    kw = dict(model="ensemble", prompt=PROMPT, max_tokens=60, temperature=0)
    text = stack.client.completions.create(**kw).choices[0].text
    stop = _stop_candidate(text)
    cut = text[: text.find(stop)]
    r = stack.client.completions.create(**kw, stop=[stop, "never seen \x01"])
    assert (r.choices[0].text, r.choices[0].finish_reason) == (cut, "stop")
    texts, finish, _ = _stream_text(stack.client.completions.create(**kw, stop=stop, stream=True))
    assert (texts[0], finish[0]) == (cut, "stop")
    r = stack.client.completions.create(**kw, stop="never seen \x01")
    assert r.choices[0].text == text


def test_seed_reproducible_and_n(stack):
    kw = dict(model="ensemble", prompt=PROMPT, max_tokens=16, temperature=1.0)
    a = stack.client.completions.create(**kw, seed=7).choices[0].text
    assert stack.client.completions.create(**kw, seed=7).choices[0].text == a
    assert stack.client.completions.create(**kw, seed=8).choices[0].text != a
    r = stack.client.completions.create(**kw, seed=7, n=3)
    assert [c.index for c in r.choices] == [0, 1, 2]
    assert r.choices[0].text == a  # choice i samples with seed + i
    assert len({c.text for c in r.choices}) == 3
    assert r.usage.prompt_tokens == len(_tokenizer(stack).encode(PROMPT))
    assert r.usage.completion_tokens <= 3 * 16
    texts, _, usage = _stream_text(
        stack.client.completions.create(**kw, seed=7, n=3, stream=True, stream_options={"include_usage": True}), n=3
    )
    assert texts == [c.text for c in r.choices] and usage == r.usage
    # A list of prompts: n choices each, prompt-major; usage counts each prompt once.
    r = stack.client.completions.create(**{**kw, "prompt": [PROMPT, "hi"]}, seed=7, n=2)
    assert [c.index for c in r.choices] == [0, 1, 2, 3] and r.choices[0].text == a
    assert r.usage.prompt_tokens == len(_tokenizer(stack).encode(PROMPT)) + len(_tokenizer(stack).encode("hi"))


def test_logprobs(stack):
    r = stack.client.chat.completions.create(
        model="ensemble", messages=[{"role": "user", "content": PROMPT}], max_tokens=10, logprobs=True, seed=1
    )
    content = r.choices[0].logprobs.content
    assert len(content) == r.usage.completion_tokens
    assert all(t.logprob <= 0 for t in content)
    # Byte-level tokens: their bytes add up to the text (undecodable bytes read as U+FFFD in both).
    assert b"".join(bytes(t.bytes) for t in content).decode("utf-8", "replace") == r.choices[0].message.content
    c = stack.client.completions.create(model="ensemble", prompt=PROMPT, max_tokens=6, logprobs=0, seed=1)
    lp = c.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.text_offset) == c.usage.completion_tokens


@pytest.mark.parametrize(
    "chat, field, value",
    [
        (False, "logit_bias", {"5": 1.0}),
        (False, "suffix", "tail"),
        (False, "min_p", 0.1),
        (False, "logprobs", 2),
        (False, "best_of", 3),
        (False, "temperature", 3.0),
        (False, "n", 0),
        (False, "no_such_field", 1),
        (True, "tools", [{"type": "function", "function": {"name": "f"}}]),
        (True, "response_format", {"type": "json_object"}),
        (True, "top_logprobs", 3),
        (True, "stream_options", {"include_usage": True}),  # without stream
    ],
)
def test_unsupported_or_invalid_field_is_a_400_naming_it(stack, chat, field, value):
    if chat:
        create, kw = stack.client.chat.completions.create, {"messages": [{"role": "user", "content": "hi"}]}
    else:
        create, kw = stack.client.completions.create, {"prompt": "hi"}
    with pytest.raises(openai.BadRequestError) as e:
        create(model="ensemble", max_tokens=4, extra_body={field: value}, **kw)
    assert e.value.status_code == 400
    assert e.value.body["param"] == field and field in e.value.body["message"], e.value.body
    assert e.value.body["type"] == "invalid_request_error"


def test_other_errors(stack):
    with pytest.raises(openai.NotFoundError) as e:
        stack.client.completions.create(model="no_such_model", prompt="hi")
    assert e.value.body["code"] == "model_not_found"
    with pytest.raises(openai.BadRequestError) as e:
        stack.client.completions.create(model="ensemble", prompt="word " * 400, max_tokens=4)
    assert e.value.body["code"] == "context_length_exceeded" and e.value.body["param"] == "prompt"
    image = {"type": "image_url", "image_url": {"url": "http://x/y.png"}}
    with pytest.raises(openai.BadRequestError) as e:
        stack.client.chat.completions.create(model="ensemble", messages=[{"role": "user", "content": [image]}])
    assert e.value.body["param"] == "messages[0].content[0]"


def test_standalone_front_end_and_missing_chat_template(stack):
    """`python -m openai_frontend` against the running server, with a tokenizer that has no template."""
    with openai_front_end(stack.grpc_port, "--tokenizer_dir", str(stack.work / "hf_plain")) as base:
        client = openai.OpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0)
        r = client.completions.create(model="ensemble", prompt=PROMPT, max_tokens=12, temperature=0)
        ref = stack.client.completions.create(model="ensemble", prompt=PROMPT, max_tokens=12, temperature=0)
        assert r.choices[0].text == ref.choices[0].text
        with pytest.raises(openai.BadRequestError) as e:
            client.chat.completions.create(model="ensemble", messages=[{"role": "user", "content": "hi"}])
        assert e.value.body["code"] == "chat_template_missing" and "chat template" in e.value.body["message"]


def _generated_by(stack, work) -> float:
    """Output tokens the engine counted for the request `work` sent."""

    def read() -> float:
        return stack.triton_metric("nv_llm_output_token_len_sum", "")

    before = settled(read)
    work()
    deadline = time.monotonic() + 60
    while read() == before and time.monotonic() < deadline:
        time.sleep(0.05)
    return settled(read) - before


@pytest.mark.parametrize("stream", [True, False], ids=["stream", "non-stream"])
def test_disconnect_cancels_the_engine_request(stack, stream):
    free = stack.triton_metric("nv_trt_llm_kv_cache_block_metrics", '"max"')
    kw = dict(model="ensemble", prompt=PROMPT, max_tokens=LONG, extra_body={"ignore_eos": True})
    # The non-streamed client leaves after the time this machine takes for LONG / 10 tokens (CI's 2 cores ran 300
    # tokens in 0.5 s, this machine 50), so the bound below does not depend on the machine's pace.
    start = time.monotonic()
    stack.client.completions.create(**{**kw, "max_tokens": LONG // 10})
    patience = time.monotonic() - start

    def abandon():
        if stream:
            s = stack.client.completions.create(**kw, stream=True)
            for i, _ in enumerate(s):
                if i == 2:
                    break
            s.close()
        else:
            with pytest.raises(openai.APITimeoutError):
                stack.client.with_options(timeout=patience).completions.create(**kw)

    generated = _generated_by(stack, abandon)
    # About LONG / 10 before the client left; the rest is how long the cancellation took to reach the engine.
    assert 1 <= generated < LONG * 3 / 4, f"the abandoned request produced {generated} tokens"
    deadline = time.monotonic() + 10
    while stack.triton_metric("nv_trt_llm_kv_cache_block_metrics", '"free"') != free and time.monotonic() < deadline:
        time.sleep(0.05)
    assert stack.triton_metric("nv_trt_llm_kv_cache_block_metrics", '"free"') == free
    # ignore_eos ran the request on (the engine's end token did not stop it) until the client left.
    r = stack.client.completions.create(model="ensemble", prompt=PROMPT, max_tokens=50, extra_body={"ignore_eos": True})
    assert r.usage.completion_tokens == 50 and r.choices[0].finish_reason == "length"
