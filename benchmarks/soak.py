"""Soak: normal, bad, cancelled and abandoned requests mixed for N minutes against one tritonserver.

    python benchmarks/soak.py --minutes 30                 # starts the CPU quick-start server (tiny model)
    python benchmarks/soak.py --url localhost:8000 --metrics localhost:8002 --server-pid PID --minutes 30
    python benchmarks/soak.py --shape llama3-8b --server-python /tmp/venv/bin/python --minutes 6   # the H200

On the GPU (`--shape`, or `bash benchmarks/run_gpu.sh soak`): a full-size shape with random weights in float16, where
a greedy answer may differ from the first one for its prompt when the batch around it rounds otherwise; such an
answer with the same number of events is counted on its own line, not as lost.

Localhost only, bounded in time and in requests in flight (`--workers`). Every worker loops over a mix:
- normal: greedy streams to `ensemble`, `tensorrt_llm_bls` and `tensorrt_llm` over a fixed prompt set; each
  answer must equal the first answer seen for that prompt (greedy is deterministic), else it counts as a lost
  healthy request;
- bad: a case from a table of bad inputs, which must be answered 4xx (anything else is counted);
- cancelled: a stream closed by the client after its first event (the engine must end it);
- abandoned: a stream whose client stops reading and goes away mid-generation.
At the end, once idle: requests served, errors by kind, KV blocks still used (leaked), RSS growth of every
server process after warm-up, and the drift of the normal requests' p99 latency (first window against last).
Targets (issue 16): 0 lost healthy requests, 0 leaked blocks, RSS growth < 5 %, p99 drift < 10 %.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import aiohttp

ROOT = Path(__file__).resolve().parents[1]

PROMPTS = [
    "What is machine learning?",
    "Tell me about the ocean and the stars",
    "A short story about a cat",
    "Explain how engines work",
    "Why is the sky blue?",
    "List three colors and three animals",
]

# (model, body, what it gets wrong): each must be refused with a 4xx naming the problem. JSON of the wrong type
# (a string for an integer) is left out: Triton 2.51's HTTP front end answers it 500 before any model sees
# it; so is `/generate` on a streaming request, which that front end answers 200 with an error body
# (docs/reliability.md).
BAD = [
    ("ensemble", {"text_input": "hi", "max_tokens": -5}, "negative max_tokens"),
    ("ensemble", {"max_tokens": 8}, "text_input missing"),
    ("ensemble", {"text_input": "hi", "max_tokens": 8, "top_p": 7.5}, "top_p out of range"),
    ("ensemble", {"text_input": "hi", "max_tokens": 8, "beam_width": 99}, "beam_width above the engine's"),
    ("ensemble", {"text_input": "hi", "max_tokens": 8, "temperature": -1.0}, "negative temperature"),
    ("tensorrt_llm", {"input_ids": [1, 2, 10**8], "input_lengths": 3, "request_output_len": 4}, "id > vocab"),
    ("tensorrt_llm", {"input_ids": [5, 6], "input_lengths": 9, "request_output_len": 4}, "length > ids"),
    ("tensorrt_llm", {"input_ids": [5, 6], "input_lengths": 2, "request_output_len": 0}, "no output asked"),
    ("tensorrt_llm", {"input_ids": [5, 6], "input_lengths": 2, "request_output_len": 4, "runtime_top_p": 2.0},
     "top_p out of range"),
]  # fmt: skip


class Tally:
    def __init__(self, exact: bool = True) -> None:
        self.counts: collections.Counter = collections.Counter()
        self.errors: collections.Counter = collections.Counter()
        self.latency: list[tuple[float, float]] = []  # (end time, seconds) of normal requests
        self.expected: dict[tuple, tuple[list, int]] = {}  # (model, prompt) -> first answer, its event count
        # False for a float16 engine on the GPU: its GEMMs may round differently at another batch size, so a near
        # tie can turn greedy another way. Same event count but other tokens then count apart, not as lost.
        self.exact = exact


async def _events(session, url: str, body: dict):
    async with session.post(url, json=body) as r:
        if r.status != 200:
            raise RuntimeError(f"HTTP {r.status}: {(await r.text())[:160]}")
        async for raw in r.content:
            line = raw.decode().strip()
            if line.startswith("data:"):
                event = json.loads(line[5:])
                if "error" in event:
                    raise RuntimeError(event["error"][:160])
                yield event


TEXT_MODELS = ("ensemble", "tensorrt_llm_bls")


def _answer(model: str, events: list[dict]) -> list:
    if model in TEXT_MODELS:
        return ["".join(e.get("text_output", "") for e in events)]
    return [e["output_ids"] for e in events]


async def normal(
    session: aiohttp.ClientSession, base: str, tally: Tally, rng: random.Random, tokenize: Callable[[str], list[int]]
) -> None:
    model = rng.choice([*TEXT_MODELS, "tensorrt_llm"])
    i = rng.randrange(len(PROMPTS))
    if model in TEXT_MODELS:
        body = {"text_input": PROMPTS[i], "max_tokens": 24, "stream": True}
    else:
        ids = tokenize(PROMPTS[i])
        body = {"input_ids": ids, "input_lengths": len(ids), "request_output_len": 24, "streaming": True}
    t0 = time.monotonic()
    try:
        events = [e async for e in _events(session, f"{base}/v2/models/{model}/generate_stream", body)]
    except Exception as e:
        tally.errors[f"normal {model}: {str(e)[:80]}"] += 1
        tally.counts["lost healthy"] += 1
        return
    now = time.monotonic()
    got = _answer(model, events)
    want, n_events = tally.expected.setdefault((model, i), (got, len(events)))
    if got != want and not tally.exact and len(events) == n_events:
        tally.counts[f"normal {model}, other tokens (float16 batch rounding)"] += 1
    elif got != want:
        tally.counts["lost healthy"] += 1
        tally.errors[f"normal {model}: answer differs from the first one for the same prompt"] += 1
    else:
        tally.counts[f"normal {model}"] += 1
    tally.latency.append((now, now - t0))


async def bad(session: aiohttp.ClientSession, base: str, tally: Tally, rng: random.Random) -> None:
    model, body, what = rng.choice(BAD)
    async with session.post(f"{base}/v2/models/{model}/generate", json=body) as r:
        await r.read()
        if 400 <= r.status < 500:
            tally.counts["bad refused 4xx"] += 1
        else:
            tally.errors[f"bad input ({what}) answered HTTP {r.status}"] += 1


async def cut_short(
    session: aiohttp.ClientSession,
    base: str,
    tally: Tally,
    rng: random.Random,
    tokenize: Callable[[str], list[int]],
    abandon: bool,
    models: list[str],
) -> None:
    """A stream closed after its first event (cancelled) or left after a pause mid-stream (abandoned)."""
    model = rng.choice(models)
    prompt = rng.choice(PROMPTS)
    if model != "tensorrt_llm":  # the text models
        body = {"text_input": prompt, "max_tokens": 200, "min_length": 200, "stream": True}
    else:
        ids = tokenize(prompt)
        body = {"input_ids": ids, "input_lengths": len(ids), "request_output_len": 200, "min_length": 200,
                "streaming": True}  # fmt: skip
    kind = "abandoned" if abandon else "cancelled"
    try:
        async with session.post(f"{base}/v2/models/{model}/generate_stream", json=body) as r:
            if r.status != 200:
                raise RuntimeError(f"HTTP {r.status}: {(await r.text())[:80]}")
            async for _ in r.content:
                if abandon:
                    await asyncio.sleep(0.2)  # a client that stalls, then goes away
                break
            r.close()  # drops the connection: the server sees the client leave
        tally.counts[f"{kind} {model}"] += 1
    except Exception as e:
        tally.errors[f"{kind} {model}: {str(e)[:80]}"] += 1


async def worker(
    base: str,
    tally: Tally,
    seed: int,
    deadline: float,
    tokenize: Callable[[str], list[int]],
    cut_models: list[str],
    cut_share: float = 0.15,
) -> None:
    import aiohttp

    rng = random.Random(seed)
    timeout = aiohttp.ClientTimeout(total=300)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        while time.monotonic() < deadline:
            x = rng.random()  # bad inputs 15 %, streams cut short `cut_share` (half abandoned), normal the rest
            if x < 0.85 - cut_share:
                await normal(session, base, tally, rng, tokenize)
            elif x < 1 - cut_share:
                await bad(session, base, tally, rng)
            else:
                await cut_short(session, base, tally, rng, tokenize, x >= 1 - cut_share / 2, cut_models)


def process_tree(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        # Every thread's children: tritonserver starts the engine process from a model-loading thread.
        for task in Path(f"/proc/{p}/task").glob("*"):
            with contextlib.suppress(OSError):
                todo += [int(c) for c in (task / "children").read_text().split()]
    return out


def rss_by_process(pid: int) -> dict[str, int]:
    """RSS (bytes) of the server and every process under it, keyed "pid name"."""
    out = {}
    for p in process_tree(pid):
        try:
            with open(f"/proc/{p}/status") as f:
                st = dict(line.split(":", 1) for line in f if ":" in line)
            with open(f"/proc/{p}/cmdline", "rb") as f:
                cmd = f.read().split(b"\0")
        except OSError:
            continue
        name = next((c.decode() for c in cmd if b"engine_core" in c or b"tritonserver" in c), st["Name"].strip())
        if b"triton_python_backend_stub" in b" ".join(cmd):
            name = "python stub " + (cmd[1].decode().rsplit("/", 3)[-3] if len(cmd) > 1 else "")
        out[f"{p} {Path(name).name}"] = int(st.get("VmRSS", "0 kB").split()[0]) * 1024
    return out


def metric(metrics_url: str, family: str, label: str) -> float | None:
    with urllib.request.urlopen(metrics_url, timeout=10) as r:
        for line in r.read().decode().splitlines():
            if line.startswith(family + "{") and f'"{label}"' in line:
                return float(line.rsplit(" ", 1)[1])
    return None


def wait_idle(metrics_url: str, timeout: float = 120) -> float:
    """Seconds until the engine reports no active request (abandoned streams must end by themselves)."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if metric(metrics_url, "nv_trt_llm_request_metrics", "active") == 0:
            return time.monotonic() - t0
        time.sleep(0.5)
    return float("inf")


