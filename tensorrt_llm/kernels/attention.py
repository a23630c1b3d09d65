"""Paged attention over packed variable-length queries (context and generation phase, GQA/MQA).

Packed queries: q `[T, H, D]` holds the new tokens of B sequences one after another; sequence b has
`seq_lens[b]` new tokens and `context_lens[b]` KV positions after this step (its K/V are already in the
cache). Query i of sequence b sits at position `context_lens[b] - seq_lens[b] + i` and sees keys
`0 .. position` (causal), or with a sliding `window` W only the last W of them,
`position - W + 1 .. position` (Hugging Face's `kv_idx > q_idx - W`). Key position p of sequence b is
cache row `p % tpb` of block `block_tables[b, p // tpb]`.

Two kernels, both flash-style (online softmax in base 2, fp32 accumulators):
- context (any seq_lens): grid (query tiles, B, H); a program walks the KV of one head up to its last
  query's position.
- generation (all seq_lens == 1): grid (B, Hkv, splits); a program takes the whole query group of one KV
  head (so K/V are read once per group) over one slice of the context (flash-decoding), so long contexts
  at small batch still fill the GPU. Each sequence cuts its own context on the device into `splits`
  slices of whole tiles, except that a context of at most SINGLE_PASS_CTX keys is attended in a single
  pass that writes the output (no partials, no merge). The slices of a longer context are merged by
  the last of them to finish (an arrival counter per (sequence, KV head); FUSED_MERGE), or, with
  FUSED_MERGE off, by a small reduce kernel. Both choices are made on the device, so they also hold
  inside a CUDA graph captured with an upper bound of the context length.

The window is a compile-time switch (SLIDING_WINDOW): without it the kernels are the plain causal ones.
With it, KV loops start at the window's first tile (tiles stay aligned to BLOCK_N) and keys before the
window are masked; the context kernel then masks every tile (no unmasked SPLIT_CAUSAL tiles).

Attention sinks (StreamingLLM, TensorRT-LLM's `sink_token_length`; compile-time switch SINKS, only with a
window): the first `sinks` keys of the sequence stay visible to every query, which then sees keys
`[0, sinks) U (position - W, position]`. Positions are not re-indexed: K is stored rotated by its own
position and queries by theirs, as without sinks (StreamingLLM and TensorRT-LLM's `streamingllm` mode use
positions within the cache instead). The kernels walk the tiles holding sink keys that lie before the
window's first tile (only the sink keys visible there), then the window's tiles (where a sink key is
visible too). The decode kernel's slices cut that walk, sink tiles first, so a split context stays
balanced; the reduce kernel plans the same slices.
`softcap` > 0 (Gemma-2, compile-time switch SOFTCAP) caps the scaled scores: s = softcap * tanh(s / softcap).
ALiBi (BLOOM, MPT; compile-time switch ALIBI, a float32 slope per query head): the scaled (and capped)
scores get + slope_h * (k_pos - q_pos), <= 0 for every visible key, so window and sinks need nothing more
(Hugging Face adds slope_h * k_pos, the same after the softmax of each query row). Partials of a split
context carry it already, so the merge and the reduce kernel are unchanged.

A quantized cache (int8 or float8_e4m3fn, compile-time switch KV_QUANT) holds K / k_scale and V / v_scale
(see kernels.kv_cache). Tiles are cast to q's dtype as loaded (exact: int8 and e4m3 values fit fp16 /
bf16), k_scale is folded into the score scale and v_scale applied to the fp32 accumulator (every
partial of a split context carries it, so the merge is unchanged). Scales are read on the device.
"""

from __future__ import annotations

import math

import torch

from ._common import HAS_TRITON, check, check_launchable, next_pow2, num_sms
from .kv_cache import QUANT_CACHE_DTYPES as _QUANT_DTYPES
from .kv_cache import check_kv_scales

LOG2E = 1.4426950408889634

# Launch configurations on CUDA (the interpreter uses 16-wide tiles), the fastest found on an H100 by
# benchmarks/kernels_check.py --sweep (decode: all candidates within 2%; context: stages 3 saved ~9%).
# An engine's tuning cache may replace these dicts at load time (tuning.apply_configs).
DECODE_CONFIG = {"BLOCK_N": 64, "num_warps": 4, "num_stages": 2}
CONTEXT_CONFIG = {"BLOCK_M": 64, "BLOCK_N": 64, "num_warps": 4, "num_stages": 3}
# The decode kernel over an fp8 / int8 cache: a tile holds half the bytes, so the float choice need not hold.
# H200 sweep (benchmarks/bench_decode_attention.py, results/decode_attention_sweep_h200_swap_ab.txt), the least
# total time over five Llama-3-8B shapes, per cache dtype: both transposed (SWAP_AB), which at batch 256-512
# reads fp8 K/V at 2.6 TB/s instead of 2.3 (-10 %) and int8 at 2.2 instead of 1.9 (-15 %); still below
# the float cache's rate, bound by the tile's conversion to q's dtype rather than by memory.
DECODE_QUANT_CONFIG = {"BLOCK_N": 128, "num_warps": 4, "num_stages": 4, "SWAP_AB": True}  # fp8 cache
DECODE_INT8_CONFIG = {"BLOCK_N": 64, "num_warps": 4, "num_stages": 4, "SWAP_AB": True}
# Optional keys: TILE_IN_BLOCK (default True: one table load per tile when BLOCK_N divides
# tokens_per_block), SPLIT_CAUSAL (context only, default True: no causal mask below the diagonal);
# decode only: SINGLE_PASS_CTX (default DECODE_SINGLE_PASS_CTX: contexts up to this many keys are one
# pass, no split and no merge), FUSED_MERGE (default True: the last slice merges, no reduce kernel) and
# SWAP_AB (default False: the products transposed, the KV tile as the MMA's A operand; _attend_tile_t).
DECODE_SINGLE_PASS_CTX = 128  # H100: one pass wins at 128 keys, loses at 256 (results/kernels_new_h100.log)
# fp32 partials the merge holds at once (BLOCK_GM heads x BLOCK_S slices x BLOCK_D): ~32 registers a
# thread at 4 warps; more slices are merged in turns
MERGE_TILE = 4096
INTERPRET_DECODE_CONFIG = {"BLOCK_N": 16, "num_warps": 1, "num_stages": 1, "SINGLE_PASS_CTX": 32}
INTERPRET_CONTEXT_CONFIG = {"BLOCK_M": 16, "BLOCK_N": 16, "num_warps": 1, "num_stages": 1}

