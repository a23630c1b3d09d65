"""Write this step's K/V into the paged cache.

Cache layout per layer: `[num_blocks, tokens_per_block, num_kv_heads, head_dim]`; a token's slot is
`block * tokens_per_block + row`. A negative slot means "padding token, write nothing" (so CUDA-graph
batches can be padded).
"""

from __future__ import annotations

import torch

from ._common import HAS_TRITON, check, check_launchable, next_pow2

if HAS_TRITON:
    import triton
    import triton.language as tl

    @triton.jit
    def _write_kv_cache_kernel(
        k_ptr, v_ptr, kc_ptr, vc_ptr, slot_ptr,
        stride_kt, stride_kh, stride_vt, stride_vh,
        stride_cb, stride_ct, stride_ch,
        num_kv_heads, head_dim,
        TOKENS_PER_BLOCK: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_D: tl.constexpr,
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
            tl.store(kc_ptr + dst, k, mask=mask)
            tl.store(vc_ptr + dst, v, mask=mask)


def _check_args(k, v, k_cache, v_cache, slot_mapping) -> None:
    check(k.dim() == 3 and k.shape == v.shape, "k, v must be [T, Hkv, D], got {} and {}", k.shape, v.shape)
    check(k_cache.dim() == 4 and k_cache.shape == v_cache.shape, "caches must be [blocks, tpb, Hkv, D]")
    check(k_cache.shape[2:] == k.shape[1:], "cache heads/dim {} != k {}", k_cache.shape[2:], k.shape[1:])
    check(k.dtype == v.dtype == k_cache.dtype == v_cache.dtype, "k, v and the caches must share a dtype")
    check(slot_mapping.shape == (k.shape[0],), "slot_mapping must be [T={}]", k.shape[0])


def write_kv_cache(
    k: torch.Tensor,
    v: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    slot_mapping: torch.Tensor,
) -> None:
    """Store k[t], v[t] (`[T, Hkv, D]`) at cache slot `slot_mapping[t]` (int64), in place."""
    _check_args(k, v, k_cache, v_cache, slot_mapping)
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
        k, v, k_cache, v_cache, slot_mapping,
        k.stride(0), k.stride(1), v.stride(0), v.stride(1),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        H, D,
        TOKENS_PER_BLOCK=k_cache.shape[1], BLOCK_H=next_pow2(H), BLOCK_D=next_pow2(D),
    )  # fmt: skip


def write_kv_cache_ref(
    k: torch.Tensor,
    v: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    slot_mapping: torch.Tensor,
) -> None:
    """PyTorch reference of `write_kv_cache` (in place)."""
    _check_args(k, v, k_cache, v_cache, slot_mapping)
    keep = slot_mapping >= 0
    slots = slot_mapping[keep].long()
    tpb = k_cache.shape[1]
    block, row = slots // tpb, slots % tpb
    k_cache[block, row] = k[keep]
    v_cache[block, row] = v[keep]
