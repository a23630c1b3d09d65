#!/usr/bin/env python3
"""gRPC client of the text API (`ensemble` or `tensorrt_llm_bls`), flags of spec section 7:

    python client/end_to_end_grpc_client.py -p "What is machine learning?" -o 20 [-S] [--model-name tensorrt_llm_bls]

Streaming prints each `text_output` chunk as it arrives (`--overwrite-output-text` when the BLS sends
cumulative text, `accumulate_tokens`).
"""

from __future__ import annotations

import argparse
import json
import queue
import sys

import numpy as np


def _input(name: str, arr: np.ndarray, dtype: str):
    import tritonclient.grpc as g

    t = g.InferInput(name, list(arr.shape), dtype)
    t.set_data_from_numpy(arr)
    return t


def build_inputs(args: argparse.Namespace, prompt: str) -> list:
    ins = [
        _input("text_input", np.array([[prompt.encode()]], dtype=object), "BYTES"),
        _input("max_tokens", np.array([[args.output_len]], np.int32), "INT32"),
        _input("stream", np.array([[args.streaming]], bool), "BOOL"),
    ]
    if args.stop_words:
        ins.append(_input("stop_words", np.array([[w.encode() for w in args.stop_words]], dtype=object), "BYTES"))
    if args.bad_words:
        ins.append(_input("bad_words", np.array([[w.encode() for w in args.bad_words]], dtype=object), "BYTES"))
    opt = [
        ("beam_width", args.beam_width, np.int32, "INT32"),
        ("top_k", args.top_k, np.int32, "INT32"),
        ("top_p", args.top_p, np.float32, "FP32"),
        ("temperature", args.temperature, np.float32, "FP32"),
        ("repetition_penalty", args.repetition_penalty, np.float32, "FP32"),
        ("presence_penalty", args.presence_penalty, np.float32, "FP32"),
        ("frequency_penalty", args.frequency_penalty, np.float32, "FP32"),
        ("length_penalty", args.length_penalty, np.float32, "FP32"),
        ("end_id", args.end_id, np.int32, "INT32"),
        ("pad_id", args.pad_id, np.int32, "INT32"),
        ("random_seed", args.random_seed, np.uint64, "UINT64"),
    ]
    for name, v, npt, dt in opt:
        if v is not None:
            ins.append(_input(name, np.array([[v]], npt), dt))
    for flag in ("return_log_probs", "return_context_logits", "return_generation_logits", "exclude_input_in_output"):
        if getattr(args, flag):
            ins.append(_input(flag, np.array([[True]], bool), "BOOL"))
    return ins


def run(args: argparse.Namespace, prompt: str) -> tuple[str, dict]:
    """One request; returns the text (concatenated when streaming) and the last response's other outputs."""
    import tritonclient.grpc as g

    client = g.InferenceServerClient(args.url, verbose=args.verbose)
    results: queue.Queue = queue.Queue()
    client.start_stream(callback=lambda result, error: results.put((result, error)))
    client.async_stream_infer(
        args.model_name, build_inputs(args, prompt), request_id=args.request_id, enable_empty_final_response=True
    )
    text, extras = "", {}
    try:
        while True:
            result, error = results.get(timeout=args.timeout)
            if error is not None:
                raise RuntimeError(str(error))
            out = result.as_numpy("text_output")
            if out is not None:
                piece = out.reshape(-1)[0].decode("utf-8")
                text = piece if args.overwrite_output_text else text + piece
                if args.streaming:
                    print(piece, end="\n" if args.overwrite_output_text else "", flush=True)
                for name in ("cum_log_probs", "output_log_probs"):
                    v = result.as_numpy(name)
                    if v is not None:
                        extras[name] = v.tolist()
            if result.get_response().parameters["triton_final_response"].bool_param:
                break
    finally:
        client.stop_stream()
    return text, extras


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-u", "--url", default="localhost:8001")
    p.add_argument("-v", "--verbose", action="store_true")
    p.add_argument("-p", "--prompt", default="What is machine learning?", help="a string or a JSON list")
    p.add_argument("--model-name", default="ensemble", choices=None)
    p.add_argument("-o", "--output-len", type=int, default=100)
    p.add_argument("-S", "--streaming", action="store_true")
    p.add_argument("-b", "--beam-width", type=int, default=None)
    p.add_argument("-n", "--num-return-sequences", type=int, default=None)
    p.add_argument("--temperature", type=float, default=None)
    p.add_argument("--top-k", type=int, default=None)
    p.add_argument("--top-p", type=float, default=None)
    p.add_argument("--repetition-penalty", type=float, default=None)
    p.add_argument("--presence-penalty", type=float, default=None)
    p.add_argument("--frequency-penalty", type=float, default=None)
    p.add_argument("--length-penalty", type=float, default=None)
    p.add_argument("--random-seed", type=int, default=None)
    p.add_argument("--end-id", type=int, default=None)
    p.add_argument("--pad-id", type=int, default=None)
    p.add_argument("--request-id", default="")
    p.add_argument("--stop-words", nargs="*", default=[])
    p.add_argument("--bad-words", nargs="*", default=[])
    p.add_argument("--overwrite-output-text", action="store_true", help="chunks are cumulative (BLS)")
    p.add_argument("--return-log-probs", action="store_true")
    p.add_argument("--return-context-logits", action="store_true")
    p.add_argument("--return-generation-logits", action="store_true")
    p.add_argument("--exclude-input-in-output", action="store_true")
    p.add_argument("--check-outputs", action="store_true", help="exit 1 on an empty output")
    p.add_argument("--timeout", type=float, default=600.0)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    prompts = [args.prompt]
    if args.prompt.lstrip().startswith("["):
        prompts = json.loads(args.prompt)
    rc = 0
    for prompt in prompts:
        try:
            text, extras = run(args, prompt)
        except RuntimeError as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
        if args.streaming:
            print()
        else:
            print(text)
        if extras:
            print(json.dumps(extras), file=sys.stderr)
        if args.check_outputs and not text:
            rc = 1
    return rc


if __name__ == "__main__":
    sys.exit(main())
