from tensorrt_llm.layers.attention import Attention, AttentionParams
from tensorrt_llm.layers.embedding import Embedding
from tensorrt_llm.layers.linear import ColumnLinear, RowLinear
from tensorrt_llm.layers.mlp import MLP, GatedMLP
from tensorrt_llm.layers.moe import MoeMLP
from tensorrt_llm.layers.normalization import LayerNorm, RmsNorm

__all__ = [
    "Attention",
    "AttentionParams",
    "ColumnLinear",
    "Embedding",
    "GatedMLP",
    "LayerNorm",
    "MLP",
    "MoeMLP",
    "RmsNorm",
    "RowLinear",
]
