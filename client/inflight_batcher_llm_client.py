#!/usr/bin/env python3
"""gRPC client of the `tensorrt_llm` model (token ids in, token ids out), tokenizing locally.

Flags follow the TensorRT-LLM backend's `inflight_batcher_llm_client.py` (spec section 7):

    python client/inflight_batcher_llm_client.py --tokenizer-dir TOK --text "Hello" --request-output-len 20 -S
    python client/inflight_batcher_llm_client.py ... -S --stop-after-ms 200 [--stop-via-request-cancel]

Streaming prints text as it arrives (decoded incrementally, so multi-byte characters stay whole).
"""

from __future__ import annotations

import argparse
import contextlib
import queue
import sys
import time
import uuid
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def _input(name: str, arr: np.ndarray, dtype: str):
    import tritonclient.grpc as g

    t = g.InferInput(name, list(arr.shape), dtype)
    t.set_data_from_numpy(arr)
    return t


def build_inputs(args: argparse.Namespace, ids: list[int]) -> list:
    """The `tensorrt_llm` inputs of one request (batch 1)."""
    ins = [
        _input("input_ids", np.array([ids], np.int32), "INT32"),
        _input("input_lengths", np.array([[len(ids)]], np.int32), "INT32"),
        _input("request_output_len", np.array([[args.request_output_len]], np.int32), "INT32"),
        _input("streaming", np.array([[args.streaming]], bool), "BOOL"),
        _input("beam_width", np.array([[args.beam_width]], np.int32), "INT32"),
        _input("runtime_top_k", np.array([[args.top_k]], np.int32), "INT32"),
        _input("runtime_top_p", np.array([[args.top_p]], np.float32), "FP32"),
        _input("temperature", np.array([[args.temperature]], np.float32), "FP32"),
        _input("repetition_penalty", np.array([[args.repetition_penalty]], np.float32), "FP32"),
        _input("presence_penalty", np.array([[args.presence_penalty]], np.float32), "FP32"),
        _input("frequency_penalty", np.array([[args.frequency_penalty]], np.float32), "FP32"),
        _input("len_penalty", np.array([[args.length_penalty]], np.float32), "FP32"),
        _input("min_length", np.array([[args.min_length]], np.int32), "INT32"),
    ]
    if args.end_id is not None:
        ins.append(_input("end_id", np.array([[args.end_id]], np.int32), "INT32"))
    if args.pad_id is not None:
        ins.append(_input("pad_id", np.array([[args.pad_id]], np.int32), "INT32"))
    if args.random_seed is not None:
        ins.append(_input("random_seed", np.array([[args.random_seed]], np.uint64), "UINT64"))
    for flag in ("return_log_probs", "return_context_logits", "return_generation_logits", "exclude_input_in_output"):
        if getattr(args, flag):
            ins.append(_input(flag, np.array([[True]], bool), "BOOL"))
    return ins


