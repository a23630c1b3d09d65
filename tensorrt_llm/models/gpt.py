"""The GPT lineage on the one decoder, with LayerNorm (bias) and a plain MLP with biases:
- GPT-2 and GPT-BigCode (StarCoder / SantaCoder): learned absolute positions. GPT-2 stores projections as
  Conv1D ([in, out], transposed against a Linear); GPT-BigCode uses Linear layers and, with `multi_query`,
  one K/V head. Names: `transformer.h.{i}.attn.c_attn` (fused q | k | v), `attn.c_proj`, `mlp.c_fc`,
  `mlp.c_proj`, `ln_1`, `ln_2`, `transformer.wte` / `wpe` / `ln_f` (the oldest GPT-2 checkpoints lack the
  `transformer.` prefix). Both tie the head to the token embeddings.
- OPT: learned positions (2 rows into its table), ReLU, separate q/k/v (`model.decoder.*`).
- GPT-NeoX (Pythia): partial rotary, attention and MLP in parallel, q | k | v interleaved per head.
"""

import contextlib
import functools

import torch

from tensorrt_llm.layers.mlp import ACTIVATIONS
from tensorrt_llm.mapping import Mapping
from tensorrt_llm.models.base import ModelFamily, WeightGetter
from tensorrt_llm.models.config import ModelConfig
from tensorrt_llm.models.convert import TensorParallelSlicer, rotary_permutation
from tensorrt_llm.models.decoder import DecoderForCausalLM


def _reads_hf(fn):
    """A config reader whose missing config.json field is a ValueError naming it."""

    @functools.wraps(fn)
    def read(hf: dict) -> ModelConfig:
        try:
            return fn(hf)
        except KeyError as e:
            raise ValueError(f"Hugging Face config.json lacks the field {e.args[0]!r}") from None

    return read


def _gpt_config(hf: dict, architecture: str, act: str, H: int, heads: int, **fields) -> ModelConfig:
    """The fields the lineage shares (LayerNorm, plain MLP, biases, token ids); `fields` the rest."""
    if act not in ACTIVATIONS:
        raise ValueError(f"{architecture}: activation {act!r} is not supported (supported: {sorted(ACTIVATIONS)})")
    shared = dict(
        architecture=(hf.get("architectures") or [architecture])[0],
        vocab_size=hf["vocab_size"],
        hidden_size=H,
        num_attention_heads=heads,
        head_dim=H // heads,
        hidden_act=act,
        attention_bias=True,
        mlp_bias=True,
        bos_token_id=hf.get("bos_token_id"),
        eos_token_id=hf.get("eos_token_id"),
        pad_token_id=hf.get("pad_token_id"),
        norm_type="layer",
        mlp_type="plain",
    )
    return ModelConfig(**{"num_key_value_heads": heads, **shared, **fields})


def _gpt2_like(hf: dict, architecture: str, kv_heads: int | None) -> ModelConfig:
    for flag in ("scale_attn_by_inverse_layer_idx", "reorder_and_upcast_attn", "add_cross_attention"):
        if hf.get(flag):
            raise ValueError(f"{architecture}: {flag} is not supported")
    if not hf.get("scale_attn_weights", True):
        raise ValueError(f"{architecture}: scale_attn_weights false is not supported")
    H, heads = hf["n_embd"], hf["n_head"]
    return _gpt_config(
        hf, architecture, hf.get("activation_function", "gelu_new"), H, heads,
        num_key_value_heads=kv_heads or heads, intermediate_size=hf.get("n_inner") or 4 * H,
        num_hidden_layers=hf["n_layer"], max_position_embeddings=hf.get("n_positions", 1024),
        rms_norm_eps=hf.get("layer_norm_epsilon", 1e-5), tie_word_embeddings=bool(hf.get("tie_word_embeddings", True)),
        position_embedding="learned",
    )  # fmt: skip


@_reads_hf
def gpt2_config_from_hf(hf: dict) -> ModelConfig:
    return _gpt2_like(hf, "GPT2LMHeadModel", None)


@_reads_hf
def bigcode_config_from_hf(hf: dict) -> ModelConfig:
    return _gpt2_like(hf, "GPTBigCodeForCausalLM", 1 if hf.get("multi_query", True) else None)


