"""SmoothQuant W8A8 INT8: activations smoothed and quantized per token (or with a static scale), an int8 x
int8 GEMM accumulating in int32, and both scales applied in its epilogue.

    xq [M, K] int8 = round(x * smoother / x_scale)      x_scale [M, 1] per token (amax / 127), or static []
    y  [M, N]      = (xq @ wq^T) * x_scale * w_scale[n] (+ bias)     wq int8 [N, K], w_scale float32 [N]

On Hopper the int8 tensor cores run at twice the float16 rate; the weights are read at one byte each.
"""

from __future__ import annotations

import torch

from ._common import HAS_TRITON, check, check_launchable, next_pow2

INT8_MAX = 127.0
_MIN_SCALE = 1e-8

if HAS_TRITON:
    import triton
    import triton.language as tl

    @triton.jit
    def _quant_int8_rows_kernel(
        x_ptr, s_ptr, q_ptr, scale_ptr, K, stride_x, stride_q,
        STATIC: tl.constexpr, BLOCK_K: tl.constexpr,
    ):  # fmt: skip
        # one program per row: amax of x * smoother over the row (unless static), then the int8 row
        row = tl.program_id(0)
        if STATIC:
            scale = tl.load(scale_ptr)
        else:
            amax = tl.zeros((BLOCK_K,), dtype=tl.float32)
            for k0 in range(0, K, BLOCK_K):
                offs = k0 + tl.arange(0, BLOCK_K)
                mask = offs < K
                x = tl.load(x_ptr + row * stride_x + offs, mask=mask, other=0.0).to(tl.float32)
                x = x * tl.load(s_ptr + offs, mask=mask, other=0.0)
                amax = tl.maximum(amax, tl.abs(x))
            scale = tl.maximum(tl.max(amax, axis=0) / 127.0, 1e-8)
            tl.store(scale_ptr + row, scale)
        for k0 in range(0, K, BLOCK_K):
            offs = k0 + tl.arange(0, BLOCK_K)
            mask = offs < K
            x = tl.load(x_ptr + row * stride_x + offs, mask=mask, other=0.0).to(tl.float32)
            v = x * tl.load(s_ptr + offs, mask=mask, other=0.0) / scale
            # round half away from zero (torch.round rounds half to even: they differ on exact halves only)
            v = tl.where(v >= 0, tl.floor(v + 0.5), -tl.floor(-v + 0.5))
            v = tl.minimum(tl.maximum(v, -127.0), 127.0)
            tl.store(q_ptr + row * stride_q + offs, v.to(tl.int8), mask=mask)

    @triton.jit
    def _int8_gemm_kernel(
        a_ptr, b_ptr, y_ptr, as_ptr, bs_ptr, bias_ptr, M, N, K, stride_am, stride_bn, stride_ym,
        PER_TOKEN: tl.constexpr, HAS_BIAS: tl.constexpr, EVEN_K: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
    ):  # fmt: skip
        # grouped launch order: GROUP_M row tiles share each column tile while it is in L2
        pid = tl.program_id(0)
        num_m = tl.cdiv(M, BLOCK_M)
        num_n = tl.cdiv(N, BLOCK_N)
        per_group = GROUP_M * num_n
        first_m = (pid // per_group) * GROUP_M
        group_m = tl.minimum(num_m - first_m, GROUP_M)
        pid_m = first_m + (pid % per_group) % group_m
        pid_n = (pid % per_group) // group_m
        offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        offs_k = tl.arange(0, BLOCK_K)
        m_mask = offs_m < M
        n_mask = offs_n < N
        a_ptrs = a_ptr + offs_m[:, None] * stride_am + offs_k[None, :]  # [BLOCK_M, BLOCK_K]
        b_ptrs = b_ptr + offs_n[None, :] * stride_bn + offs_k[:, None]  # [BLOCK_K, BLOCK_N] of w^T
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.int32)
        for k0 in range(0, K, BLOCK_K):
            if EVEN_K:
                a = tl.load(a_ptrs, mask=m_mask[:, None], other=0)
                b = tl.load(b_ptrs, mask=n_mask[None, :], other=0)
            else:
                k_mask = (k0 + offs_k) < K
                a = tl.load(a_ptrs, mask=m_mask[:, None] & k_mask[None, :], other=0)
                b = tl.load(b_ptrs, mask=k_mask[:, None] & n_mask[None, :], other=0)
            acc += tl.dot(a, b, out_dtype=tl.int32)
            a_ptrs += BLOCK_K
            b_ptrs += BLOCK_K
        if PER_TOKEN:
            a_s = tl.load(as_ptr + offs_m, mask=m_mask, other=0.0)[:, None]
        else:
            a_s = tl.load(as_ptr)
        y = acc.to(tl.float32) * a_s * tl.load(bs_ptr + offs_n, mask=n_mask, other=0.0)[None, :]
        if HAS_BIAS:
            y += tl.load(bias_ptr + offs_n, mask=n_mask, other=0.0).to(tl.float32)[None, :]
        y_ptrs = y_ptr + offs_m[:, None] * stride_ym + offs_n[None, :]
        tl.store(y_ptrs, y.to(y_ptr.dtype.element_ty), mask=m_mask[:, None] & n_mask[None, :])


