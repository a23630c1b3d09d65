"""Every Triton kernel against its PyTorch reference on the GPU, at Llama shapes, then timed.

    python benchmarks/kernels_check.py [--sweep] [--quick] [--new] [--out DIR]

Correctness first (relative L2 error and max abs error, float16 and bfloat16), then medians from
`triton.testing.do_bench` for kernel, reference and, for attention, torch SDPA on dense K/V as a peer.
`--sweep` also times a few launch configurations of the attention kernels. A table goes to stdout and
`DIR/kernels_check.log` (DIR defaults to $OUT or ./bench_out). `--quick` (small shapes) runs on CPU
under TRITON_INTERPRET=1 as a smoke test of this script.

The batch-1 decode changes are checked old against new in a table of their own (`--new` runs only that,
~2 minutes on an H100): the fused rotary + KV write against apply_rotary then write_kv_cache; decode
attention as a CUDA graph launches it (context bound 4096) with single pass / fused merge against the
old split + reduce; a layer's attention kernels old vs new; the Triton GEMV at M = 1 against cuBLAS on
the Llama-2-7B / Llama-3-8B shapes, and what build-time tuning would pick. Each row: relative error
against the reference (and, where a merge or a race could hide, whether 50 more replays change a bit).
"""

from __future__ import annotations

import argparse
import itertools
import math
import os
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import TypedDict

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tensorrt_llm import kernels as K  # noqa: E402
from tensorrt_llm.kernels import attention  # noqa: E402

ROWS: list[dict] = []
LOG_PATH: list[Path] = []  # set by main; lines are appended as they come, so a timeout keeps them


class Sizes(TypedDict):
    """The shapes the checks run at (`main`'s full set, or the small `--quick` one)."""

    rows: list[int]
    inter: int
    heads: list[tuple[int, int]]  # (H, Hkv)
    decode: list[tuple[int, int]]  # (B, ctx)
    context: list[tuple[int, int, int]]  # (B, seq, ctx)
    vocab: int
    sample_rows: list[int]
    layer: list[tuple[int, int]]  # (B, ctx)
    head_dim: int
    layers: int
    bound: int
    rk_tokens: list[int]
    split_decode: list[tuple[int, int]]  # (B, ctx)
    block_decode: list[tuple[int, int]]  # (B, ctx)
    gemv: dict[str, list[tuple[int, int]]]  # model -> (N, K) shapes


def say(msg: str = "") -> None:
    print(msg, flush=True)
    for path in LOG_PATH:
        with path.open("a") as f:
            f.write(msg + "\n")


_FLUSH: list[torch.Tensor] = []  # 256 MB written before each timed call: a cold L2, as in a model


def bench_ms(fn: Callable[[], object], dev: str, graph: bool = True) -> float:
    """Median GPU time of one call, L2 flushed first. With `graph` the call is replayed from a CUDA graph,
    so host overhead is hidden (as in a graphed decode step); else eager `do_bench` (for code that syncs).
    """
    if dev != "cuda":
        fn()
        t0 = time.perf_counter()
        fn()
        return (time.perf_counter() - t0) * 1e3
    if not graph:
        import triton.testing

        return triton.testing.do_bench(fn, warmup=20, rep=80, return_mode="median")
    if not _FLUSH:
        _FLUSH.append(torch.empty(256 << 20, dtype=torch.int8, device=dev))
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm up (compile, allocator) outside the capture
        fn()
        fn()
    torch.cuda.current_stream().wait_stream(side)
    g = torch.cuda.CUDAGraph()
    try:
        with torch.cuda.graph(g):
            fn()
    except Exception as e:  # not capturable: say so and time it eagerly
        say(f"  (graph capture failed: {type(e).__name__}: {e}; timing eagerly)")
        return bench_ms(fn, dev, graph=False)
    events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(40)]
    for start, end in events:
        _FLUSH[0].zero_()
        start.record()
        g.replay()
        end.record()
    torch.cuda.synchronize()
    times = sorted(a.elapsed_time(b) for a, b in events)
    return times[len(times) // 2]


def wall_ms(fn: Callable[[], object], dev: str, n: int = 200) -> float:
    """Eager time per call in a back-to-back loop: max(host launch overhead, GPU time)."""
    fn()
    if dev == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(n if dev == "cuda" else 1):
        fn()
    if dev == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - t0) * 1e3 / (n if dev == "cuda" else 1)


def errors(out: torch.Tensor, ref: torch.Tensor) -> tuple[float, float]:
    d = out.float() - ref.float()
    return (d.norm() / ref.float().norm().clamp(min=1e-30)).item(), d.abs().max().item()


