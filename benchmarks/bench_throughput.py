"""Offline throughput through the in-flight batcher: all requests queued at once, fixed lengths, end id
ignored; output tokens per second, as TensorRT-LLM's performance overview measures it.

    python benchmarks/bench_throughput.py [--model llama3-8b] [--cases 128/128,128/2048,2048/128,2048/2048]
                                          [--overlap on|off|both]

Random weights of the real shape (no download). Prints a table last, with where each case's time went:
steps that computed prompt tokens (context or mixed) against generation-only steps.
"""

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.bench_engine import SHAPES  # noqa: E402
from inflight_batcher import Executor, ExecutorConfig, Request, SamplingParams  # noqa: E402
from tensorrt_llm.builder import BuildConfig, convert_in_memory  # noqa: E402
from tensorrt_llm.kernels import attention  # noqa: E402
from tensorrt_llm.quantization import QuantConfig  # noqa: E402
from tensorrt_llm.runtime import Engine  # noqa: E402

# TensorRT-LLM v0.14 performance overview, H100 SXM float16, Llama-3.1-8B (output tokens/s).
PUBLISHED = {(128, 128): 15572, (128, 2048): 9151, (2048, 128): 1904, (2048, 2048): 4160}
# The best TensorRT-LLM H200 FP8 figures published (Llama-3.1-8B, output tokens/s): issue 12's targets.
PUBLISHED_H200_FP8 = {(128, 128): 29526, (128, 2048): 26221, (2048, 128): 3794, (2048, 2048): 12194}


class StepLog:
    """Records each planned step's token counts and the time it was planned (the executor's thread)."""

    def __init__(self, executor: Executor) -> None:
        self.rows: list[tuple[float, int, int]] = []  # (time, context tokens, generation sequences)
        real = executor.scheduler.schedule

        def schedule():
            plan = real()
            self.rows.append((time.perf_counter(), plan.num_context_tokens, len(plan.generation)))
            return plan

        executor.scheduler.schedule = schedule

    def summary(self, end: float) -> str:
        """Time between consecutive plans, split by kind: with overlap a step's wall time is its device
        time plus whatever host work was not hidden."""
        ctx_s = gen_s = 0.0
        n_ctx = n_gen = ctx_tok = gen_seq = 0
        for (t, c, g), (t2, _, _) in zip(self.rows, self.rows[1:] + [(end, 0, 0)], strict=True):
            if c:
                ctx_s, n_ctx, ctx_tok = ctx_s + t2 - t, n_ctx + 1, ctx_tok + c
            elif g:
                gen_s, n_gen, gen_seq = gen_s + t2 - t, n_gen + 1, gen_seq + g
        self.rows.clear()
        return (
            f"steps with prompt tokens {n_ctx} ({ctx_s:.1f} s, {ctx_tok / max(n_ctx, 1):.0f} prompt tokens each, "
            f"{ctx_tok / max(ctx_s, 1e-9):,.0f} prompt tokens/s); generation-only steps {n_gen} ({gen_s:.1f} s, "
            f"batch {gen_seq / max(n_gen, 1):.0f}, {1e3 * gen_s / max(n_gen, 1):.2f} ms each)"
        )


