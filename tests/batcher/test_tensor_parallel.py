"""A 2-rank tensor-parallel engine (gloo on CPU): rank 0 runs the Executor, rank 1 `run_follower`; the
outputs are those of Hugging Face, under preemption and with beam search (KV block copies) too."""

import os

import pytest
import torch

from tests.batcher.conftest import hf_greedy, prompts
from tests.helpers import build_engine, end_rank, make_tiny_llama, run_two_ranks


def _worker(rank: int, engine_dir: str, port: int, queue) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    from inflight_batcher import Executor, ExecutorConfig, Request, SamplingParams, run_follower
    from tensorrt_llm.runtime import Engine, init_distributed

    init_distributed(2, rank)
    cfg = ExecutorConfig(batch_scheduler_policy="max_utilization", max_tokens_in_paged_kv_cache=160, max_beam_width=2)
    engine = Engine.from_dir(engine_dir, device="cpu", rank=rank)
    if rank == 0:
        ex = Executor(engine, cfg)
        reqs = [Request(p, max_new_tokens=20, end_id=-1) for p in prompts(6, lo=10, hi=30, seed=1)]
        reqs.append(Request([5, 6, 7], max_new_tokens=8, end_id=-1, sampling=SamplingParams(beam_width=2)))
        outs = ex.generate(reqs, timeout=120)
        queue.put(([o.tokens for o in outs], ex.stats().preemptions))
        ex.shutdown()
    else:
        run_follower(engine, cfg)
        queue.put(None)
    # Both ranks leave their last collective before either tears the group down: a rank that destroys it
    # while the other still talks to it can abort the other at exit (seen once in ~5 runs: SIGABRT).
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()
    end_rank(queue)


@pytest.mark.skipif(torch.cuda.is_available(), reason="a gloo CPU test (init_distributed picks NCCL on a GPU)")
def test_tp2_leader_and_follower(tmp_path):
    hf = make_tiny_llama(tmp_path / "hf", with_tokenizer=False, vocab_size=384)
    build_engine(tmp_path / "hf", tmp_path / "engine", world_size=2, tp_size=2, max_batch_size=8, max_beam_width=2)
    results = run_two_ranks(_worker, str(tmp_path / "engine"))
    tokens, preemptions = next(r for r in results if r is not None)
    assert preemptions > 0  # 20 blocks of 8 tokens for 6 x ~40 tokens
    for p, t in zip(prompts(6, lo=10, hi=30, seed=1), tokens, strict=False):
        assert t[0] == hf_greedy(hf, p, 20)
    with torch.no_grad():
        beams = hf.generate(torch.tensor([[5, 6, 7]]), num_beams=2, num_return_sequences=2, do_sample=False,
                            max_new_tokens=8, eos_token_id=None, pad_token_id=3)[:, 3:].tolist()  # fmt: skip
    assert tokens[-1] == beams
