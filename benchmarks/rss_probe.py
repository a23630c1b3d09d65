"""tritonserver's RSS, request kind by kind: which front-end path holds memory after its requests end.

    python benchmarks/rss_probe.py [--rounds 3] [--per_round 1600] [--tokens 8]

Starts the CPU quick-start server (tiny model), then sends rounds of identical sequential requests of one
kind to `tensorrt_llm` (HTTP `generate`, HTTP `generate_stream`, gRPC streaming) and prints tritonserver's
RSS after each round. A kind whose RSS climbs round after round keeps memory per request (docs/reliability.md).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import queue
import signal
import sys
from collections.abc import Generator
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.soak import rss_by_process, server_pid, start_quickstart  # noqa: E402

PORTS = (18400, 18401, 18402)
PROMPT = [1, 15, 27, 99]


def rss_mib(pid: int) -> float:
    return next(v for k, v in rss_by_process(pid).items() if k.startswith(f"{pid} ")) / 2**20


def http_rounds(path: str, body: dict, n: int) -> Generator[None, None, None]:
    c = http.client.HTTPConnection("localhost", PORTS[0])
    try:
        while True:
            for _ in range(n):
                c.request("POST", path, json.dumps(body), {"Content-Type": "application/json"})
                c.getresponse().read()
            yield
    finally:
        c.close()


def grpc_rounds(tokens: int, n: int) -> Generator[None, None, None]:
    import tritonclient.grpc as g

    def inputs():
        out = []
        for name, arr in (
            ("input_ids", np.array([PROMPT], np.int32)),
            ("input_lengths", np.array([[len(PROMPT)]], np.int32)),
            ("request_output_len", np.array([[tokens]], np.int32)),
            ("streaming", np.array([[True]])),
        ):
            t = g.InferInput(name, list(arr.shape), "BOOL" if arr.dtype == bool else "INT32")
            t.set_data_from_numpy(arr)
            out.append(t)
        return out

    c = g.InferenceServerClient(f"localhost:{PORTS[1]}")
    done: queue.Queue = queue.Queue()
    c.start_stream(callback=lambda result, error: done.put((result, error)))
    try:
        while True:
            for i in range(n):
                c.async_stream_infer("tensorrt_llm", inputs(), request_id=str(i), enable_empty_final_response=True)
                while True:
                    result, error = done.get()
                    if error is not None:
                        raise RuntimeError(error)
                    if result.get_response().parameters["triton_final_response"].bool_param:
                        break
            yield
    finally:
        c.stop_stream()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--per_round", type=int, default=1600)
    p.add_argument("--tokens", type=int, default=8)
    p.add_argument("--work", default="/tmp/rss_probe")
    args = p.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    body = {"input_ids": PROMPT, "input_lengths": len(PROMPT), "request_output_len": args.tokens}
    kinds = {
        "HTTP generate": lambda: http_rounds("/v2/models/tensorrt_llm/generate", body, args.per_round),
        "HTTP generate_stream": lambda: http_rounds(
            "/v2/models/tensorrt_llm/generate_stream", {**body, "streaming": True}, args.per_round
        ),
        "gRPC stream": lambda: grpc_rounds(args.tokens, args.per_round),
    }
    launcher = start_quickstart(work, PORTS)
    try:
        pid = server_pid(launcher)
        for kind, make in kinds.items():
            rounds = make()
            for r in range(args.rounds):
                before = rss_mib(pid)
                next(rounds)
                print(f"{kind}: round {r}: {args.per_round} requests, RSS {before:.1f} -> {rss_mib(pid):.1f} MiB")
            rounds.close()
    finally:
        os.killpg(launcher.pid, signal.SIGTERM)
        launcher.wait(60)


if __name__ == "__main__":
    main()
