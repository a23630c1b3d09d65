"""The pre-norm rotary decoder that Llama, Mistral, Mixtral, Qwen2/2.5/3, Qwen2/3-MoE, Gemma/Gemma-2 and
Phi-3 all are: one module, the families' differences are `ModelConfig` options resolved here, at
construction.

    h = embed(ids)                      (Gemma's sqrt(hidden) scale is already in the table; BLOOM: normed)
    per layer:  h = h + attn(norm(h))   (QKV biases, QK-norm, sliding window, soft-capped scores: per layer)
                h = h + mlp(norm(h))    (SiLU or GeLU-tanh gate; RMSNorm w or 1 + w)
                (sandwich_norm: h + norm(attn(norm(h))), h + norm(mlp(norm(h))))
    logits = lm_head(norm(h))           (vocabulary-parallel; soft-capped for Gemma-2)

Engine weight names (per rank):
    vocab_embedding.weight                  [V, H]
    layers.{i}.input_layernorm.weight       [H]
    layers.{i}.attention.qkv.weight         [(Hq + 2 Hkv) D / tp, H]   rows: q | k | v of this rank (+ .bias)
    layers.{i}.attention.q_norm.weight      [D]                         (qk_norm; k_norm likewise)
    layers.{i}.attention.dense.weight       [H, Hq D / tp]              (+ .bias [H] with attention_bias)
    layers.{i}.post_layernorm.weight        [H]                         (the MLP's input norm)
    layers.{i}.attention_out_norm.weight    [H]                         (sandwich_norm; mlp_out_norm likewise)
    layers.{i}.mlp.gate_up.weight           [2 I / tp, H]               rows: gate | up of this rank
    layers.{i}.mlp.down.weight              [H, I / tp]
    (a mixture-of-experts layer instead:)
    layers.{i}.mlp.router.weight            [E, H]
    layers.{i}.mlp.gate_up                  [E, 2 Ie / tp, H]           each expert's rows: gate | up of this rank
    layers.{i}.mlp.down                     [E, H, Ie / tp]
    layers.{i}.mlp.shared.gate_up.weight    [2 Is / tp, H]              (a shared expert; .down.weight likewise)
    layers.{i}.mlp.shared_gate.weight       [1, H]
    ln_f.weight                             [H]                         (LayerNorm: + .bias, and so every norm)
    position_embedding.weight               [max_pos, H]                (learned positions, GPT-2)
    embedding_layernorm.weight              [H]                         (+ .bias; BLOOM)
    layers.{i}.mlp.fc.weight                [I / tp, H]                 (plain MLP, + .bias; proj [H, I / tp])
    lm_head.weight                          [V / tp, H]
"""

import dataclasses
from typing import TYPE_CHECKING

import torch
from torch import nn

from tensorrt_llm import functional as tf
from tensorrt_llm.kernels.attention import alibi_slopes
from tensorrt_llm.layers import (
    MLP,
    Attention,
    AttentionParams,
    ColumnLinear,
    Embedding,
    GatedMLP,
    LayerNorm,
    MoeMLP,
    RmsNorm,
)
from tensorrt_llm.mapping import Mapping
from tensorrt_llm.models.base import CausalLM
from tensorrt_llm.models.config import ModelConfig

if TYPE_CHECKING:
    from tensorrt_llm.runtime.step import StepInput


def _norm(cfg: ModelConfig, dtype: torch.dtype) -> RmsNorm | LayerNorm:
    if cfg.norm_type == "layer":
        return LayerNorm(cfg.hidden_size, cfg.rms_norm_eps, cfg.norm_bias, dtype)
    return RmsNorm(cfg.hidden_size, cfg.rms_norm_eps, dtype, cfg.norm_unit_offset)


