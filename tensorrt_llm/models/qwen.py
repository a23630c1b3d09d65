"""Qwen2 / Qwen2.5 (biases on q/k/v) and Qwen3 (RMSNorm over head_dim of q and k), both with optional
sliding-window layers (`use_sliding_window`: the layers from `max_window_layers` on, or `layer_types`)."""

from tensorrt_llm.models.base import ModelFamily
from tensorrt_llm.models.config import ModelConfig
from tensorrt_llm.models.convert import convert_decoder, decoder_config_from_hf, window_options
from tensorrt_llm.models.decoder import DecoderForCausalLM


def _windows(hf: dict) -> dict:
    # Checkpoints saved before transformers 5 carry a sliding_window even with use_sliding_window false.
    if not hf.get("use_sliding_window", False):
        return {}
    layer_types = hf.get("layer_types")
    if layer_types is None:
        first = hf.get("max_window_layers", hf["num_hidden_layers"])
        layer_types = ["sliding_attention" if i >= first else "full_attention" for i in range(hf["num_hidden_layers"])]
    return window_options(hf, hf.get("sliding_window"), layer_types)


def qwen2_config_from_hf(hf: dict) -> ModelConfig:
    # Qwen2's q/k/v projections always carry a bias, its output projection never does.
    return decoder_config_from_hf(hf, "Qwen2ForCausalLM", qkv_bias=True, attention_bias=False, **_windows(hf))


def qwen3_config_from_hf(hf: dict) -> ModelConfig:
    return decoder_config_from_hf(hf, "Qwen3ForCausalLM", qk_norm=True, **_windows(hf))


QWEN2 = ModelFamily(("Qwen2ForCausalLM",), qwen2_config_from_hf, convert_decoder, DecoderForCausalLM)
QWEN3 = ModelFamily(("Qwen3ForCausalLM",), qwen3_config_from_hf, convert_decoder, DecoderForCausalLM)
