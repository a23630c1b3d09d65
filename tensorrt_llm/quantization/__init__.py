"""Quantization: what an engine's linear layers and KV cache store, and how the builder makes it.

Modes (TensorRT-LLM's `quant_algo` / `kv_cache_quant_algo` names; `config.json` keeps them under
"quantization"):

    quant_algo      weights of every linear layer but lm_head      activations
    W8A16           int8, per output channel scale                 float (weight-only)
    W4A16           int4, group-wise scale (symmetric)             float (weight-only)
    W4A16_GPTQ      int4, group-wise scale and zero (GPTQ ckpt)    float (weight-only)
    W4A16_AWQ       int4, group-wise scale and zero (AWQ ckpt)     float (weight-only)
    FP8             e4m3, per-tensor scale                         e4m3, static per-tensor scale (calibrated)
    FP8_PER_CHANNEL_PER_TOKEN   e4m3, per-channel scale            e4m3, dynamic per-token scale
    W8A8_SQ_PER_CHANNEL_PER_TOKEN_PLUGIN   SmoothQuant: int8, per-channel     int8, dynamic per-token
    W8A8_SQ_PER_CHANNEL                    int8, per-channel                  int8, static per-tensor
    W8A8_SQ_PER_TENSOR_PLUGIN              int8, per-tensor                   int8, static per-tensor
    W8A8_SQ_PER_TENSOR_PER_TOKEN_PLUGIN    int8, per-tensor                   int8, dynamic per-token
      (SmoothQuant moves range from activations to weights per input channel: x / s and W * s, with
      s_j = max|x_j|^a / max|W_j|^(1-a), a = `smoothquant_alpha`, measured by calibration)

    kv_cache_quant_algo   INT8 or FP8: the paged cache stores int8 / e4m3 with a per-layer (k, v) scale.

Engine weight names of a quantized linear layer `X` (a ColumnLinear or RowLinear):
    X.weight         int8 [N, K] | uint8 [N, K/2] (two int4 per byte, see kernels.quant) | float8_e4m3fn [N, K]
    X.weight_scale   float32 [N] (W8A16, FP8 per channel, SmoothQuant) | float16 [K/g, N] (int4) | float32 [] (FP8)
    X.weight_zero    float16 [K/g, N] (int4 with zero points: w = q * scale - zero)
    X.input_scale    float32 [] (FP8, SmoothQuant per-tensor: static activation scale)
    X.smoother       float32 [K] (SmoothQuant: x is multiplied by it, 1 / s, before quantization)
and of a quantized KV cache: `layers.{i}.attention.kv_cache_scale` float32 [2] = (k, v): value = stored * scale.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

WEIGHT_ONLY_ALGOS = ("W8A16", "W4A16", "W4A16_GPTQ", "W4A16_AWQ")
FP8_ALGOS = ("FP8", "FP8_PER_CHANNEL_PER_TOKEN")
SMOOTH_QUANT_ALGOS = (
    "W8A8_SQ_PER_CHANNEL_PER_TOKEN_PLUGIN",
    "W8A8_SQ_PER_CHANNEL",
    "W8A8_SQ_PER_TENSOR_PLUGIN",
    "W8A8_SQ_PER_TENSOR_PER_TOKEN_PLUGIN",
)
QUANT_ALGOS = WEIGHT_ONLY_ALGOS + FP8_ALGOS + SMOOTH_QUANT_ALGOS
KV_CACHE_QUANT_ALGOS = ("INT8", "FP8")


@dataclass(frozen=True)
class QuantConfig:
    """`quant_algo` / `kv_cache_quant_algo` None: float. `group_size`: int4 columns per scale.
    `exclude_modules`: linear layers left in float, by engine name prefix (TensorRT-LLM keeps lm_head)."""

    quant_algo: str | None = None
    kv_cache_quant_algo: str | None = None
    group_size: int = 128
    exclude_modules: tuple[str, ...] = ("lm_head",)
    smoothquant_alpha: float = 0.5
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.quant_algo is not None and self.quant_algo not in QUANT_ALGOS:
            raise ValueError(f"unknown quant_algo {self.quant_algo!r}: supported are {list(QUANT_ALGOS)}")
        if self.kv_cache_quant_algo is not None and self.kv_cache_quant_algo not in KV_CACHE_QUANT_ALGOS:
            raise ValueError(
                f"unknown kv_cache_quant_algo {self.kv_cache_quant_algo!r}: supported are {list(KV_CACHE_QUANT_ALGOS)}"
            )
        if not 0.0 <= self.smoothquant_alpha <= 1.0:
            raise ValueError(f"smoothquant alpha must be in [0, 1], got {self.smoothquant_alpha}")
        if self.group_size not in (32, 64, 128, 256):
            raise ValueError(f"group_size must be 32, 64, 128 or 256, got {self.group_size}")

    @property
    def enabled(self) -> bool:
        return self.quant_algo is not None or self.kv_cache_quant_algo is not None

    @property
    def weight_bits(self) -> int:
        return 4 if self.quant_algo and self.quant_algo.startswith("W4") else 8 if self.quant_algo else 16

    @property
    def label(self) -> str:
        """A short name of the mode for file names and tables: "" for float, e.g. "_fp8_fp8kv"."""
        kv = self.kv_cache_quant_algo and f"{self.kv_cache_quant_algo}kv"
        return "".join(f"_{a.lower()}" for a in (self.quant_algo, kv) if a)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["exclude_modules"] = list(self.exclude_modules)
        return d

    @classmethod
    def from_dict(cls, d: dict | None) -> QuantConfig:
        if not d:
            return cls()
        d = dict(d)
        d["exclude_modules"] = tuple(d.get("exclude_modules", ("lm_head",)))
        return cls(**d)
