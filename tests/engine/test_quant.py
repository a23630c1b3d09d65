"""Quantized engines end to end on CPU (the dequantizing references): trtllm-build's quantization flags,
what the engine stores, its logits against the float engine's and Hugging Face's, GPTQ and AWQ
checkpoints read without re-quantizing, and what the builder says about bad combinations."""

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from tensorrt_llm.commands import build
from tensorrt_llm.runtime import Engine, build_step_input
from tests.helpers import build_engine, make_tiny_llama

PROMPTS = [[1, 17, 42, 9, 100, 7, 3, 55, 201, 13, 60, 61], [1, 250, 4, 4, 80, 33]]
# hidden 128 so that int4 groups of 32 fit. Relative logit error allowed per mode: loose, because random
# weights amplify quantization error (benchmarks/quant_accuracy.py measures it on a trained model); the
# exact checks are the kernels' against their references and `test_weight_only_engine_is_its_dequantized_float`.
TOL = {"W8A16": 0.05, "W4A16": 0.5, "FP8": 0.25, "FP8_PER_CHANNEL_PER_TOKEN": 0.25}
TOL |= {"W8A8_SQ_PER_CHANNEL_PER_TOKEN_PLUGIN": 0.1, "W8A8_SQ_PER_TENSOR_PLUGIN": 0.25}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("quant") / "hf"
    make_tiny_llama(d, hidden_size=128, intermediate_size=256, num_key_value_heads=2)
    return d