@_reads_hf
def opt_config_from_hf(hf: dict) -> ModelConfig:
    """OPT-125M and OPT-1.3B up; OPT-350M's post-norm and projected embeddings are refused."""
    H = hf["hidden_size"]
    if not hf.get("do_layer_norm_before", True):
        raise ValueError("OPTForCausalLM: do_layer_norm_before false (OPT-350M's post-norm) is not supported")
    if hf.get("word_embed_proj_dim", H) != H:
        raise ValueError("OPTForCausalLM: word_embed_proj_dim != hidden_size (projected embeddings) is not supported")
    if not hf.get("enable_bias", True) or not hf.get("layer_norm_elementwise_affine", True):
        raise ValueError("OPTForCausalLM: enable_bias / layer_norm_elementwise_affine false are not supported")
    return _gpt_config(
        hf, "OPTForCausalLM", hf.get("activation_function", "relu"), H, hf["num_attention_heads"],
        intermediate_size=hf["ffn_dim"], num_hidden_layers=hf["num_hidden_layers"],
        max_position_embeddings=hf.get("max_position_embeddings", 2048),
        rms_norm_eps=1e-5,  # OPT's LayerNorms keep torch's default
        tie_word_embeddings=bool(hf.get("tie_word_embeddings", True)), position_embedding="learned",
    )  # fmt: skip


@_reads_hf
def neox_config_from_hf(hf: dict) -> ModelConfig:
    """GPT-NeoX: partial rotary (`rotary_pct`), parallel attention + MLP (`use_parallel_residual`), untied head."""
    H, heads = hf["hidden_size"], hf["num_attention_heads"]
    rope = hf.get("rope_parameters") or {}
    if rope.get("rope_type", "default") != "default" or hf.get("rope_scaling"):
        raise ValueError("GPTNeoXForCausalLM: rope scaling is not supported")
    D = H // heads
    R = int(D * hf.get("rotary_pct", rope.get("partial_rotary_factor", 1.0)))
    return _gpt_config(
        hf, "GPTNeoXForCausalLM", hf.get("hidden_act", "gelu"), H, heads,
        intermediate_size=hf["intermediate_size"], num_hidden_layers=hf["num_hidden_layers"],
        max_position_embeddings=hf.get("max_position_embeddings", 2048), rms_norm_eps=hf.get("layer_norm_eps", 1e-5),
        rope_theta=float(hf.get("rotary_emb_base", rope.get("rope_theta", 10000.0))),
        tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),
        attention_bias=bool(hf.get("attention_bias", True)), rotary_dim=R if R < D else None,
        parallel_residual=bool(hf.get("use_parallel_residual", True)),
    )  # fmt: skip


def _first(get: WeightGetter, names: tuple[str, ...]) -> torch.Tensor:
    """The first of `names` the checkpoint has."""
    for name in names[:-1]:
        with contextlib.suppress(KeyError):
            return get(name)
    return get(names[-1])


def _finish(out: dict, get: WeightGetter, cfg: ModelConfig, tp: TensorParallelSlicer, dtype: torch.dtype, ln_f: str,
            embed: str, heads: tuple[str, ...] = ("lm_head.weight",)) -> dict:  # fmt: skip
    """The final norm, the head (tied, or the first of `heads` the checkpoint has) and the embeddings;
    every tensor cast to `dtype`."""
    out["ln_f.weight"] = get(ln_f + ".weight")
    if cfg.norm_bias:
        out["ln_f.bias"] = get(ln_f + ".bias")
    table = get(embed)
    out["lm_head.weight"] = tp.rows(table if cfg.tie_word_embeddings else _first(get, heads))
    out = {k: v.to(dtype).contiguous() for k, v in out.items()}
    out["vocab_embedding.weight"] = table.to(dtype).clone().contiguous()  # its own memory: the head may share it
    return out


def _prefixed(get: WeightGetter) -> WeightGetter:
    """The oldest GPT-2 checkpoints name their tensors without the `transformer.` prefix."""
    return lambda name: _first(get, (name, name.removeprefix("transformer.")))


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
        out["position_embedding.weight"] = get("transformer.wpe.weight")
        return _finish(out, get, cfg, tp, dtype, "transformer.ln_f", "transformer.wte.weight")

    return convert


GPT2 = ModelFamily(("GPT2LMHeadModel",), gpt2_config_from_hf, _converter(conv1d=True), DecoderForCausalLM)
BIGCODE = ModelFamily(("GPTBigCodeForCausalLM",), bigcode_config_from_hf, _converter(conv1d=False), DecoderForCausalLM)


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
    out["position_embedding.weight"] = get("model.decoder.embed_positions.weight")[OPT_POSITION_OFFSET:]
    return _finish(out, get, cfg, tp, dtype, "model.decoder.final_layer_norm", "model.decoder.embed_tokens.weight")


OPT = ModelFamily(("OPTForCausalLM",), opt_config_from_hf, convert_opt, DecoderForCausalLM)


