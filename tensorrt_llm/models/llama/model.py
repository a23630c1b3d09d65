"""The Llama family (Llama 1/2/3, with GQA, tied or untied embeddings and Llama-3 rope scaling)."""

from typing import TYPE_CHECKING

import torch
from torch import nn

from tensorrt_llm import functional as tf
from tensorrt_llm.layers import Attention, AttentionParams, ColumnLinear, Embedding, GatedMLP, RmsNorm
from tensorrt_llm.mapping import Mapping
from tensorrt_llm.models.config import ModelConfig

if TYPE_CHECKING:
    from tensorrt_llm.runtime.step import StepInput


class LlamaDecoderLayer(nn.Module):
    def __init__(self, cfg: ModelConfig, dtype: torch.dtype, mapping: Mapping) -> None:
        super().__init__()
        self.input_layernorm = RmsNorm(cfg.hidden_size, cfg.rms_norm_eps, dtype)
        self.attention = Attention(
            cfg.hidden_size,
            cfg.num_attention_heads,
            cfg.num_key_value_heads,
            cfg.head_dim,
            bias=cfg.attention_bias,
            dense_bias=cfg.attention_bias,
            dtype=dtype,
            mapping=mapping,
        )
        self.post_layernorm = RmsNorm(cfg.hidden_size, cfg.rms_norm_eps, dtype)
        self.mlp = GatedMLP(cfg.hidden_size, cfg.intermediate_size, cfg.mlp_bias, dtype, mapping)

    def forward(
        self,
        h: torch.Tensor,
        residual: torch.Tensor | None,
        p: AttentionParams,
        k_cache: torch.Tensor,
        v_cache: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        # The residual stream is carried separately so that each add is fused into the next norm.
        if residual is None:
            residual = h
            h = self.input_layernorm(h)
        else:
            h, residual = self.input_layernorm(h, residual)
        h = self.attention(h, p, k_cache, v_cache)
        h, residual = self.post_layernorm(h, residual)
        return self.mlp(h), residual


class LlamaForCausalLM(nn.Module):
    def __init__(self, cfg: ModelConfig, dtype: torch.dtype, mapping: Mapping = Mapping()) -> None:
        super().__init__()
        if mapping.pp_size > 1:
            raise NotImplementedError("pipeline parallelism is not built yet: use tp_size for multi-GPU")
        self.cfg = cfg
        self.vocab_embedding = Embedding(cfg.vocab_size, cfg.hidden_size, dtype)
        self.layers = nn.ModuleList(LlamaDecoderLayer(cfg, dtype, mapping) for _ in range(cfg.num_hidden_layers))
        self.ln_f = RmsNorm(cfg.hidden_size, cfg.rms_norm_eps, dtype)
        # Vocabulary-parallel head: each rank scores a slice of the vocabulary, gathered at the end.
        self.lm_head = ColumnLinear(cfg.hidden_size, cfg.vocab_size, False, dtype, mapping, gather_output=True)
        self.init_buffers(None)

    def init_buffers(self, device: torch.device | None) -> None:
        cfg = self.cfg
        cache = tf.rope_cos_sin_cache(cfg.head_dim, cfg.max_position_embeddings, cfg.rope_theta, cfg.rope_scaling)
        self.register_buffer("cos_sin_cache", cache.to(device), persistent=False)

    def forward(self, step: "StepInput", k_caches: list[torch.Tensor], v_caches: list[torch.Tensor]) -> torch.Tensor:
        """Returns float32 logits [N, vocab] for the rows `step.logits_indices` of the packed tokens."""
        return self.logits(self.hidden(step, k_caches, v_caches))

    def hidden(self, step: "StepInput", k_caches: list[torch.Tensor], v_caches: list[torch.Tensor]) -> torch.Tensor:
        """Final normed hidden states [N, hidden] of the rows `step.logits_indices` (what CUDA graphs
        capture: their outputs stay small, the vocabulary-sized logits are made outside)."""
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
        )
        h = self.vocab_embedding(step.input_ids)  # [T, hidden]
        residual = None
        for layer, k_cache, v_cache in zip(self.layers, k_caches, v_caches, strict=True):
            h, residual = layer(h, residual, p, k_cache, v_cache)
        # Only the rows whose logits are wanted go through the final norm and the (large) head.
        idx = step.logits_indices
        h, _ = self.ln_f(h[idx], residual[idx])
        return h

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        return self.lm_head(h).float()