def record(
    name: str,
    shape: str,
    dtype: torch.dtype,
    out: torch.Tensor | None,
    ref: torch.Tensor | None,
    fn: Callable[[], object],
    t_ref: float | None = None,
    t_peer: float | None = None,
    nbytes: int | None = None,
    flops: float | None = None,
    dev: str = "cuda",
) -> None:
    """One table row: errors of `out` vs `ref`, then kernel `fn` timed (GPU, graphed) and eager per call."""
    rel, mx = errors(out, ref) if out is not None else (float("nan"), float("nan"))
    t_kernel, t_wall = bench_ms(fn, dev), wall_ms(fn, dev)
    row = dict(name=name, shape=shape, dtype=str(dtype).replace("torch.", ""), rel=rel, max_abs=mx)
    row.update(t_kernel=t_kernel, t_wall=t_wall, t_ref=t_ref, t_peer=t_peer, nbytes=nbytes, flops=flops)
    ROWS.append(row)
    us = lambda t: f"{t * 1e3:8.1f}" if t is not None else f"{'-':>8s}"
    extra = f" {nbytes / t_kernel / 1e6:6.0f} GB/s" if nbytes else ""
    extra += f" {flops / t_kernel / 1e9:6.1f} TFLOP/s" if flops else ""
    say(
        f"{name:26s} {shape:34s} {row['dtype']:8s} {rel:7.1e} {mx:7.1e} |"
        f"{us(t_kernel)} {us(t_wall)} {us(t_ref)} {us(t_peer)} |{extra}"
    )


def header() -> None:
    say(
        f"{'kernel':26s} {'shape':34s} {'dtype':8s} {'rel':>7s} {'max':>7s} |"
        f"{'gpu us':>8s} {'eager':>8s} {'ref us':>8s} {'peer us':>8s} | bandwidth or FLOP rate (gpu us)"
    )


def launch_floor(dev: str) -> None:
    """Eager cost of launching nothing much: the floor under every 'eager' figure below."""
    if dev != "cuda":
        return
    import triton
    import triton.language as tl

    @triton.jit
    def _one_kernel(x_ptr):
        tl.store(x_ptr, 1.0)

    x = torch.empty(1, device=dev)
    say(f"launch floor: 1-arg triton kernel {wall_ms(lambda: _one_kernel[(1,)](x), dev) * 1e3:.1f} us, "
        f"torch.add {wall_ms(lambda: x.add(1.0), dev) * 1e3:.1f} us per call\n")  # fmt: skip


def check_rms_norm(dev: str, dtypes: list[torch.dtype], sizes: Sizes) -> None:
    for dtype, n in itertools.product(dtypes, sizes["rows"]):
        H = 4096
        x, r = (torch.randn(n, H, dtype=dtype, device=dev) for _ in range(2))
        w = torch.rand(H, dtype=dtype, device=dev) + 0.5
        (y, nr), (yr, nrr) = K.rms_norm(x, w, 1e-5, r), K.rms_norm_ref(x, w, 1e-5, r)
        assert torch.equal(nr, nrr)
        tr = bench_ms(partial(K.rms_norm_ref, x, w, 1e-5, r), dev)
        record("rms_norm+residual", f"N={n} H={H}", dtype, y, yr, partial(K.rms_norm, x, w, 1e-5, r), tr,
               nbytes=4 * n * H * x.element_size(), dev=dev)  # fmt: skip


def check_silu_and_mul(dev: str, dtypes: list[torch.dtype], sizes: Sizes) -> None:
    for dtype, n in itertools.product(dtypes, sizes["rows"]):
        inter = sizes["inter"]
        x = torch.randn(n, 2 * inter, dtype=dtype, device=dev) * 2
        y, yr = K.silu_and_mul(x), K.silu_and_mul_ref(x)
        tr = bench_ms(partial(K.silu_and_mul_ref, x), dev)
        record("silu_and_mul", f"N={n} I={inter}", dtype, y, yr, partial(K.silu_and_mul, x), tr,
               nbytes=3 * n * inter * x.element_size(), dev=dev)  # fmt: skip


def check_rotary(dev: str, dtypes: list[torch.dtype], sizes: Sizes) -> None:
    scaling = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 8192}  # fmt: skip
    cache = K.rope_cos_sin_cache(128, 16384, 500000.0, scaling, device=dev)
    for dtype, t in itertools.product(dtypes, sizes["rows"]):
        H, Hkv, D = 32, 8, 128
        qkv = torch.randn(t, H + 2 * Hkv, D, dtype=dtype, device=dev)
        q, k = qkv[:, :H], qkv[:, H : H + Hkv]
        pos = torch.randint(0, 16384, (t,), device=dev)
        (qo, ko), (qr, kr) = K.apply_rotary(q, k, pos, cache), K.apply_rotary_ref(q, k, pos, cache)
        tr = bench_ms(partial(K.apply_rotary_ref, q, k, pos, cache), dev)
        nbytes = 2 * t * (H + Hkv) * D * qkv.element_size()
        record("apply_rotary", f"T={t} H={H} Hkv={Hkv} D={D}", dtype, torch.cat([qo, ko], 1),
               torch.cat([qr, kr], 1), partial(K.apply_rotary, q, k, pos, cache), tr, nbytes=nbytes,
               dev=dev)  # fmt: skip


