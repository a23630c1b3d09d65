"""Vision-language checkpoints served as their language model alone (text in, text out): Gemma-3 4B-27B
(`Gemma3ForConditionalGeneration`) and Mistral-Small-3.1 / 3.2 (`Mistral3ForConditionalGeneration`). The
config's `text_config` (with the defaults of its transformers config class for what the file leaves out, as
the released files do) is built by the text family it belongs to, from the `language_model.*` tensors; the
vision tower and the projector are not read."""

import torch

from tensorrt_llm.mapping import Mapping
from tensorrt_llm.models.base import ModelFamily, WeightGetter
from tensorrt_llm.models.config import ModelConfig
from tensorrt_llm.models.decoder import DecoderForCausalLM

# architecture -> (its text_config's model_type, the text family's architecture)
TEXT_MODELS = {
    "Gemma3ForConditionalGeneration": ("gemma3_text", "Gemma3ForCausalLM"),
    "Mistral3ForConditionalGeneration": ("mistral", "MistralForCausalLM"),
}


def _text_family(architecture: str) -> ModelFamily:
    from tensorrt_llm.models import get_family

    return get_family(TEXT_MODELS[architecture][1])


def config_from_hf(hf: dict) -> ModelConfig:
    from transformers import CONFIG_MAPPING

    arch = hf["architectures"][0]
    kind = TEXT_MODELS[arch][0]
    text = hf.get("text_config") or {}
    if text.get("model_type", kind) != kind:
        raise ValueError(f"{arch}: a text model of type {text['model_type']!r} is not supported (only {kind!r})")
    text = CONFIG_MAPPING[kind](**text).to_dict()
    # The whole model's setting, where the file states one, is what transformers ties the head by.
    text["tie_word_embeddings"] = hf.get("tie_word_embeddings", text.get("tie_word_embeddings"))
    return _text_family(arch).config_from_hf({**text, "architectures": [arch]})  # the engine names the whole


def language_model(get: WeightGetter) -> WeightGetter:
    """A getter answering the text model's tensor names (`model.*`, `lm_head.*`) from the checkpoint's
    (`language_model.model.*` as the released ones store them, `model.language_model.*` as transformers 5
    holds them in memory)."""

    def get_text(name: str) -> torch.Tensor:
        head, _, rest = name.partition(".")
        candidates = {"model": [f"language_model.model.{rest}", f"model.language_model.{rest}"],
                      "lm_head": [f"language_model.lm_head.{rest}", name]}.get(head, [name])  # fmt: skip
        for candidate in candidates[:-1]:
            try:
                return get(candidate)
            except KeyError:
                pass
        return get(candidates[-1])

    return get_text


def convert_weights(get: WeightGetter, cfg: ModelConfig, mapping: Mapping, dtype: torch.dtype) -> dict:
    return _text_family(cfg.architecture).convert_weights(language_model(get), cfg, mapping, dtype)


FAMILY = ModelFamily(tuple(TEXT_MODELS), config_from_hf, convert_weights, DecoderForCausalLM)
