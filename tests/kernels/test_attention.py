"""paged_attention (context and split-KV generation kernels) against the per-sequence reference."""

import math

import pytest
import torch

pytest.importorskip("triton")

from tensorrt_llm import kernels as K  # noqa: E402
from tensorrt_llm.kernels import attention  # noqa: E402

# the interpreter warns on tensor loop bounds (`range(0, kv_end, ...)`); harmless
pytestmark = pytest.mark.filterwarnings("ignore:Conversion of an array:DeprecationWarning")

TOL = {torch.float32: 2e-5, torch.float16: 2e-3}


def make_batch(seq_lens, ctx_lens, H, Hkv, D, tpb, dtype, device, seed=0):
    """Random q and a random paged cache; each sequence gets a random, non-contiguous set of blocks."""
    g = torch.Generator().manual_seed(seed)
    max_blocks = max(math.ceil(c / tpb) for c in ctx_lens)
    num_blocks = sum(math.ceil(c / tpb) for c in ctx_lens) + 3
    perm = torch.randperm(num_blocks, generator=g).tolist()
    tables = torch.zeros(len(ctx_lens), max_blocks, dtype=torch.int32)
    for b, c in enumerate(ctx_lens):
        n = math.ceil(c / tpb)
        tables[b, :n] = torch.tensor([perm.pop() for _ in range(n)], dtype=torch.int32)
    k_cache = torch.randn(num_blocks, tpb, Hkv, D, generator=g).to(dtype)
    v_cache = torch.randn(num_blocks, tpb, Hkv, D, generator=g).to(dtype)
    q = torch.randn(sum(seq_lens), H, D, generator=g).to(dtype)
    lens = torch.tensor(seq_lens, dtype=torch.int32), torch.tensor(ctx_lens, dtype=torch.int32)
    return [t.to(device) for t in (q, k_cache, v_cache, tables, *lens)]


def run_both(seq_lens, ctx_lens, H, Hkv, D, tpb, dtype, device, **kw):
    q, kc, vc, bt, sl, cl = make_batch(seq_lens, ctx_lens, H, Hkv, D, tpb, dtype, device)
    args = (q, kc, vc, bt, sl, cl, D**-0.5, max(seq_lens), max(ctx_lens))
    out = K.paged_attention(*args, **kw)
    ref = K.paged_attention_ref(*args, window=kw.get("window", 0), softcap=kw.get("softcap", 0.0))
    torch.testing.assert_close(out.float(), ref.float(), rtol=TOL[dtype], atol=TOL[dtype])
    return out


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("heads", [(4, 4), (4, 2), (4, 1)])
@pytest.mark.parametrize("tpb", [8, 32])  # a block per key / whole tiles inside one block
def test_context_phase_mixed_batch(device, dtype, heads, tpb):
    # a fresh prompt, a chunk after a cached prefix, a generation step, a longer prompt
    run_both([5, 9, 1, 20], [5, 30, 13, 20], *heads, 32, tpb, dtype, device)


@pytest.mark.parametrize("variant", [{"SPLIT_CAUSAL": False}, {"TILE_IN_BLOCK": False}])
def test_context_phase_kernel_variants(device, monkeypatch, variant):
    for name in ("CONTEXT_CONFIG", "INTERPRET_CONTEXT_CONFIG", "DECODE_CONFIG", "INTERPRET_DECODE_CONFIG"):
        monkeypatch.setattr(attention, name, {**getattr(attention, name), **variant})
    run_both([5, 40, 1, 20], [5, 70, 13, 20], 4, 2, 32, 16, torch.float32, device)
    run_both([1, 1, 1], [5, 70, 13], 4, 2, 32, 16, torch.float32, device, num_splits=3)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("heads", [(4, 4), (8, 2), (4, 1)])
