"""`python -m openai_frontend`: the OpenAI-compatible API against a running tritonserver."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from fastapi import FastAPI


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m openai_frontend", description=__doc__)
    p.add_argument("--triton_grpc_url", default="localhost:8001", help="tritonserver's gRPC endpoint")
    p.add_argument(
        "--triton_metrics_url",
        default=None,
        help="tritonserver's metrics, served again at /metrics (default: port 8002 of the gRPC host)",
    )
    p.add_argument(
        "--tokenizer_dir",
        default=None,
        help="tokenizer directory (default: the one in the repository's preprocessing / BLS config; needed "
        "when that path is not on this machine, or for a repository without text models)",
    )
    p.add_argument(
        "--default_max_tokens",
        type=int,
        default=None,
        help="tokens a chat request without max_tokens may generate (default: up to the engine's max_seq_len, "
        "as OpenAI; the guaranteed_no_evict scheduler reserves KV blocks for all of them)",
    )
    p.add_argument(
        "--enable_prompt_tokens_details",
        "--enable-prompt-tokens-details",
        action="store_true",
        help="usage reports prompt_tokens_details.cached_tokens (as vLLM): the prompt tokens the engine found in "
        "its prefix cache (enable_kv_cache_reuse); every request then asks for the engine's perf metrics",
    )
    p.add_argument("--host", default="0.0.0.0")
    p.add_argument("--port", type=int, default=9000)
    p.add_argument(
        "--workers",
        type=int,
        default=1,
        help="front-end processes sharing the port (as vLLM's --api-server-count): one Python process "
        "streamed ~7,000 tokens/s at most (H200, 256 streams), 88 %% of the engine",
    )
    p.add_argument("--startup_timeout", type=float, default=300.0, help="seconds to wait for tritonserver to be ready")
    p.add_argument("--log_level", default="info", choices=["debug", "info", "warning", "error"])
    p.add_argument(
        "--access_log",
        action="store_true",
        help="log every HTTP request (off: a line per request costs CPU under load)",
    )
    args = p.parse_args(argv)
    if args.triton_metrics_url is None:
        host = args.triton_grpc_url.rsplit(":", 1)[0] if ":" in args.triton_grpc_url else args.triton_grpc_url
        args.triton_metrics_url = f"http://{host}:8002/metrics"
    return args


ARGS_ENV = "OPENAI_FRONTEND_ARGS"  # the parsed arguments, for each worker process's app_factory


def app_factory() -> FastAPI:
    """The app of one worker process, from the arguments its parent parsed (uvicorn starts the workers)."""
    import json

    from openai_frontend.server import FrontEnd, create_app

    args = argparse.Namespace(**json.loads(os.environ[ARGS_ENV]))
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s openai_frontend %(levelname)s %(message)s")
    fe = FrontEnd(
        args.triton_grpc_url,
        args.triton_metrics_url,
        args.tokenizer_dir,
        args.default_max_tokens,
        args.enable_prompt_tokens_details,
    )
    return create_app(fe, args.startup_timeout)


def main(argv: list[str] | None = None) -> int:
    import json

    import uvicorn

    args = parse_args(argv)
    if args.workers < 1:
        raise SystemExit(f"--workers {args.workers}: must be at least 1")
    os.environ[ARGS_ENV] = json.dumps(vars(args))
    # One code path for one or many workers: uvicorn calls the factory in each (in this process for one).
    uvicorn.run(
        "openai_frontend.__main__:app_factory",
        factory=True,
        workers=args.workers,
        host=args.host,
        port=args.port,
        log_level=args.log_level,
        access_log=args.access_log,
        timeout_graceful_shutdown=5,  # a stop (SIGTERM) waits at most this long for open streams
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
