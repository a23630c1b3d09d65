"""The Triton GEMV (batch-1 decode linear layers) against F.linear; its per-shape choice in
`functional.linear`; tuning that choice at build time and applying it at load."""

import dataclasses

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("triton")

from tensorrt_llm import functional as tf  # noqa: E402
from tensorrt_llm import kernels as K  # noqa: E402
from tensorrt_llm.kernels import tuning  # noqa: E402
from tensorrt_llm.kernels.gemv import GEMV_SHAPES  # noqa: E402

# the interpreter warns on tensor loop bounds; harmless
pytestmark = pytest.mark.filterwarnings("ignore:Conversion of an array:DeprecationWarning")

TOL = {torch.float32: 1e-4, torch.float16: 2e-3, torch.bfloat16: 2e-2}


@pytest.fixture(autouse=True)
def _restore_gemv_shapes():
    saved = dict(GEMV_SHAPES)
    yield
    GEMV_SHAPES.clear()
    GEMV_SHAPES.update(saved)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("M", [1, 2, 3, 4])
@pytest.mark.parametrize("n, k", [(24, 512), (40, 300)])  # K a multiple of the tile, and not
@pytest.mark.parametrize("bias", [False, True])
def test_gemv_matches_linear(device, dtype, M, n, k, bias):
    torch.manual_seed(M * 1000 + n + k)
    x = torch.randn(M, k, dtype=dtype, device=device)
    w = torch.randn(n, k, dtype=dtype, device=device) / k**0.5
    b = torch.randn(n, dtype=dtype, device=device) if bias else None
    ref = K.gemv_ref(x.float(), w.float(), None if b is None else b.float())
    torch.testing.assert_close(K.gemv(x, w, b).float(), ref, rtol=TOL[dtype], atol=TOL[dtype])
    for cfg in tuning.GEMV_CANDIDATES:  # every launch config tuning may pick
        torch.testing.assert_close(K.gemv(x, w, b, cfg).float(), ref, rtol=TOL[dtype], atol=TOL[dtype])


def test_gemv_rejects_bad_shapes(device):
    x = torch.randn(5, 8, device=device)
    with pytest.raises(ValueError, match="M=5 outside 1..4"):
        K.gemv(x, torch.randn(4, 8, device=device))
    with pytest.raises(ValueError, match="K mismatch"):
        K.gemv(x[:1], torch.randn(4, 9, device=device))


def _spy_gemv(monkeypatch) -> list:
    calls = []
    real = K.gemv

    def spy(x, w, bias=None, config=None):
        calls.append((tuple(x.shape), tuple(w.shape), config))
        return real(x, w, bias, config)

    monkeypatch.setattr(K, "gemv", spy)
    # the kernels on CPU tensors through the interpreter, as on CUDA
    monkeypatch.setattr(tf, "_use_kernels", lambda x: K.available(x))
    return calls


def test_linear_uses_gemv_only_for_one_row_and_tuned_shapes(device, monkeypatch):
    calls = _spy_gemv(monkeypatch)
    torch.manual_seed(0)
    w, w_other = torch.randn(24, 64, device=device), torch.randn(16, 64, device=device)
    b = torch.randn(24, device=device)
    x1, x3 = torch.randn(1, 64, device=device), torch.randn(3, 64, device=device)
    torch.testing.assert_close(tf.linear(x1, w, b), F.linear(x1, w, b))  # nothing tuned: cuBLAS
    assert calls == []
    GEMV_SHAPES[24, 64] = (8, 32, 4, 3)
    torch.testing.assert_close(tf.linear(x1, w, b), F.linear(x1, w, b), rtol=1e-4, atol=1e-4)
    assert calls == [((1, 64), (24, 64), (8, 32, 4, 3))]
    tf.linear(x3, w, b)  # more than one row
    tf.linear(x1, w_other)  # a shape not chosen
    tf.linear(torch.randn(1, 128, device=device)[:, ::2], w)  # x not contiguous along K
    assert len(calls) == 1


