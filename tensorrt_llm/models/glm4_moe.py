"""GLM-4.5 / GLM-4.6 (`Glm4MoeForCausalLM`): a mixture of experts with DeepSeek-V3's router (sigmoid scores,
a learned bias on the choice, expert groups, routed_scaling_factor) and an ungated shared expert, the first
`first_k_dense_replace` layers dense; attention with q/k/v biases, rotary on half of each head (rotate-half
within it: q/k rows permuted at conversion) and optional per-head q/k RMSNorm. The checkpoints' extra
next-token-prediction layers (MTP) are not read."""

import torch

from tensorrt_llm.mapping import Mapping
from tensorrt_llm.models.base import ModelFamily, WeightGetter
from tensorrt_llm.models.config import ModelConfig
from tensorrt_llm.models.convert import convert_decoder, decoder_config_from_hf, rotary_rows
from tensorrt_llm.models.decoder import DecoderForCausalLM


def config_from_hf(hf: dict) -> ModelConfig:
    rope = hf.get("rope_parameters") or {}
    partial = rope.get("partial_rotary_factor", hf.get("partial_rotary_factor", 0.5))
    head_dim = hf.get("head_dim") or hf["hidden_size"] // hf["num_attention_heads"]
    R = int(head_dim * partial)
    experts = hf["n_routed_experts"]
    return decoder_config_from_hf(
        hf,
        "Glm4MoeForCausalLM",
        rotary_dim=R if R < head_dim else None,
        qkv_bias=bool(hf.get("attention_bias", False)),
        attention_bias=False,
        qk_norm=bool(hf.get("use_qk_norm", False)),
        num_experts=experts,
        num_experts_per_tok=hf["num_experts_per_tok"],
        moe_intermediate_size=hf["moe_intermediate_size"],
        norm_topk_prob=bool(hf.get("norm_topk_prob", True)),
        dense_layers=tuple(range(hf.get("first_k_dense_replace", 0))),
        shared_expert_intermediate_size=hf["moe_intermediate_size"] * hf.get("n_shared_experts", 0),
        shared_expert_gated=False,
        moe_router="sigmoid",
        routed_scaling_factor=float(hf.get("routed_scaling_factor", 1.0)),
        moe_groups=hf.get("n_group", 1),
        moe_topk_groups=hf.get("topk_group", 1),
    )


def convert_weights(get: WeightGetter, cfg: ModelConfig, mapping: Mapping, dtype: torch.dtype) -> dict:
    return convert_decoder(rotary_rows(get, cfg), cfg, mapping, dtype)


FAMILY = ModelFamily(("Glm4MoeForCausalLM",), config_from_hf, convert_weights, DecoderForCausalLM)
