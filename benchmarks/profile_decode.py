"""Where a batch-1 decode step's time goes: graph replay alone, the host work around it, and the GPU
kernels inside it (torch.profiler), for the Llama-2-7B shape in float16.

    python benchmarks/profile_decode.py [--model llama2-7b] [--batch 1]
"""

import argparse
import dataclasses
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.bench_engine import SHAPES  # noqa: E402
from tensorrt_llm.builder import BuildConfig, convert_in_memory, tune_kernels  # noqa: E402
from tensorrt_llm.quantization import QuantConfig  # noqa: E402
from tensorrt_llm.runtime import Engine, build_step_input  # noqa: E402
from tensorrt_llm.runtime.sampling import make_sampling_tensors, sample  # noqa: E402


def cuda_ms(fn: Callable[[], object], n: int = 50) -> float:
    for _ in range(5):
        fn()
    s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    torch.cuda.synchronize()
    s.record()
    for _ in range(n):
        fn()
    e.record()
    torch.cuda.synchronize()
    return s.elapsed_time(e) / n


def host_ms(fn: Callable[[], object], n: int = 200) -> float:
    for _ in range(5):
        fn()
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - t0) * 1e3 / n


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="llama2-7b", choices=SHAPES)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--ctx", type=int, default=256)
    p.add_argument("--tune", action="store_true", help="tune kernel choices on this GPU, as trtllm-build --device cuda")
    p.add_argument("--quant_algo", default=None, help="as trtllm-build: W8A16, W4A16, FP8, ...")
    p.add_argument("--kv_cache_quant_algo", default=None, help="as trtllm-build: INT8 or FP8")
    p.add_argument("--out", default=os.environ.get("OUT", "."))
    args = p.parse_args()
    quant = QuantConfig(args.quant_algo, args.kv_cache_quant_algo)
    build = BuildConfig(max_batch_size=max(8, args.batch), max_input_len=2048, max_seq_len=4096)
    cfg, weights = convert_in_memory(SHAPES[args.model], "float16", build, "cuda", quant=quant)
    if args.tune:  # as trtllm-build --device cuda: kernel choices timed here, applied at load
        kernels = tune_kernels(cfg.model, cfg.mapping, build, torch.float16, "cuda", quant)
        cfg = dataclasses.replace(cfg, kernels=kernels)
    engine = Engine.from_weights(cfg, weights, torch.device("cuda"))
    del weights
    tpb = build.tokens_per_block
    B, ctx = args.batch, args.ctx
    nblk = -(-(ctx + 1) // tpb)
    kv = engine.make_kv_cache(B * nblk + 2048 // tpb)
    tables = [list(range(b * nblk, (b + 1) * nblk)) for b in range(B)]
    mode = f"{args.quant_algo or 'fp16'}{f' + {args.kv_cache_quant_algo} KV' if args.kv_cache_quant_algo else ''}"
    kv_tag = args.kv_cache_quant_algo and f"{args.kv_cache_quant_algo}kv"
    tag = "".join(f"_{a.lower()}" for a in (args.quant_algo, kv_tag) if a)
    lines = [f"GPU: {torch.cuda.get_device_name()}; {args.model} {mode}, batch {B}, context {ctx}"]

    def step():
        return build_step_input([[5]] * B, [ctx] * B, tables, tpb, "cuda")

    s = step()
    eager = cuda_ms(lambda: engine.model(s, kv.k, kv.v), 20)
    lines.append(f"eager forward (GPU time incl. launch gaps)  {eager:.3f} ms")
    engine.capture_cuda_graphs(kv, max(8, B))
    replay = cuda_ms(lambda: engine.forward(s, kv))
    lines.append(f"graph forward (copy-in + replay)            {replay:.3f} ms")
    lines.append(f"build_step_input (host)                     {host_ms(step):.3f} ms")
    logits = engine.forward(s, kv)
    st = lambda: make_sampling_tensors(cfg.model.vocab_size, "cuda", [None] * B, [0] * B, [0.0] * B)  # noqa: E731
    lines.append(f"make_sampling_tensors greedy (host)         {host_ms(st):.3f} ms")
    t = st()
    lines.append(f"sample greedy + tolist                      {host_ms(lambda: sample(logits, t)[0].tolist()):.3f} ms")

    def full():
        x = step()
        lg = engine.forward(x, kv)
        return sample(lg, st())[0].tolist()

    lines.append(f"whole step (host wall)                      {host_ms(full, 100):.3f} ms")
    weight_bytes = sum(p.numel() * p.element_size() for p in engine.model.parameters())
    lines.append(f"weights {weight_bytes / 1e9:.2f} GB -> at 3.0 TB/s read: {weight_bytes / 3.0e12 * 1e3:.3f} ms")

    for n in (128, 2048):
        pre = build_step_input(
            [list(range(5, 5 + n))], [0], [list(range(B * nblk, B * nblk + -(-n // tpb)))], tpb, "cuda"
        )
        g = cuda_ms(lambda pre=pre: engine.forward(pre, kv), 10)
        h = host_ms(lambda pre=pre: (engine.forward(pre, kv), torch.cuda.synchronize()), 10)
        lines.append(f"prefill {n:>4} tokens: GPU {g:.2f} ms, wall {h:.2f} ms")

    import cProfile
    import io
    import pstats

    prof_cpu = cProfile.Profile()
    prof_cpu.enable()
    for _ in range(5):
        engine.model(s, kv.k, kv.v)
    torch.cuda.synchronize()
    prof_cpu.disable()
    buf = io.StringIO()
    pstats.Stats(prof_cpu, stream=buf).sort_stats("tottime").print_stats(25)
    Path(args.out, f"profile_eager_cpu_b{B}.txt").write_text(buf.getvalue())
    print("\n".join(buf.getvalue().splitlines()[:45]))

    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        for _ in range(10):
            engine.forward(s, kv)
        torch.cuda.synchronize()
    table = prof.key_averages().table(sort_by="cuda_time_total", row_limit=15)
    text = "\n".join(lines)
    print(text)
    print(table)
    Path(args.out, f"profile_decode_b{B}{tag}.txt").write_text(text + "\n" + table)


if __name__ == "__main__":
    main()
