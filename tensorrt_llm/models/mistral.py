"""Mistral: Llama with sliding-window attention on every layer (`sliding_window`, null in v0.2 on)."""

from tensorrt_llm.models.base import ModelFamily
from tensorrt_llm.models.config import ModelConfig
from tensorrt_llm.models.convert import convert_decoder, decoder_config_from_hf, window_options
from tensorrt_llm.models.decoder import DecoderForCausalLM


def config_from_hf(hf: dict) -> ModelConfig:
    # (transformers ignores a Mistral config's layer_types: the window holds on every layer)
    return decoder_config_from_hf(hf, "MistralForCausalLM", **window_options(hf, hf.get("sliding_window")))


FAMILY = ModelFamily(("MistralForCausalLM",), config_from_hf, convert_decoder, DecoderForCausalLM)
