"""SmolLM3: Llama with no position encoding on every fourth layer (`no_rope_layers`: 0 for a NoPE layer)."""

from tensorrt_llm.models.base import ModelFamily
from tensorrt_llm.models.config import ModelConfig
from tensorrt_llm.models.convert import convert_decoder, decoder_config_from_hf, window_options
from tensorrt_llm.models.decoder import DecoderForCausalLM


def config_from_hf(hf: dict) -> ModelConfig:
    n = hf["num_hidden_layers"]
    rope = hf.get("no_rope_layers") or [int((i + 1) % hf.get("no_rope_layer_interval", 4) != 0) for i in range(n)]
    window = hf.get("sliding_window") if hf.get("use_sliding_window") else None
    return decoder_config_from_hf(
        hf,
        "SmolLM3ForCausalLM",
        nope_layers=tuple(i for i, r in enumerate(rope) if not r),
        tie_word_embeddings=bool(hf.get("tie_word_embeddings", True)),
        **window_options(hf, window, hf.get("layer_types")),
    )


FAMILY = ModelFamily(("SmolLM3ForCausalLM",), config_from_hf, convert_decoder, DecoderForCausalLM)
