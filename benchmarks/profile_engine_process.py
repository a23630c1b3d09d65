"""Where serving time goes between the engine and tritonserver: the engine process alone, driven over its
socket by a Python stand-in for the native backend, next to the executor in-process, same load.

    python benchmarks/profile_engine_process.py [--model llama3.2-1b] [--concurrency 1,64]
        [--python /tmp/venv/bin/python]   # the interpreter the server would start the engine with

Prints per concurrency: output tokens/s, mean inter-token gap, and the executor's steps per second, for
(a) the executor in this process (streaming callbacks) and (b) `python -m backend.engine_core` as the
backend starts it (RESPONSES frames read here). (b) slower than (a) means the engine process loses time;
(b) equal to (a) puts the rest of the server's gap in tritonserver, the HTTP front end or the client.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from backend import wire  # noqa: E402
from benchmarks.bench_serving import SHAPES, sampled, workload  # noqa: E402
from inflight_batcher import Executor, ExecutorConfig, Request, SamplingParams  # noqa: E402


def run_inprocess(executor: Executor, ids: list[list[int]], n: int, c: int) -> dict:
    sem, lock, done = threading.Semaphore(c), threading.Lock(), threading.Event()
    left, produced = [len(ids)], [0]

    def cb(out):
        with lock:
            produced[0] += len(out.new_tokens[0]) if out.new_tokens else 0
            if out.finished:
                left[0] -= 1
                if not left[0]:
                    done.set()
        if out.finished:
            sem.release()

    it0, t0 = executor.stats().iteration, time.perf_counter()
    for x in ids:
        sem.acquire()
        executor.enqueue(
            Request(x, max_new_tokens=n, streaming=True, sampling=SamplingParams(min_length=n), callback=cb)
        )
    done.wait()
    dt = time.perf_counter() - t0
    return {"tok/s": produced[0] / dt, "steps/s": (executor.stats().iteration - it0) / dt}


def run_process(
    python: str,
    engine_dir: Path,
    ids: list[list[int]],
    n: int,
    c: int,
    spy: Callable[[int], contextlib.AbstractContextManager[None]] | None = None,
) -> dict:
    ours, theirs = socket.socketpair()
    proc = subprocess.Popen(
        [python, "-m", "backend.engine_core", "--fd", str(theirs.fileno())],
        pass_fds=[theirs.fileno()],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    theirs.close()
    conn = wire.Connection(ours)
    cfg = {
        "model_transaction_policy": {"decoupled": True},
        "parameters": {
            "gpt_model_path": {"string_value": str(engine_dir)},
            "max_tokens_in_paged_kv_cache": {"string_value": "262144"},
            "stats_check_period_ms": {"string_value": "50"},
        },
    }
    conn.send(wire.CONFIG, json.dumps({"model_config": cfg}).encode())
    assert conn.recv()[0] == wire.READY

    def body(x):
        return {
            "input_ids": np.array([x], np.int32),
            "input_lengths": np.array([[len(x)]], np.int32),
            "request_output_len": np.array([[n]], np.int32),
            "min_length": np.array([[n]], np.int32),
            "streaming": np.array([[True]]),
        }

    results = {}
    for label, k in (("warm-up", 16), ("run", n)):
        with spy(proc.pid) if spy and label == "run" else contextlib.nullcontext():
            results[label] = _drive(conn, ids, body, k, c)
    conn.send(wire.SHUTDOWN, struct.pack("<d", 0.0))
    proc.wait(60)
    return results["run"]


def _drive(conn, ids, body, k, c) -> dict:
    next_i, live, produced, iters, frames = 0, 0, 0, [], 0
    t0 = time.perf_counter()
    while next_i < len(ids) or live:
        while live < c and next_i < len(ids):
            b = body(ids[next_i])
            b["request_output_len"][:] = k
            b["min_length"][:] = k
            conn.send(wire.REQUESTS, wire.encode_requests([(next_i + 1, "", b)]))
            next_i, live = next_i + 1, live + 1
        kind, payload = conn.recv()
        if kind == wire.RESPONSES:
            frames += 1
            for r in wire.decode_records(payload):
                produced += r["seq_lens"][0] if r["seq_lens"] else 0
                live -= bool(r["flags"] & wire.FINAL)
        elif kind == wire.METRICS:
            for line in bytes(payload).decode().splitlines():
                if "\titeration_counter\t" in line:
                    iters.append((time.perf_counter(), float(line.split("\t")[-1])))
    dt = time.perf_counter() - t0
    steps = (iters[-1][1] - iters[0][1]) / (iters[-1][0] - iters[0][0]) if len(iters) > 1 else float("nan")
    return {"tok/s": produced / dt, "steps/s": steps, "frames/s": frames / dt}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--model", default="llama3.2-1b", choices=SHAPES)
    p.add_argument("--concurrency", default="1,64")
    p.add_argument("--output-len", type=int, default=128)
    p.add_argument("--python", default=sys.executable)
    p.add_argument("--work", default="/tmp/profile_engine_process")
    p.add_argument("--py-spy", help="py-spy binary: sample both sides at the last concurrency")
    p.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", ".")))
    args = p.parse_args()
    from tensorrt_llm.builder import BuildConfig, build_engine
    from tensorrt_llm.runtime import Engine
    from tensorrt_llm.tools.tiny_model import train_tokenizer

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    tok = train_tokenizer(work / "tokenizer")
    build = BuildConfig(max_batch_size=256, max_input_len=1024, max_seq_len=2048, max_num_tokens=8192)
    build_engine(work / "engine", hf_config=SHAPES[args.model], dtype="float16", build=build, device="cuda")
    levels = [int(c) for c in args.concurrency.split(",")]
    rows = {}
    executor = Executor(
        Engine.from_dir(work / "engine", device="cuda"), ExecutorConfig(max_tokens_in_paged_kv_cache=262144)
    )
    for c in levels:
        prompts, _ = workload(max(16, 4 * c), 128, args.output_len)
        ids = [tok.encode(t) for t in prompts]
        run_inprocess(executor, ids, 16, c)
        with sampled(args.py_spy if c == levels[-1] else None, os.getpid(), args.out, f"pyspy_inprocess_c{c}"):
            rows[c] = {"in-process": run_inprocess(executor, ids, args.output_len, c)}
    executor.shutdown()
    del executor
    torch.cuda.empty_cache()
    for c in levels:
        prompts, _ = workload(max(16, 4 * c), 128, args.output_len)
        ids = [tok.encode(t) for t in prompts]
        spy = None
        if args.py_spy and c == levels[-1]:
            spy = lambda pid, c=c: sampled(args.py_spy, pid, args.out, f"pyspy_engine_process_c{c}")  # noqa: E731
        rows[c]["engine process"] = run_process(args.python, work / "engine", ids, args.output_len, c, spy)
    print(f"GPU: {torch.cuda.get_device_name()}; {args.model} shape fp16; engine process python {args.python}")
    for c, r in rows.items():
        for k, v in r.items():
            print(f"c={c:<4} {k:<15} " + "  ".join(f"{m} {x:,.0f}" for m, x in v.items()))


if __name__ == "__main__":
    main()
