"""RMSNorm with an optional fused residual add (Llama's `input_layernorm(h + residual)`).

Two weightings, chosen when the model is built: Llama's `w * round(x / rms)` and Gemma's
`round(x / rms * (1 + w))` (`unit_offset`: checkpoints store w - 1, and the product stays in float32
before the one rounding, as Hugging Face's GemmaRMSNorm)."""

from __future__ import annotations

import torch

from ._common import HAS_TRITON, check, check_launchable, next_pow2

if HAS_TRITON:
    import triton
    import triton.language as tl

    @triton.jit
    def _rms_norm_kernel(
        x_ptr, r_ptr, w_ptr, y_ptr, r_out_ptr,
        stride_x, stride_r, stride_y, stride_ro,
        hidden, eps,
        HAS_RESIDUAL: tl.constexpr, UNIT_OFFSET: tl.constexpr, BLOCK: tl.constexpr,
    ):  # fmt: skip
        # one program per row; the whole row [BLOCK >= hidden] stays in registers
        row = tl.program_id(0).to(tl.int64)
        cols = tl.arange(0, BLOCK)
        mask = cols < hidden
        x = tl.load(x_ptr + row * stride_x + cols, mask=mask, other=0.0)
        if HAS_RESIDUAL:
            r = tl.load(r_ptr + row * stride_r + cols, mask=mask, other=0.0)
            # round the sum to the input dtype first, as the unfused model does
            x = (x.to(tl.float32) + r.to(tl.float32)).to(x.dtype)
            tl.store(r_out_ptr + row * stride_ro + cols, x, mask=mask)
        xf = x.to(tl.float32)
        inv_rms = 1.0 / tl.sqrt(tl.sum(xf * xf, axis=0) / hidden + eps)
        w = tl.load(w_ptr + cols, mask=mask, other=0.0)
        if UNIT_OFFSET:  # Gemma: (1 + w), scaled in float32, one rounding at the store
            y = xf * inv_rms * (1.0 + w.to(tl.float32))
        else:  # HF Llama casts the normalized row to the input dtype before scaling by the weight
            y = (xf * inv_rms).to(x.dtype).to(tl.float32) * w.to(tl.float32)
        tl.store(y_ptr + row * stride_y + cols, y.to(y_ptr.dtype.element_ty), mask=mask)


def _check_args(x, w, residual) -> None:
    check(x.dim() >= 1 and w.shape == (x.shape[-1],), "w must be [{}], got {}", x.shape[-1], tuple(w.shape))
    check(x.is_floating_point(), "x must be floating point")
    if residual is not None:
        check(residual.shape == x.shape, "residual {} != x {}", tuple(residual.shape), tuple(x.shape))
        check(residual.dtype == x.dtype, "residual and x must share a dtype")


def rms_norm(
    x: torch.Tensor, w: torch.Tensor, eps: float, residual: torch.Tensor | None = None, unit_offset: bool = False
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """y = x / rms(x) * w over the last dim (`unit_offset`: * (1 + w), see module doc); with `residual`:
    returns (rms_norm(x + residual), x + residual).

    Outputs are new tensors in x's dtype; the inputs are not modified.
    """
    _check_args(x, w, residual)
    check_launchable(x, w, *([] if residual is None else [residual]))
    H = x.shape[-1]
    flat = x.dim() != 2  # [..., H] -> [N, H]; a view when the rows are evenly strided
    x2 = x.reshape(-1, H) if flat else x
    check(x2.stride(-1) == 1 and w.stride(0) == 1, "x and w must be contiguous in the hidden dim")
    r2 = x2 if residual is None else (residual.reshape(-1, H) if flat else residual)
    check(r2.stride(-1) == 1, "residual must be contiguous in the hidden dim")
    y = torch.empty(x2.shape, dtype=x.dtype, device=x.device)
    r_out = torch.empty(x2.shape, dtype=x.dtype, device=x.device) if residual is not None else y
    N = x2.shape[0]
    if N > 0:
        block = next_pow2(H)
        _rms_norm_kernel[(N,)](
            x2, r2, w, y, r_out,
            x2.stride(0), r2.stride(0), y.stride(0), r_out.stride(0),
            H, eps,
            HAS_RESIDUAL=residual is not None, UNIT_OFFSET=unit_offset, BLOCK=block,
            num_warps=min(16, max(1, block // 256)),
        )  # fmt: skip
    if flat:
        y, r_out = y.view(x.shape), r_out.view(x.shape)
    return y if residual is None else (y, r_out)


def rms_norm_ref(
    x: torch.Tensor, w: torch.Tensor, eps: float, residual: torch.Tensor | None = None, unit_offset: bool = False
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """PyTorch reference of `rms_norm`, written as Hugging Face's LlamaRMSNorm (GemmaRMSNorm with
    `unit_offset`)."""
    _check_args(x, w, residual)
    if residual is not None:
        x = x + residual
    xf = x.float()
    y = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    y = (y * (1.0 + w.float())).to(x.dtype) if unit_offset else w * y.to(x.dtype)
    return y if residual is None else (y, x)