if HAS_TRITON:
    import triton
    import triton.language as tl

    @triton.jit
    def _tile_offsets(
        bt_row_ptr, kvh, stride_cb, stride_ct, stride_ch, start_n, n_mask, TOKENS_PER_BLOCK: tl.constexpr,
        BLOCK_N: tl.constexpr, TILE_IN_BLOCK: tl.constexpr,
    ):  # fmt: skip
        # cache offsets [BLOCK_N] of the rows of KV head kvh at positions start_n + [0, BLOCK_N), through the
        # block table
        if TILE_IN_BLOCK:  # tiles start at multiples of BLOCK_N, which divides tokens_per_block:
            # the tile lies in one cache block, so one table load and plain strided rows
            blk = tl.load(bt_row_ptr + start_n // TOKENS_PER_BLOCK).to(tl.int64)
            rows = start_n % TOKENS_PER_BLOCK + tl.arange(0, BLOCK_N)
        else:  # a block per key
            offs_n = start_n + tl.arange(0, BLOCK_N)
            blk = tl.load(bt_row_ptr + offs_n // TOKENS_PER_BLOCK, mask=n_mask, other=0).to(tl.int64)
            rows = offs_n % TOKENS_PER_BLOCK
        return blk * stride_cb + rows * stride_ct + kvh * stride_ch

    @triton.jit
    def _attend_tile(
        q, acc, m_i, l_i, kc_ptr, vc_ptr, bt_row_ptr, kvh, stride_cb, stride_ct, stride_ch,
        start_n, n_mask, visible, offs_d, d_mask, qk_scale, softcap, TOKENS_PER_BLOCK: tl.constexpr,
        BLOCK_N: tl.constexpr, TILE_IN_BLOCK: tl.constexpr, DOT_PRECISION: tl.constexpr, SOFTCAP: tl.constexpr,
        slope, q_pos, ALIBI: tl.constexpr,
    ):  # fmt: skip
        # one KV tile (positions start_n + [0, BLOCK_N)) read through the block table, folded into the
        # running softmax state (m_i: row max, l_i: row sum, acc: unnormalized output) of q [rows, BLOCK_D]
        kv_off = _tile_offsets(bt_row_ptr, kvh, stride_cb, stride_ct, stride_ch, start_n, n_mask, TOKENS_PER_BLOCK,
                               BLOCK_N, TILE_IN_BLOCK)  # fmt: skip
        kv_ptrs = kv_off[:, None] + offs_d[None, :]  # [BLOCK_N, BLOCK_D]
        kv_mask = n_mask[:, None] & d_mask[None, :]
        k = tl.load(kc_ptr + kv_ptrs, mask=kv_mask, other=0.0).to(q.dtype)  # a quantized cache: exact
        s = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * qk_scale  # [rows, BLOCK_N], log2 units
        if SOFTCAP:  # c tanh(s / c) with s and c both in log2 units; tanh(x) = 2 sigmoid(2x) - 1
            s = softcap * (2.0 * tl.sigmoid(2.0 * s / softcap) - 1.0)
        if ALIBI:  # + slope (k_pos - q_pos): slope [rows] in log2 units, q_pos [rows]
            rel = (start_n + tl.arange(0, BLOCK_N))[None, :] - q_pos[:, None]
            s = s + slope[:, None] * rel.to(tl.float32)
        s = tl.where(visible, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        m_new = tl.where(m_new == float("-inf"), 0.0, m_new)  # a row that sees nothing yet stays empty
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(s - m_new[:, None])
        v = tl.load(vc_ptr + kv_ptrs, mask=kv_mask, other=0.0).to(q.dtype)
        acc = acc * alpha[:, None] + tl.dot(p.to(q.dtype), v, input_precision=DOT_PRECISION)
        return acc, m_new, l_i * alpha + tl.sum(p, 1)

    @triton.jit
    def _attend_tile_t(
        q, acc_t, m_i, l_i, kc_ptr, vc_ptr, bt_row_ptr, kvh, stride_cb, stride_ct, stride_ch,
        start_n, n_mask, visible_n, offs_d, d_mask, qk_scale, softcap, TOKENS_PER_BLOCK: tl.constexpr,
        BLOCK_N: tl.constexpr, TILE_IN_BLOCK: tl.constexpr, DOT_PRECISION: tl.constexpr, SOFTCAP: tl.constexpr,
        slope, q_pos, ALIBI: tl.constexpr,
    ):  # fmt: skip
        # _attend_tile with the products transposed (SWAP_AB, decode only): s^T = K q^T and acc^T += V^T p^T,
        # so the KV tile, converted in registers from a quantized cache, is each MMA's A operand (which may
        # stay in registers) and the query group, padded to 16 rows, the small B operand. acc_t [BLOCK_D,
        # rows]; visible_n [BLOCK_N] (one query per row: the same keys for every row).
        kv_off = _tile_offsets(bt_row_ptr, kvh, stride_cb, stride_ct, stride_ch, start_n, n_mask, TOKENS_PER_BLOCK,
                               BLOCK_N, TILE_IN_BLOCK)  # fmt: skip
        k = tl.load(kc_ptr + kv_off[:, None] + offs_d[None, :], mask=n_mask[:, None] & d_mask[None, :], other=0.0)
        s = tl.dot(k.to(q.dtype), tl.trans(q), input_precision=DOT_PRECISION) * qk_scale  # [BLOCK_N, rows]
        if SOFTCAP:
            s = softcap * (2.0 * tl.sigmoid(2.0 * s / softcap) - 1.0)
        if ALIBI:  # slope, q_pos [rows]
            rel = (start_n + tl.arange(0, BLOCK_N))[:, None] - q_pos[None, :]
            s = s + slope[None, :] * rel.to(tl.float32)
        s = tl.where(visible_n[:, None], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 0))
        m_new = tl.where(m_new == float("-inf"), 0.0, m_new)
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(s - m_new[None, :])  # [BLOCK_N, rows]
        v_t = tl.load(vc_ptr + kv_off[None, :] + offs_d[:, None], mask=d_mask[:, None] & n_mask[None, :], other=0.0)
        acc_t = acc_t * alpha[None, :] + tl.dot(v_t.to(q.dtype), p.to(q.dtype), input_precision=DOT_PRECISION)
        return acc_t, m_new, l_i * alpha + tl.sum(p, 0)

    @triton.jit
    def _decode_tile(
        q, acc, m_i, l_i, kc_ptr, vc_ptr, bt_row_ptr, kvh, stride_cb, stride_ct, stride_ch,
        start_n, n_mask, visible_n, offs_d, d_mask, qk_scale, softcap, TOKENS_PER_BLOCK: tl.constexpr,
        BLOCK_N: tl.constexpr, TILE_IN_BLOCK: tl.constexpr, DOT_PRECISION: tl.constexpr, SOFTCAP: tl.constexpr,
        slope, q_pos, ALIBI: tl.constexpr, SWAP_AB: tl.constexpr,
    ):  # fmt: skip
        # one decode tile in the kernel's orientation; visible_n [BLOCK_N] (one query: the same keys per row)
        if SWAP_AB:
            return _attend_tile_t(
                q, acc, m_i, l_i, kc_ptr, vc_ptr, bt_row_ptr, kvh, stride_cb, stride_ct, stride_ch, start_n,
                n_mask, visible_n, offs_d, d_mask, qk_scale, softcap, TOKENS_PER_BLOCK, BLOCK_N, TILE_IN_BLOCK,
                DOT_PRECISION, SOFTCAP, slope, q_pos, ALIBI,
            )  # fmt: skip
        else:
            return _attend_tile(
                q, acc, m_i, l_i, kc_ptr, vc_ptr, bt_row_ptr, kvh, stride_cb, stride_ct, stride_ch, start_n,
                n_mask, visible_n[None, :], offs_d, d_mask, qk_scale, softcap, TOKENS_PER_BLOCK, BLOCK_N,
                TILE_IN_BLOCK, DOT_PRECISION, SOFTCAP, slope, q_pos, ALIBI,
            )  # fmt: skip

    # A mixed step's generation tail passes slices (block_tables[Bp:], context_lens[Bp:]) whose addresses
    # are 16-byte aligned or not by Bp, and the table's row stride changes with the step: specializing
    # on them compiled new variants mid-serving (~1 s stalls). These are scalar loads: nothing is lost.
    _NO_SPECIALIZE = dict(do_not_specialize=["stride_btb"], do_not_specialize_on_alignment=["bt_ptr", "ctx_lens_ptr"])

    @triton.jit(**_NO_SPECIALIZE)
    def _context_attention_kernel(
        q_ptr, kc_ptr, vc_ptr, o_ptr, bt_ptr, seq_lens_ptr, ctx_lens_ptr, q_start_ptr, ks_ptr, vs_ptr, alibi_ptr,
        stride_qt, stride_qh, stride_ot, stride_oh, stride_cb, stride_ct, stride_ch, stride_btb,
        qk_scale, head_dim, window, softcap, sinks,
        GROUP: tl.constexpr, TOKENS_PER_BLOCK: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, DOT_PRECISION: tl.constexpr,
        TILE_IN_BLOCK: tl.constexpr, SPLIT_CAUSAL: tl.constexpr, SLIDING_WINDOW: tl.constexpr,
        SOFTCAP: tl.constexpr, KV_QUANT: tl.constexpr, SINKS: tl.constexpr, ALIBI: tl.constexpr = False,
    ):  # fmt: skip
        m_tile, b, h = tl.program_id(0), tl.program_id(1), tl.program_id(2)
        seq_len = tl.load(seq_lens_ptr + b)
        if m_tile * BLOCK_M < seq_len:  # the grid covers max_seq_len; shorter sequences stop here
            ctx = tl.load(ctx_lens_ptr + b)
            q0 = tl.load(q_start_ptr + b).to(tl.int64)  # packed index of the sequence's first token
            offs_m = m_tile * BLOCK_M + tl.arange(0, BLOCK_M)  # query index within the sequence
            offs_d = tl.arange(0, BLOCK_D)
            m_mask, d_mask = offs_m < seq_len, offs_d < head_dim
            q_rows = (q0 + offs_m)[:, None]
            q = tl.load(
                q_ptr + q_rows * stride_qt + h * stride_qh + offs_d[None, :],
                mask=m_mask[:, None] & d_mask[None, :],
                other=0.0,
            )
            pos = ctx - seq_len + offs_m  # [BLOCK_M] positions of the queries
            slope = 0.0
            if ALIBI:  # the head's slope, per row, in log2 units
                slope = tl.zeros([BLOCK_M], tl.float32) + tl.load(alibi_ptr + h) * 1.4426950408889634
            if KV_QUANT:  # scores of the stored K times k_scale are the scores of K
                qk_scale = qk_scale * tl.load(ks_ptr)
            kv_end = tl.minimum(ctx, ctx - seq_len + (m_tile + 1) * BLOCK_M)  # causal: skip later keys
            m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
            l_i = tl.zeros([BLOCK_M], tl.float32)
            acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
            bt_row = bt_ptr + b * stride_btb
            n_full = 0
            if SLIDING_WINDOW:  # start at the tile holding the first key the tile's first query sees
                n_full = tl.maximum(ctx - seq_len + m_tile * BLOCK_M - window + 1, 0) // BLOCK_N * BLOCK_N
            if SINKS:  # (with SLIDING_WINDOW) the tiles of sink keys before that tile: only the sinks are
                # visible there, to every query of the tile (each is past the tile's first query's window)
                for start_n in range(0, tl.minimum(tl.cdiv(sinks, BLOCK_N) * BLOCK_N, n_full), BLOCK_N):
                    n_mask = start_n + tl.arange(0, BLOCK_N) < sinks
                    acc, m_i, l_i = _attend_tile(
                        q, acc, m_i, l_i, kc_ptr, vc_ptr, bt_row, h // GROUP, stride_cb, stride_ct,
                        stride_ch, start_n, n_mask, n_mask[None, :], offs_d, d_mask, qk_scale, softcap,
                        TOKENS_PER_BLOCK, BLOCK_N, TILE_IN_BLOCK, DOT_PRECISION, SOFTCAP, slope, pos, ALIBI,
                    )  # fmt: skip
            if SPLIT_CAUSAL:  # tiles below the tile's first query position: every row sees every key
                # (the launcher never sets it together with SLIDING_WINDOW: window tiles are masked)
                n_full = (ctx - seq_len + m_tile * BLOCK_M + 1) // BLOCK_N * BLOCK_N
                for start_n in range(0, n_full, BLOCK_N):
                    n_mask = start_n + tl.arange(0, BLOCK_N) < kv_end
                    acc, m_i, l_i = _attend_tile(
                        q, acc, m_i, l_i, kc_ptr, vc_ptr, bt_row, h // GROUP, stride_cb, stride_ct,
                        stride_ch, start_n, n_mask, n_mask[None, :], offs_d, d_mask, qk_scale, softcap,
                        TOKENS_PER_BLOCK, BLOCK_N, TILE_IN_BLOCK, DOT_PRECISION, SOFTCAP, slope, pos, ALIBI,
                    )  # fmt: skip
            for start_n in range(n_full, kv_end, BLOCK_N):  # tiles that cross the causal diagonal
                offs_n = start_n + tl.arange(0, BLOCK_N)
                n_mask = offs_n < kv_end
                visible = n_mask[None, :] & (offs_n[None, :] <= pos[:, None])
                if SLIDING_WINDOW:
                    if SINKS:
                        visible = visible & ((offs_n[None, :] > pos[:, None] - window) | (offs_n < sinks)[None, :])
                    else:
                        visible = visible & (offs_n[None, :] > pos[:, None] - window)
                acc, m_i, l_i = _attend_tile(
                    q, acc, m_i, l_i, kc_ptr, vc_ptr, bt_row, h // GROUP, stride_cb, stride_ct, stride_ch,
                    start_n, n_mask, visible, offs_d, d_mask, qk_scale, softcap,
                    TOKENS_PER_BLOCK, BLOCK_N, TILE_IN_BLOCK, DOT_PRECISION, SOFTCAP, slope, pos, ALIBI,
                )  # fmt: skip
            if KV_QUANT:
                acc = acc * tl.load(vs_ptr)
            acc = acc / tl.where(l_i == 0.0, 1.0, l_i)[:, None]
            tl.store(
                o_ptr + q_rows * stride_ot + h * stride_oh + offs_d[None, :],
                acc.to(o_ptr.dtype.element_ty),
                mask=m_mask[:, None] & d_mask[None, :],
            )

    @triton.jit
    def _split_plan(ctx, num_splits, single_pass_ctx, BLOCK_N: tl.constexpr):
        # how a sequence with `ctx` keys is cut: num_splits slices of whole tiles (one when ctx is at most
        # single_pass_ctx); returns (slice length, number of non-empty slices, at least 1). Every program
        # of the sequence computes the same plan from the grid's split count and its own context.
        n = tl.where(ctx > single_pass_ctx, num_splits, 1)
        split_size = tl.maximum(tl.cdiv(tl.cdiv(ctx, n), BLOCK_N), 1) * BLOCK_N
        return split_size, tl.maximum(tl.cdiv(ctx, split_size), 1)

    @triton.jit
    def _window_start(ctx, window, SLIDING_WINDOW: tl.constexpr, BLOCK_N: tl.constexpr):
        # first key position a decode query (at ctx - 1) walks from: 0, or with a window the start of the
        # tile holding key ctx - window (tiles stay aligned to BLOCK_N; the keys before are masked)
        if SLIDING_WINDOW:
            return tl.maximum(ctx - window, 0) // BLOCK_N * BLOCK_N
        else:
            return 0

    @triton.jit
    def _sink_end(kv_lo, sinks, SINKS: tl.constexpr, BLOCK_N: tl.constexpr):
        # end of the sink tiles a decode query walks before its window's first tile `kv_lo`: the tiles
        # holding keys [0, sinks) that lie before kv_lo (0 without sinks; the others are window tiles)
        if SINKS:
            return tl.minimum(tl.cdiv(sinks, BLOCK_N) * BLOCK_N, kv_lo)
        else:
            return 0

    @triton.jit
    def _merge_splits(
        part_o_ptr, part_ml_ptr, o_ptr, b, kvh, active, num_splits, stride_ot, stride_oh, num_heads, head_dim,
        GROUP: tl.constexpr, BLOCK_GM: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_D: tl.constexpr,
    ):  # fmt: skip
        # out[b, heads of kvh] from the `active` partials of each head: partials [B, H, splits, D] (acc,
        # unnormalized) and [B, H, splits, 2] (row max in log2 units, row sum), merged BLOCK_S at a time.
        # Loads bypass L1 (.cg): other programs of this launch wrote the partials, and a line of them may
        # sit stale in this SM's L1 from an earlier merge of a neighbouring head group.
        offs_g = tl.arange(0, BLOCK_GM)
        offs_s = tl.arange(0, BLOCK_S)
        offs_d = tl.arange(0, BLOCK_D)
        g_mask, d_mask = offs_g < GROUP, offs_d < head_dim
        heads = kvh * GROUP + offs_g  # [BLOCK_GM]
        first = (b * num_heads + heads) * num_splits  # [BLOCK_GM] partial index of slice 0
        m_run = tl.full([BLOCK_GM], float("-inf"), tl.float32)
        l_run = tl.zeros([BLOCK_GM], tl.float32)
        acc = tl.zeros([BLOCK_GM, BLOCK_D], tl.float32)
        for s0 in range(0, active, BLOCK_S):
            part = first[:, None] + s0 + offs_s[None, :]  # [BLOCK_GM, BLOCK_S]
            gs_mask = g_mask[:, None] & (s0 + offs_s < active)[None, :]
            m = tl.load(part_ml_ptr + part * 2, mask=gs_mask, other=float("-inf"), cache_modifier=".cg")
            l_s = tl.load(part_ml_ptr + part * 2 + 1, mask=gs_mask, other=0.0, cache_modifier=".cg")
            o = tl.load(
                part_o_ptr + part[:, :, None] * head_dim + offs_d[None, None, :],
                mask=gs_mask[:, :, None] & d_mask[None, None, :],
                other=0.0,
                cache_modifier=".cg",
            )  # [BLOCK_GM, BLOCK_S, BLOCK_D]
            m_new = tl.maximum(m_run, tl.max(m, 1))
            m_new = tl.where(m_new == float("-inf"), 0.0, m_new)
            alpha = tl.exp2(m_run - m_new)
            w = tl.exp2(m - m_new[:, None])  # masked slices (m = -inf) weigh 0
            acc = acc * alpha[:, None] + tl.sum(w[:, :, None] * o, 1)
            l_run = l_run * alpha + tl.sum(w * l_s, 1)
            m_run = m_new
        out = acc / tl.where(l_run == 0.0, 1.0, l_run)[:, None]
        o_ptrs = o_ptr + b.to(tl.int64) * stride_ot + heads[:, None] * stride_oh + offs_d[None, :]
        tl.store(o_ptrs, out.to(o_ptr.dtype.element_ty), mask=g_mask[:, None] & d_mask[None, :])

    @triton.jit(**_NO_SPECIALIZE)
    def _decode_attention_kernel(
        q_ptr, kc_ptr, vc_ptr, o_ptr, part_o_ptr, part_ml_ptr, count_ptr, bt_ptr, ctx_lens_ptr, ks_ptr, vs_ptr,
        alibi_ptr, stride_qt, stride_qh, stride_ot, stride_oh, stride_cb, stride_ct, stride_ch, stride_btb,
        qk_scale, head_dim, num_heads, num_kv_heads, single_pass_ctx, window, softcap, sinks,
        GROUP: tl.constexpr, BLOCK_G: tl.constexpr, TOKENS_PER_BLOCK: tl.constexpr,
        BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, FUSED_MERGE: tl.constexpr, BLOCK_GM: tl.constexpr,
        BLOCK_S: tl.constexpr, DOT_PRECISION: tl.constexpr, TILE_IN_BLOCK: tl.constexpr,
        SLIDING_WINDOW: tl.constexpr, SOFTCAP: tl.constexpr, KV_QUANT: tl.constexpr, SINKS: tl.constexpr,
        ALIBI: tl.constexpr = False, SWAP_AB: tl.constexpr = False,
    ):  # fmt: skip
        # sequence b's single query is packed token b; rows of the tile are the GROUP heads of KV head kvh
        b, kvh, split = tl.program_id(0), tl.program_id(1), tl.program_id(2)
        num_splits = tl.num_programs(2)
        ctx = tl.load(ctx_lens_ptr + b)
        kv_lo = _window_start(ctx, window, SLIDING_WINDOW, BLOCK_N)
        # each sequence cuts its own context, so the work stays balanced (and a short context stays one
        # pass) whatever upper bound the host gave (e.g. a CUDA-graph bucket's max_context_len)
        if SINKS:  # the keys walked: the sink tiles [0, sink_end), then the window's [kv_lo, ctx)
            sink_end = _sink_end(kv_lo, sinks, SINKS, BLOCK_N)
            split_size, active = _split_plan(ctx - kv_lo + sink_end, num_splits, single_pass_ctx, BLOCK_N)
        else:
            split_size, active = _split_plan(ctx - kv_lo, num_splits, single_pass_ctx, BLOCK_N)
        if split < active:  # slices past the sequence's last have nothing to do
            start = kv_lo + split * split_size
            end = tl.minimum(start + split_size, ctx)
            offs_g = tl.arange(0, BLOCK_G)
            offs_d = tl.arange(0, BLOCK_D)
            heads = kvh * GROUP + offs_g  # [BLOCK_G]
            hd_mask = (offs_g < GROUP)[:, None] & (offs_d < head_dim)[None, :]
            q = tl.load(
                q_ptr + b.to(tl.int64) * stride_qt + heads[:, None] * stride_qh + offs_d[None, :],
                mask=hd_mask,
                other=0.0,
            )
            m_i = tl.full([BLOCK_G], float("-inf"), tl.float32)
            l_i = tl.zeros([BLOCK_G], tl.float32)
            if SWAP_AB:  # acc^T [BLOCK_D, BLOCK_G] (_attend_tile_t)
                acc = tl.zeros([BLOCK_D, BLOCK_G], tl.float32)
            else:
                acc = tl.zeros([BLOCK_G, BLOCK_D], tl.float32)
            if KV_QUANT:
                qk_scale = qk_scale * tl.load(ks_ptr)
            slope, q_pos = 0.0, 0
            if ALIBI:  # each head's slope in log2 units; the query at position ctx - 1
                slope = tl.load(alibi_ptr + heads, mask=offs_g < GROUP, other=0.0) * 1.4426950408889634
                q_pos = tl.zeros([BLOCK_G], tl.int32) + (ctx - 1)
            if SINKS:  # the slice [v0, v1) of the walk: its sink tiles (sink keys only), then its window part
                v0 = split * split_size
                v1 = tl.minimum(v0 + split_size, ctx - kv_lo + sink_end)
                for start_n in range(v0, tl.minimum(v1, sink_end), BLOCK_N):
                    n_mask = start_n + tl.arange(0, BLOCK_N) < sinks  # (sink tiles lie before the window)
                    acc, m_i, l_i = _decode_tile(
                        q, acc, m_i, l_i, kc_ptr, vc_ptr, bt_ptr + b * stride_btb, kvh,
                        stride_cb, stride_ct, stride_ch, start_n, n_mask, n_mask, offs_d,
                        offs_d < head_dim, qk_scale, softcap, TOKENS_PER_BLOCK, BLOCK_N, TILE_IN_BLOCK,
                        DOT_PRECISION, SOFTCAP, slope, q_pos, ALIBI, SWAP_AB,
                    )  # fmt: skip
                start = tl.maximum(v0, sink_end) - sink_end + kv_lo
                end = v1 - sink_end + kv_lo
            for start_n in range(start, end, BLOCK_N):
                offs_n = start_n + tl.arange(0, BLOCK_N)
                n_mask = offs_n < end
                visible = n_mask  # [BLOCK_N]: one query, the same keys for every row
                if SLIDING_WINDOW:  # the query (position ctx - 1) sees keys ctx - window .. ctx - 1
                    if SINKS:  # and the sinks
                        visible = visible & ((offs_n >= ctx - window) | (offs_n < sinks))
                    else:
                        visible = visible & (offs_n >= ctx - window)
                acc, m_i, l_i = _decode_tile(
                    q, acc, m_i, l_i, kc_ptr, vc_ptr, bt_ptr + b * stride_btb, kvh,
                    stride_cb, stride_ct, stride_ch, start_n, n_mask, visible, offs_d,
                    offs_d < head_dim, qk_scale, softcap, TOKENS_PER_BLOCK, BLOCK_N, TILE_IN_BLOCK,
                    DOT_PRECISION, SOFTCAP, slope, q_pos, ALIBI, SWAP_AB,
                )  # fmt: skip
            if SWAP_AB:
                acc = tl.trans(acc)  # [BLOCK_G, BLOCK_D]
            if KV_QUANT:  # before the output or the partials: the merge then needs no scale
                acc = acc * tl.load(vs_ptr)
            if active == 1:  # the whole context in this program: normalize and write the output here
                acc = acc / tl.where(l_i == 0.0, 1.0, l_i)[:, None]
                out = o_ptr + b.to(tl.int64) * stride_ot + heads[:, None] * stride_oh + offs_d[None, :]
                tl.store(out, acc.to(o_ptr.dtype.element_ty), mask=hd_mask)
            else:  # partials [B, H, splits, D] and (max, sum) [B, H, splits, 2], merged below or by the reduce
                part = (b * num_heads + heads) * num_splits + split  # [BLOCK_G]
                tl.store(part_o_ptr + part[:, None] * head_dim + offs_d[None, :], acc, mask=hd_mask)
                g_mask = offs_g < GROUP
                tl.store(part_ml_ptr + part * 2, m_i, mask=g_mask)
                tl.store(part_ml_ptr + part * 2 + 1, l_i, mask=g_mask)
                if FUSED_MERGE:
                    # every thread's partial stores come before the counter's release (the CUTLASS
                    # semaphore pattern: barrier, then one thread's release atomic); the program that
                    # arrives last sees all slices' partials (acquire) and merges them
                    tl.debug_barrier()
                    counter = count_ptr + b * num_kv_heads + kvh
                    arrived = tl.atomic_add(counter, 1, sem="acq_rel", scope="gpu")
                    if arrived == active - 1:
                        tl.store(counter, 0)  # zero again for the next launch: no memset per launch
                        _merge_splits(
                            part_o_ptr, part_ml_ptr, o_ptr, b, kvh, active, num_splits, stride_ot, stride_oh,
                            num_heads, head_dim, GROUP, BLOCK_GM, BLOCK_S, BLOCK_D,
                        )  # fmt: skip

    @triton.jit(do_not_specialize_on_alignment=["ctx_lens_ptr"])
    def _decode_reduce_kernel(
        part_o_ptr, part_ml_ptr, o_ptr, ctx_lens_ptr, stride_ot, stride_oh, num_heads, num_splits, head_dim,
        single_pass_ctx, window, sinks, GROUP: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_GM: tl.constexpr,
        BLOCK_S: tl.constexpr, BLOCK_D: tl.constexpr, SLIDING_WINDOW: tl.constexpr, SINKS: tl.constexpr,
    ):  # fmt: skip
        # grid (B, Hkv): the merge as a kernel of its own (FUSED_MERGE off)
        b, kvh = tl.program_id(0), tl.program_id(1)
        ctx = tl.load(ctx_lens_ptr + b)
        kv_lo = _window_start(ctx, window, SLIDING_WINDOW, BLOCK_N)
        if SINKS:  # the decode kernel's slices: of the sink tiles and the window's
            _, active = _split_plan(ctx - kv_lo + _sink_end(kv_lo, sinks, SINKS, BLOCK_N), num_splits,
                                    single_pass_ctx, BLOCK_N)  # fmt: skip
        else:
            _, active = _split_plan(ctx - kv_lo, num_splits, single_pass_ctx, BLOCK_N)
        if active > 1:  # a sequence cut in one slice already has its output
            _merge_splits(
                part_o_ptr, part_ml_ptr, o_ptr, b, kvh, active, num_splits, stride_ot, stride_oh, num_heads,
                head_dim, GROUP, BLOCK_GM, BLOCK_S, BLOCK_D,
            )  # fmt: skip


def _check_args(q, k_cache, v_cache, block_tables, seq_lens, context_lens, k_scale=None, v_scale=None) -> int:
    """Returns the cache's QUANT switch (0: a float cache, of q's dtype)."""
    check(q.dim() == 3, "q must be [T, H, D], got {}", tuple(q.shape))
    check(k_cache.dim() == 4 and k_cache.shape == v_cache.shape, "caches must be [blocks, tpb, Hkv, D]")
    check(k_cache.shape[3] == q.shape[2], "head_dim: q {} != cache {}", q.shape[2], k_cache.shape[3])
    check(q.shape[1] % k_cache.shape[2] == 0, "H={} not a multiple of Hkv={}", q.shape[1], k_cache.shape[2])
    check(k_cache.dtype == v_cache.dtype, "the two caches must share a dtype")
    quant = check_kv_scales(k_cache, k_scale, v_scale)
    check(quant or q.dtype == k_cache.dtype, "q and a float cache must share a dtype")
    check(block_tables.dim() == 2, "block_tables must be [B, max_blocks]")
    B = block_tables.shape[0]
    check(seq_lens.shape == (B,) and context_lens.shape == (B,), "seq_lens, context_lens must be [B={}]", B)
    return quant


def decode_config(cache_dtype: torch.dtype) -> dict:
    """The decode kernel's launch configuration on CUDA for a cache of this dtype."""
    if cache_dtype == torch.int8:
        return DECODE_INT8_CONFIG
    return DECODE_QUANT_CONFIG if cache_dtype in _QUANT_DTYPES else DECODE_CONFIG


def _default_num_splits(batch: int, kv_heads: int, max_context_len: int, block_n: int, device) -> int:
    # enough (sequence, kv head, split) programs for ~2 waves, each split at least one KV tile
    tiles = max(1, math.ceil(max_context_len / block_n))
    return max(1, min(tiles, math.ceil(2 * num_sms(device) / max(1, batch * kv_heads)), 64))


# Arrival counters of the fused merge, one int32 per (sequence, KV head), per device. Every decode
# launch leaves them zero (the last slice of a pair resets its counter), so none is cleared per launch;
# launches on one device must therefore not run concurrently on two streams (the engine uses one).
# Buffers are never freed: a captured CUDA graph keeps the address it was captured with.
_COUNTERS: dict[tuple[str, int | None], torch.Tensor] = {}
_RETIRED_COUNTERS: list[torch.Tensor] = []


def _merge_counters(device: torch.device, n: int) -> torch.Tensor | None:
    """A zeroed int32 buffer of at least `n` counters for `device`; None while a CUDA graph is being
    captured and the buffer would have to grow (its zeroing would only run at replay)."""
    key = (device.type, device.index)
    buf = _COUNTERS.get(key)
    if buf is not None and buf.numel() >= n:
        return buf
    if device.type == "cuda" and torch.cuda.is_current_stream_capturing():
        return None
    if buf is not None:
        _RETIRED_COUNTERS.append(buf)
    buf = _COUNTERS[key] = torch.zeros(max(n, 1 << 14), dtype=torch.int32, device=device)
    return buf


def paged_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    seq_lens: torch.Tensor,
    context_lens: torch.Tensor,
    scale: float,
    max_seq_len: int,
    max_context_len: int,
    *,
    num_splits: int | None = None,
    decode_tail: int = 0,
    window: int = 0,
    softcap: float = 0.0,
    k_scale: torch.Tensor | None = None,
    v_scale: torch.Tensor | None = None,
    sinks: int = 0,
    alibi_slopes: torch.Tensor | None = None,
) -> torch.Tensor:
    """Causal attention of packed queries q `[T, H, D]` over the paged cache; returns `[T, H, D]`.
    `window` > 0: each query sees only the last `window` keys up to its own position (sliding window).
    `sinks` > 0 (with a window; nothing to do without one): the first `sinks` keys stay visible too, so a
    query at position p sees keys [0, sinks) U (p - window, p] (StreamingLLM's attention sinks).
    `softcap` > 0: scores (already scaled) become softcap * tanh(score / softcap) (Gemma-2).
    `alibi_slopes` (float32 `[H]`, one per query head): ALiBi, scores (scaled, capped) get
    + slope_h * (key position - query position).
    An int8 / float8_e4m3fn cache holds K / k_scale and V / v_scale (float32 tensors of one element, read
    on the device); a float cache has q's dtype and no scales.

    `max_seq_len` / `max_context_len` are host-side upper bounds of seq_lens / context_lens (any larger
    value is correct, e.g. a CUDA-graph bucket's). When `max_seq_len == 1` and T == B (pure generation)
    the split-KV decode kernel runs; `num_splits` overrides its split count (default: fill the GPU); a
    sequence whose context is at most SINGLE_PASS_CTX keys is one pass whatever the split count.
    `decode_tail`: how many of the last sequences have exactly one new token (a mixed step: prompts
    first, then generation rows); those go to the decode kernel too, which reads each K/V head once for
    its whole query group, where the context kernel would read it once per query head.
    The split count depends only on host values (B, Hkv, max_context_len), and each sequence cuts its
    own context into that many slices (or one) on the device, so a graph captured once stays balanced.
    No host synchronisation; safe to capture in a CUDA graph.
    """
    quant = _check_args(q, k_cache, v_cache, block_tables, seq_lens, context_lens, k_scale, v_scale)
    check_launchable(q, k_cache, v_cache, block_tables, seq_lens, context_lens)
    check(block_tables.dtype == torch.int32, "block_tables must be int32")
    check(seq_lens.dtype == torch.int32 and context_lens.dtype == torch.int32, "lens must be int32")
    check(q.stride(-1) == 1 and k_cache.stride(-1) == 1, "q and the caches must be contiguous in head_dim")
    check(k_cache.stride() == v_cache.stride(), "k_cache and v_cache must share strides")
    check(block_tables.stride(-1) == 1, "block_tables must be contiguous in its last dim")
    T = q.shape[0]
    B = block_tables.shape[0]
    check(0 <= decode_tail <= min(B, T), "decode_tail {} out of range for {} sequences", decode_tail, B)
    check(window >= 0, "window must be >= 0 (0: none), got {}", window)
    check(softcap >= 0, "softcap must be >= 0 (0: none), got {}", softcap)
    check(sinks >= 0, "sinks must be >= 0 (0: none), got {}", sinks)
    sinks = sinks if window else 0  # every key is visible without a window
    _check_alibi(alibi_slopes, q)
    out = torch.empty_like(q, memory_format=torch.contiguous_format)
    if T == 0 or B == 0:
        return out
    # the scale pointers; unread by a float cache's kernels (KV_QUANT off), which get the caches instead
    scales = (k_scale, v_scale) if quant else (k_cache, v_cache)
    alibi = alibi_slopes
    if max_seq_len == 1 and T == B:
        _decode(q, out, block_tables, context_lens, k_cache, v_cache, scale, max_context_len, num_splits, window,
                softcap, scales, sinks, alibi)  # fmt: skip
    elif 0 < decode_tail < B:
        # Packed rows: the prompts' tokens [0, Tp), then one row per generation sequence [Tp, T).
        Bp, Tp = B - decode_tail, T - decode_tail
        _context(q[:Tp], out[:Tp], block_tables[:Bp], seq_lens[:Bp], context_lens[:Bp], k_cache, v_cache, scale,
                 max_seq_len, window, softcap, scales, sinks, alibi)  # fmt: skip
        _decode(q[Tp:], out[Tp:], block_tables[Bp:], context_lens[Bp:], k_cache, v_cache, scale, max_context_len,
                num_splits, window, softcap, scales, sinks, alibi)  # fmt: skip
    else:
        _context(q, out, block_tables, seq_lens, context_lens, k_cache, v_cache, scale, max_seq_len, window, softcap,
                 scales, sinks, alibi)  # fmt: skip
    return out


def _check_alibi(alibi_slopes: torch.Tensor | None, q: torch.Tensor) -> None:
    if alibi_slopes is not None:
        check(
            alibi_slopes.shape == (q.shape[1],) and alibi_slopes.dtype == torch.float32,
            "alibi_slopes must be float32 [H={}], got {} {}", q.shape[1], alibi_slopes.dtype, tuple(alibi_slopes.shape),
        )  # fmt: skip
        check(
            alibi_slopes.device == q.device and alibi_slopes.stride(0) == 1,
            "alibi_slopes must be contiguous and on q's device",
        )


def alibi_slopes(num_heads: int, alibi_bias_max: float = 8.0) -> torch.Tensor:
    """ALiBi's slope of each of `num_heads` heads, float32 [num_heads], as MPT computes them (Hugging Face's
    `build_mpt_alibi_tensor`): 2^(-alibi_bias_max * i / n) for i = 1..n, n the next power of two; with fewer
    heads than n, the odd-indexed slopes then the even-indexed ones, the first num_heads of them. With
    alibi_bias_max 8 these are BLOOM's (`build_alibi_tensor`) for any head count. A tensor-parallel rank
    takes the slice of its own heads."""
    n = 2 ** math.ceil(math.log2(num_heads))
    slopes = 1.0 / torch.pow(2, torch.arange(1, n + 1, dtype=torch.float32) * (alibi_bias_max / n))
    if n != num_heads:
        slopes = torch.cat([slopes[1::2], slopes[::2]])[:num_heads]
    return slopes.contiguous()


def _strides(q: torch.Tensor, out: torch.Tensor, k_cache: torch.Tensor, block_tables: torch.Tensor) -> tuple:
    return (
        q.stride(0), q.stride(1), out.stride(0), out.stride(1),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2), block_tables.stride(0),
    )  # fmt: skip


