"""Kernel launch choices tuned once per GPU at build time and kept in the engine (a "timing cache").

    choices = tune_attention(num_heads=32, num_kv_heads=8, head_dim=128, tokens_per_block=64,
                             dtype=torch.float16)          # at build time, on the target GPU
    config["kernels"] = choices                              # stored in the engine's config.json
    apply_configs(config["kernels"])                         # at load time: nothing is tuned on requests

Only the attention kernels have choices today; the element-wise kernels have one obvious launch shape.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import torch

from . import attention
from ._common import available

DECODE_CANDIDATES = [
    {"BLOCK_N": 64, "num_warps": 4, "num_stages": 2},
    {"BLOCK_N": 64, "num_warps": 4, "num_stages": 4},
    {"BLOCK_N": 32, "num_warps": 4, "num_stages": 3},
    {"BLOCK_N": 128, "num_warps": 8, "num_stages": 3},
]
CONTEXT_CANDIDATES = [  # the best few of the H100 sweep
    {"BLOCK_M": 64, "BLOCK_N": 64, "num_warps": 4, "num_stages": 3},
    {"BLOCK_M": 64, "BLOCK_N": 32, "num_warps": 4, "num_stages": 2},
    {"BLOCK_M": 64, "BLOCK_N": 64, "num_warps": 4, "num_stages": 2, "SPLIT_CAUSAL": False},
    {"BLOCK_M": 128, "BLOCK_N": 128, "num_warps": 8, "num_stages": 3},
]
_KEYS = {"attention_decode": "DECODE_CONFIG", "attention_context": "CONTEXT_CONFIG"}


def current_configs() -> dict[str, dict]:
    """The launch choices in force, as stored in an engine (`config.json["kernels"]`)."""
    return {key: dict(getattr(attention, attr)) for key, attr in _KEYS.items()}


def apply_configs(configs: dict[str, dict]) -> None:
    """Install choices read from an engine; unknown keys are ignored (an older or newer engine)."""
    for key, attr in _KEYS.items():
        if key in configs:
            cfg = dict(configs[key])
            need = {"BLOCK_N", "num_warps", "num_stages"} | ({"BLOCK_M"} if key == "attention_context" else set())
            if not need <= cfg.keys():
                raise ValueError(f"kernel config {key} lacks {sorted(need - cfg.keys())}: {cfg}")
            setattr(attention, attr, cfg)


def _cuda_timer(fn: Callable[[], object]) -> float:
    import triton.testing

    return triton.testing.do_bench(fn, warmup=10, rep=40, return_mode="median")


def _wall_timer(fn: Callable[[], object]) -> float:
    fn()
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def tune_attention(
    num_heads: int,
    num_kv_heads: int,
    head_dim: int,
    tokens_per_block: int,
    dtype: torch.dtype,
    device: torch.device | str = "cuda",
    decode_shape: tuple[int, int] = (8, 2048),
    context_shape: tuple[int, int] = (1, 2048),
    decode_candidates: list[dict] | None = None,
    context_candidates: list[dict] | None = None,
    timer: Callable[[Callable[[], object]], float] | None = None,
) -> dict[str, dict]:
    """Time the candidate launch configs on representative shapes; returns (and installs) the fastest.

    decode_shape = (batch, context length); context_shape = (batch, prompt length). Where the kernels
    cannot run (no CUDA, no interpreter) it returns the current choices untouched.
    """
    device = torch.device(device)
    probe = torch.empty(0, device=device)
    if not available(probe):
        return current_configs()
    timer = timer or (_cuda_timer if device.type == "cuda" else _wall_timer)
    cuda = device.type == "cuda"
    g = torch.Generator(device=device).manual_seed(0)

    def batch(seq: int, ctx: int, b: int) -> tuple:
        blocks = math.ceil(ctx / tokens_per_block)
        kc = torch.randn(b * blocks, tokens_per_block, num_kv_heads, head_dim, device=device, generator=g)
        kc, vc = kc.to(dtype), torch.randn(kc.shape, device=device, generator=g).to(dtype)
        tables = torch.randperm(b * blocks, device=device, generator=g).view(b, blocks).to(torch.int32)
        q = torch.randn(b * seq, num_heads, head_dim, device=device, generator=g).to(dtype)
        lens = torch.full((b,), seq, dtype=torch.int32, device=device)
        ctxs = torch.full((b,), ctx, dtype=torch.int32, device=device)
        return (q, kc, vc, tables, lens, ctxs, head_dim**-0.5, seq, ctx)

    chosen = {}
    plan = [
        ("attention_decode", batch(1, decode_shape[1], decode_shape[0]), decode_candidates or DECODE_CANDIDATES),
        ("attention_context", batch(context_shape[1], context_shape[1], context_shape[0]),
         context_candidates or CONTEXT_CANDIDATES),
    ]  # fmt: skip
    for key, args, candidates in plan:
        attr = _KEYS[key] if cuda else "INTERPRET_" + _KEYS[key]
        before = getattr(attention, attr)
        timings = []
        for cfg in candidates:
            setattr(attention, attr, dict(cfg))
            try:
                timings.append((timer(lambda a=args: attention.paged_attention(*a)), cfg))
            except Exception:  # a config the GPU cannot run (shared memory): skip it
                continue
        setattr(attention, attr, before)
        chosen[key] = dict(min(timings, key=lambda t: t[0])[1]) if timings else dict(before)
    if cuda:
        apply_configs(chosen)
    return chosen
