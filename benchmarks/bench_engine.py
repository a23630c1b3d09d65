"""Engine benchmarks on one GPU: batch-1 decode against the bandwidth ceiling, first-token latency, and
Hugging Face `generate` on the same weights; optionally engine build and load-to-ready times.

    python benchmarks/bench_engine.py [--model llama2-7b|llama3-8b] [--hf] [--build-time] [--out DIR]

Weights are random (no download); shapes are the real models'. Prints a table last.
"""

import argparse
import dataclasses
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tensorrt_llm._utils import str_to_dtype  # noqa: E402
from tensorrt_llm.builder import BuildConfig, convert_in_memory, tune_kernels  # noqa: E402
from tensorrt_llm.quantization import QuantConfig, functional  # noqa: E402
from tensorrt_llm.runtime import Engine, ModelRunner  # noqa: E402

SHAPES = {
    "llama2-7b": dict(
        architectures=["LlamaForCausalLM"], vocab_size=32000, hidden_size=4096, intermediate_size=11008,
        num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=32, max_position_embeddings=4096,
        rms_norm_eps=1e-5, rope_theta=10000.0, bos_token_id=1, eos_token_id=2,
    ),
    "llama3-8b": dict(
        architectures=["LlamaForCausalLM"], vocab_size=128256, hidden_size=4096, intermediate_size=14336,
        num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=131072,
        rms_norm_eps=1e-5, rope_theta=500000.0, bos_token_id=128000, eos_token_id=128001,
        rope_scaling=dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                          original_max_position_embeddings=8192),
    ),
    # Issue 11's families, next to Llama-3.1-8B.
    "mistral-7b": dict(
        architectures=["MistralForCausalLM"], vocab_size=32768, hidden_size=4096, intermediate_size=14336,
        num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=32768,
        rms_norm_eps=1e-5, rope_theta=1000000.0, sliding_window=None, bos_token_id=1, eos_token_id=2,
    ),
    "qwen2.5-7b": dict(
        architectures=["Qwen2ForCausalLM"], vocab_size=152064, hidden_size=3584, intermediate_size=18944,
        num_hidden_layers=28, num_attention_heads=28, num_key_value_heads=4, max_position_embeddings=32768,
        rms_norm_eps=1e-6, rope_theta=1000000.0, use_sliding_window=False, tie_word_embeddings=False,
        bos_token_id=151643, eos_token_id=151645,
    ),
    "gemma2-9b": dict(
        architectures=["Gemma2ForCausalLM"], vocab_size=256000, hidden_size=3584, intermediate_size=14336,
        num_hidden_layers=42, num_attention_heads=16, num_key_value_heads=8, head_dim=256,
        max_position_embeddings=8192, rms_norm_eps=1e-6, rope_theta=10000.0, query_pre_attn_scalar=256,
        sliding_window=4096, final_logit_softcapping=30.0, attn_logit_softcapping=50.0,
        hidden_activation="gelu_pytorch_tanh", bos_token_id=2, eos_token_id=1,
    ),
    "mixtral-8x7b": dict(
        architectures=["MixtralForCausalLM"], vocab_size=32000, hidden_size=4096, intermediate_size=14336,
        num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=32768,
        rms_norm_eps=1e-5, rope_theta=1000000.0, num_local_experts=8, num_experts_per_tok=2,
        bos_token_id=1, eos_token_id=2,
    ),
}  # fmt: skip