def _precision(dtype: torch.dtype) -> str:
    return "ieee" if dtype == torch.float32 else "tf32"  # fp32 caches: no TF32 rounding


def _decode(
    q: torch.Tensor,
    out: torch.Tensor,
    block_tables: torch.Tensor,
    context_lens: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    scale: float,
    max_context_len: int,
    num_splits: int | None,
    window: int = 0,
    softcap: float = 0.0,
    scales: tuple[torch.Tensor, torch.Tensor] | None = None,
    sinks: int = 0,
    alibi: torch.Tensor | None = None,
) -> None:
    """One query token per sequence: q, out `[B, H, D]` (views of the packed rows). `scales`: (k_scale,
    v_scale) of a quantized cache (anything for a float one). `sinks` only with a window."""
    B, H, D = q.shape
    Hkv, tpb = k_cache.shape[2], k_cache.shape[1]
    group = H // Hkv
    quant = k_cache.dtype in _QUANT_DTYPES
    cfg = decode_config(k_cache.dtype) if q.is_cuda else INTERPRET_DECODE_CONFIG
    block_n = cfg["BLOCK_N"]
    single_pass_ctx = cfg.get("SINGLE_PASS_CTX", DECODE_SINGLE_PASS_CTX)
    if window:  # keys walked per sequence: the window, widened to whole tiles (see _window_start), and
        # the tiles of the sinks
        max_context_len = min(max_context_len, window + block_n - 1 + math.ceil(sinks / block_n) * block_n)
    splits = num_splits or (
        1 if max_context_len <= single_pass_ctx else _default_num_splits(B, Hkv, max_context_len, block_n, q.device)
    )
    counters = _merge_counters(q.device, B * Hkv) if splits > 1 and cfg.get("FUSED_MERGE", True) else None
    fused = counters is not None
    part_o = part_ml = out  # unused when every sequence is one slice
    if splits > 1:
        part_o = torch.empty(B, H, splits, D, dtype=torch.float32, device=q.device)
        part_ml = torch.empty(B, H, splits, 2, dtype=torch.float32, device=q.device)
    block_d = max(16, next_pow2(D))
    block_gm = next_pow2(group)
    block_s = min(next_pow2(splits), max(1, MERGE_TILE // (block_gm * block_d)))
    _decode_attention_kernel[(B, Hkv, splits)](
        q, k_cache, v_cache, out, part_o, part_ml, counters if fused else out, block_tables, context_lens,
        *(scales or (k_cache, v_cache)), k_cache if alibi is None else alibi,
        *_strides(q, out, k_cache, block_tables), scale * LOG2E, D, H, Hkv, single_pass_ctx, window,
        softcap * LOG2E, sinks,
        GROUP=group, BLOCK_G=max(16, next_pow2(group)), TOKENS_PER_BLOCK=tpb, BLOCK_N=block_n, BLOCK_D=block_d,
        FUSED_MERGE=fused, BLOCK_GM=block_gm, BLOCK_S=block_s, DOT_PRECISION=_precision(q.dtype),
        TILE_IN_BLOCK=cfg.get("TILE_IN_BLOCK", True) and tpb % block_n == 0, SLIDING_WINDOW=window > 0,
        SOFTCAP=softcap > 0, KV_QUANT=quant, SINKS=sinks > 0, ALIBI=alibi is not None,
        SWAP_AB=cfg.get("SWAP_AB", False), num_warps=cfg["num_warps"], num_stages=cfg["num_stages"],
    )  # fmt: skip
    if splits > 1 and not fused:
        _decode_reduce_kernel[(B, Hkv)](
            part_o, part_ml, out, context_lens, out.stride(0), out.stride(1), H, splits, D, single_pass_ctx, window,
            sinks, GROUP=group, BLOCK_N=block_n, BLOCK_GM=block_gm, BLOCK_S=block_s, BLOCK_D=block_d,
            SLIDING_WINDOW=window > 0, SINKS=sinks > 0,
        )  # fmt: skip


def _context(
    q: torch.Tensor,
    out: torch.Tensor,
    block_tables: torch.Tensor,
    seq_lens: torch.Tensor,
    context_lens: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    scale: float,
    max_seq_len: int,
    window: int = 0,
    softcap: float = 0.0,
    scales: tuple[torch.Tensor, torch.Tensor] | None = None,
    sinks: int = 0,
    alibi: torch.Tensor | None = None,
) -> None:
    """Packed queries of any lengths: q, out `[T, H, D]`. `scales`, `sinks` as for `_decode`."""
    H, D = q.shape[1], q.shape[2]
    B, Hkv, tpb = block_tables.shape[0], k_cache.shape[2], k_cache.shape[1]
    cfg = CONTEXT_CONFIG if q.is_cuda else INTERPRET_CONTEXT_CONFIG
    block_m = min(cfg["BLOCK_M"], max(16, next_pow2(max_seq_len)))  # short prompts: smaller tiles
    block_n = cfg["BLOCK_N"]
    q_start = torch.cumsum(seq_lens, 0, dtype=torch.int32) - seq_lens  # [B], no host sync
    grid = (math.ceil(max_seq_len / block_m), B, H)
    _context_attention_kernel[grid](
        q, k_cache, v_cache, out, block_tables, seq_lens, context_lens, q_start, *(scales or (k_cache, v_cache)),
        k_cache if alibi is None else alibi, *_strides(q, out, k_cache, block_tables), scale * LOG2E, D, window,
        softcap * LOG2E, sinks,
        GROUP=H // Hkv, TOKENS_PER_BLOCK=tpb, BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_D=max(16, next_pow2(D)),
        DOT_PRECISION=_precision(q.dtype), TILE_IN_BLOCK=cfg.get("TILE_IN_BLOCK", True) and tpb % block_n == 0,
        SPLIT_CAUSAL=cfg.get("SPLIT_CAUSAL", True) and not window, SLIDING_WINDOW=window > 0, SOFTCAP=softcap > 0,
        KV_QUANT=k_cache.dtype in _QUANT_DTYPES, SINKS=sinks > 0, ALIBI=alibi is not None,
        num_warps=cfg["num_warps"], num_stages=cfg["num_stages"],
    )  # fmt: skip


def paged_attention_ref(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    seq_lens: torch.Tensor,
    context_lens: torch.Tensor,
    scale: float,
    max_seq_len: int = 0,
    max_context_len: int = 0,
    window: int = 0,
    softcap: float = 0.0,
    k_scale: torch.Tensor | None = None,
    v_scale: torch.Tensor | None = None,
    sinks: int = 0,
    alibi_slopes: torch.Tensor | None = None,
) -> torch.Tensor:
    """PyTorch reference of `paged_attention`: a loop over sequences, gathering K/V from the block table
    (a quantized cache's values times k_scale / v_scale, in fp32).

    The maxima are accepted for signature parity and ignored. It reads the lengths on the host.
    """
    quant = _check_args(q, k_cache, v_cache, block_tables, seq_lens, context_lens, k_scale, v_scale)
    _check_alibi(alibi_slopes, q)
    T, H, D = q.shape
    tpb, Hkv = k_cache.shape[1], k_cache.shape[2]
    out = torch.empty_like(q)
    start = 0
    for b, (n, ctx) in enumerate(zip(seq_lens.tolist(), context_lens.tolist(), strict=True)):
        pos = torch.arange(ctx, device=q.device)  # key positions
        blocks, rows = block_tables[b, pos // tpb].long(), pos % tpb
        k, v = k_cache[blocks, rows].float(), v_cache[blocks, rows].float()  # [ctx, Hkv, D]
        if quant:
            k, v = k * k_scale, v * v_scale
        k = k.repeat_interleave(H // Hkv, dim=1)  # [ctx, H, D]
        v = v.repeat_interleave(H // Hkv, dim=1)
        s = torch.einsum("qhd,khd->hqk", q[start : start + n].float(), k) * scale  # [H, n, ctx]
        if softcap:
            s = softcap * torch.tanh(s / softcap)
        q_pos = ctx - n + torch.arange(n, device=q.device)
        if alibi_slopes is not None:
            s = s + alibi_slopes[:, None, None] * (pos[None, :] - q_pos[:, None])[None].float()
        hidden = pos[None, :] > q_pos[:, None]  # [n, ctx]
        if window:  # before the window, except the sinks
            hidden |= (pos[None, :] <= q_pos[:, None] - window) & (pos >= sinks)[None, :]
        s = s.masked_fill(hidden[None], float("-inf"))
        out[start : start + n] = torch.einsum("hqk,khd->qhd", s.softmax(-1), v).to(q.dtype)
        start += n
    return out
