"""The ops models are written with.

Each op has a plain PyTorch reference (used on CPU, in tests and as the oracle) and, on CUDA, an OpenAI
Triton kernel from `tensorrt_llm.kernels`. `TRTLLM_KERNELS=ref` forces the references everywhere.
"""

import os

import torch
import torch.nn.functional as F

from tensorrt_llm import kernels
from tensorrt_llm.kernels.gemv import GEMV_SHAPES

# Read once: consulted on every op of every step.
_KERNELS = os.environ.get("TRTLLM_KERNELS", "triton") != "ref"


def _use_kernels(x: torch.Tensor) -> bool:
    return x.is_cuda and _KERNELS and kernels.available(x)


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """x [M, K] @ weight [N, K]^T (+ bias). cuBLAS, except for one row of x (batch-1 decode) and the
    weight shapes where the engine's build-time tuning found the Triton GEMV faster on its GPU
    (`GEMV_SHAPES`, installed at load; empty by default: over all shapes the GEMV does not beat cuBLAS,
    on some it does). Both paths are CUDA-graph safe."""
    if GEMV_SHAPES and x.dim() == 2 and x.shape[0] == 1:
        cfg = GEMV_SHAPES.get((weight.shape[0], weight.shape[1]))
        if (
            cfg is not None
            and x.dtype == weight.dtype
            and x.stride(-1) == 1
            and weight.stride(-1) == 1
            and _use_kernels(x)
        ):
            return kernels.gemv(x, weight, bias, cfg)
    return F.linear(x, weight, bias)


def rms_norm(
    x: torch.Tensor, weight: torch.Tensor, eps: float, residual: torch.Tensor | None = None, unit_offset: bool = False
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """RMSNorm of `x` [..., H]; with `residual`, normalises `x + residual` and also returns that sum (the
    next layer's residual), so the add and the norm read the activations once. `unit_offset`: Gemma's
    `(1 + weight)` weighting, in float32."""
    if _use_kernels(x):
        return kernels.rms_norm(x, weight, eps, residual, unit_offset)
    return kernels.rms_norm_ref(x, weight, eps, residual, unit_offset)


def layer_norm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, eps: float) -> torch.Tensor:
    return F.layer_norm(x, (x.shape[-1],), weight, bias, eps)


def silu_and_mul(x: torch.Tensor) -> torch.Tensor:
    """SwiGLU: `x` [..., 2I] holds gate then up (one fused GEMM); returns silu(gate) * up [..., I]."""
    if _use_kernels(x):
        return kernels.silu_and_mul(x)
    return kernels.silu_and_mul_ref(x)


def gelu_tanh_and_mul(x: torch.Tensor) -> torch.Tensor:
    """GeGLU (Gemma): `x` [..., 2I] holds gate then up; returns gelu_tanh(gate) * up [..., I]."""
    if _use_kernels(x):
        return kernels.gelu_tanh_and_mul(x)
    return kernels.gelu_tanh_and_mul_ref(x)


# Gated activations by their Hugging Face `hidden_act` names (layers pick theirs once, when built).
GATED_ACTIVATIONS = {"silu": silu_and_mul, "gelu_pytorch_tanh": gelu_tanh_and_mul}


def apply_rotary(
    q: torch.Tensor, k: torch.Tensor, positions: torch.Tensor, cos_sin_cache: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotary embedding, Hugging Face (rotate-half) convention. q [T, H, D], k [T, Hkv, D],
    positions [T], cos_sin_cache [max_pos, D] = cat(cos, sin) of the D/2 frequencies."""
    if _use_kernels(q):
        return kernels.apply_rotary(q, k, positions, cos_sin_cache)
    return kernels.apply_rotary_ref(q, k, positions, cos_sin_cache)


def write_kv_cache(
    k: torch.Tensor,
    v: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    slot_mapping: torch.Tensor,
    k_scale: torch.Tensor | None = None,
    v_scale: torch.Tensor | None = None,
) -> None:
    """Stores this step's K/V [T, Hkv, D] at their slots of the paged cache [blocks, tokens_per_block, Hkv, D];
    an int8 / float8_e4m3fn cache stores K / k_scale and V / v_scale (float32 one-element tensors)."""
    args = (k, v, k_cache, v_cache, slot_mapping, k_scale, v_scale)
    if _use_kernels(k):
        kernels.write_kv_cache(*args)
    else:
        kernels.write_kv_cache_ref(*args)


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
    """`apply_rotary` then `write_kv_cache` (one kernel on CUDA): q [T, H, D] and k [T, Hkv, D] rotated by
    `positions`, the rotated k and v [T, Hkv, D] stored at their cache slots (quantized by k_scale /
    v_scale in an int8 / float8_e4m3fn cache); returns the rotated q."""
    args = (q, k, v, positions, cos_sin_cache, k_cache, v_cache, slot_mapping, k_scale, v_scale)
    if _use_kernels(q):
        return kernels.rotary_write_kv_cache(*args)
    return kernels.rotary_write_kv_cache_ref(*args)


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
    decode_tail: int = 0,
    window: int = 0,
    softcap: float = 0.0,
    k_scale: torch.Tensor | None = None,
    v_scale: torch.Tensor | None = None,
    sinks: int = 0,
    alibi_slopes: torch.Tensor | None = None,
) -> torch.Tensor:
    """Causal attention of packed queries q [T, H, D] over the paged cache; see docs/architecture.md.
    `decode_tail`: the last sequences with one new token each (kernel choice only). `window` > 0: each
    query sees only the last `window` keys up to its own position (sliding-window attention), and with
    `sinks` > 0 the first `sinks` keys too (attention sinks: [0, sinks) U (p - window, p]). `softcap`
    > 0: scaled scores become softcap * tanh(score / softcap) (Gemma-2). An int8 / float8_e4m3fn cache
    holds K / k_scale and V / v_scale (float32 one-element tensors). `alibi_slopes` (float32 [H]): ALiBi,
    scores + slope_h * (key position - query position) (BLOOM, MPT)."""
    if _use_kernels(q):
        return kernels.paged_attention(
            q, k_cache, v_cache, block_tables, seq_lens, context_lens, scale, max_seq_len, max_context_len,
            decode_tail=decode_tail, window=window, softcap=softcap, k_scale=k_scale, v_scale=v_scale, sinks=sinks,
            alibi_slopes=alibi_slopes,
        )  # fmt: skip
    return kernels.paged_attention_ref(
        q, k_cache, v_cache, block_tables, seq_lens, context_lens, scale, max_seq_len, max_context_len, window,
        softcap, k_scale, v_scale, sinks, alibi_slopes,
    )  # fmt: skip


# Rotary tables are built once per model (float32, [max_pos, D] = cat(cos, sin)).
rope_cos_sin_cache = kernels.rope_cos_sin_cache
