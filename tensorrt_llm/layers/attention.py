from dataclasses import dataclass

import torch
from torch import nn

from tensorrt_llm import functional as tf
from tensorrt_llm.layers.linear import ColumnLinear, RowLinear
from tensorrt_llm.layers.normalization import RmsNorm, SplitRmsNorm
from tensorrt_llm.mapping import Mapping


@dataclass
class AttentionParams:
    """What every attention layer of one step needs besides its own weights and cache.
    Shapes: positions [T], seq_lens/context_lens [B], block_tables [B, max_blocks], slot_mapping [T]."""

    positions: torch.Tensor
    seq_lens: torch.Tensor
    context_lens: torch.Tensor
    block_tables: torch.Tensor
    slot_mapping: torch.Tensor
    max_seq_len: int
    max_context_len: int
    cos_sin_cache: torch.Tensor
    num_decode_tail: int = 0  # see StepInput
    alibi_slopes: torch.Tensor | None = None  # float32 [heads of this rank]: the model's, for ALiBi layers


class Attention(nn.Module):
    """Multi-head attention with grouped K/V heads (MHA when num_kv_heads == num_heads, MQA when 1),
    rotary positions, a fused QKV projection and a paged KV cache.

    Options (fixed when built): `bias` on the QKV projection and `dense_bias` on the output one (Qwen2 has
    the first only); `window` > 0, sliding-window attention over the last `window` keys, and `sinks` > 0
    (with a window) the first `sinks` keys of the sequence visible to every query too; `qk_norm_eps`,
    an RMSNorm over head_dim of every q and k head before rotary (Qwen3; weighted by 1 + w with
    `norm_unit_offset`, Gemma-3), weights `q_norm` / `k_norm` [D] on every rank; `scale` of the scores
    (default head_dim ** -0.5); `softcap` > 0, scores capped to softcap * tanh(score / softcap) (Gemma-2);
    `alibi`, ALiBi position biases (BLOOM, MPT) with the slopes of this rank's heads that the model computes
    (`AttentionParams.alibi_slopes`, a buffer, not a weight).

    A quantized KV cache (`set_kv_quant`): the layer's cache holds int8 or float8_e4m3fn, K / k_scale and
    V / v_scale, with the parameter `kv_cache_scale` float32 [2] = (k_scale, v_scale) (calibrated)."""

    QUANT_CACHE_DTYPES = (torch.int8, torch.float8_e4m3fn)

    def __init__(
        self,
        hidden_size: int,
        num_heads: int,
        num_kv_heads: int,
        head_dim: int,
        bias: bool = False,
        dense_bias: bool = False,
        dtype: torch.dtype = torch.float32,
        mapping: Mapping = Mapping(),
        window: int = 0,
        qk_norm_eps: float | None = None,
        scale: float | None = None,
        softcap: float = 0.0,
        sinks: int = 0,
        alibi: bool = False,
        norm_unit_offset: bool = False,
        qk_norm_full: bool = False,
    ) -> None:
        super().__init__()
        tp = mapping.tp_size
        if num_heads % num_kv_heads:
            raise ValueError(f"num_heads ({num_heads}) must be a multiple of num_kv_heads ({num_kv_heads})")
        if num_heads % tp:
            raise ValueError(f"num_heads ({num_heads}) is not divisible by tp_size ({tp})")
        self.num_heads = num_heads // tp
        # With fewer K/V heads than ranks each rank keeps a copy of the one its query heads use.
        self.num_kv_heads = max(num_kv_heads // tp, 1)
        self.head_dim = head_dim
        self.scale = head_dim**-0.5 if scale is None else scale
        if sinks and not 0 < sinks < window:
            raise ValueError(f"attention sinks ({sinks}) need a window longer than them, got window {window}")
        self.window, self.softcap, self.sinks, self.alibi = window, softcap, sinks, alibi
        self.q_norm = self.k_norm = None
        self.qk_norm_full = qk_norm_full
        if qk_norm_eps is not None and qk_norm_full:  # OLMo-2: over the whole projection, every head at once
            if num_kv_heads % tp:
                raise ValueError(f"q/k norms over all heads need num_kv_heads ({num_kv_heads}) divisible by tp ({tp})")
            self.q_norm = SplitRmsNorm(self.num_heads * head_dim, num_heads * head_dim, qk_norm_eps, dtype, tp)
            self.k_norm = SplitRmsNorm(self.num_kv_heads * head_dim, num_kv_heads * head_dim, qk_norm_eps, dtype, tp)
        elif qk_norm_eps is not None:
            self.q_norm = RmsNorm(head_dim, qk_norm_eps, dtype, norm_unit_offset)
            self.k_norm = RmsNorm(head_dim, qk_norm_eps, dtype, norm_unit_offset)
        qkv_out = (self.num_heads + 2 * self.num_kv_heads) * head_dim * tp
        self.qkv = ColumnLinear(hidden_size, qkv_out, bias, dtype, mapping)
        self.dense = RowLinear(num_heads * head_dim, hidden_size, dense_bias, dtype, mapping)
        self.kv_cache_dtype: torch.dtype | None = None  # None: the cache has the activations' dtype

    def set_kv_quant(self, cache_dtype: torch.dtype) -> None:
        """Makes this layer read and write a quantized cache of `cache_dtype` (int8 or float8_e4m3fn): adds
        `kv_cache_scale` float32 [2] = (k_scale, v_scale), on the layer's device (meta before loading),
        ones until loaded or filled."""
        if cache_dtype not in self.QUANT_CACHE_DTYPES:
            raise ValueError(f"a quantized KV cache is int8 or float8_e4m3fn, got {cache_dtype}")
        device = next(self.parameters()).device
        self.kv_cache_scale = nn.Parameter(torch.ones(2, dtype=torch.float32, device=device), requires_grad=False)
        self.kv_cache_dtype = cache_dtype

    def forward(
        self, x: torch.Tensor, p: AttentionParams, k_cache: torch.Tensor, v_cache: torch.Tensor
    ) -> torch.Tensor:
        T = x.shape[0]
        H, Hkv, D = self.num_heads, self.num_kv_heads, self.head_dim
        k_scale = v_scale = None
        if self.kv_cache_dtype is not None:
            if k_cache.dtype != self.kv_cache_dtype:
                raise ValueError(f"this layer's KV cache is {self.kv_cache_dtype}, the pool holds {k_cache.dtype}")
            k_scale, v_scale = self.kv_cache_scale[0], self.kv_cache_scale[1]  # views: graphs read the values
        alibi_slopes = None
        if self.alibi:
            if p.alibi_slopes is None:
                raise ValueError("an ALiBi attention layer needs AttentionParams.alibi_slopes")
            alibi_slopes = p.alibi_slopes
        qkv = self.qkv(x)  # [T, (H + 2 Hkv) D]
        q, k, v = qkv.split([H * D, Hkv * D, Hkv * D], dim=-1)
        if self.qk_norm_full:
            q, k = self.q_norm(q), self.k_norm(k)  # [T, H D], [T, Hkv D], each normed over all its heads
        q, k, v = q.view(T, H, D), k.view(T, Hkv, D), v.view(T, Hkv, D)
        if self.q_norm is not None and not self.qk_norm_full:
            q, k = self.q_norm(q), self.k_norm(k)  # [T, H, D], [T, Hkv, D], normed over D
        # rotary and the cache write in one kernel: the rotated k is written only into the cache
        q = tf.rotary_write_kv_cache(
            q, k, v, p.positions, p.cos_sin_cache, k_cache, v_cache, p.slot_mapping, k_scale, v_scale
        )
        o = tf.paged_attention(
            q,
            k_cache,
            v_cache,
            p.block_tables,
            p.seq_lens,
            p.context_lens,
            self.scale,
            p.max_seq_len,
            p.max_context_len,
            decode_tail=p.num_decode_tail,
            window=self.window,
            softcap=self.softcap,
            k_scale=k_scale,
            v_scale=v_scale,
            sinks=self.sinks,
            alibi_slopes=alibi_slopes,
        )
        return self.dense(o.reshape(T, H * D))
