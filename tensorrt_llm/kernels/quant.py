"""Quantized linear layers: build-time quantizers, weight-only int8 / int4 GEMM+GEMV, FP8 helpers.

Layouts (the engine stores exactly these; `tensorrt_llm.quantization` names the tensors):

    int8 (W8A16)     qweight int8 [N, K]         scale float32 [N]          w[n, k] = q[n, k] * scale[n]
    int4 (W4A16)     qweight uint8 [N, K/2]      scale float16 [K/g, N]     w[n, k] = (q[n, k] - 8) * scale[k/g, n]
    int4 + zero      qweight uint8 [N, K/2]      scale, zero float16 [K/g, N]   w[n, k] = q[n, k] * scale - zero
    fp8 (e4m3)       qweight float8_e4m3fn [N,K] scale float32 [] or [N]  w[n, k] = q[n, k] * scale

int4 nibble order (`pack_int4`): byte j of row n holds column 2j in its LOW nibble and column 2j+1 in
its HIGH nibble: packed[n, j] = q[n, 2j] | q[n, 2j+1] << 4, q in 0..15. It is the order GPTQ's int32
words have byte by byte (little endian, lower k in lower bits), and it is independent of any block size,
so the tl.dot path unpacks a tile of BLOCK_K/2 bytes with two masks and one interleave (`tl.join` +
reshape), and the word GEMV finds column 8j + p in bits 4p..4p+3 of int32 word j.
Scales are [K/g, N] (a group's scales contiguous along N) so a tile of BLOCK_N output channels loads its
scale (and zero) row with one coalesced load.

`weight_only_linear` (and `fp8_weight_gemv`) run one of three kernels. Decode at small batch is bandwidth
bound: each byte of W is read once, dequantized in registers, while the few x rows are reused.

  * M <= 4, weight rows of whole int32 words (int8 / e4m3: K % 4 == 0 and 4-byte aligned rows; int4:
    always): `_wo_gemv_kernel`, the word GEMV. It reads W as int32 words, every load a 16-byte vector of
    4 words (cp.async-pipelined over K, `num_stages`), and unpacks byte / nibble i of word j, which meets
    x[4j + i] (int4: x[8j + i]), with integer ops: int8 and int4 bits ORed into the mantissa of 2^23 and
    one FMA (no int->float conversion, a quarter-rate unit), e4m3 bits moved into a float32 (times
    2^-120, undone exactly by powers of two on x and the sum). x (float16 / bfloat16) is read as int64
    words of 4 values. Each thread keeps a float32 accumulator per word and x row, reduced once after
    the K loop; the M rows reuse the unpacked words (no [M, N, K] broadcast). When N gives fewer tiles
    than SMs, K is split and a second pass adds the float32 partials.
  * other M <= 4 (K % 4 != 0, misaligned rows): the GEMV path of `_quant_linear_kernel` (element loads).
  * M > 4: `_quant_linear_kernel` with tl.dot tiles.

All accumulate in float32 and apply scales to the accumulator rather than to every weight: int8's /
e4m3's per-channel scale once at the end, int4's group scale once per word (word GEMV) or K tile,
with zero points via sum_k x (q s - z) = s (x . q) - z sum_k x. The integer weights (-8..15,
-128..127) and e4m3 values are exact in float16 and bfloat16, so the products fed to tl.dot are the
exact products of the stored values.

Launch configs are fixed by (kind, M) (no autotune, no host sync, only y allocated, plus the float32
partials of a K split: CUDA-graph safe). They are reasoned for Hopper, not measured: retune on the
target GPU before trusting them for speed (`config` overrides them).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ._common import HAS_TRITON, check, check_launchable, num_sms

FP8_MAX = 448.0  # largest finite float8_e4m3fn
# an all-zero row / matrix / group would otherwise get scale 0 and 0/0 = NaN
_MIN_AMAX = 1e-12
GEMV_MAX_M = 4
_Q_INT8, _Q_INT4, _Q_FP8 = 0, 1, 2
# GEMV path, (BLOCK_N, BLOCK_K, num_warps, num_stages) by BLOCK_M: float16 gemv's best H100 configs
# (gemv.GEMV_CONFIG) for 1-byte weights; for int4 BLOCK_K is set by the group size and BLOCK_N scaled to
# keep the tile (BLOCK_N * BLOCK_K elements) the same size
_GEMV_CONFIG = {1: (4, 512, 4, 3), 2: (8, 512, 4, 3), 4: (8, 512, 4, 4)}
_GEMV_MAX_BLOCK_K = 512
_GEMM_MAX_BLOCK_K = 64
# word GEMV (`_wo_gemv_kernel`, M <= 4): (BLOCK_N, BLOCK_K, num_warps, num_stages) by (kind, M), kind
# "byte" (int8, fp8) or "int4". BLOCK_K counts weight columns (4 per int32 word, int4 8): 512 bytes of a
# row per K step. With 4 warps each thread then holds 4 rows x 16 bytes, sharing each x value over 4 rows
# (M = 4 int4: 2 rows, for registers). Chosen on the H200 from the compiled code (sm_90 SASS: ~4.8
# instructions per weight byte for int8 / e4m3 at M = 1, ~8.1 for int4; 72-168 registers), not from
# timings: sweep them. `_word_gemv_config` then halves BLOCK_N while that leaves too few programs to fill
# the SMs, and splits K when even the smallest tile does.
_WORD_GEMV_CONFIG = {
    ("byte", 1): (16, 512, 4, 4),
    ("byte", 2): (16, 512, 4, 4),
    ("byte", 3): (16, 512, 4, 4),
    ("byte", 4): (16, 512, 4, 4),
    ("int4", 1): (16, 1024, 4, 4),
    ("int4", 2): (16, 1024, 4, 4),
    ("int4", 3): (16, 1024, 4, 4),
    ("int4", 4): (8, 1024, 4, 4),
}
_SPLITK_REDUCE_BLOCK = 1024
# float32 2^23's bits, passed to the word GEMV at run time (a register, not an immediate: see _unpack_words)
_MAGIC = 0x4B000000

if HAS_TRITON:
    import triton
    import triton.language as tl

    @triton.jit
    def _quant_linear_kernel(
        x_ptr, w_ptr, s_ptr, z_ptr, b_ptr, y_ptr, M, N, K,
        stride_xm, stride_wn, stride_ym, stride_sg, stride_sn,
        QUANT: tl.constexpr, GROUP: tl.constexpr, HAS_ZERO: tl.constexpr, HAS_BIAS: tl.constexpr,
        USE_DOT: tl.constexpr, DOT_PRECISION: tl.constexpr, EVEN_K: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    ):  # fmt: skip
        # grid (M tiles, N tiles); the GEMV path has one M tile holding all (<= 4) rows
        pid_m = tl.program_id(0)
        pid_n = tl.program_id(1)
        offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        m_mask = offs_m < M
        n_mask = offs_n < N
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for k0 in range(0, K, BLOCK_K):
            offs_k = k0 + tl.arange(0, BLOCK_K)
            x_ptrs = x_ptr + offs_m[:, None] * stride_xm + offs_k[None, :]  # [BLOCK_M, BLOCK_K]
            if EVEN_K:  # no K mask: loads vectorize fully (always so for int4)
                x = tl.load(x_ptrs, mask=m_mask[:, None], other=0.0)
            else:
                x = tl.load(x_ptrs, mask=m_mask[:, None] & (offs_k < K)[None, :], other=0.0)
            if QUANT == 1 and not USE_DOT:
                # GEMV: no interleave (a layout shuffle through shared memory): the low nibbles (even
                # columns) meet the even entries of x, the high nibbles the odd ones
                offs_kp = k0 // 2 + tl.arange(0, BLOCK_K // 2)
                p = tl.load(w_ptr + offs_n[:, None] * stride_wn + offs_kp[None, :], mask=n_mask[:, None], other=0)
                lo = (p & 0xF).to(tl.float32)
                hi = (p >> 4).to(tl.float32)
                if not HAS_ZERO:
                    lo -= 8.0
                    hi -= 8.0
                x_even = tl.load(
                    x_ptr + offs_m[:, None] * stride_xm + 2 * offs_kp[None, :], mask=m_mask[:, None], other=0.0
                )
                x_odd = tl.load(
                    x_ptr + offs_m[:, None] * stride_xm + 2 * offs_kp[None, :] + 1, mask=m_mask[:, None], other=0.0
                )
                x_even = x_even.to(tl.float32)
                x_odd = x_odd.to(tl.float32)
                # [BLOCK_M, 1, BLOCK_K/2] * [1, BLOCK_N, BLOCK_K/2] summed over K, both halves
                part = tl.sum(x_even[:, None, :] * lo[None, :, :] + x_odd[:, None, :] * hi[None, :, :], axis=2)
                w = lo  # (unused below on this path)
            elif QUANT == 1:
                # BLOCK_K / 2 bytes per row; low nibble = even column, high = odd: interleave back
                offs_kp = k0 // 2 + tl.arange(0, BLOCK_K // 2)
                p = tl.load(w_ptr + offs_n[:, None] * stride_wn + offs_kp[None, :], mask=n_mask[:, None], other=0)
                q = tl.join(p & 0xF, p >> 4).reshape(BLOCK_N, BLOCK_K)
                if HAS_ZERO:
                    w = q.to(tl.float32)  # 0..15, the zero point is applied to the accumulator
                else:
                    w = q.to(tl.float32) - 8.0  # -8..7
            else:
                w_ptrs = w_ptr + offs_n[:, None] * stride_wn + offs_k[None, :]
                if EVEN_K:
                    w = tl.load(w_ptrs, mask=n_mask[:, None], other=0.0)
                else:
                    w = tl.load(w_ptrs, mask=n_mask[:, None] & (offs_k < K)[None, :], other=0.0)
            if USE_DOT:
                # exact in x's dtype (small integers / e4m3 values): tensor cores see the stored values
                part = tl.dot(x, tl.trans(w.to(x.dtype)), input_precision=DOT_PRECISION)
            elif QUANT == 1:
                pass  # computed above
            else:
                # [BLOCK_M, 1, BLOCK_K] * [1, BLOCK_N, BLOCK_K] summed over K, as gemv.py
                part = tl.sum(x.to(tl.float32)[:, None, :] * w.to(tl.float32)[None, :, :], axis=2)
            if QUANT == 1:
                # the whole tile lies in group k0 // GROUP (BLOCK_K divides GROUP)
                s_off = (k0 // GROUP) * stride_sg + offs_n * stride_sn
                s = tl.load(s_ptr + s_off, mask=n_mask, other=0.0).to(tl.float32)
                if HAS_ZERO:
                    z = tl.load(z_ptr + s_off, mask=n_mask, other=0.0).to(tl.float32)
                    x_sum = tl.sum(x.to(tl.float32), axis=1)
                    acc += part * s[None, :] - x_sum[:, None] * z[None, :]
                else:
                    acc += part * s[None, :]
            else:
                acc += part
        if QUANT != 1:  # per-channel scale (stride 0: per-tensor) once, on the accumulator
            s = tl.load(s_ptr + offs_n * stride_sn, mask=n_mask, other=0.0).to(tl.float32)
            acc = acc * s[None, :]
        if HAS_BIAS:
            acc += tl.load(b_ptr + offs_n, mask=n_mask, other=0.0).to(tl.float32)[None, :]
        y_ptrs = y_ptr + offs_m[:, None] * stride_ym + offs_n[None, :]
        tl.store(y_ptrs, acc.to(y_ptr.dtype.element_ty), mask=m_mask[:, None] & n_mask[None, :])

    @triton.jit
    def _quant_fp8_rows_kernel(
        x_ptr, q_ptr, s_ptr, K, stride_xm, stride_qm, DYNAMIC: tl.constexpr, MIN_AMAX: tl.constexpr,
        EXACT_CAST: tl.constexpr, BLOCK_K: tl.constexpr,
    ):  # fmt: skip
        # one program per row; dynamic: pass 1 finds the row's amax, pass 2 (from L2) writes e4m3
        row = tl.program_id(0).to(tl.int64)
        x_row = x_ptr + row * stride_xm
        if DYNAMIC:
            amax = tl.zeros((BLOCK_K,), dtype=tl.float32)
            for k0 in range(0, K, BLOCK_K):
                offs = k0 + tl.arange(0, BLOCK_K)
                x = tl.load(x_row + offs, mask=offs < K, other=0.0).to(tl.float32)
                amax = tl.maximum(amax, tl.abs(x))
            # multiply by the float32 constant 1/448, as the reference does: same rounding
            scale = tl.maximum(tl.max(amax, axis=0), MIN_AMAX) * (1.0 / 448.0)
            tl.store(s_ptr + row, scale)
        else:
            scale = tl.load(s_ptr).to(tl.float32)
        for k0 in range(0, K, BLOCK_K):
            offs = k0 + tl.arange(0, BLOCK_K)
            mask = offs < K
            x = tl.load(x_row + offs, mask=mask, other=0.0).to(tl.float32)
            # correctly rounded division (not the fast approximate one): matches torch's x / scale
            v = tl.minimum(tl.maximum(tl.math.div_rn(x, scale), -448.0), 448.0)
            if EXACT_CAST:
                # round to e4m3's grid in float32 (round half to even) so that the cast below is exact:
                # the interpreter's float->fp8 cast rounds wrongly (-31.9 -> -16); the GPU's cvt is right.
                # grid step = 2^(exponent - 3), and 2^-9 below e4m3's smallest normal 2^-6
                e = (v.to(tl.int32, bitcast=True) >> 23) & 0xFF
                step = ((tl.maximum(e, 127 - 6) - 3) << 23).to(tl.float32, bitcast=True)
                # |v / step| < 16: adding and removing 1.5 * 2^23 rounds it to an integer, half to even
                v = ((v / step + 12582912.0) - 12582912.0) * step
            tl.store(q_ptr + row * stride_qm + offs, v.to(q_ptr.dtype.element_ty), mask=mask)

    # ------------------------------------------------------------ GEMV on 32-bit weight words (M <= 4)

    @triton.jit
    def _x_quad(xw, X_BF16: tl.constexpr):
        # one int64 word of x = 4 float16 / bfloat16 values x[4j .. 4j+3] -> 4 float32
        lo = xw.to(tl.int32)
        hi = (xw >> 32).to(tl.int32)
        if X_BF16:  # bfloat16 is the top half of a float32
            x0 = (lo << 16).to(tl.float32, bitcast=True)
            x1 = (lo & -65536).to(tl.float32, bitcast=True)
            x2 = (hi << 16).to(tl.float32, bitcast=True)
            x3 = (hi & -65536).to(tl.float32, bitcast=True)
        else:
            x0 = lo.to(tl.int16).to(tl.float16, bitcast=True).to(tl.float32)
            x1 = (lo >> 16).to(tl.int16).to(tl.float16, bitcast=True).to(tl.float32)
            x2 = hi.to(tl.int16).to(tl.float16, bitcast=True).to(tl.float32)
            x3 = (hi >> 16).to(tl.int16).to(tl.float16, bitcast=True).to(tl.float32)
        return x0, x1, x2, x3

    @triton.jit
    def _x_of_words(x_row, kw, k_mask, PER_WORD: tl.constexpr, X_MODE: tl.constexpr, EVEN: tl.constexpr):
        # x[PER_WORD * j + i] (i < PER_WORD = 4 or 8) for the weight words j = kw [BLOCK_KW], float32.
        # X_MODE 0: x in its own dtype, PER_WORD strided loads; 1 / 2: x float16 / bfloat16 read as int64
        # words (4 values each), one vector load, unpacked in registers. Masked entries (k_mask; modes
        # 1 / 2 only when not EVEN) are 0.
        if X_MODE == 0:  # (float32 x, or x not 8-byte aligned: not the fast path)
            base = x_row + PER_WORD * kw
            x0 = tl.load(base, mask=k_mask, other=0.0).to(tl.float32)
            x1 = tl.load(base + 1, mask=k_mask, other=0.0).to(tl.float32)
            x2 = tl.load(base + 2, mask=k_mask, other=0.0).to(tl.float32)
            x3 = tl.load(base + 3, mask=k_mask, other=0.0).to(tl.float32)
            if PER_WORD == 8:
                x4 = tl.load(base + 4, mask=k_mask, other=0.0).to(tl.float32)
                x5 = tl.load(base + 5, mask=k_mask, other=0.0).to(tl.float32)
                x6 = tl.load(base + 6, mask=k_mask, other=0.0).to(tl.float32)
                x7 = tl.load(base + 7, mask=k_mask, other=0.0).to(tl.float32)
            else:
                x4, x5, x6, x7 = x0, x1, x2, x3  # (unused)
        elif PER_WORD == 4:
            if EVEN:
                xw = tl.load(x_row + kw, eviction_policy="evict_last")
            else:
                xw = tl.load(x_row + kw, mask=k_mask, other=0, eviction_policy="evict_last")
            x0, x1, x2, x3 = _x_quad(xw, X_MODE == 2)
            x4, x5, x6, x7 = x0, x1, x2, x3  # (unused)
        else:  # two int64 words of x per weight word: one [BLOCK_KW, 2] load, split in registers
            x_pairs = x_row + 2 * kw[:, None] + tl.arange(0, 2)[None, :]
            if EVEN:
                xw2 = tl.load(x_pairs, eviction_policy="evict_last")
            else:
                xw2 = tl.load(x_pairs, mask=k_mask[:, None], other=0, eviction_policy="evict_last")
            xa, xb = tl.split(xw2)
            x0, x1, x2, x3 = _x_quad(xa, X_MODE == 2)
            x4, x5, x6, x7 = _x_quad(xb, X_MODE == 2)
        return x0, x1, x2, x3, x4, x5, x6, x7

    @triton.jit
    def _finish_row(
        acc, row, offs_n, n_mask, s_ptr, b_ptr, y_ptr, p_ptr, pid_k, M, N, stride_sn, stride_ym,
        QUANT: tl.constexpr, HAS_BIAS: tl.constexpr, SPLIT_K: tl.constexpr,
    ):  # fmt: skip
        r = tl.sum(acc, axis=1)  # the one reduction over K: [BLOCK_N]
        if QUANT != 1:  # per-channel (stride 0: per-tensor) scale; an e4m3 sum carries a factor 2^-80
            s = tl.load(s_ptr + offs_n * stride_sn, mask=n_mask, other=0.0).to(tl.float32)
            if QUANT == 2:
                r = r * 1.2089258196146292e24  # 2^80, exact
            r = r * s
        if SPLIT_K == 1:
            if HAS_BIAS:
                r += tl.load(b_ptr + offs_n, mask=n_mask, other=0.0).to(tl.float32)
            tl.store(y_ptr + row * stride_ym + offs_n, r.to(y_ptr.dtype.element_ty), mask=n_mask)
        else:  # float32 partial sums [SPLIT_K, M, N], added up (and the bias) by _splitk_reduce_kernel
            tl.store(p_ptr + (pid_k * M + row) * N + offs_n, r, mask=n_mask)

    @triton.jit
    def _unpack_words(wv, magic, QUANT: tl.constexpr, HAS_ZERO: tl.constexpr):
        # int32 weight words -> the stored values as exact float32, one tensor per byte / nibble position,
        # without int->float conversions (a quarter-rate unit). int8 / int4: the bits ORed into the
        # mantissa of 2^23 (`magic` = 0x4B000000, a run-time value so that AND and OR fuse into one LOP3),
        # then one FMA removes 2^23 and the bits' position. e4m3: its bits moved into place.
        if QUANT == 0:
            # int8: byte + 128 (XOR 0x80) is unsigned
            u = wv ^ -2139062144  # 0x80808080
            uh = u >> 16
            f0 = ((u & 0xFF) | magic).to(tl.float32, bitcast=True) - 8388736.0  # 2^23 + 128
            f1 = ((u & 0xFF00) | magic).to(tl.float32, bitcast=True) * 0.00390625 - 32896.0  # / 256 - (2^15 + 128)
            f2 = ((uh & 0xFF) | magic).to(tl.float32, bitcast=True) - 8388736.0
            f3 = ((uh & 0xFF00) | magic).to(tl.float32, bitcast=True) * 0.00390625 - 32896.0
            f4, f5, f6, f7 = f0, f1, f2, f3  # (unused)
        elif QUANT == 2:
            # e4m3 s.eeee.mmm -> float32 bits s.000eeee.mmm0..0 = value * 2^-120 (e4m3 subnormals become
            # float32 subnormals: exact, FMA keeps them): the byte's sign to bit 31, an arithmetic shift
            # by 4 and one mask. (0x7F / 0xFF, e4m3fn's NaN, would read as 480: quantize_fp8 never writes it)
            f0 = (((wv << 24) >> 4) & -2014314496).to(tl.float32, bitcast=True)  # 0x87F00000
            f1 = (((wv << 16) >> 4) & -2014314496).to(tl.float32, bitcast=True)
            f2 = (((wv << 8) >> 4) & -2014314496).to(tl.float32, bitcast=True)
            f3 = ((wv >> 4) & -2014314496).to(tl.float32, bitcast=True)
            f4, f5, f6, f7 = f0, f1, f2, f3  # (unused)
        else:
            # int4: nibble p at bits 4p; nibbles 0-4 from the word, 5-7 from the word >> 12 (bit 23 is the
            # exponent's); q - 8 (symmetric) or q (with zero points)
            OFF: tl.constexpr = 0.0 if HAS_ZERO else 8.0
            wh = wv >> 12
            f0 = ((wv & 0xF) | magic).to(tl.float32, bitcast=True) - (8388608.0 + OFF)
            f1 = ((wv & 0xF0) | magic).to(tl.float32, bitcast=True) * 0.0625 - (524288.0 + OFF)
            f2 = ((wv & 0xF00) | magic).to(tl.float32, bitcast=True) * 0.00390625 - (32768.0 + OFF)
            f3 = ((wv & 0xF000) | magic).to(tl.float32, bitcast=True) * 0.000244140625 - (2048.0 + OFF)
            f4 = ((wv & 0xF0000) | magic).to(tl.float32, bitcast=True) * 0.0000152587890625 - (128.0 + OFF)
            f5 = ((wh & 0xF00) | magic).to(tl.float32, bitcast=True) * 0.00390625 - (32768.0 + OFF)
            f6 = ((wh & 0xF000) | magic).to(tl.float32, bitcast=True) * 0.000244140625 - (2048.0 + OFF)
            f7 = ((wh & 0xF0000) | magic).to(tl.float32, bitcast=True) * 0.0000152587890625 - (128.0 + OFF)
        return f0, f1, f2, f3, f4, f5, f6, f7

    @triton.jit
    def _dot_words(acc, f0, f1, f2, f3, f4, f5, f6, f7, x0, x1, x2, x3, x4, x5, x6, x7, s, z,
                   QUANT: tl.constexpr, HAS_ZERO: tl.constexpr):  # fmt: skip
        # acc [BLOCK_N, BLOCK_KW] += the words' dot products with x ([1, BLOCK_KW]; one FMA per weight)
        if QUANT == 1:
            d = f0 * x0 + f1 * x1 + f2 * x2 + f3 * x3
            d = d + f4 * x4 + f5 * x5 + f6 * x6 + f7 * x7
            acc = acc + s * d
            if HAS_ZERO:  # sum_k x (q s - z) = s (x . q) - z sum_k x, per word
                acc = acc - z * (((x0 + x1) + (x2 + x3)) + ((x4 + x5) + (x6 + x7)))
        else:
            acc = acc + f0 * x0 + f1 * x1 + f2 * x2 + f3 * x3
        return acc

    @triton.jit
    def _wo_gemv_kernel(
        x_ptr, w_ptr, s_ptr, z_ptr, b_ptr, y_ptr, p_ptr, M, N, KW, KW_SPLIT,
        stride_xm, stride_wn, stride_ym, stride_sg, stride_sn, magic,
        QUANT: tl.constexpr, GROUP_W: tl.constexpr, HAS_ZERO: tl.constexpr, HAS_BIAS: tl.constexpr,
        X_MODE: tl.constexpr, ROWS: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_KW: tl.constexpr,
        EVEN_KW: tl.constexpr, SPLIT_K: tl.constexpr, STAGES: tl.constexpr,
    ):  # fmt: skip
        # grid (N tiles, K splits). w_ptr: the weight as int32 words [N, KW] (4 bytes of int8 / e4m3 or
        # 8 int4 nibbles, lowest k in the lowest bits); every load is a 16-byte vector of 4 words.
        # Byte / nibble i of word j meets x[4j + i] / x[8j + i]: no interleave, one layout throughout.
        # int4: the tile's BLOCK_KW words are G groups of WG words (G = 1: BLOCK_KW divides the group).
        pid_n = tl.program_id(0)
        pid_k = tl.program_id(1)
        offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        n_mask = offs_n < N
        # rows past N re-read row N - 1 (no mask on the weight loads); their results are not stored
        w_rows = w_ptr + tl.minimum(offs_n, N - 1)[:, None] * stride_wn
        offs_j = tl.arange(0, BLOCK_KW)
        kw_lo = pid_k * KW_SPLIT
        kw_hi = tl.minimum(kw_lo + KW_SPLIT, KW)
        PER_WORD: tl.constexpr = 8 if QUANT == 1 else 4
        G: tl.constexpr = BLOCK_KW // GROUP_W if BLOCK_KW > GROUP_W else 1
        WG: tl.constexpr = BLOCK_KW // G
        # one float32 accumulator per row of x and per word of the tile: summed once, after the loop
        acc0 = tl.zeros((BLOCK_N, BLOCK_KW), dtype=tl.float32)
        acc1 = tl.zeros((BLOCK_N, BLOCK_KW), dtype=tl.float32)
        acc2 = tl.zeros((BLOCK_N, BLOCK_KW), dtype=tl.float32)
        acc3 = tl.zeros((BLOCK_N, BLOCK_KW), dtype=tl.float32)
        for kw0 in tl.range(kw_lo, kw_hi, BLOCK_KW, num_stages=STAGES):
            kw = kw0 + offs_j
            k_mask = kw < kw_hi
            if EVEN_KW:
                wv = tl.load(w_rows + kw[None, :], eviction_policy="evict_first")
            else:
                wv = tl.load(w_rows + kw[None, :], mask=k_mask[None, :], other=0, eviction_policy="evict_first")
            f0, f1, f2, f3, f4, f5, f6, f7 = _unpack_words(wv, magic, QUANT, HAS_ZERO)
            if QUANT == 1:
                # the G groups' scales (and zeros) [BLOCK_N, G], repeated over each group's WG words
                g = kw0 // GROUP_W + tl.arange(0, G)
                s_off = g[None, :] * stride_sg + offs_n[:, None] * stride_sn
                g_mask = n_mask[:, None] & (g * GROUP_W < kw_hi)[None, :]
                s = tl.load(s_ptr + s_off, mask=g_mask, other=0.0).to(tl.float32)
                s = tl.reshape(tl.broadcast_to(s[:, :, None], (BLOCK_N, G, WG)), (BLOCK_N, BLOCK_KW))
                if HAS_ZERO:
                    z = tl.load(z_ptr + s_off, mask=g_mask, other=0.0).to(tl.float32)
                    z = tl.reshape(tl.broadcast_to(z[:, :, None], (BLOCK_N, G, WG)), (BLOCK_N, BLOCK_KW))
                else:
                    z = s  # (unused)
            else:
                s = f0  # (unused)
                z = f0
            for m in tl.static_range(ROWS):
                x0, x1, x2, x3, x4, x5, x6, x7 = _x_of_words(
                    x_ptr + m * stride_xm, kw, k_mask, PER_WORD, X_MODE, EVEN_KW
                )
                if QUANT == 2:  # the e4m3 words carry 2^-120: x * 2^40, the sum * 2^80
                    x0 = x0 * 1099511627776.0
                    x1 = x1 * 1099511627776.0
                    x2 = x2 * 1099511627776.0
                    x3 = x3 * 1099511627776.0
                x0, x1, x2, x3 = x0[None, :], x1[None, :], x2[None, :], x3[None, :]
                x4, x5, x6, x7 = x4[None, :], x5[None, :], x6[None, :], x7[None, :]
                if m == 0:
                    acc0 = _dot_words(acc0, f0, f1, f2, f3, f4, f5, f6, f7, x0, x1, x2, x3, x4, x5, x6, x7, s, z,
                                      QUANT, HAS_ZERO)  # fmt: skip
                elif m == 1:
                    acc1 = _dot_words(acc1, f0, f1, f2, f3, f4, f5, f6, f7, x0, x1, x2, x3, x4, x5, x6, x7, s, z,
                                      QUANT, HAS_ZERO)  # fmt: skip
                elif m == 2:
                    acc2 = _dot_words(acc2, f0, f1, f2, f3, f4, f5, f6, f7, x0, x1, x2, x3, x4, x5, x6, x7, s, z,
                                      QUANT, HAS_ZERO)  # fmt: skip
                else:
                    acc3 = _dot_words(acc3, f0, f1, f2, f3, f4, f5, f6, f7, x0, x1, x2, x3, x4, x5, x6, x7, s, z,
                                      QUANT, HAS_ZERO)  # fmt: skip
        _finish_row(acc0, 0, offs_n, n_mask, s_ptr, b_ptr, y_ptr, p_ptr, pid_k, M, N, stride_sn, stride_ym,
                    QUANT, HAS_BIAS, SPLIT_K)  # fmt: skip
        if ROWS > 1:
            _finish_row(acc1, 1, offs_n, n_mask, s_ptr, b_ptr, y_ptr, p_ptr, pid_k, M, N, stride_sn, stride_ym,
                        QUANT, HAS_BIAS, SPLIT_K)  # fmt: skip
        if ROWS > 2:
            _finish_row(acc2, 2, offs_n, n_mask, s_ptr, b_ptr, y_ptr, p_ptr, pid_k, M, N, stride_sn, stride_ym,
                        QUANT, HAS_BIAS, SPLIT_K)  # fmt: skip
        if ROWS > 3:
            _finish_row(acc3, 3, offs_n, n_mask, s_ptr, b_ptr, y_ptr, p_ptr, pid_k, M, N, stride_sn, stride_ym,
                        QUANT, HAS_BIAS, SPLIT_K)  # fmt: skip

    @triton.jit
    def _splitk_reduce_kernel(p_ptr, b_ptr, y_ptr, M, N, stride_ym, HAS_BIAS: tl.constexpr, SPLIT_K: tl.constexpr,
                              BLOCK: tl.constexpr):  # fmt: skip
        # y[m, n] = sum over the K splits of the float32 partials (+ bias), in y's dtype
        offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        mask = offs < M * N
        acc = tl.load(p_ptr + offs, mask=mask, other=0.0)
        for s in tl.static_range(1, SPLIT_K):
            acc += tl.load(p_ptr + s * M * N + offs, mask=mask, other=0.0)
        n = offs % N
        if HAS_BIAS:
            acc += tl.load(b_ptr + n, mask=mask, other=0.0).to(tl.float32)
        tl.store(y_ptr + (offs // N) * stride_ym + n, acc.to(y_ptr.dtype.element_ty), mask=mask)


# ---------------------------------------------------------------- build-time quantizers (pure torch)


def quantize_int8_per_channel(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int8 per output channel: w [N, K] float -> (q int8 [N, K], scale float32 [N]).

    scale[n] = amax(|w[n]|) / 127, q = round(w / scale) in -127..127; w ~= q * scale[:, None].
    """
    check(w.dim() == 2 and w.is_floating_point(), "w must be a float [N, K], got {} {}", w.dtype, tuple(w.shape))
    wf = w.float()
    scale = wf.abs().amax(dim=1).clamp_min(_MIN_AMAX) / 127.0
    q = torch.round(wf / scale[:, None]).clamp_(-127, 127).to(torch.int8)
    return q, scale


