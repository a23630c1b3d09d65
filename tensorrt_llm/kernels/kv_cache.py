"""Write this step's K/V into the paged cache, alone or fused with the rotary embedding.

Cache layout per layer: `[num_blocks, tokens_per_block, num_kv_heads, head_dim]`; a token's slot is
`block * tokens_per_block + row`. A negative slot means "padding token, write nothing" (so CUDA-graph
batches can be padded).

`rotary_write_kv_cache` does `apply_rotary` and `write_kv_cache` in one kernel: the rotated k goes from
registers straight into the cache instead of through a temporary, and a decode step launches one
kernel per layer instead of two.

Quantized caches (`kv_cache_quant_algo` INT8 / FP8): a cache of dtype int8 or float8_e4m3fn stores
x / scale, per layer one `k_scale` and one `v_scale` (float32 device tensors of one element, so a CUDA
graph reads the current value): int8 `round(clamp(x / scale, -127, 127))` (half to even), e4m3
`clamp(x / scale, -448, 448)` rounded to nearest even. x is the value the float cache would store (the
rotated k rounded to the k dtype). The float path compiles as before (QUANT = 0).
"""

from __future__ import annotations

import torch

from . import rotary
from ._common import HAS_TRITON, check, check_launchable, next_pow2

# cache dtype -> the kernels' QUANT switch (absent: a float cache, QUANT 0)
QUANT_CACHE_DTYPES = {torch.int8: 1, torch.float8_e4m3fn: 2}
INT8_MAX, FP8_E4M3_MAX = 127.0, 448.0

