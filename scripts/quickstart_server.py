#!/usr/bin/env python3
"""One command from nothing to a running server on CPU: tiny model -> engine -> model repository -> Triton.

    python scripts/quickstart_server.py [--work_dir work_dirs/quickstart] [--http_port 8000] ...
    curl -X POST localhost:8000/v2/models/ensemble/generate \\
         -d '{"text_input": "What is machine learning?", "max_tokens": 20, "bad_words": "", "stop_words": ""}'

With `--model_dir` (a Hugging Face checkpoint with its tokenizer) it builds that model instead of the tiny one.
`make_model_repo` is also what the server tests use to fill the templates.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TEMPLATES = ROOT / "all_models" / "inflight_batcher_llm"
sys.path.insert(0, str(ROOT / "scripts"))
from fill_template import fill  # noqa: E402


def make_model_repo(
    dst: Path | str,
    engine_dir: Path | str,
    tokenizer_dir: Path | str,
    decoupled: bool = True,
    triton_max_batch_size: int = 64,
    max_queue_delay_microseconds: int = 0,
    bls_instance_count: int = 1,
    accumulate_tokens: bool = False,
    device: str = "cpu",
    extra: dict[str, str] | None = None,
) -> Path:
    """Copy the templates to `dst` and fill them (spec section 6 semantics, as the README does)."""
    dst = Path(dst)
    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(TEMPLATES, dst)
    common = {
        "triton_max_batch_size": str(triton_max_batch_size),
        "max_queue_delay_microseconds": str(max_queue_delay_microseconds),
        "max_queue_size": "0",
        "logits_datatype": "TYPE_FP32",
        "prompt_embedding_table_data_type": "TYPE_FP16",
    }
    values = {
        "preprocessing": {
            **common,
            "tokenizer_dir": str(tokenizer_dir),
            "preprocessing_instance_count": "1",
            "add_special_tokens": "true",
            "engine_dir": str(engine_dir),
        },
        "postprocessing": {
            **common,
            "tokenizer_dir": str(tokenizer_dir),
            "postprocessing_instance_count": "1",
            "skip_special_tokens": "true",
        },
        "tensorrt_llm": {
            **common,
            "triton_backend": "tensorrtllm",
            "decoupled_mode": str(decoupled).lower(),
            "batching_strategy": "inflight_fused_batching",
            "engine_dir": str(engine_dir),
            "encoder_input_features_data_type": "TYPE_FP16",
            "max_beam_width": "1",
            "batch_scheduler_policy": "guaranteed_no_evict",
            "exclude_input_in_output": "false",
            "cancellation_check_period_ms": "50",
            "stats_check_period_ms": "50",
            "kv_cache_free_gpu_mem_fraction": "0.9",
            "device": device,
        },
        "tensorrt_llm_bls": {
            **common,
            "decoupled_mode": str(decoupled).lower(),
            "bls_instance_count": str(bls_instance_count),
            "accumulate_tokens": str(accumulate_tokens).lower(),
            "tensorrt_llm_model_name": "tensorrt_llm",
            "tokenizer_dir": str(tokenizer_dir),
        },
        "ensemble": {"triton_max_batch_size": str(triton_max_batch_size), "logits_datatype": "TYPE_FP32"},
    }
    for model, vals in values.items():
        cfg = dst / model / "config.pbtxt"
        text = cfg.read_text()
        # fill_template insists every key appears in the file: pass each file only its own keys.
        vals = {k: v for k, v in {**vals, **(extra or {})}.items() if f"${{{k}}}" in text}
        # Escape ',' and ':' in values (paths may hold them).
        subst = ",".join(f"{k}:{v.replace(',', chr(92) + ',').replace(':', chr(92) + ':')}" for k, v in vals.items())
        cfg.write_text(fill(text, subst))
    return dst


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work_dir", default=str(ROOT / "work_dirs" / "quickstart"))
    p.add_argument("--model_dir", default=None, help="Hugging Face checkpoint (default: make a tiny Llama)")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--http_port", type=int, default=8000)
    p.add_argument("--grpc_port", type=int, default=8001)
    p.add_argument("--metrics_port", type=int, default=8002)
    p.add_argument(
        "--no-decoupled", dest="decoupled", action="store_false", help="non-decoupled tensorrt_llm (no streaming)"
    )
    args, launcher_args = p.parse_known_args(argv)

    work = Path(args.work_dir).resolve()
    work.mkdir(parents=True, exist_ok=True)
    model_dir = Path(args.model_dir).resolve() if args.model_dir else work / "hf_model"
    if args.model_dir is None and not (model_dir / "config.json").exists():
        from tensorrt_llm.tools.tiny_model import make_tiny_llama

        print(
            f"making a tiny Llama with a trained tokenizer in {model_dir}: random weights, so its answers are "
            "random text (--model_dir serves a real checkpoint)",
            flush=True,
        )
        make_tiny_llama(model_dir)
    engine_dir = work / "engine"
    if not (engine_dir / "config.json").exists():
        print(f"building the engine in {engine_dir}", flush=True)
        rc = subprocess.call(
            [
                sys.executable,
                "-m",
                "tensorrt_llm.commands.build",
                "--model_dir",
                str(model_dir),
                "--output_dir",
                str(engine_dir),
                "--dtype",
                args.dtype,
            ],
            cwd=ROOT,
        )
        if rc != 0:
            return rc
    repo = make_model_repo(work / "model_repo", engine_dir, model_dir, decoupled=args.decoupled, device=args.device)
    print(f"model repository: {repo}", flush=True)
    from launch_triton_server import main as launch

    return launch(
        [
            "--model_repo",
            str(repo),
            "--http_port",
            str(args.http_port),
            "--grpc_port",
            str(args.grpc_port),
            "--metrics_port",
            str(args.metrics_port),
            *launcher_args,
        ]
    )


if __name__ == "__main__":
    sys.exit(main())