def p99(xs: list[float]) -> float:
    return statistics.quantiles(xs, n=100)[98] if len(xs) >= 2 else float("nan")


def trend_line(latency: list[tuple[float, float]], start: float, end: float, windows: int = 10) -> str:
    """The p99 of each of `windows` equal windows after warm-up and the least-squares line through them: its
    rise over the soak against its start. Two windows alone swing by ±14 % between runs on a 2-core machine
    (runs 3 and 4 of docs/reliability.md); the trend tells growth from that noise."""
    width = (end - start) / windows
    xs, ys = [], []
    for k in range(windows):
        ds = [d for e, d in latency if start + k * width <= e < start + (k + 1) * width]
        if ds:
            xs.append(k)
            ys.append(p99(ds))
    if len(xs) < 3:
        return "p99 trend: too few windows"
    slope, fit0 = statistics.linear_regression(xs, ys)
    fit1 = fit0 + slope * (windows - 1)
    per = " ".join(f"{y * 1e3:.0f}" for y in ys)
    return (
        f"p99 by {width:.0f}-s window (ms): {per}; trend {fit0 * 1e3:.0f} -> {fit1 * 1e3:.0f} ms, "
        f"drift {(fit1 / fit0 - 1) * 100:+.1f} %"
    )


def build_shape(work: Path, shape: str, device: str) -> Path:
    """An engine of a benchmark shape (random weights; float16 on the GPU) in `work`/engine, where the quick
    start takes it instead of building its tiny model, and a trained tokenizer; returns the tokenizer's
    directory (the quick start's `--model_dir`: it only reads the tokenizer from it)."""
    sys.path.insert(0, str(ROOT))
    import torch

    from benchmarks.bench_serving import SHAPES
    from tensorrt_llm.builder import BuildConfig, build_engine
    from tensorrt_llm.tools.tiny_model import train_tokenizer

    tok_dir = work / "tokenizer"
    train_tokenizer(tok_dir)
    if not (work / "engine" / "config.json").exists():
        build = BuildConfig(max_batch_size=256, max_input_len=1024, max_seq_len=2048, max_num_tokens=8192)
        dtype = "float16" if device == "cuda" else "float32"
        build_engine(work / "engine", hf_config=SHAPES[shape], dtype=dtype, build=build, device=device)
        if device == "cuda":  # the server's engine process sizes its KV cache from the memory left free
            torch.cuda.empty_cache()
    return tok_dir


