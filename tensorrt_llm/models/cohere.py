"""Cohere (Command R, `CohereForCausalLM`) and Cohere-2 (Command R7B, Command A, `Cohere2ForCausalLM`):
LayerNorm without bias, attention and MLP in parallel on one norm, interleaved rotary (GPT-J's: q/k rows
permuted at conversion), logits times `logit_scale`, tied head. Cohere-2 adds three sliding-window layers to
one full, and the full layers have no position encoding at all (NoPE)."""

import torch

from tensorrt_llm.mapping import Mapping
from tensorrt_llm.models.base import ModelFamily, WeightGetter
from tensorrt_llm.models.config import ModelConfig
from tensorrt_llm.models.convert import (
    convert_decoder,
    decoder_config_from_hf,
    layer_types_from_hf,
    rotary_rows,
    window_options,
)
from tensorrt_llm.models.decoder import DecoderForCausalLM


def _options(hf: dict, architecture: str) -> dict:
    if hf.get("use_qk_norm"):
        raise ValueError(f"{architecture}: use_qk_norm (Command R+'s per-head LayerNorms) is not supported")
    return dict(
        norm_type="layer",
        norm_bias=False,
        rms_norm_eps=hf.get("layer_norm_eps", 1e-5),
        parallel_residual=True,
        parallel_shared_norm=True,
        logits_scaling=1.0 / hf.get("logit_scale", 1.0),
        tie_word_embeddings=bool(hf.get("tie_word_embeddings", True)),
    )


def cohere_config_from_hf(hf: dict) -> ModelConfig:
    return decoder_config_from_hf(hf, "CohereForCausalLM", **_options(hf, "CohereForCausalLM"))


def cohere2_config_from_hf(hf: dict) -> ModelConfig:
    layer_types = layer_types_from_hf(hf, 4)
    return decoder_config_from_hf(
        hf,
        "Cohere2ForCausalLM",
        **_options(hf, "Cohere2ForCausalLM"),
        **window_options(hf, hf.get("sliding_window", 4096), layer_types),
        nope_layers=tuple(i for i, t in enumerate(layer_types) if t == "full_attention"),
    )


def convert_weights(get: WeightGetter, cfg: ModelConfig, mapping: Mapping, dtype: torch.dtype) -> dict:
    return convert_decoder(rotary_rows(get, cfg, interleaved=True), cfg, mapping, dtype)


COHERE = ModelFamily(("CohereForCausalLM",), cohere_config_from_hf, convert_weights, DecoderForCausalLM)
COHERE2 = ModelFamily(("Cohere2ForCausalLM",), cohere2_config_from_hf, convert_weights, DecoderForCausalLM)
