"""Hugging Face → engine, shared by the decoder families: reading config.json, slicing for tensor
parallelism, and converting checkpoints laid out as Llama's (`model.layers.{i}.self_attn.q_proj`, ...).
A family whose checkpoint differs (fused tensors, other names) adapts the tensor getter, not this code."""

import torch

from tensorrt_llm.functional import GATED_ACTIVATIONS
from tensorrt_llm.kernels.rotary import rope_inv_freq
from tensorrt_llm.layers.mlp import ACTIVATIONS
from tensorrt_llm.mapping import Mapping
from tensorrt_llm.models.base import WeightGetter
from tensorrt_llm.models.config import ModelConfig


def decoder_config_from_hf(hf: dict, architecture: str, **options) -> ModelConfig:
    """The fields every decoder family reads alike from a Hugging Face `config.json` dict (transformers 4
    or 5 layout); `options` (ModelConfig fields) are the family's own and override what was read.
    `architecture` names the family when the config names none."""
    try:
        heads = hf["num_attention_heads"]
        rope = hf.get("rope_parameters") or {}
        theta = hf.get("rope_theta", rope.get("rope_theta", 10000.0))
        scaling = hf.get("rope_scaling")
        if scaling is None and rope.get("rope_type", "default") != "default":
            scaling = {k: v for k, v in rope.items() if k not in ("rope_theta", "partial_rotary_factor")}
        if scaling and "original_max_position_embeddings" in hf and "original_max_position_embeddings" not in scaling:
            # transformers 4 layouts (Phi-3 long-context) keep it beside rope_scaling, not in it
            scaling = {**scaling, "original_max_position_embeddings": hf["original_max_position_embeddings"]}
        if scaling and scaling.get("rope_type", scaling.get("type")) == "yarn":  # Hugging Face's defaults
            original = scaling.get("original_max_position_embeddings") or hf.get("max_position_embeddings", 2048)
            factor = scaling.get("factor") or hf.get("max_position_embeddings", 2048) / original
            scaling = {**scaling, "original_max_position_embeddings": original, "factor": factor}
        fields = dict(
            architecture=(hf.get("architectures") or [architecture])[0],
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
    fields.update(options)
    partial = rope.get("partial_rotary_factor", hf.get("partial_rotary_factor", 1.0))
    if partial != 1.0 and "rotary_dim" not in options:  # a family that permutes q/k for it says so
        raise ValueError(f"partial rotary embeddings (partial_rotary_factor {partial}) are not supported yet")
    allowed = ACTIVATIONS if fields.get("mlp_type") == "plain" else GATED_ACTIVATIONS
    if fields["hidden_act"] not in allowed:
        raise ValueError(
            f"{fields['architecture']}: hidden_act {fields['hidden_act']!r} is not supported "
            f"(supported: {', '.join(sorted(allowed))})"
        )
    # an unsupported rope type fails here (over the rotated dims: LongRoPE has a factor per rotated pair)
    rope_inv_freq(fields.get("rotary_dim") or fields["head_dim"], fields["rope_theta"], scaling)
    return ModelConfig(**fields)


def layer_types_from_hf(hf: dict, default_pattern: int) -> list[str]:
    """`layer_types`, or as the first configs that had none said it: every `sliding_window_pattern`-th layer
    full, the others sliding-window (Gemma-3, Cohere-2)."""
    if hf.get("layer_types") is not None:
        return list(hf["layer_types"])
    pattern = hf.get("sliding_window_pattern", default_pattern)
    return ["full_attention" if (i + 1) % pattern == 0 else "sliding_attention" for i in range(hf["num_hidden_layers"])]


def window_options(hf: dict, sliding_window: int | None, layer_types: list[str] | None = None) -> dict:
    """`sliding_window` / `layer_types` ModelConfig options: none when no layer has a window, or when the
    window covers every position the model has (then it changes nothing, and the plain kernels run)."""
    max_pos = hf.get("max_position_embeddings", 2048)
    if not sliding_window or sliding_window >= max_pos:
        return {}
    if layer_types is None or all(t == "sliding_attention" for t in layer_types):
        return dict(sliding_window=sliding_window)
    if "sliding_attention" not in layer_types:
        return {}
    return dict(sliding_window=sliding_window, layer_types=tuple(layer_types))


class TensorParallelSlicer:
    """This rank's slices of a Hugging Face weight (Megatron layout: see tensorrt_llm.layers.linear)."""

    def __init__(self, cfg: ModelConfig, mapping: Mapping) -> None:
        tp = mapping.tp_size
        Hq, Hkv = cfg.num_attention_heads, cfg.num_key_value_heads
        sizes = [
            ("num_attention_heads", Hq),
            ("intermediate_size", cfg.intermediate_size),
            ("moe_intermediate_size", cfg.moe_intermediate_size or 0),
            ("vocab_size", cfg.vocab_size),
            ("shared_expert_intermediate_size", cfg.shared_expert_intermediate_size),
        ]
        for what, n in sizes:
            if n % tp:
                raise ValueError(f"{what} ({n}) is not divisible by tp_size ({tp})")
        if Hkv % tp and tp % Hkv:
            raise ValueError(f"num_key_value_heads ({Hkv}) and tp_size ({tp}) must divide one another")
        self.tp, self.rank, self.head_dim, self.kv_heads = tp, mapping.tp_rank, cfg.head_dim, Hkv

    def rows(self, t: torch.Tensor, dim: int = 0) -> torch.Tensor:
        """This rank's slice of the output features (column-parallel weights and their biases)."""
        return t.chunk(self.tp, dim=dim)[self.rank]

    def kv_rows(self, t: torch.Tensor) -> torch.Tensor:
        if self.kv_heads >= self.tp:
            return self.rows(t)
        # Fewer K/V heads than ranks: rank r uses the head of its query-head group.
        head, D = self.rank * self.kv_heads // self.tp, self.head_dim
        return t[head * D : (head + 1) * D]

    def cols(self, t: torch.Tensor, dim: int = 1) -> torch.Tensor:
        """This rank's slice of the input features (row-parallel weights)."""
        return t.chunk(self.tp, dim=dim)[self.rank]


def rotary_permutation(head_dim: int, rotary_dim: int, interleaved: bool = False) -> torch.Tensor:
    """Order of a head's q/k dims under which a model's rotary is the full rotate-half the kernels compute
    (pairs (j, j + D/2)): partial rotary over the first `rotary_dim` dims, paired (j, j + R/2) (NeoX) or
    (2j, 2j + 1) (GPT-J, `interleaved`). Each pair's first dims go first in the first half, its second in
    the second half, the passed-through dims after them. q . k is unchanged (both permuted alike)."""
    R, D = rotary_dim, head_dim
    rest = torch.arange((D - R) // 2)
    first, second = (torch.arange(0, R, 2), torch.arange(1, R, 2)) if interleaved else (
        torch.arange(R // 2), R // 2 + torch.arange(R // 2))  # fmt: skip
    return torch.cat([first, R + rest, second, R + (D - R) // 2 + rest])


def rotary_rows(get: WeightGetter, cfg: ModelConfig, interleaved: bool = False) -> WeightGetter:
    """A getter whose q_proj / k_proj tensors ([heads D, ...]) and q/k norm weights ([D] or [heads D]) have each
    head's dims in the kernel's rotary order (`rotary_permutation`), for a partial or interleaved rotary; the
    rest as they are."""
    D = cfg.head_dim
    perm = rotary_permutation(D, cfg.rotary_dim or D, interleaved)

    def get_rows(name: str) -> torch.Tensor:
        t = get(name)
        # the projections' rows, and the weights of q/k norms over each head's dims (GLM-4.5), alike
        if name.rpartition(".")[0].endswith(("q_proj", "k_proj", "q_norm", "k_norm")):
            return t.reshape(-1, D, *t.shape[1:])[:, perm].reshape(t.shape)
        return t

    return get_rows


def _experts(get: WeightGetter, mlp: str, num_experts: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """gate [E, Ie, H], up [E, Ie, H] and down [E, H, Ie] of a mixture-of-experts layer: one tensor per
    expert (`{mlp}experts.{e}.gate_proj.weight`, the checkpoints' layout), or the three-dimensional
    tensors transformers 5 holds in memory (`experts.gate_up_proj` [E, 2 Ie, H], `experts.down_proj`)."""
    try:
        gate = torch.stack([get(f"{mlp}experts.{e}.gate_proj.weight") for e in range(num_experts)])
    except KeyError:
        gate_up, down = get(f"{mlp}experts.gate_up_proj"), get(f"{mlp}experts.down_proj")
        gate, up = gate_up.chunk(2, dim=1)
        return gate, up, down
    up = torch.stack([get(f"{mlp}experts.{e}.up_proj.weight") for e in range(num_experts)])
    down = torch.stack([get(f"{mlp}experts.{e}.down_proj.weight") for e in range(num_experts)])
    return gate, up, down


def convert_decoder(
    get: WeightGetter, cfg: ModelConfig, mapping: Mapping, dtype: torch.dtype
) -> dict[str, torch.Tensor]:
    """One rank's engine weights (names: tensorrt_llm.models.decoder) from a checkpoint with Llama's
    tensor names: QKV and gate/up fused, each split for tensor parallelism, cast to `dtype`."""
    tp = TensorParallelSlicer(cfg, mapping)
    out: dict[str, torch.Tensor] = {}
    for i in range(cfg.num_hidden_layers):
        hf, en = f"model.layers.{i}.", f"layers.{i}."
        att, mlp = hf + "self_attn.", hf + "mlp."
        norms = ("weight", "bias") if cfg.norm_type == "layer" and cfg.norm_bias else ("weight",)
        if cfg.post_block_norms:  # OLMo-2: on the blocks' outputs only
            out[en + "attention_out_norm.weight"] = get(hf + "post_attention_layernorm.weight")
            out[en + "mlp_out_norm.weight"] = get(hf + "post_feedforward_layernorm.weight")
            norms_in = ()
        elif cfg.sandwich_norm:  # Gemma-2 names its attention output's norm post_attention_layernorm
            out[en + "attention_out_norm.weight"] = get(hf + "post_attention_layernorm.weight")
            out[en + "post_layernorm.weight"] = get(hf + "pre_feedforward_layernorm.weight")
            out[en + "mlp_out_norm.weight"] = get(hf + "post_feedforward_layernorm.weight")
            norms_in = norms
        else:
            if not (cfg.parallel_residual and cfg.parallel_shared_norm):  # (Cohere: one norm for both blocks)
                for kind in norms:
                    out[f"{en}post_layernorm.{kind}"] = get(f"{hf}post_attention_layernorm.{kind}")
            norms_in = norms
        for kind in norms_in:
            out[f"{en}input_layernorm.{kind}"] = get(f"{hf}input_layernorm.{kind}")
        for kind in ("weight", "bias") if cfg.attention_bias or cfg.qkv_bias else ("weight",):
            q, k, v = (get(f"{att}{n}_proj.{kind}") for n in "qkv")
            out[f"{en}attention.qkv.{kind}"] = torch.cat([tp.rows(q), tp.kv_rows(k), tp.kv_rows(v)])
        if cfg.qk_norm_full:  # OLMo-2: [H D] and [Hkv D], each rank its heads' part
            out[en + "attention.q_norm.weight"] = tp.rows(get(att + "q_norm.weight"))
            out[en + "attention.k_norm.weight"] = tp.kv_rows(get(att + "k_norm.weight"))
        elif cfg.qk_norm:  # per head, so every rank holds the whole [D] weights
            out[en + "attention.q_norm.weight"] = get(att + "q_norm.weight")
            out[en + "attention.k_norm.weight"] = get(att + "k_norm.weight")
        out[en + "attention.dense.weight"] = tp.cols(get(att + "o_proj.weight"))
        if cfg.attention_bias:
            out[en + "attention.dense.bias"] = get(att + "o_proj.bias")
        if cfg.is_moe_layer(i):
            out[en + "mlp.router.weight"] = get(mlp + "gate.weight")
            if cfg.moe_router == "sigmoid":
                out[en + "mlp.score_bias"] = get(mlp + "gate.e_score_correction_bias").float()
            gate, up, down = _experts(get, mlp, cfg.num_experts)  # [E, Ie, H] twice, [E, H, Ie]
            out[en + "mlp.gate_up"] = torch.cat([tp.rows(gate, dim=1), tp.rows(up, dim=1)], dim=1)
            out[en + "mlp.down"] = tp.cols(down, dim=2)
            if cfg.shared_expert_intermediate_size:
                sh = mlp + ("shared_expert." if cfg.shared_expert_gated else "shared_experts.")  # GLM's plural
                out[en + "mlp.shared.gate_up.weight"] = torch.cat(
                    [tp.rows(get(sh + "gate_proj.weight")), tp.rows(get(sh + "up_proj.weight"))]
                )
                out[en + "mlp.shared.down.weight"] = tp.cols(get(sh + "down_proj.weight"))
                if cfg.shared_expert_gated:
                    out[en + "mlp.shared_gate.weight"] = get(mlp + "shared_expert_gate.weight")
            continue
        if cfg.mlp_type == "plain":  # StarCoder2's names: c_fc, c_proj
            for kind in ("weight", "bias") if cfg.mlp_bias else ("weight",):
                out[f"{en}mlp.fc.{kind}"] = tp.rows(get(f"{mlp}c_fc.{kind}"))
            out[en + "mlp.proj.weight"] = tp.cols(get(mlp + "c_proj.weight"))
            if cfg.mlp_bias:
                out[en + "mlp.proj.bias"] = get(mlp + "c_proj.bias")
            continue
        for kind in ("weight", "bias") if cfg.mlp_bias else ("weight",):
            gate, up = get(f"{mlp}gate_proj.{kind}"), get(f"{mlp}up_proj.{kind}")
            out[f"{en}mlp.gate_up.{kind}"] = torch.cat([tp.rows(gate), tp.rows(up)])
        out[en + "mlp.down.weight"] = tp.cols(get(mlp + "down_proj.weight"))
        if cfg.mlp_bias:
            out[en + "mlp.down.bias"] = get(mlp + "down_proj.bias")
    for kind in ("weight", "bias") if cfg.norm_type == "layer" and cfg.norm_bias else ("weight",):
        out[f"ln_f.{kind}"] = get(f"model.norm.{kind}")
    embed = get("model.embed_tokens.weight")
    out["lm_head.weight"] = tp.rows(embed if cfg.tie_word_embeddings else get("lm_head.weight"))
    # (a router's choice bias stays float32, as Hugging Face keeps it: it decides ties between experts)
    out = {k: (v if k.endswith("score_bias") else v.to(dtype)).contiguous() for k, v in out.items()}
    if cfg.embedding_multiplier != 1.0:  # in the engine dtype, as Hugging Face multiplies (a tied head is unscaled)
        embed = embed.to(dtype) * torch.tensor(cfg.embedding_multiplier).to(dtype)
    else:  # a copy of its own: a tied head may share its memory, which safetensors refuses to save
        embed = embed.to(dtype).clone()
    out["vocab_embedding.weight"] = embed.contiguous()
    return out
