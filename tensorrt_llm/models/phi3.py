"""Phi-3 / Phi-3.5 (mini / medium, 4k and 128k context) and Phi-4-mini: Llama with fused qkv_proj and
gate_up_proj tensors in the checkpoint and a sliding window on every layer; Phi-4-mini's rotary covers 3/4 of
each head; the long-context variants' LongRoPE is the rotary table's
(`tensorrt_llm.kernels.rotary`) and the positions' (`ModelConfig.rope_offset`)."""

import functools

import torch

from tensorrt_llm.mapping import Mapping
from tensorrt_llm.models.base import ModelFamily, WeightGetter
from tensorrt_llm.models.config import ModelConfig
from tensorrt_llm.models.convert import convert_decoder, decoder_config_from_hf, rotary_rows, window_options
from tensorrt_llm.models.decoder import DecoderForCausalLM


def config_from_hf(hf: dict) -> ModelConfig:
    # Phi-4-mini: rotary over the first 3/4 of each head (rotate-half within them), q/k rows permuted below
    rope = hf.get("rope_parameters") or {}
    partial = rope.get("partial_rotary_factor", hf.get("partial_rotary_factor", 1.0))
    head_dim = hf.get("head_dim") or hf["hidden_size"] // hf["num_attention_heads"]
    R = int(head_dim * partial)
    options = window_options(hf, hf.get("sliding_window"))
    return decoder_config_from_hf(hf, "Phi3ForCausalLM", rotary_dim=R if R < head_dim else None, **options)


def unfused(get: WeightGetter, cfg: ModelConfig, qkv: bool = True) -> WeightGetter:
    """A getter answering Llama's tensor names from Phi-3's: q/k/v_proj are row ranges of qkv_proj
    [(Hq + 2 Hkv) D, H] (unless `qkv` is false: GLM keeps them apart), gate/up_proj the halves of
    gate_up_proj [2 I, H]."""
    q, kv, inter = cfg.num_attention_heads * cfg.head_dim, cfg.num_key_value_heads * cfg.head_dim, cfg.intermediate_size
    parts = {
        "q_proj": ("qkv_proj", 0, q), "k_proj": ("qkv_proj", q, kv), "v_proj": ("qkv_proj", q + kv, kv),
        "gate_proj": ("gate_up_proj", 0, inter), "up_proj": ("gate_up_proj", inter, inter),
    }  # fmt: skip
    if not qkv:
        parts = {k: v for k, v in parts.items() if v[0] != "qkv_proj"}
    fused = functools.lru_cache(maxsize=1)(get)  # q, k and v of a layer are asked for one after another

    def get_unfused(name: str) -> torch.Tensor:
        module, leaf = name.rsplit(".", 1)  # "model.layers.0.self_attn.q_proj", "weight"
        parent, _, proj = module.rpartition(".")
        if proj not in parts:
            return get(name)
        src, start, n = parts[proj]
        return fused(f"{parent}.{src}.{leaf}")[start : start + n]

    return get_unfused


def convert_weights(get: WeightGetter, cfg: ModelConfig, mapping: Mapping, dtype: torch.dtype) -> dict:
    return convert_decoder(rotary_rows(unfused(get, cfg), cfg), cfg, mapping, dtype)


FAMILY = ModelFamily(("Phi3ForCausalLM",), config_from_hf, convert_weights, DecoderForCausalLM)