@pytest.mark.parametrize("num_splits", [None, 3])
def test_mixed_step_generation_tail_on_the_decode_kernel(device, dtype, heads, num_splits):
    # prompts (one after a cached prefix), then generation rows: the tail goes to the decode kernel
    kw = dict(decode_tail=3, num_splits=num_splits)
    run_both([5, 9, 1, 1, 1], [5, 30, 13, 64, 100], *heads, 32, 16, dtype, device, **kw)
    run_both([7, 1], [7, 40], *heads, 32, 8, dtype, device, decode_tail=1)
    # a one-token prompt chunk inside the head is fine too (it is causal for one query)
    run_both([1, 6, 1], [20, 6, 9], *heads, 32, 8, dtype, device, decode_tail=1)


def test_decode_tail_out_of_range(device):
    q, kc, vc, bt, sl, cl = make_batch([2, 1], [2, 5], 2, 1, 16, 4, torch.float32, device)
    with pytest.raises(ValueError, match="decode_tail"):
        K.paged_attention(q, kc, vc, bt, sl, cl, 0.25, 2, 5, decode_tail=3)


def test_context_phase_odd_head_dim_and_block_size(device):
    run_both([3, 18], [10, 18], 2, 1, 24, 5, torch.float32, device)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("heads", [(4, 4), (8, 2), (3, 1)])
@pytest.mark.parametrize("num_splits", [None, 1, 3])
def test_generation_phase_split_kv(device, dtype, heads, num_splits):
    run_both([1, 1, 1, 1], [1, 37, 64, 100], *heads, 32, 16, dtype, device, num_splits=num_splits)


def test_generation_split_count_beyond_context(device):
    # more splits than tiles: empty splits must weigh nothing
    run_both([1, 1], [3, 20], 2, 2, 16, 4, torch.float32, device, num_splits=8)


class _MustNotLaunch:
    def __getitem__(self, grid):
        raise AssertionError("the reduce kernel was launched")


def _decode_config(monkeypatch, **keys) -> None:
    for name in ("DECODE_CONFIG", "INTERPRET_DECODE_CONFIG"):
        monkeypatch.setattr(attention, name, {**getattr(attention, name), **keys})


# float32 and float16 only: the Triton 3.6 interpreter's tl.dot garbles bfloat16 (on the GPU,
# benchmarks/kernels_check.py checks bfloat16 too)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("heads", [(4, 4), (8, 2), (4, 1)])
@pytest.mark.parametrize("fused", [True, False])
def test_decode_short_context_single_pass_long_merged(device, monkeypatch, dtype, heads, fused):
    # As in a CUDA graph: the host bound (max_context_len) is far above the real contexts, so the host
    # split count is > 1; each sequence still picks its own slicing: contexts up to SINGLE_PASS_CTX are
    # one pass that writes its output, longer ones are merged (by their last slice, or the reduce kernel).
    _decode_config(monkeypatch, SINGLE_PASS_CTX=32, FUSED_MERGE=fused)
    if fused:
        monkeypatch.setattr(attention, "_decode_reduce_kernel", _MustNotLaunch())
    ctx_lens = [1, 20, 32, 33, 100, 250]
    q, kc, vc, bt, sl, cl = make_batch([1] * len(ctx_lens), ctx_lens, *heads, 32, 16, dtype, device)
    args = (q, kc, vc, bt, sl, cl, 32**-0.5)
    ref = K.paged_attention_ref(*args)
    for splits in (None, 8):
        out = K.paged_attention(*args, 1, 4096, num_splits=splits)
        torch.testing.assert_close(out.float(), ref.float(), rtol=TOL[dtype], atol=TOL[dtype])


def test_decode_fused_merge_leaves_counters_zero_and_is_repeatable(device, monkeypatch):
    _decode_config(monkeypatch, SINGLE_PASS_CTX=16, FUSED_MERGE=True)
    monkeypatch.setattr(attention, "MERGE_TILE", 32)  # one slice per turn: the merge loop runs many turns
    monkeypatch.setattr(attention, "_decode_reduce_kernel", _MustNotLaunch())
    q, kc, vc, bt, sl, cl = make_batch([1] * 3, [17, 90, 200], 8, 2, 32, 16, torch.float32, device)
    args = (q, kc, vc, bt, sl, cl, 32**-0.5, 1, 256)
    first = K.paged_attention(*args, num_splits=7)
    counters = attention._COUNTERS[(q.device.type, q.device.index)]
    assert counters.abs().sum().item() == 0  # every (sequence, KV head) pair reset its counter
    torch.testing.assert_close(first, K.paged_attention_ref(*args), rtol=2e-5, atol=2e-5)
    assert torch.equal(K.paged_attention(*args, num_splits=7), first)


