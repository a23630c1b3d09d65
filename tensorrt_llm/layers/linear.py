"""Linear layers split for tensor parallelism (Megatron style).

ColumnLinear holds a slice of the output features (no communication; its output stays split);
RowLinear holds a slice of the input features and all-reduces its partial sums. A column layer
followed by a row layer (QKV → O, gate_up → down) costs one all-reduce."""

import torch
import torch.distributed as dist
from torch import nn

from tensorrt_llm import functional as tf
from tensorrt_llm.mapping import Mapping


def _split(n: int, parts: int, what: str) -> int:
    if n % parts:
        raise ValueError(f"{what} ({n}) is not divisible by tp_size ({parts})")
    return n // parts


class ColumnLinear(nn.Module):
    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = False,
        dtype: torch.dtype = torch.float32,
        mapping: Mapping = Mapping(),
        gather_output: bool = False,
    ) -> None:
        super().__init__()
        self.mapping = mapping
        self.gather_output = gather_output
        local = _split(out_features, mapping.tp_size, "out_features")
        self.weight = nn.Parameter(torch.empty(local, in_features, dtype=dtype), requires_grad=False)
        self.bias = nn.Parameter(torch.empty(local, dtype=dtype), requires_grad=False) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = tf.linear(x, self.weight, self.bias)
        if self.gather_output and self.mapping.tp_size > 1:
            parts = [torch.empty_like(y) for _ in range(self.mapping.tp_size)]
            dist.all_gather(parts, y.contiguous())
            y = torch.cat(parts, dim=-1)
        return y


class RowLinear(nn.Module):
    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = False,
        dtype: torch.dtype = torch.float32,
        mapping: Mapping = Mapping(),
    ) -> None:
        super().__init__()
        self.mapping = mapping
        local = _split(in_features, mapping.tp_size, "in_features")
        self.weight = nn.Parameter(torch.empty(out_features, local, dtype=dtype), requires_grad=False)
        # The bias is added once, after the reduction, so every rank holds the whole of it.
        self.bias = nn.Parameter(torch.empty(out_features, dtype=dtype), requires_grad=False) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = tf.linear(x, self.weight)
        if self.mapping.tp_size > 1:
            dist.all_reduce(y)
        return y if self.bias is None else y + self.bias
