"""A quantized paged KV cache (kv_cache_quant_algo INT8 / FP8) in a whole engine on CPU (the references):
logits next to the float engine's, through `Attention.set_kv_quant` and through the engine config, and the
pool's size."""

import dataclasses

import pytest
import torch

from tensorrt_llm.builder import BuildConfig, EngineConfig, convert_in_memory
from tensorrt_llm.layers import Attention
from tensorrt_llm.quantization import QuantConfig
from tensorrt_llm.runtime import Engine, build_step_input
from tensorrt_llm.runtime.kv_cache import KVCachePool
from tests.helpers import tiny_llama_config

TPB = 8
PROMPT = [1, 17, 42, 9, 100, 7, 3, 55, 201, 13, 60, 61, 250, 4, 80, 33, 90, 91, 5]
OTHER = [1, 250, 4, 4, 80, 33]
QMAX = {"INT8": 127.0, "FP8": 448.0}
CACHE = {"INT8": torch.int8, "FP8": torch.float8_e4m3fn}
# relative logit error allowed (random weights, amax scales)
TOL = {"INT8": 0.015, "FP8": 0.05}


@pytest.fixture(scope="module")
def converted():
    hf = tiny_llama_config(num_key_value_heads=2).to_dict()
    build = BuildConfig(max_batch_size=4, max_input_len=64, max_seq_len=128, max_num_tokens=256, tokens_per_block=TPB)
    return convert_in_memory(hf, "float32", build, device="cpu")


def _run(engine: Engine, kv: KVCachePool) -> list[torch.Tensor]:
    """Logits of: the prompt (every token), 6 generation steps fed the same tokens, and a mixed step
    (a new prompt next to a generation row)."""
    kv.data.zero_()
    out = [engine.forward(build_step_input([PROMPT], [0], [[0, 1, 2, 3]], TPB, all_logits=True), kv)]
    n = len(PROMPT)
    for t in (7, 300, 12, 99, 5, 41):
        out.append(engine.forward(build_step_input([[t]], [n], [[0, 1, 2, 3]], TPB), kv))
        n += 1
    out.append(engine.forward(build_step_input([OTHER, [8]], [0, n], [[5], [0, 1, 2, 3]], TPB), kv))
    return out


@pytest.fixture(scope="module")
def float_run(converted):
    """The float engine's logits and the (k, v) scales of each layer from its cache's amax."""
    cfg, weights = converted
    engine = Engine.from_weights(cfg, weights, torch.device("cpu"))
    kv = engine.make_kv_cache(8)
    logits = _run(engine, kv)
    amax = kv.data.abs().amax(dim=(2, 3, 4, 5))  # [L, 2]: the cache held this run only
    return logits, amax


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def _check_close(ours: list[torch.Tensor], ref: list[torch.Tensor], algo: str) -> None:
    errs = [_rel(a, b) for a, b in zip(ours, ref, strict=True)]
    assert all(0 < e < TOL[algo] for e in errs), f"{algo}: relative logit errors {errs}"


@pytest.mark.parametrize("algo", ["INT8", "FP8"])
def test_set_kv_quant_logits_close_to_float(converted, float_run, algo):
    cfg, weights = converted
    ref, amax = float_run
    engine = Engine.from_weights(cfg, weights, torch.device("cpu"))
    layers = [m for m in engine.model.modules() if isinstance(m, Attention)]
    assert len(layers) == cfg.model.num_hidden_layers
    for i, attn in enumerate(layers):
        attn.set_kv_quant(CACHE[algo])
        assert attn.kv_cache_scale.dtype == torch.float32 and not attn.kv_cache_scale.requires_grad
        attn.kv_cache_scale.copy_(amax[i] / QMAX[algo])
    m = cfg.model
    kv = KVCachePool(m.num_hidden_layers, 8, TPB, m.num_key_value_heads, m.head_dim, CACHE[algo], "cpu")
    _check_close(_run(engine, kv), ref, algo)
    assert kv.data.dtype == CACHE[algo] and kv.data.float().abs().amax() > QMAX[algo] / 2  # the range is used
    # a float pool for a quantized layer is refused, not misread
    with pytest.raises(ValueError, match="KV cache is"):
        _run(engine, engine.make_kv_cache(8))


@pytest.mark.parametrize("algo", ["INT8", "FP8"])
def test_engine_config_kv_cache_quant(converted, float_run, algo):
    if "quantization" not in {f.name for f in dataclasses.fields(EngineConfig)}:
        pytest.skip("EngineConfig has no quantization field yet")
    cfg, weights = converted
    ref, amax = float_run
    qcfg = dataclasses.replace(cfg, quantization=QuantConfig(kv_cache_quant_algo=algo))
    scales = {f"layers.{i}.attention.kv_cache_scale": amax[i] / QMAX[algo] for i in range(len(amax))}
    engine = Engine.from_weights(qcfg, {**weights, **scales}, torch.device("cpu"))
    float_engine = Engine.from_weights(cfg, weights, torch.device("cpu"))
    assert engine.kv_dtype == CACHE[algo] and float_engine.kv_dtype == torch.float32
    # the pool: one byte an element, a quarter of the float32 engine's
    assert engine.kv_bytes_per_block() * 4 == float_engine.kv_bytes_per_block()
    kv = engine.make_kv_cache(8)
    assert kv.data.dtype == CACHE[algo] and kv.data.element_size() == 1
    _check_close(_run(engine, kv), ref, algo)


def test_pool_bytes_per_block_by_cache_dtype():
    args = (2, 16, 4, 64)  # layers, tokens per block, KV heads, head_dim
    fp16 = KVCachePool.bytes_per_block(*args, torch.float16)
    assert fp16 == 2 * 2 * 16 * 4 * 64 * 2
    assert KVCachePool.bytes_per_block(*args, torch.int8) * 2 == fp16
    assert KVCachePool.bytes_per_block(*args, torch.float8_e4m3fn) * 2 == fp16
    assert KVCachePool.bytes_per_block(*args, torch.float32) == 2 * fp16
    pool = KVCachePool(2, 3, 16, 4, 64, torch.int8, "cpu")
    assert pool.data.dtype == torch.int8 and pool.data.nbytes == (3 + 1) * fp16 // 2  # + the scratch block


def test_set_kv_quant_rejects_a_float_dtype():
    attn = Attention(64, 4, 2, 16)
    with pytest.raises(ValueError, match="int8 or float8_e4m3fn"):
        attn.set_kv_quant(torch.float16)
    assert attn.kv_cache_dtype is None and "kv_cache_scale" not in dict(attn.named_parameters())
