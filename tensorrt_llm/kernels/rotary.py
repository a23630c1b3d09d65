"""Rotary position embedding, Hugging Face Llama convention (rotate_half: the two halves of head_dim
pair up, not interleaved neighbours).

`cos_sin_cache` is `[max_position, head_dim]` float32: `cat(cos[:, :D/2], sin[:, :D/2])`, i.e. row p holds
cos(p * inv_freq) then sin(p * inv_freq). The caller precomputes it, so every rope variant (Llama-3
scaling, linear, ...) is only a different `inv_freq`; `rope_cos_sin_cache` builds it from a HF config.
LongRoPE (Phi-3 long-context) has two sets: its table is `[2 * max_position, head_dim]`, the short factors'
rows then the long factors'; a token of a sequence longer than the original context reads row
`max_position + p` (the step's positions carry that offset: `ModelConfig.rope_offset`).
"""

from __future__ import annotations

import math

import torch

from ._common import HAS_TRITON, check, check_launchable, next_pow2

if HAS_TRITON:
    import triton
    import triton.language as tl

    @triton.jit
    def _cos_sin(cache_ptr, pos_ptr, t, stride_cache, half, BLOCK_HALF: tl.constexpr):
        # the cos and sin halves of token t's position row, fp32 [1, BLOCK_HALF] each
        pos = tl.load(pos_ptr + t).to(tl.int64)
        d = tl.arange(0, BLOCK_HALF)
        cos = tl.load(cache_ptr + pos * stride_cache + d, mask=d < half, other=0.0).to(tl.float32)
        sin = tl.load(cache_ptr + pos * stride_cache + half + d, mask=d < half, other=0.0).to(tl.float32)
        return cos[None, :], sin[None, :]

    @triton.jit
    def _rotate(
        x_ptr, stride_t, stride_h, t, cos, sin, num_heads, half,
        BLOCK_H: tl.constexpr, BLOCK_HALF: tl.constexpr,
    ):  # fmt: skip
        # x[t]: [heads, D] as two halves [BLOCK_H, BLOCK_HALF]; returns the rotated halves in fp32
        h = tl.arange(0, BLOCK_H)[:, None]
        d = tl.arange(0, BLOCK_HALF)[None, :]
        mask = (h < num_heads) & (d < half)
        base = x_ptr + t * stride_t + h * stride_h + d
        x1 = tl.load(base, mask=mask, other=0.0).to(tl.float32)
        x2 = tl.load(base + half, mask=mask, other=0.0).to(tl.float32)
        return x1 * cos - x2 * sin, x2 * cos + x1 * sin, h, d, mask

    @triton.jit
    def _apply_rotary_kernel(
        q_ptr, k_ptr, qo_ptr, ko_ptr, pos_ptr, cache_ptr,
        stride_qt, stride_qh, stride_kt, stride_kh, stride_qot, stride_qoh, stride_kot, stride_koh,
        stride_cache, num_q_heads, num_kv_heads, half,
        BLOCK_HQ: tl.constexpr, BLOCK_HK: tl.constexpr, BLOCK_HALF: tl.constexpr,
    ):  # fmt: skip
        # one program per token: rotate all its q heads and k heads with the same cos/sin row
        t = tl.program_id(0).to(tl.int64)
        cos, sin = _cos_sin(cache_ptr, pos_ptr, t, stride_cache, half, BLOCK_HALF)
        o1, o2, h, dd, mask = _rotate(q_ptr, stride_qt, stride_qh, t, cos, sin, num_q_heads, half, BLOCK_HQ, BLOCK_HALF)
        out = qo_ptr + t * stride_qot + h * stride_qoh + dd
        tl.store(out, o1.to(qo_ptr.dtype.element_ty), mask=mask)
        tl.store(out + half, o2.to(qo_ptr.dtype.element_ty), mask=mask)
        o1, o2, h, dd, mask = _rotate(
            k_ptr, stride_kt, stride_kh, t, cos, sin, num_kv_heads, half, BLOCK_HK, BLOCK_HALF
        )
        out = ko_ptr + t * stride_kot + h * stride_koh + dd
        tl.store(out, o1.to(ko_ptr.dtype.element_ty), mask=mask)
        tl.store(out + half, o2.to(ko_ptr.dtype.element_ty), mask=mask)


