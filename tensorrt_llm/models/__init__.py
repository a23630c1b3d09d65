"""Model families, registered by the Hugging Face architecture names their checkpoints carry.

A family is a `ModelFamily` (tensorrt_llm.models.base): how to read its config.json, how to convert its
weights for one rank, and the `CausalLM` module the runtime builds. Families that differ only in options
share one module (`decoder.DecoderForCausalLM`) and state their differences in their own file.
"""

from tensorrt_llm.models import (
    bloom,
    cohere,
    gemma,
    glm,
    glm4_moe,
    gpt,
    granite,
    llama,
    mistral,
    mixtral,
    multimodal,
    olmo2,
    phi3,
    qwen,
    smollm3,
    starcoder2,
)
from tensorrt_llm.models.base import CausalLM, ModelFamily, WeightGetter
from tensorrt_llm.models.config import ModelConfig

MODEL_REGISTRY: dict[str, ModelFamily] = {}


def register(family: ModelFamily) -> None:
    """Makes `family` build the architectures it names (one family per name)."""
    for arch in family.architectures:
        if MODEL_REGISTRY.get(arch, family) is not family:
            raise ValueError(f"architecture {arch!r} is already registered to another family")
        MODEL_REGISTRY[arch] = family


for _family in (
    llama.FAMILY, mistral.FAMILY, mixtral.FAMILY, qwen.QWEN2, qwen.QWEN3, qwen.QWEN2_MOE, qwen.QWEN3_MOE,
    gemma.FAMILY, gemma.GEMMA2, gemma.GEMMA3, multimodal.FAMILY, phi3.FAMILY, gpt.GPT2, gpt.BIGCODE, gpt.OPT,
    gpt.NEOX, gpt.GPTJ, gpt.FALCON, starcoder2.FAMILY, glm.GLM, glm.GLM4, bloom.BLOOM, bloom.MPT, granite.FAMILY,
    smollm3.FAMILY, cohere.COHERE, cohere.COHERE2, olmo2.FAMILY,
    glm4_moe.FAMILY,
):  # fmt: skip
    register(_family)


def get_family(architecture: str) -> ModelFamily:
    try:
        return MODEL_REGISTRY[architecture]
    except KeyError:
        raise ValueError(
            f"unsupported architecture {architecture!r}: supported are {', '.join(sorted(MODEL_REGISTRY))}"
        ) from None


__all__ = ["MODEL_REGISTRY", "CausalLM", "ModelConfig", "ModelFamily", "WeightGetter", "get_family", "register"]