def start_quickstart(
    work: Path, ports: tuple[int, int, int], python: str = sys.executable, extra: tuple[str, ...] = ()
) -> subprocess.Popen:
    log = open(work / "server.log", "w")  # noqa: SIM115 (lives as long as the server)
    proc = subprocess.Popen(
        [python, str(ROOT / "scripts" / "quickstart_server.py"), "--work_dir", str(work),
         "--http_port", str(ports[0]), "--grpc_port", str(ports[1]), "--metrics_port", str(ports[2]), "--force",
         *extra],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(f"http://localhost:{ports[0]}/v2/health/ready", timeout=2)
            return proc
        except OSError:
            if proc.poll() is not None:
                break
            time.sleep(2)
    raise RuntimeError(f"quick-start server not ready; see {work / 'server.log'}")


def server_pid(launcher: subprocess.Popen) -> int:
    """The tritonserver under the launcher (the launcher's own child)."""
    for p in process_tree(launcher.pid)[1:]:
        with open(f"/proc/{p}/cmdline", "rb") as f:
            if b"tritonserver" in f.read().split(b"\0")[0]:
                return p
    raise RuntimeError("no tritonserver under the launcher")


async def soak(args: argparse.Namespace, base: str, pid: int) -> dict:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(args.tokenizer)
    cache: dict[str, list[int]] = {}

    def tokenize(text: str) -> list[int]:
        return cache.setdefault(text, tok.encode(text))

    tally = Tally(exact=not args.shape or args.device == "cpu")
    warm_end = time.monotonic() + args.warmup
    deadline = time.monotonic() + args.warmup + 60 * args.minutes
    cut = args.cut_models.split(",")
    tasks = [
        asyncio.create_task(worker(base, tally, s, deadline, tokenize, cut, args.cut_share))
        for s in range(args.workers)
    ]
    while time.monotonic() < warm_end:
        await asyncio.sleep(1)
    rss0 = rss_by_process(pid)
    samples = []
    while not all(t.done() for t in tasks):
        await asyncio.sleep(min(30, max(1, deadline - time.monotonic())))
        samples.append((time.monotonic(), rss_by_process(pid)))
    await asyncio.gather(*tasks)
    return {"tally": tally, "rss0": rss0, "samples": samples, "warm_end": warm_end, "deadline": deadline}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=float, default=30)
    p.add_argument("--warmup", type=float, default=60, help="seconds of load before RSS and p99 baselines")
    p.add_argument("--workers", type=int, default=16, help="clients, each with one request in flight")
    p.add_argument(
        "--cut-models",
        default="ensemble,tensorrt_llm_bls,tensorrt_llm",
        help="models that get cancelled and abandoned streams",
    )
    p.add_argument("--cut-share", type=float, default=0.15, help="share of requests that are streams cut short")
    p.add_argument("--url", help="host:port of a running server's HTTP endpoint (default: start the quick start)")
    p.add_argument("--metrics", help="host:port of its metrics endpoint")
    p.add_argument("--server-pid", type=int, help="tritonserver's pid (for RSS)")
    p.add_argument("--tokenizer", help="the served tokenizer's directory (for the tensorrt_llm requests)")
    p.add_argument(
        "--shape",
        help="serve a full-size benchmark shape on the GPU (e.g. llama3-8b: random weights, float16) instead of "
        "the quick start's tiny model",
    )
    p.add_argument("--device", default="cuda", help="with --shape: cpu for a smoke run (--shape tiny)")
    p.add_argument(
        "--server-python",
        default=sys.executable,
        help="the Python that runs the quick start and the launcher (on the GPU machine: the serving venv of "
        "benchmarks/serving_env.sh, with numpy 1)",
    )
    p.add_argument("--work", default="/tmp/soak")
    p.add_argument("--out", default=os.environ.get("OUT", "."))
    args = p.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    launcher = None
    if args.url is None:
        extra: tuple[str, ...] = ()
        if args.shape:
            tok_dir = build_shape(work, args.shape, args.device)
            extra = ("--model_dir", str(tok_dir), "--device", args.device)
        launcher = start_quickstart(work, (18300, 18301, 18302), args.server_python, extra)
        args.url, args.metrics = "localhost:18300", "localhost:18302"
        args.server_pid = server_pid(launcher)
        args.tokenizer = args.tokenizer or str(tok_dir if args.shape else work / "hf_model")
    metrics_url = f"http://{args.metrics}/metrics"
    try:
        r = asyncio.run(soak(args, f"http://{args.url}", args.server_pid))
        idle_s = wait_idle(metrics_url)
        time.sleep(2)  # one more statistics period: the block counts after the last request ended
        used = metric(metrics_url, "nv_trt_llm_kv_cache_block_metrics", "used")
        outcomes = {
            k: metric(metrics_url, "nv_trt_llm_request_outcome_metrics", k)
            for k in ("completed", "cancelled", "failed", "rejected")
        }
    finally:
        if launcher is not None:
            launcher.send_signal(signal.SIGTERM)
            launcher.wait(120)

    t: Tally = r["tally"]
    window = max(60.0, (r["deadline"] - r["warm_end"]) / 5)
    first = [d for end, d in t.latency if r["warm_end"] <= end < r["warm_end"] + window]
    last = [d for end, d in t.latency if end >= r["deadline"] - window]
    rss1 = r["samples"][-1][1] if r["samples"] else {}
    lines = [
        f"soak: {args.minutes:g} min after {args.warmup:g} s warm-up, {args.workers} clients, server {args.url}"
        f"{f' ({args.shape} shape, random weights, on {args.device})' if args.shape else ''}, "
        f"streams cut short ({args.cut_share:.0%} of requests) on {args.cut_models}",
        "requests: " + ", ".join(f"{k} {v}" for k, v in sorted(t.counts.items())),
        f"errors: {sum(t.errors.values())}" + "".join(f"\n  {v:6d}  {k}" for k, v in t.errors.most_common()),
        f"engine outcomes: {outcomes}",
        f"idle {idle_s:.1f} s after the load stopped; KV blocks still used then (leaked): {used}",
        f"p99 latency of normal requests: first {window:.0f} s {p99(first) * 1e3:.0f} ms, last {window:.0f} s "
        f"{p99(last) * 1e3:.0f} ms, drift {(p99(last) / p99(first) - 1) * 100:+.1f} %",
        trend_line(t.latency, r["warm_end"], r["deadline"]),
        "RSS after warm-up -> end:",
    ]
    for k, v0 in sorted(r["rss0"].items()):
        v1 = rss1.get(k)
        growth = f"{(v1 / v0 - 1) * 100:+.1f} %" if v1 else "(gone)"
        lines.append(f"  {k:<48} {v0 / 2**20:8.1f} MiB -> {(v1 or 0) / 2**20:8.1f} MiB  {growth}")
    text = "\n".join(lines)
    print(text)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    Path(args.out, "soak.txt").write_text(text + "\n")
    return 0 if not t.counts["lost healthy"] and not used else 1


if __name__ == "__main__":
    sys.exit(main())