def test_tune_gemv_keeps_shapes_faster_by_the_margin(device):
    # fake timings per shape: cuBLAS, then each candidate (in order); shapes are timed sorted by (N, K)
    cands = [(4, 32, 1, 1), (8, 64, 1, 1)]
    times = {
        (16, 64): [1.0, 0.99, 0.98],  # best 2% faster: not enough, stays on cuBLAS
        (24, 64): [1.0, 0.90, 0.95],  # first candidate 10% faster: chosen
        (40, 96): [1.0, 1.20, 0.80],  # second candidate 20% faster: chosen with its config
    }
    calls = iter([t for shape in sorted(times) for t in times[shape]])

    def timer(fn):
        fn()  # every timed call must run
        return next(calls)

    chosen = tuning.tune_gemv([(24, 64), (40, 96), (16, 64), (24, 64)], torch.float16, device, cands, timer)
    assert chosen == {
        "linear_gemv": {
            "shapes": [
                {"N": 24, "K": 64, "BLOCK_N": 4, "BLOCK_K": 32, "num_warps": 1, "num_stages": 1},
                {"N": 40, "K": 96, "BLOCK_N": 8, "BLOCK_K": 64, "num_warps": 1, "num_stages": 1},
            ]
        }
    }
    assert next(calls, None) is None  # the duplicate shape was timed once
    # loading the engine installs it; current_configs reports it for the engine's config.json
    tuning.apply_configs({**tuning.current_configs(), **chosen})
    assert GEMV_SHAPES == {(24, 64): (4, 32, 1, 1), (40, 96): (8, 64, 1, 1)}
    assert tuning.current_configs()["linear_gemv"] == chosen["linear_gemv"]
    # an engine without the entry (built on CPU, or before this existed) runs cuBLAS everywhere
    tuning.apply_configs({"attention_decode": tuning.current_configs()["attention_decode"]})
    assert GEMV_SHAPES == {} and "linear_gemv" not in tuning.current_configs()
    with pytest.raises(ValueError, match="lacks"):
        tuning.apply_configs({"linear_gemv": {"shapes": [{"N": 24, "K": 64}]}})


def test_tune_gemv_nothing_for_float32_or_when_cublas_wins(device):
    assert tuning.tune_gemv([(24, 64)], torch.float32, device, timer=lambda fn: 1.0) == {}
    times = iter([1.0, 2.0, 2.0, 2.0])
    assert tuning.tune_gemv([(24, 64)], torch.float16, device, timer=lambda fn: next(times)) == {}


def test_engine_applies_the_gemv_choice_at_load(device, monkeypatch):
    transformers = pytest.importorskip("transformers")  # noqa: F841 (tiny_llama_config needs it)
    from tensorrt_llm.builder import BuildConfig, convert_in_memory, linear_weight_shapes, tune_kernels
    from tensorrt_llm.runtime import Engine, build_step_input
    from tensorrt_llm.tools.tiny_model import tiny_llama_config

    hf = tiny_llama_config(num_key_value_heads=2).to_dict()
    hf["architectures"] = ["LlamaForCausalLM"]
    build = BuildConfig(max_batch_size=2, max_input_len=32, max_seq_len=64, tokens_per_block=8)
    cfg, weights = convert_in_memory(hf, "float32", build, "cpu")
    # qkv (4 + 2 * 2) heads x 16, o_proj, gate_up, down, lm_head
    shapes = linear_weight_shapes(cfg.model, cfg.mapping, torch.float32)
    assert shapes == [(64, 64), (64, 128), (128, 64), (256, 64), (384, 64)]
    assert "linear_gemv" not in tune_kernels(cfg.model, cfg.mapping, build, torch.float32, "cpu")

    def run(kernels_cfg: dict) -> torch.Tensor:
        engine = Engine.from_weights(dataclasses.replace(cfg, kernels=kernels_cfg), weights, torch.device(device))
        kv = engine.make_kv_cache(8)
        engine.forward(build_step_input([[5, 6, 7, 8, 9]], [0], [[0]], 8, device), kv)
        return engine.forward(build_step_input([[10]], [5], [[0]], 8, device), kv)  # batch-1 decode step

    plain = run(tuning.current_configs())
    assert GEMV_SHAPES == {}
    calls = _spy_gemv(monkeypatch)
    fields = ("N", "K", "BLOCK_N", "BLOCK_K", "num_warps", "num_stages")
    every = [dict(zip(fields, (*s, 16, 32, 1, 1), strict=True)) for s in shapes]
    tuned = run({**tuning.current_configs(), "linear_gemv": {"shapes": every}})
    assert GEMV_SHAPES == {s: (16, 32, 1, 1) for s in shapes}
    # one row: the prompt's head (its last token's logits), then the decode step's 2 layers x 4 and head
    assert len(calls) == 1 + 2 * 4 + 1 and all(c[0][0] == 1 for c in calls)
    torch.testing.assert_close(tuned, plain, rtol=1e-4, atol=1e-4)
