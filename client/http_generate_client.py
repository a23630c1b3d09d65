#!/usr/bin/env python3
"""HTTP client of Triton's generate endpoints (`ensemble` or `tensorrt_llm_bls`):

    python client/http_generate_client.py -p "What is machine learning?" -o 20 [-S] [--model-name tensorrt_llm_bls]
    # the same as: curl -X POST localhost:8000/v2/models/ensemble/generate \\
    #     -d '{"text_input": "What is machine learning?", "max_tokens": 20, "bad_words": "", "stop_words": ""}'

Extra request fields go in as `--param key=json_value` (e.g. `--param temperature=0.7`).
"""

from __future__ import annotations

import argparse
import json
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator


def generate(url: str, model: str, body: dict, stream: bool, timeout: float = 600.0) -> Iterator[str]:
    """Yields the text pieces (one when not streaming). Raises RuntimeError with the server's error."""
    endpoint = f"{url}/v2/models/{model}/{'generate_stream' if stream else 'generate'}"
    req = urllib.request.Request(
        endpoint, data=json.dumps(body).encode(), method="POST", headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            if not stream:
                yield json.loads(r.read()).get("text_output", "")
                return
            for line in r:
                line = line.decode().strip()
                if not line.startswith("data:"):
                    continue
                event = json.loads(line[5:])
                if "error" in event:
                    raise RuntimeError(event["error"])
                yield event.get("text_output", "")
    except urllib.error.HTTPError as e:
        raise RuntimeError(f"HTTP {e.code}: {e.read().decode(errors='replace')}") from None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-u", "--url", default="http://localhost:8000")
    p.add_argument("--model-name", default="ensemble")
    p.add_argument("-p", "--prompt", default="What is machine learning?")
    p.add_argument("-o", "--output-len", type=int, default=20)
    p.add_argument("-S", "--streaming", action="store_true")
    p.add_argument("--stop-words", nargs="*", default=[])
    p.add_argument("--bad-words", nargs="*", default=[])
    p.add_argument("--param", action="append", default=[], help="key=json_value, added to the body")
    args = p.parse_args(argv)
    body = {
        "text_input": args.prompt,
        "max_tokens": args.output_len,
        "bad_words": args.bad_words or "",
        "stop_words": args.stop_words or "",
    }
    for kv in args.param:
        k, _, v = kv.partition("=")
        try:
            body[k] = json.loads(v)
        except ValueError:
            body[k] = v
    if args.streaming:
        body["stream"] = True
    try:
        for piece in generate(args.url, args.model_name, body, args.streaming):
            print(piece, end="" if args.streaming else "\n", flush=True)
    except RuntimeError as e:
        print(f"\nerror: {e}", file=sys.stderr)
        return 1
    if args.streaming:
        print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
