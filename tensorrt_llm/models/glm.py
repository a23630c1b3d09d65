"""GLM and GLM-4 (`GlmForCausalLM`, `Glm4ForCausalLM` in transformers): Llama's decoder with q/k/v biases,
a fused `gate_up_proj` (as Phi-3) and interleaved rotary on the first half of each head (the q/k rows are
permuted at conversion, as GPT-J's); GLM-4 adds a norm after attention and after the MLP (the sandwich
norms of Gemma-2, under other names)."""

import torch

from tensorrt_llm.mapping import Mapping
from tensorrt_llm.models.base import ModelFamily, WeightGetter
from tensorrt_llm.models.config import ModelConfig
from tensorrt_llm.models.convert import convert_decoder, decoder_config_from_hf, rotary_rows
from tensorrt_llm.models.decoder import DecoderForCausalLM
from tensorrt_llm.models.phi3 import unfused

# Gemma-2's sandwich-norm names (what convert_decoder reads) -> GLM-4's
_GLM4_NORMS = {
    "post_attention_layernorm": "post_self_attn_layernorm",
    "pre_feedforward_layernorm": "post_attention_layernorm",
    "post_feedforward_layernorm": "post_mlp_layernorm",
}


def _config(hf: dict, architecture: str, **options) -> ModelConfig:
    rope = hf.get("rope_parameters") or {}
    partial = rope.get("partial_rotary_factor", hf.get("partial_rotary_factor", 0.5))
    head_dim = hf.get("head_dim") or hf["hidden_size"] // hf["num_attention_heads"]
    R = int(head_dim * partial)
    return decoder_config_from_hf(
        hf, architecture, qkv_bias=bool(hf.get("attention_bias", True)), attention_bias=False,
        rotary_dim=R if R < head_dim else None, **options,
    )  # fmt: skip


def glm_config_from_hf(hf: dict) -> ModelConfig:
    return _config(hf, "GlmForCausalLM")


def glm4_config_from_hf(hf: dict) -> ModelConfig:
    return _config(hf, "Glm4ForCausalLM", sandwich_norm=True)


def convert_weights(get: WeightGetter, cfg: ModelConfig, mapping: Mapping, dtype: torch.dtype) -> dict:
    base = rotary_rows(unfused(get, cfg, qkv=False), cfg, interleaved=True)

    def get_glm(name: str) -> torch.Tensor:
        module, _, leaf = name.rpartition(".")
        parent, _, last = module.rpartition(".")
        if last in _GLM4_NORMS and cfg.sandwich_norm:
            return base(f"{parent}.{_GLM4_NORMS[last]}.{leaf}")
        return base(name)

    return convert_decoder(get_glm, cfg, mapping, dtype)


GLM = ModelFamily(("GlmForCausalLM",), glm_config_from_hf, convert_weights, DecoderForCausalLM)
GLM4 = ModelFamily(("Glm4ForCausalLM",), glm4_config_from_hf, convert_weights, DecoderForCausalLM)
