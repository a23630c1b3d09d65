"""trtllm-build: a Hugging Face checkpoint directory → an engine directory."""

import argparse
import json
import sys
import time
from pathlib import Path

from tensorrt_llm._utils import DTYPE_NAMES
from tensorrt_llm.builder import BuildConfig, CalibConfig, build_engine, read_hf_config
from tensorrt_llm.mapping import Mapping
from tensorrt_llm.quantization import KV_CACHE_QUANT_ALGOS, QUANT_ALGOS, QuantConfig

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
    q = p.add_argument_group("quantization (TensorRT-LLM's names; config.json keeps the mode)")
    q.add_argument("--quant_algo", choices=QUANT_ALGOS, help="weights (and activations) of every linear layer")
    q.add_argument("--kv_cache_quant_algo", choices=KV_CACHE_QUANT_ALGOS, help="what the paged KV cache stores")
    q.add_argument(
        "--use_weight_only", action="store_true", help="weight-only quantization (= --quant_algo W8A16/W4A16)"
    )
    q.add_argument("--weight_only_precision", choices=("int8", "int4"), default="int8")
    q.add_argument("--group_size", type=int, default=128, help="int4: input features per scale")
    q.add_argument("--enable_fp8", action="store_true", help="= --quant_algo FP8 (static per-tensor scales)")
    q.add_argument("--fp8_kv_cache", action="store_true", help="= --kv_cache_quant_algo FP8")
    q.add_argument("--int8_kv_cache", action="store_true", help="= --kv_cache_quant_algo INT8")
    q.add_argument("--use_smooth_quant", action="store_true", help="SmoothQuant W8A8 INT8 (calibrated)")
    q.add_argument("--smoothquant", type=float, default=0.5, metavar="ALPHA", help="SmoothQuant migration strength")
    q.add_argument("--per_token", action="store_true", help="SmoothQuant: dynamic per-token activation scales")
    q.add_argument("--per_channel", action="store_true", help="SmoothQuant: per-channel weight scales")
    q.add_argument("--exclude_modules", nargs="*", default=["lm_head"], help="linear layers kept in float")
    q.add_argument("--calib_dataset", help="calibration text file (default: the standard library's help text)")
    q.add_argument("--calib_size", type=int, default=64, help="calibration samples")
    q.add_argument("--calib_max_seq_length", type=int, default=512, help="tokens per calibration sample")
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


def quant_config(args: argparse.Namespace) -> QuantConfig:
    """The quantization the flags ask for: `--quant_algo` / `--kv_cache_quant_algo`, or the seed-era
    spellings of the same modes (which must not contradict them)."""
    algo, kv = args.quant_algo, args.kv_cache_quant_algo
    implied = []
    if args.use_weight_only:
        implied.append(("--use_weight_only", "W8A16" if args.weight_only_precision == "int8" else "W4A16"))
    if args.enable_fp8:
        implied.append(("--enable_fp8", "FP8"))
    if args.use_smooth_quant:  # TensorRT-LLM's names for the four combinations
        weights = "PER_CHANNEL" if args.per_channel else "PER_TENSOR"
        acts = "_PER_TOKEN_PLUGIN" if args.per_token else ("" if args.per_channel else "_PLUGIN")
        implied.append(("--use_smooth_quant", f"W8A8_SQ_{weights}{acts}"))
    for flag, a in implied:
        if algo not in (None, a):
            raise ValueError(f"{flag} asks for {a}, but the other flags ask for {algo}")
        algo = a
    for flag, k in (("--fp8_kv_cache", "FP8"), ("--int8_kv_cache", "INT8")):
        if getattr(args, flag[2:]):
            if kv not in (None, k):
                raise ValueError(f"{flag} asks for a {k} KV cache, but the other flags ask for {kv}")
            kv = k
    return QuantConfig(algo, kv, args.group_size, tuple(args.exclude_modules), args.smoothquant)


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
        quant = quant_config(args)
        calib = CalibConfig(args.calib_dataset, args.calib_size, args.calib_max_seq_length)
        cfg = build_engine(
            args.output_dir, args.model_dir, hf_config, args.dtype, mapping, build, plugins, args.device, quant, calib
        )
    except (ValueError, FileNotFoundError, NotImplementedError) as e:
        print(f"trtllm-build: error: {e}", file=sys.stderr)
        return 2
    q = cfg.quantization
    mode = "".join(f", {a}" for a in (q.quant_algo, q.kv_cache_quant_algo and f"{q.kv_cache_quant_algo} KV cache") if a)
    print(
        f"built {cfg.architecture} engine ({cfg.dtype}{mode}, {mapping.world_size} rank(s)) in "
        f"{time.perf_counter() - t0:.1f} s → {args.output_dir}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
