"""Gemma: GeLU-tanh gated MLP, RMSNorm weighted by (1 + w), embeddings scaled by sqrt(hidden_size), tied
head by default. Gemma-2 adds: sliding-window and full layers alternating, attention scores scaled by
query_pre_attn_scalar and soft-capped, soft-capped logits, and norms on both sides of each sub-block."""

from tensorrt_llm.models.base import ModelFamily
from tensorrt_llm.models.config import ModelConfig
from tensorrt_llm.models.convert import convert_decoder, decoder_config_from_hf, window_options
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


FAMILY = ModelFamily(("GemmaForCausalLM",), config_from_hf, convert_decoder, DecoderForCausalLM)
GEMMA2 = ModelFamily(("Gemma2ForCausalLM",), gemma2_config_from_hf, convert_decoder, DecoderForCausalLM)
