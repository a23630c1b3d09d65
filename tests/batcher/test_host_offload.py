"""KV cache host offload (`kv_cache_host_memory_bytes`): cached blocks evicted from the device pool go to a
host pool and come back (onboarded) when a later request's prefix chain reaches them; that never changes a
token, and every block and host slot is accounted for at the end."""

import dataclasses
import os
import random

import pytest
import torch

from inflight_batcher import Executor, ExecutorConfig, Request, SamplingParams
from inflight_batcher.block_manager import BlockManager
from inflight_batcher.kv_offload import HostKVPool
from tensorrt_llm.runtime.kv_cache import KVCachePool
from tests.batcher.conftest import BUILD, DEVICE, prompts
from tests.helpers import build_engine, end_rank, make_tiny_llama, run_two_ranks

TPB = BUILD["tokens_per_block"]


# -- the block manager alone ----------------------------------------------------------------------------
def _publish_all(bm: BlockManager, table: list[int], tokens: list[int]) -> list[int]:
    keys = bm.keys(tokens)
    bm.publish(table, tokens, keys, 0, None)
    return keys


def test_an_evicted_block_goes_to_the_host_and_is_onboarded_on_a_hit():
    bm = BlockManager(2, 2, enable_reuse=True, host_blocks=4)
    tokens = [1, 1, 2, 2]
    table = bm.allocate(2)
    b0, b1 = table
    keys = _publish_all(bm, table, tokens)
    bm.free(table)  # cached: b1 is evicted first (a prefix outlives its continuations)
    other = bm.allocate(2)
    assert bm.num_host_cached == 2 and bm.offloaded_blocks == 2 and bm.num_cached == 0
    offloads, onboards = bm.pending_moves()
    assert offloads == [(b1, 0), (b0, 1)] and onboards == []
    assert bm.pending_moves() == ([], [])  # handed over once
    found = bm.lookup(tokens, keys)
    assert found == [bm.host_base + 1, bm.host_base + 0]  # the chain, through the host
    bm.free(other)  # not keyed: blank
    got = bm.take(found, 4)
    assert all(b < bm.num_blocks for b in got) and bm.ref_counts[got[0]] == bm.ref_counts[got[1]] == 1
    assert bm.pending_moves() == ([], [(1, got[0]), (0, got[1])])
    assert bm.onboarded_blocks == 2 and bm.reused_blocks == 2 and bm.num_host_cached == 0
    assert bm.lookup(tokens, keys) == got  # the keys live on the device again
    bm.check([got])
    bm.free(got)
    bm.check([])


def test_the_host_pool_evicts_least_recently_offloaded_first():
    bm = BlockManager(1, 2, enable_reuse=True, host_blocks=2)
    chains = [[i, i] for i in range(4)]
    for c in chains:  # each new block evicts the previous one to the host
        t = bm.allocate(1)
        _publish_all(bm, t, c)
        bm.free(t)
    bm.pending_moves()
    # chain 3 on the device, 2 and 1 on the host, 0 dropped for good
    assert bm.offloaded_blocks == 3 and bm.host_dropped_blocks == 1 and bm.num_host_cached == 2
    assert bm.lookup(chains[0], bm.keys(chains[0])) == []
    assert bm.lookup(chains[1], bm.keys(chains[1])) == [bm.host_base + 1]
    assert bm.lookup(chains[2], bm.keys(chains[2])) == [bm.host_base + 0]  # in chain 0's slot
    assert bm.lookup(chains[3], bm.keys(chains[3])) == [0]
    bm.check([])


def test_no_host_pool_without_reuse_and_a_slot_being_written_is_not_read():
    assert BlockManager(4, 2, enable_reuse=False, host_blocks=8).host_blocks == 0
    bm = BlockManager(1, 2, enable_reuse=True, host_blocks=2)
    t = bm.allocate(1)
    keys = _publish_all(bm, t, [5, 5])
    bm.free(t)
    t = bm.allocate(1)  # offloads [5, 5]; its copy is queued, not yet done
    assert bm.lookup([5, 5], keys) == []
    bm.pending_moves()
    assert bm.lookup([5, 5], keys) == [bm.host_base + 0]
    # the same block computed again on the device: the host copy is dropped, the device one serves
    bm.publish(t, [5, 5], keys, 0, None)
    assert bm.num_host_cached == 0 and bm.lookup([5, 5], keys) == t
    bm.free(t)
    bm.check([])


