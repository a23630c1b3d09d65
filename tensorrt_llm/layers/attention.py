from dataclasses import dataclass

import torch
from torch import nn

from tensorrt_llm import functional as tf
from tensorrt_llm.layers.linear import ColumnLinear, RowLinear
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


class Attention(nn.Module):
    """Multi-head attention with grouped K/V heads (MHA when num_kv_heads == num_heads, MQA when 1),
    rotary positions, a fused QKV projection and a paged KV cache."""

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
        self.scale = head_dim**-0.5
        qkv_out = (self.num_heads + 2 * self.num_kv_heads) * head_dim * tp
        self.qkv = ColumnLinear(hidden_size, qkv_out, bias, dtype, mapping)
        self.dense = RowLinear(num_heads * head_dim, hidden_size, dense_bias, dtype, mapping)

    def forward(
        self, x: torch.Tensor, p: AttentionParams, k_cache: torch.Tensor, v_cache: torch.Tensor
    ) -> torch.Tensor:
        T = x.shape[0]
        H, Hkv, D = self.num_heads, self.num_kv_heads, self.head_dim
        qkv = self.qkv(x)  # [T, (H + 2 Hkv) D]
        q, k, v = qkv.split([H * D, Hkv * D, Hkv * D], dim=-1)
        # rotary and the cache write in one kernel: the rotated k is written only into the cache
        q = tf.rotary_write_kv_cache(
            q.view(T, H, D), k.view(T, Hkv, D), v.view(T, Hkv, D), p.positions, p.cos_sin_cache,
            k_cache, v_cache, p.slot_mapping,
        )  # fmt: skip
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
        )
        return self.dense(o.reshape(T, H * D))