def convert_neox(get: WeightGetter, cfg: ModelConfig, mapping: Mapping, dtype: torch.dtype) -> dict:
    tp = TensorParallelSlicer(cfg, mapping)
    Hn, D = cfg.num_attention_heads, cfg.head_dim
    perm = rotary_permutation(D, cfg.rotary_dim) if cfg.rotary_dim else torch.arange(D)
    out: dict[str, torch.Tensor] = {}
    for i in range(cfg.num_hidden_layers):
        hf, en = f"gpt_neox.layers.{i}.", f"layers.{i}."
        for name in ("input_layernorm", "post_attention_layernorm"):
            dst = "input_layernorm" if name == "input_layernorm" else "post_layernorm"
            out[f"{en}{dst}.weight"], out[f"{en}{dst}.bias"] = get(f"{hf}{name}.weight"), get(f"{hf}{name}.bias")
        kinds = ("weight", "bias") if cfg.attention_bias else ("weight",)
        for kind in kinds:
            t = get(f"{hf}attention.query_key_value.{kind}")  # rows per head: q | k | v, D each
            t = t.reshape(Hn, 3, D, *t.shape[1:])
            q, k, v = t[:, 0, perm], t[:, 1, perm], t[:, 2]  # [Hn, D, ...], rotary dims reordered in q and k
            q, k, v = (x.reshape(Hn * D, *t.shape[3:]) for x in (q, k, v))
            out[f"{en}attention.qkv.{kind}"] = torch.cat([tp.rows(q), tp.kv_rows(k), tp.kv_rows(v)])
            dense = get(f"{hf}attention.dense.{kind}")
            out[f"{en}attention.dense.{kind}"] = tp.cols(dense) if kind == "weight" else dense
        out[en + "mlp.fc.weight"] = tp.rows(get(hf + "mlp.dense_h_to_4h.weight"))
        out[en + "mlp.fc.bias"] = tp.rows(get(hf + "mlp.dense_h_to_4h.bias"))
        out[en + "mlp.proj.weight"] = tp.cols(get(hf + "mlp.dense_4h_to_h.weight"))
        out[en + "mlp.proj.bias"] = get(hf + "mlp.dense_4h_to_h.bias")
    # the head: embed_out in checkpoints, lm_head in the model transformers 5 builds in memory
    heads = ("embed_out.weight", "lm_head.weight")
    return _finish(out, get, cfg, tp, dtype, "gpt_neox.final_layer_norm", "gpt_neox.embed_in.weight", heads)


NEOX = ModelFamily(("GPTNeoXForCausalLM",), neox_config_from_hf, convert_neox, DecoderForCausalLM)


@_reads_hf
def gptj_config_from_hf(hf: dict) -> ModelConfig:
    """GPT-J: interleaved rotary on the first `rotary_dim` of each head, attention and MLP in parallel on one
    norm, no attention biases, a biased untied head."""
    H, heads = hf["n_embd"], hf["n_head"]
    R = hf.get("rotary_dim") or H // heads
    return _gpt_config(
        hf, "GPTJForCausalLM", hf.get("activation_function", "gelu_new"), H, heads,
        intermediate_size=hf.get("n_inner") or 4 * H, num_hidden_layers=hf["n_layer"],
        max_position_embeddings=hf.get("n_positions", 2048), rms_norm_eps=hf.get("layer_norm_epsilon", 1e-5),
        tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)), attention_bias=False,
        rotary_dim=R if R < H // heads else None, parallel_residual=True, parallel_shared_norm=True, lm_head_bias=True,
    )  # fmt: skip


def convert_gptj(get: WeightGetter, cfg: ModelConfig, mapping: Mapping, dtype: torch.dtype) -> dict:
    tp = TensorParallelSlicer(cfg, mapping)
    Hn, D = cfg.num_attention_heads, cfg.head_dim
    perm = rotary_permutation(D, cfg.rotary_dim or D, interleaved=True)

    def rotary_rows(w: torch.Tensor) -> torch.Tensor:  # [Hn D, H], each head's rows reordered
        return w.reshape(Hn, D, -1)[:, perm].reshape(Hn * D, -1)

    out: dict[str, torch.Tensor] = {}
    for i in range(cfg.num_hidden_layers):
        hf, en = f"transformer.h.{i}.", f"layers.{i}."
        out[en + "input_layernorm.weight"], out[en + "input_layernorm.bias"] = (
            get(hf + "ln_1.weight"),
            get(hf + "ln_1.bias"),
        )
        q, k = (rotary_rows(get(f"{hf}attn.{n}_proj.weight")) for n in "qk")
        out[en + "attention.qkv.weight"] = torch.cat(
            [tp.rows(q), tp.kv_rows(k), tp.kv_rows(get(hf + "attn.v_proj.weight"))]
        )
        out[en + "attention.dense.weight"] = tp.cols(get(hf + "attn.out_proj.weight"))
        out[en + "mlp.fc.weight"], out[en + "mlp.fc.bias"] = (
            tp.rows(get(hf + "mlp.fc_in.weight")),
            tp.rows(get(hf + "mlp.fc_in.bias")),
        )
        out[en + "mlp.proj.weight"], out[en + "mlp.proj.bias"] = (
            tp.cols(get(hf + "mlp.fc_out.weight")),
            get(hf + "mlp.fc_out.bias"),
        )
    out["lm_head.bias"] = tp.rows(get("lm_head.bias"))
    return _finish(out, get, cfg, tp, dtype, "transformer.ln_f", "transformer.wte.weight")


