"""OLMo-2 (AllenAI): Llama whose norms sit on each block's output (h + norm(attn(h)), then + norm(mlp(h)))
rather than its input, with q and k each normed over the whole projection (every head at once; split over
tensor-parallel ranks, the mean square is summed across them)."""

from tensorrt_llm.models.base import ModelFamily
from tensorrt_llm.models.config import ModelConfig
from tensorrt_llm.models.convert import convert_decoder, decoder_config_from_hf
from tensorrt_llm.models.decoder import DecoderForCausalLM


def config_from_hf(hf: dict) -> ModelConfig:
    return decoder_config_from_hf(hf, "Olmo2ForCausalLM", post_block_norms=True, qk_norm=True, qk_norm_full=True)


FAMILY = ModelFamily(("Olmo2ForCausalLM",), config_from_hf, convert_decoder, DecoderForCausalLM)