def stop_inputs(ids: list[int]) -> list:
    """A stop request: same request id, `stop=true`, dummy ids, zero output length."""
    return [
        _input("input_ids", np.array([ids[:1]], np.int32), "INT32"),
        _input("input_lengths", np.array([[1]], np.int32), "INT32"),
        _input("request_output_len", np.array([[0]], np.int32), "INT32"),
        _input("stop", np.array([[True]], bool), "BOOL"),
    ]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-u", "--url", default="localhost:8001")
    p.add_argument("-v", "--verbose", action="store_true")
    p.add_argument("--model-name", default="tensorrt_llm")
    p.add_argument("--text", default="Born in north-east France, Soyer trained as a")
    p.add_argument("--input-tokens-csv", default="", help="token ids instead of --text")
    p.add_argument("--tokenizer-dir", "--tokenizer_dir", dest="tokenizer_dir", required=True)
    p.add_argument(
        "--tokenizer-type",
        "--tokenizer_type",
        dest="tokenizer_type",
        default="auto",
        choices=["auto", "t5", "llama"],
        help="kept for compatibility: always AutoTokenizer",
    )
    p.add_argument("--request-output-len", type=int, default=16)
    p.add_argument("-S", "--streaming", action="store_true")
    p.add_argument("-b", "--beam-width", type=int, default=1)
    p.add_argument("-n", "--num-return-sequences", type=int, default=1)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=1)
    p.add_argument("--top-p", type=float, default=0.0)
    p.add_argument("--repetition-penalty", type=float, default=1.0)
    p.add_argument("--presence-penalty", type=float, default=0.0)
    p.add_argument("--frequency-penalty", type=float, default=0.0)
    p.add_argument("--length-penalty", type=float, default=1.0)
    p.add_argument("--min-length", type=int, default=0)
    p.add_argument("--random-seed", type=int, default=None)
    p.add_argument("--end-id", type=int, default=None)
    p.add_argument("--pad-id", type=int, default=None)
    p.add_argument("--stop-after-ms", type=int, default=0, help="stop the request after this long")
    p.add_argument(
        "--stop-via-request-cancel",
        action="store_true",
        help="stop by gRPC cancellation instead of a `stop` request with the same id",
    )
    p.add_argument("--request-id", "--request_id", dest="request_id", default="")
    p.add_argument("--exclude-input-in-output", action="store_true")
    p.add_argument("--return-log-probs", action="store_true")
    p.add_argument("--return-context-logits", action="store_true")
    p.add_argument("--return-generation-logits", action="store_true")
    p.add_argument("-t", "--stream-timeout", type=float, default=None)
    p.add_argument("--check-output", action="store_true", help="exit 1 if no token came back")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import tritonclient.grpc as g
    from transformers import AutoTokenizer

    from backend.detokenizer import IncrementalDetokenizer, decode

    tok = AutoTokenizer.from_pretrained(args.tokenizer_dir, legacy=False, local_files_only=True)
    ids = [int(x) for x in args.input_tokens_csv.split(",")] if args.input_tokens_csv else tok.encode(args.text)
    request_id = args.request_id or str(uuid.uuid4().int % (1 << 63))
    client = g.InferenceServerClient(args.url, verbose=args.verbose)
    results: queue.Queue = queue.Queue()
    client.start_stream(callback=lambda result, error: results.put((result, error)), stream_timeout=args.stream_timeout)
    client.async_stream_infer(
        args.model_name, build_inputs(args, ids), request_id=request_id, enable_empty_final_response=True
    )
    t0 = time.monotonic()
    stop_at = t0 + args.stop_after_ms / 1000.0 if args.stop_after_ms > 0 else None
    stopped = False
    finals_needed, finals = 1, 0  # a stop request (same id, same stream) adds its own final response
    detok = IncrementalDetokenizer(tok)
    tokens: list[int] = []
    rc = 0
    while True:
        timeout = max(0.0, stop_at - time.monotonic()) if (stop_at and not stopped) else None
        try:
            result, error = results.get(timeout=timeout)
        except queue.Empty:
            stopped = True
            if args.stop_via_request_cancel:
                print("\n[cancelling the request]", file=sys.stderr)
                client.stop_stream(cancel_requests=True)
                break
            print("\n[sending a stop request]", file=sys.stderr)
            client.async_stream_infer(
                args.model_name, stop_inputs(ids), request_id=request_id, enable_empty_final_response=True
            )
            finals_needed += 1
            continue
        if error is not None:
            print(f"\nerror: {error}", file=sys.stderr)
            rc = 1
            break
        out = result.as_numpy("output_ids")
        final = result.get_response().parameters["triton_final_response"].bool_param
        if out is not None and out.size:
            new = out[0, 0, : int(result.as_numpy("sequence_length")[0, 0])].tolist()
            tokens += new
            if args.streaming:
                print(detok.add(new), end="", flush=True)
        if final:
            finals += 1
            if finals >= finals_needed:
                break
    if args.streaming:
        print(detok.finish(), flush=True)
    else:
        print(decode(tok, tokens))
    print(f"[{len(tokens)} tokens in {time.monotonic() - t0:.3f} s]", file=sys.stderr)
    with contextlib.suppress(Exception):  # already stopped by a cancellation
        client.stop_stream()
    if args.check_output and not tokens:
        rc = 1
    return rc


if __name__ == "__main__":
    sys.exit(main())
