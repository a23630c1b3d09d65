"""Kernel tuning: choices round-trip through an engine config and tuning picks a working candidate."""

import pytest
import torch

pytest.importorskip("triton")

from tensorrt_llm.kernels import attention, tuning  # noqa: E402

# the interpreter warns on tensor loop bounds (`range(0, kv_end, ...)`); harmless
pytestmark = pytest.mark.filterwarnings("ignore:Conversion of an array:DeprecationWarning")


def test_apply_configs_round_trip(monkeypatch):
    monkeypatch.setattr(attention, "DECODE_CONFIG", dict(attention.DECODE_CONFIG))
    monkeypatch.setattr(attention, "CONTEXT_CONFIG", dict(attention.CONTEXT_CONFIG))
    new = {"attention_decode": {"BLOCK_N": 32, "num_warps": 8, "num_stages": 3}, "future_kernel": {}}
    tuning.apply_configs(new)
    assert tuning.current_configs()["attention_decode"] == new["attention_decode"]
    with pytest.raises(ValueError, match="lacks"):
        tuning.apply_configs({"attention_context": {"BLOCK_N": 32}})


def test_tune_attention_picks_the_fastest_candidate(device):
    calls = iter([3.0, 1.0, 2.0, 5.0])  # fake timings: decode's second candidate wins, context's first
    dec, ctx = attention.INTERPRET_DECODE_CONFIG, attention.INTERPRET_CONTEXT_CONFIG
    cands = [dict(dec), {**dec, "TILE_IN_BLOCK": False}]
    ctx_cands = [dict(ctx), {**ctx, "SPLIT_CAUSAL": False}]

    def timer(fn):
        fn()  # the candidate must run
        return next(calls)

    chosen = tuning.tune_attention(
        4, 2, 16, 16, torch.float32, device, decode_shape=(2, 40), context_shape=(1, 20),
        decode_candidates=cands, context_candidates=ctx_cands, timer=timer,
    )  # fmt: skip
    assert chosen["attention_decode"] == cands[1]
    assert chosen["attention_context"] == ctx_cands[0]
