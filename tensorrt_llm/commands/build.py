"""trtllm-build: a Hugging Face checkpoint directory → an engine directory."""

import argparse
import json
import sys
import time
from pathlib import Path

from tensorrt_llm._utils import DTYPE_NAMES
from tensorrt_llm.builder import BuildConfig, build_engine, read_hf_config
from tensorrt_llm.mapping import Mapping

_ALWAYS = "accepted for compatibility: this engine always {}"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="trtllm-build", description=__doc__)
    src = p.add_argument_group("source")
    src.add_argument("--model_dir", "--checkpoint_dir", help="Hugging Face checkpoint directory")
    src.add_argument(
        "--model_config",
        help="Hugging Face config.json: build with random weights (benchmarks), no checkpoint",
    )
    p.add_argument("--output_dir", required=True, help="engine directory to write")
    p.add_argument("--dtype", default="float16", choices=DTYPE_NAMES)
    p.add_argument("--world_size", type=int, default=None, help="ranks (= tp_size * pp_size)")
    p.add_argument("--tp_size", type=int, default=None, help="tensor parallel ranks (default: world_size)")
    p.add_argument("--pp_size", type=int, default=1, help="pipeline parallel ranks (not built yet: 1)")
    p.add_argument("--max_batch_size", type=int, default=8)
    p.add_argument("--max_input_len", type=int, help="longest prompt (default: min(1024, max positions))")
    p.add_argument("--max_output_len", type=int, default=None, help="max_seq_len = max_input_len + this")
    p.add_argument("--max_seq_len", type=int, default=None, help="prompt + output tokens of one sequence")
    p.add_argument("--max_num_tokens", type=int, default=8192, help="tokens of one forward step")
    p.add_argument("--tokens_per_block", type=int, default=64, help="KV cache block size (a power of two)")
    p.add_argument("--max_beam_width", type=int, default=1)
    p.add_argument(
        "--device",
        default="cpu",
        help="cuda: time kernel choices on this GPU and keep them in the engine (and make random weights there)",
    )
    compat = p.add_argument_group("TensorRT-LLM flags (the engine always does these)")
    compat.add_argument("--use_gpt_attention_plugin", nargs="?", const="auto", metavar="DTYPE",
                        help=_ALWAYS.format("uses its fused paged-attention kernels"))  # fmt: skip
    compat.add_argument("--use_gemm_plugin", nargs="?", const="auto", metavar="DTYPE",
                        help=_ALWAYS.format("runs GEMMs in the engine dtype through cuBLAS"))  # fmt: skip
    compat.add_argument("--remove_input_padding", action="store_true", help=_ALWAYS.format("packs tokens"))
    compat.add_argument("--use_inflight_batching", action="store_true",
                        help=_ALWAYS.format("supports in-flight batching"))  # fmt: skip
    compat.add_argument("--paged_kv_cache", nargs="?", const="enable", help=_ALWAYS.format("pages its KV cache"))
    return p.parse_args(argv)


def _try_read(model_dir: str) -> dict:
    try:
        return read_hf_config(model_dir)
    except (OSError, ValueError):
        return {}  # build_engine reports the problem with the directory


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        hf_config = None
        if args.model_dir is None:
            if args.model_config is None:
                raise ValueError("give --model_dir (a checkpoint) or --model_config (random weights)")
            hf_config = json.loads(Path(args.model_config).read_text())
        max_pos = (hf_config or _try_read(args.model_dir)).get("max_position_embeddings", 2048)
        world = args.world_size or (args.tp_size or 1) * args.pp_size
        mapping = Mapping(world, args.tp_size or world // args.pp_size, args.pp_size)
        max_input_len = args.max_input_len or min(1024, max_pos)
        # As TensorRT-LLM: without --max_output_len / --max_seq_len, sequences may fill the model's positions.
        max_seq_len = args.max_seq_len or (
            max_input_len + args.max_output_len if args.max_output_len else max(max_pos, max_input_len)
        )
        build = BuildConfig(
            max_batch_size=args.max_batch_size,
            max_input_len=max_input_len,
            max_seq_len=max_seq_len,
            max_num_tokens=max(args.max_num_tokens, max_input_len),
            tokens_per_block=args.tokens_per_block,
            max_beam_width=args.max_beam_width,
        )
        plugins = {k: getattr(args, k) for k in ("use_gpt_attention_plugin", "use_gemm_plugin") if getattr(args, k)}
        t0 = time.perf_counter()
        cfg = build_engine(args.output_dir, args.model_dir, hf_config, args.dtype, mapping, build, plugins, args.device)
    except (ValueError, FileNotFoundError, NotImplementedError) as e:
        print(f"trtllm-build: error: {e}", file=sys.stderr)
        return 2
    print(
        f"built {cfg.architecture} engine ({cfg.dtype}, {mapping.world_size} rank(s)) in "
        f"{time.perf_counter() - t0:.1f} s → {args.output_dir}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