def copy_bandwidth() -> float:
    """Device-to-device copy, bytes read + written per second (the decode ceiling's denominator)."""
    x = torch.empty(2 * 1024**3, dtype=torch.uint8, device="cuda")
    y = torch.empty_like(x)
    for _ in range(3):
        y.copy_(x)
    torch.cuda.synchronize()
    times = []
    for _ in range(10):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        y.copy_(x)
        e.record()
        torch.cuda.synchronize()
        times.append(s.elapsed_time(e) / 1e3)
    del x, y
    return 2 * 2 * 1024**3 / sorted(times)[len(times) // 2]


def timed(fn: Callable[[], object], repeat: int = 3) -> float:
    """Median wall time of fn() in seconds, after one warm-up call."""
    fn()
    times = []
    for _ in range(repeat):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--model", default="llama2-7b", choices=SHAPES)
    p.add_argument("--dtype", default="float16")
    p.add_argument("--prompt", type=int, default=128)
    p.add_argument("--new", type=int, default=256)
    p.add_argument("--hf", action="store_true", help="also time Hugging Face generate on the same weights")
    p.add_argument("--build-time", action="store_true", help="time trtllm-build and loading (writes to disk)")
    p.add_argument("--tune", action="store_true", help="tune kernel choices on this GPU, as trtllm-build --device cuda")
    p.add_argument("--quant_algo", default=None, help="as trtllm-build: W8A16, W4A16, FP8, ...")
    p.add_argument("--kv_cache_quant_algo", default=None, help="as trtllm-build: INT8 or FP8")
    p.add_argument("--group_size", type=int, default=128)
    p.add_argument("--fp8_gemv_max_m", type=int, default=None, help="FP8 linears read by the Triton GEMV up to M")
    p.add_argument("--out", default=os.environ.get("OUT", "."))
    args = p.parse_args()
    if args.fp8_gemv_max_m is not None:
        functional.FP8_GEMV_MAX_M = args.fp8_gemv_max_m
    quant = QuantConfig(args.quant_algo, args.kv_cache_quant_algo, args.group_size)
    qname = "".join(
        f"_{a.lower()}" for a in (args.quant_algo, args.kv_cache_quant_algo and f"{args.kv_cache_quant_algo}kv") if a
    )
    rows: list[tuple[str, str]] = []
    gpu = torch.cuda.get_device_name()
    bw = copy_bandwidth()
    hf_cfg = SHAPES[args.model]
    build = BuildConfig(max_batch_size=8, max_input_len=2048, max_seq_len=4096, max_num_tokens=8192)

    if args.build_time:
        with tempfile.TemporaryDirectory(dir=os.environ.get("TMPDIR", "/tmp")) as tmp:
            (Path(tmp) / "config.json").write_text(json.dumps(hf_cfg))
            t0 = time.perf_counter()
            subprocess.run(
                [sys.executable, "-m", "tensorrt_llm.commands.build", "--model_config", f"{tmp}/config.json",
                 "--dtype", args.dtype, "--output_dir", f"{tmp}/engine", "--device", "cuda",
                 "--max_batch_size", "8", "--max_input_len", "2048", "--max_seq_len", "4096"],
                check=True,
            )  # fmt: skip
            rows.append(("engine build (random weights, to disk)", f"{time.perf_counter() - t0:.1f} s"))
            t0 = time.perf_counter()
            r = ModelRunner.from_dir(f"{tmp}/engine", device="cuda", max_tokens_in_paged_kv_cache=65536)
            torch.cuda.synchronize()
            rows.append(("load to ready (weights, KV cache, CUDA graphs)", f"{time.perf_counter() - t0:.1f} s"))
            del r
            torch.cuda.empty_cache()
            shutil.rmtree(f"{tmp}/engine", ignore_errors=True)

    cfg, weights = convert_in_memory(hf_cfg, args.dtype, build, "cuda", quant=quant)
    if args.tune:  # attention launch configs and the GEMV's linear shapes, applied at load as from an engine
        kernels = tune_kernels(cfg.model, cfg.mapping, build, str_to_dtype(args.dtype), "cuda", quant)
        cfg = dataclasses.replace(cfg, kernels=kernels)
        rows.append(("tuned: linear shapes on the Triton GEMV", str(kernels.get("linear_gemv", {}).get("shapes", []))))
    weight_bytes = sum(w.numel() * w.element_size() for w in weights.values())
    engine = Engine.from_weights(cfg, weights, torch.device("cuda"))
    del weights
    # What the mode buys: KV tokens in 90 % of the memory left after the weights, as the executor sizes it.
    kv_tokens = engine.num_kv_blocks(0.9) * build.tokens_per_block
    kv_token_bytes = engine.kv_bytes_per_block() / build.tokens_per_block
    t0 = time.perf_counter()
    runner = ModelRunner(engine, max_kv_blocks=65536 // build.tokens_per_block)
    rows.append(("CUDA graph capture", f"{time.perf_counter() - t0:.2f} s"))
    gen = torch.Generator().manual_seed(0)
    prompt = torch.randint(3, hf_cfg["vocab_size"], (args.prompt,), generator=gen).tolist()

    total = timed(lambda: runner.generate([prompt], max_new_tokens=args.new, end_id=-1))
    ttft = timed(lambda: runner.generate([prompt], max_new_tokens=1, end_id=-1), repeat=5)
    decode_tps = (args.new - 1) / (total - ttft)
    ceiling = bw / weight_bytes
    long_prompt = torch.randint(3, hf_cfg["vocab_size"], (2048,), generator=gen).tolist()
    ttft_long = timed(lambda: runner.generate([long_prompt], max_new_tokens=1, end_id=-1), repeat=5)
    rows += [
        ("weights", f"{weight_bytes / 1e9:.2f} GB"),
        ("KV cache bytes per token", f"{kv_token_bytes / 1024:.0f} KiB"),
        ("KV cache capacity (0.9 of free memory after weights)", f"{kv_tokens:,} tokens"),
        ("copy bandwidth (read + write)", f"{bw / 1e12:.2f} TB/s"),
        ("decode ceiling (bandwidth / weight bytes)", f"{ceiling:.1f} tokens/s"),
        (f"batch-1 decode, prompt {args.prompt}, {args.new} new", f"{decode_tps:.1f} tokens/s"),
        ("batch-1 decode / ceiling", f"{decode_tps / ceiling:.0%}"),
        ("batch-1 end to end (incl. first token)", f"{args.new / total:.1f} tokens/s"),
        (f"first token, prompt {args.prompt}", f"{ttft * 1e3:.1f} ms"),
        ("first token, prompt 2048", f"{ttft_long * 1e3:.1f} ms"),
    ]  # fmt: skip

    if args.hf:
        from transformers import LlamaConfig, LlamaForCausalLM

        del runner, engine
        torch.cuda.empty_cache()
        with torch.device("cuda"):
            hf = LlamaForCausalLM(LlamaConfig(**{k: v for k, v in hf_cfg.items() if k != "architectures"}))
        hf = hf.to(getattr(torch, args.dtype)).eval()
        ids = torch.tensor([prompt], device="cuda")
        kw = dict(max_new_tokens=args.new, min_new_tokens=args.new, do_sample=False, pad_token_id=0)
        t = timed(lambda: hf.generate(ids, **kw), repeat=1)
        rows.append(("Hugging Face generate, same shape", f"{args.new / t:.1f} tokens/s"))

    width = max(len(k) for k, _ in rows)
    lines = [f"GPU: {gpu}; model shape {args.model}, {args.dtype}{qname}, torch {torch.__version__}"]
    lines += [f"{k:<{width}}  {v}" for k, v in rows]
    text = "\n".join(lines)
    print(text)
    Path(args.out, f"bench_engine_{args.model}{qname}.txt").write_text(text + "\n")


if __name__ == "__main__":
    main()
