"""paged_attention (context and split-KV generation kernels) against the per-sequence reference."""

import math

import pytest
import torch

pytest.importorskip("triton")

from tensorrt_llm import kernels as K  # noqa: E402
from tensorrt_llm.kernels import attention  # noqa: E402
from tensorrt_llm.kernels.kv_cache import quantize_kv_ref  # noqa: E402

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
    ref = K.paged_attention_ref(
        *args, window=kw.get("window", 0), softcap=kw.get("softcap", 0.0), sinks=kw.get("sinks", 0),
        alibi_slopes=kw.get("alibi_slopes"),
    )  # fmt: skip
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


# Quantized caches (kv_cache_quant_algo INT8 / FP8): the cache holds K / k_scale and V / v_scale as int8 or
# e4m3, with one (k, v) scale per layer (float32 device tensors).
QMAX = {torch.int8: 127.0, torch.float8_e4m3fn: 448.0}
CACHE_DTYPES = list(QMAX)


def _quantize_cache(kc, vc, cache_dtype):
    """A float cache as a quantized one with amax scales: (k, v, k_scale, v_scale)."""
    ks = kc.abs().amax().float() / QMAX[cache_dtype]
    vs = vc.abs().amax().float() / QMAX[cache_dtype]
    return quantize_kv_ref(kc, ks, cache_dtype), quantize_kv_ref(vc, vs, cache_dtype), ks, vs


def run_both_quant(seq_lens, ctx_lens, H, Hkv, D, tpb, dtype, cache_dtype, device, **kw):
    q, kc, vc, bt, sl, cl = make_batch(seq_lens, ctx_lens, H, Hkv, D, tpb, dtype, device)
    kq, vq, ks, vs = _quantize_cache(kc, vc, cache_dtype)
    args = (q, kq, vq, bt, sl, cl, D**-0.5, max(seq_lens), max(ctx_lens))
    out = K.paged_attention(*args, k_scale=ks, v_scale=vs, **kw)
    ref = K.paged_attention_ref(
        *args, window=kw.get("window", 0), softcap=kw.get("softcap", 0.0), k_scale=ks, v_scale=vs,
        sinks=kw.get("sinks", 0), alibi_slopes=kw.get("alibi_slopes"),
    )  # fmt: skip
    torch.testing.assert_close(out.float(), ref.float(), rtol=TOL[dtype], atol=TOL[dtype])


