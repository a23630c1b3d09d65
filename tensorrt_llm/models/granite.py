"""Granite (IBM, 3.x dense): Llama with multipliers: embeddings times `embedding_multiplier`, each block's
output times `residual_multiplier` before the residual add, attention scores scaled by `attention_multiplier`,
logits divided by `logits_scaling`."""

from tensorrt_llm.models.base import ModelFamily
from tensorrt_llm.models.config import ModelConfig
from tensorrt_llm.models.convert import convert_decoder, decoder_config_from_hf
from tensorrt_llm.models.decoder import DecoderForCausalLM


def config_from_hf(hf: dict) -> ModelConfig:
    return decoder_config_from_hf(
        hf,
        "GraniteForCausalLM",
        embedding_multiplier=float(hf.get("embedding_multiplier", 1.0)),
        residual_multiplier=float(hf.get("residual_multiplier", 1.0)),
        attention_multiplier=float(hf.get("attention_multiplier", 1.0)),
        logits_scaling=float(hf.get("logits_scaling", 1.0)),
    )


FAMILY = ModelFamily(("GraniteForCausalLM",), config_from_hf, convert_decoder, DecoderForCausalLM)