def test_decode_reduce_kernel_merges_in_turns(device, monkeypatch):
    _decode_config(monkeypatch, SINGLE_PASS_CTX=16, FUSED_MERGE=False)
    monkeypatch.setattr(attention, "MERGE_TILE", 64)
    run_both([1, 1, 1], [5, 70, 130], 4, 1, 32, 16, torch.float32, device, num_splits=6)


def test_decode_short_bound_launches_one_split(device, monkeypatch):
    # eager steps know the real maximum: up to SINGLE_PASS_CTX, no partials, no counters, no merge
    _decode_config(monkeypatch, SINGLE_PASS_CTX=64)
    monkeypatch.setattr(attention, "_decode_reduce_kernel", _MustNotLaunch())
    monkeypatch.setattr(attention, "_merge_counters", lambda *a: pytest.fail("split a short context"))
    monkeypatch.setattr(attention, "num_sms", lambda dev: 1000)  # the GPU would want many splits
    run_both([1, 1], [30, 64], 8, 2, 32, 16, torch.float32, device)


def test_max_lengths_may_be_upper_bounds(device):
    q, kc, vc, bt, sl, cl = make_batch([1, 1], [9, 17], 4, 2, 16, 8, torch.float32, device)
    ref = K.paged_attention_ref(q, kc, vc, bt, sl, cl, 0.25)
    out = K.paged_attention(q, kc, vc, bt, sl, cl, 0.25, 1, 200)  # e.g. a CUDA-graph bucket's maximum
    torch.testing.assert_close(out, ref, rtol=2e-5, atol=2e-5)
    q, kc, vc, bt, sl, cl = make_batch([4, 2], [9, 17], 4, 2, 16, 8, torch.float32, device)
    ref = K.paged_attention_ref(q, kc, vc, bt, sl, cl, 0.25)
    out = K.paged_attention(q, kc, vc, bt, sl, cl, 0.25, 40, 200)
    torch.testing.assert_close(out, ref, rtol=2e-5, atol=2e-5)


