"""Sliding-window models: blocks wholly before every coming query's window go back to the pool while the
request runs, so a long generation holds a window's worth of KV, not its whole length; the tokens are
exactly those of Hugging Face and of the same executor keeping every block."""

import pytest
import torch

from inflight_batcher import Executor, ExecutorConfig, Request, SamplingParams
from tensorrt_llm.tools.tiny_model import make_tiny_model
from tests.batcher.conftest import DEVICE, TEST_CONFIG
from tests.helpers import build_engine

VOCAB = 384
WINDOW = 12  # keys; blocks of 8 tokens: not a multiple


@pytest.fixture(scope="module")
def mistral(tmp_path_factory):
    d = tmp_path_factory.mktemp("window")
    hf = make_tiny_model(d / "hf", "MistralForCausalLM", with_tokenizer=False, vocab_size=VOCAB,
                         num_key_value_heads=2, sliding_window=WINDOW)  # fmt: skip
    hf.set_attn_implementation("eager")
    build_engine(d / "hf", d / "engine", max_batch_size=8, max_num_tokens=256, max_beam_width=2)
    return hf, d / "engine"


def _executor(engine_dir, release: bool, **cfg) -> Executor:
    ex = Executor.from_engine_dir(engine_dir, ExecutorConfig(**{**TEST_CONFIG, **cfg}), device=DEVICE)
    assert ex.scheduler.window == WINDOW
    if not release:
        ex.scheduler.window = 0  # the same executor keeping every block
    return ex


def _prompts() -> list[list[int]]:
    g = torch.Generator().manual_seed(5)
    return [torch.randint(4, VOCAB, (n,), generator=g).tolist() for n in (5, 30, 17)]


def test_greedy_tokens_are_hugging_faces_and_kv_stays_a_window(mistral):
    hf, engine_dir = mistral
    ex = _executor(engine_dir, release=True)
    held = []  # blocks the long request holds after each of its steps
    try:

        def held_blocks(_out) -> None:
            table = long.seqs[0].block_table
            held.append(len(table) - table.count(ex.block_manager.released))

        long = Request([7, 8, 9], max_new_tokens=100, end_id=-1, streaming=True, callback=held_blocks)
        outs = ex.generate([long] + [Request(p, max_new_tokens=40, end_id=-1) for p in _prompts()])
        for req, out in zip([long.input_ids, *_prompts()], outs, strict=True):
            with torch.no_grad():
                ref = hf.generate(torch.tensor([req]), max_new_tokens=len(out.tokens[0]), do_sample=False,
                                  eos_token_id=None, pad_token_id=0)[0, len(req):].tolist()  # fmt: skip
            assert out.tokens[0] == ref
        # 103 tokens would take 13 blocks of 8; the window of 12 keys spans at most 3 (one more being filled)
        assert max(held[5:]) <= 3, held
        ex.block_manager.check([])
    finally:
        ex.shutdown()


def test_release_changes_no_token_sampled_beams_or_reuse(mistral):
    """Sampling with seeds, beam search and prefix reuse: the same outputs with blocks handed back as with
    every block kept."""
    _, engine_dir = mistral

    def run(release: bool):
        ex = _executor(engine_dir, release, enable_kv_cache_reuse=True, max_beam_width=2)
        try:
            shared = list(range(10, 42))  # four full blocks shared by two prompts
            reqs = [Request(p, max_new_tokens=50, end_id=-1, sampling=SamplingParams(temperature=0.8, random_seed=i))
                    for i, p in enumerate(_prompts() + [shared + [5, 6], shared + [7]])]  # fmt: skip
            reqs.append(Request([3, 4, 5, 6], max_new_tokens=30, end_id=-1, sampling=SamplingParams(beam_width=2)))
            outs = [o.tokens for o in ex.generate(reqs)]
            ex.block_manager.check([])
            return outs
        finally:
            ex.shutdown()

    assert run(release=True) == run(release=False)


def test_a_small_cache_runs_generations_longer_than_it_holds(mistral):
    """8 blocks of 8 tokens: without the window, one 103-token request (13 blocks) could never run; with
    it, each request reserves what its window spans and three run at once."""
    _, engine_dir = mistral
    ex = _executor(engine_dir, release=True, max_tokens_in_paged_kv_cache=64)
    try:
        assert ex.block_manager.num_blocks == 8
        outs = ex.generate([Request([7, 8, 9 + i], max_new_tokens=100, end_id=-1) for i in range(3)])
        assert [len(o.tokens[0]) for o in outs] == [100] * 3
        ex.block_manager.check([])
    finally:
        ex.shutdown()
    keep_all = _executor(engine_dir, release=False, max_tokens_in_paged_kv_cache=64)
    try:
        with pytest.raises(ValueError, match="needs 13 KV blocks"):
            keep_all.generate([Request([7, 8, 9], max_new_tokens=100, end_id=-1)])
    finally:
        keep_all.shutdown()


SINKS = 9  # the first 9 keys: blocks 0 and 1 of 8 tokens (the second one partly)


def test_sink_blocks_are_never_released_and_kv_stays_sinks_plus_a_window(mistral):
    """Attention sinks asked for on the family's own window (sink_token_length): every query also sees the
    first SINKS keys, so their blocks stay while the blocks wholly between them and the window go back; the
    tokens are those of the same engine keeping every block."""
    from tensorrt_llm.runtime import Engine

    _, engine_dir = mistral
    prompts = [[7, 8, 9], *_prompts()]

    def run(release: bool):
        engine = Engine.from_dir(engine_dir, device=DEVICE, sink_tokens=SINKS)
        ex = Executor(engine, ExecutorConfig(**TEST_CONFIG))
        assert (ex.scheduler.window, ex.scheduler.sinks) == (WINDOW, SINKS)
        if not release:
            ex.scheduler.window = 0
        held, sink_blocks = [], set()  # after each step of the long request: blocks held, its sink blocks

        def watch(_out) -> None:
            table = long.seqs[0].block_table
            held.append(len(table) - table.count(ex.block_manager.released))
            if len(table) >= 2:
                sink_blocks.add(tuple(table[:2]))

        try:
            long = Request(prompts[0], max_new_tokens=100, end_id=-1, streaming=True, callback=watch)
            outs = ex.generate([long] + [Request(p, max_new_tokens=40, end_id=-1) for p in prompts[1:]])
            ex.block_manager.check([])
        finally:
            ex.shutdown()
        assert len(sink_blocks) == 1 and ex.block_manager.released not in next(iter(sink_blocks)), sink_blocks
        return [o.tokens[0] for o in outs], held

    tokens, held = run(release=True)
    kept_tokens, kept_held = run(release=False)
    assert tokens == kept_tokens
    ex = _executor(engine_dir, release=True)  # no sinks: the long request's tokens differ
    try:
        assert ex.generate([Request(prompts[0], max_new_tokens=100, end_id=-1)])[0].tokens[0] != tokens[0]
    finally:
        ex.shutdown()
    # 103 tokens take 13 blocks (the last callback comes after the blocks are freed); the 2 sink blocks and
    # a 12-key window's (at most 3) stay
    assert max(held) == 5 and max(kept_held) == 13 and held[-1] == kept_held[-1] == 0, (held, kept_held)
