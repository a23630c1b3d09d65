"""The skinny GEMM against cuBLAS (torch.nn.functional.linear) on the decode shapes of Llama-2-7B and
Llama-3-8B, with a sweep of launch configs; prints achieved weight-read bandwidth.

    python benchmarks/bench_gemv.py
"""

import itertools
import os
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
import triton
from triton.testing import do_bench

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tensorrt_llm.kernels import gemv as G  # noqa: E402

SHAPES = {  # (N, K): qkv, o, gate_up, down, lm_head
    "7b": [(12288, 4096), (4096, 4096), (22016, 4096), (4096, 11008), (32000, 4096)],
    "8b": [(6144, 4096), (4096, 4096), (28672, 4096), (4096, 14336), (128256, 4096)],
}


def launch(x, w, cfg):
    bn, bk, warps, stages = cfg
    M, K = x.shape
    N = w.shape[0]
    y = torch.empty(M, N, dtype=x.dtype, device=x.device)
    bm = 1 if M == 1 else (2 if M == 2 else 4)
    G._gemv_kernel[(triton.cdiv(N, bn),)](
        x, w, w, y, M, N, K, x.stride(0), w.stride(0), y.stride(0), HAS_BIAS=False, BLOCK_M=bm, BLOCK_N=bn,
        BLOCK_K=bk, EVEN_K=K % bk == 0, num_warps=warps, num_stages=stages,
    )  # fmt: skip
    return y


def main() -> None:
    out = []
    gpu = torch.cuda.get_device_name()
    cands = list(itertools.product([4, 8, 16], [256, 512], [4, 8], [3, 4]))
    best_cfg = {}
    for M in (1, 2, 4):
        # Sweep on all 7B shapes together: the config with the least total time wins.
        totals = {}
        for cfg in cands:
            if M == 4 and cfg[1] == 1024:
                continue
            t = 0.0
            for N, K in SHAPES["7b"]:
                x = torch.randn(M, K, dtype=torch.float16, device="cuda")
                w = torch.randn(N, K, dtype=torch.float16, device="cuda")
                try:
                    t += do_bench(lambda x=x, w=w, cfg=cfg: launch(x, w, cfg), warmup=5, rep=20)
                except Exception:  # noqa: BLE001 (configs that do not fit the SM are skipped)
                    t = float("inf")
                    break
            totals[cfg] = t
        best_cfg[M] = min(totals, key=totals.get)
        out.append(f"M={M}: best (BLOCK_N, BLOCK_K, warps, stages) = {best_cfg[M]}")
    out.append(f"GPU: {gpu}; float16; GB/s of weight reads (higher is better)")
    out.append(f"{'model':>5} {'M':>2} {'N':>7} {'K':>6} {'cuBLAS':>8} {'gemv':>8}")
    for model, shapes in SHAPES.items():
        for M in (1, 2, 4):
            for N, K in shapes:
                x = torch.randn(M, K, dtype=torch.float16, device="cuda")
                w = torch.randn(N, K, dtype=torch.float16, device="cuda")
                torch.testing.assert_close(launch(x, w, best_cfg[M]), F.linear(x, w), rtol=2e-2, atol=2e-2)
                gb = N * K * 2 / 1e9
                tc = do_bench(lambda x=x, w=w: F.linear(x, w), warmup=10, rep=50)
                tg = do_bench(lambda x=x, w=w, c=best_cfg[M]: launch(x, w, c), warmup=10, rep=50)
                out.append(f"{model:>5} {M:>2} {N:>7} {K:>6} {gb / tc * 1e3:>8.0f} {gb / tg * 1e3:>8.0f}")
    text = "\n".join(out)
    print(text)
    Path(os.environ.get("OUT", "."), "bench_gemv.txt").write_text(text + "\n")


if __name__ == "__main__":
    main()
