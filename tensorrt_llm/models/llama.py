"""Llama 1/2/3 (GQA, tied or untied embeddings, Llama-3 rope scaling): the plain decoder."""

from tensorrt_llm.models.base import ModelFamily
from tensorrt_llm.models.config import ModelConfig
from tensorrt_llm.models.convert import convert_decoder, decoder_config_from_hf
from tensorrt_llm.models.decoder import DecoderForCausalLM


def config_from_hf(hf: dict) -> ModelConfig:
    return decoder_config_from_hf(hf, "LlamaForCausalLM")


FAMILY = ModelFamily(("LlamaForCausalLM",), config_from_hf, convert_decoder, DecoderForCausalLM)
