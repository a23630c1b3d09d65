"""Quantizing an engine: which layers, their weights at build time, and the calibration that measures the
activation and KV ranges static scales need.

    float weights of a rank ──quantize_weights(calibration)──▶ quantized weights ──▶ rank{N}.safetensors
    model on the meta device ──apply_quant──▶ parameters of the quantized layouts ──▶ load_state_dict
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence
from pathlib import Path

import torch
from torch import nn

from tensorrt_llm import kernels
from tensorrt_llm.quantization import QuantConfig

FP8_MAX = 448.0
INT8_MAX = 127.0


def quantized_linears(model: nn.Module, quant: QuantConfig) -> list[tuple[str, nn.Module]]:
    """The (name, module) of every linear layer `quant.quant_algo` applies to: each ColumnLinear and
    RowLinear but those under `exclude_modules`. (A mixture-of-experts layer's router stays in float; its
    experts: `quantized_experts`.)"""
    from tensorrt_llm.layers import ColumnLinear, RowLinear

    if quant.quant_algo is None:
        return []
    return [
        (name, m)
        for name, m in model.named_modules()
        if isinstance(m, ColumnLinear | RowLinear)
        and not any(name == p or name.startswith(p + ".") for p in quant.exclude_modules)
    ]


def quantized_experts(model: nn.Module, quant: QuantConfig) -> list[tuple[str, nn.Module]]:
    """The mixture-of-experts layers whose experts `quant` quantizes (see MoeMLP.set_quant)."""
    from tensorrt_llm.layers import MoeMLP

    if quant.quant_algo not in MoeMLP.QUANT_ALGOS:
        return []
    return [
        (name, m)
        for name, m in model.named_modules()
        if isinstance(m, MoeMLP) and not any(name == p or name.startswith(p + ".") for p in quant.exclude_modules)
    ]


def attention_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    from tensorrt_llm.layers import Attention

    return [(name, m) for name, m in model.named_modules() if isinstance(m, Attention)]


def apply_quant(model: nn.Module, quant: QuantConfig) -> None:
    """Gives the model (on the meta device, before its weights are assigned) the quantized parameters."""
    for _, m in quantized_linears(model, quant) + quantized_experts(model, quant):
        m.set_quant(quant.quant_algo, quant.group_size)
    if quant.kv_cache_quant_algo is not None:
        from tensorrt_llm.runtime.kv_cache import kv_cache_dtype  # (runtime imports the builder, which imports us)

        cache = kv_cache_dtype(quant, torch.float16)  # (quantized: the float dtype is not used)
        for _, m in attention_modules(model):
            m.set_kv_quant(cache)


def needs_calibration(quant: QuantConfig) -> bool:
    sq = bool(quant.quant_algo and quant.quant_algo.startswith("W8A8_SQ"))
    return quant.quant_algo == "FP8" or sq or quant.kv_cache_quant_algo is not None


def smooth_quant(w: torch.Tensor, amax: torch.Tensor, module: nn.Module, quant: QuantConfig) -> dict[str, torch.Tensor]:
    """SmoothQuant of one rank's weight w [N, K] whose input's calibrated per-channel range is `amax` [K of
    the whole model] (a RowLinear holds a slice of it). Returns weight, weight_scale, smoother (and
    input_scale for static activation scales). Each rank smooths with its own weights: x reaches every
    rank of a column layer whole and each uses its own s, so the product is the same."""
    from tensorrt_llm.layers import RowLinear

    K = w.shape[1]
    if isinstance(module, RowLinear) and amax.numel() != K:
        r = module.mapping.tp_rank
        amax = amax[r * K : (r + 1) * K]
    a = quant.smoothquant_alpha
    x_max = amax.to(w.device).float().clamp(min=1e-5)
    w_max = w.float().abs().amax(dim=0).clamp(min=1e-5)  # [K]
    s = (x_max.pow(a) / w_max.pow(1 - a)).clamp(min=1e-5)  # [K]
    ws = w.float() * s  # [N, K]
    if "PER_TENSOR" in quant.quant_algo:
        scale = (ws.abs().amax().clamp(min=1e-8) / INT8_MAX).expand(w.shape[0])
    else:
        scale = ws.abs().amax(dim=1).clamp(min=1e-8) / INT8_MAX  # [N]
    out = {
        "weight": torch.round(ws / scale[:, None]).clamp(-INT8_MAX, INT8_MAX).to(torch.int8),
        "weight_scale": scale.float().contiguous(),
        "smoother": (1.0 / s).float(),
    }
    if "PER_TOKEN" not in quant.quant_algo:
        out["input_scale"] = ((x_max / s).amax() / INT8_MAX).float()
    return out


class Calibration:
    """Ranges measured on calibration text with the float model: the largest |input| of each linear layer
    per input channel (float32 [K], the whole model's K), and the largest |K| and |V| each attention layer
    stores (after rotary, as the cache holds them)."""

    def __init__(self, inputs: dict[str, torch.Tensor], kv: dict[str, tuple[float, float]]) -> None:
        self.inputs, self.kv = inputs, kv


def quantize_weights(
    weights: dict[str, torch.Tensor], model: nn.Module, quant: QuantConfig, calib: Calibration | None
) -> dict[str, torch.Tensor]:
    """One rank's float engine weights → the same names in `quant`'s layouts (see the package docstring).
    `model`: that rank's module (the meta device suffices), naming the layers."""
    out = dict(weights)
    algo = quant.quant_algo
    for name, module in quantized_linears(model, quant):
        w = out.pop(f"{name}.weight")
        if algo == "W8A16":
            q, s = kernels.quantize_int8_per_channel(w)
            out[f"{name}.weight"], out[f"{name}.weight_scale"] = q, s
        elif algo == "W4A16":
            q, s = kernels.quantize_int4_groupwise(w, quant.group_size)
            out[f"{name}.weight"], out[f"{name}.weight_scale"] = q, s
        elif algo in ("FP8", "FP8_PER_CHANNEL_PER_TOKEN"):
            q, s = kernels.quantize_fp8(w, per_channel=algo != "FP8")
            out[f"{name}.weight"], out[f"{name}.weight_scale"] = q, s
            if algo == "FP8":
                amax = float(_measured(calib, calib.inputs if calib else {}, name, "input range").max())
                out[f"{name}.input_scale"] = torch.tensor(max(amax, 1e-6) / FP8_MAX, dtype=torch.float32)
        elif algo.startswith("W8A8_SQ"):
            amax = _measured(calib, calib.inputs if calib else {}, name, "input range")
            out.update({f"{name}.{k}": v for k, v in smooth_quant(w, amax, module, quant).items()})
        else:
            raise ValueError(f"{algo} weights come quantized in their checkpoint: they are not made at build")
    quantize_experts(out, model, quant)
    if quant.kv_cache_quant_algo is not None:
        top = FP8_MAX if quant.kv_cache_quant_algo == "FP8" else INT8_MAX
        for name, _ in attention_modules(model):
            k, v = _measured(calib, calib.kv if calib else {}, name, "K/V range")
            out[f"{name}.kv_cache_scale"] = torch.tensor([max(k, 1e-6) / top, max(v, 1e-6) / top])
    return out


def quantize_experts(weights: dict[str, torch.Tensor], model: nn.Module, quant: QuantConfig) -> None:
    """Quantizes, in `weights`, the float experts [E, N, K] of the layers `quantized_experts` names, expert
    by expert (MoeMLP.set_quant's layouts)."""
    algo = quant.quant_algo
    for name, _ in quantized_experts(model, quant):
        for part in ("gate_up", "down"):
            w = weights.pop(f"{name}.{part}")  # [E, N, K]
            if algo == "W8A16":
                pieces = [kernels.quantize_int8_per_channel(w[e]) for e in range(w.shape[0])]
            elif algo == "W4A16":
                pieces = [kernels.quantize_int4_groupwise(w[e], quant.group_size) for e in range(w.shape[0])]
            else:
                pieces = [kernels.quantize_fp8(w[e], per_channel=algo != "FP8") for e in range(w.shape[0])]
            weights[f"{name}.{part}"] = torch.stack([q for q, _ in pieces])
            weights[f"{name}.{part}_scale"] = torch.stack([s for _, s in pieces])


def _measured(calib: Calibration | None, table: dict, name: str, what: str):
    if calib is None or name not in table:
        raise ValueError(f"no calibrated {what} for {name}: static scales need calibration")
    return table[name]


@torch.inference_mode()
def calibrate(model: nn.Module, samples: Sequence[Sequence[int]], tokens_per_block: int) -> Calibration:
    """Runs the float `model` (a CausalLM with its weights, one rank of world size 1) over `samples`, one
    prefill step each, and measures the ranges `Calibration` holds. Needs no quantization of its own."""
    from tensorrt_llm.layers import ColumnLinear, RowLinear
    from tensorrt_llm.runtime.kv_cache import KVCachePool
    from tensorrt_llm.runtime.step import build_step_input

    if not samples:
        raise ValueError("calibration needs at least one sample")
    device = next(model.parameters()).device
    dtype = model.vocab_embedding.weight.dtype
    cfg = model.cfg
    amax: dict[str, torch.Tensor] = {}

    def hook(name: str):
        def record(_m: nn.Module, args: tuple) -> None:
            a = args[0].detach().abs().flatten(0, -2).amax(dim=0).float()  # [K]: per input channel
            amax[name] = torch.maximum(amax[name], a) if name in amax else a

        return record

    handles = [
        m.register_forward_pre_hook(hook(name))
        for name, m in model.named_modules()
        if isinstance(m, ColumnLinear | RowLinear)
    ]
    longest = max(len(s) for s in samples)
    blocks = -(-longest // tokens_per_block)
    kv = KVCachePool(
        cfg.num_hidden_layers, blocks, tokens_per_block, cfg.num_key_value_heads, cfg.head_dim, dtype, device
    )
    layers = [name for name, _ in attention_modules(model)]
    kv_amax = torch.zeros(len(layers), 2, device=device)
    try:
        for s in samples:
            kv.data.zero_()
            offset = [cfg.rope_offset(len(s))]  # LongRoPE: a sample longer than the original context
            step = build_step_input(
                [list(s)], [0], [list(range(blocks))], tokens_per_block, device, rope_offsets=offset
            )
            model(step, kv.k, kv.v)
            # [L, 2, blocks, tpb, Hkv, D] → [L, 2]: the pool held only this sample (zeros elsewhere)
            kv_amax = torch.maximum(kv_amax, kv.data.abs().float().amax(dim=(2, 3, 4, 5)))
    finally:
        for h in handles:
            h.remove()
    inputs = {k: v.cpu() for k, v in amax.items()}
    kvs = {name: (float(kv_amax[i, 0]), float(kv_amax[i, 1])) for i, name in enumerate(layers)}
    return Calibration(inputs, kvs)


def calibration_samples(
    model_dir: str | None,
    vocab_size: int,
    dataset: str | None,
    num_samples: int,
    max_len: int,
    seed: int = 0,
) -> list[list[int]]:
    """Token ids to calibrate on: the lines (or blank-line separated paragraphs) of `dataset`, a text file,
    else English text that ships with Python (the standard library's help topics), tokenized with the
    checkpoint's tokenizer; random ids when there is no tokenizer (a build from a config alone)."""
    texts: Iterable[str]
    tokenizer = None
    if model_dir is not None:
        try:
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(model_dir)
        except (OSError, ValueError):
            tokenizer = None
    if tokenizer is None:
        if dataset is not None:
            raise ValueError(f"--calib_dataset needs a tokenizer in the checkpoint directory ({model_dir})")
        rng = random.Random(seed)
        return [[rng.randrange(vocab_size) for _ in range(max_len)] for _ in range(num_samples)]
    if dataset is not None:
        raw = Path(dataset).read_text(encoding="utf-8")
        parts = raw.split("\n\n") if "\n\n" in raw else raw.splitlines()
        texts = [t.strip() for t in parts if t.strip()]
    else:
        from pydoc_data.topics import topics

        texts = [topics[k] for k in sorted(topics)]
    samples = []
    for t in texts:
        ids = tokenizer(t)["input_ids"][:max_len]
        if len(ids) >= 8:
            samples.append(ids)
        if len(samples) == num_samples:
            break
    if not samples:
        raise ValueError("the calibration text yields no sample of 8 tokens or more")
    return samples
