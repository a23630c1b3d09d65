"""OpenAI Triton kernels, each beside its PyTorch reference (`*_ref`).

`tensorrt_llm.functional` calls the kernel when `available(tensor)` and the reference otherwise. The
kernels also run on CPU tensors under the Triton interpreter (`TRITON_INTERPRET=1` set before triton is
first imported), which is how tests check them without a GPU.
"""

from ._common import HAS_TRITON, available, interpreting
from .activation import gelu_tanh_and_mul, gelu_tanh_and_mul_ref, silu_and_mul, silu_and_mul_ref
from .attention import paged_attention, paged_attention_ref
from .gemv import gemv, gemv_ref
from .int8 import (
    int8_linear,
    int8_linear_ref,
    quantize_int8_per_token,
    quantize_int8_per_token_ref,
    quantize_int8_static,
    quantize_int8_static_ref,
    smooth_quant_linear,
    smooth_quant_linear_ref,
)
from .kv_cache import rotary_write_kv_cache, rotary_write_kv_cache_ref, write_kv_cache, write_kv_cache_ref
from .norm import rms_norm, rms_norm_ref
from .quant import (
    dequantize_fp8,
    dequantize_int4_groupwise,
    dequantize_int8_per_channel,
    fp8_linear_ref,
    fp8_weight_gemv,
    fp8_weight_gemv_ref,
    pack_int4,
    quantize_fp8,
    quantize_fp8_per_token,
    quantize_fp8_per_token_ref,
    quantize_fp8_static,
    quantize_fp8_static_ref,
    quantize_int4_groupwise,
    quantize_int4_groupwise_asym,
    quantize_int8_per_channel,
    unpack_int4,
    weight_only_linear,
    weight_only_linear_ref,
)
from .rotary import apply_rotary, apply_rotary_ref, longrope_original_length, rope_cos_sin_cache, rope_inv_freq
from .sampling import hash_uniform, top_k_top_p_probs, top_k_top_p_sample, top_k_top_p_sample_ref
from .tuning import apply_configs, current_configs, tune_attention, tune_gemv

__all__ = [
    "HAS_TRITON",
    "apply_configs",
    "apply_rotary",
    "apply_rotary_ref",
    "available",
    "current_configs",
    "dequantize_fp8",
    "dequantize_int4_groupwise",
    "dequantize_int8_per_channel",
    "fp8_linear_ref",
    "fp8_weight_gemv",
    "fp8_weight_gemv_ref",
    "gelu_tanh_and_mul",
    "gelu_tanh_and_mul_ref",
    "gemv",
    "gemv_ref",
    "hash_uniform",
    "int8_linear",
    "int8_linear_ref",
    "interpreting",
    "pack_int4",
    "paged_attention",
    "paged_attention_ref",
    "quantize_fp8",
    "quantize_fp8_per_token",
    "quantize_fp8_per_token_ref",
    "quantize_fp8_static",
    "quantize_fp8_static_ref",
    "quantize_int4_groupwise",
    "quantize_int4_groupwise_asym",
    "quantize_int8_per_channel",
    "rms_norm",
    "quantize_int8_per_token",
    "quantize_int8_per_token_ref",
    "quantize_int8_static",
    "quantize_int8_static_ref",
    "rms_norm_ref",
    "longrope_original_length",
    "rope_cos_sin_cache",
    "rope_inv_freq",
    "rotary_write_kv_cache",
    "rotary_write_kv_cache_ref",
    "silu_and_mul",
    "silu_and_mul_ref",
    "smooth_quant_linear",
    "smooth_quant_linear_ref",
    "top_k_top_p_probs",
    "top_k_top_p_sample",
    "top_k_top_p_sample_ref",
    "tune_attention",
    "tune_gemv",
    "unpack_int4",
    "weight_only_linear",
    "weight_only_linear_ref",
    "write_kv_cache",
    "write_kv_cache_ref",
]
