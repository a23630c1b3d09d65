from tensorrt_llm.models.llama.convert import config_from_hf, convert_weights
from tensorrt_llm.models.llama.model import LlamaForCausalLM

__all__ = ["LlamaForCausalLM", "config_from_hf", "convert_weights"]
