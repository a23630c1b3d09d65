"""Model families, registered by the Hugging Face architecture name their checkpoints carry."""

from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from tensorrt_llm.models import llama
from tensorrt_llm.models.config import ModelConfig


@dataclass(frozen=True)
class ModelFamily:
    model_cls: type[nn.Module]
    config_from_hf: Callable[[dict], ModelConfig]
    convert_weights: Callable


MODEL_REGISTRY: dict[str, ModelFamily] = {
    "LlamaForCausalLM": ModelFamily(llama.LlamaForCausalLM, llama.config_from_hf, llama.convert_weights),
}


def get_family(architecture: str) -> ModelFamily:
    try:
        return MODEL_REGISTRY[architecture]
    except KeyError:
        raise ValueError(
            f"unsupported architecture {architecture!r}: supported are {', '.join(sorted(MODEL_REGISTRY))}"
        ) from None


__all__ = ["MODEL_REGISTRY", "ModelConfig", "ModelFamily", "get_family"]