def _check_args(q, k, positions, cos_sin_cache) -> None:
    check(q.dim() == 3 and k.dim() == 3, "q, k must be [T, H, D], got {}, {}", tuple(q.shape), tuple(k.shape))
    check(q.shape[0] == k.shape[0] and q.shape[2] == k.shape[2], "q and k must share T and head_dim")
    check(q.shape[2] % 2 == 0, "head_dim must be even")
    check(positions.shape == (q.shape[0],), "positions must be [T={}]", q.shape[0])
    check(cos_sin_cache.dim() == 2 and cos_sin_cache.shape[1] == q.shape[2], "cos_sin_cache must be [P, D]")


def apply_rotary(
    q: torch.Tensor, k: torch.Tensor, positions: torch.Tensor, cos_sin_cache: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotate q `[T, H, D]` and k `[T, Hkv, D]` by their token's position; returns new contiguous q, k.

    q and k may be strided views (e.g. of a fused QKV output) as long as head_dim is contiguous.
    """
    _check_args(q, k, positions, cos_sin_cache)
    check_launchable(q, k, positions, cos_sin_cache)
    check(q.stride(-1) == 1 and k.stride(-1) == 1, "q and k must be contiguous in head_dim")
    check(cos_sin_cache.stride(-1) == 1, "cos_sin_cache must be contiguous in its last dim")
    q_out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    k_out = torch.empty(k.shape, dtype=k.dtype, device=k.device)
    T, H, D = q.shape
    if T > 0:
        _apply_rotary_kernel[(T,)](
            q, k, q_out, k_out, positions, cos_sin_cache,
            q.stride(0), q.stride(1), k.stride(0), k.stride(1),
            q_out.stride(0), q_out.stride(1), k_out.stride(0), k_out.stride(1),
            cos_sin_cache.stride(0), H, k.shape[1], D // 2,
            BLOCK_HQ=next_pow2(H), BLOCK_HK=next_pow2(k.shape[1]), BLOCK_HALF=next_pow2(D // 2),
        )  # fmt: skip
    return q_out, k_out


def apply_rotary_ref(
    q: torch.Tensor, k: torch.Tensor, positions: torch.Tensor, cos_sin_cache: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """PyTorch reference of `apply_rotary` (HF `apply_rotary_pos_emb`, computed in float32)."""
    _check_args(q, k, positions, cos_sin_cache)
    cos, sin = cos_sin_cache[positions.long()].float().chunk(2, dim=-1)  # [T, D/2] each
    cos, sin = torch.cat([cos, cos], -1)[:, None, :], torch.cat([sin, sin], -1)[:, None, :]

    def rot(x: torch.Tensor) -> torch.Tensor:
        x1, x2 = x.float().chunk(2, dim=-1)
        return (x.float() * cos + torch.cat([-x2, x1], -1) * sin).to(x.dtype)

    return rot(q), rot(k)


def _rope_kind(rope_scaling: dict | None) -> str:
    kind = (rope_scaling or {}).get("rope_type", (rope_scaling or {}).get("type", "default"))
    return "longrope" if kind == "su" else kind  # "su": the first Phi-3 long-context configs' name


def longrope_original_length(rope_scaling: dict | None) -> int | None:
    """LongRoPE: the pre-training context length; a sequence longer than it takes the long factors (all of
    its tokens: Hugging Face's `generate` recomputes the cache when a sequence grows past it). None for any
    other rope."""
    if _rope_kind(rope_scaling) != "longrope":
        return None
    if "original_max_position_embeddings" not in rope_scaling:
        raise ValueError("longrope scaling needs original_max_position_embeddings (the pre-training context length)")
    return int(rope_scaling["original_max_position_embeddings"])


def rope_inv_freq(
    head_dim: int, theta: float = 10000.0, rope_scaling: dict | None = None, long: bool = False
) -> torch.Tensor:
    """`[head_dim/2]` float32 inverse frequencies, with HF's "default", "linear", "llama3", "yarn" and
    "longrope" scaling (`long`: LongRoPE's long factors, else its short ones)."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim))
    kind = _rope_kind(rope_scaling)
    if kind == "default":
        return inv_freq
    if kind == "longrope":
        longrope_original_length(rope_scaling)  # checked here too: config conversion calls only this
        factors = rope_scaling["long_factor" if long else "short_factor"]
        if len(factors) != head_dim // 2:
            raise ValueError(f"longrope factors: {len(factors)} given, the rotary dims need {head_dim // 2}")
        return inv_freq / torch.tensor(factors, dtype=torch.float32)
    if kind == "linear":
        return inv_freq / rope_scaling["factor"]
    if kind == "yarn":  # interpolated below the wavelengths the original context held whole turns of
        factor, original = rope_scaling["factor"], rope_scaling["original_max_position_embeddings"]
        fast, slow = rope_scaling.get("beta_fast") or 32, rope_scaling.get("beta_slow") or 1

        def dim_of(turns: float) -> float:  # the dim whose wavelength the original context turns `turns` times
            return head_dim * math.log(original / (turns * 2 * math.pi)) / (2 * math.log(theta))

        low, high = dim_of(fast), dim_of(slow)
        if rope_scaling.get("truncate", True):
            low, high = math.floor(low), math.ceil(high)
        low, high = max(low, 0), min(high, head_dim - 1)
        ramp = ((torch.arange(head_dim // 2, dtype=torch.float32) - low) / max(high - low, 0.001)).clamp(0, 1)
        return inv_freq / factor * ramp + inv_freq * (1 - ramp)
    if kind == "llama3":
        factor = rope_scaling["factor"]
        low, high = rope_scaling["low_freq_factor"], rope_scaling["high_freq_factor"]
        old_len = rope_scaling["original_max_position_embeddings"]
        wavelen = 2 * math.pi / inv_freq
        # long wavelengths are slowed by `factor`, short ones kept, the band between interpolated
        scaled = torch.where(wavelen > old_len / low, inv_freq / factor, inv_freq)
        smooth = (old_len / wavelen - low) / (high - low)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        medium = (wavelen >= old_len / high) & (wavelen <= old_len / low)
        return torch.where(medium, smoothed, scaled)
    raise ValueError(f"unsupported rope_scaling type {kind!r}")


def _attention_factor(rope_scaling: dict | None, max_position: int) -> float:
    """The scale of cos and sin (so of the scores, squared) that YaRN and LongRoPE apply, as Hugging Face
    computes it (a config's own `attention_factor` first); 1 for every other rope."""
    kind = _rope_kind(rope_scaling)
    if kind not in ("yarn", "longrope"):
        return 1.0
    if rope_scaling.get("attention_factor") is not None:
        return float(rope_scaling["attention_factor"])
    if kind == "longrope":  # the LongRoPE paper's
        original = longrope_original_length(rope_scaling)
        factor = rope_scaling.get("factor") or max_position / original
        return math.sqrt(1 + math.log(factor) / math.log(original)) if factor > 1.0 else 1.0

    def mscale(scale: float, m: float = 1.0) -> float:
        return 1.0 if scale <= 1 else 0.1 * m * math.log(scale) + 1.0

    factor, m, m_all = rope_scaling["factor"], rope_scaling.get("mscale"), rope_scaling.get("mscale_all_dim")
    return mscale(factor, m) / mscale(factor, m_all) if m and m_all else mscale(factor)


def rope_cos_sin_cache(
    head_dim: int,
    max_position: int,
    theta: float = 10000.0,
    rope_scaling: dict | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """`[max_position, head_dim]` float32 `cat(cos, sin)` table for `apply_rotary` (see module doc); LongRoPE's
    is `[2 * max_position, head_dim]`, both halves scaled by its attention factor (as Hugging Face's cos/sin)."""

    def table(inv_freq: torch.Tensor) -> torch.Tensor:
        freqs = torch.arange(max_position, device=device, dtype=torch.float32)[:, None] * inv_freq.to(device)[None, :]
        return torch.cat([freqs.cos(), freqs.sin()], dim=-1)

    if longrope_original_length(rope_scaling) is None:
        cache = table(rope_inv_freq(head_dim, theta, rope_scaling))
    else:  # the short factors' rows, then the long ones'
        cache = torch.cat([table(rope_inv_freq(head_dim, theta, rope_scaling, long=x)) for x in (False, True)])
    scale = _attention_factor(rope_scaling, max_position)
    return cache if scale == 1.0 else cache * scale
