"""The paged KV cache pool: one allocation, viewed per layer as K and V block arrays.

    data  [L, 2, num_blocks, tokens_per_block, Hkv, D]
    k[l] = data[l, 0]  -> [num_blocks, tokens_per_block, Hkv, D]   (v[l] = data[l, 1])

Which block belongs to which sequence is the scheduler's business; the pool only stores. One extra block
(`scratch_block`, index num_blocks) is never handed out: padded rows of a CUDA-graph step write there.

`dtype` is the cache's: the engine dtype, or int8 / float8_e4m3fn for a quantized cache
(`kv_cache_quant_algo` INT8 / FP8; the layers hold the scales), half the bytes of fp16."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from tensorrt_llm.quantization import QuantConfig

# kv_cache_quant_algo -> what the cache stores
KV_CACHE_QUANT_DTYPES = {"INT8": torch.int8, "FP8": torch.float8_e4m3fn}


def kv_cache_dtype(quant: QuantConfig | None, dtype: torch.dtype) -> torch.dtype:
    """The cache dtype of an engine: `quant` (a QuantConfig, or None) names INT8 / FP8, else `dtype`."""
    algo = getattr(quant, "kv_cache_quant_algo", None)
    return KV_CACHE_QUANT_DTYPES[algo] if algo is not None else dtype


class KVCachePool:
    def __init__(
        self,
        num_layers: int,
        num_blocks: int,
        tokens_per_block: int,
        num_kv_heads: int,
        head_dim: int,
        dtype: torch.dtype,
        device: torch.device | str,
    ) -> None:
        if num_blocks < 1:
            raise ValueError(f"the KV cache needs at least one block, got {num_blocks}")
        self.num_blocks = num_blocks
        self.tokens_per_block = tokens_per_block
        self.scratch_block = num_blocks
        self.data = torch.zeros(
            num_layers, 2, num_blocks + 1, tokens_per_block, num_kv_heads, head_dim, dtype=dtype, device=device
        )
        self.k = [self.data[i, 0] for i in range(num_layers)]
        self.v = [self.data[i, 1] for i in range(num_layers)]

    @property
    def max_tokens(self) -> int:
        return self.num_blocks * self.tokens_per_block

    @staticmethod
    def bytes_per_block(
        num_layers: int, tokens_per_block: int, num_kv_heads: int, head_dim: int, dtype: torch.dtype
    ) -> int:
        return 2 * num_layers * tokens_per_block * num_kv_heads * head_dim * dtype.itemsize