@pytest.mark.parametrize("cache_dtype", CACHE_DTYPES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_quantized_cache_context_decode_and_mixed(device, cache_dtype, dtype):
    run = lambda *a, **kw: run_both_quant(*a, dtype, cache_dtype, device, **kw)  # noqa: E731
    run([5, 9, 1, 20], [5, 30, 13, 20], 4, 2, 32, 8)  # context kernel, a block per key
    run([9, 1, 1], [30, 64, 100], 8, 2, 32, 16, decode_tail=2)  # mixed: the tail on the decode kernel
    run([1, 1, 1, 1], [1, 37, 64, 100], 4, 1, 32, 16, num_splits=3)  # split decode, merged
    run([5, 40, 1], [5, 70, 13], 4, 2, 32, 8, window=16, softcap=1.5)


@pytest.mark.parametrize("cache_dtype", CACHE_DTYPES)
@pytest.mark.parametrize("fused", [True, False])
def test_quantized_cache_decode_under_a_graph_bound(device, monkeypatch, cache_dtype, fused):
    # short contexts in one pass, long ones sliced and merged by the last slice or the reduce kernel
    _decode_config(monkeypatch, SINGLE_PASS_CTX=16, FUSED_MERGE=fused)
    q, kc, vc, bt, sl, cl = make_batch([1] * 4, [3, 20, 90, 250], 8, 2, 32, 16, torch.float16, device)
    kq, vq, ks, vs = _quantize_cache(kc, vc, cache_dtype)
    args = (q, kq, vq, bt, sl, cl, 32**-0.5)
    ref = K.paged_attention_ref(*args, k_scale=ks, v_scale=vs)
    for splits in (None, 5):
        out = K.paged_attention(*args, 1, 4096, num_splits=splits, k_scale=ks, v_scale=vs)
        torch.testing.assert_close(out.float(), ref.float(), rtol=2e-3, atol=2e-3)


@pytest.mark.parametrize("cache_dtype, max_err", [(torch.int8, 0.02), (torch.float8_e4m3fn, 0.06)])
def test_quantized_cache_reference_close_to_float_attention(cache_dtype, max_err):
    # amax scales: int8 keeps ~7 bits of each value, e4m3 3 mantissa bits; attention outputs stay close
    q, kc, vc, bt, sl, cl = make_batch([5, 9, 1, 1], [5, 30, 64, 100], 8, 2, 32, 16, torch.float32, "cpu")
    kq, vq, ks, vs = _quantize_cache(kc, vc, cache_dtype)
    args = (q, kq, vq, bt, sl, cl, 32**-0.5)
    out = K.paged_attention_ref(*args, k_scale=ks, v_scale=vs)
    ref = K.paged_attention_ref(q, kc, vc, bt, sl, cl, 32**-0.5)
    err = ((out - ref).norm() / ref.norm()).item()
    assert 0 < err < max_err, err


def _assert_same_cache(a: torch.Tensor, b: torch.Tensor, device: str) -> None:
    if device == "cpu":  # the interpreter computes x / scale exactly as torch does
        assert torch.equal(a.float(), b.float())  # (as floats: -0 and +0 are the same value)
    else:  # the GPU may round a tie of x / scale the other way: one step at most
        tol = dict(rtol=0, atol=1) if a.dtype == torch.int8 else dict(rtol=0.125, atol=2**-9)
        torch.testing.assert_close(a.float(), b.float(), **tol)


@pytest.mark.parametrize("cache_dtype", CACHE_DTYPES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_quantized_cache_writes(device, cache_dtype, dtype):
    torch.manual_seed(0)
    H, Hkv, T, D, blocks, tpb = 4, 2, 7, 32, 6, 4
    qkv = torch.randn(T, H + 2 * Hkv, D, dtype=dtype, device=device) * 3
    q, k, v = qkv[:, :H], qkv[:, H : H + Hkv], qkv[:, H + Hkv :]  # strided views of a fused QKV output
    v[0, 0, :4] = torch.tensor([100.0, -100.0, 0.0, -0.0])  # beyond the range: clamped
    ks = torch.tensor(k.abs().max().item() / QMAX[cache_dtype], device=device)
    vs = torch.tensor(0.02, device=device)
    slots = torch.randperm(blocks * tpb, device=device)[:T]
    slots[2] = -1  # a padding token writes nothing
    cache = K.rope_cos_sin_cache(D, 64, device=device)
    positions = torch.randint(0, 64, (T,), device=device)
    caches = [torch.zeros(blocks, tpb, Hkv, D, dtype=cache_dtype, device=device) for _ in range(8)]
    K.write_kv_cache(k, v, *caches[0:2], slots, ks, vs)
    K.write_kv_cache_ref(k, v, *caches[2:4], slots, ks, vs)
    qo = K.rotary_write_kv_cache(q, k, v, positions, cache, *caches[4:6], slots, ks, vs)
    qr = K.rotary_write_kv_cache_ref(q, k, v, positions, cache, *caches[6:8], slots, ks, vs)
    for a, b in ((0, 2), (1, 3), (4, 6), (5, 7)):
        _assert_same_cache(caches[a], caches[b], device)
    torch.testing.assert_close(qo.float(), qr.float(), rtol=TOL[dtype], atol=TOL[dtype])
    # the stored values are x / scale within half a step (int8) or 2**-4 relative (e4m3), clamped
    s = int(slots[0])
    back = caches[3][s // tpb, s % tpb].float() * vs
    expect = v[0].float().clamp(-QMAX[cache_dtype] * vs, QMAX[cache_dtype] * vs)
    if cache_dtype == torch.int8:
        tol = dict(atol=vs.item() / 2 + 1e-6, rtol=0)
    else:
        tol = dict(atol=vs.item() / 64, rtol=2**-4)
    torch.testing.assert_close(back, expect, **tol)


def test_e4m3_write_rounds_ties_to_even_and_carries_into_the_next_binade(device):
    # every e4m3 value, the midpoints between neighbours (ties), and points just off them: the kernel's
    # rounding (done in fp32, then an exact cast) against torch's cast
    grid = torch.arange(256, dtype=torch.int32).to(torch.uint8).view(torch.float8_e4m3fn).float()
    grid = grid[grid.isfinite() & (grid >= 0)].sort().values  # 0 .. 448
    mid = (grid[1:] + grid[:-1]) / 2
    x = torch.cat([grid, mid, mid * (1 + 2**-20), mid * (1 - 2**-20), torch.tensor([500.0, 2**-11, 1e-30])])
    x = torch.cat([x, -x])
    n = -(-x.numel() // 16) * 16
    x = torch.nn.functional.pad(x, (0, n - x.numel())).view(n // 16, 1, 16).to(device)  # [T, 1, 16]
    one = torch.tensor(1.0, device=device)
    slots = torch.arange(x.shape[0], device=device)
    kc = torch.zeros(x.shape[0], 1, 1, 16, dtype=torch.float8_e4m3fn, device=device)
    vc = torch.zeros_like(kc)
    K.write_kv_cache(x, x, kc, vc, slots, one, one)
    expect = x.clamp(-448, 448).to(torch.float8_e4m3fn)
    assert torch.equal(kc[:, 0].float(), expect.float())


def test_int8_write_rounds_half_to_even_and_clamps(device):
    x = torch.tensor([0.5, 1.5, 2.5, -0.5, -2.5, 126.5, 127.4, 200.0, -300.0, 0.49999997, 3.0, -7.2, 0, 0, 0, 0])
    x = x.view(1, 1, 16).to(device)
    one = torch.tensor(1.0, device=device)
    kc = torch.zeros(1, 1, 1, 16, dtype=torch.int8, device=device)
    K.write_kv_cache(x, x, kc, torch.zeros_like(kc), torch.zeros(1, dtype=torch.int64, device=device), one, one)
    expect = [0, 2, 2, 0, -2, 126, 127, 127, -127, 0, 3, -7, 0, 0, 0, 0]
    assert kc.flatten().tolist() == expect


def test_quantized_cache_argument_checks(device):
    q, kc, vc, bt, sl, cl = make_batch([2], [2], 2, 1, 16, 4, torch.float16, device)
    kq, vq, ks, vs = _quantize_cache(kc, vc, torch.int8)
    with pytest.raises(ValueError, match="needs k_scale and v_scale"):
        K.paged_attention(q, kq, vq, bt, sl, cl, 0.25, 2, 2)
    with pytest.raises(ValueError, match="given for a torch.float16 cache"):
        K.paged_attention(q, kc, vc, bt, sl, cl, 0.25, 2, 2, k_scale=ks, v_scale=vs)
    with pytest.raises(ValueError, match="float32 tensor of one element"):
        K.paged_attention_ref(q, kq, vq, bt, sl, cl, 0.25, k_scale=ks.half(), v_scale=vs)
    k = torch.randn(2, 1, 16, dtype=torch.float16, device=device)
    slots = torch.zeros(2, dtype=torch.int64, device=device)
    with pytest.raises(ValueError, match="needs k_scale and v_scale"):
        K.write_kv_cache(k, k, kq, vq, slots)
    with pytest.raises(ValueError, match="share a dtype"):  # a float cache of another dtype
        K.write_kv_cache(k, k, kc.float(), vc.float(), slots)


# Attention sinks (StreamingLLM, sink_token_length): with a window W, the first S keys stay visible, so a
# query at p sees [0, S) U (p - W, p]. Sinks inside one tile, spanning tiles and blocks, reaching into the
# window; rows whose context is within the window (nothing hidden) next to long ones, in every launch.
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("window, sinks", [(5, 1), (16, 4), (12, 21)])
def test_sinks_context_and_mixed_steps(device, dtype, window, sinks):
    run_both([5, 40, 1, 20], [5, 70, 13, 20], 4, 2, 32, 8, dtype, device, window=window, sinks=sinks)
    run_both([9, 1, 1, 1], [30, 3, 64, 100], 4, 1, 32, 16, dtype, device, window=window, sinks=sinks, decode_tail=3)


@pytest.mark.parametrize("num_splits", [None, 1, 3, 8])
@pytest.mark.parametrize("window, sinks", [(7, 4), (7, 33), (33, 20)])
def test_sinks_decode_split(device, num_splits, window, sinks):
    # the slices cut the walk of sink tiles then window tiles: a slice may hold sinks only, both, or none
    run_both([1] * 5, [1, 9, 37, 64, 100], 8, 2, 32, 16, torch.float32, device, num_splits=num_splits,
             window=window, sinks=sinks)  # fmt: skip


@pytest.mark.parametrize("fused", [True, False])
def test_sinks_decode_merged_under_a_graph_bound(device, monkeypatch, fused):
    # a CUDA graph's bound far above the window: the fused merge or the reduce kernel plans the same slices
    _decode_config(monkeypatch, SINGLE_PASS_CTX=16, FUSED_MERGE=fused)
    q, kc, vc, bt, sl, cl = make_batch([1] * 4, [3, 20, 90, 250], 8, 2, 32, 16, torch.float32, device)
    args = (q, kc, vc, bt, sl, cl, 32**-0.5)
    ref = K.paged_attention_ref(*args, window=40, sinks=19)
    for splits in (None, 5):
        out = K.paged_attention(*args, 1, 4096, num_splits=splits, window=40, sinks=19)
        torch.testing.assert_close(out, ref, rtol=2e-5, atol=2e-5)


def test_sinks_kernel_variants_softcap_and_quantized_cache(device, monkeypatch):
    run_both([5, 40, 1], [5, 70, 13], 4, 2, 32, 8, torch.float16, device, window=16, sinks=3, softcap=1.5)
    run_both_quant([9, 1, 1], [30, 64, 100], 8, 2, 32, 16, torch.float16, torch.int8, device, window=16, sinks=5,
                   decode_tail=2, num_splits=3)  # fmt: skip
    run_both_quant([40, 1], [70, 100], 4, 2, 32, 16, torch.float16, torch.float8_e4m3fn, device, window=12, sinks=8,
                   decode_tail=1)  # fmt: skip
    for name in ("CONTEXT_CONFIG", "INTERPRET_CONTEXT_CONFIG", "DECODE_CONFIG", "INTERPRET_DECODE_CONFIG"):
        monkeypatch.setattr(attention, name, {**getattr(attention, name), "TILE_IN_BLOCK": False})
    run_both([40, 1, 1], [70, 13, 100], 4, 2, 32, 16, torch.float32, device, window=9, sinks=6, decode_tail=2,
             num_splits=3)  # fmt: skip


def test_sinks_without_a_window_change_nothing(device):
    q, kc, vc, bt, sl, cl = make_batch([5, 1], [30, 40], 4, 2, 16, 8, torch.float32, device)
    args = (q, kc, vc, bt, sl, cl, 0.25, 5, 40)
    assert torch.equal(K.paged_attention(*args, sinks=4), K.paged_attention(*args))
    assert torch.equal(K.paged_attention_ref(*args, sinks=4), K.paged_attention_ref(*args))
    with pytest.raises(ValueError, match="sinks must be >= 0"):
        K.paged_attention(*args, window=8, sinks=-1)


def test_sinks_reference_matches_dense_masked_attention():
    # keys [0, S) U (p - W, p], written as a dense mask; and the sinks do change the output
    torch.manual_seed(0)
    T, H, D, tpb, W, S = 24, 2, 16, 4, 5, 3
    q, k, v = (torch.randn(T, H, D) for _ in range(3))
    kc, vc = k.view(T // tpb, tpb, H, D), v.view(T // tpb, tpb, H, D)
    bt = torch.arange(T // tpb, dtype=torch.int32)[None]
    lens = torch.tensor([T], dtype=torch.int32)
    out = K.paged_attention_ref(q, kc, vc, bt, lens, lens, D**-0.5, window=W, sinks=S)
    i = torch.arange(T)
    mask = (i[None, :] <= i[:, None]) & ((i[None, :] > i[:, None] - W) | (i[None, :] < S))
    dense = torch.nn.functional.scaled_dot_product_attention(
        q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1), attn_mask=mask
    ).transpose(0, 1)
    torch.testing.assert_close(out, dense, rtol=1e-5, atol=1e-5)
    plain = K.paged_attention_ref(q, kc, vc, bt, lens, lens, D**-0.5, window=W)
    assert torch.equal(out[:W], plain[:W])  # the sinks are still in the windows of the first W queries
    assert ((out[W:] - plain[W:]).abs().amax(dim=(1, 2)) > 0).all()  # not in the later ones


# ALiBi


def _bloom_slopes(n: int) -> torch.Tensor:
    """Hugging Face BLOOM's `build_alibi_tensor` slopes, written out."""
    closest = 2 ** math.floor(math.log2(n))
    base = 2 ** (-(2 ** -(math.log2(closest) - 3)))
    slopes = [base**i for i in range(1, closest + 1)]
    if closest != n:
        extra = 2 ** (-(2 ** -(math.log2(2 * closest) - 3)))
        slopes += [extra**i for i in range(1, 1 + 2 * min(closest, n - closest), 2)]
    return torch.tensor(slopes, dtype=torch.float32)


def test_alibi_slopes_are_bloom_and_mpt_ones():
    for n in (1, 2, 3, 4, 5, 6, 7, 8, 12, 16, 24, 32, 40, 64, 71, 80, 112):
        torch.testing.assert_close(attention.alibi_slopes(n), _bloom_slopes(n), rtol=1e-6, atol=0)
    # MPT's own formula with another bias maximum: 2^-(max i / n) over the next power of two
    assert torch.equal(attention.alibi_slopes(4, 4.0), torch.tensor([2**-1, 2**-2, 2**-3, 2**-4]))
    torch.testing.assert_close(attention.alibi_slopes(3, 4.0), torch.tensor([2**-2, 2**-4, 2**-1]))


def _alibi(H: int, device) -> torch.Tensor:
    return attention.alibi_slopes(H).to(device)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("heads", [(4, 4), (6, 2), (3, 1)])
def test_alibi_context_decode_and_mixed(device, dtype, heads):
    kw = dict(alibi_slopes=_alibi(heads[0], device))
    run_both([5, 9, 1, 20], [5, 30, 13, 20], *heads, 32, 8, dtype, device, **kw)  # context
    run_both([9, 1, 1], [30, 64, 100], *heads, 32, 16, dtype, device, decode_tail=2, **kw)  # mixed
    for splits in (None, 1, 3):  # decode: one pass, split and merged
        run_both([1, 1, 1, 1], [1, 37, 64, 100], *heads, 32, 16, dtype, device, num_splits=splits, **kw)


@pytest.mark.parametrize("fused", [True, False])
def test_alibi_decode_merged_under_a_graph_bound(device, monkeypatch, fused):
    _decode_config(monkeypatch, SINGLE_PASS_CTX=16, FUSED_MERGE=fused)
    if fused:
        monkeypatch.setattr(attention, "_decode_reduce_kernel", _MustNotLaunch())
    q, kc, vc, bt, sl, cl = make_batch([1] * 4, [3, 20, 90, 250], 6, 2, 32, 16, torch.float32, device)
    args = (q, kc, vc, bt, sl, cl, 32**-0.5)
    slopes = _alibi(6, device)
    ref = K.paged_attention_ref(*args, alibi_slopes=slopes)
    assert (ref - K.paged_attention_ref(*args)).abs().amax() > 0.1  # the bias bites
    for splits in (None, 5):
        out = K.paged_attention(*args, 1, 4096, num_splits=splits, alibi_slopes=slopes)
        torch.testing.assert_close(out, ref, rtol=2e-5, atol=2e-5)


def test_alibi_with_window_sinks_softcap_quantized_cache_and_variants(device, monkeypatch):
    s4, s8 = _alibi(4, device), _alibi(8, device)
    run_both([5, 40, 1], [5, 70, 13], 4, 2, 32, 8, torch.float16, device, window=16, sinks=3, softcap=1.5,
             alibi_slopes=s4)  # fmt: skip
    run_both_quant([9, 1, 1], [30, 64, 100], 8, 2, 32, 16, torch.float16, torch.int8, device, window=16, sinks=5,
                   decode_tail=2, num_splits=3, alibi_slopes=s8)  # fmt: skip
    run_both_quant([40, 1, 1], [70, 100, 90], 4, 1, 32, 16, torch.float16, torch.float8_e4m3fn, device,
                   decode_tail=2, alibi_slopes=s4)  # fmt: skip
    for variant in ({"SPLIT_CAUSAL": False}, {"TILE_IN_BLOCK": False}):
        for name in ("CONTEXT_CONFIG", "INTERPRET_CONTEXT_CONFIG", "DECODE_CONFIG", "INTERPRET_DECODE_CONFIG"):
            monkeypatch.setattr(attention, name, {**getattr(attention, name), **variant})
        run_both([40, 1, 1], [70, 13, 100], 4, 2, 32, 16, torch.float32, device, decode_tail=2, num_splits=3,
                 alibi_slopes=s4)  # fmt: skip
    with pytest.raises(ValueError, match="alibi_slopes"):
        q, kc, vc, bt, sl, cl = make_batch([5], [5], 4, 2, 16, 8, torch.float32, device)
        K.paged_attention(q, kc, vc, bt, sl, cl, 0.25, 5, 5, alibi_slopes=s8)


def test_alibi_reference_matches_dense_softmax_with_hf_bias():
    # Hugging Face's form (BLOOM): scores + slope_h * k_pos, causal mask, softmax; a chunk after a prefix
    torch.manual_seed(0)
    T, H, D, tpb, n = 24, 6, 16, 4, 7
    q, k, v = (torch.randn(T, H, D) for _ in range(3))
    kc, vc = k.view(T // tpb, tpb, H, D), v.view(T // tpb, tpb, H, D)
    bt = torch.arange(T // tpb, dtype=torch.int32)[None]
    slopes = _bloom_slopes(H)
    out = K.paged_attention_ref(
        q[-n:], kc, vc, bt, torch.tensor([n], dtype=torch.int32), torch.tensor([T], dtype=torch.int32), D**-0.5,
        alibi_slopes=slopes,
    )  # fmt: skip
    i = torch.arange(T)
    s = torch.einsum("qhd,khd->hqk", q, k) * D**-0.5 + slopes[:, None, None] * i[None, None, :]
    s = s.masked_fill(i[None, :] > i[:, None], float("-inf"))
    dense = torch.einsum("hqk,khd->qhd", s.softmax(-1), v)
    torch.testing.assert_close(out, dense[-n:], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("tile_in_block", [True, False])
@pytest.mark.parametrize("swap_ab", [True, False])
def test_decode_tile_variants(device, monkeypatch, swap_ab, tile_in_block):
    # both products (SWAP_AB: K and V tiles as the MMA's A operand) whatever the defaults pick per cache
    # dtype on this device: every decode feature, float and quantized caches, one pass and split
    for name in ("DECODE_CONFIG", "DECODE_QUANT_CONFIG", "DECODE_INT8_CONFIG", "INTERPRET_DECODE_CONFIG"):
        monkeypatch.setattr(attention, name, {**getattr(attention, name), "SWAP_AB": swap_ab,
                                              "TILE_IN_BLOCK": tile_in_block})  # fmt: skip
    s4 = _alibi(4, device)
    for splits in (None, 3):
        run_both([1, 1, 1, 1], [1, 37, 64, 100], 8, 2, 32, 16, torch.float16, device, num_splits=splits)
        run_both([1, 1, 1], [13, 70, 100], 4, 1, 32, 16, torch.float32, device, num_splits=splits, window=16,
                 sinks=3, softcap=1.5, alibi_slopes=s4)  # fmt: skip
        for cache_dtype in CACHE_DTYPES:
            run_both_quant([1, 1, 1], [30, 64, 100], 8, 2, 32, 16, torch.float16, cache_dtype, device,
                           num_splits=splits)  # fmt: skip
    run_both_quant([9, 1, 1], [30, 64, 100], 8, 2, 32, 16, torch.float16, torch.int8, device, window=16, sinks=5,
                   decode_tail=2, num_splits=3, softcap=1.5)  # fmt: skip