def check_write_kv(dev: str, dtypes: list[torch.dtype], sizes: Sizes) -> None:
    for dtype, t in itertools.product(dtypes, sizes["rows"]):
        Hkv, D, tpb = 8, 128, 64
        blocks = max(4, 2 * t // tpb)
        k, v = (torch.randn(t, Hkv, D, dtype=dtype, device=dev) for _ in range(2))
        kc, vc = (torch.randn(blocks, tpb, Hkv, D, dtype=dtype, device=dev) for _ in range(2))
        slots = torch.randperm(blocks * tpb, device=dev)[:t]
        kc2, vc2 = kc.clone(), vc.clone()
        K.write_kv_cache(k, v, kc, vc, slots)
        K.write_kv_cache_ref(k, v, kc2, vc2, slots)
        assert torch.equal(kc, kc2) and torch.equal(vc, vc2)
        # the reference syncs (boolean mask), so it is timed eagerly
        tr = bench_ms(partial(K.write_kv_cache_ref, k, v, kc2, vc2, slots), dev, graph=False)
        record("write_kv_cache", f"T={t} Hkv={Hkv} D={D} tpb={tpb}", dtype, kc, kc2,
               partial(K.write_kv_cache, k, v, kc, vc, slots), tr, nbytes=4 * t * Hkv * D * k.element_size(),
               dev=dev)  # fmt: skip


def paged_batch(
    seq_lens: list[int], ctx_lens: list[int], H: int, Hkv: int, D: int, tpb: int, dtype: torch.dtype, dev: str
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Random q, a paged cache with shuffled blocks, and the same K/V dense per sequence (for SDPA)."""
    B = len(ctx_lens)
    max_blocks = math.ceil(max(ctx_lens) / tpb)
    num_blocks = B * max_blocks
    kc = torch.randn(num_blocks, tpb, Hkv, D, dtype=dtype, device=dev)
    vc = torch.randn_like(kc)
    tables = torch.randperm(num_blocks, device=dev).view(B, max_blocks).to(torch.int32)
    q = torch.randn(sum(seq_lens), H, D, dtype=dtype, device=dev)
    sl = torch.tensor(seq_lens, dtype=torch.int32, device=dev)
    cl = torch.tensor(ctx_lens, dtype=torch.int32, device=dev)
    return q, kc, vc, tables, sl, cl


def dense_kv(kc: torch.Tensor, vc: torch.Tensor, tables: torch.Tensor, ctx: int) -> tuple[torch.Tensor, torch.Tensor]:
    # [B, Hkv, ctx, D] contiguous copies for the SDPA peer (equal context lengths only)
    k = kc[tables.long()].flatten(1, 2)[:, :ctx].transpose(1, 2).contiguous()
    v = vc[tables.long()].flatten(1, 2)[:, :ctx].transpose(1, 2).contiguous()
    return k, v


def check_decode(dev: str, dtypes: list[torch.dtype], sizes: Sizes) -> None:
    for dtype, (H, Hkv), (B, ctx) in itertools.product(dtypes, sizes["heads"], sizes["decode"]):
        D, tpb = 128, 64
        q, kc, vc, bt, sl, cl = paged_batch([1] * B, [ctx] * B, H, Hkv, D, tpb, dtype, dev)
        args = (q, kc, vc, bt, sl, cl, D**-0.5, 1, ctx)
        out, ref = K.paged_attention(*args), K.paged_attention_ref(*args)
        ref_fn = partial(K.paged_attention_ref, *args)  # syncs (.tolist): timed eagerly
        tr = bench_ms(ref_fn, dev, graph=False) if B * ctx <= 64 * 4096 else None
        kd, vd = dense_kv(kc, vc, bt, ctx)
        qd = q.view(B, H, 1, D)
        sdpa = lambda qd=qd, kd=kd, vd=vd: F.scaled_dot_product_attention(qd, kd, vd, enable_gqa=True)
        tp = bench_ms(sdpa, dev)
        nbytes = 2 * B * ctx * Hkv * D * q.element_size()
        record("decode_attention", f"B={B} ctx={ctx} H={H} Hkv={Hkv}", dtype, out, ref,
               partial(K.paged_attention, *args), tr, tp, nbytes, dev=dev)  # fmt: skip


def check_context(dev: str, dtypes: list[torch.dtype], sizes: Sizes) -> None:
    for dtype, (H, Hkv), (B, seq, ctx) in itertools.product(dtypes, sizes["heads"], sizes["context"]):
        D, tpb = 128, 64
        q, kc, vc, bt, sl, cl = paged_batch([seq] * B, [ctx] * B, H, Hkv, D, tpb, dtype, dev)
        args = (q, kc, vc, bt, sl, cl, D**-0.5, seq, ctx)
        out, ref = K.paged_attention(*args), K.paged_attention_ref(*args)
        tr = bench_ms(partial(K.paged_attention_ref, *args), dev, graph=False)
        tp = None
        if seq == ctx:  # SDPA's causal mask is top-left aligned: a peer only without a cached prefix
            kd, vd = dense_kv(kc, vc, bt, ctx)
            qd = q.view(B, seq, H, D).transpose(1, 2)
            sdpa = partial(F.scaled_dot_product_attention, qd, kd, vd, is_causal=True, enable_gqa=True)
            tp = bench_ms(sdpa, dev)
        flops = 4 * B * H * D * (seq * (ctx - seq) + seq * seq / 2)
        record("context_attention", f"B={B} seq={seq} ctx={ctx} H={H} Hkv={Hkv}", dtype, out, ref,
               partial(K.paged_attention, *args), tr, tp, flops=flops, dev=dev)  # fmt: skip


def _decode_layer(t: dict) -> None:
    _, h = K.rms_norm(t["x"], t["w"], 1e-5, t["r"])
    q, k = K.apply_rotary(t["q"], t["k"], t["pos"], t["cache"])
    K.write_kv_cache(k, t["v"], t["kc"], t["vc"], t["slots"])
    K.paged_attention(q, t["kc"], t["vc"], t["bt"], t["sl"], t["cl"], t["scale"], 1, t["ctx"])
    K.rms_norm(t["x"], t["w"], 1e-5, h)
    K.silu_and_mul(t["gate_up"])


def check_layer(dev: str, dtypes: list[torch.dtype], sizes: Sizes) -> None:
    """The non-GEMM kernels of one Llama decoder layer in a decode step, back to back (x 32 per token)."""
    dtype = dtypes[0]
    for (H, Hkv), (B, ctx) in itertools.product(sizes["heads"], sizes["layer"]):
        D, hidden, inter, tpb = 128, H * 128, sizes["inter"], 64
        q, kc, vc, bt, sl, cl = paged_batch([1] * B, [ctx] * B, H, Hkv, D, tpb, dtype, dev)
        x, r = (torch.randn(B, hidden, dtype=dtype, device=dev) for _ in range(2))
        w = torch.rand(hidden, dtype=dtype, device=dev) + 0.5
        k, v = (torch.randn(B, Hkv, D, dtype=dtype, device=dev) for _ in range(2))
        gate_up = torch.randn(B, 2 * inter, dtype=dtype, device=dev)
        cache = K.rope_cos_sin_cache(D, ctx + 1, 10000.0, device=dev)
        pos = torch.full((B,), ctx - 1, device=dev)
        slots = (bt[:, (ctx - 1) // tpb].long() * tpb + (ctx - 1) % tpb).contiguous()

        t = dict(x=x, r=r, w=w, q=q, k=k, v=v, kc=kc, vc=vc, bt=bt, sl=sl, cl=cl, cache=cache, pos=pos,
                 slots=slots, gate_up=gate_up, scale=D**-0.5, ctx=ctx)  # fmt: skip
        layer = partial(_decode_layer, t)
        record("decode layer (6 kernels)", f"B={B} ctx={ctx} H={H} Hkv={Hkv}", dtype, None, None, layer, dev=dev)


def check_sampling(dev: str, sizes: Sizes) -> None:
    V = sizes["vocab"]
    for n in sizes["sample_rows"]:
        logits = torch.randn(n, V, device=dev) * 3
        ones, zeros = torch.ones(n, device=dev), torch.zeros(n, device=dev)
        k1 = torch.ones(n, dtype=torch.int32, device=dev)
        seeds = torch.arange(n, device=dev)
        greedy = K.top_k_top_p_sample(logits, ones, k1, zeros, seeds=seeds)
        assert torch.equal(greedy, logits.argmax(-1)), "top_k=1 must be argmax"
        k50, p9 = torch.full_like(k1, 50), torch.full_like(ones, 0.9)
        a = K.top_k_top_p_sample(logits, ones, k50, p9, seeds=seeds)
        b = K.top_k_top_p_sample(logits, ones, k50, p9, seeds=seeds, max_top_k=50)
        assert torch.equal(a, b), "max_top_k hint must not change the draw"
        sample = partial(K.top_k_top_p_sample, logits, ones, seeds=seeds)
        cases = {
            "argmax (floor)": partial(torch.argmax, logits, -1),
            "top_p=0.9 (sort)": partial(sample, k1 * 0, p9),
            "top_k=50,p=0.9 hint": partial(sample, k50, p9, max_top_k=50),
        }
        for label, fn in cases.items():
            record("sample " + label, f"N={n} V={V}", torch.float32, None, None, fn, dev=dev)


# -- the batch-1 decode changes, old against new: fused rotary + KV write, decode attention without the
# split + reduce, the per-shape GEMV. Times are per call with L calls back to back in one CUDA graph (as
# the layers of a decode step: no launch overhead between them), each call on its own data, L2 flushed
# before each replay.

NEW_BAD: list[str] = []  # rows whose error is above the bound, or whose output changed between replays
LLAMA3_SCALING = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                  "original_max_position_embeddings": 8192}  # fmt: skip


def graph_ms(fns: list[Callable[[], object]], dev: str, replays: int = 20) -> tuple[float, list, Callable]:
    """(GPU ms per call of `fns` replayed back to back from one CUDA graph, their outputs, replay()).
    On CPU: one eager pass, wall time."""
    if dev != "cuda":
        t0 = time.perf_counter()
        outs = [fn() for fn in fns]
        return (time.perf_counter() - t0) * 1e3 / len(fns), outs, lambda: None
    if not _FLUSH:
        _FLUSH.append(torch.empty(256 << 20, dtype=torch.int8, device=dev))
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # compile, and settle the allocator, outside the capture
        for fn in fns:
            fn()
    torch.cuda.current_stream().wait_stream(side)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        outs = [fn() for fn in fns]
    events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(replays)]
    for start, end in events:
        _FLUSH[0].zero_()
        start.record()
        g.replay()
        end.record()
    torch.cuda.synchronize()
    times = sorted(a.elapsed_time(b) for a, b in events)
    return times[len(times) // 2] / len(fns), outs, g.replay


def stable(outs: list, replay: Callable, dev: str, n: int = 50) -> bool:
    """Whether `n` more replays give bit-identical outputs (a race in a kernel would show here)."""
    first = [o.clone() for o in outs]
    for _ in range(n if dev == "cuda" else 0):
        replay()
    if dev == "cuda":
        torch.cuda.synchronize()
    return all(torch.equal(a, b) for a, b in zip(first, outs, strict=True))


def new_header() -> None:
    say(
        f"\n{'check':32s} {'shape':44s} {'dtype':8s} {'rel':>7s} | {'old us':>8s} {'new us':>8s} {'old/new':>7s} | note"
    )


def compare(
    name: str, shape: str, dtype: torch.dtype, rel: float, t_old: float, t_new: float, note: str = "", ok: bool = True
) -> None:
    bound = 2e-2 if dtype == torch.bfloat16 else 4e-3
    dt = str(dtype).replace("torch.", "")
    if not (rel <= bound and ok):  # nan counts as bad
        NEW_BAD.append(f"{name} {shape} {dt}")
        note = ("WRONG " if rel > bound or rel != rel else "UNSTABLE ") + note
    say(f"{name:32s} {shape:44s} {dt:8s} {rel:7.1e} | {t_old * 1e3:8.2f} {t_new * 1e3:8.2f} "
        f"{t_old / t_new:6.2f}x | {note}")  # fmt: skip


def _rotary_then_write(q, k, v, kc, vc, pos, cos_sin, slots) -> torch.Tensor:
    q, k = K.apply_rotary(q, k, pos, cos_sin)
    K.write_kv_cache(k, v, kc, vc, slots)
    return q


def _attention_old(q, k, v, kc, vc, pos, cos_sin, slots, tables, sl, cl, bound) -> torch.Tensor:
    q = _rotary_then_write(q, k, v, kc, vc, pos, cos_sin, slots)
    return K.paged_attention(q, kc, vc, tables, sl, cl, q.shape[-1] ** -0.5, 1, bound)


def _attention_new(q, k, v, kc, vc, pos, cos_sin, slots, tables, sl, cl, bound) -> torch.Tensor:
    q = K.rotary_write_kv_cache(q, k, v, pos, cos_sin, kc, vc, slots)
    return K.paged_attention(q, kc, vc, tables, sl, cl, q.shape[-1] ** -0.5, 1, bound)


def check_rotary_kv(dev: str, dtypes: list[torch.dtype], sizes: Sizes) -> None:
    """rotary_write_kv_cache against its reference (q, and the whole k cache) and against the two kernels
    it replaces (apply_rotary, then write_kv_cache)."""
    D, tpb, L = sizes["head_dim"], 64, sizes["layers"]
    cos_sin = K.rope_cos_sin_cache(D, 16384, 500000.0, LLAMA3_SCALING, device=dev)
    for dtype, (H, Hkv), T in itertools.product(dtypes, sizes["heads"], sizes["rk_tokens"]):
        blocks = 2 * T // tpb + 2
        pos = torch.randint(0, 16384, (T,), device=dev)
        slots = torch.randperm(blocks * tpb, device=dev)[:T]
        layers = []
        for _ in range(L):  # q, k, v: views of a fused QKV output, as in the model
            qkv = torch.randn(T, H + 2 * Hkv, D, dtype=dtype, device=dev)
            kc = torch.zeros(blocks, tpb, Hkv, D, dtype=dtype, device=dev)
            layers.append((qkv[:, :H], qkv[:, H : H + Hkv], qkv[:, H + Hkv :], kc, torch.zeros_like(kc)))
        q, k, v, kc, vc = layers[0]
        kr, vr = kc.clone(), vc.clone()
        qo = K.rotary_write_kv_cache(q, k, v, pos, cos_sin, kc, vc, slots)
        qr = K.rotary_write_kv_cache_ref(q, k, v, pos, cos_sin, kr, vr, slots)
        rel = max(errors(qo, qr)[0], errors(kc, kr)[0])
        exact_v = torch.equal(vc, vr)

        t_old = graph_ms([partial(_rotary_then_write, *lay, pos, cos_sin, slots) for lay in layers], dev)[0]
        t_new, outs, replay = graph_ms([partial(K.rotary_write_kv_cache, *lay[:3], pos, cos_sin, *lay[3:], slots)
                                        for lay in layers], dev)  # fmt: skip
        note = "v copied exactly" if exact_v else "v DIFFERS"
        compare("rotary+write_kv fused", f"T={T} H={H} Hkv={Hkv} D={D}", dtype, rel, t_old, t_new, note,
                ok=exact_v and stable(outs, replay, dev))  # fmt: skip


# decode launches compared: the old one (every sequence cut into the host's split count, merged by the
# reduce kernel), then with the merge fused, and one pass for contexts up to SINGLE_PASS_CTX keys
DECODE_VARIANTS = {
    "old: split by bound + reduce": {"SINGLE_PASS_CTX": 0, "FUSED_MERGE": False},
    "split by bound + fused merge": {"SINGLE_PASS_CTX": 0, "FUSED_MERGE": True},
    "1 pass <=128, fused (default)": {"SINGLE_PASS_CTX": 128, "FUSED_MERGE": True},
    "1 pass <=256, fused merge": {"SINGLE_PASS_CTX": 256, "FUSED_MERGE": True},
    "1 pass <=512, fused merge": {"SINGLE_PASS_CTX": 512, "FUSED_MERGE": True},
    "1 pass <=1024, fused merge": {"SINGLE_PASS_CTX": 1024, "FUSED_MERGE": True},
    "1 pass <=128, reduce kernel": {"SINGLE_PASS_CTX": 128, "FUSED_MERGE": False},
}


def _with_decode(variant: dict, fn: Callable[[], object]) -> Callable[[], object]:
    # the launch config is read when the kernel is launched: at warm-up and capture, not at replay
    def run():
        saved = {name: getattr(attention, name) for name in ("DECODE_CONFIG", "INTERPRET_DECODE_CONFIG")}
        for name, cfg in saved.items():
            setattr(attention, name, {**cfg, **variant})
        try:
            return fn()
        finally:
            for name, cfg in saved.items():
                setattr(attention, name, cfg)

    return run


def check_decode_split(dev: str, dtypes: list[torch.dtype], sizes: Sizes) -> None:
    """Decode attention launched as inside a CUDA graph (max_context_len = the engine's bound, whatever
    the real context), each variant against the reference and timed against the old launch."""
    D, tpb, L, bound = sizes["head_dim"], 64, sizes["layers"], sizes["bound"]
    for dtype, (H, Hkv), (B, ctx) in itertools.product(dtypes, sizes["heads"], sizes["split_decode"]):
        blocks = math.ceil(ctx / tpb)
        tables = torch.randperm(B * blocks, device=dev).view(B, blocks).to(torch.int32)
        q = torch.randn(B, H, D, dtype=dtype, device=dev)
        sl = torch.ones(B, dtype=torch.int32, device=dev)
        cl = torch.full((B,), ctx, dtype=torch.int32, device=dev)
        caches = [tuple(torch.randn(B * blocks, tpb, Hkv, D, dtype=dtype, device=dev) for _ in range(2))
                  for _ in range(L)]  # fmt: skip
        ref = K.paged_attention_ref(q, *caches[0], tables, sl, cl, D**-0.5)
        calls = [partial(K.paged_attention, q, kc, vc, tables, sl, cl, D**-0.5, 1, bound) for kc, vc in caches]
        variants = DECODE_VARIANTS  # all for the first dtype; the old and the default for the others
        if dtype != dtypes[0]:
            variants = {k: v for k, v in variants.items() if k.startswith(("old", "1 pass <=128, fused"))}
        t_old = None
        for label, variant in variants.items():
            t, outs, replay = graph_ms([_with_decode(variant, fn) for fn in calls], dev)
            t_old = t if t_old is None else t_old
            rel = errors(outs[0], ref)[0]
            ok = stable(outs, replay, dev) if variant["FUSED_MERGE"] else True
            compare(label, f"B={B} ctx={ctx} (bound {bound}) H={H} Hkv={Hkv}", dtype, rel, t_old, t, ok=ok)
        del caches


GEMV_MODEL_SHAPES = {  # (N, K) at tp 1: qkv, o_proj, gate_up, down, lm_head
    "7b": [(12288, 4096), (4096, 4096), (22016, 4096), (4096, 11008), (32000, 4096)],
    "8b": [(6144, 4096), (4096, 4096), (28672, 4096), (4096, 14336), (128256, 4096)],
}


def check_gemv(dev: str, dtypes: list[torch.dtype], sizes: Sizes) -> None:
    """The Triton GEMV at M = 1 (each launch config tuning tries) against cuBLAS (F.linear), per shape;
    then what build-time tuning (tune_gemv, do_bench timings) would store for these shapes."""
    from tensorrt_llm.kernels import tuning
    from tensorrt_llm.kernels.gemv import GEMV_SHAPES

    for dtype, (model, shapes) in itertools.product(dtypes, sizes["gemv"].items()):
        for N, Kd in shapes:
            nbytes = N * Kd * 2
            reps = max(1, min(8, math.ceil((256 << 20) / nbytes)))  # distinct weights: more than the L2 holds
            ws = [(torch.randn(N, Kd, device=dev) / Kd**0.5).to(dtype) for _ in range(reps)]
            x = torch.randn(1, Kd, device=dev).to(dtype)
            ref = F.linear(x, ws[0])
            t_cublas = graph_ms([partial(F.linear, x, w) for w in ws], dev)[0]
            results = []
            for cfg in tuning.GEMV_CANDIDATES:
                t, outs, _ = graph_ms([partial(K.gemv, x, w, None, cfg) for w in ws], dev)
                results.append((t, cfg, errors(outs[0], ref)[0]))
            t, cfg, rel = min(results)
            others = " ".join(f"{c[0]}x{c[1]}/{c[2]}w{c[3]}s:{tt * 1e3:.1f}" for tt, c, _ in results)
            note = f"{nbytes / t_cublas / 1e6:.0f} -> {nbytes / t / 1e6:.0f} GB/s; us by config {others}"
            compare(f"gemv M=1 vs cuBLAS ({model})", f"N={N} K={Kd} best {cfg}", dtype, max(r[2] for r in results),
                    t_cublas, t, note)  # fmt: skip
            del ws
    saved = dict(GEMV_SHAPES)
    for model, shapes in sizes["gemv"].items():
        chosen = tuning.tune_gemv(shapes, dtypes[0], dev)
        picked = [(s["N"], s["K"], (s["BLOCK_N"], s["BLOCK_K"], s["num_warps"], s["num_stages"]))
                  for s in chosen.get("linear_gemv", {}).get("shapes", [])]  # fmt: skip
        say(f"build-time tuning ({model}, {str(dtypes[0]).replace('torch.', '')}): GEMV on {picked or 'no shape'}")
    GEMV_SHAPES.clear()
    GEMV_SHAPES.update(saved)


def check_attention_block(dev: str, dtypes: list[torch.dtype], sizes: Sizes) -> None:
    """A decode layer's attention kernels, old (rotary, KV write, split + reduce attention) against new
    (fused rotary + KV write, default decode launch), as a graph launches them (context bound)."""
    D, tpb, L, bound = sizes["head_dim"], 64, sizes["layers"], sizes["bound"]
    dtype = dtypes[0]
    cos_sin = K.rope_cos_sin_cache(D, bound + 1, 10000.0, device=dev)
    for (H, Hkv), (B, ctx) in itertools.product(sizes["heads"], sizes["block_decode"]):
        blocks = math.ceil(ctx / tpb)
        tables = torch.randperm(B * blocks, device=dev).view(B, blocks).to(torch.int32)
        sl = torch.ones(B, dtype=torch.int32, device=dev)
        cl = torch.full((B,), ctx, dtype=torch.int32, device=dev)
        pos = torch.full((B,), ctx - 1, device=dev)
        slots = (tables[:, (ctx - 1) // tpb].long() * tpb + (ctx - 1) % tpb).contiguous()
        layers = []
        for _ in range(L):
            qkv = torch.randn(B, H + 2 * Hkv, D, dtype=dtype, device=dev)
            kc, vc = (torch.randn(B * blocks, tpb, Hkv, D, dtype=dtype, device=dev) for _ in range(2))
            layers.append((qkv[:, :H], qkv[:, H : H + Hkv], qkv[:, H + Hkv :], kc, vc))

        rest = (pos, cos_sin, slots, tables, sl, cl, bound)
        old_launch = DECODE_VARIANTS["old: split by bound + reduce"]
        t_old, o_old, _ = graph_ms(
            [_with_decode(old_launch, partial(_attention_old, *lay, *rest)) for lay in layers], dev
        )
        t_new, o_new, _ = graph_ms([partial(_attention_new, *lay, *rest) for lay in layers], dev)
        compare("attention block per layer", f"B={B} ctx={ctx} (bound {bound}) H={H} Hkv={Hkv}", dtype,
                errors(o_new[0], o_old[0])[0], t_old, t_new, "rel: new vs old output")  # fmt: skip
        del layers


NEW_SECTIONS = ("rotary_kv", "decode_split", "attention_block", "gemv")


def _sweep_one(label: str, args: tuple, configs: list[dict], attr: str, dev: str) -> None:
    # times every config on one shape (checking each against the reference) and prints the best three
    ref = K.paged_attention_ref(*args)
    default = dict(getattr(attention, attr))
    results = []
    for cfg in configs:
        setattr(attention, attr, cfg)
        try:
            err = errors(K.paged_attention(*args), ref)[0]
            t = bench_ms(partial(K.paged_attention, *args), dev)
        except Exception as e:  # out of shared memory etc.
            say(f"  {cfg} failed: {type(e).__name__}")
            continue
        if err > 4e-3:
            say(f"  {cfg} WRONG: rel {err:.1e}")
            continue
        results.append((t, cfg))
    setattr(attention, attr, default)
    results.sort(key=lambda r: r[0])
    t_default = next((t for t, c in results if c == default), float("nan"))
    best = "; ".join(f"{t * 1e3:.1f}us {c}" for t, c in results[:3])
    say(f"{label}: default {t_default * 1e3:.1f}us | best {best}")


def sweep(dev: str, dtype: torch.dtype) -> None:
    """Time launch configurations of the attention kernels (graphed GPU time); prints the best per shape."""
    say("\n== sweep (attention launch configs, float16, GPU time) ==")
    D, tpb = 128, 64
    decode_cfgs = [
        {"BLOCK_N": bn, "num_warps": w, "num_stages": s}
        for bn, w, s in itertools.product([32, 64, 128], [4, 8], [2, 4])
    ]
    decode_cfgs.append({**attention.DECODE_CONFIG, "TILE_IN_BLOCK": False})
    for (H, Hkv), (B, ctx) in itertools.product([(32, 32), (32, 8)], [(1, 4096), (1, 16384), (16, 2048), (64, 1024)]):
        q, kc, vc, bt, sl, cl = paged_batch([1] * B, [ctx] * B, H, Hkv, D, tpb, dtype, dev)
        args = (q, kc, vc, bt, sl, cl, D**-0.5, 1, ctx)
        _sweep_one(f"decode B={B} ctx={ctx} H={H} Hkv={Hkv}", args, decode_cfgs, "DECODE_CONFIG", dev)
    context_cfgs = [
        {"BLOCK_M": bm, "BLOCK_N": bn, "num_warps": w, "num_stages": s}
        for bm, bn, w, s in [
            (64, 32, 4, 2), (64, 32, 4, 3), (64, 64, 4, 2), (64, 64, 4, 3), (64, 128, 4, 2), (64, 64, 8, 2),
            (128, 32, 4, 2), (128, 64, 4, 2), (128, 64, 8, 2), (128, 64, 8, 3), (128, 128, 8, 2), (128, 128, 8, 3),
        ]
    ]  # fmt: skip
    context_cfgs += [
        {**attention.CONTEXT_CONFIG, "SPLIT_CAUSAL": False},
        {**attention.CONTEXT_CONFIG, "TILE_IN_BLOCK": False},
    ]
    for (H, Hkv), (B, seq, ctx) in itertools.product(
        [(32, 32), (32, 8)], [(1, 2048, 2048), (8, 512, 512), (1, 512, 2048)]
    ):
        q, kc, vc, bt, sl, cl = paged_batch([seq] * B, [ctx] * B, H, Hkv, D, tpb, dtype, dev)
        args = (q, kc, vc, bt, sl, cl, D**-0.5, seq, ctx)
        _sweep_one(f"context B={B} seq={seq} ctx={ctx} H={H} Hkv={Hkv}", args, context_cfgs, "CONTEXT_CONFIG", dev)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="tiny shapes (CPU smoke test under TRITON_INTERPRET=1)")
    ap.add_argument("--sweep", action="store_true", help="also sweep attention launch configs")
    ap.add_argument("--only", default="", help="comma list of sections to run (default: all)")
    ap.add_argument(
        "--new", action="store_true", help=f"only the decode changes, old vs new: {', '.join(NEW_SECTIONS)}"
    )
    ap.add_argument("--out", default=os.environ.get("OUT", "bench_out"))
    args = ap.parse_args()
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(0)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    LOG_PATH.append(out / "kernels_check.log")
    LOG_PATH[0].write_text("")
    sizes: Sizes
    if args.quick:
        sizes = dict(rows=[1, 5], inter=96, heads=[(4, 2)], decode=[(2, 40)], context=[(2, 20, 20), (1, 8, 30)],
                     vocab=500, sample_rows=[4], layer=[(2, 40)], head_dim=32, layers=2, bound=64,
                     rk_tokens=[1, 5], split_decode=[(1, 20), (2, 50)], block_decode=[(1, 40)],
                     gemv={"tiny": [(64, 128), (40, 96)]})  # fmt: skip
        dtypes = [torch.float16]
    else:
        sizes = dict(rows=[1, 32, 512, 4096], inter=14336, heads=[(32, 32), (32, 8)],
                     decode=[(1, 512), (1, 4096), (1, 16384), (16, 2048), (64, 1024), (64, 4096), (256, 1024)],
                     context=[(1, 128, 128), (1, 2048, 2048), (8, 512, 512), (1, 512, 2048)],
                     vocab=128256, sample_rows=[1, 64, 256], layer=[(1, 1024), (64, 1024)],
                     head_dim=128, layers=16, bound=4096, rk_tokens=[1, 64, 2048],
                     split_decode=[(1, 128), (1, 256), (1, 512), (1, 1024), (1, 4096), (8, 1024)],
                     block_decode=[(1, 256), (1, 1024)], gemv=GEMV_MODEL_SHAPES)  # fmt: skip
        dtypes = [torch.float16, torch.bfloat16]
    name = torch.cuda.get_device_name() if dev == "cuda" else "cpu (Triton interpreter)"
    say(f"GPU: {name} | torch {torch.__version__} | triton {__import__('triton').__version__}")
    say("rel = ||kernel - ref|| / ||ref||, max = max |kernel - ref|. gpu: median of one call replayed from a")
    say("CUDA graph after an L2 flush (no host overhead); eager: per call in a back-to-back loop (host launch")
    say("overhead shows here); ref: the *_ref (graphed unless it syncs); peer: torch SDPA on dense K/V.\n")
    launch_floor(dev)
    if not args.new:
        header()
    sections = {
        "rms_norm": lambda: check_rms_norm(dev, dtypes, sizes),
        "silu": lambda: check_silu_and_mul(dev, dtypes, sizes),
        "rotary": lambda: check_rotary(dev, dtypes, sizes),
        "kv": lambda: check_write_kv(dev, dtypes, sizes),
        "decode": lambda: check_decode(dev, dtypes, sizes),
        "context": lambda: check_context(dev, dtypes, sizes),
        "layer": lambda: check_layer(dev, dtypes, sizes),
        "sampling": lambda: check_sampling(dev, sizes),
    }
    new_sections = {
        "rotary_kv": lambda: check_rotary_kv(dev, dtypes, sizes),
        "decode_split": lambda: check_decode_split(dev, dtypes, sizes),
        "attention_block": lambda: check_attention_block(dev, dtypes, sizes),
        "gemv": lambda: check_gemv(dev, dtypes, sizes),
    }
    only = [s for s in args.only.split(",") if s] or (list(NEW_SECTIONS) if args.new else [])
    failures = []
    for key, fn in sections.items():
        if only and key not in only:
            continue
        try:
            fn()
        except Exception as e:  # keep going: one broken kernel should not hide the others' figures
            failures.append(key)
            say(f"!! {key} failed: {type(e).__name__}: {e}")
    if not only or set(only) & set(NEW_SECTIONS):
        say("\n== decode changes, old vs new (per call, L calls back to back in one CUDA graph, L2 flushed) ==")
        new_header()
    for key, fn in new_sections.items():
        if only and key not in only:
            continue
        t0 = time.perf_counter()
        try:
            fn()
        except Exception as e:
            failures.append(key)
            say(f"!! {key} failed: {type(e).__name__}: {e}")
        say(f"   ({key}: {time.perf_counter() - t0:.0f} s)")
    if args.sweep and dev == "cuda":
        sweep(dev, torch.float16)
    bad = [r for r in ROWS if r["rel"] == r["rel"] and r["rel"] > (2e-2 if r["dtype"] == "bfloat16" else 4e-3)]
    say(f"\n{len(ROWS)} rows; {len(bad)} above the error bound; failed sections: {failures or 'none'}")
    if NEW_BAD:
        say(f"decode changes: {len(NEW_BAD)} rows wrong or unstable: {NEW_BAD}")


if __name__ == "__main__":
    main()