def test_reference_matches_dense_causal_attention():
    # the reference itself, against torch SDPA on one sequence laid out contiguously
    torch.manual_seed(0)
    T, H, D, tpb = 12, 2, 16, 4
    q, k, v = (torch.randn(T, H, D) for _ in range(3))
    kc, vc = k.view(T // tpb, tpb, H, D), v.view(T // tpb, tpb, H, D)
    bt = torch.arange(T // tpb, dtype=torch.int32)[None]
    lens = torch.tensor([T], dtype=torch.int32)
    out = K.paged_attention_ref(q, kc, vc, bt, lens, lens, D**-0.5)
    sdpa = torch.nn.functional.scaled_dot_product_attention(
        q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1), is_causal=True
    ).transpose(0, 1)
    torch.testing.assert_close(out, sdpa, rtol=1e-5, atol=1e-5)


def test_rejects_bad_group(device):
    q, kc, vc, bt, sl, cl = make_batch([2], [2], 3, 2, 16, 4, torch.float32, device)
    with pytest.raises(ValueError, match="multiple of Hkv"):
        K.paged_attention(q, kc, vc, bt, sl, cl, 0.25, 2, 2)


# Sliding window: windows shorter than a tile, spanning a few tiles, and not a multiple of the tile; the
# contexts put the window's first key inside a tile and across block boundaries.
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("heads", [(4, 4), (4, 1)])
@pytest.mark.parametrize("window", [5, 16, 37])
def test_sliding_window_context_and_mixed_steps(device, dtype, heads, window):
    run_both([5, 40, 1, 20], [5, 70, 13, 20], *heads, 32, 8, dtype, device, window=window)
    run_both([9, 1, 1], [30, 64, 100], *heads, 32, 16, dtype, device, window=window, decode_tail=2)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("heads", [(8, 2), (4, 1)])
@pytest.mark.parametrize("num_splits", [None, 3])
@pytest.mark.parametrize("window", [7, 33])
def test_sliding_window_decode(device, dtype, heads, num_splits, window):
    run_both([1, 1, 1, 1], [1, 37, 64, 100], *heads, 32, 16, dtype, device, num_splits=num_splits, window=window)


@pytest.mark.parametrize("fused", [True, False])
def test_sliding_window_decode_merged_under_a_graph_bound(device, monkeypatch, fused):
    # a CUDA graph's bound (4096) far above the window: slices of the window, merged by the last of them
    # or by the reduce kernel, which must plan the same window-relative slices
    _decode_config(monkeypatch, SINGLE_PASS_CTX=16, FUSED_MERGE=fused)
    q, kc, vc, bt, sl, cl = make_batch([1] * 4, [3, 20, 90, 250], 8, 2, 32, 16, torch.float32, device)
    args = (q, kc, vc, bt, sl, cl, 32**-0.5)
    ref = K.paged_attention_ref(*args, window=50)
    for splits in (None, 5):
        out = K.paged_attention(*args, 1, 4096, num_splits=splits, window=50)
        torch.testing.assert_close(out, ref, rtol=2e-5, atol=2e-5)


def test_sliding_window_reference_matches_dense_masked_attention():
    torch.manual_seed(0)
    T, H, D, tpb, W = 12, 2, 16, 4, 5
    q, k, v = (torch.randn(T, H, D) for _ in range(3))
    kc, vc = k.view(T // tpb, tpb, H, D), v.view(T // tpb, tpb, H, D)
    bt = torch.arange(T // tpb, dtype=torch.int32)[None]
    lens = torch.tensor([T], dtype=torch.int32)
    out = K.paged_attention_ref(q, kc, vc, bt, lens, lens, D**-0.5, window=W)
    i = torch.arange(T)
    mask = (i[None, :] <= i[:, None]) & (i[None, :] > i[:, None] - W)  # Hugging Face's kv_idx > q_idx - W
    sdpa = torch.nn.functional.scaled_dot_product_attention(
        q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1), attn_mask=mask
    ).transpose(0, 1)
    torch.testing.assert_close(out, sdpa, rtol=1e-5, atol=1e-5)


# Soft-capping (Gemma-2): a cap of 1.5 changes scores of the random inputs (about N(0, 1)) a lot.
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("window", [0, 16])
def test_softcap_context_decode_and_mixed(device, dtype, window):
    kw = dict(softcap=1.5, window=window)
    run_both([5, 40, 1, 20], [5, 70, 13, 20], 4, 2, 32, 8, dtype, device, **kw)
    run_both([9, 1, 1], [30, 64, 100], 4, 1, 32, 16, dtype, device, decode_tail=2, **kw)
    run_both([1, 1, 1], [20, 64, 250], 8, 2, 32, 16, dtype, device, num_splits=4, **kw)


def test_softcap_reference_caps_the_scaled_scores():
    torch.manual_seed(0)
    T, H, D, cap = 8, 2, 16, 0.7
    q, k, v = (torch.randn(T, H, D) for _ in range(3))
    bt = torch.arange(2, dtype=torch.int32)[None]
    lens = torch.tensor([T], dtype=torch.int32)
    out = K.paged_attention_ref(q, k.view(2, 4, H, D), v.view(2, 4, H, D), bt, lens, lens, 0.25, softcap=cap)
    s = cap * torch.tanh(torch.einsum("qhd,khd->hqk", q, k) * 0.25 / cap)  # [H, T, T]
    s = s.masked_fill(torch.ones(T, T, dtype=torch.bool).triu(1), float("-inf"))
    torch.testing.assert_close(out, torch.einsum("hqk,khd->qhd", s.softmax(-1), v), rtol=1e-5, atol=1e-5)