def _check_x(x: torch.Tensor, smoother: torch.Tensor) -> None:
    check(x.dim() == 2 and x.stride(1) == 1, "x must be [M, K] contiguous along K, got {}", tuple(x.shape))
    check(smoother.shape == (x.shape[1],), "smoother must be [K={}], got {}", x.shape[1], tuple(smoother.shape))


def _launch_quant(x: torch.Tensor, smoother: torch.Tensor, scale: torch.Tensor | None):
    _check_x(x, smoother)
    check_launchable(x, smoother, *(() if scale is None else (scale,)))
    M, K = x.shape
    q = torch.empty(M, K, dtype=torch.int8, device=x.device)
    out_scale = scale if scale is not None else torch.empty(M, 1, dtype=torch.float32, device=x.device)
    if M:
        block_k = min(next_pow2(K), 2048)
        _quant_int8_rows_kernel[(M,)](
            x, smoother, q, out_scale, K, x.stride(0), q.stride(0), STATIC=scale is not None, BLOCK_K=block_k
        )
    return q, out_scale


def quantize_int8_per_token(x: torch.Tensor, smoother: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x [M, K] → (int8 [M, K], float32 scale [M, 1]): each row of x * smoother [K] scaled to ±127."""
    return _launch_quant(x, smoother, None)


def quantize_int8_per_token_ref(x: torch.Tensor, smoother: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    _check_x(x, smoother)
    xs = x.float() * smoother.float()
    scale = (xs.abs().amax(dim=1, keepdim=True) / INT8_MAX).clamp(min=_MIN_SCALE)
    return torch.round(xs / scale).clamp(-INT8_MAX, INT8_MAX).to(torch.int8), scale


def quantize_int8_static(x: torch.Tensor, smoother: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """x [M, K] → int8 [M, K] = round(x * smoother / scale) with a calibrated per-tensor `scale` []."""
    check(scale.numel() == 1, "static scale must hold one value, got {}", tuple(scale.shape))
    return _launch_quant(x, smoother, scale)[0]


def quantize_int8_static_ref(x: torch.Tensor, smoother: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    _check_x(x, smoother)
    return torch.round(x.float() * smoother.float() / scale.float()).clamp(-INT8_MAX, INT8_MAX).to(torch.int8)


def _check_gemm(xq, x_scale, w, w_scale, bias) -> None:
    check(xq.dtype == torch.int8 and w.dtype == torch.int8, "int8_linear: xq and w must be int8")
    check(xq.dim() == 2 and w.dim() == 2 and xq.shape[1] == w.shape[1], "int8_linear: x [M, K] and w [N, K] needed")
    M, N = xq.shape[0], w.shape[0]
    check(x_scale.shape in ((), (M, 1)), "int8_linear: x_scale must be [] or [M, 1], got {}", tuple(x_scale.shape))
    check(w_scale.shape == (N,), "int8_linear: w_scale must be [N={}], got {}", N, tuple(w_scale.shape))
    check(bias is None or bias.shape == (N,), "int8_linear: bias must be [N]")


# (BLOCK_M, BLOCK_N, BLOCK_K, num_warps, num_stages) by M: int8 tiles twice as deep along K as float16's
def _config(M: int) -> tuple[int, int, int, int, int]:
    if M <= 32:
        return 32, 64, 128, 4, 4
    if M <= 64:
        return 64, 128, 128, 4, 4
    return 128, 128, 128, 8, 3


def int8_linear(
    xq: torch.Tensor,
    x_scale: torch.Tensor,
    w: torch.Tensor,
    w_scale: torch.Tensor,
    bias: torch.Tensor | None,
    dtype: torch.dtype,
    config: tuple[int, int, int, int, int] | None = None,
) -> torch.Tensor:
    """y [M, N] (`dtype`) = (xq [M, K] int8 @ w [N, K]^T int8, int32 accumulation) * x_scale ([] or [M, 1])
    * w_scale [N] (+ bias). Allocates only y and never syncs: CUDA-graph safe."""
    _check_gemm(xq, x_scale, w, w_scale, bias)
    check(xq.stride(1) == 1 and w.stride(1) == 1, "int8_linear: xq and w must be contiguous along K")
    check_launchable(xq, x_scale, w, w_scale, *(() if bias is None else (bias,)))
    M, K = xq.shape
    N = w.shape[0]
    y = torch.empty(M, N, dtype=dtype, device=xq.device)
    if M == 0:
        return y
    bm, bn, bk, warps, stages = config or _config(M)
    grid = (triton.cdiv(M, bm) * triton.cdiv(N, bn),)
    _int8_gemm_kernel[grid](
        xq, w, y, x_scale, w_scale, bias if bias is not None else w_scale, M, N, K,
        xq.stride(0), w.stride(0), y.stride(0),
        PER_TOKEN=x_scale.dim() == 2, HAS_BIAS=bias is not None,
        EVEN_K=K % bk == 0, BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, GROUP_M=8, num_warps=warps, num_stages=stages,
    )  # fmt: skip
    return y


def int8_linear_ref(
    xq: torch.Tensor,
    x_scale: torch.Tensor,
    w: torch.Tensor,
    w_scale: torch.Tensor,
    bias: torch.Tensor | None,
    dtype: torch.dtype,
) -> torch.Tensor:
    _check_gemm(xq, x_scale, w, w_scale, bias)
    # float64 sums of int8 products are exact below 2^53 (float32 would round past 2^24; CUDA has no int64 GEMM)
    acc = xq.double() @ w.double().t()
    y = acc * x_scale.double().reshape(-1, 1) * w_scale.double()[None, :]
    if bias is not None:
        y = y + bias.double()
    return y.to(dtype)


def _smooth_quant_linear(x, smoother, w, w_scale, x_scale, bias, quant_per_token, quant_static, matmul):
    if x_scale is None:
        xq, xs = quant_per_token(x, smoother)
    else:
        xq, xs = quant_static(x, smoother, x_scale), x_scale
    return matmul(xq, xs, w, w_scale, bias, x.dtype)


def smooth_quant_linear(
    x: torch.Tensor,
    smoother: torch.Tensor,
    w: torch.Tensor,
    w_scale: torch.Tensor,
    x_scale: torch.Tensor | None,
    bias: torch.Tensor | None,
) -> torch.Tensor:
    """The whole SmoothQuant linear layer: quantize x [M, K] * smoother [K] (per token when `x_scale` is
    None, else with that static scale), int8 matmul with w [N, K], both scales (+ bias) → [M, N]."""
    args = (x, smoother, w, w_scale, x_scale, bias)
    return _smooth_quant_linear(*args, quantize_int8_per_token, quantize_int8_static, int8_linear)


def smooth_quant_linear_ref(
    x: torch.Tensor,
    smoother: torch.Tensor,
    w: torch.Tensor,
    w_scale: torch.Tensor,
    x_scale: torch.Tensor | None,
    bias: torch.Tensor | None,
) -> torch.Tensor:
    """PyTorch reference of `smooth_quant_linear`."""
    args = (x, smoother, w, w_scale, x_scale, bias)
    return _smooth_quant_linear(*args, quantize_int8_per_token_ref, quantize_int8_static_ref, int8_linear_ref)
