"""Linear layers split for tensor parallelism (Megatron style).

ColumnLinear holds a slice of the output features (no communication; its output stays split);
RowLinear holds a slice of the input features and all-reduces its partial sums. A column layer
followed by a row layer (QKV → O, gate_up → down) costs one all-reduce.

Either may hold its weight quantized (`set_quant`, called on the model built on the meta device before
the engine's weights are assigned): the parameters then take the layouts `tensorrt_llm.quantization`
describes, and the matmul is `quantization.functional.quant_linear`."""

import torch
import torch.distributed as dist
from torch import nn

from tensorrt_llm import functional as tf
from tensorrt_llm.mapping import Mapping


def _split(n: int, parts: int, what: str) -> int:
    if n % parts:
        raise ValueError(f"{what} ({n}) is not divisible by tp_size ({parts})")
    return n // parts


def _param(*shape: int, dtype: torch.dtype, device: torch.device) -> nn.Parameter:
    return nn.Parameter(torch.empty(shape, dtype=dtype, device=device), requires_grad=False)


class _Linear(nn.Module):
    """What column and row layers share: the weight [N, K] of this rank and its quantized forms."""

    weight: nn.Parameter
    quant: str | None = None
    group_size: int = 0

    def set_quant(self, algo: str, group_size: int = 128) -> None:
        """Replaces the float weight by the parameters of `algo` (a `quantization.QUANT_ALGOS` name)."""
        from tensorrt_llm.quantization import QUANT_ALGOS

        if algo not in QUANT_ALGOS:
            raise ValueError(f"unknown quant_algo {algo!r}: supported are {list(QUANT_ALGOS)}")
        N, K = self.weight.shape
        dev = self.weight.device
        del self.weight
        f32 = torch.float32
        if algo == "W8A16":
            self.weight = _param(N, K, dtype=torch.int8, device=dev)
            self.weight_scale = _param(N, dtype=f32, device=dev)
        elif algo.startswith("W4A16"):
            if K % group_size:
                raise ValueError(
                    f"int4 weights: in_features of this rank ({K}) is not a multiple of group_size {group_size}"
                )
            self.weight = _param(N, K // 2, dtype=torch.uint8, device=dev)
            self.weight_scale = _param(K // group_size, N, dtype=torch.float16, device=dev)
            if algo != "W4A16":  # GPTQ and AWQ checkpoints carry zero points
                self.weight_zero = _param(K // group_size, N, dtype=torch.float16, device=dev)
        elif algo.startswith("W8A8_SQ"):  # SmoothQuant: int8 per channel (per tensor: all channels alike)
            self.weight = _param(N, K, dtype=torch.int8, device=dev)
            self.weight_scale = _param(N, dtype=f32, device=dev)
            self.smoother = _param(K, dtype=f32, device=dev)
            if "PER_TOKEN" not in algo:
                self.input_scale = _param(dtype=f32, device=dev)
        else:  # FP8: per-tensor weight scale and a calibrated static input scale, or per channel and per token
            self.weight = _param(N, K, dtype=torch.float8_e4m3fn, device=dev)
            if algo == "FP8":
                self.weight_scale = _param(dtype=f32, device=dev)
                self.input_scale = _param(dtype=f32, device=dev)
            else:
                self.weight_scale = _param(N, dtype=f32, device=dev)
        self.quant, self.group_size = algo, group_size

    @property
    def out_features(self) -> int:
        return self.weight.shape[0]

    def _matmul(self, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        if self.quant is None:
            return tf.linear(x, self.weight, bias)
        from tensorrt_llm.quantization.functional import quant_linear

        return quant_linear(self, x, bias)


class ColumnLinear(_Linear):
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
        y = self._matmul(x, self.bias)
        if self.gather_output and self.mapping.tp_size > 1:
            parts = [torch.empty_like(y) for _ in range(self.mapping.tp_size)]
            dist.all_gather(parts, y.contiguous())
            y = torch.cat(parts, dim=-1)
        return y


class RowLinear(_Linear):
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
        y = self._matmul(x, None)
        if self.mapping.tp_size > 1:
            dist.all_reduce(y)
        return y if self.bias is None else y + self.bias
