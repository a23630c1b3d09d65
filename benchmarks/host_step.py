"""The executor's host work per step, alone: the real scheduler, block manager, step building, sampling
bookkeeping and output delivery around an engine whose forward pass is replaced by zero logits, so that
nothing but host work is timed (on CPU; on a GPU the same host work overlaps the device's step).

    python benchmarks/host_step.py [--batch 64,256] [--py-spy .venv/bin/py-spy]

Prints per batch size: steps/s and host µs per step and per row, over the generation phase of one batch of
streaming requests (prompt 128 tokens, 128 new); with `--py-spy`, the executor thread's functions that take
the most time (inclusive share of its samples). Issue 13's target: at batch 256 on the 1B shape the host
work per step costs less than the GPU step, so that overlapped scheduling hides it.
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.bench_serving import sampled, top_functions  # noqa: E402
from inflight_batcher import Executor, ExecutorConfig, Request, SamplingParams  # noqa: E402
from tensorrt_llm.runtime import Engine, KVCachePool, StepInput  # noqa: E402


def null_forward(engine: Engine) -> Callable[[StepInput, KVCachePool], torch.Tensor]:
    """Zero logits [N, V] for the step's N sampled rows: the host work around the model, not the model."""
    vocab = engine.config.model.vocab_size

    def forward(step, kv):
        return torch.zeros(step.logits_indices.shape[0], vocab)

    return forward


def run(engine_dir: Path, batch: int, prompt: int, new: int, rounds: int, py_spy: str | None, out: Path) -> dict:
    engine = Engine.from_dir(engine_dir, device="cpu")
    engine.forward = null_forward(engine)
    kv_tokens = batch * (prompt + new + 16)
    steps_at: list[float] = []  # when each step's outputs were delivered: the gaps are the step times
    ex = Executor(
        engine,
        ExecutorConfig(max_batch_size=batch, max_tokens_in_paged_kv_cache=kv_tokens),
        on_outputs=lambda outs: steps_at.append(time.perf_counter()),
    )
    prompts = [[3 + (i * 7 + j) % 200 for j in range(prompt)] for i in range(batch)]
    out.mkdir(parents=True, exist_ok=True)
    gaps, total_t, total_steps = [], 0.0, 0
    with sampled(py_spy, os.getpid(), out, f"host_step_b{batch}"):  # (py-spy sees the prompts' steps too)
        for _ in range(rounds):
            done, lock, left = threading.Event(), threading.Lock(), [batch]

            def cb(o, done=done, lock=lock, left=left):
                if o.finished:
                    with lock:
                        left[0] -= 1
                        if not left[0]:
                            done.set()

            it_start = ex.stats().iteration
            ex.enqueue_batch([Request(p, max_new_tokens=new, streaming=True, sampling=SamplingParams(min_length=new),
                                      callback=cb) for p in prompts])  # fmt: skip
            while not done.is_set():  # time the generation phase: from the first step without a prompt in it
                st = ex.stats()
                if st.iteration > it_start and st.context_requests == 0 and st.generation_requests:
                    break
                time.sleep(0.0005)
            it0, t0, first = ex.stats().iteration, time.perf_counter(), len(steps_at)
            done.wait()
            total_t += time.perf_counter() - t0
            total_steps += ex.stats().iteration - it0
            gaps += [b - a for a, b in zip(steps_at[first:], steps_at[first + 1 :], strict=False)]
    ex.shutdown()
    gaps.sort()
    pct = lambda q: gaps[min(len(gaps) - 1, int(q * len(gaps)))] * 1e3  # noqa: E731
    return {"steps/s": total_steps / total_t, "us/step": total_t / total_steps * 1e6,
            "us/row": total_t / total_steps / batch * 1e6, "step p50 ms": pct(0.5), "p99 ms": pct(0.99),
            "max ms": gaps[-1] * 1e3}  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--batch", default="64,256")
    p.add_argument("--prompt", type=int, default=128)
    p.add_argument("--new", type=int, default=128)
    p.add_argument("--rounds", type=int, default=4, help="batches run one after another per batch size")
    p.add_argument("--gc-freeze", action="store_true", help="gc.freeze() first, as the engine process does")
    p.add_argument("--py-spy", default=None, metavar="BIN", help="sample the executor thread with py-spy")
    p.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "/tmp")))
    args = p.parse_args()
    from tensorrt_llm.tools.tiny_model import make_tiny_llama
    from tests.helpers import build_engine

    work = Path(tempfile.mkdtemp(prefix="host_step_"))
    make_tiny_llama(work / "hf")
    build_engine(work / "hf", work / "engine", max_batch_size=256, max_input_len=256, max_seq_len=512,
                 max_num_tokens=16384, tokens_per_block=64)  # fmt: skip
    for b in (int(x) for x in args.batch.split(",")):
        if args.gc_freeze:
            gc.collect()
            gc.freeze()
        r = run(work / "engine", b, args.prompt, args.new, args.rounds, args.py_spy, args.out)
        print(f"batch {b:>4}: " + "  ".join(f"{k} {v:,.1f}" for k, v in r.items()), flush=True)
        if args.py_spy:
            print("\n".join(top_functions(args.out / f"host_step_b{b}_gil.txt")), flush=True)


if __name__ == "__main__":
    main()