def dequantize_int8_per_channel(
    q: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """q int8 [N, K], scale [N] -> w [N, K] in `dtype` (computed in float32)."""
    return (q.float() * scale.float()[:, None]).to(dtype)


def pack_int4(q: torch.Tensor) -> torch.Tensor:
    """q uint8 [..., K] with values 0..15 (K even) -> uint8 [..., K/2].

    Nibble order: packed[..., j] = q[..., 2j] | (q[..., 2j+1] << 4): even column in the LOW nibble,
    odd column in the HIGH nibble. Values are not range-checked (that would sync with the GPU); bits above
    the low four of `q` would corrupt the neighbour.
    """
    check(q.dtype == torch.uint8, "pack_int4: q must be uint8 (values 0..15), got {}", q.dtype)
    check(q.shape[-1] % 2 == 0, "pack_int4: last dim must be even, got {}", tuple(q.shape))
    return q[..., 0::2] | (q[..., 1::2] << 4)


def unpack_int4(packed: torch.Tensor) -> torch.Tensor:
    """Inverse of `pack_int4`: uint8 [..., K/2] -> uint8 [..., K] with values 0..15."""
    check(packed.dtype == torch.uint8, "unpack_int4: packed must be uint8, got {}", packed.dtype)
    return torch.stack((packed & 0xF, packed >> 4), dim=-1).flatten(-2)


def _groups(w: torch.Tensor, group_size: int) -> torch.Tensor:
    check(w.dim() == 2 and w.is_floating_point(), "w must be a float [N, K], got {} {}", w.dtype, tuple(w.shape))
    N, K = w.shape
    check(group_size > 0 and group_size % 2 == 0, "group_size must be positive and even, got {}", group_size)
    check(K % group_size == 0, "K={} is not a multiple of group_size {}", K, group_size)
    return w.float().view(N, K // group_size, group_size)


def _half_scale(scale: torch.Tensor) -> torch.Tensor:
    # the kernel reads float16 scales: quantize against exactly those, and never divide by a zero that
    # float16 underflow (a group of all-tiny weights) produced
    s = scale.half()
    return torch.where(s == 0, torch.ones_like(s), s)


def quantize_int4_groupwise(w: torch.Tensor, group_size: int = 128) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int4 with one scale per `group_size` columns: w [N, K] -> (packed uint8 [N, K/2],
    scale float16 [K/g, N]).

    scale = amax(|group|) / 7, q = round(w / scale) + 8 in 1..15; w ~= (q - 8) * scale, within scale/2.
    """
    g = _groups(w, group_size)  # [N, K/g, g]
    scale = _half_scale(g.abs().amax(dim=2).clamp_min(_MIN_AMAX) / 7.0)  # [N, K/g]
    q = torch.round(g / scale.float()[..., None]).clamp_(-8, 7) + 8
    return pack_int4(q.to(torch.uint8).view(w.shape)), scale.t().contiguous()


def quantize_int4_groupwise_asym(
    w: torch.Tensor, group_size: int = 128
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Asymmetric int4 (min/max per group, zero points): w [N, K] -> (packed uint8 [N, K/2],
    scale float16 [K/g, N], zero float16 [K/g, N]).

    scale = (max - min) / 15, zero = -min (rounded to float16), q = round((w + zero) / scale) in 0..15;
    w ~= q * scale - zero. (GPTQ / AWQ integer zero points z convert as zero = z * scale.)
    """
    g = _groups(w, group_size)
    lo, hi = g.amin(dim=2), g.amax(dim=2)
    scale = _half_scale((hi - lo).clamp_min(_MIN_AMAX) / 15.0)
    zero = (-lo).half()
    q = torch.round((g + zero.float()[..., None]) / scale.float()[..., None]).clamp_(0, 15)
    return pack_int4(q.to(torch.uint8).view(w.shape)), scale.t().contiguous(), zero.t().contiguous()


def dequantize_int4_groupwise(
    packed: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor | None = None, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """packed uint8 [N, K/2], scale [K/g, N] (and zero [K/g, N]) -> w [N, K] in `dtype` (float32 math).

    Without zero: w = (q - 8) * scale; with zero: w = q * scale - zero. The group size is K / scale.shape[0].
    """
    q = unpack_int4(packed).float()  # [N, K]
    N, K = q.shape
    G = scale.shape[0]
    s = scale.float().t().repeat_interleave(K // G, dim=1)  # [N, K]
    if zero is None:
        return ((q - 8.0) * s).to(dtype)
    return (q * s - zero.float().t().repeat_interleave(K // G, dim=1)).to(dtype)


def quantize_fp8(w: torch.Tensor, per_channel: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """w [N, K] -> (q float8_e4m3fn [N, K], scale float32 [] or, per channel, [N]); scale = amax / 448."""
    check(w.dim() == 2 and w.is_floating_point(), "w must be a float [N, K], got {} {}", w.dtype, tuple(w.shape))
    wf = w.float()
    amax = wf.abs().amax(dim=1) if per_channel else wf.abs().amax()
    scale = amax.clamp_min(_MIN_AMAX) * (1.0 / FP8_MAX)
    q = (wf / (scale[:, None] if per_channel else scale)).clamp_(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn)
    return q, scale


def dequantize_fp8(q: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """q float8_e4m3fn [N, K], scale [] (per tensor) or [N] / [N, 1] (per row) -> q * scale in `dtype`."""
    s = scale.float()
    if s.dim() == 1:
        s = s[:, None]
    return (q.float() * s).to(dtype)


# ---------------------------------------------------------------- weight-only linear


def _check_linear_args(x, qweight, scale, zero, bits, group_size, bias) -> None:
    check(x.dim() == 2, "x must be [M, K], got {}", tuple(x.shape))
    check(x.dtype in (torch.float16, torch.bfloat16, torch.float32), "x dtype {} not supported", x.dtype)
    M, K = x.shape
    N = qweight.shape[0]
    if bits == 8:
        check(qweight.dtype == torch.int8, "int8 weight must be int8, got {}", qweight.dtype)
        check(qweight.shape == (N, K), "int8 weight must be [N, K={}], got {}", K, tuple(qweight.shape))
        check(scale.shape == (N,), "int8 scale must be [N={}], got {}", N, tuple(scale.shape))
        check(zero is None, "int8 weights have no zero points")
    elif bits == 4:
        check(qweight.dtype == torch.uint8, "int4 weight must be packed uint8, got {}", qweight.dtype)
        check(qweight.shape == (N, K // 2), "int4 weight must be [N, K/2={}], got {}", K // 2, tuple(qweight.shape))
        check(group_size % 16 == 0, "group_size must be a multiple of 16, got {}", group_size)
        check(K % group_size == 0, "K={} is not a multiple of group_size {}", K, group_size)
        G = K // group_size
        check(scale.shape == (G, N), "int4 scale must be [K/g={}, N={}], got {}", G, N, tuple(scale.shape))
        check(
            zero is None or zero.shape == (G, N),
            "int4 zero must be [K/g, N] like scale, got {}",
            None if zero is None else tuple(zero.shape),
        )
    else:
        raise ValueError(f"bits must be 8 or 4, got {bits}")
    check(bias is None or bias.shape == (N,), "bias must be [N={}]", N)


def _block_k(group_size: int, cap: int) -> int:
    # the largest power of two <= cap that divides the group (a K tile never straddles two groups)
    return min(group_size & -group_size, cap)


def _words_ok(w: torch.Tensor) -> bool:
    """Whether the weight rows can be read as int32 words: whole words per row, 4-byte aligned."""
    row_bytes = w.shape[1]  # int8 / e4m3: K bytes; int4: K / 2 bytes
    return row_bytes % 4 == 0 and w.stride(0) % 4 == 0 and w.data_ptr() % 4 == 0


def _x_mode(x: torch.Tensor) -> int:
    """0: x read in its dtype; 1 / 2: float16 / bfloat16 x read as int64 words of 4 values."""
    if x.dtype not in (torch.float16, torch.bfloat16) or x.shape[1] % 4 or x.stride(0) % 4 or x.data_ptr() % 8:
        return 0
    return 1 if x.dtype == torch.float16 else 2


def _word_gemv_config(quant, M, N, K, group_size, device, config) -> tuple[int, int, int, int, int]:
    """-> (BLOCK_N, BLOCK_KW, num_warps, num_stages, SPLIT_K) for `_wo_gemv_kernel`."""
    per_word = 8 if quant == _Q_INT4 else 4
    kw = K // per_word
    if config is not None:
        block_m, block_n, block_k, warps, stages, *rest = config
        check(len(rest) <= 1, "config: (BLOCK_M, BLOCK_N, BLOCK_K, num_warps, num_stages[, SPLIT_K])")
        split = rest[0] if rest else 1
        check(block_m >= M, "config: BLOCK_M {} must cover M={} on the GEMV path", block_m, M)
        check(block_k % per_word == 0, "config: BLOCK_K {} must be a multiple of {}", block_k, per_word)
        check(
            quant != _Q_INT4 or group_size % block_k == 0 or block_k % group_size == 0,
            "config: BLOCK_K {} must divide the group or be a multiple of it",
            block_k,
        )
        check(split >= 1, "config: SPLIT_K must be >= 1, got {}", split)
        block_kw = block_k // per_word
    else:
        block_n, block_k, warps, stages = _WORD_GEMV_CONFIG["int4" if quant == _Q_INT4 else "byte", M]
        if quant == _Q_INT4 and block_k % group_size:  # whole groups, or a power of 2 dividing one
            block_k = _block_k(group_size, block_k)
        block_kw = min(block_k // per_word, triton.next_power_of_2(kw))  # (int4: still whole groups)
        # rows one pass of the CTA's threads covers (4 words, 16 bytes, a thread): smaller tiles replicate
        min_n = max(1, warps * 32 // max(1, block_kw // 4))
        block_n = max(block_n, min_n)
        sms = num_sms(device)
        while triton.cdiv(N, block_n) < 2 * sms and block_n > min_n:
            block_n //= 2
        # still fewer programs than SMs: split K (a second small pass adds the float32 partials)
        split = max(1, min(triton.cdiv(sms, triton.cdiv(N, block_n)), kw // (2 * block_kw)))
    check(block_kw & (block_kw - 1) == 0 and block_n & (block_n - 1) == 0, "config: blocks must be powers of 2")
    return block_n, block_kw, warps, stages, split


def _launch_word_gemv(x, w, scale, zero, bias, quant, group_size, config, y) -> torch.Tensor:
    M, K = x.shape
    N = w.shape[0]
    block_n, block_kw, warps, stages, split = _word_gemv_config(quant, M, N, K, group_size, x.device, config)
    per_word = 8 if quant == _Q_INT4 else 4
    kw = K // per_word
    # each split a whole number of tiles (int4: so the group boundaries fall between tiles or inside one)
    kw_split = triton.cdiv(triton.cdiv(kw, split), block_kw) * block_kw
    split = triton.cdiv(kw, kw_split)
    x_mode = _x_mode(x)
    xv = x.view(torch.int64) if x_mode else x
    if quant == _Q_INT4:
        stride_sg, stride_sn = scale.stride(0), scale.stride(1)
        check(zero is None or zero.stride() == scale.stride(), "int4 zero must have the strides of scale")
    else:
        stride_sg, stride_sn = 0, (scale.stride(0) if scale.dim() == 1 else 0)
    # float32 partial sums when K is split (written whole, no zeroing: CUDA-graph safe)
    part = torch.empty(split, M, N, dtype=torch.float32, device=x.device) if split > 1 else y
    _wo_gemv_kernel[(triton.cdiv(N, block_n), split)](
        xv, w.view(torch.int32), scale, zero if zero is not None else scale, bias if bias is not None else scale,
        y, part, M, N, kw, kw_split, xv.stride(0), w.stride(0) // 4, y.stride(0), stride_sg, stride_sn, _MAGIC,
        QUANT=quant, GROUP_W=group_size // 8 if quant == _Q_INT4 else 1, HAS_ZERO=zero is not None,
        HAS_BIAS=bias is not None, X_MODE=x_mode, ROWS=M, BLOCK_N=block_n, BLOCK_KW=block_kw,
        EVEN_KW=kw % block_kw == 0, SPLIT_K=split, STAGES=stages, num_warps=warps,
    )  # fmt: skip
    if split > 1:
        _splitk_reduce_kernel[(triton.cdiv(M * N, _SPLITK_REDUCE_BLOCK),)](
            part, bias if bias is not None else part, y, M, N, y.stride(0), HAS_BIAS=bias is not None,
            SPLIT_K=split, BLOCK=_SPLITK_REDUCE_BLOCK, num_warps=4,
        )  # fmt: skip
    return y


def _launch_linear(x, w, scale, zero, bias, quant, group_size, config) -> torch.Tensor:
    check(x.stride(1) == 1 and w.stride(1) == 1, "x and the weight must be contiguous along K")
    # int32 offsets (the kernel's address math), as in gemv
    check(w.shape[0] * w.stride(0) < 2**31, "weight {} too large for int32 offsets", tuple(w.shape))
    check(x.shape[0] * max(x.stride(0), w.shape[0]) < 2**31, "x {} too large for int32 offsets", tuple(x.shape))
    check_launchable(x, w, scale, *(t for t in (zero, bias) if t is not None))
    M, K = x.shape
    N = w.shape[0]
    y = torch.empty(M, N, dtype=x.dtype, device=x.device)
    if M == 0 or N == 0:
        return y
    use_dot = M > GEMV_MAX_M
    if not use_dot and _words_ok(w):
        return _launch_word_gemv(x, w, scale, zero, bias, quant, group_size, config, y)
    if config is not None and len(config) == 6:  # (SPLIT_K is for the word GEMV only)
        check(config[5] == 1, "config: SPLIT_K {} needs the word GEMV (whole int32 words per row)", config[5])
        config = config[:5]
    if config is None:
        if not use_dot:
            block_m = 1 if M == 1 else (2 if M == 2 else 4)
            block_n, block_k, warps, stages = _GEMV_CONFIG[block_m]
            if quant == _Q_INT4:
                block_k = _block_k(group_size, _GEMV_MAX_BLOCK_K)
                block_n = max(block_n, block_n * 512 // block_k)
        else:
            # Hopper: more, smaller N tiles while M is small (fill the SMs), 128x128 tiles for prefill
            block_m = 16 if M <= 16 else 32 if M <= 32 else 64 if M <= 64 else 128
            block_n = 64 if block_m <= 32 else 128
            block_k = _block_k(group_size, _GEMM_MAX_BLOCK_K) if quant == _Q_INT4 else _GEMM_MAX_BLOCK_K
            warps, stages = (8, 3) if block_m == 128 else (4, 4)
    else:
        block_m, block_n, block_k, warps, stages = config
        check(use_dot or block_m >= M, "config: BLOCK_M {} must cover M={} on the GEMV path", block_m, M)
        check(not use_dot or min(block_m, block_n, block_k) >= 16, "config: tl.dot tiles need >= 16")
        check(quant != _Q_INT4 or group_size % block_k == 0, "config: BLOCK_K {} must divide group", block_k)
    if quant == _Q_INT4:
        stride_sg, stride_sn = scale.stride(0), scale.stride(1)
        check(zero is None or zero.stride() == scale.stride(), "int4 zero must have the strides of scale")
    else:
        stride_sg, stride_sn = 0, (scale.stride(0) if scale.dim() == 1 else 0)
    grid = (triton.cdiv(M, block_m), triton.cdiv(N, block_n))
    _quant_linear_kernel[grid](
        x, w, scale, zero if zero is not None else scale, bias if bias is not None else scale, y, M, N, K,
        x.stride(0), w.stride(0), y.stride(0), stride_sg, stride_sn,
        QUANT=quant, GROUP=group_size, HAS_ZERO=zero is not None, HAS_BIAS=bias is not None,
        USE_DOT=use_dot, DOT_PRECISION="ieee" if x.dtype == torch.float32 else "tf32",
        EVEN_K=K % block_k == 0, BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k,
        num_warps=warps, num_stages=stages,
    )  # fmt: skip
    return y


def weight_only_linear(
    x: torch.Tensor,
    qweight: torch.Tensor,
    scale: torch.Tensor,
    zero: torch.Tensor | None = None,
    bits: int = 8,
    group_size: int = 128,
    bias: torch.Tensor | None = None,
    config: tuple[int, int, int, int, int] | None = None,
) -> torch.Tensor:
    """y [M, N] = x [M, K] @ dequant(qweight)^T (+ bias), in x's dtype (float16, bfloat16, float32).

    bits 8: qweight int8 [N, K], scale [N] (float32), zero None. bits 4: qweight uint8 [N, K/2] (see
    `pack_int4`), scale float16 [K/g, N], zero None (symmetric, w = (q - 8) * scale) or float16 [K/g, N]
    (w = q * scale - zero); `group_size` = g is ignored for bits 8. bias [N].
    M <= 4 runs a GEMV (the word GEMV when the weight rows are whole int32 words), larger M tl.dot tiles.
    `config` = (BLOCK_M, BLOCK_N, BLOCK_K, num_warps, num_stages[, SPLIT_K]) overrides the defaults;
    int4: BLOCK_K must divide group_size (word GEMV: or be a multiple of it); SPLIT_K (word GEMV only,
    default 1) splits K over that many programs per N tile. Allocates only y (and, split, the float32
    partials) and never syncs with the host: CUDA-graph safe.
    """
    _check_linear_args(x, qweight, scale, zero, bits, group_size, bias)
    return _launch_linear(x, qweight, scale, zero, bias, _Q_INT8 if bits == 8 else _Q_INT4, group_size, config)


def weight_only_linear_ref(
    x: torch.Tensor,
    qweight: torch.Tensor,
    scale: torch.Tensor,
    zero: torch.Tensor | None = None,
    bits: int = 8,
    group_size: int = 128,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """PyTorch reference of `weight_only_linear`: dequantize to x's dtype, then F.linear."""
    _check_linear_args(x, qweight, scale, zero, bits, group_size, bias)
    if bits == 8:
        w = dequantize_int8_per_channel(qweight, scale, x.dtype)
    else:
        w = dequantize_int4_groupwise(qweight, scale, zero, x.dtype)
    return F.linear(x, w, bias)


# ---------------------------------------------------------------- FP8


def _check_fp8_weight_args(x, w, w_scale, bias) -> None:
    check(x.dim() == 2 and w.dim() == 2, "x must be [M, K] and w [N, K], got {} and {}", x.shape, w.shape)
    check(x.dtype in (torch.float16, torch.bfloat16, torch.float32), "x dtype {} not supported", x.dtype)
    check(w.dtype == torch.float8_e4m3fn, "w must be float8_e4m3fn, got {}", w.dtype)
    check(w.shape[1] == x.shape[1], "K mismatch, x {} w {}", tuple(x.shape), tuple(w.shape))
    check(w_scale.shape in ((), (w.shape[0],)), "w_scale must be [] or [N], got {}", tuple(w_scale.shape))
    check(bias is None or bias.shape == (w.shape[0],), "bias must be [N]")


def fp8_weight_gemv(
    x: torch.Tensor,
    w: torch.Tensor,
    w_scale: torch.Tensor,
    bias: torch.Tensor | None = None,
    config: tuple[int, int, int, int, int] | None = None,
) -> torch.Tensor:
    """y [M, N] = x [M <= 4, K] @ (w * w_scale)^T (+ bias) in x's dtype, reading w float8_e4m3fn [N, K]
    (1 byte per weight: decode at small batch is bandwidth bound) and dequantizing in registers.

    w_scale float32 [] (per tensor) or [N] (per channel), applied to the float32 accumulator. Activations
    are not quantized (that is the W8A8 path, torch._scaled_mm). CUDA-graph safe.
    `config` = (BLOCK_M, BLOCK_N, BLOCK_K, num_warps, num_stages[, SPLIT_K]) overrides the default (see
    `weight_only_linear`; K % 4 == 0 takes the word GEMV).
    """
    _check_fp8_weight_args(x, w, w_scale, bias)
    check(1 <= x.shape[0] <= GEMV_MAX_M, "fp8_weight_gemv: M={} outside 1..{}", x.shape[0], GEMV_MAX_M)
    return _launch_linear(x, w, w_scale, None, bias, _Q_FP8, 0, config)


def fp8_weight_gemv_ref(
    x: torch.Tensor, w: torch.Tensor, w_scale: torch.Tensor, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """PyTorch reference of `fp8_weight_gemv`: dequantize w to x's dtype, then F.linear."""
    _check_fp8_weight_args(x, w, w_scale, bias)
    return F.linear(x, dequantize_fp8(w, w_scale, x.dtype), bias)


def _launch_quant_fp8(x: torch.Tensor, scale: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    check(x.dim() == 2 and x.stride(1) == 1, "x must be [M, K] contiguous along K, got {}", tuple(x.shape))
    check(x.is_floating_point(), "x must be floating point, got {}", x.dtype)
    dynamic = scale is None
    check(dynamic or scale.numel() == 1, "static fp8 scale must be one value, got {}", None if dynamic else scale.shape)
    check_launchable(x, *(() if dynamic else (scale,)))
    M, K = x.shape
    xq = torch.empty(M, K, dtype=torch.float8_e4m3fn, device=x.device)
    if dynamic:
        scale = torch.empty(M, 1, dtype=torch.float32, device=x.device)
    if M > 0 and K > 0:
        block_k = min(triton.next_power_of_2(K), 2048 if x.is_cuda else 256)
        _quant_fp8_rows_kernel[(M,)](
            x, xq, scale, K, x.stride(0), xq.stride(0), DYNAMIC=dynamic, MIN_AMAX=_MIN_AMAX,
            EXACT_CAST=not x.is_cuda, BLOCK_K=block_k,
            num_warps=4 if block_k <= 1024 else 8,
        )  # fmt: skip
    return xq, scale


def quantize_fp8_per_token(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Dynamic per-token (row) e4m3 quantization: x [M, K] float -> (xq float8_e4m3fn [M, K],
    scale float32 [M, 1]), scale = amax(|x[m]|) / 448, xq = clamp(x / scale, +-448). Triton; CUDA-graph safe.
    """
    return _launch_quant_fp8(x, None)


def quantize_fp8_per_token_ref(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """PyTorch reference of `quantize_fp8_per_token`."""
    xf = x.float()
    scale = xf.abs().amax(dim=-1, keepdim=True).clamp_min(_MIN_AMAX) * (1.0 / FP8_MAX)
    return (xf / scale).clamp_(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn), scale


def quantize_fp8_static(x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Static per-tensor e4m3 quantization: x [M, K], scale float32 [] (a device tensor: no host sync)
    -> clamp(x / scale, +-448) as float8_e4m3fn [M, K]. One Triton pass (torch ops would take three)."""
    return _launch_quant_fp8(x, scale)[0]


def quantize_fp8_static_ref(x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """PyTorch reference of `quantize_fp8_static`."""
    return (x.float() / scale.float()).clamp_(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn)


def fp8_linear_ref(
    x: torch.Tensor,
    w: torch.Tensor,
    w_scale: torch.Tensor,
    x_scale: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """Reference of the W8A8 FP8 linear (torch._scaled_mm on Hopper): x [M, K] is quantized to e4m3
    (static per-tensor with `x_scale` float32 [], or dynamic per token when None), both operands are
    dequantized, F.linear runs in float32 (+ bias), and the result is cast to x's dtype.
    w float8_e4m3fn [N, K], w_scale float32 [] or [N]."""
    _check_fp8_weight_args(x, w, w_scale, bias)
    if x_scale is None:
        xq, xs = quantize_fp8_per_token_ref(x)
    else:
        xq, xs = quantize_fp8_static_ref(x, x_scale), x_scale
    y = F.linear(dequantize_fp8(xq, xs), dequantize_fp8(w, w_scale), None if bias is None else bias.float())
    return y.to(x.dtype)