def _logits(engine_dir) -> torch.Tensor:
    engine = Engine.from_dir(engine_dir, device="cpu")
    kv = engine.make_kv_cache(16)
    out = []
    for prompt in PROMPTS:
        kv.data.zero_()
        blocks = list(range(-(-len(prompt) // 8)))
        out.append(engine.forward(build_step_input([prompt], [0], [blocks], 8, all_logits=True), kv))
    return torch.cat(out)  # [sum of prompt lengths, vocab]


@pytest.fixture(scope="module")
def float_logits(model_dir):
    return _logits(build_engine(model_dir, model_dir.parent / "float"))


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize(
    "flags, algo",
    [
        (["--use_weight_only"], "W8A16"),  # int8 is the seed flags' default precision
        (["--use_weight_only", "--weight_only_precision", "int4", "--group_size", "32"], "W4A16"),
        (["--enable_fp8"], "FP8"),
        (["--quant_algo", "FP8_PER_CHANNEL_PER_TOKEN"], "FP8_PER_CHANNEL_PER_TOKEN"),
        (["--use_smooth_quant", "--per_token", "--per_channel"], "W8A8_SQ_PER_CHANNEL_PER_TOKEN_PLUGIN"),
        (["--use_smooth_quant"], "W8A8_SQ_PER_TENSOR_PLUGIN"),
    ],
)
def test_quantized_engine_close_to_float(model_dir, float_logits, tmp_path, flags, algo):
    out = tmp_path / "engine"
    args = ["--model_dir", str(model_dir), "--output_dir", str(out), "--dtype", "float32", "--tokens_per_block", "8"]
    assert build.main(args + ["--max_input_len", "128", "--max_seq_len", "256", *flags]) == 0
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["format_version"] == 2 and cfg["quantization"]["quant_algo"] == algo
    w = load_file(out / "rank0.safetensors")
    qkv = w["layers.0.attention.qkv.weight"]
    expect = {"W4A16": torch.uint8}.get(algo, torch.float8_e4m3fn if algo.startswith("FP8") else torch.int8)
    assert qkv.dtype == expect and w["lm_head.weight"].dtype == torch.float32  # lm_head stays float
    if algo == "W4A16":
        assert qkv.shape == (256, 64) and w["layers.0.attention.qkv.weight_scale"].shape == (4, 256)
    if algo in ("FP8", "W8A8_SQ_PER_TENSOR_PLUGIN"):
        assert float(w["layers.0.mlp.down.input_scale"]) > 0  # calibrated on the default text
    if algo.startswith("W8A8_SQ"):
        assert w["layers.1.attention.dense.smoother"].shape == (128,)
    err = _rel(_logits(out), float_logits)
    assert 0 < err < TOL[algo], f"{algo}: relative logit error {err:.4f}"


@pytest.mark.parametrize("algo", ["W8A16", "W4A16"])
def test_weight_only_engine_is_its_dequantized_float(model_dir, tmp_path, algo):
    """A weight-only engine computes exactly what a float engine of its dequantized weights computes."""
    from tensorrt_llm import kernels

    q = build_engine(model_dir, tmp_path / "q", quant_algo=algo, group_size=32)
    f = build_engine(model_dir, tmp_path / "f")
    wq, wf = load_file(q / "rank0.safetensors"), load_file(f / "rank0.safetensors")
    for name in [n[: -len(".weight_scale")] for n in wq if n.endswith(".weight_scale")]:
        w, s = wq[f"{name}.weight"], wq[f"{name}.weight_scale"]
        deq = kernels.dequantize_int8_per_channel(w, s) if algo == "W8A16" else kernels.dequantize_int4_groupwise(w, s)
        assert _rel(deq, wf[f"{name}.weight"]) < (0.01 if algo == "W8A16" else 0.1)  # a close quantization
        wf[f"{name}.weight"] = deq
    save_file(wf, f / "rank0.safetensors")
    torch.testing.assert_close(_logits(q), _logits(f), rtol=1e-4, atol=1e-4)


def test_int8_kv_cache_built_calibrated_on_given_text(model_dir, float_logits, tmp_path):
    text = tmp_path / "calib.txt"
    text.write_text("The quick brown fox jumps over the lazy dog.\nMachine learning is a field of study.\n")
    out = build_engine(model_dir, tmp_path / "engine", kv_cache_quant_algo="INT8", calib_dataset=text, calib_size=2)
    w = load_file(out / "rank0.safetensors")
    scales = torch.stack([w[f"layers.{i}.attention.kv_cache_scale"] for i in range(2)])  # [layers, (k, v)]
    assert scales.shape == (2, 2) and (scales > 0).all()
    engine = Engine.from_dir(out, device="cpu")
    assert engine.make_kv_cache(4).data.dtype == torch.int8
    assert _rel(_logits(out), float_logits) < 0.05


def test_bad_quantization_flags_say_what(model_dir, tmp_path, capsys):
    base = ["--model_dir", str(model_dir), "--output_dir", str(tmp_path / "e")]
    assert build.main(base + ["--use_weight_only", "--quant_algo", "FP8"]) == 2
    assert "--use_weight_only asks for W8A16, but the other flags ask for FP8" in capsys.readouterr().err
    assert build.main(base + ["--use_smooth_quant", "--per_token", "--enable_fp8"]) == 2
    assert "--use_smooth_quant asks for W8A8_SQ_PER_TENSOR_PER_TOKEN_PLUGIN, but the other flags ask for FP8" in (
        capsys.readouterr().err
    )
    # hidden 128 is not a multiple of int4 groups of 256
    assert build.main(base + ["--quant_algo", "W4A16", "--group_size", "256"]) == 2
    assert "not a multiple of group_size 256" in capsys.readouterr().err
    assert not (tmp_path / "e" / "config.json").exists()


def test_engine_refuses_weights_of_another_kind(model_dir, tmp_path):
    out = build_engine(model_dir, tmp_path / "engine", quant_algo="W8A16")
    path = out / "rank0.safetensors"
    w = load_file(path)
    w["layers.1.mlp.down.weight"] = w["layers.1.mlp.down.weight"].float()  # a float weight where int8 belongs
    save_file(w, path)
    with pytest.raises(ValueError, match=r"wrong dtype \['layers.1.mlp.down.weight \(torch.float32, expected"):
        Engine.from_dir(out, device="cpu")


# -- GPTQ and AWQ checkpoints -------------------------------------------------------------------------
# Packed here the way AutoGPTQ and AutoAWQ write them (independently of the engine's unpacking).


def _quantize_groups(w: torch.Tensor, g: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """w [N, K] → q [K, N] ints 0..15, scales [K/g, N], zeros [K/g, N] ints (asymmetric min/max)."""
    wt = w.t().reshape(-1, g, w.shape[0])  # [K/g, g, N]
    lo, hi = wt.amin(1), wt.amax(1)
    scale = ((hi - lo) / 15).clamp(min=1e-5).half().float()
    zero = (-lo / scale).round().clamp(0, 15)
    q = (wt / scale[:, None] + zero[:, None]).round().clamp(0, 15).reshape(-1, w.shape[0])
    return q.long(), scale, zero.long()


def _pack_rows(q: torch.Tensor) -> torch.Tensor:  # [R, C] → [R/8, C]: nibble j of row i is row 8 i + j
    out = torch.zeros(q.shape[0] // 8, q.shape[1], dtype=torch.int64)
    for j in range(8):
        out |= q[j::8] << (4 * j)
    return out.to(torch.int32)  # wraps into int32 as the checkpoints store it


def _pack_cols(q: torch.Tensor, order=range(8)) -> torch.Tensor:  # [R, C] → [R, C/8]
    out = torch.zeros(q.shape[0], q.shape[1] // 8, dtype=torch.int64)
    for i, j in enumerate(order):
        out |= q[:, j::8] << (4 * i)
    return out.to(torch.int32)


def _prequantized_checkpoint(src, dst, method: str, g: int = 32):
    """A GPTQ or AWQ copy of the checkpoint in `src`; returns the dequantized weights (the oracle's)."""
    import shutil

    shutil.copytree(src, dst)
    weights = load_file(dst / "model.safetensors")
    deq = {}
    for name in [n for n in weights if n.endswith("_proj.weight")]:
        prefix = name[: -len("weight")]
        w = weights.pop(name).float()
        q, scale, zero = _quantize_groups(w, g)
        deq[name] = ((q - zero.repeat_interleave(g, 0)) * scale.repeat_interleave(g, 0)).t()
        if method == "gptq":  # zeros stored minus one (AutoGPTQ's format), g_idx trivial
            weights[prefix + "qweight"] = _pack_rows(q)
            weights[prefix + "qzeros"] = _pack_cols(zero - 1)
            weights[prefix + "g_idx"] = torch.arange(w.shape[1], dtype=torch.int32) // g
        else:
            weights[prefix + "qweight"] = _pack_cols(q, (0, 2, 4, 6, 1, 3, 5, 7))
            weights[prefix + "qzeros"] = _pack_cols(zero, (0, 2, 4, 6, 1, 3, 5, 7))
        weights[prefix + "scales"] = scale.half()
    save_file({k: v.contiguous() for k, v in weights.items()}, dst / "model.safetensors")
    cfg = json.loads((dst / "config.json").read_text())
    qc = {"quant_method": method, "bits": 4, "group_size": g}
    qc |= {"desc_act": False, "sym": False} if method == "gptq" else {"zero_point": True, "version": "gemm"}
    (dst / "config.json").write_text(json.dumps(cfg | {"quantization_config": qc}))
    return deq


@pytest.mark.parametrize("method", ["gptq", "awq"])
def test_gptq_awq_checkpoint_matches_hf_on_its_dequantized_weights(model_dir, tmp_path, method):
    from transformers import LlamaForCausalLM

    ckpt = tmp_path / method
    deq = _prequantized_checkpoint(model_dir, ckpt, method)
    out = build_engine(ckpt, tmp_path / "engine")
    cfg = json.loads((out / "config.json").read_text())["quantization"]
    assert cfg["quant_algo"] == f"W4A16_{method.upper()}" and cfg["group_size"] == 32
    hf = LlamaForCausalLM.from_pretrained(model_dir, torch_dtype=torch.float32).eval()
    hf.load_state_dict(deq, strict=False)
    with torch.no_grad():
        ref = torch.cat([hf(torch.tensor([p])).logits[0] for p in PROMPTS])
    assert _rel(_logits(out), ref) < 2e-3


def test_act_order_gptq_is_refused(model_dir, tmp_path, capsys):
    ckpt = tmp_path / "gptq"
    _prequantized_checkpoint(model_dir, ckpt, "gptq")
    w = load_file(ckpt / "model.safetensors")
    name = "model.layers.0.self_attn.q_proj.g_idx"
    w[name] = w[name][torch.randperm(w[name].numel(), generator=torch.Generator().manual_seed(0))].contiguous()
    save_file(w, ckpt / "model.safetensors")
    assert build.main(["--model_dir", str(ckpt), "--output_dir", str(tmp_path / "e")]) == 2
    assert "act-order GPTQ, desc_act=true, is not supported" in capsys.readouterr().err


# -- FP8 checkpoints (compressed-tensors, as llm-compressor writes them for vLLM) ------------------------


def _fp8_checkpoint(src, dst, per_channel: bool):
    """A compressed-tensors FP8 copy of the checkpoint in `src`; returns its dequantized weights."""
    import shutil

    shutil.copytree(src, dst)
    weights = load_file(dst / "model.safetensors")
    deq = {}
    for i, name in enumerate(n for n in list(weights) if n.endswith("_proj.weight")):
        prefix = name[: -len("weight")]
        w = weights.pop(name).float()
        amax = w.abs().amax(dim=1, keepdim=True) if per_channel else w.abs().amax().reshape(1)
        scale = amax / 448.0
        q = (w / scale.reshape(-1, 1) if per_channel else w / scale).to(torch.float8_e4m3fn)
        weights[name], weights[prefix + "weight_scale"] = q, scale.float()
        if not per_channel:  # static activation scales, one per layer (made to differ between q, k and v)
            weights[prefix + "input_scale"] = torch.tensor([0.1 + 0.01 * (i % 5)])
        deq[name] = q.float() * scale.reshape(-1, 1)
    save_file({k: v.contiguous() for k, v in weights.items()}, dst / "model.safetensors")
    cfg = json.loads((dst / "config.json").read_text())
    acts = {"type": "float", "num_bits": 8, "strategy": "token" if per_channel else "tensor", "dynamic": per_channel}
    group = {"targets": ["Linear"], "input_activations": acts}
    group["weights"] = {"type": "float", "num_bits": 8, "strategy": "channel" if per_channel else "tensor"}
    qc = {"quant_method": "compressed-tensors", "config_groups": {"group_0": group}, "ignore": ["lm_head"]}
    (dst / "config.json").write_text(json.dumps(cfg | {"quantization_config": qc}))
    return deq


@pytest.mark.parametrize("per_channel", [False, True])
def test_fp8_checkpoint_loads_its_own_values(model_dir, tmp_path, per_channel):
    ckpt = tmp_path / "fp8"
    deq = _fp8_checkpoint(model_dir, ckpt, per_channel)
    src = load_file(ckpt / "model.safetensors")
    out = build_engine(ckpt, tmp_path / "engine")
    algo = json.loads((out / "config.json").read_text())["quantization"]["quant_algo"]
    assert algo == ("FP8_PER_CHANNEL_PER_TOKEN" if per_channel else "FP8")
    w = load_file(out / "rank0.safetensors")
    hf = "model.layers.1.mlp."
    down = w["layers.1.mlp.down.weight"]
    # an unfused layer keeps the checkpoint's e4m3 values and scale exactly
    assert torch.equal(down.view(torch.uint8), src[hf + "down_proj.weight"].view(torch.uint8))
    torch.testing.assert_close(
        w["layers.1.mlp.down.weight_scale"],
        src[hf + "down_proj.weight_scale"].reshape(-1)
        if per_channel
        else src[hf + "down_proj.weight_scale"].reshape(()),
    )
    if not per_channel:  # fused q/k/v: one input scale, the largest of the three
        att = "model.layers.0.self_attn."
        parts = [float(src[att + p + "_proj.input_scale"]) for p in "qkv"]
        assert float(w["layers.0.attention.qkv.input_scale"]) == pytest.approx(max(parts))
    # against a float engine of the checkpoint's dequantized weights: only activation quantization differs
    ref_dir = tmp_path / "deq"
    import shutil

    shutil.copytree(model_dir, ref_dir)
    save_file(load_file(ref_dir / "model.safetensors") | deq, ref_dir / "model.safetensors")
    err = _rel(_logits(out), _logits(build_engine(ref_dir, tmp_path / "deq_engine")))
    assert err < 0.15, err  # activation quantization alone (random weights amplify it: ~0.09 measured)


def test_unsupported_checkpoint_schemes_are_refused(model_dir, tmp_path, capsys):
    ckpt = tmp_path / "fp8"
    _fp8_checkpoint(model_dir, ckpt, per_channel=False)
    cfg = json.loads((ckpt / "config.json").read_text())
    cfg["quantization_config"]["config_groups"]["group_0"]["weights"]["strategy"] = "block"
    (ckpt / "config.json").write_text(json.dumps(cfg))
    assert build.main(["--model_dir", str(ckpt), "--output_dir", str(tmp_path / "e")]) == 2
    assert "compressed-tensors scheme ('float', 8, 'block'" in capsys.readouterr().err


@pytest.fixture(scope="module")
def mixtral_dir(tmp_path_factory):
    from tests.helpers import make_tiny_model

    d = tmp_path_factory.mktemp("moe") / "hf"
    make_tiny_model(
        d, "MixtralForCausalLM", hidden_size=128, intermediate_size=128, num_key_value_heads=2, num_local_experts=4,
        num_experts_per_tok=2,
    )  # fmt: skip
    return d


def test_int8_experts_are_their_dequantized_float(mixtral_dir, tmp_path):
    """A mixture-of-experts layer's experts take the mode too (the router stays float): the int8 engine
    computes what a float engine of its dequantized weights, experts included, computes."""
    from tensorrt_llm import kernels

    q = build_engine(mixtral_dir, tmp_path / "q", quant_algo="W8A16")
    f = build_engine(mixtral_dir, tmp_path / "f")
    wq, wf = load_file(q / "rank0.safetensors"), load_file(f / "rank0.safetensors")
    assert wq["layers.0.mlp.gate_up"].dtype == torch.int8 and wq["layers.0.mlp.gate_up_scale"].shape == (4, 256)
    assert wq["layers.0.mlp.router.weight"].dtype == torch.float32
    for name in [n[: -len("_scale")] for n in wq if n.endswith("_scale")]:
        w, s = wq[name], wq[name + "_scale"]
        deq = (
            torch.stack([kernels.dequantize_int8_per_channel(w[e], s[e]) for e in range(4)])
            if w.dim() == 3
            else (kernels.dequantize_int8_per_channel(w, s))
        )
        wf[name] = deq
    save_file(wf, f / "rank0.safetensors")
    torch.testing.assert_close(_logits(q), _logits(f), rtol=1e-4, atol=1e-4)


def test_fp8_experts_stay_close(mixtral_dir, tmp_path):
    """FP8 experts (a scale each; their inputs quantized per token) keep the logits near the float engine's."""
    q = build_engine(mixtral_dir, tmp_path / "q", quant_algo="FP8")
    w = load_file(q / "rank0.safetensors")
    assert w["layers.1.mlp.down"].dtype == torch.float8_e4m3fn and w["layers.1.mlp.down_scale"].shape == (4,)
    err = _rel(_logits(q), _logits(build_engine(mixtral_dir, tmp_path / "f")))
    assert 0 < err < 0.25, err


@pytest.mark.parametrize("algo", ["W8A16", "W4A16", "FP8"])
def test_quantized_experts_take_the_routed_path_unchanged(mixtral_dir, tmp_path, monkeypatch, algo):
    """Prefill-sized steps run each quantized expert on its own tokens: the logits of the dense path."""
    from tensorrt_llm.layers.moe import MoeMLP

    q = build_engine(mixtral_dir, tmp_path / "q", quant_algo=algo)
    dense = _logits(q)
    monkeypatch.setattr(MoeMLP, "ROUTED_MIN_TOKENS", 2)
    torch.testing.assert_close(_logits(q), dense, rtol=1e-4, atol=1e-4)
