"""2-rank tensor-parallel engines (gloo on CPU) give Hugging Face's greedy ids: Llama (K/V heads split and
replicated) and every other family (q/k/v biases, QK-norm, fused checkpoint tensors, tied heads split)."""

import os

import pytest
import torch

from tests.engine.test_families_vs_hf import FAMILIES, make_family_model
from tests.helpers import build_engine, end_rank, make_tiny_llama, run_two_ranks


def _worker(rank: int, engine_dirs: list[str], prompts: list, port: int, queue) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    from tensorrt_llm.runtime import ModelRunner, init_distributed

    init_distributed(2, rank)
    torch.manual_seed(0)
    outs = []
    for engine_dir in engine_dirs:  # one process group for all: spawning costs more than a generation
        runner = ModelRunner.from_dir(engine_dir, device="cpu", rank=rank)
        outs.append(runner.generate(prompts, max_new_tokens=16, end_id=-1, pad_id=0).tolist())
    queue.put((rank, outs))
    torch.distributed.barrier()  # no rank tears the group down while the other still talks to it
    torch.distributed.destroy_process_group()
    end_rank(queue)


def _run_tp2(engine_dirs: list, prompts: list) -> list:
    """Generates `prompts` on each 2-rank engine; returns rank 0's output ids per engine (ranks agree)."""
    results = dict(run_two_ranks(_worker, [str(d) for d in engine_dirs], prompts))
    assert results[0] == results[1]
    return results[0]


def _assert_greedy_like_hf(hf, prompts: list, out: list) -> None:
    for i, prompt in enumerate(prompts):
        with torch.no_grad():
            ref = hf.generate(
                torch.tensor([prompt]), max_new_tokens=16, do_sample=False, eos_token_id=None, pad_token_id=0
            )
        assert out[i][0][: ref.shape[1]] == ref[0].tolist()


@pytest.mark.parametrize("kv_heads", [4, 1])  # K/V heads split across ranks, and one replicated
def test_tp2_matches_hf(tmp_path, kv_heads):
    hf = make_tiny_llama(tmp_path / "hf", with_tokenizer=False, vocab_size=384, num_key_value_heads=kv_heads)
    build_engine(tmp_path / "hf", tmp_path / "engine", world_size=2, tp_size=2)
    prompts = [[1, 5, 9, 33, 2], [1, 77, 12]]
    (out,) = _run_tp2([tmp_path / "engine"], prompts)
    _assert_greedy_like_hf(hf, prompts, out)


def test_tp2_families_match_hf(tmp_path):
    models, engines = {}, []
    for name in FAMILIES:
        models[name] = make_family_model(name, tmp_path / name / "hf")
        engines.append(build_engine(tmp_path / name / "hf", tmp_path / name / "engine", world_size=2, tp_size=2))
    prompts = [[1, 5, 9, 33, 2, 17, 80, 80, 4, 250, 11, 12, 13, 301], [1, 77, 12]]  # the first beyond a window
    for name, out in zip(FAMILIES, _run_tp2(engines, prompts), strict=True):
        _assert_greedy_like_hf(models[name], prompts, out)


def _calls_worker(rank: int, engine_dir: str, port: int, queue) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    from tensorrt_llm.runtime import ModelRunner, init_distributed

    init_distributed(2, rank)
    runner = ModelRunner.from_dir(engine_dir, device="cpu", rank=rank)
    prompts = [[1, 5, 9, 33, 2], [1, 77, 12]]
    kw = dict(max_new_tokens=6, end_id=-1, pad_id=0)
    plain = runner.generate(prompts, **kw).tolist()
    steps = [s.tolist() for s in runner.generate(prompts, streaming=True, **kw)]
    try:  # refused by rank 0's executor: the other rank raises it too, and both go on
        runner.generate(prompts, max_new_tokens=4, end_id=100000)
        error = None
    except ValueError as e:
        error = str(e)
    again = runner.generate(prompts, **kw).tolist()
    queue.put((rank, plain, steps, error, again))
    torch.distributed.barrier()  # no rank tears the group down while the other still talks to it
    torch.distributed.destroy_process_group()
    end_rank(queue)


def test_tp2_runner_calls_stream_and_errors(tmp_path):
    """ModelRunner on 2 ranks: an executor per call, rank 1 following it; streaming yields every step on
    rank 0 and the final result on rank 1; an error of rank 0's executor reaches rank 1."""
    make_tiny_llama(tmp_path / "hf", with_tokenizer=False, vocab_size=384)
    build_engine(tmp_path / "hf", tmp_path / "engine", world_size=2, tp_size=2)
    results = {r[0]: r[1:] for r in run_two_ranks(_calls_worker, str(tmp_path / "engine"))}
    (plain0, steps0, err0, again0), (plain1, steps1, err1, again1) = results[0], results[1]
    assert plain0 == plain1 == again0 == again1
    assert len(steps0) == 6 and steps0[-1] == plain0 and steps1 == [plain0]
    assert err0 == err1 and "end_id=100000 is out of range" in err0
