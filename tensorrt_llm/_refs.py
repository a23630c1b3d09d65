"""Temporary PyTorch references until tensorrt_llm.kernels lands (same names)."""

import torch
import torch.nn.functional as F


def available(x: torch.Tensor) -> bool:
    return False


def rms_norm_ref(x, weight, eps, residual=None):
    if residual is not None:
        x = x + residual
        residual = x
    xf = x.float()
    y = (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype) * weight
    return y if residual is None else (y, residual)


def silu_and_mul_ref(x):
    gate, up = x.chunk(2, dim=-1)
    return F.silu(gate) * up


def apply_rotary_ref(q, k, positions, cos_sin_cache):
    cs = cos_sin_cache[positions]  # [T, D]
    cos, sin = cs.chunk(2, dim=-1)  # [T, D/2] each
    cos = torch.cat([cos, cos], -1)[:, None, :]
    sin = torch.cat([sin, sin], -1)[:, None, :]

    def rot(x):
        x1, x2 = x.float().chunk(2, dim=-1)
        return (x.float() * cos + torch.cat([-x2, x1], -1) * sin).to(x.dtype)

    return rot(q), rot(k)


def write_kv_cache_ref(k, v, k_cache, v_cache, slot_mapping):
    nb, bs, h, d = k_cache.shape
    k_cache.view(nb * bs, h, d)[slot_mapping] = k
    v_cache.view(nb * bs, h, d)[slot_mapping] = v


def paged_attention_ref(q, k_cache, v_cache, block_tables, seq_lens, context_lens, scale, max_seq_len, max_ctx):
    T, H, D = q.shape
    _, bs, Hkv, _ = k_cache.shape
    out = torch.empty_like(q)
    start = 0
    for b, (n, ctx) in enumerate(zip(seq_lens.tolist(), context_lens.tolist(), strict=True)):
        nblk = (ctx + bs - 1) // bs
        blocks = block_tables[b, :nblk].long()
        k = k_cache[blocks].reshape(-1, Hkv, D)[:ctx].float()  # [ctx, Hkv, D]
        v = v_cache[blocks].reshape(-1, Hkv, D)[:ctx].float()
        k = k.repeat_interleave(H // Hkv, dim=1)
        v = v.repeat_interleave(H // Hkv, dim=1)
        qs = q[start : start + n].float()  # [n, H, D]
        s = torch.einsum("nhd,chd->hnc", qs, k) * scale
        qpos = torch.arange(ctx - n, ctx, device=q.device)[:, None]
        mask = torch.arange(ctx, device=q.device)[None, :] > qpos  # [n, ctx]
        s.masked_fill_(mask[None], float("-inf"))
        p = s.softmax(-1)
        out[start : start + n] = torch.einsum("hnc,chd->nhd", p, v).to(q.dtype)
        start += n
    return out


rms_norm = apply_rotary = write_kv_cache = paged_attention = silu_and_mul = None
