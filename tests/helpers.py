"""Factories for tests: tiny Hugging Face models (Llama, or any family) with random weights, a tokenizer
trained on the spot (both from `tensorrt_llm.tools.tiny_model`), and engines built from them. No downloads."""

import json
from pathlib import Path

from tensorrt_llm.tools.tiny_model import CORPUS, make_tiny_llama, make_tiny_model, tiny_llama_config, train_tokenizer

__all__ = [
    "CORPUS",
    "build_engine",
    "make_tiny_llama",
    "make_tiny_model",
    "read_json",
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
