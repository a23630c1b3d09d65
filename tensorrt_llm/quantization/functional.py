"""The matmul of a quantized linear layer: a Triton kernel (or cuBLAS FP8) on CUDA, the dequantizing
reference elsewhere (CPU, `TRTLLM_KERNELS=ref`), chosen as `tensorrt_llm.functional` chooses."""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

import torch

from tensorrt_llm import functional as tf
from tensorrt_llm import kernels

if TYPE_CHECKING:
    from tensorrt_llm.layers.linear import _Linear

# Rows of x up to which FP8 weights are read by the Triton GEMV (weights dequantized in registers, x kept
# in float) instead of cuBLAS FP8. 0: cuBLAS at every M, which measured faster (H200, Llama-3.1-8B shapes,
# M = 1: 53-85 % of copy bandwidth against the GEMV's 29-34 %; benchmarks/bench_quant_kernels.py).
FP8_GEMV_MAX_M = 0
_ROWWISE_OUT: dict[torch.dtype, torch.dtype] = {}


@functools.cache
def _has_fp8(index: int) -> bool:
    """FP8 tensor cores (Ada, Hopper and later) on CUDA device `index` (-1: CPU); asked once per device, not
    on every linear layer of every step."""
    return index >= 0 and torch.cuda.get_device_capability(index) >= (8, 9)


def quant_linear(layer: _Linear, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """y [M, N] = x [M, K] @ dequant(layer.weight)^T (+ bias), in x's dtype."""
    algo = layer.quant
    if algo.startswith("FP8"):
        x_scale = getattr(layer, "input_scale", None)
        return fp8_linear(x, layer.weight, layer.weight_scale, x_scale, bias)
    if algo.startswith("W8A8_SQ"):
        x_scale = getattr(layer, "input_scale", None)
        return smooth_quant_linear(x, layer.smoother, layer.weight, layer.weight_scale, x_scale, bias)
    bits = 8 if algo == "W8A16" else 4
    zero = getattr(layer, "weight_zero", None)
    return weight_only_linear(x, layer.weight, layer.weight_scale, zero, bits, layer.group_size, bias)


def weight_only_linear(
    x: torch.Tensor,
    qweight: torch.Tensor,
    scale: torch.Tensor,
    zero: torch.Tensor | None,
    bits: int,
    group_size: int,
    bias: torch.Tensor | None,
) -> torch.Tensor:
    if tf._use_kernels(x):
        return kernels.weight_only_linear(x, qweight, scale, zero, bits, group_size, bias)
    return kernels.weight_only_linear_ref(x, qweight, scale, zero, bits, group_size, bias)


def fp8_linear(
    x: torch.Tensor,
    w: torch.Tensor,
    w_scale: torch.Tensor,
    x_scale: torch.Tensor | None,
    bias: torch.Tensor | None,
) -> torch.Tensor:
    """FP8 W8A8: `x_scale` a static per-tensor activation scale, or None for dynamic per-token scales;
    `w_scale` per tensor ([]) or per output channel ([N])."""
    if not (tf._use_kernels(x) and _has_fp8(x.get_device())):
        return kernels.fp8_linear_ref(x, w, w_scale, x_scale, bias)
    if x.shape[0] <= FP8_GEMV_MAX_M:
        return kernels.fp8_weight_gemv(x, w, w_scale, bias)
    if x_scale is not None:
        xq = kernels.quantize_fp8_static(x, x_scale)
        # w [N, K] row-major is the column-major [K, N] cuBLAS wants as its second operand
        return torch._scaled_mm(xq, w.t(), scale_a=x_scale, scale_b=w_scale, bias=bias, out_dtype=x.dtype)
    xq, xs = kernels.quantize_fp8_per_token(x)  # [M, K] e4m3, [M, 1] float32
    ws = w_scale.view(1, -1) if w_scale.dim() else w_scale.expand(1, w.shape[0])
    return _scaled_mm_rowwise(xq, w, xs, ws.contiguous(), bias, x.dtype)


def _scaled_mm_rowwise(xq, w, xs, ws, bias, dtype) -> torch.Tensor:
    # Row-wise scales take a float16 output on recent cuBLAS / CUTLASS only; older builds want bfloat16.
    out = _ROWWISE_OUT.get(dtype, dtype)
    try:
        y = torch._scaled_mm(xq, w.t(), scale_a=xs, scale_b=ws, bias=None, out_dtype=out)
    except RuntimeError:
        if out == torch.bfloat16:
            raise
        _ROWWISE_OUT[dtype] = torch.bfloat16
        y = torch._scaled_mm(xq, w.t(), scale_a=xs, scale_b=ws, bias=None, out_dtype=torch.bfloat16)
    y = y.to(dtype)
    return y if bias is None else y + bias


# Rows of x up to which SmoothQuant runs as weight-only int8 on the smoothed x: decode at small batch is
# bound by reading the weights, so quantizing x buys nothing there (and cuBLAS int8 wants M > 16).
SQ_WEIGHT_ONLY_MAX_M = 16


def smooth_quant_linear(
    x: torch.Tensor,
    smoother: torch.Tensor,
    w: torch.Tensor,
    w_scale: torch.Tensor,
    x_scale: torch.Tensor | None,
    bias: torch.Tensor | None,
) -> torch.Tensor:
    """SmoothQuant W8A8: y = quant(x * smoother) @ w^T, int8 x int8 → int32, scaled by x's scale (static
    per-tensor `x_scale`, or per token when None) and w's per-channel `w_scale`."""
    if not (tf._use_kernels(x) and x.is_cuda):
        return kernels.smooth_quant_linear_ref(x, smoother, w, w_scale, x_scale, bias)
    if x.shape[0] <= SQ_WEIGHT_ONLY_MAX_M:
        return kernels.weight_only_linear((x * smoother).to(x.dtype), w, w_scale, None, 8, 0, bias)
    return kernels.smooth_quant_linear(x, smoother, w, w_scale, x_scale, bias)
