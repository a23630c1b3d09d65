#!/usr/bin/env python3
"""Load generator for the streaming text API (`generate_stream` of `ensemble` or `tensorrt_llm_bls`).

    python client/benchmark_serving.py --num-requests 64 --concurrency 8 --input-len 32 --output-len 64
    python client/benchmark_serving.py --num-requests 64 --request-rate 4 --input-len 32 --input-stdev 8 ...

Reports time to first token (TTFT), inter-token latency (ITL, between streamed chunks), end-to-end latency
(p50 / p90 / p99 and mean), request throughput and output-token throughput. Requests use
`exclude_input_in_output` and `min_length = output_len` so the output length is what was asked for (the
model may otherwise stop at its end id): output tokens are counted as the lengths asked for, or, with
`--tokenizer-dir`, by re-tokenizing the output text. Not by chunks: a streamed chunk usually carries one
token, but several when the engine model merges a request's queued tokens under load.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import aiohttp

WORDS = [
    "the",
    "of",
    "and",
    "to",
    "in",
    "is",
    "that",
    "for",
    "it",
    "as",
    "with",
    "was",
    "on",
    "be",
    "by",
    "at",
    "this",
    "from",
    "or",
    "an",
    "are",
    "machine",
    "learning",
    "model",
    "data",
    "server",
    "request",
    "token",
    "batch",
    "stream",
    "text",
    "GPU",
    "inference",
]


@dataclass
class Result:
    ok: bool
    ttft: float = 0.0
    latency: float = 0.0
    itl: list[float] = field(default_factory=list)
    chunks: int = 0
    text: str = ""
    error: str = ""
    asked: int = 0  # output tokens asked for (max_tokens = min_length)


def percentile(xs: list[float], q: float) -> float:
    if not xs:
        return float("nan")
    xs = sorted(xs)
    k = (len(xs) - 1) * q / 100.0
    lo, hi = int(k), min(int(k) + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def make_lengths(n: int, mean: int, stdev: float, rng: random.Random) -> list[int]:
    return [max(1, round(rng.gauss(mean, stdev))) if stdev > 0 else mean for _ in range(n)]


async def sse_events(session: aiohttp.ClientSession, url: str, body: dict) -> AsyncIterator[dict]:
    """POSTs `body` to a generate_stream (or OpenAI streaming) endpoint and yields each event as a dict.
    Raises RuntimeError on an HTTP error or an error event (the message is the server's)."""
    async with session.post(url, json=body) as r:
        if r.status != 200:
            raise RuntimeError(f"HTTP {r.status}: {(await r.text())[:200]}")
        async for raw in r.content:
            line = raw.decode().strip()
            if not line.startswith("data:"):
                continue
            if line[5:].strip() == "[DONE]":  # the OpenAI stream's end
                return
            event = json.loads(line[5:])
            if "error" in event:
                raise RuntimeError(event["error"])
            yield event


async def one_request(session: aiohttp.ClientSession, url: str, body: dict) -> Result:
    t0 = time.perf_counter()
    last = None
    res = Result(ok=False)
    pieces = []
    try:
        async for event in sse_events(session, url, body):
            now = time.perf_counter()
            if last is None:
                res.ttft = now - t0
            else:
                res.itl.append(now - last)
            last = now
            res.chunks += 1
            pieces.append(event.get("text_output", ""))
    except Exception as e:  # a failed request is counted, not fatal
        res.error = str(e) if isinstance(e, RuntimeError) else repr(e)
        return res
    res.latency = time.perf_counter() - t0
    res.text = "".join(pieces)
    res.ok = True
    return res


async def run(args: argparse.Namespace) -> dict:
    import aiohttp

    rng = random.Random(args.seed)
    in_lens = make_lengths(args.num_requests, args.input_len, args.input_stdev, rng)
    out_lens = make_lengths(args.num_requests, args.output_len, args.output_stdev, rng)
    prompts = [" ".join(rng.choice(WORDS) for _ in range(n)) for n in in_lens]
    url = f"{args.url}/v2/models/{args.model_name}/generate_stream"
    sem = asyncio.Semaphore(args.concurrency if args.concurrency > 0 else args.num_requests)
    timeout = aiohttp.ClientTimeout(total=args.timeout)

    async with aiohttp.ClientSession(timeout=timeout) as session:

        async def task(i: int) -> Result:
            async with sem:
                body = {
                    "text_input": prompts[i],
                    "max_tokens": out_lens[i],
                    "min_length": out_lens[i],
                    "stream": True,
                    "exclude_input_in_output": True,
                }
                res = await one_request(session, url, body)
                res.asked = out_lens[i]
                return res

        t0 = time.perf_counter()
        tasks = []
        for i in range(args.num_requests):
            tasks.append(asyncio.create_task(task(i)))
            if args.request_rate > 0:  # Poisson arrivals
                await asyncio.sleep(rng.expovariate(args.request_rate))
        results = await asyncio.gather(*tasks)
        duration = time.perf_counter() - t0

    tok = None
    if args.tokenizer_dir:
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(args.tokenizer_dir, local_files_only=True)
    ok = [r for r in results if r.ok]
    out_tokens = sum(len(tok.encode(r.text, add_special_tokens=False)) if tok else r.asked for r in ok)
    itl = [x for r in ok for x in r.itl]
    ms = lambda xs, q: 1000 * percentile(xs, q)  # noqa: E731
    ttft, lat = [r.ttft for r in ok], [r.latency for r in ok]
    return {
        "model": args.model_name,
        "requests": args.num_requests,
        "ok": len(ok),
        "failed": len(results) - len(ok),
        "concurrency": args.concurrency,
        "request_rate": args.request_rate,
        "duration_s": duration,
        "request_throughput": len(ok) / duration,
        "output_token_throughput": out_tokens / duration,
        "output_tokens": out_tokens,
        "ttft_ms": {
            "mean": 1000 * statistics.fmean(ttft) if ttft else float("nan"),
            "p50": ms(ttft, 50),
            "p90": ms(ttft, 90),
            "p99": ms(ttft, 99),
        },
        "itl_ms": {
            "mean": 1000 * statistics.fmean(itl) if itl else float("nan"),
            "p50": ms(itl, 50),
            "p90": ms(itl, 90),
            "p99": ms(itl, 99),
        },
        "e2e_ms": {
            "mean": 1000 * statistics.fmean(lat) if lat else float("nan"),
            "p50": ms(lat, 50),
            "p90": ms(lat, 90),
            "p99": ms(lat, 99),
        },
        "errors": sorted({r.error for r in results if not r.ok})[:5],
    }


def print_table(s: dict) -> None:
    print(f"{'requests ok / failed':<28}{s['ok']} / {s['failed']}")
    print(f"{'duration (s)':<28}{s['duration_s']:.2f}")
    print(f"{'request throughput (req/s)':<28}{s['request_throughput']:.2f}")
    print(f"{'output tokens/s':<28}{s['output_token_throughput']:.1f}")
    print(f"{'':<28}{'mean':>10}{'p50':>10}{'p90':>10}{'p99':>10}")
    for key, name in (("ttft_ms", "TTFT (ms)"), ("itl_ms", "ITL (ms)"), ("e2e_ms", "E2E latency (ms)")):
        v = s[key]
        print(f"{name:<28}{v['mean']:>10.1f}{v['p50']:>10.1f}{v['p90']:>10.1f}{v['p99']:>10.1f}")
    for e in s["errors"]:
        print(f"error: {e}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-u", "--url", default="http://localhost:8000")
    p.add_argument("--model-name", default="ensemble")
    p.add_argument("--num-requests", type=int, default=64)
    p.add_argument("-c", "--concurrency", type=int, default=8, help="max requests in flight (0 = no cap)")
    p.add_argument("--request-rate", type=float, default=-1, help="Poisson arrivals per second (-1: all at once)")
    p.add_argument("--input-len", type=int, default=32, help="prompt length in words (mean)")
    p.add_argument("--input-stdev", type=float, default=0.0)
    p.add_argument("--output-len", type=int, default=64)
    p.add_argument("--output-stdev", type=float, default=0.0)
    p.add_argument("--tokenizer-dir", default=None, help="count output tokens by re-tokenizing")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--timeout", type=float, default=3600.0)
    p.add_argument("--json", default=None, help="also write the summary here")
    args = p.parse_args(argv)
    summary = asyncio.run(run(args))
    print_table(summary)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(summary, f, indent=2)
    return 0 if summary["failed"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
