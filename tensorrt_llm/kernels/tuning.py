"""Kernel launch choices tuned once per GPU at build time and kept in the engine (a "timing cache").

    choices = tune_attention(num_heads=32, num_kv_heads=8, head_dim=128, tokens_per_block=64,
                             dtype=torch.float16)          # at build time, on the target GPU
    choices |= tune_gemv([(6144, 4096), (4096, 4096), ...], torch.float16)
    config["kernels"] = choices                              # stored in the engine's config.json
    apply_configs(config["kernels"])                         # at load time: nothing is tuned on requests

The attention kernels have launch configs; linear layers have a per-weight-shape choice between cuBLAS
and the Triton GEMV at one row of x (batch-1 decode), stored as `"linear_gemv": {"shapes": [...]}` only
when some shape goes to Triton. The element-wise kernels have one obvious launch shape.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from . import attention
from ._common import available
from .gemv import GEMV_SHAPES, gemv

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
_KEYS = {
    "attention_decode": "DECODE_CONFIG",
    "attention_decode_quant": "DECODE_QUANT_CONFIG",
    "attention_decode_int8": "DECODE_INT8_CONFIG",
    "attention_context": "CONTEXT_CONFIG",
}
# GEMV launch configs (BLOCK_N, BLOCK_K, num_warps, num_stages) tried per shape at M = 1; the first is the
# best over all Llama-2-7B shapes in the H100 sweep
GEMV_CANDIDATES = [(4, 512, 4, 3), (8, 512, 4, 4), (8, 256, 4, 3)]
GEMV_MIN_GAIN = 0.03  # Triton must beat cuBLAS by more than this: a gain within timing noise is no gain
GEMV_KEY = "linear_gemv"
_GEMV_FIELDS = ("N", "K", "BLOCK_N", "BLOCK_K", "num_warps", "num_stages")


def current_configs() -> dict[str, dict]:
    """The launch choices in force, as stored in an engine (`config.json["kernels"]`)."""
    configs = {key: dict(getattr(attention, attr)) for key, attr in _KEYS.items()}
    if GEMV_SHAPES:
        shapes = [dict(zip(_GEMV_FIELDS, (*nk, *cfg), strict=True)) for nk, cfg in sorted(GEMV_SHAPES.items())]
        configs[GEMV_KEY] = {"shapes": shapes}
    return configs


def apply_configs(configs: dict[str, dict]) -> None:
    """Install choices read from an engine; unknown keys are ignored (an older or newer engine). Without
    a `linear_gemv` entry every linear layer runs on cuBLAS."""
    for key, attr in _KEYS.items():
        if key in configs:
            cfg = dict(configs[key])
            need = {"BLOCK_N", "num_warps", "num_stages"} | ({"BLOCK_M"} if key == "attention_context" else set())
            if not need <= cfg.keys():
                raise ValueError(f"kernel config {key} lacks {sorted(need - cfg.keys())}: {cfg}")
            setattr(attention, attr, cfg)
    _install_gemv(configs.get(GEMV_KEY, {}))


def _install_gemv(entry: dict) -> None:
    shapes = {}
    for shape in entry.get("shapes", []):
        if not set(_GEMV_FIELDS) <= shape.keys():
            raise ValueError(f"kernel config {GEMV_KEY} entry lacks {sorted(set(_GEMV_FIELDS) - shape.keys())}")
        N, K, *cfg = (int(shape[f]) for f in _GEMV_FIELDS)
        shapes[N, K] = tuple(cfg)
    # in place: tensorrt_llm.functional holds this dict
    GEMV_SHAPES.clear()
    GEMV_SHAPES.update(shapes)


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


def tune_gemv(
    shapes: list[tuple[int, int]],
    dtype: torch.dtype,
    device: torch.device | str = "cuda",
    candidates: list[tuple[int, int, int, int]] | None = None,
    timer: Callable[[Callable[[], object]], float] | None = None,
    min_gain: float = GEMV_MIN_GAIN,
) -> dict[str, dict]:
    """Time cuBLAS against the Triton GEMV (each candidate config) on every distinct weight shape (N, K)
    at one row of x; returns `{"linear_gemv": {"shapes": [...]}}` with the shapes where the best Triton
    config is faster by more than `min_gain` (and matches cuBLAS), or `{}` when none is. On CUDA the
    result is also installed. Only float16 / bfloat16 weights are considered (decode engines' dtypes);
    where the kernels cannot run it returns `{}` (cuBLAS everywhere).
    """
    device = torch.device(device)
    if dtype not in (torch.float16, torch.bfloat16) or not available(torch.empty(0, device=device)):
        return {}
    timer = timer or (_cuda_timer if device.type == "cuda" else _wall_timer)
    g = torch.Generator(device=device).manual_seed(0)
    chosen = []
    for N, K in sorted(set(shapes)):
        x = torch.randn(1, K, device=device, dtype=dtype, generator=g)
        w = torch.randn(N, K, device=device, dtype=dtype, generator=g) / K**0.5  # made in dtype: lm_head is big
        ref = F.linear(x, w).float()
        t_cublas = timer(lambda x=x, w=w: F.linear(x, w))
        best = None
        for cfg in candidates or GEMV_CANDIDATES:
            try:
                if not torch.allclose(gemv(x, w, None, cfg).float(), ref, rtol=2e-2, atol=2e-2):
                    continue  # a wrong kernel is never faster
                t = timer(lambda x=x, w=w, cfg=cfg: gemv(x, w, None, cfg))
            except Exception:  # a config the GPU cannot run, or a weight too large for the kernel
                continue
            if best is None or t < best[0]:
                best = (t, cfg)
        if best is not None and best[0] < (1.0 - min_gain) * t_cublas:
            chosen.append(dict(zip(_GEMV_FIELDS, (N, K, *best[1]), strict=True)))
        del x, w, ref
    result = {GEMV_KEY: {"shapes": chosen}} if chosen else {}
    if device.type == "cuda":
        _install_gemv(result.get(GEMV_KEY, {}))
    return result