if HAS_TRITON:
    import triton
    import triton.language as tl

    from .rotary import _cos_sin, _rotate

    @triton.jit
    def _quantize(x, scale, QUANT: tl.constexpr):
        # x / scale as int8 (QUANT 1) or e4m3 (QUANT 2), rounded to nearest, ties to even
        y = x.to(tl.float32) / scale
        if QUANT == 1:
            # adding and subtracting 1.5 * 2**23 keeps the nearest integer (|y| <= 127 < 2**22)
            y = tl.clamp(y, -127.0, 127.0)
            return ((y + 12582912.0) - 12582912.0).to(tl.int8)
        else:
            # rounded to the e4m3 grid in fp32 first (3 mantissa bits; subnormals step 2**-9 like the
            # smallest normal binade), the same trick with 1.5 * 2**23 * step: the cast is then exact
            # whatever rounding it does (the Triton 3.6 interpreter's rounds ties away and botches
            # carries into the next binade)
            y = tl.clamp(y, -448.0, 448.0)
            e = tl.maximum((y.to(tl.int32, bitcast=True) >> 23) & 0xFF, 127 - 6)  # biased exponent
            magic = (((e + 20) << 23) | 0x400000).to(tl.float32, bitcast=True)  # ulp = 2**(e - 127 - 3)
            return ((y + magic) - magic).to(tl.float8e4nv)

    @triton.jit
    def _write_kv_cache_kernel(
        k_ptr, v_ptr, kc_ptr, vc_ptr, slot_ptr, ks_ptr, vs_ptr,
        stride_kt, stride_kh, stride_vt, stride_vh,
        stride_cb, stride_ct, stride_ch,
        num_kv_heads, head_dim,
        TOKENS_PER_BLOCK: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_D: tl.constexpr, QUANT: tl.constexpr,
    ):  # fmt: skip
        # one program per new token; it writes all its heads: a [BLOCK_H, BLOCK_D] tile
        t = tl.program_id(0)
        slot = tl.load(slot_ptr + t).to(tl.int64)  # int64 offsets: caches exceed 2**31 elements
        if slot >= 0:
            block = slot // TOKENS_PER_BLOCK
            row = slot % TOKENS_PER_BLOCK
            h = tl.arange(0, BLOCK_H)[:, None]
            d = tl.arange(0, BLOCK_D)[None, :]
            mask = (h < num_kv_heads) & (d < head_dim)
            dst = block * stride_cb + row * stride_ct + h * stride_ch + d
            k = tl.load(k_ptr + t * stride_kt + h * stride_kh + d, mask=mask)
            v = tl.load(v_ptr + t * stride_vt + h * stride_vh + d, mask=mask)
            if QUANT:
                k = _quantize(k, tl.load(ks_ptr), QUANT)
                v = _quantize(v, tl.load(vs_ptr), QUANT)
            tl.store(kc_ptr + dst, k, mask=mask)
            tl.store(vc_ptr + dst, v, mask=mask)

    @triton.jit
    def _rotary_write_kv_kernel(
        q_ptr, k_ptr, v_ptr, qo_ptr, kc_ptr, vc_ptr, pos_ptr, cache_ptr, slot_ptr,
        stride_qt, stride_qh, stride_kt, stride_kh, stride_vt, stride_vh, stride_qot, stride_qoh,
        stride_cache, stride_cb, stride_ct, stride_ch,
        num_q_heads, num_kv_heads, half, head_dim, ks_ptr, vs_ptr,
        TOKENS_PER_BLOCK: tl.constexpr, BLOCK_HQ: tl.constexpr, BLOCK_HK: tl.constexpr,
        BLOCK_HALF: tl.constexpr, BLOCK_D: tl.constexpr, QUANT: tl.constexpr,
    ):  # fmt: skip
        # (the scale pointers come last: with QUANT 0 the PTX is the same as before they existed)
        # one program per token: its q heads rotated into q_out; its k heads rotated and its v heads
        # copied straight into the token's cache slot (all with the same cos/sin row)
        t = tl.program_id(0).to(tl.int64)
        cos, sin = _cos_sin(cache_ptr, pos_ptr, t, stride_cache, half, BLOCK_HALF)
        o1, o2, h, dd, mask = _rotate(q_ptr, stride_qt, stride_qh, t, cos, sin, num_q_heads, half, BLOCK_HQ, BLOCK_HALF)
        out = qo_ptr + t * stride_qot + h * stride_qoh + dd  # [BLOCK_HQ, BLOCK_HALF]
        tl.store(out, o1.to(qo_ptr.dtype.element_ty), mask=mask)
        tl.store(out + half, o2.to(qo_ptr.dtype.element_ty), mask=mask)
        slot = tl.load(slot_ptr + t).to(tl.int64)  # int64 offsets: caches exceed 2**31 elements
        if slot >= 0:  # a padding token's q is rotated all the same (harmless), its K/V go nowhere
            row = (slot // TOKENS_PER_BLOCK) * stride_cb + (slot % TOKENS_PER_BLOCK) * stride_ct
            # new names: a branch may not rebind q's tiles to k's shape ([BLOCK_HK, ...], not [BLOCK_HQ, ...])
            k1, k2, hk, dk, k_mask = _rotate(
                k_ptr, stride_kt, stride_kh, t, cos, sin, num_kv_heads, half, BLOCK_HK, BLOCK_HALF
            )
            dst = kc_ptr + row + hk * stride_ch + dk  # [BLOCK_HK, BLOCK_HALF]
            if QUANT:  # the rotated k as the float cache would hold it (k's dtype), then quantized
                ks = tl.load(ks_ptr)
                k1 = _quantize(k1.to(k_ptr.dtype.element_ty), ks, QUANT)
                k2 = _quantize(k2.to(k_ptr.dtype.element_ty), ks, QUANT)
            tl.store(dst, k1.to(kc_ptr.dtype.element_ty), mask=k_mask)
            tl.store(dst + half, k2.to(kc_ptr.dtype.element_ty), mask=k_mask)
            hv = tl.arange(0, BLOCK_HK)[:, None]
            dv = tl.arange(0, BLOCK_D)[None, :]
            v_mask = (hv < num_kv_heads) & (dv < head_dim)  # [BLOCK_HK, BLOCK_D]
            v = tl.load(v_ptr + t * stride_vt + hv * stride_vh + dv, mask=v_mask)
            if QUANT:
                v = _quantize(v, tl.load(vs_ptr), QUANT)
            tl.store(vc_ptr + row + hv * stride_ch + dv, v, mask=v_mask)


def _check_args(k, v, k_cache, v_cache, slot_mapping, k_scale=None, v_scale=None) -> int:
    """Returns the QUANT switch of the cache dtype (0: a float cache)."""
    check(k.dim() == 3 and k.shape == v.shape, "k, v must be [T, Hkv, D], got {} and {}", k.shape, v.shape)
    check(k_cache.dim() == 4 and k_cache.shape == v_cache.shape, "caches must be [blocks, tpb, Hkv, D]")
    check(k_cache.shape[2:] == k.shape[1:], "cache heads/dim {} != k {}", k_cache.shape[2:], k.shape[1:])
    check(slot_mapping.shape == (k.shape[0],), "slot_mapping must be [T={}]", k.shape[0])
    check(k.dtype == v.dtype and k_cache.dtype == v_cache.dtype, "k and v, and the two caches, must share a dtype")
    quant = check_kv_scales(k_cache, k_scale, v_scale)
    check(quant or k.dtype == k_cache.dtype, "k, v and a float cache must share a dtype")
    return quant


def check_kv_scales(k_cache: torch.Tensor, k_scale: torch.Tensor | None, v_scale: torch.Tensor | None) -> int:
    """The QUANT switch of the cache dtype; a quantized cache needs both scales (float32, one element,
    on the cache's device), a float cache none."""
    quant = QUANT_CACHE_DTYPES.get(k_cache.dtype, 0)
    if not quant:
        check(k_scale is None and v_scale is None, "k_scale / v_scale given for a {} cache", k_cache.dtype)
        return 0
    check(k_scale is not None and v_scale is not None, "a {} KV cache needs k_scale and v_scale", k_cache.dtype)
    for name, s in (("k_scale", k_scale), ("v_scale", v_scale)):
        check(isinstance(s, torch.Tensor) and s.numel() == 1 and s.dtype == torch.float32,
              "{} must be a float32 tensor of one element", name)  # fmt: skip
        check(s.device == k_cache.device, "{} on {}, the cache on {}", name, s.device, k_cache.device)
    return quant


def quantize_kv_ref(x: torch.Tensor, scale: torch.Tensor, cache_dtype: torch.dtype) -> torch.Tensor:
    """x / scale stored as `cache_dtype` (int8: rounded half to even and clamped to +-127; e4m3: clamped to
    +-448, then cast)."""
    y = x.float() / scale
    if cache_dtype == torch.int8:
        return torch.round(y.clamp(-INT8_MAX, INT8_MAX)).to(torch.int8)
    return y.clamp(-FP8_E4M3_MAX, FP8_E4M3_MAX).to(cache_dtype)


def write_kv_cache(
    k: torch.Tensor,
    v: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    slot_mapping: torch.Tensor,
    k_scale: torch.Tensor | None = None,
    v_scale: torch.Tensor | None = None,
) -> None:
    """Store k[t], v[t] (`[T, Hkv, D]`) at cache slot `slot_mapping[t]` (int64), in place. An int8 / e4m3
    cache stores them quantized by `k_scale` / `v_scale` (see the module docstring)."""
    quant = _check_args(k, v, k_cache, v_cache, slot_mapping, k_scale, v_scale)
    check_launchable(k, v, k_cache, v_cache, slot_mapping)
    check(slot_mapping.dtype in (torch.int32, torch.int64), "slot_mapping must be an integer tensor")
    # k/v may be strided views of a fused QKV output; only the head_dim must be contiguous
    for name, t in (("k", k), ("v", v), ("k_cache", k_cache), ("v_cache", v_cache)):
        check(t.stride(-1) == 1, "{} must be contiguous in head_dim", name)
    check(k_cache.stride() == v_cache.stride(), "k_cache and v_cache must share strides")
    T, H, D = k.shape
    if T == 0:
        return
    _write_kv_cache_kernel[(T,)](
        k, v, k_cache, v_cache, slot_mapping, k_scale if quant else k_cache, v_scale if quant else v_cache,
        k.stride(0), k.stride(1), v.stride(0), v.stride(1),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        H, D,
        TOKENS_PER_BLOCK=k_cache.shape[1], BLOCK_H=next_pow2(H), BLOCK_D=next_pow2(D), QUANT=quant,
    )  # fmt: skip


def write_kv_cache_ref(
    k: torch.Tensor,
    v: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    slot_mapping: torch.Tensor,
    k_scale: torch.Tensor | None = None,
    v_scale: torch.Tensor | None = None,
) -> None:
    """PyTorch reference of `write_kv_cache` (in place)."""
    quant = _check_args(k, v, k_cache, v_cache, slot_mapping, k_scale, v_scale)
    keep = slot_mapping >= 0
    slots = slot_mapping[keep].long()
    tpb = k_cache.shape[1]
    block, row = slots // tpb, slots % tpb
    k, v = k[keep], v[keep]
    if quant:
        k, v = quantize_kv_ref(k, k_scale, k_cache.dtype), quantize_kv_ref(v, v_scale, v_cache.dtype)
    k_cache[block, row] = k
    v_cache[block, row] = v


def rotary_write_kv_cache(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    positions: torch.Tensor,
    cos_sin_cache: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    slot_mapping: torch.Tensor,
    k_scale: torch.Tensor | None = None,
    v_scale: torch.Tensor | None = None,
) -> torch.Tensor:
    """`apply_rotary` then `write_kv_cache` in one kernel: rotates q `[T, H, D]` and k `[T, Hkv, D]` by
    `positions[t]`, stores the rotated k and v `[T, Hkv, D]` at cache slot `slot_mapping[t]` (negative:
    nothing), and returns the rotated q (a new contiguous tensor). Inputs are left untouched; q, k, v may
    be strided views of a fused QKV output as long as head_dim is contiguous. No host synchronisation.
    An int8 / e4m3 cache stores the rotated k (rounded to k's dtype) and v quantized by `k_scale` / `v_scale`.
    """
    rotary._check_args(q, k, positions, cos_sin_cache)
    quant = _check_args(k, v, k_cache, v_cache, slot_mapping, k_scale, v_scale)
    check_launchable(q, k, v, positions, cos_sin_cache, k_cache, v_cache, slot_mapping)
    check(slot_mapping.dtype in (torch.int32, torch.int64), "slot_mapping must be an integer tensor")
    for name, t in (("q", q), ("k", k), ("v", v), ("k_cache", k_cache), ("v_cache", v_cache)):
        check(t.stride(-1) == 1, "{} must be contiguous in head_dim", name)
    check(cos_sin_cache.stride(-1) == 1, "cos_sin_cache must be contiguous in its last dim")
    check(k_cache.stride() == v_cache.stride(), "k_cache and v_cache must share strides")
    q_out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    T, H, D = q.shape
    Hkv = k.shape[1]
    if T > 0:
        _rotary_write_kv_kernel[(T,)](
            q, k, v, q_out, k_cache, v_cache, positions, cos_sin_cache, slot_mapping,
            q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1),
            q_out.stride(0), q_out.stride(1), cos_sin_cache.stride(0),
            k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
            H, Hkv, D // 2, D, k_scale if quant else k_cache, v_scale if quant else v_cache,
            TOKENS_PER_BLOCK=k_cache.shape[1], BLOCK_HQ=next_pow2(H), BLOCK_HK=next_pow2(Hkv),
            BLOCK_HALF=next_pow2(D // 2), BLOCK_D=next_pow2(D), QUANT=quant,
        )  # fmt: skip
    return q_out


def rotary_write_kv_cache_ref(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    positions: torch.Tensor,
    cos_sin_cache: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    slot_mapping: torch.Tensor,
    k_scale: torch.Tensor | None = None,
    v_scale: torch.Tensor | None = None,
) -> torch.Tensor:
    """PyTorch reference of `rotary_write_kv_cache`: the two references one after the other."""
    q, k = rotary.apply_rotary_ref(q, k, positions, cos_sin_cache)
    write_kv_cache_ref(k, v, k_cache, v_cache, slot_mapping, k_scale, v_scale)
    return q
