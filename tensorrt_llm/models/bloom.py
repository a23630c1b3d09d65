"""The ALiBi families on the one decoder (no rotary: the cos 1 / sin 0 table GPT-2's learned positions use;
scores + slope_h * (k_pos - q_pos), Hugging Face's slopes, each rank its own heads'):
- BLOOM: LayerNorm (bias) everywhere and on the token embeddings (`word_embeddings_layernorm`), a fused
  `self_attention.query_key_value` whose rows are q | k | v per head ([H, 3, D]), `dense`, a GeLU-tanh MLP
  `dense_h_to_4h` / `dense_4h_to_h`, biases everywhere, a tied head. bigscience's checkpoints name their
  tensors without the `transformer.` prefix.
- MPT: LayerNorm without bias, a fused `attn.Wqkv` (q | k | v blocks), `out_proj`, an exact-GeLU MLP
  `ffn.up_proj` / `ffn.down_proj` of 4 x hidden, no biases, a tied head. `clip_qkv`, `qk_ln`,
  `softmax_scale`, `prefix_lm` and biases are refused.
"""

import torch

from tensorrt_llm.mapping import Mapping
from tensorrt_llm.models.base import ModelFamily, WeightGetter
from tensorrt_llm.models.config import ModelConfig
from tensorrt_llm.models.convert import TensorParallelSlicer
from tensorrt_llm.models.decoder import DecoderForCausalLM
from tensorrt_llm.models.gpt import _finish, _gpt_config, _prefixed, _reads_hf


def _first_of(hf: dict, *names: str):
    for name in names[:-1]:
        if hf.get(name) is not None:
            return hf[name]
    return hf[names[-1]]


@_reads_hf
def bloom_config_from_hf(hf: dict) -> ModelConfig:
    if hf.get("apply_residual_connection_post_layernorm"):
        raise ValueError("BloomForCausalLM: apply_residual_connection_post_layernorm is not supported")
    if hf.get("slow_but_exact") and hf.get("pretraining_tp", 1) > 1:
        raise ValueError("BloomForCausalLM: slow_but_exact with pretraining_tp > 1 is not supported")
    H = _first_of(hf, "hidden_size", "n_embed")
    heads = _first_of(hf, "num_attention_heads", "n_head")
    return _gpt_config(
        hf, "BloomForCausalLM", "gelu_new", H, heads,  # bloom_gelu: the tanh form
        intermediate_size=4 * H, num_hidden_layers=_first_of(hf, "num_hidden_layers", "n_layer"),
        max_position_embeddings=hf.get("max_position_embeddings") or hf.get("seq_length") or 2048,
        rms_norm_eps=hf.get("layer_norm_epsilon", 1e-5), tie_word_embeddings=bool(hf.get("tie_word_embeddings", True)),
        position_embedding="alibi", embedding_layernorm=True,
    )  # fmt: skip


def convert_bloom(get: WeightGetter, cfg: ModelConfig, mapping: Mapping, dtype: torch.dtype) -> dict:
    get = _prefixed(get)
    tp = TensorParallelSlicer(cfg, mapping)
    Hn, D = cfg.num_attention_heads, cfg.head_dim
    out: dict[str, torch.Tensor] = {}
    for kind in ("weight", "bias"):
        out[f"embedding_layernorm.{kind}"] = get(f"transformer.word_embeddings_layernorm.{kind}")
    for i in range(cfg.num_hidden_layers):
        hf, en = f"transformer.h.{i}.", f"layers.{i}."
        for src, dst in (("input_layernorm", "input_layernorm"), ("post_attention_layernorm", "post_layernorm")):
            out[f"{en}{dst}.weight"], out[f"{en}{dst}.bias"] = get(f"{hf}{src}.weight"), get(f"{hf}{src}.bias")
        for kind in ("weight", "bias"):
            t = get(f"{hf}self_attention.query_key_value.{kind}")  # rows per head: q | k | v, D each
            t = t.reshape(Hn, 3, D, *t.shape[1:])
            q, k, v = (t[:, j].reshape(Hn * D, *t.shape[3:]) for j in range(3))
            out[f"{en}attention.qkv.{kind}"] = torch.cat([tp.rows(q), tp.kv_rows(k), tp.kv_rows(v)])
        out[en + "attention.dense.weight"] = tp.cols(get(hf + "self_attention.dense.weight"))
        out[en + "attention.dense.bias"] = get(hf + "self_attention.dense.bias")
        out[en + "mlp.fc.weight"] = tp.rows(get(hf + "mlp.dense_h_to_4h.weight"))
        out[en + "mlp.fc.bias"] = tp.rows(get(hf + "mlp.dense_h_to_4h.bias"))
        out[en + "mlp.proj.weight"] = tp.cols(get(hf + "mlp.dense_4h_to_h.weight"))
        out[en + "mlp.proj.bias"] = get(hf + "mlp.dense_4h_to_h.bias")
    return _finish(out, get, cfg, tp, dtype, "transformer.ln_f", "transformer.word_embeddings.weight")


