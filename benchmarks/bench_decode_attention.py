"""Decode attention over a float16, FP8 or INT8 paged KV cache: launch configurations swept on one GPU, each
as bytes of K/V read per second (the kernel is bandwidth-bound), so the quantized cache's own choice can be
set (`attention.DECODE_QUANT_CONFIG` for fp8, `DECODE_INT8_CONFIG`; stored in engines as
`attention_decode_quant`, `attention_decode_int8`).

    python benchmarks/bench_decode_attention.py [--out DIR]

Writes `decode_attention_sweep.txt` (every config and shape) and `decode_quant_config.json` (per cache dtype,
the config with the least total time over the shapes).
"""

import argparse
import itertools
import json
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.profile_decode import cuda_ms as gpu_ms  # noqa: E402
from tensorrt_llm.kernels import attention  # noqa: E402
from tensorrt_llm.kernels.attention import paged_attention  # noqa: E402

# (batch, context) of Llama-3-8B decode steps: offline throughput's batches, a served batch, batch 1.
SHAPES = [(512, 1024), (256, 2048), (64, 2048), (8, 4096), (1, 8192)]
H, HKV, D, TPB = 32, 8, 128, 64
CONFIGS = [
    {"BLOCK_N": bn, "num_warps": w, "num_stages": s}
    for bn, w, s in itertools.product([64, 128, 256], [4, 8], [2, 3, 4])
    if not (bn == 256 and w == 4)
] + [
    {"BLOCK_N": bn, "num_warps": w, "num_stages": s, "SWAP_AB": True}  # the products transposed
    for bn, w, s in itertools.product([64, 128], [4, 8], [2, 3, 4])
]


def inputs(cache: str, B: int, ctx: int) -> tuple[tuple, dict, int]:
    """Random decode inputs over a `cache`-typed paged cache: (args, scale kwargs, bytes of K/V read)."""
    dtype = getattr(torch, cache)
    blocks = B * -(-ctx // TPB)
    if cache == "int8":
        kc = torch.randint(-127, 128, (blocks, TPB, HKV, D), device="cuda", dtype=dtype)
    else:
        kc = torch.randn(blocks, TPB, HKV, D, device="cuda").to(dtype)
    q = torch.randn(B, H, D, device="cuda", dtype=torch.float16)
    tables = torch.randperm(blocks, device="cuda", dtype=torch.int32).view(B, -1)
    lens = torch.full((B,), ctx, device="cuda", dtype=torch.int32)
    ones = torch.ones(B, device="cuda", dtype=torch.int32)
    scales = {}
    if cache != "float16":
        scales = dict(k_scale=torch.tensor([0.01], device="cuda"), v_scale=torch.tensor([0.01], device="cuda"))
    return (q, kc, kc.clone(), tables, ones, lens, D**-0.5, 1, ctx), scales, 2 * B * ctx * HKV * D * kc.element_size()


def sweep_shape(cache: str, B: int, ctx: int, totals: list[float]) -> list[str]:
    """Times every config on one shape (each checked against the first), adding to `totals`."""
    args, scales, nbytes = inputs(cache, B, ctx)

    def run():
        return paged_attention(*args, **scales)

    attr = {"float16": "DECODE_CONFIG", "int8": "DECODE_INT8_CONFIG"}.get(cache, "DECODE_QUANT_CONFIG")
    saved = getattr(attention, attr)
    setattr(attention, attr, CONFIGS[0])
    ref = run().float()
    rows = []
    for i, cfg in enumerate(CONFIGS):
        setattr(attention, attr, cfg)
        try:
            out = run().float()
            t = gpu_ms(run)
        except Exception as e:  # out of shared memory etc.
            rows.append(f"  {cfg}: failed ({type(e).__name__})")
            totals[i] = float("inf")
            continue
        err = ((out - ref).norm() / ref.norm()).item()
        if err > 1e-2:
            rows.append(f"  {cfg}: WRONG (rel {err:.1e})")
            totals[i] = float("inf")
            continue
        totals[i] += t
        rows.append(f"  {cfg}: {t * 1e3:.0f} us, {nbytes / t / 1e9:.2f} TB/s")
    setattr(attention, attr, saved)
    t = gpu_ms(run)
    head = (
        f"\n{cache} cache, B={B} ctx={ctx} ({nbytes / 1e9:.2f} GB of K/V): default {saved} "
        f"{t * 1e3:.0f} us, {nbytes / t / 1e9:.2f} TB/s"
    )
    return [head, *rows]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--out", default=os.environ.get("OUT", "."))
    p.add_argument("--caches", default="float16,float8_e4m3fn,int8")
    args = p.parse_args()
    lines = [f"GPU: {torch.cuda.get_device_name()}; H={H} Hkv={HKV} D={D}, tokens per block {TPB}"]
    best = {}
    for cache in args.caches.split(","):
        totals = [0.0] * len(CONFIGS)
        for B, ctx in SHAPES:
            rows = sweep_shape(cache, B, ctx, totals)
            lines += rows
            print("\n".join(rows), flush=True)
            torch.cuda.empty_cache()
        i = min(range(len(CONFIGS)), key=lambda k: totals[k])
        best[cache] = CONFIGS[i]
        lines.append(f"\n{cache}: least total time over the shapes: {CONFIGS[i]} ({totals[i]:.2f} ms)")
        print(lines[-1], flush=True)
    Path(args.out, "decode_attention_sweep.txt").write_text("\n".join(lines) + "\n")
    Path(args.out, "decode_quant_config.json").write_text(json.dumps(best))


if __name__ == "__main__":
    main()
