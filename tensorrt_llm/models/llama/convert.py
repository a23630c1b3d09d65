"""Hugging Face Llama checkpoints → engine weights of one rank (fused QKV and gate/up, split for TP).

Engine names (per rank):
    vocab_embedding.weight                  [V, H]
    layers.{i}.input_layernorm.weight       [H]
    layers.{i}.attention.qkv.weight         [(Hq + 2 Hkv) D / tp, H]   rows: q | k | v of this rank
    layers.{i}.attention.dense.weight       [H, Hq D / tp]
    layers.{i}.post_layernorm.weight        [H]
    layers.{i}.mlp.gate_up.weight           [2 I / tp, H]               rows: gate | up of this rank
    layers.{i}.mlp.down.weight              [H, I / tp]
    ln_f.weight                             [H]
    lm_head.weight                          [V / tp, H]
"""

from collections.abc import Callable

import torch

from tensorrt_llm.mapping import Mapping
from tensorrt_llm.models.config import ModelConfig


def config_from_hf(hf: dict) -> ModelConfig:
    """Reads a Hugging Face Llama `config.json` dict (transformers 4 or 5 layout)."""
    try:
        heads = hf["num_attention_heads"]
        rope = hf.get("rope_parameters") or {}
        theta = hf.get("rope_theta", rope.get("rope_theta", 10000.0))
        scaling = hf.get("rope_scaling")
        if scaling is None and rope.get("rope_type", "default") != "default":
            scaling = {k: v for k, v in rope.items() if k != "rope_theta"}
        return ModelConfig(
            architecture="LlamaForCausalLM",
            vocab_size=hf["vocab_size"],
            hidden_size=hf["hidden_size"],
            intermediate_size=hf["intermediate_size"],
            num_hidden_layers=hf["num_hidden_layers"],
            num_attention_heads=heads,
            num_key_value_heads=hf.get("num_key_value_heads") or heads,
            head_dim=hf.get("head_dim") or hf["hidden_size"] // heads,
            max_position_embeddings=hf.get("max_position_embeddings", 2048),
            rms_norm_eps=hf.get("rms_norm_eps", 1e-6),
            rope_theta=float(theta),
            rope_scaling=scaling,
            tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),
            hidden_act=hf.get("hidden_act", "silu"),
            attention_bias=bool(hf.get("attention_bias", False)),
            mlp_bias=bool(hf.get("mlp_bias", False)),
            bos_token_id=hf.get("bos_token_id"),
            eos_token_id=hf.get("eos_token_id"),
            pad_token_id=hf.get("pad_token_id"),
        )
    except KeyError as e:
        raise ValueError(f"Hugging Face config.json lacks the field {e.args[0]!r}") from None


def convert_weights(
    get: Callable[[str], torch.Tensor], cfg: ModelConfig, mapping: Mapping, dtype: torch.dtype
) -> dict[str, torch.Tensor]:
    """`get(name)` returns a Hugging Face tensor by name (loaded lazily, so that one rank's slice of a
    large checkpoint never needs the whole of it in memory)."""
    if cfg.hidden_act != "silu":
        raise ValueError(f"Llama conversion supports hidden_act 'silu', got {cfg.hidden_act!r}")
    tp, r = mapping.tp_size, mapping.tp_rank
    D, Hq, Hkv = cfg.head_dim, cfg.num_attention_heads, cfg.num_key_value_heads
    for what, n in (("num_attention_heads", Hq), ("intermediate_size", cfg.intermediate_size),
                    ("vocab_size", cfg.vocab_size)):  # fmt: skip
        if n % tp:
            raise ValueError(f"{what} ({n}) is not divisible by tp_size ({tp})")
    if Hkv % tp and tp % Hkv:
        raise ValueError(f"num_key_value_heads ({Hkv}) and tp_size ({tp}) must divide one another")

    def rows(t: torch.Tensor) -> torch.Tensor:  # this rank's slice of the output features
        return t.chunk(tp, dim=0)[r]

    def kv_rows(t: torch.Tensor) -> torch.Tensor:
        if Hkv >= tp:
            return rows(t)
        # Fewer K/V heads than ranks: rank r uses the head of its query-head group.
        head = r * Hkv // tp
        return t[head * D : (head + 1) * D]

    out: dict[str, torch.Tensor] = {"vocab_embedding.weight": get("model.embed_tokens.weight")}
    for i in range(cfg.num_hidden_layers):
        hf, en = f"model.layers.{i}.", f"layers.{i}."
        att = hf + "self_attn."
        out[en + "input_layernorm.weight"] = get(hf + "input_layernorm.weight")
        out[en + "post_layernorm.weight"] = get(hf + "post_attention_layernorm.weight")
        for kind in ("weight", "bias") if cfg.attention_bias else ("weight",):
            q, k, v = (get(f"{att}{n}_proj.{kind}") for n in "qkv")
            out[f"{en}attention.qkv.{kind}"] = torch.cat([rows(q), kv_rows(k), kv_rows(v)])
        out[en + "attention.dense.weight"] = get(att + "o_proj.weight").chunk(tp, dim=1)[r]
        if cfg.attention_bias:
            out[en + "attention.dense.bias"] = get(att + "o_proj.bias")
        mlp = hf + "mlp."
        for kind in ("weight", "bias") if cfg.mlp_bias else ("weight",):
            gate, up = get(f"{mlp}gate_proj.{kind}"), get(f"{mlp}up_proj.{kind}")
            out[f"{en}mlp.gate_up.{kind}"] = torch.cat([rows(gate), rows(up)])
        out[en + "mlp.down.weight"] = get(mlp + "down_proj.weight").chunk(tp, dim=1)[r]
        if cfg.mlp_bias:
            out[en + "mlp.down.bias"] = get(mlp + "down_proj.bias")
    out["ln_f.weight"] = get("model.norm.weight")
    head = get("model.embed_tokens.weight") if cfg.tie_word_embeddings else get("lm_head.weight")
    out["lm_head.weight"] = rows(head)
    return {k: v.to(dtype).contiguous() for k, v in out.items()}
