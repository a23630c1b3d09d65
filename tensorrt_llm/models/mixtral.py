"""Mixtral: Mistral with a mixture of experts in every layer (`num_local_experts`, top `num_experts_per_tok`,
router probabilities renormalised over the chosen experts). Its checkpoints name the experts
`block_sparse_moe.experts.{e}.w1` (gate), `w3` (up), `w2` (down)."""

import re

import torch

from tensorrt_llm.mapping import Mapping
from tensorrt_llm.models.base import ModelFamily, WeightGetter
from tensorrt_llm.models.config import ModelConfig
from tensorrt_llm.models.convert import convert_decoder, decoder_config_from_hf, window_options
from tensorrt_llm.models.decoder import DecoderForCausalLM

_W = {"gate_proj": "w1", "up_proj": "w3", "down_proj": "w2"}
_EXPERT = re.compile(r"^(model\.layers\.\d+\.)mlp\.(gate\.weight|experts\.\d+\.)(?:(\w+_proj)(\.weight))?$")


def config_from_hf(hf: dict) -> ModelConfig:
    try:
        experts = dict(num_experts=hf["num_local_experts"], num_experts_per_tok=hf["num_experts_per_tok"])
    except KeyError as e:
        raise ValueError(f"Hugging Face config.json lacks the field {e.args[0]!r}") from None
    return decoder_config_from_hf(
        hf, "MixtralForCausalLM", norm_topk_prob=True, **experts, **window_options(hf, hf.get("sliding_window"))
    )


def mixtral_names(get: WeightGetter) -> WeightGetter:
    """A getter answering the decoder's expert names (`mlp.experts.{e}.gate_proj.weight`, `mlp.gate.weight`)
    from Mixtral's; other names, and a model transformers 5 built in memory (its own layout under `mlp.`:
    random weights from a config), pass through."""

    def get_mixtral(name: str) -> torch.Tensor:
        m = _EXPERT.match(name)
        if m is None:
            return get(name)
        layer, what, proj, leaf = m.groups()
        try:
            return get(f"{layer}block_sparse_moe.{what}{_W[proj] + leaf if proj else ''}")
        except KeyError:
            return get(name)

    return get_mixtral


def convert_weights(get: WeightGetter, cfg: ModelConfig, mapping: Mapping, dtype: torch.dtype) -> dict:
    return convert_decoder(mixtral_names(get), cfg, mapping, dtype)


FAMILY = ModelFamily(("MixtralForCausalLM",), config_from_hf, convert_weights, DecoderForCausalLM)
