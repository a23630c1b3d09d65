"""StarCoder2: Llama's layout with biases everywhere (`use_bias`), LayerNorm, a plain GeLU-tanh MLP
(`mlp.c_fc` / `mlp.c_proj`), grouped K/V heads, an optional sliding window and a tied head."""

from tensorrt_llm.models.base import ModelFamily
from tensorrt_llm.models.config import ModelConfig
from tensorrt_llm.models.convert import convert_decoder, decoder_config_from_hf, window_options
from tensorrt_llm.models.decoder import DecoderForCausalLM


def config_from_hf(hf: dict) -> ModelConfig:
    bias, tied = bool(hf.get("use_bias", True)), bool(hf.get("tie_word_embeddings", True))
    return decoder_config_from_hf(
        hf, "Starcoder2ForCausalLM", rms_norm_eps=hf.get("norm_epsilon", 1e-5), attention_bias=bias, mlp_bias=bias,
        hidden_act=hf.get("hidden_act", "gelu_pytorch_tanh"), tie_word_embeddings=tied, norm_type="layer",
        mlp_type="plain", **window_options(hf, hf.get("sliding_window")),
    )  # fmt: skip


FAMILY = ModelFamily(("Starcoder2ForCausalLM",), config_from_hf, convert_decoder, DecoderForCausalLM)
