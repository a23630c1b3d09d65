"""GPT-2, GPT-BigCode (StarCoder / SantaCoder) and OPT: the decoder with LayerNorm (bias), learned absolute
positions and a plain MLP with biases. GPT-2 stores its projections as Conv1D ([in, out], transposed against
a Linear) and has full multi-head attention; GPT-BigCode uses Linear layers and, with `multi_query`, one
K/V head. Both tie the head to the token embeddings. Checkpoint names: `transformer.h.{i}.attn.c_attn`
(fused q | k | v), `attn.c_proj`, `mlp.c_fc`, `mlp.c_proj`, `ln_1`, `ln_2`, `transformer.wte` / `wpe` / `ln_f`
(the oldest GPT-2 checkpoints lack the `transformer.` prefix)."""

import torch

from tensorrt_llm.layers.mlp import ACTIVATIONS
from tensorrt_llm.mapping import Mapping
from tensorrt_llm.models.base import ModelFamily, WeightGetter
from tensorrt_llm.models.config import ModelConfig
from tensorrt_llm.models.convert import TensorParallelSlicer
from tensorrt_llm.models.decoder import DecoderForCausalLM


def _config(hf: dict, architecture: str, kv_heads: int) -> ModelConfig:
    try:
        H, heads = hf["n_embd"], hf["n_head"]
        act = hf.get("activation_function", "gelu_new")
        if act not in ACTIVATIONS:
            raise ValueError(f"{architecture}: activation_function {act!r} is not supported ({sorted(ACTIVATIONS)})")
        for flag in ("scale_attn_by_inverse_layer_idx", "reorder_and_upcast_attn", "add_cross_attention"):
            if hf.get(flag):
                raise ValueError(f"{architecture}: {flag} is not supported")
        if not hf.get("scale_attn_weights", True):
            raise ValueError(f"{architecture}: scale_attn_weights false is not supported")
        return ModelConfig(
            architecture=(hf.get("architectures") or [architecture])[0],
            vocab_size=hf["vocab_size"],
            hidden_size=H,
            intermediate_size=hf.get("n_inner") or 4 * H,
            num_hidden_layers=hf["n_layer"],
            num_attention_heads=heads,
            num_key_value_heads=kv_heads or heads,
            head_dim=H // heads,
            max_position_embeddings=hf.get("n_positions", 1024),
            rms_norm_eps=hf.get("layer_norm_epsilon", 1e-5),
            tie_word_embeddings=bool(hf.get("tie_word_embeddings", True)),
            hidden_act=act,
            attention_bias=True,
            mlp_bias=True,
            bos_token_id=hf.get("bos_token_id"),
            eos_token_id=hf.get("eos_token_id"),
            pad_token_id=hf.get("pad_token_id"),
            norm_type="layer",
            position_embedding="learned",
            mlp_type="plain",
        )
    except KeyError as e:
        raise ValueError(f"Hugging Face config.json lacks the field {e.args[0]!r}") from None


def gpt2_config_from_hf(hf: dict) -> ModelConfig:
    return _config(hf, "GPT2LMHeadModel", 0)


def bigcode_config_from_hf(hf: dict) -> ModelConfig:
    return _config(hf, "GPTBigCodeForCausalLM", 1 if hf.get("multi_query", True) else 0)


def _prefixed(get: WeightGetter) -> WeightGetter:
    def get_any(name: str) -> torch.Tensor:
        try:
            return get(name)
        except KeyError:
            return get(name.removeprefix("transformer."))

    return get_any


def _converter(conv1d: bool):
    def convert(get: WeightGetter, cfg: ModelConfig, mapping: Mapping, dtype: torch.dtype) -> dict:
        get = _prefixed(get)
        tp = TensorParallelSlicer(cfg, mapping)
        # A Linear's weight [out, in]; GPT-2's Conv1D holds [in, out]
        w = (lambda name: get(name).t()) if conv1d else get  # noqa: E731
        q, kv = cfg.num_attention_heads * cfg.head_dim, cfg.num_key_value_heads * cfg.head_dim
        out: dict[str, torch.Tensor] = {}
        for i in range(cfg.num_hidden_layers):
            hf, en = f"transformer.h.{i}.", f"layers.{i}."
            for src, dst in (("ln_1", "input_layernorm"), ("ln_2", "post_layernorm")):
                out[f"{en}{dst}.weight"], out[f"{en}{dst}.bias"] = get(f"{hf}{src}.weight"), get(f"{hf}{src}.bias")
            qkv_w, qkv_b = w(hf + "attn.c_attn.weight"), get(hf + "attn.c_attn.bias")  # [q + 2 kv, H], [q + 2 kv]
            for t, kind in ((qkv_w, "weight"), (qkv_b, "bias")):
                tq, tk, tv = t.split([q, kv, kv])
                out[f"{en}attention.qkv.{kind}"] = torch.cat([tp.rows(tq), tp.kv_rows(tk), tp.kv_rows(tv)])
            out[en + "attention.dense.weight"] = tp.cols(w(hf + "attn.c_proj.weight"))
            out[en + "attention.dense.bias"] = get(hf + "attn.c_proj.bias")
            out[en + "mlp.fc.weight"] = tp.rows(w(hf + "mlp.c_fc.weight"))
            out[en + "mlp.fc.bias"] = tp.rows(get(hf + "mlp.c_fc.bias"))
            out[en + "mlp.proj.weight"] = tp.cols(w(hf + "mlp.c_proj.weight"))
            out[en + "mlp.proj.bias"] = get(hf + "mlp.c_proj.bias")
        out["ln_f.weight"], out["ln_f.bias"] = get("transformer.ln_f.weight"), get("transformer.ln_f.bias")
        embed = get("transformer.wte.weight")
        out["lm_head.weight"] = tp.rows(embed if cfg.tie_word_embeddings else get("lm_head.weight"))
        out["position_embedding.weight"] = get("transformer.wpe.weight")
        out = {k: v.to(dtype).contiguous() for k, v in out.items()}
        out["vocab_embedding.weight"] = embed.to(dtype).clone().contiguous()  # its own memory: the head may share
        return out

    return convert


