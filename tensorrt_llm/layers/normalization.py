import torch
import torch.distributed as dist
from torch import nn

from tensorrt_llm import functional as tf


class RmsNorm(nn.Module):
    """RMSNorm over the last dim. `unit_offset`: Gemma's weighting by (1 + weight), the checkpoint's own
    weight kept as is (see `kernels.norm`)."""

    def __init__(
        self, hidden_size: int, eps: float = 1e-6, dtype: torch.dtype = torch.float32, unit_offset: bool = False
    ) -> None:
        super().__init__()
        self.eps = eps
        self.unit_offset = unit_offset
        self.weight = nn.Parameter(torch.ones(hidden_size, dtype=dtype), requires_grad=False)

    def forward(
        self, x: torch.Tensor, residual: torch.Tensor | None = None
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        return tf.rms_norm(x, self.weight, self.eps, residual, self.unit_offset)


class SplitRmsNorm(nn.Module):
    """RMSNorm over a vector whose `total` features are split over the tensor-parallel ranks, `local` on this
    one (OLMo-2's q and k norms span every head of the projection): the mean square sums over the ranks."""

    def __init__(self, local: int, total: int, eps: float, dtype: torch.dtype, tp_size: int = 1) -> None:
        super().__init__()
        self.total, self.eps, self.tp_size = total, eps, tp_size
        self.weight = nn.Parameter(torch.ones(local, dtype=dtype), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [T, local] -> normed over all `total` features, in float32 (as Hugging Face), cast back."""
        xf = x.float()
        squares = xf.pow(2).sum(-1, keepdim=True)  # [T, 1]
        if self.tp_size > 1:
            dist.all_reduce(squares)
        return (xf * torch.rsqrt(squares / self.total + self.eps) * self.weight.float()).to(x.dtype)


class LayerNorm(nn.Module):
    def __init__(
        self, hidden_size: int, eps: float = 1e-5, bias: bool = True, dtype: torch.dtype = torch.float32
    ) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(hidden_size, dtype=dtype), requires_grad=False)
        self.bias = nn.Parameter(torch.zeros(hidden_size, dtype=dtype), requires_grad=False) if bias else None

    def forward(
        self, x: torch.Tensor, residual: torch.Tensor | None = None
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """As RmsNorm: with `residual`, returns (norm(x + residual), x + residual)."""
        if residual is None:
            return tf.layer_norm(x, self.weight, self.bias, self.eps)
        x = x + residual
        return tf.layer_norm(x, self.weight, self.bias, self.eps), x