def run_case(executor: Executor, vocab: int, isl: int, osl: int, num: int, seed: int = 0) -> tuple[float, float]:
    gen = torch.Generator().manual_seed(seed)
    reqs = [
        Request(
            input_ids=torch.randint(3, vocab, (isl,), generator=gen).tolist(),
            max_new_tokens=osl,
            end_id=-1,
            sampling=SamplingParams(),
        )
        for _ in range(num)
    ]
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    outs = executor.generate(reqs)
    elapsed = time.perf_counter() - t0
    produced = sum(len(o.tokens[0]) for o in outs)
    assert produced == num * osl, f"expected {num * osl} output tokens, got {produced}"
    return produced / elapsed, elapsed


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--model", default="llama3-8b", choices=SHAPES)
    p.add_argument("--dtype", default="float16")
    p.add_argument("--cases", default="128/128,128/2048,2048/128,2048/2048", help="in/out[:requests],...")
    p.add_argument("--max_batch_size", type=int, default=512)
    p.add_argument("--max_num_tokens", type=int, default=8192)
    p.add_argument("--requests", type=int, default=0, help="requests per case (default: by case)")
    p.add_argument("--budget_s", type=float, default=60.0, help="aim each case at about this long")
    p.add_argument(
        "--overlap",
        default="both",
        choices=["on", "off", "both"],
        help="overlapped scheduling (ExecutorConfig.overlap_scheduling); both: each case twice",
    )
    p.add_argument("--quant_algo", default=None, help="as trtllm-build: W8A16, W4A16, FP8, ...")
    p.add_argument("--kv_cache_quant_algo", default=None, help="as trtllm-build: INT8 or FP8")
    p.add_argument("--group_size", type=int, default=128)
    p.add_argument("--decode_quant_config", default=None, help="JSON: decode attention launch config, quantized KV")
    p.add_argument("--out", default=os.environ.get("OUT", "."))
    args = p.parse_args()
    if args.decode_quant_config:
        attention.DECODE_QUANT_CONFIG = json.loads(args.decode_quant_config)
    quant = QuantConfig(args.quant_algo, args.kv_cache_quant_algo, args.group_size)
    qname = "".join(
        f"_{a.lower()}" for a in (args.quant_algo, args.kv_cache_quant_algo and f"{args.kv_cache_quant_algo}kv") if a
    )
    hf_cfg = SHAPES[args.model]
    build = BuildConfig(
        max_batch_size=args.max_batch_size, max_input_len=2048, max_seq_len=4096, max_num_tokens=args.max_num_tokens
    )
    cfg, weights = convert_in_memory(hf_cfg, args.dtype, build, "cuda", quant=quant)
    engine = Engine.from_weights(cfg, weights, torch.device("cuda"))
    del weights
    t0 = time.perf_counter()
    executor = Executor(engine, ExecutorConfig(batch_scheduler_policy="max_utilization"))
    setup = time.perf_counter() - t0
    steps = StepLog(executor)
    modes = {"on": [True], "off": [False], "both": [True, False]}[args.overlap]
    rows, notes = [], []
    for case in args.cases.split(","):
        case, _, count = case.partition(":")  # "in/out" or "in/out:requests"
        isl, osl = map(int, case.split("/"))
        # Enough requests to fill the batch a few times, bounded so each case ends in about budget_s.
        num = (
            int(count or 0) or args.requests or max(64, min(3 * args.max_batch_size, int(args.budget_s * 12000 / osl)))
        )
        for overlap in modes:
            executor.overlap = overlap  # between runs only: the loop reads it at each launch
            run_case(executor, hf_cfg["vocab_size"], isl, min(osl, 16), min(num, 64))  # warm-up
            before = executor.stats()
            steps.rows.clear()
            tps, elapsed = run_case(executor, hf_cfg["vocab_size"], isl, osl, num)
            after = executor.stats()
            # Published figures are Llama-3.1-8B's: another shape gets none (its Llama figure comes from a run
            # of llama3-8b beside it, as run_gpu.sh families does).
            ref = (PUBLISHED_H200_FP8 if quant.quant_algo else PUBLISHED).get((isl, osl))
            ref = ref if args.model == "llama3-8b" else None
            rows.append((f"{isl}/{osl}", "on" if overlap else "off", num, f"{elapsed:.1f}", f"{tps:,.0f}",
                         f"{ref:,}" if ref else "-", f"{tps / ref:.0%}" if ref else "-"))  # fmt: skip
            notes.append(
                f"{isl}/{osl} overlap {rows[-1][1]}: {after.iteration - before.iteration} steps, "
                f"{after.preemptions - before.preemptions} pauses; {steps.summary(time.perf_counter())}"
            )
            print(rows[-1], notes[-1], sep="\n", flush=True)
    executor.shutdown()
    s = executor.stats()
    lines = [
        f"GPU: {torch.cuda.get_device_name()}; {args.model} shape, {args.dtype}{qname}; max_batch_size "
        f"{args.max_batch_size}, max_num_tokens {args.max_num_tokens}; KV cache {s.max_blocks} blocks of "
        f"{s.tokens_per_block} tokens; executor setup {setup:.1f} s",
        f"{'in/out':>10} {'overlap':>7} {'requests':>9} {'seconds':>8} {'out tok/s':>10} {'TRT-LLM':>8} {'ratio':>6}",
    ]
    lines += [f"{a:>10} {o:>7} {b:>9} {c:>8} {d:>10} {e:>8} {f:>6}" for a, o, b, c, d, e, f in rows]
    lines += notes
    text = "\n".join(lines)
    print(text)
    tag = "_decode_cfg" if args.decode_quant_config else ""  # a config comparison keeps both files
    Path(args.out, f"bench_throughput_{args.model}{qname}{tag}.txt").write_text(text + "\n")


if __name__ == "__main__":
    main()
