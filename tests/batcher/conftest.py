"""One tiny random-weight Llama (and its engine) shared by the batcher tests, plus helpers to run
requests alone and to compare with Hugging Face."""

import os
from pathlib import Path

import pytest
import torch

from inflight_batcher import Executor, ExecutorConfig, Request
from tests.helpers import build_engine, make_tiny_llama

VOCAB = 384
# The executor runs here (the Hugging Face reference always on CPU): BATCHER_TEST_DEVICE=cuda on a GPU.
DEVICE = os.environ.get("BATCHER_TEST_DEVICE", "cpu")
# BATCHER_TEST_CUDA_GRAPHS=0 runs the CUDA tests without graph replay (to tell graph bugs from others).
# Test executors also cap their KV cache at what the CPU default gives (32 x 256 tokens): on a GPU the
# default, 90% of the free memory, would leave nothing to the next executor of the same process.
TEST_CONFIG = dict(
    cuda_graphs=os.environ.get("BATCHER_TEST_CUDA_GRAPHS", "1") != "0", max_tokens_in_paged_kv_cache=32 * 256
)
BUILD = dict(max_batch_size=32, max_num_tokens=256, max_beam_width=4, tokens_per_block=8)


# A lost final output would make generate() wait forever: in tests, fail after two minutes instead.
Executor.generate.__defaults__ = (120.0,)


@pytest.fixture(scope="session")
def model_dirs(tmp_path_factory) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("batcher")
    make_tiny_llama(d / "hf", with_tokenizer=False, vocab_size=VOCAB)
    build_engine(d / "hf", d / "engine", **BUILD)
    return d / "hf", d / "engine"


@pytest.fixture(scope="session")
def engine_dir(model_dirs) -> Path:
    return model_dirs[1]


@pytest.fixture(scope="session")
def hf_model(model_dirs):
    from transformers import LlamaForCausalLM

    return LlamaForCausalLM.from_pretrained(model_dirs[0]).eval()


@pytest.fixture
def make_executor(engine_dir):
    """Executor factory; every executor made is shut down and its block manager checked at the end."""
    made: list[Executor] = []

    def make(**cfg) -> Executor:
        ex = Executor.from_engine_dir(engine_dir, ExecutorConfig(**{**TEST_CONFIG, **cfg}), device=DEVICE)
        made.append(ex)
        return ex

    yield make
    for ex in made:
        ex.shutdown()
        ex.block_manager.check([])  # every block came back


@pytest.fixture(scope="session")
def solo(engine_dir):
    """`solo(request)`: the final Output of `request` run alone on a fresh, roomy executor."""
    ex = Executor.from_engine_dir(engine_dir, ExecutorConfig(max_beam_width=4, **TEST_CONFIG), device=DEVICE)
    yield lambda req: ex.generate([req])[0]
    ex.shutdown()


def prompts(n: int, lo: int = 1, hi: int = 40, seed: int = 0) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    lens = torch.randint(lo, hi, (n,), generator=g).tolist()
    return [torch.randint(4, VOCAB, (k,), generator=g).tolist() for k in lens]


def clone(req: Request) -> Request:
    """A fresh copy of a request's caller fields (a Request can be enqueued once)."""
    return Request(
        input_ids=list(req.input_ids), max_new_tokens=req.max_new_tokens, end_id=req.end_id,
        pad_id=req.pad_id, streaming=req.streaming, sampling=req.sampling, stop_words=req.stop_words,
        bad_words=req.bad_words, return_log_probs=req.return_log_probs,
    )  # fmt: skip


@torch.no_grad()
def hf_greedy(hf, prompt: list[int], n: int, eos: int | None = None) -> list[int]:
    out = hf.generate(
        torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
        max_new_tokens=n, do_sample=False, eos_token_id=eos, pad_token_id=3,
    )[0, len(prompt):].tolist()  # fmt: skip
    if eos is not None and eos in out:
        out = out[: out.index(eos)]
    return out
