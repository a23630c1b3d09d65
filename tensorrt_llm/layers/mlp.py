import torch
from torch import nn

from tensorrt_llm import functional as tf
from tensorrt_llm.layers.linear import ColumnLinear, RowLinear
from tensorrt_llm.mapping import Mapping


class GatedMLP(nn.Module):
    """Gated MLP, act(gate) * up, with gate and up projections fused into one GEMM (`gate_up`,
    [2I/tp, H]): SwiGLU (`act="silu"`) or GeGLU (`"gelu_pytorch_tanh"`, Gemma)."""

    def __init__(
        self,
        hidden_size: int,
        intermediate_size: int,
        bias: bool = False,
        dtype: torch.dtype = torch.float32,
        mapping: Mapping = Mapping(),
        act: str = "silu",
    ) -> None:
        super().__init__()
        if act not in tf.GATED_ACTIVATIONS:
            raise ValueError(f"unsupported gated activation {act!r}: supported are {sorted(tf.GATED_ACTIVATIONS)}")
        self.act_and_mul = tf.GATED_ACTIVATIONS[act]
        self.gate_up = ColumnLinear(hidden_size, 2 * intermediate_size, bias, dtype, mapping)
        self.down = RowLinear(intermediate_size, hidden_size, bias, dtype, mapping)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(self.act_and_mul(self.gate_up(x)))