BLOOM = ModelFamily(("BloomForCausalLM",), bloom_config_from_hf, convert_bloom, DecoderForCausalLM)


@_reads_hf
def mpt_config_from_hf(hf: dict) -> ModelConfig:
    attn = hf.get("attn_config") or {}
    for flag in ("clip_qkv", "qk_ln", "softmax_scale", "prefix_lm", "attn_uses_sequence_id"):
        if attn.get(flag):
            raise ValueError(f"MptForCausalLM: attn_config.{flag} is not supported")
    if not attn.get("alibi", True):
        raise ValueError("MptForCausalLM: attn_config.alibi false (learned positions) is not supported")
    if attn.get("alibi_bias_max", 8) != 8:
        raise ValueError("MptForCausalLM: attn_config.alibi_bias_max other than 8 is not supported")
    if not hf.get("no_bias", True):
        raise ValueError("MptForCausalLM: biases (no_bias false) are not supported")
    if hf.get("expansion_ratio", 4) != 4:
        raise ValueError("MptForCausalLM: expansion_ratio other than 4 is not supported")
    H = _first_of(hf, "hidden_size", "d_model")
    heads = _first_of(hf, "num_attention_heads", "n_heads")
    return _gpt_config(
        hf, "MptForCausalLM", "gelu", H, heads, intermediate_size=4 * H,
        num_hidden_layers=_first_of(hf, "num_hidden_layers", "n_layers"),
        max_position_embeddings=hf.get("max_seq_len", 2048), rms_norm_eps=hf.get("layer_norm_epsilon", 1e-5),
        tie_word_embeddings=bool(hf.get("tie_word_embeddings", True)), attention_bias=False, mlp_bias=False,
        position_embedding="alibi", norm_bias=False,
    )  # fmt: skip


def convert_mpt(get: WeightGetter, cfg: ModelConfig, mapping: Mapping, dtype: torch.dtype) -> dict:
    tp = TensorParallelSlicer(cfg, mapping)
    out: dict[str, torch.Tensor] = {}
    for i in range(cfg.num_hidden_layers):
        hf, en = f"transformer.blocks.{i}.", f"layers.{i}."
        out[en + "input_layernorm.weight"] = get(hf + "norm_1.weight")
        out[en + "post_layernorm.weight"] = get(hf + "norm_2.weight")
        q, k, v = get(hf + "attn.Wqkv.weight").chunk(3)
        out[en + "attention.qkv.weight"] = torch.cat([tp.rows(q), tp.kv_rows(k), tp.kv_rows(v)])
        out[en + "attention.dense.weight"] = tp.cols(get(hf + "attn.out_proj.weight"))
        out[en + "mlp.fc.weight"] = tp.rows(get(hf + "ffn.up_proj.weight"))
        out[en + "mlp.proj.weight"] = tp.cols(get(hf + "ffn.down_proj.weight"))
    return _finish(out, get, cfg, tp, dtype, "transformer.norm_f", "transformer.wte.weight")


MPT = ModelFamily(("MptForCausalLM",), mpt_config_from_hf, convert_mpt, DecoderForCausalLM)
