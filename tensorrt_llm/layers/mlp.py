import functools

import torch
import torch.nn.functional as F
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


# Activations of the plain MLP, by Hugging Face's names (gelu_new is GPT-2's name for the tanh form).
ACTIVATIONS = {
    "gelu": F.gelu,
    "gelu_new": functools.partial(F.gelu, approximate="tanh"),
    "gelu_pytorch_tanh": functools.partial(F.gelu, approximate="tanh"),
    "relu": F.relu,
}


class MLP(nn.Module):
    """Plain MLP, proj(act(fc(x))) with biases (GPT-2, GPT-BigCode): `fc` [I/tp, H], `proj` [H, I/tp]."""

    def __init__(
        self,
        hidden_size: int,
        intermediate_size: int,
        bias: bool = True,
        dtype: torch.dtype = torch.float32,
        mapping: Mapping = Mapping(),
        act: str = "gelu_new",
    ) -> None:
        super().__init__()
        if act not in ACTIVATIONS:
            raise ValueError(f"unsupported activation {act!r}: supported are {sorted(ACTIVATIONS)}")
        self.act = ACTIVATIONS[act]
        self.fc = ColumnLinear(hidden_size, intermediate_size, bias, dtype, mapping)
        self.proj = RowLinear(intermediate_size, hidden_size, bias, dtype, mapping)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(self.act(self.fc(x)))