GPTJ = ModelFamily(("GPTJForCausalLM",), gptj_config_from_hf, convert_gptj, DecoderForCausalLM)


@_reads_hf
def falcon_config_from_hf(hf: dict) -> ModelConfig:
    """Falcon: rotary, no biases, GeLU MLP, a tied head; the 7B layout (multi-query, attention and MLP in
    parallel on one norm), the 40B / 180B one (`new_decoder_architecture`: grouped K/V heads, one norm each
    for attention and MLP), and the sequential one (`parallel_attn` false). ALiBi and biases are refused."""
    H, heads = hf["hidden_size"], hf["num_attention_heads"]
    if hf.get("alibi"):
        raise ValueError("FalconForCausalLM: alibi is not supported")
    if hf.get("bias"):
        raise ValueError("FalconForCausalLM: bias is not supported")
    new = bool(hf.get("new_decoder_architecture", False))
    kv = (hf.get("num_kv_heads") or heads) if new or not hf.get("multi_query", True) else 1
    parallel = new or bool(hf.get("parallel_attn", True))
    norms = hf.get("num_ln_in_parallel_attn") or (2 if new else 1)
    rope = hf.get("rope_parameters") or {}
    if rope.get("rope_type", "default") != "default" or hf.get("rope_scaling"):
        raise ValueError("FalconForCausalLM: rope scaling is not supported")
    theta = float(hf.get("rope_theta", rope.get("rope_theta", 10000.0)))
    return _gpt_config(
        hf, "FalconForCausalLM", hf.get("activation", "gelu"), H, heads, num_key_value_heads=kv,
        intermediate_size=hf.get("ffn_hidden_size") or 4 * H, num_hidden_layers=hf["num_hidden_layers"],
        max_position_embeddings=hf.get("max_position_embeddings", 2048),
        rms_norm_eps=hf.get("layer_norm_epsilon", 1e-5), rope_theta=theta,
        tie_word_embeddings=bool(hf.get("tie_word_embeddings", True)), attention_bias=False, mlp_bias=False,
        parallel_residual=parallel, parallel_shared_norm=parallel and norms == 1,
    )  # fmt: skip


def convert_falcon(get: WeightGetter, cfg: ModelConfig, mapping: Mapping, dtype: torch.dtype) -> dict:
    tp = TensorParallelSlicer(cfg, mapping)
    kv, D = cfg.num_key_value_heads, cfg.head_dim
    per = cfg.num_attention_heads // kv  # query heads per K/V head
    out: dict[str, torch.Tensor] = {}
    for i in range(cfg.num_hidden_layers):
        hf, en = f"transformer.h.{i}.", f"layers.{i}."
        if cfg.parallel_residual and not cfg.parallel_shared_norm:
            norms = (("ln_attn", "input_layernorm"), ("ln_mlp", "post_layernorm"))
        elif cfg.parallel_residual:
            norms = (("input_layernorm", "input_layernorm"),)
        else:
            norms = (("input_layernorm", "input_layernorm"), ("post_attention_layernorm", "post_layernorm"))
        for src, dst in norms:
            out[f"{en}{dst}.weight"], out[f"{en}{dst}.bias"] = get(f"{hf}{src}.weight"), get(f"{hf}{src}.bias")
        # query_key_value rows: per K/V group, its `per` query heads, then its k, then its v (D rows each)
        t = get(hf + "self_attention.query_key_value.weight").reshape(kv, per + 2, D, -1)
        q, k, v = (x.reshape(-1, t.shape[-1]) for x in (t[:, :per], t[:, per], t[:, per + 1]))
        out[en + "attention.qkv.weight"] = torch.cat([tp.rows(q), tp.kv_rows(k), tp.kv_rows(v)])
        out[en + "attention.dense.weight"] = tp.cols(get(hf + "self_attention.dense.weight"))
        out[en + "mlp.fc.weight"] = tp.rows(get(hf + "mlp.dense_h_to_4h.weight"))
        out[en + "mlp.proj.weight"] = tp.cols(get(hf + "mlp.dense_4h_to_h.weight"))
    return _finish(out, get, cfg, tp, dtype, "transformer.ln_f", "transformer.word_embeddings.weight")


FALCON = ModelFamily(("FalconForCausalLM",), falcon_config_from_hf, convert_falcon, DecoderForCausalLM)