class DecoderLayer(nn.Module):
    def __init__(self, cfg: ModelConfig, layer: int, dtype: torch.dtype, mapping: Mapping) -> None:
        super().__init__()
        H, eps = cfg.hidden_size, cfg.rms_norm_eps
        self.post_block_norms = cfg.post_block_norms
        self.input_layernorm = None if cfg.post_block_norms else _norm(cfg, dtype)
        self.attention = Attention(
            H,
            cfg.num_attention_heads,
            cfg.num_key_value_heads,
            cfg.head_dim,
            bias=cfg.attention_bias or cfg.qkv_bias,
            dense_bias=cfg.attention_bias,
            dtype=dtype,
            mapping=mapping,
            window=cfg.attention_window(layer),
            sinks=cfg.attention_sinks(layer),
            qk_norm_eps=eps if cfg.qk_norm else None,
            scale=cfg.attention_multiplier or (cfg.query_pre_attn_scalar**-0.5 if cfg.query_pre_attn_scalar else None),
            softcap=cfg.attn_logit_softcapping or 0.0,
            alibi=cfg.position_embedding == "alibi",
            norm_unit_offset=cfg.norm_unit_offset,
            qk_norm_full=cfg.qk_norm_full,
        )
        shared = cfg.parallel_residual and cfg.parallel_shared_norm
        self.post_layernorm = None if shared or cfg.post_block_norms else _norm(cfg, dtype)
        if cfg.mlp_type == "plain":
            self.mlp = MLP(H, cfg.intermediate_size, cfg.mlp_bias, dtype, mapping, act=cfg.hidden_act)
        elif cfg.is_moe_layer(layer):
            inter = cfg.moe_intermediate_size or cfg.intermediate_size
            self.mlp = MoeMLP(
                H, inter, cfg.num_experts, cfg.num_experts_per_tok, cfg.norm_topk_prob, dtype, mapping, cfg.hidden_act,
                cfg.shared_expert_intermediate_size, cfg.moe_router, cfg.routed_scaling_factor, cfg.moe_groups,
                cfg.moe_topk_groups, cfg.shared_expert_gated,
            )  # fmt: skip
        else:
            self.mlp = GatedMLP(H, cfg.intermediate_size, cfg.mlp_bias, dtype, mapping, act=cfg.hidden_act)
        self.parallel_residual = cfg.parallel_residual
        self.residual_multiplier = cfg.residual_multiplier
        self.attention_out_norm = self.mlp_out_norm = None
        if cfg.sandwich_norm or cfg.post_block_norms:
            self.attention_out_norm = RmsNorm(H, eps, dtype, cfg.norm_unit_offset)
            self.mlp_out_norm = RmsNorm(H, eps, dtype, cfg.norm_unit_offset)

    def forward(
        self,
        h: torch.Tensor,
        residual: torch.Tensor | None,
        p: AttentionParams,
        k_cache: torch.Tensor,
        v_cache: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        # The residual stream is carried separately so that each add is fused into the next norm.
        if self.post_block_norms:  # OLMo-2: no norm on the way in, so the stream is added here
            h = h if residual is None else h + residual
            h = h + self.attention_out_norm(self.attention(h, p, k_cache, v_cache))
            return self.mlp_out_norm(self.mlp(h)), h
        if self.parallel_residual:  # GPT-NeoX: attention and MLP read the same input; both add to it
            x, residual = (self.input_layernorm(h), h) if residual is None else self.input_layernorm(h, residual)
            m = x if self.post_layernorm is None else self.post_layernorm(residual)  # GPT-J, Falcon-7B: one norm
            return self.attention(x, p, k_cache, v_cache) + self.mlp(m), residual
        if residual is None:
            residual = h
            h = self.input_layernorm(h)
        else:
            h, residual = self.input_layernorm(h, residual)
        h = self.attention(h, p, k_cache, v_cache)
        if self.attention_out_norm is None:
            if self.residual_multiplier != 1.0:  # Granite
                h, residual = self.post_layernorm(h * self.residual_multiplier, residual)
                return self.mlp(h) * self.residual_multiplier, residual
            h, residual = self.post_layernorm(h, residual)
            return self.mlp(h), residual
        h, residual = self.post_layernorm(self.attention_out_norm(h), residual)
        return self.mlp_out_norm(self.mlp(h)), residual


class DecoderForCausalLM(CausalLM):
    def __init__(self, cfg: ModelConfig, dtype: torch.dtype, mapping: Mapping = Mapping()) -> None:
        super().__init__()
        if mapping.pp_size > 1:
            raise NotImplementedError("pipeline parallelism is not built yet: use tp_size for multi-GPU")
        self.cfg = cfg
        self.tp_size, self.tp_rank = mapping.tp_size, mapping.tp_rank
        self.vocab_embedding = Embedding(cfg.vocab_size, cfg.hidden_size, dtype)
        # BLOOM: a LayerNorm of the token embeddings
        self.embedding_layernorm = _norm(cfg, dtype) if cfg.embedding_layernorm else None
        self.layers = nn.ModuleList(DecoderLayer(cfg, i, dtype, mapping) for i in range(cfg.num_hidden_layers))
        self.position_embedding = None
        if cfg.position_embedding == "learned":  # GPT-2: replicated on every rank, as the token table
            self.position_embedding = Embedding(cfg.max_position_embeddings, cfg.hidden_size, dtype)
        self.ln_f = _norm(cfg, dtype)
        # Vocabulary-parallel head: each rank scores a slice of the vocabulary, gathered at the end.
        self.lm_head = ColumnLinear(
            cfg.hidden_size, cfg.vocab_size, cfg.lm_head_bias, dtype, mapping, gather_output=True
        )
        self.init_buffers(None)

    def init_buffers(self, device: torch.device | None) -> None:
        cfg = self.cfg
        slopes = None
        if cfg.position_embedding == "alibi":  # this rank's heads' slopes (float32, as Hugging Face's)
            heads = cfg.num_attention_heads // self.tp_size
            slopes = alibi_slopes(cfg.num_attention_heads)[self.tp_rank * heads : (self.tp_rank + 1) * heads]
            slopes = slopes.contiguous().to(device)
        self.register_buffer("alibi_slopes", slopes, persistent=False)
        if cfg.position_embedding in ("learned", "alibi"):
            # No rotary: cos 1, sin 0 turn the fused rotary-and-cache-write kernel into the cache write alone.
            half = cfg.head_dim // 2
            cache = torch.cat(
                [torch.ones(cfg.max_position_embeddings, half), torch.zeros(cfg.max_position_embeddings, half)], -1
            )
        elif cfg.rotary_dim is not None:
            # Partial rotary (conversion permuted q/k so that the rotated pairs are (j, j + D/2)): the first
            # rotary_dim/2 frequencies of a rotary_dim-wide table, then frequency 0 (cos 1, sin 0) for the rest.
            part = tf.rope_cos_sin_cache(cfg.rotary_dim, cfg.max_position_embeddings, cfg.rope_theta, cfg.rope_scaling)
            cos, sin = part.chunk(2, dim=-1)  # [max_pos, R/2] each
            rest = (part.shape[0], (cfg.head_dim - cfg.rotary_dim) // 2)
            cache = torch.cat([cos, torch.ones(rest), sin, torch.zeros(rest)], -1)  # [max_pos, D] = cos | sin
        else:
            cache = tf.rope_cos_sin_cache(cfg.head_dim, cfg.max_position_embeddings, cfg.rope_theta, cfg.rope_scaling)
        self.register_buffer("cos_sin_cache", cache.to(device), persistent=False)
        local = None
        if cfg.local_rope_layers:  # Gemma-3's sliding-window layers: their own base, no scaling
            local = tf.rope_cos_sin_cache(cfg.head_dim, cfg.max_position_embeddings, cfg.local_rope_theta).to(device)
        self.register_buffer("local_cos_sin_cache", local, persistent=False)
        nope = None
        if cfg.nope_layers:  # cos 1, sin 0: the rotary-and-cache-write kernel writes the cache alone
            rows, half = cache.shape[0], cfg.head_dim // 2
            nope = torch.cat([torch.ones(rows, half), torch.zeros(rows, half)], -1).to(device)
        self.register_buffer("nope_cos_sin_cache", nope, persistent=False)

    def hidden(self, step: "StepInput", k_caches: list[torch.Tensor], v_caches: list[torch.Tensor]) -> torch.Tensor:
        p = AttentionParams(
            positions=step.positions,
            seq_lens=step.seq_lens,
            context_lens=step.context_lens,
            block_tables=step.block_tables,
            slot_mapping=step.slot_mapping,
            max_seq_len=step.max_seq_len,
            max_context_len=step.max_context_len,
            cos_sin_cache=self.cos_sin_cache,
            num_decode_tail=step.num_decode_tail,
            alibi_slopes=self.alibi_slopes,
        )
        h = self.vocab_embedding(step.input_ids)  # [T, hidden]
        if self.embedding_layernorm is not None:
            h = self.embedding_layernorm(h)
        if self.position_embedding is not None:
            h = h + self.position_embedding(step.positions)
        residual = None
        params = [p] * len(self.layers)
        for table, layers in ((self.local_cos_sin_cache, self.cfg.local_rope_layers),
                              (self.nope_cos_sin_cache, self.cfg.nope_layers)):  # fmt: skip
            if table is not None:
                other = dataclasses.replace(p, cos_sin_cache=table)
                for i in layers:
                    params[i] = other
        for layer, lp, k_cache, v_cache in zip(self.layers, params, k_caches, v_caches, strict=True):
            h, residual = layer(h, residual, lp, k_cache, v_cache)
        # Only the rows whose logits are wanted go through the final norm and the (large) head.
        idx = step.logits_indices
        h, _ = self.ln_f(h[idx], residual[idx])
        return h

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        logits = self.lm_head(h).float()
        if self.cfg.logits_scaling != 1.0:  # Granite
            logits = logits / self.cfg.logits_scaling
        cap = self.cfg.final_logit_softcapping
        return logits if cap is None else torch.tanh(logits / cap) * cap
