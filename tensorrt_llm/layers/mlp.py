import torch
from torch import nn

from tensorrt_llm import functional as tf
from tensorrt_llm.layers.linear import ColumnLinear, RowLinear
from tensorrt_llm.mapping import Mapping


class GatedMLP(nn.Module):
    """SwiGLU MLP with gate and up projections fused into one GEMM (`gate_up`, [2I/tp, H])."""

    def __init__(
        self,
        hidden_size: int,
        intermediate_size: int,
        bias: bool = False,
        dtype: torch.dtype = torch.float32,
        mapping: Mapping = Mapping(),
    ) -> None:
        super().__init__()
        self.gate_up = ColumnLinear(hidden_size, 2 * intermediate_size, bias, dtype, mapping)
        self.down = RowLinear(intermediate_size, hidden_size, bias, dtype, mapping)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(tf.silu_and_mul(self.gate_up(x)))
