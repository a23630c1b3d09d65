"""Quantized linear kernels against float16 cuBLAS on the Llama-3.1-8B shapes, by rows of x (M): time per
call, and for small M the bandwidth reached (weight bytes / time, next to the measured copy bandwidth).
With --sweep, launch configs of the weight-only / FP8 GEMV at M = 1 are timed too.

    python benchmarks/bench_quant_kernels.py [--sweep] [--out DIR]
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.bench_engine import copy_bandwidth  # noqa: E402
from tensorrt_llm import kernels as K  # noqa: E402
from tensorrt_llm.quantization.functional import fp8_linear, smooth_quant_linear  # noqa: E402

# (N, K) of Llama-3.1-8B's linear layers at tp 1: qkv, o, gate_up, down
SHAPES = {"qkv": (6144, 4096), "o": (4096, 4096), "gate_up": (28672, 4096), "down": (4096, 14336)}
MS = tuple(int(m) for m in os.environ.get("QUANT_MS", "1,4,16,64,256,2048").split(","))


def bench(fn: Callable[[], object], iters: int = 50) -> float:
    """Median seconds per call, timed with CUDA events over a CUDA graph of `iters` calls (no launch gaps)."""
    fn()
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        fn()
        with torch.cuda.graph(g):
            for _ in range(iters):
                fn()
    torch.cuda.current_stream().wait_stream(s)
    times = []
    for _ in range(5):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        g.replay()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b) / 1e3 / iters)
    return sorted(times)[2]


def make(N: int, Kd: int) -> dict[str, torch.Tensor]:
    w = torch.randn(N, Kd, device="cuda") * 0.02
    q8, s8 = K.quantize_int8_per_channel(w)
    q4, s4 = K.quantize_int4_groupwise(w, 128)
    f8, fs = K.quantize_fp8(w, per_channel=False)
    f8c, fsc = K.quantize_fp8(w, per_channel=True)
    return dict(w16=w.half(), q8=q8, s8=s8, q4=q4, s4=s4, f8=f8, fs=fs, f8c=f8c, fsc=fsc)


def _fp8_cublas(x, w, w_scale, x_scale):  # cuBLAS FP8 at every M (fp8_linear reads small M by the GEMV)
    xq = K.quantize_fp8_static(x, x_scale)
    return torch._scaled_mm(xq, w.t(), scale_a=x_scale, scale_b=w_scale, out_dtype=x.dtype)


def modes(t: dict, x: torch.Tensor) -> dict:
    smoother = torch.ones(x.shape[1], device="cuda")
    x_scale = torch.tensor(0.02, device="cuda")
    return {
        "fp16 cuBLAS": (lambda: F.linear(x, t["w16"]), 2),
        "W8A16": (lambda: K.weight_only_linear(x, t["q8"], t["s8"], None, 8, 128), 1),
        "W4A16 g128": (lambda: K.weight_only_linear(x, t["q4"], t["s4"], None, 4, 128), 0.5),
        "FP8 static": (lambda: fp8_linear(x, t["f8"], t["fs"], x_scale, None), 1),
        "FP8 cuBLAS": (lambda: _fp8_cublas(x, t["f8"], t["fs"], x_scale), 1),
        "FP8 per-token": (lambda: fp8_linear(x, t["f8c"], t["fsc"], None, None), 1),
        "SQ int8 per-token": (lambda: smooth_quant_linear(x, smoother, t["q8"], t["s8"], None, None), 1),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--sweep", action="store_true")
    p.add_argument("--out", default=os.environ.get("OUT", "."))
    args = p.parse_args()
    bw = copy_bandwidth()
    lines = [f"GPU: {torch.cuda.get_device_name()}, torch {torch.__version__}; copy bandwidth {bw / 1e12:.2f} TB/s"]
    lines.append("us per call (M <= 16: % of copy bandwidth reading the weights; larger M: TFLOP/s)")
    for name, (N, Kd) in SHAPES.items():
        t = make(N, Kd)
        for M in MS:
            x = torch.randn(M, Kd, device="cuda", dtype=torch.float16)
            cells = []
            for mode, (fn, bytes_per_w) in modes(t, x).items():
                try:
                    sec = bench(fn)
                except Exception as e:  # report and go on: one mode's failure says what is missing
                    cells.append(f"{mode} ERR {type(e).__name__}: {str(e)[:80]}")
                    continue
                if M <= 16:
                    cells.append(f"{mode} {sec * 1e6:.1f} ({N * Kd * bytes_per_w / sec / bw:.0%})")
                else:
                    cells.append(f"{mode} {sec * 1e6:.1f} ({2 * M * N * Kd / sec / 1e12:.0f})")
            lines.append(f"{name:>8} {N}x{Kd} M={M:<5} " + " | ".join(cells))
            print(lines[-1], flush=True)
    if args.sweep:
        lines.append("GEMV sweep at M=1, (BLOCK_M, BLOCK_N, BLOCK_K, warps, stages): us")
        for name in ("o", "gate_up"):
            N, Kd = SHAPES[name]
            t = make(N, Kd)
            x = torch.randn(1, Kd, device="cuda", dtype=torch.float16)
            for kind in ("int8", "int4", "fp8"):
                best = []
                calls = {
                    "int8": lambda c, x=x, t=t: K.weight_only_linear(x, t["q8"], t["s8"], None, 8, 128, None, c),
                    "int4": lambda c, x=x, t=t: K.weight_only_linear(x, t["q4"], t["s4"], None, 4, 128, None, c),
                    "fp8": lambda c, x=x, t=t: K.fp8_weight_gemv(x, t["f8"], t["fs"], None, c),
                }
                # (BLOCK_N, BLOCK_K columns) of the word-reading GEMV; split K where N gives few tiles
                bns, bks = ((8, 16, 32), (512, 1024, 2048)) if kind == "int4" else ((4, 8, 16), (256, 512, 1024))
                splits = (1, 2, 4) if name == "o" else (1,)
                for bn, bk, wp, st, sk in itertools.product(bns, bks, (4, 8), (3, 4), splits):
                    cfg = (1, bn, bk, wp, st, sk)
                    try:
                        sec = bench(lambda c=cfg, f=calls[kind]: f(c))
                    except Exception:
                        continue
                    best.append((sec, cfg))
                best.sort()
                top = ", ".join(f"{c}: {s * 1e6:.1f}" for s, c in best[:3])
                lines.append(f"{name:>8} {kind}: {top}")
                print(lines[-1], flush=True)
    Path(args.out, "bench_quant_kernels.txt").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
