import torch
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