GPT2 = ModelFamily(("GPT2LMHeadModel",), gpt2_config_from_hf, _converter(conv1d=True), DecoderForCausalLM)
BIGCODE = ModelFamily(("GPTBigCodeForCausalLM",), bigcode_config_from_hf, _converter(conv1d=False), DecoderForCausalLM)


def opt_config_from_hf(hf: dict) -> ModelConfig:
    """OPT (pre-norm sizes, 125M and 1.3B up): the GPT options with ReLU and separate q/k/v projections.
    OPT-350M's post-norm and projected embeddings (`word_embed_proj_dim`) are refused."""
    try:
        H = hf["hidden_size"]
        if not hf.get("do_layer_norm_before", True):
            raise ValueError("OPTForCausalLM: do_layer_norm_before false (OPT-350M's post-norm) is not supported")
        if hf.get("word_embed_proj_dim", H) != H:
            raise ValueError(
                "OPTForCausalLM: word_embed_proj_dim != hidden_size (projected embeddings) is not supported"
            )
        if not hf.get("enable_bias", True) or not hf.get("layer_norm_elementwise_affine", True):
            raise ValueError("OPTForCausalLM: enable_bias / layer_norm_elementwise_affine false are not supported")
        act = hf.get("activation_function", "relu")
        if act not in ACTIVATIONS:
            raise ValueError(f"OPTForCausalLM: activation_function {act!r} is not supported ({sorted(ACTIVATIONS)})")
        return ModelConfig(
            architecture=(hf.get("architectures") or ["OPTForCausalLM"])[0],
            vocab_size=hf["vocab_size"],
            hidden_size=H,
            intermediate_size=hf["ffn_dim"],
            num_hidden_layers=hf["num_hidden_layers"],
            num_attention_heads=hf["num_attention_heads"],
            num_key_value_heads=hf["num_attention_heads"],
            head_dim=H // hf["num_attention_heads"],
            max_position_embeddings=hf.get("max_position_embeddings", 2048),
            rms_norm_eps=1e-5,  # OPT's LayerNorms use torch's default
            tie_word_embeddings=bool(hf.get("tie_word_embeddings", True)),
            hidden_act=act,
            attention_bias=True,
            mlp_bias=True,
            bos_token_id=hf.get("bos_token_id"),
            eos_token_id=hf.get("eos_token_id"),
            pad_token_id=hf.get("pad_token_id"),
            norm_type="layer",
            position_embedding="learned",
            mlp_type="plain",
        )
    except KeyError as e:
        raise ValueError(f"Hugging Face config.json lacks the field {e.args[0]!r}") from None


OPT_POSITION_OFFSET = 2  # OPT's position table starts 2 rows in (fairseq's padding offset)


def convert_opt(get: WeightGetter, cfg: ModelConfig, mapping: Mapping, dtype: torch.dtype) -> dict:
    tp = TensorParallelSlicer(cfg, mapping)
    out: dict[str, torch.Tensor] = {}
    for i in range(cfg.num_hidden_layers):
        hf, en = f"model.decoder.layers.{i}.", f"layers.{i}."
        att = hf + "self_attn."
        for src, dst in (("self_attn_layer_norm", "input_layernorm"), ("final_layer_norm", "post_layernorm")):
            out[f"{en}{dst}.weight"], out[f"{en}{dst}.bias"] = get(f"{hf}{src}.weight"), get(f"{hf}{src}.bias")
        for kind in ("weight", "bias"):
            q, k, v = (get(f"{att}{n}_proj.{kind}") for n in "qkv")
            out[f"{en}attention.qkv.{kind}"] = torch.cat([tp.rows(q), tp.kv_rows(k), tp.kv_rows(v)])
        out[en + "attention.dense.weight"] = tp.cols(get(att + "out_proj.weight"))
        out[en + "attention.dense.bias"] = get(att + "out_proj.bias")
        out[en + "mlp.fc.weight"], out[en + "mlp.fc.bias"] = (
            tp.rows(get(hf + "fc1.weight")),
            tp.rows(get(hf + "fc1.bias")),
        )
        out[en + "mlp.proj.weight"], out[en + "mlp.proj.bias"] = tp.cols(get(hf + "fc2.weight")), get(hf + "fc2.bias")
    out["ln_f.weight"] = get("model.decoder.final_layer_norm.weight")
    out["ln_f.bias"] = get("model.decoder.final_layer_norm.bias")
    embed = get("model.decoder.embed_tokens.weight")
    out["lm_head.weight"] = tp.rows(embed if cfg.tie_word_embeddings else get("lm_head.weight"))
    out["position_embedding.weight"] = get("model.decoder.embed_positions.weight")[OPT_POSITION_OFFSET:]
    out = {k: v.to(dtype).contiguous() for k, v in out.items()}
    out["vocab_embedding.weight"] = embed.to(dtype).clone().contiguous()
    return out


OPT = ModelFamily(("OPTForCausalLM",), opt_config_from_hf, convert_opt, DecoderForCausalLM)
