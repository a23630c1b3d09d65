"""Gated activations over the fused gate+up projection: act(gate) * up, with act SiLU (Llama's SwiGLU) or
the tanh approximation of GeLU (Gemma's GeGLU, `gelu_pytorch_tanh`)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ._common import HAS_TRITON, check, check_launchable

if HAS_TRITON:
    import triton
    import triton.language as tl

    @triton.jit
    def _act_and_mul_kernel(x_ptr, y_ptr, stride_x, stride_y, inter, GELU_TANH: tl.constexpr, BLOCK: tl.constexpr):
        # grid (rows, column tiles); x row = [gate (inter) | up (inter)]
        row = tl.program_id(0).to(tl.int64)
        cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
        mask = cols < inter
        g = tl.load(x_ptr + row * stride_x + cols, mask=mask, other=0.0)
        u = tl.load(x_ptr + row * stride_x + inter + cols, mask=mask, other=0.0)
        gf = g.to(tl.float32)
        if GELU_TANH:
            # 0.5 g (1 + tanh(z)) = g * sigmoid(2z): no tanh needed, and exp overflow gives -0, not NaN;
            # 0.79788... = sqrt(2 / pi)
            z = 0.7978845608028654 * (gf + 0.044715 * gf * gf * gf)
            act = gf / (1.0 + tl.exp(-2.0 * z))
        else:
            act = gf / (1.0 + tl.exp(-gf))
        # round act(gate) to the input dtype before the product, as the unfused model does
        y = act.to(g.dtype).to(tl.float32) * u.to(tl.float32)
        tl.store(y_ptr + row * stride_y + cols, y.to(g.dtype), mask=mask)


def _check_args(x) -> None:
    check(x.dim() >= 1 and x.shape[-1] % 2 == 0, "last dim must be even (gate | up), got {}", tuple(x.shape))
    check(x.is_floating_point(), "x must be floating point")


def _act_and_mul(x: torch.Tensor, gelu_tanh: bool) -> torch.Tensor:
    _check_args(x)
    check_launchable(x)
    inter = x.shape[-1] // 2
    x2 = x.reshape(-1, 2 * inter)  # [N, 2I]
    check(x2.stride(-1) == 1, "x must be contiguous in the last dim")
    y = torch.empty(x2.shape[0], inter, dtype=x.dtype, device=x.device)
    block = 1024 if x.is_cuda else 64
    if y.numel() > 0:
        grid = (x2.shape[0], triton.cdiv(inter, block))
        _act_and_mul_kernel[grid](x2, y, x2.stride(0), y.stride(0), inter, GELU_TANH=gelu_tanh, BLOCK=block)
    return y.view(*x.shape[:-1], inter)


def silu_and_mul(x: torch.Tensor) -> torch.Tensor:
    """x `[..., 2I]` (first half gate, second half up) -> silu(gate) * up `[..., I]` (new tensor)."""
    return _act_and_mul(x, gelu_tanh=False)


def silu_and_mul_ref(x: torch.Tensor) -> torch.Tensor:
    """PyTorch reference of `silu_and_mul`."""
    _check_args(x)
    gate, up = x.chunk(2, dim=-1)
    return F.silu(gate) * up


def gelu_tanh_and_mul(x: torch.Tensor) -> torch.Tensor:
    """x `[..., 2I]` (gate | up) -> gelu_tanh(gate) * up `[..., I]` (new tensor)."""
    return _act_and_mul(x, gelu_tanh=True)


def gelu_tanh_and_mul_ref(x: torch.Tensor) -> torch.Tensor:
    """PyTorch reference of `gelu_tanh_and_mul` (Hugging Face's `gelu_pytorch_tanh`)."""
    _check_args(x)
    gate, up = x.chunk(2, dim=-1)
    return F.gelu(gate, approximate="tanh") * up
