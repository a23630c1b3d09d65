"""Skinny GEMM (few rows of activations, y = x @ W^T) for decode at small batch.

At batch 1 a linear layer is one pass over its weight matrix: the GPU's memory bandwidth, not its math,
sets the time. Each program streams BLOCK_N rows of W [N, K] (contiguous along K, so every load is
coalesced) through the loop over K, keeping the few activation rows in registers:

    program p: rows n = p*BLOCK_N .. p*BLOCK_N+BLOCK_N-1 of W
    for k0 in 0..K step BLOCK_K:   acc[M, BLOCK_N] += x[M, k0:k0+BK] · W[n, k0:k0+BK]
    y[M, n] = acc (fp32 accumulation, cast to the output dtype)

Over all Llama shapes it is no faster than cuBLAS, but on some shapes at M = 1 it is (H100, float16:
o_proj 4096x4096 +6%, gate_up 22016x4096 +4%, lm_head 32000x4096 +6%; and it loses on others:
`benchmarks/results/gemv_experiment_h100.txt`). So the choice is made per weight shape, on the target
GPU, when the engine is built (`tuning.tune_gemv`), and kept in the engine: `GEMV_SHAPES` holds the
shapes (and launch config) where `tensorrt_llm.functional.linear` calls this kernel for a one-row x.
Empty by default: cuBLAS everywhere.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ._common import HAS_TRITON, check, check_launchable

GEMV_MAX_M = 4
# (BLOCK_N, BLOCK_K, num_warps, num_stages) by rows of x: the best over the Llama-2-7B shapes in the
# H100 sweep (gemv_experiment_h100.txt)
GEMV_CONFIG: dict[int, tuple[int, int, int, int]] = {1: (4, 512, 4, 3), 2: (8, 512, 4, 3), 4: (8, 512, 4, 4)}
# (N, K) of a weight -> launch config, for x of one row; filled in place by tuning.apply_configs (in
# place, so that modules holding the dict see the engine's choice)
GEMV_SHAPES: dict[tuple[int, int], tuple[int, int, int, int]] = {}

if HAS_TRITON:
    import triton
    import triton.language as tl

    @triton.jit
    def _gemv_kernel(
        x_ptr, w_ptr, b_ptr, y_ptr, M, N, K, stride_xm, stride_wn, stride_ym,
        HAS_BIAS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
        EVEN_K: tl.constexpr,
    ):  # fmt: skip
        pid = tl.program_id(0)
        offs_n = pid * BLOCK_N + tl.arange(0, BLOCK_N)
        offs_m = tl.arange(0, BLOCK_M)
        n_mask = offs_n < N
        m_mask = offs_m < M
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for k0 in range(0, K, BLOCK_K):
            offs_k = k0 + tl.arange(0, BLOCK_K)
            w_ptrs = w_ptr + offs_n[:, None] * stride_wn + offs_k[None, :]  # [BLOCK_N, BLOCK_K]
            x_ptrs = x_ptr + offs_m[:, None] * stride_xm + offs_k[None, :]  # [BLOCK_M, BLOCK_K]
            if EVEN_K:  # no K mask: the loads vectorize fully
                w = tl.load(w_ptrs, mask=n_mask[:, None], other=0.0)
                x = tl.load(x_ptrs, mask=m_mask[:, None], other=0.0)
            else:
                k_mask = offs_k < K
                w = tl.load(w_ptrs, mask=n_mask[:, None] & k_mask[None, :], other=0.0)
                x = tl.load(x_ptrs, mask=m_mask[:, None] & k_mask[None, :], other=0.0)
            # [BLOCK_M, 1, BLOCK_K] * [1, BLOCK_N, BLOCK_K] summed over K
            acc += tl.sum(x.to(tl.float32)[:, None, :] * w.to(tl.float32)[None, :, :], axis=2)
        if HAS_BIAS:
            acc += tl.load(b_ptr + offs_n, mask=n_mask, other=0.0).to(tl.float32)[None, :]
        y_ptrs = y_ptr + offs_m[:, None] * stride_ym + offs_n[None, :]
        tl.store(y_ptrs, acc.to(y_ptr.dtype.element_ty), mask=m_mask[:, None] & n_mask[None, :])


def _check_args(x, w, bias) -> None:
    check(x.dim() == 2 and w.dim() == 2, "gemv: x must be [M, K] and w [N, K], got {} and {}", x.shape, w.shape)
    check(w.shape[1] == x.shape[1], "gemv: K mismatch, x {} w {}", tuple(x.shape), tuple(w.shape))
    check(1 <= x.shape[0] <= GEMV_MAX_M, "gemv: M={} outside 1..{}", x.shape[0], GEMV_MAX_M)
    check(x.dtype == w.dtype, "gemv: x {} and w {} dtypes differ", x.dtype, w.dtype)
    check(bias is None or bias.shape == (w.shape[0],), "gemv: bias must be [N]")


def gemv(
    x: torch.Tensor,
    w: torch.Tensor,
    bias: torch.Tensor | None = None,
    config: tuple[int, int, int, int] | None = None,
) -> torch.Tensor:
    """y [M, N] = x [M, K] @ w [N, K]^T (+ bias), for M <= GEMV_MAX_M; x and w share a dtype.

    `config` = (BLOCK_N, BLOCK_K, num_warps, num_stages), default GEMV_CONFIG by M. Allocates only y and
    never syncs with the host, so it can be captured in a CUDA graph.
    """
    _check_args(x, w, bias)
    check(x.stride(1) == 1 and w.stride(1) == 1, "gemv: x and w must be contiguous along K")
    # int32 offsets into w (as measured; int64 address math would change the kernel)
    check(w.shape[0] * w.stride(0) < 2**31, "gemv: w {} too large for int32 offsets", tuple(w.shape))
    check_launchable(x, w, *(() if bias is None else (bias,)))
    M, K = x.shape
    N = w.shape[0]
    block_m = 1 if M == 1 else (2 if M == 2 else 4)
    block_n, block_k, warps, stages = config or GEMV_CONFIG[block_m]
    y = torch.empty(M, N, dtype=x.dtype, device=x.device)
    _gemv_kernel[(triton.cdiv(N, block_n),)](
        x, w, bias if bias is not None else w, y, M, N, K, x.stride(0), w.stride(0), y.stride(0),
        HAS_BIAS=bias is not None, BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k, EVEN_K=K % block_k == 0,
        num_warps=warps, num_stages=stages,
    )  # fmt: skip
    return y


def gemv_ref(x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """PyTorch reference of `gemv`: y [M, N] = x [M, K] @ w [N, K]^T (+ bias), i.e. F.linear."""
    _check_args(x, w, bias)
    return F.linear(x, w, bias)
