"""Where a context-heavy step's time goes (the 2048/128 throughput case): one eager step of several
2048-token prompts plus a batch of generation rows with long contexts, for the Llama-3.1-8B shape.

    python benchmarks/profile_mixed.py [--prompts 3] [--prompt-len 2048] [--gen 150] [--gen-ctx 2100]

Prints the step's GPU time, the kernels grouped (GEMMs, attention, the rest) with the GEMMs' TFLOP/s,
and the same step without its generation rows.
"""

import argparse
import os
import sys
from collections import defaultdict
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.bench_engine import SHAPES  # noqa: E402
from benchmarks.profile_decode import cuda_ms  # noqa: E402
from tensorrt_llm.builder import BuildConfig, convert_in_memory  # noqa: E402
from tensorrt_llm.runtime import Engine, build_step_input  # noqa: E402


def group(name: str) -> str:
    n = name.lower()
    if any(k in n for k in ("gemm", "nvjet", "cutlass", "sm90_xmma", "cublas")):
        return "GEMM (cuBLAS)"
    if "attention" in n or "flash" in n or "fmha" in n:
        return "attention"
    return "other: " + name[:60]


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="llama3-8b", choices=SHAPES)
    p.add_argument("--prompts", type=int, default=3)
    p.add_argument("--prompt-len", type=int, default=2048)
    p.add_argument("--gen", type=int, default=150)
    p.add_argument("--gen-ctx", type=int, default=2100)
    p.add_argument("--out", default=os.environ.get("OUT", "."))
    args = p.parse_args()
    shape = SHAPES[args.model]
    build = BuildConfig(max_batch_size=512, max_input_len=2048, max_seq_len=4096, max_num_tokens=8192)
    cfg, weights = convert_in_memory(shape, "float16", build, "cuda")
    engine = Engine.from_weights(cfg, weights, torch.device("cuda"))
    del weights
    tpb = build.tokens_per_block
    P, L, G, C = args.prompts, args.prompt_len, args.gen, args.gen_ctx
    per_p, per_g = -(-L // tpb), -(-(C + 1) // tpb)
    kv = engine.make_kv_cache(P * per_p + G * per_g + 1)
    gen = torch.Generator().manual_seed(0)
    tok = lambda n: torch.randint(3, shape["vocab_size"], (n,), generator=gen).tolist()  # noqa: E731
    tables = [list(range(i * per_p, (i + 1) * per_p)) for i in range(P)]
    base = P * per_p
    tables += [list(range(base + i * per_g, base + (i + 1) * per_g)) for i in range(G)]
    mixed = build_step_input([tok(L) for _ in range(P)] + [tok(1) for _ in range(G)], [0] * P + [C] * G, tables, tpb,
                             "cuda")  # fmt: skip
    prompts_only = build_step_input([tok(L) for _ in range(P)], [0] * P, tables[:P], tpb, "cuda")
    gen_only = build_step_input([tok(1) for _ in range(G)], [C] * G, tables[P:], tpb, "cuda")
    lines = [f"GPU: {torch.cuda.get_device_name()}; {args.model} fp16; {P} prompts x {L} + {G} generation rows at "
             f"context {C}; eager"]  # fmt: skip
    with torch.inference_mode():
        for name, s in (("mixed step", mixed), ("prompts only", prompts_only), ("generation rows only", gen_only)):
            ms = cuda_ms(lambda s=s: engine.model(s, kv.k, kv.v), 5)
            lines.append(f"{name:<22} {ms:8.2f} ms GPU")
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
            for _ in range(3):
                engine.model(mixed, kv.k, kv.v)
            torch.cuda.synchronize()
    totals: dict[str, float] = defaultdict(float)
    for e in prof.key_averages():
        totals[group(e.key)] += e.device_time_total / 3 / 1e3  # ms per step
    T = mixed.num_tokens
    m = cfg.model
    linear = (
        2
        * T
        * m.num_hidden_layers
        * m.hidden_size
        * (m.hidden_size + 2 * m.num_key_value_heads * m.head_dim + m.hidden_size + 3 * m.intermediate_size)
    )  # qkv, o, gate_up, down (the LM head runs on the sampled rows only)
    lines.append("per step, kernels grouped (ms):")
    for k, v in sorted(totals.items(), key=lambda kv: -kv[1])[:14]:
        extra = f"   {linear / v / 1e9:.0f} TFLOP/s" if k.startswith("GEMM") else ""
        lines.append(f"  {k:<70} {v:8.2f}{extra}")

    # Flash attention (PyTorch SDPA) on the same prompts, for the context kernel's share.
    H, Hkv, D = m.num_attention_heads, m.num_key_value_heads, m.head_dim
    q = torch.randn(P, H, L, D, device="cuda", dtype=torch.float16)
    k = torch.randn(P, Hkv, L, D, device="cuda", dtype=torch.float16)
    v = torch.randn_like(k)
    sdpa = cuda_ms(lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True))
    lines.append(f"SDPA causal on the prompts, one layer: {sdpa:.3f} ms (x{m.num_hidden_layers} layers = "
                 f"{sdpa * m.num_hidden_layers:.1f} ms)")  # fmt: skip
    text = "\n".join(lines)
    print(text)
    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=20))
    Path(args.out, "profile_mixed.txt").write_text(text + "\n")


if __name__ == "__main__":
    main()
