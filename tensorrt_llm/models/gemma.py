"""Gemma: GeLU-tanh gated MLP, RMSNorm weighted by (1 + w), embeddings scaled by sqrt(hidden_size), tied
head by default. Gemma-2 adds: sliding-window and full layers alternating, attention scores scaled by
query_pre_attn_scalar and soft-capped, soft-capped logits, and norms on both sides of each sub-block.
Gemma-3 (`Gemma3ForCausalLM`, the text models): Gemma-2's without the soft-capping, five sliding-window
layers to one full, a (1 + w) RMSNorm of every q and k head, and a rotary of its own on the sliding-window
layers (base 10,000, unscaled; the full layers' is 1,000,000, linearly scaled on the larger models).
The larger Gemma-3 checkpoints (4B, 12B, 27B) are vision-language models: `multimodal.py` serves their text
model."""

from tensorrt_llm.models.base import ModelFamily
from tensorrt_llm.models.config import ModelConfig
from tensorrt_llm.models.convert import convert_decoder, decoder_config_from_hf, layer_types_from_hf, window_options
from tensorrt_llm.models.decoder import DecoderForCausalLM

# The first Gemma configs said "gelu" and meant the tanh approximation (transformers maps it so too).
_TANH_GELU = {"gelu": "gelu_pytorch_tanh", "gelu_tanh": "gelu_pytorch_tanh"}


def gemma_options(hf: dict) -> dict:
    act = hf.get("hidden_activation") or hf.get("hidden_act") or "gelu_pytorch_tanh"
    return dict(
        hidden_act=_TANH_GELU.get(act, act),
        norm_unit_offset=True,
        embedding_multiplier=hf["hidden_size"] ** 0.5,
        tie_word_embeddings=bool(hf.get("tie_word_embeddings", True)),
    )


def config_from_hf(hf: dict) -> ModelConfig:
    return decoder_config_from_hf(hf, "GemmaForCausalLM", **gemma_options(hf))


def gemma2_config_from_hf(hf: dict) -> ModelConfig:
    # (defaults: transformers' Gemma2Config; the released checkpoints state them all)
    n = hf["num_hidden_layers"]
    layer_types = hf.get("layer_types") or ["sliding_attention" if i % 2 == 0 else "full_attention" for i in range(n)]
    return decoder_config_from_hf(
        hf,
        "Gemma2ForCausalLM",
        **gemma_options(hf),
        **window_options(hf, hf.get("sliding_window", 4096), layer_types),
        query_pre_attn_scalar=hf.get("query_pre_attn_scalar", 256),
        attn_logit_softcapping=hf.get("attn_logit_softcapping", 50.0),
        final_logit_softcapping=hf.get("final_logit_softcapping", 30.0),
        sandwich_norm=True,
    )


def gemma3_config_from_hf(hf: dict) -> ModelConfig:
    layer_types = layer_types_from_hf(hf, 6)
    if hf.get("use_bidirectional_attention"):
        raise ValueError("Gemma3ForCausalLM: use_bidirectional_attention (an embedding model) is not supported")
    rope = hf.get("rope_parameters") or {}
    if "full_attention" in rope:  # transformers 5: a rotary per layer type
        full = {k: v for k, v in rope["full_attention"].items() if k != "rope_theta"}
        theta = rope["full_attention"].get("rope_theta", 1_000_000.0)
        local_theta = rope.get("sliding_attention", {}).get("rope_theta", 10_000.0)
        scaling = full if full.get("rope_type", "default") != "default" else None
    else:  # transformers 4: rope_theta and rope_scaling for the full layers, rope_local_base_freq for the others
        theta, local_theta = hf.get("rope_theta", 1_000_000.0), hf.get("rope_local_base_freq", 10_000.0)
        scaling = hf.get("rope_scaling")
    local_layers = tuple(i for i, t in enumerate(layer_types) if t == "sliding_attention")
    return decoder_config_from_hf(
        hf,
        "Gemma3ForCausalLM",
        **gemma_options(hf),
        **window_options(hf, hf.get("sliding_window", 4096), layer_types),
        query_pre_attn_scalar=hf.get("query_pre_attn_scalar", 256),
        attn_logit_softcapping=hf.get("attn_logit_softcapping"),
        final_logit_softcapping=hf.get("final_logit_softcapping"),
        sandwich_norm=True,
        qk_norm=True,
        rope_theta=float(theta),
        rope_scaling=scaling,
        local_rope_theta=float(local_theta) if local_layers else None,
        local_rope_layers=local_layers,
    )


FAMILY = ModelFamily(("GemmaForCausalLM",), config_from_hf, convert_decoder, DecoderForCausalLM)
GEMMA2 = ModelFamily(("Gemma2ForCausalLM",), gemma2_config_from_hf, convert_decoder, DecoderForCausalLM)
GEMMA3 = ModelFamily(("Gemma3ForCausalLM",), gemma3_config_from_hf, convert_decoder, DecoderForCausalLM)
