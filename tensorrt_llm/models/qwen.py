"""Qwen2 / Qwen2.5 (biases on q/k/v), Qwen3 (RMSNorm over head_dim of q and k), and their mixtures of
experts Qwen2-MoE (with a shared expert) and Qwen3-MoE (the checkpoints' expert names are the decoder's
own), all with optional
sliding-window layers (`use_sliding_window`: the layers from `max_window_layers` on, or `layer_types`)."""

from tensorrt_llm.models.base import ModelFamily
from tensorrt_llm.models.config import ModelConfig
from tensorrt_llm.models.convert import convert_decoder, decoder_config_from_hf, window_options
from tensorrt_llm.models.decoder import DecoderForCausalLM


def _windows(hf: dict) -> dict:
    # Checkpoints saved before transformers 5 carry a sliding_window even with use_sliding_window false.
    if not hf.get("use_sliding_window", False):
        return {}
    layer_types = hf.get("layer_types")
    if layer_types is None:
        first = hf.get("max_window_layers", hf["num_hidden_layers"])
        layer_types = ["sliding_attention" if i >= first else "full_attention" for i in range(hf["num_hidden_layers"])]
    return window_options(hf, hf.get("sliding_window"), layer_types)


def qwen2_config_from_hf(hf: dict) -> ModelConfig:
    # Qwen2's q/k/v projections always carry a bias, its output projection never does.
    return decoder_config_from_hf(hf, "Qwen2ForCausalLM", qkv_bias=True, attention_bias=False, **_windows(hf))


def qwen3_config_from_hf(hf: dict) -> ModelConfig:
    return decoder_config_from_hf(hf, "Qwen3ForCausalLM", qk_norm=True, **_windows(hf))


def _moe_options(hf: dict) -> dict:
    """Mixture-of-experts options of Qwen2-MoE and Qwen3-MoE: experts in the layers that are not in
    `mlp_only_layers` and fall on every `decoder_sparse_step`-th layer (as transformers builds them)."""
    try:
        # num_experts in the checkpoints' config.json; transformers 5 writes num_local_experts
        n = hf["num_experts"] if "num_experts" in hf else hf["num_local_experts"]
        step = hf.get("decoder_sparse_step", 1)
        dense_only = set(hf.get("mlp_only_layers") or [])
        return dict(
            num_experts=n,
            num_experts_per_tok=hf["num_experts_per_tok"],
            moe_intermediate_size=hf["moe_intermediate_size"],
            norm_topk_prob=bool(hf.get("norm_topk_prob", False)),
            dense_layers=tuple(
                i for i in range(hf["num_hidden_layers"]) if i in dense_only or not (n > 0 and (i + 1) % step == 0)
            ),
        )
    except KeyError as e:
        raise ValueError(f"Hugging Face config.json lacks the field {e.args[0]!r}") from None


def qwen2_moe_config_from_hf(hf: dict) -> ModelConfig:
    """Qwen2's attention; routed experts plus one shared expert, weighted by a sigmoid gate."""
    shared = dict(shared_expert_intermediate_size=hf.get("shared_expert_intermediate_size") or 0)
    return decoder_config_from_hf(
        hf, "Qwen2MoeForCausalLM", qkv_bias=True, attention_bias=False, **_moe_options(hf), **shared, **_windows(hf)
    )


def qwen3_moe_config_from_hf(hf: dict) -> ModelConfig:
    return decoder_config_from_hf(hf, "Qwen3MoeForCausalLM", qk_norm=True, **_moe_options(hf), **_windows(hf))


QWEN2 = ModelFamily(("Qwen2ForCausalLM",), qwen2_config_from_hf, convert_decoder, DecoderForCausalLM)
QWEN3 = ModelFamily(("Qwen3ForCausalLM",), qwen3_config_from_hf, convert_decoder, DecoderForCausalLM)
QWEN2_MOE = ModelFamily(("Qwen2MoeForCausalLM",), qwen2_moe_config_from_hf, convert_decoder, DecoderForCausalLM)
QWEN3_MOE = ModelFamily(("Qwen3MoeForCausalLM",), qwen3_moe_config_from_hf, convert_decoder, DecoderForCausalLM)
