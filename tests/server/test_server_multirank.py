"""A tensor-parallel engine served with one tritonserver per rank (the launcher's `--world_size 2`): rank 0
serves, rank 1's engine process follows its steps over gloo; the greedy tokens are those of the TP=1 engine."""

from __future__ import annotations

import pytest

from backend.detokenizer import decode
from tests.server.conftest import start_server
from tests.server.http_utils import post, stream

pytestmark = pytest.mark.server

PROMPTS = ["What is machine learning?", "The quick brown fox", "Tell me a story about a GPU"]


@pytest.fixture(scope="module")
def tp2_server(tiny_model, tmp_path_factory):
    from tests.helpers import build_engine

    model_dir, _ = tiny_model
    work = tmp_path_factory.mktemp("tp2")
    engine = build_engine(model_dir, work / "engine_tp2", max_batch_size=8, world_size=2, tp_size=2)
    yield from start_server((model_dir, engine), work, decoupled=True, world_size=2)


def test_tp2_greedy_tokens_equal_tp1(tp2_server, reference):
    for prompt in PROMPTS:
        status, out = post(
            f"{tp2_server.http_url}/v2/models/ensemble/generate",
            {"text_input": prompt, "max_tokens": 12, "exclude_input_in_output": True},
        )
        assert status == 200, out
        assert out["text_output"] == decode(reference.tokenizer, reference(prompt, 12)), prompt
    events = stream(
        f"{tp2_server.http_url}/v2/models/ensemble/generate_stream",
        {"text_input": PROMPTS[0], "max_tokens": 12, "stream": True, "exclude_input_in_output": True},
    )
    assert "".join(e["text_output"] for e in events) == decode(reference.tokenizer, reference(PROMPTS[0], 12))


def test_one_server_serves(tp2_server):
    """Rank 1's server never opens its endpoints (it blocks in the engine model's initialization, as the
    TensorRT-LLM backend's workers do): the log shows one follower and one serving server."""
    log = tp2_server.log.read_text()
    assert "follows rank 0" in log
    assert log.count("Started HTTPService") == 1


def test_killed_rank_restarts_every_rank(tp2_server, reference):
    """Rank 1 killed: rank 0 cannot go on without it, so the launcher starts every rank again and says so;
    requests then succeed with the same tokens, without anyone acting. (Last in this module: it restarts
    the module's server.)"""
    import os
    import signal
    import subprocess
    import time

    rows = subprocess.run(["ps", "-ww", "-eo", "pid=,args="], capture_output=True, text=True, check=True).stdout
    mine = [
        line for line in rows.splitlines() if "tritonserver" in line and f"--http-port={tp2_server.http_port}" in line
    ]
    (rank1,) = [int(line.split(None, 1)[0]) for line in mine if "prefix1_" in line]
    os.kill(rank1, signal.SIGKILL)
    deadline = time.monotonic() + 240
    while "tritonserver restarted and ready" not in tp2_server.log.read_text():
        assert time.monotonic() < deadline, tp2_server.log.read_text()[-3000:]
        time.sleep(0.5)
    log = tp2_server.log.read_text()
    assert f"rank 1's tritonserver (pid {rank1}) exited with code -9: restarting every rank (1/5)" in log
    status, out = post(
        f"{tp2_server.http_url}/v2/models/ensemble/generate",
        {"text_input": PROMPTS[1], "max_tokens": 12, "exclude_input_in_output": True},
    )
    assert status == 200, out
    assert out["text_output"] == decode(reference.tokenizer, reference(PROMPTS[1], 12))
