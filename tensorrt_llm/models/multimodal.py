"""Vision-language checkpoints served as their language model alone (text in, text out): Gemma-3 4B-27B,
Mistral-Small-3.1 / 3.2, Qwen2-VL and Qwen2.5-VL. The whole config is read by its transformers config class
(which fills what the file leaves out, and moves the older files' top-level text fields into its
`text_config`); its text config is built by the text family it belongs to, from the language model's tensors.
The vision tower and the projector are not read. Qwen's multimodal rotary (mrope) rotates a text token by the
same position on its three axes, which is the plain rotary: text-only serving needs nothing more."""

import torch

from tensorrt_llm.mapping import Mapping
from tensorrt_llm.models.base import ModelFamily, WeightGetter
from tensorrt_llm.models.config import ModelConfig
from tensorrt_llm.models.decoder import DecoderForCausalLM

# architecture -> (its model_type, its text config's model_type, the text family's architecture)
TEXT_MODELS = {
    "Gemma3ForConditionalGeneration": ("gemma3", "gemma3_text", "Gemma3ForCausalLM"),
    "Mistral3ForConditionalGeneration": ("mistral3", "mistral", "MistralForCausalLM"),
    "Qwen2VLForConditionalGeneration": ("qwen2_vl", "qwen2_vl_text", "Qwen2ForCausalLM"),
    "Qwen2_5_VLForConditionalGeneration": ("qwen2_5_vl", "qwen2_5_vl_text", "Qwen2ForCausalLM"),
}


def _text_family(architecture: str) -> ModelFamily:
    from tensorrt_llm.models import get_family

    return get_family(TEXT_MODELS[architecture][2])


def config_from_hf(hf: dict) -> ModelConfig:
    from transformers import CONFIG_MAPPING

    arch = hf["architectures"][0]
    model_type, kind, _ = TEXT_MODELS[arch]
    full = CONFIG_MAPPING[model_type](**{k: v for k, v in hf.items() if k not in ("architectures", "model_type")})
    text = full.get_text_config().to_dict()
    if text.get("model_type") != kind:
        raise ValueError(f"{arch}: a text model of type {text.get('model_type')!r} is not supported (only {kind!r})")
    text["tie_word_embeddings"] = full.tie_word_embeddings  # the whole model's: what transformers ties by
    if (text.get("rope_scaling") or {}).get("type") == "mrope":  # (see the module doc)
        del text["rope_scaling"]
    return _text_family(arch).config_from_hf({**text, "architectures": [arch]})  # the engine names the whole


def language_model(get: WeightGetter) -> WeightGetter:
    """A getter answering the text model's tensor names (`model.*`, `lm_head.*`) from the checkpoint's
    (`language_model.model.*` as the released Gemma-3 and Mistral-3 store them, `model.language_model.*` as
    transformers 5 holds them in memory, `model.*` as the released Qwen-VL store them)."""

    def get_text(name: str) -> torch.Tensor:
        head, _, rest = name.partition(".")
        candidates = {"model": [f"language_model.model.{rest}", f"model.language_model.{rest}", name],
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