def test_random_traffic_moves_the_right_contents():
    """Shadow contents of every device block and host slot, moved as `HostKVPool.apply` orders them (host
    reads, device reads, then writes), several admissions per step: every block a request takes holds its
    chain's tokens, and the invariants hold throughout."""
    rng = random.Random(0)
    tpb = 2
    bm = BlockManager(10, tpb, enable_reuse=True, host_blocks=6)
    dev: list[tuple | None] = [None] * bm.num_blocks
    host: list[tuple | None] = [None] * bm.host_blocks
    stems = [[rng.randrange(3) for _ in range(8)] for _ in range(4)]
    live: list[list[int]] = []
    taken = onboarded = 0
    for _ in range(300):
        step = []
        for _ in range(rng.randrange(1, 4)):  # admissions planned in one step (one batch of moves)
            tokens = rng.choice(stems)[: rng.randrange(2, 9)] + [rng.randrange(3) for _ in range(rng.randrange(3))]
            keys = bm.keys(tokens[: (len(tokens) - 1) // tpb * tpb])
            found = bm.lookup(tokens, keys)
            need = bm.blocks_for(len(tokens)) - sum(1 for b in found if bm.ref_counts[b] > 0)
            if need > bm.num_free:
                break
            table = bm.take(found, len(found) * tpb)
            bm.extend(table, len(tokens))
            step.append((tokens, table, len(found)))
            taken += len(found)
        offloads, onboards = bm.pending_moves()
        onboarded += len(onboards)
        from_host = [host[h] for h, _ in onboards]
        from_dev = [dev[b] for b, _ in offloads]
        for (_, h), v in zip(offloads, from_dev, strict=True):
            host[h] = v
        for (_, b), v in zip(onboards, from_host, strict=True):
            dev[b] = v
        for tokens, table, n in step:  # the step's forward: the rest is computed, then published
            for i in range(n):
                assert dev[table[i]] == tuple(tokens[: (i + 1) * tpb]), "a taken block holds other KV"
            for i in range(n, len(table)):
                dev[table[i]] = tuple(tokens[: (i + 1) * tpb])
            full = len(tokens) // tpb
            bm.publish(table, tokens, bm.keys(tokens[: full * tpb]), 0, None)
            live.append(table)
        rng.shuffle(live)
        for table in live[: rng.randrange(len(live) + 1)]:
            bm.free(table)
        live = [t for t in live if t]
        bm.check(live)
    assert taken > 50 and onboarded > 10 and bm.host_dropped_blocks > 0


# -- the host pool's copies ------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.int8, torch.float8_e4m3fn])
def test_pool_moves_raw_blocks_even_into_what_the_same_batch_reads(dtype):
    kv = KVCachePool(2, 4, 3, 2, 4, dtype, DEVICE)  # on CUDA: asynchronous copies to a page-locked pool
    kv.data.copy_(torch.randn(kv.data.shape).mul(10).to(dtype))
    before = kv.data.view(torch.uint8).cpu().clone()  # [layers, 2, blocks, ...] as raw bytes, on the host
    pool = HostKVPool(kv, 3)
    assert pool.bytes_per_block == KVCachePool.bytes_per_block(2, 3, 2, 4, dtype)
    pool.apply(kv, [(0, 2), (3, 0)], [])
    pool.synchronize()
    assert torch.equal(pool.data[2], before[:, :, 0]) and torch.equal(pool.data[0], before[:, :, 3])
    # one batch: slot 2 back into block 1 while block 1 goes to slot 2; slot 0 into block 3 and block 2 to
    # slot 1: every source is read before its destination is written
    pool.apply(kv, [(1, 2), (2, 1)], [(2, 1), (0, 3)])
    pool.synchronize()
    raw = kv.data.view(torch.uint8).cpu()
    assert torch.equal(raw[:, :, 1], before[:, :, 0]) and torch.equal(raw[:, :, 3], before[:, :, 3])
    assert torch.equal(pool.data[2], before[:, :, 1]) and torch.equal(pool.data[1], before[:, :, 2])
    assert torch.equal(raw[:, :, 0], before[:, :, 0]) and torch.equal(raw[:, :, 2], before[:, :, 2])


# -- the executor -----------------------------------------------------------------------------------------
SYSTEM = prompts(1, lo=40, hi=41, seed=11)[0]  # 5 full blocks of 8
TAILS = prompts(6, lo=2, hi=12, seed=12)
FILLERS = prompts(5, lo=30, hi=40, seed=13)


def _new(p: list[int], n: int = 8, **kw) -> Request:
    return Request(p, max_new_tokens=n, end_id=-1, **kw)


def _traffic(ex: Executor) -> tuple[list[list[list[int]]], int]:
    """A system prompt, others evicting it from a 12-block device pool, then requests starting with it again:
    alone, then batched with others and a beam search. Returns the tokens, and the prompt tokens reused by the
    request that follows the evictions."""
    outs = [ex.generate([_new(SYSTEM + TAILS[0])])[0]]
    outs += ex.generate([_new(p) for p in FILLERS[:3]])
    before = ex.stats().reused_tokens
    outs += ex.generate([_new(SYSTEM + TAILS[1])])
    reused = ex.stats().reused_tokens - before
    batch = [_new(SYSTEM + t, 10) for t in TAILS[2:5]] + [_new(p) for p in FILLERS[3:]]
    batch.append(_new(SYSTEM + TAILS[5], 6, sampling=SamplingParams(beam_width=2)))
    outs += ex.generate(batch)
    outs += ex.generate([_new(p) for p in FILLERS[:2]] + [_new(SYSTEM + TAILS[0])])
    return [o.tokens for o in outs], reused


def _check_accounting(ex: Executor) -> None:
    st, bm = ex.stats(), ex.block_manager
    assert st.used_blocks == 0 and st.free_blocks == st.max_blocks and st.cached_blocks <= st.max_blocks
    assert st.host_blocks == bm.num_host_cached and len(bm.host_free) + st.host_blocks == st.max_host_blocks
    bm.check([])


@pytest.mark.parametrize("policy", ["guaranteed_no_evict", "max_utilization"])
def test_offload_changes_no_token_and_serves_the_prefix_from_the_host(make_executor, policy):
    small = dict(max_tokens_in_paged_kv_cache=12 * TPB, max_beam_width=2, batch_scheduler_policy=policy)
    want, _ = _traffic(make_executor(**small))  # no reuse
    reuse = make_executor(**small, enable_kv_cache_reuse=True)
    got_reuse, reused_without = _traffic(reuse)
    per_block = reuse.engine.kv_bytes_per_block()
    ex = make_executor(**small, enable_kv_cache_reuse=True, kv_cache_host_memory_bytes=40 * per_block + 1)
    got, reused_with = _traffic(ex)
    assert got == want and got_reuse == want
    st = ex.stats()
    assert st.max_host_blocks == 40 and st.offloaded_blocks > 0 and st.onboarded_blocks > 0
    # the prefix evicted from the device came back from the host: every full block of it, not computed
    assert reused_with == 5 * TPB > reused_without
    assert st.reused_tokens > reuse.stats().reused_tokens
    _check_accounting(ex)


def test_a_tiny_host_pool_evicts_and_keeps_outputs(make_executor):
    small = dict(max_tokens_in_paged_kv_cache=12 * TPB, max_beam_width=2, enable_kv_cache_reuse=True)
    reuse = make_executor(**small)
    want, _ = _traffic(reuse)
    ex = make_executor(**small, kv_cache_host_memory_bytes=3 * reuse.engine.kv_bytes_per_block())
    got, _ = _traffic(ex)
    assert got == want
    st = ex.stats()
    assert st.max_host_blocks == 3 and st.host_blocks == 3 and ex.block_manager.host_dropped_blocks > 0
    _check_accounting(ex)


def test_host_memory_without_reuse_or_below_a_block_is_no_pool(make_executor, caplog):
    ex = make_executor(kv_cache_host_memory_bytes=1 << 20)
    assert ex.host_kv is None and ex.stats().max_host_blocks == 0 and "without enable_kv_cache_reuse" in caplog.text
    ex = make_executor(enable_kv_cache_reuse=True, kv_cache_host_memory_bytes=1)
    assert ex.host_kv is None and "less than one KV block" in caplog.text
    with pytest.raises(ValueError, match="kv_cache_host_memory_bytes"):
        ExecutorConfig(kv_cache_host_memory_bytes=-1)


def test_an_int8_kv_cache_is_offloaded_as_bytes():
    from tensorrt_llm.builder import BuildConfig, convert_in_memory
    from tensorrt_llm.quantization import QuantConfig
    from tensorrt_llm.runtime import Engine
    from tests.helpers import tiny_llama_config

    hf = tiny_llama_config(num_key_value_heads=2).to_dict()
    build = BuildConfig(max_batch_size=8, max_input_len=64, max_seq_len=128, max_num_tokens=256, tokens_per_block=TPB)
    cfg, weights = convert_in_memory(hf, "float32", build, device="cpu")
    cfg = dataclasses.replace(cfg, quantization=QuantConfig(kv_cache_quant_algo="INT8"))
    layers = cfg.model.num_hidden_layers
    weights.update({f"layers.{i}.attention.kv_cache_scale": torch.full((2,), 0.02) for i in range(layers)})
    engine = Engine.from_weights(cfg, weights, torch.device(DEVICE))  # on CUDA: page-locked host pool
    assert engine.kv_dtype == torch.int8
    small = dict(max_tokens_in_paged_kv_cache=12 * TPB, max_beam_width=1, cuda_graphs=False)

    def run(**cfg) -> tuple[list, Executor]:
        with Executor(engine, ExecutorConfig(**small, **cfg)) as ex:
            outs = [ex.generate([_new(SYSTEM + TAILS[0])])[0]]
            outs += ex.generate([_new(p) for p in FILLERS[:3]])
            outs += ex.generate([_new(SYSTEM + t) for t in TAILS[1:3]])
        return [o.tokens for o in outs], ex

    want, _ = run()
    got, ex = run(enable_kv_cache_reuse=True, kv_cache_host_memory_bytes=20 * engine.kv_bytes_per_block())
    assert got == want and ex.stats().onboarded_blocks > 0
    ex.block_manager.check([])


# -- a 2-rank tensor-parallel engine: the follower performs the leader's moves on its own pools ------------
def _tp_worker(rank: int, engine_dir: str, port: int, queue) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    from inflight_batcher import run_follower
    from tensorrt_llm.runtime import Engine, init_distributed

    init_distributed(2, rank)
    cfg = ExecutorConfig(
        enable_kv_cache_reuse=True, kv_cache_host_memory_bytes=1 << 20, max_tokens_in_paged_kv_cache=12 * TPB,
        max_beam_width=2, cuda_graphs=False,
    )  # fmt: skip
    engine = Engine.from_dir(engine_dir, device="cpu", rank=rank)
    if rank == 0:
        ex = Executor(engine, cfg)
        tokens, _ = _traffic(ex)
        queue.put((tokens, ex.stats().onboarded_blocks))
        ex.shutdown()
        ex.block_manager.check([])
    else:
        run_follower(engine, cfg)
        queue.put(None)
    torch.distributed.barrier()  # (as in test_tensor_parallel.py: no rank tears the group down under the other)
    torch.distributed.destroy_process_group()
    end_rank(queue)


@pytest.mark.skipif(torch.cuda.is_available(), reason="a gloo CPU test (init_distributed picks NCCL on a GPU)")
def test_tp2_follower_moves_blocks_like_the_leader(tmp_path):
    make_tiny_llama(tmp_path / "hf", with_tokenizer=False, vocab_size=384)
    build = dict(max_batch_size=8, max_beam_width=2)
    build_engine(tmp_path / "hf", tmp_path / "tp", world_size=2, tp_size=2, **build)
    build_engine(tmp_path / "hf", tmp_path / "one", **build)
    with Executor.from_engine_dir(tmp_path / "one", ExecutorConfig(max_beam_width=2, cuda_graphs=False)) as ex:
        want, _ = _traffic(ex)
    results = run_two_ranks(_tp_worker, str(tmp_path / "tp"))
    got, onboarded = next(r for r in results if r is not None)
    assert onboarded > 0 and got == want
