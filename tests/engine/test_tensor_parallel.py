"""A 2-rank tensor-parallel engine (gloo on CPU) gives the single-rank logits and greedy ids."""

import os
import socket

import pytest
import torch
import torch.multiprocessing as mp

from tests.helpers import build_engine, make_tiny_llama


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, engine_dir: str, port: int, prompts: list, queue) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    from tensorrt_llm.runtime import ModelRunner, init_distributed

    init_distributed(2, rank)
    torch.manual_seed(0)
    runner = ModelRunner.from_dir(engine_dir, device="cpu", rank=rank)
    out = runner.generate(prompts, max_new_tokens=16, end_id=-1, pad_id=0)
    queue.put((rank, out.tolist()))
    torch.distributed.destroy_process_group()


@pytest.mark.parametrize("kv_heads", [4, 1])  # K/V heads split across ranks, and one replicated
def test_tp2_matches_hf(tmp_path, kv_heads):
    hf = make_tiny_llama(tmp_path / "hf", with_tokenizer=False, vocab_size=384, num_key_value_heads=kv_heads)
    build_engine(tmp_path / "hf", tmp_path / "engine", world_size=2, tp_size=2)
    prompts = [[1, 5, 9, 33, 2], [1, 77, 12]]
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    port = _free_port()
    procs = [ctx.Process(target=_worker, args=(r, str(tmp_path / "engine"), port, prompts, queue)) for r in (0, 1)]
    for p in procs:
        p.start()
    results = dict(queue.get(timeout=120) for _ in procs)
    for p in procs:
        p.join(timeout=60)
    assert results[0] == results[1]
    for i, prompt in enumerate(prompts):
        with torch.no_grad():
            ref = hf.generate(
                torch.tensor([prompt]), max_new_tokens=16, do_sample=False, eos_token_id=None, pad_token_id=0
            )
        assert results[0][i][0][: ref.shape[1]] == ref[0].tolist()
