"""Factories for tests: tiny Hugging Face models (Llama, or any family) with random weights, a tokenizer
trained on the spot (both from `tensorrt_llm.tools.tiny_model`), and engines built from them. No downloads."""

import json
import os
import socket
from collections.abc import Callable
from pathlib import Path

from tensorrt_llm.tools.tiny_model import CORPUS, make_tiny_llama, make_tiny_model, tiny_llama_config, train_tokenizer

__all__ = [
    "CORPUS",
    "build_engine",
    "make_tiny_llama",
    "make_tiny_model",
    "read_json",
    "run_two_ranks",
    "end_rank",
    "tiny_llama_config",
    "train_tokenizer",
]


def build_engine(model_dir: Path | str, engine_dir: Path | str, dtype: str = "float32", **build) -> Path:
    """Builds through the real `trtllm-build` command line (in-process)."""
    from tensorrt_llm.commands.build import main

    args = ["--model_dir", str(model_dir), "--output_dir", str(engine_dir), "--dtype", dtype]
    build.setdefault("tokens_per_block", 8)
    build.setdefault("max_input_len", 128)
    build.setdefault("max_seq_len", 256)
    for k, v in build.items():
        args += [f"--{k}", str(v)]
    if main(args) != 0:
        raise RuntimeError(f"trtllm-build failed: {args}")
    return Path(engine_dir)


def read_json(path: Path | str) -> dict:
    return json.loads(Path(path).read_text())


def run_two_ranks(worker: Callable, *args, timeout: float = 180) -> list:
    """Runs `worker(rank, *args, port, queue)` in two spawned processes (a tensor-parallel pair: gloo on CPU,
    `port` free for its process group); returns what the two put on `queue`, in arrival order, once both
    have exited cleanly."""
    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=worker, args=(r, *args, port, queue)) for r in (0, 1)]
    for p in procs:
        p.start()
    results = [queue.get(timeout=timeout) for _ in procs]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0, f"a rank's process exited with {p.exitcode}"
    return results


def end_rank(queue) -> None:
    """Ends a spawned rank's process once its results are on `queue`: torch's gloo threads can abort the
    interpreter's own teardown (SIGABRT "terminate called without an active exception", after the work is
    done and the group destroyed; seen about once in five runs), which says nothing about what was tested."""
    queue.close()
    queue.join_thread()
    os._exit(0)
